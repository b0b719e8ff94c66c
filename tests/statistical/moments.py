"""Moment checks of chains against a known posterior, with tolerances from Monte Carlo standard
error (ArviZ's effective sample size); shared by the exactness tests."""

from __future__ import annotations

import math
import warnings

import numpy as np

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az


def mcse(values: np.ndarray) -> float:
    """Monte Carlo standard error of the mean of ``values`` ``(chains, draws)``."""
    return float(values.std()) / math.sqrt(float(az.ess(values, method="mean")))


def assert_moments(
    z: np.ndarray,
    mean: np.ndarray,
    covariance: np.ndarray,
    cross: tuple[tuple[int, int], ...],
    tolerance: float,
) -> None:
    """Chains ``z`` ``(chains, draws, D)`` against the exact ``mean`` ``(D,)`` and ``covariance``
    ``(D, D)``: each coordinate's mean, its second moment about the exact mean against the exact
    variance, and the ``cross`` pairs' cross moments, within ``tolerance`` MCSEs; and each
    coordinate's R-hat below 1.05."""
    centred = z - mean
    for i in range(z.shape[-1]):
        values = z[..., i]
        assert abs(values.mean() - mean[i]) < tolerance * mcse(values), i
        square = centred[..., i] ** 2
        assert abs(square.mean() - covariance[i, i]) < tolerance * mcse(square), i
        assert float(az.rhat(values)) < 1.05, i
    for i, j in cross:
        product = centred[..., i] * centred[..., j]
        assert abs(product.mean() - covariance[i, j]) < tolerance * mcse(product), (i, j)
