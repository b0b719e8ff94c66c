"""The example notebooks run top to bottom, and are committed stripped.

Each ``notebooks/*.ipynb`` is copied into a temporary folder and executed there with nbclient, in
a kernel of the interpreter running the tests (a kernelspec written for the test, so a fresh
``make test`` venv needs no installed kernelspec), with ``PROBGRAPHICS_FAST=1`` (the notebooks'
toy sizes), one thread, the Agg backend and ``TMPDIR`` inside the temporary folder: nothing is
written into the repository. A failing cell fails the test with that cell's error.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
EXPECTED = (
    "01_quickstart.ipynb",
    "02_abc_faces.ipynb",
    "03_training_dcign.ipynb",
    "04_voxel_muvae.ipynb",
    "05_real_photo.ipynb",
)
#: Seconds one cell may take in FAST mode before the run is declared hung (cells take seconds).
CELL_TIMEOUT_S = 180
KERNEL_NAME = "probgraphics-notebook-test"
KERNEL_ENV = {
    "PROBGRAPHICS_FAST": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "MPLBACKEND": "Agg",
    # ipykernel's debugger warns about frozen modules on stderr otherwise.
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",
}


def _ids(paths: list[Path]) -> list[str]:
    return [path.stem for path in paths]


def _kernel_manager(kernels_dir: Path, env: dict[str, str]):
    """A kernel manager for a kernelspec that runs ``sys.executable``'s ipykernel with ``env``."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = kernels_dir / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python ({sys.executable})",
        "language": "python",
        "env": env,
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    specs = KernelSpecManager(kernel_dirs=[str(kernels_dir)], ensure_native_kernel=False)
    manager = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)
    assert manager.kernel_spec.argv[0] == sys.executable, manager.kernel_spec.argv
    return manager


def test_the_five_notebooks_are_there():
    assert tuple(path.name for path in NOTEBOOKS) == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_stripped(path: Path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert "widgets" not in notebook.get("metadata", {}), f"{path.name} keeps widget state"
    code_cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code_cells, f"{path.name} has no code cells"
    for index, cell in enumerate(code_cells):
        assert cell.get("outputs") == [], f"{path.name}: code cell {index} has outputs"
        assert cell.get("execution_count") is None, (
            f"{path.name}: code cell {index} has execution_count {cell.get('execution_count')}"
        )
    # The test's small sizes reach the notebook only through this variable.
    first = "".join(code_cells[0]["source"])
    assert 'FAST = os.environ.get("PROBGRAPHICS_FAST") == "1"' in first, path.name


def test_notebooks_match_their_sources():
    """The notebooks are generated from ``notebooks/_build.py``; an edit to one side only is
    caught here (run ``python notebooks/_build.py`` after editing it)."""
    pytest.importorskip("nbformat")
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS_DIR / "_build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    assert build.main(["--check"]) == 0


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path: Path, tmp_path: Path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    workdir = tmp_path / "work"
    workdir.mkdir()
    (tmp_path / "tmp").mkdir()
    copy = workdir / path.name
    shutil.copyfile(path, copy)
    notebook = nbformat.read(copy, as_version=4)
    env = {**KERNEL_ENV, "TMPDIR": str(tmp_path / "tmp")}
    manager = _kernel_manager(tmp_path / "kernels", env)
    client = nbclient.NotebookClient(
        notebook,
        km=manager,
        kernel_name=KERNEL_NAME,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(workdir)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as error:
        pytest.fail(f"{path.name} failed in FAST mode:\n{error}", pytrace=False)
    finally:
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)
    seconds = time.perf_counter() - start
    print(f"{path.name}: executed in {seconds:.1f} s")
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.get("output_type") == "error"
    ]
    assert not errors, errors
    written = sorted(set(os.listdir(workdir)) - {path.name})
    assert not written, f"{path.name} wrote files into its working folder: {written}"
