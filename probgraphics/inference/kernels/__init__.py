"""ABC kernels, one file each (blackjax style): pure ``init`` / ``step`` over batched state.

* :mod:`~probgraphics.inference.kernels.elliptical`: ABC-MCMC with elliptical (pCN) proposals.
* :mod:`~probgraphics.inference.kernels.elliptical_slice`: elliptical slice sampling on the ABC
  kernel as the likelihood.
"""

from __future__ import annotations

from probgraphics.inference.kernels import elliptical, elliptical_slice
from probgraphics.inference.kernels.elliptical import (
    ABC_KERNELS,
    EllipticalInfo,
    EllipticalNoise,
    EllipticalState,
    GaussianReference,
)
from probgraphics.inference.kernels.elliptical_slice import (
    EllipticalSliceInfo,
    EllipticalSliceNoise,
    EllipticalSliceState,
)

__all__ = [
    "ABC_KERNELS",
    "elliptical",
    "elliptical_slice",
    "EllipticalState",
    "GaussianReference",
    "EllipticalInfo",
    "EllipticalNoise",
    "EllipticalSliceState",
    "EllipticalSliceInfo",
    "EllipticalSliceNoise",
]
