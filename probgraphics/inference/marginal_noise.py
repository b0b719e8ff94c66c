"""Observation noise integrated out of the ABC kernel (``observation_noise="marginal"``).

When an observed site is ``Normal(mean, sigma)`` with one ``sigma`` for every element, the summary
is the observation itself (identity or pixels), the distance is the plain L2 distance and the ABC
kernel is Gaussian, the noise can be integrated out exactly. Per element ``i``, with ``r`` the
noise-free simulation (the site's mean), ``x`` the observation and ``n ~ N(0, 1)``::

    E_n exp(-(r_i + sigma n_i - x_i)^2 / (2 eps^2))
        = sqrt(eps^2 / (eps^2 + sigma^2)) * exp(-(r_i - x_i)^2 / (2 (eps^2 + sigma^2)))

so the ABC target with fresh noise, ``prior(z) E_n K_eps(||r(z) + sigma n - x||)``, is
``prior(z) K_h(||r(z) - x||)`` with the bandwidth ``h = sqrt(eps^2 + sigma^2)`` (the factor in
front does not depend on ``z``). The chains therefore target exactly the ABC posterior they would
with noise drawn in every simulation, but each distance is that posterior's kernel evaluated
without Monte Carlo noise (Wilkinson 2013, "ABC gives exact results under the assumption of model
error"): no pseudo-marginal stickiness, and no per-chain noise state that chains must mix over.
At ``eps = 0`` the target is the exact posterior under the program's own noise.

The run keeps the user's tolerance ``eps`` everywhere it is reported (the ``epsilon`` statistic,
``epsilon=...``); only the kernels see the bandwidth :func:`bandwidth`.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
from pyro import poutine

__all__ = ["MarginalNoiseError", "bandwidth", "noise_scale", "tolerance"]

#: Summaries whose features are the observation's own elements (summary-space L2 = data-space L2).
ELEMENTWISE_SUMMARIES = (None, "identity", "pixel")


class MarginalNoiseError(ValueError):
    """The program, summary, distance or kernel does not allow the noise to be integrated out."""


def noise_scale(trace: poutine.Trace, observed: Collection[str]) -> float:
    """The one noise scale ``sigma`` shared by every element of the observed sites.

    Args:
        trace: an unbatched trace of the program (observed sites sampled, not conditioned).
        observed: the observed site names.

    Raises:
        MarginalNoiseError: a site is not ``Normal`` (optionally ``.to_event``), or its scale
            differs between elements or between sites.
    """
    scales = {}
    for name in observed:
        fn = trace.nodes[name]["fn"]
        base = fn
        while isinstance(base, torch.distributions.Independent):
            base = base.base_dist
        if not isinstance(base, torch.distributions.Normal):
            raise MarginalNoiseError(
                f"observation_noise='marginal' integrates Gaussian noise out, but observed site "
                f"{name!r} has distribution {type(fn).__name__}({type(base).__name__}); use "
                "observation_noise='whitened' or 'fresh' for this program."
            )
        scale = torch.as_tensor(base.scale).detach().double().flatten()
        if scale.numel() == 0 or not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
            raise MarginalNoiseError(
                f"observed site {name!r} has a noise scale that is not finite and positive; "
                "observation_noise='marginal' needs sigma > 0."
            )
        if not bool((scale == scale[0]).all()):
            raise MarginalNoiseError(
                f"observed site {name!r} has a noise scale that varies between elements "
                f"({float(scale.min()):.3g} to {float(scale.max()):.3g}); observation_noise="
                "'marginal' needs one sigma for every element (or use 'whitened' or 'fresh')."
            )
        scales[name] = float(scale[0])
    if len(set(scales.values())) > 1:
        raise MarginalNoiseError(
            f"the observed sites have different noise scales {scales}; observation_noise="
            "'marginal' needs one sigma for all of them (or use 'whitened' or 'fresh')."
        )
    return next(iter(scales.values()))


def bandwidth(epsilon: float, sigma: float) -> float:
    """The Gaussian kernel's bandwidth ``sqrt(eps^2 + sigma^2)`` for tolerance ``epsilon``."""
    return math.hypot(epsilon, sigma)


def tolerance(bandwidth_value: float, sigma: float) -> float:
    """The tolerance whose bandwidth is ``bandwidth_value`` (0 when it is at most ``sigma``)."""
    if sigma == 0.0:
        return bandwidth_value  # no noise integrated out: the bandwidth is the tolerance
    return math.sqrt(max(bandwidth_value * bandwidth_value - sigma * sigma, 0.0))
