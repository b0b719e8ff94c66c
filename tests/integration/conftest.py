"""Fixtures for the experiment scripts' tests (``test_experiments_*.py``): importing a script of
``benchmarks/experiments/`` and checking the NAME.md / NAME.png / NAME.json it writes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "benchmarks" / "experiments"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load_experiment(name: str):
    """Import ``benchmarks/experiments/<name>.py`` as a module (the scripts are not a package),
    registered in ``sys.modules`` under ``name`` so a script's ``from <name> import ...`` and
    every test share one module."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _experiment_outputs(folder: Path, name: str) -> tuple[str, dict]:
    """Assert ``folder`` holds ``name``.md, .png (a PNG) and .json (with the machine), all
    non-empty, and no temporary file left behind; returns ``(markdown, payload)``."""
    for suffix in ("md", "png", "json"):
        path = folder / f"{name}.{suffix}"
        assert path.is_file() and path.stat().st_size > 0, f"{path} was not written"
    assert (folder / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert not list(folder.glob("*.tmp*")), "a temporary file was left behind"
    payload = json.loads((folder / f"{name}.json").read_text())
    assert {"python", "torch"} <= set(payload.get("machine", {})), payload.get("machine")
    return (folder / f"{name}.md").read_text(), payload


@pytest.fixture(scope="session")
def load_experiment():
    """``load_experiment(name)``: the script ``benchmarks/experiments/<name>.py`` as a module."""
    return _load_experiment


@pytest.fixture(scope="session")
def experiment_outputs():
    """``experiment_outputs(folder, name) -> (markdown, payload)``: checks the three files a
    script wrote into ``folder`` and returns the markdown text and the parsed JSON."""
    return _experiment_outputs
