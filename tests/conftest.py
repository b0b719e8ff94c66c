"""Test-suite settings: deliberate thread counts, gpu-marked tests skipped without CUDA."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import pytest  # noqa: E402
import torch  # noqa: E402

from probgraphics.config import set_num_threads  # noqa: E402

set_num_threads()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
