"""Shared by the benchmark scripts: a plain-text table printer and atomic JSON writers."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

from probgraphics.atomic import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """What the numbers were measured on."""
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        pass
    return info


def format_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A markdown table of ``rows`` (dicts) restricted to ``columns``; floats to 4 significant."""

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_json_atomically(path: Path, payload: dict, *, default=None) -> Path:
    """Write ``payload`` as indented JSON to ``path`` atomically (folders created); returns it.

    ``default`` is ``json.dumps``'s: what to turn values JSON cannot hold into (``str`` for
    anything printable); without it such a value is an error and nothing is written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(payload, indent=2, default=default), fsync=False)


def write_json(name: str, payload: dict, directory: Path = RESULTS) -> Path:
    """Write ``payload`` (plus machine info) to ``directory/name.json`` atomically."""
    payload = {"machine": machine(), **payload}
    return write_json_atomically(directory / f"{name}.json", payload, default=str)
