"""A program with one linear and one nonlinear latent, and its posterior by quadrature (shared by
the collapsed-move tests).

``theta ~ N(0, 1)``, ``t ~ N(0, I_2)`` and ``x ~ N(c(theta) + G(theta) t, NOISE^2 I_3)`` observed at
``"x"``, with smooth nonlinear ``c: R -> R^3`` (:func:`offset`) and ``G: R -> R^{3x2}``
(:func:`matrix`). Given ``theta`` the observation's noise-free mean is affine in ``t`` and ``t``'s
prior is standard normal, so ``t`` can be drawn from its exact Gaussian conditional
(:meth:`CollapsedToy.affine_observation` gives the map) while ``theta`` moves by
Metropolis-Hastings.

Why it is a good test of such a sampler:

* the posterior of ``theta`` at :data:`OBSERVATION` is clearly non-Gaussian: a main mode near 0
  and a long, flat shoulder out to about 2 that ends abruptly (``0.8 theta^2`` in ``c`` overshoots
  the first observed element), so it is skewed (about +0.6) and flat-topped (excess kurtosis about
  -0.6), and its 10% and 90% quantiles differ from a Gaussian's with the same mean and variance;
* ``theta`` and ``t`` are correlated a posteriori (about -0.6 and -0.4), because ``E[t | theta]``
  moves with ``theta``: a sampler that draws ``t`` from the wrong conditional, or forgets the
  ``theta``-dependence of ``t``'s conditional in its acceptance ratio, gets the cross moments and
  ``theta``'s marginal wrong;
* ``CollapsedToy(wrong_map=True)`` reports a deliberately wrong affine map (offset shifted by 0.2,
  matrix scaled by 0.8: its conditional of ``t`` sits 0.5-1.5 of the true conditional's standard
  deviations off and is 1.2 times wider) while the program itself is unchanged: an exact sampler
  must treat the map's conditional as a proposal and still target the true posterior (the MH
  correction), as with a biased guide.

With the Gaussian ABC kernel on the identity summary and the L2 distance (and the noise integrated
out, or at ``epsilon = 0``) the target is the same model with noise variance
``NOISE^2 + epsilon^2``: :func:`posterior_moments` integrates ``t`` out analytically and ``theta``
on a fine grid.
"""

from __future__ import annotations

import functools
import math

import pyro
import pyro.distributions as dist
import torch

NOISE = 0.4
OBSERVATION = torch.tensor([0.6, -0.3, 0.6])

#: The quadrature grid over ``theta`` (the prior's mass outside it is below 1e-15).
GRID_LIMIT = 8.0
GRID_POINTS = 20001

#: ``CollapsedToy(wrong_map=True)``'s error: offset + WRONG_SHIFT, matrix * WRONG_SCALE.
#: (A map 0.5 / 0.6 off, 2-4 standard deviations, makes an independence-like draw whose tails
#: miss the target: chains stick for hundreds of steps, exact but too slow for a test.)
WRONG_SHIFT = 0.2
WRONG_SCALE = 0.8


def offset(theta: torch.Tensor) -> torch.Tensor:
    """``c(theta)``: ``(..., 3)`` for ``theta`` of shape ``(...)``, in ``theta``'s dtype."""
    return torch.stack(
        [
            0.8 * theta**2 - 0.5,
            torch.sin(1.5 * theta),
            0.5 * theta + 0.3 * torch.cos(2.0 * theta),
        ],
        dim=-1,
    )


def matrix(theta: torch.Tensor) -> torch.Tensor:
    """``G(theta)``: ``(..., 3, 2)`` for ``theta`` of shape ``(...)``, in ``theta``'s dtype."""
    one = torch.ones_like(theta)
    rows = [
        [one, 0.6 * torch.tanh(theta)],
        [0.5 * torch.cos(theta), one],
        [0.4 * torch.sin(2.0 * theta), 0.3 + 0.4 * theta / (1.0 + theta**2)],
    ]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


class CollapsedToy:
    """The program; call it (no arguments) to run it as a Pyro model. Batch-polymorphic: every
    operation broadcasts over the latents' leading batch shape (e.g. ``pyro.plate("chains", C)``
    with ``theta`` ``(C,)`` and ``t`` ``(C, 2)``).

    Args:
        wrong_map: make :meth:`affine_observation` return a deliberately wrong map (offset
            ``+ WRONG_SHIFT``, matrix ``* WRONG_SCALE``); the program itself is unchanged.
    """

    observed = "x"
    observed_shape = (3,)
    site_shapes = {"theta": (), "t": (2,)}
    noise = NOISE

    def __init__(self, wrong_map: bool = False) -> None:
        self.wrong_map = bool(wrong_map)

    def __repr__(self) -> str:
        return f"CollapsedToy(wrong_map={self.wrong_map})"

    def __call__(self) -> torch.Tensor:
        theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
        t = pyro.sample("t", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        mean = offset(theta) + (matrix(theta) @ t.unsqueeze(-1)).squeeze(-1)
        return pyro.sample("x", dist.Normal(mean, NOISE).to_event(1))

    def affine_observation(
        self, site: str, latents: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(offset (B, 3), matrix (B, 3, 2))`` with the noise-free mean of ``"x"`` equal to
        ``offset + matrix @ t`` for ``site == "t"``, ``theta = latents["theta"]`` (``(B,)``) held;
        ``latents["t"]``, if given, is ignored. Wrong on purpose if ``wrong_map``.

        Raises:
            ValueError: ``site`` is not ``"t"``.
        """
        if site != "t":
            raise ValueError(f"the observation's mean is affine only in site 't', not {site!r}")
        theta = latents["theta"]
        c, g = offset(theta), matrix(theta)
        if self.wrong_map:
            c, g = c + WRONG_SHIFT, g * WRONG_SCALE
        return c, g


def conditional(
    theta: torch.Tensor, epsilon: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For ``theta`` ``(N,)`` (computed in float64) under noise variance ``NOISE^2 + epsilon^2``:
    ``log p(x_obs | theta)`` ``(N,)`` with ``t`` integrated out (``N(c, s2 I + G G^T)``), and the
    conjugate ``t | theta, x_obs ~ N(mean (N, 2), covariance (N, 2, 2))``."""
    theta = theta.double()
    variance = NOISE**2 + epsilon**2
    x = OBSERVATION.double()
    c, g = offset(theta), matrix(theta)
    residual = x - c
    marginal_covariance = variance * torch.eye(3, dtype=torch.float64) + g @ g.mT
    log_likelihood = torch.distributions.MultivariateNormal(
        c, covariance_matrix=marginal_covariance
    ).log_prob(x)
    precision = torch.eye(2, dtype=torch.float64) + g.mT @ g / variance
    covariance = torch.linalg.inv(precision)
    covariance = 0.5 * (covariance + covariance.mT)
    mean = (covariance @ (g.mT @ residual.unsqueeze(-1))).squeeze(-1) / variance
    return log_likelihood, mean, covariance


def _check_epsilon(epsilon: float) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise TypeError(f"epsilon must be a number, got {epsilon!r}")
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be finite and >= 0, got {epsilon!r}")
    return float(epsilon)


@functools.lru_cache(maxsize=16)
def _moments(epsilon: float) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    theta = torch.linspace(-GRID_LIMIT, GRID_LIMIT, GRID_POINTS, dtype=torch.float64)
    log_likelihood, t_mean, t_covariance = conditional(theta, epsilon)
    log_weight = -0.5 * theta**2 + log_likelihood
    weight = torch.exp(log_weight - log_weight.max())
    weight = weight / weight.sum()

    z = torch.cat([theta.unsqueeze(-1), t_mean], dim=-1)  # E[[theta, t] | theta]: (N, 3)
    mean = weight @ z
    centred = z - mean
    covariance = torch.einsum("n,ni,nj->ij", weight, centred, centred)
    covariance[1:, 1:] += torch.einsum("n,nij->ij", weight, t_covariance)
    covariance = 0.5 * (covariance + covariance.T)

    # theta's CDF: the trapezoid rule on the grid, linearly interpolated.
    cdf = torch.cat([weight.new_zeros(1), torch.cumsum(0.5 * (weight[1:] + weight[:-1]), 0)])
    cdf = cdf / cdf[-1]
    quantiles = []
    for level in (0.1, 0.9):
        i = int(torch.searchsorted(cdf, torch.tensor(level, dtype=torch.float64)))
        fraction = (level - cdf[i - 1]) / (cdf[i] - cdf[i - 1])
        quantiles.append(float(theta[i - 1] + fraction * (theta[i] - theta[i - 1])))
    return mean, covariance, quantiles[0], quantiles[1]


def posterior_moments(epsilon: float = 0.0) -> dict:
    """The posterior of ``[theta, t1, t2]`` at :data:`OBSERVATION` under noise variance
    ``NOISE^2 + epsilon^2`` (the Gaussian ABC kernel's target with tolerance ``epsilon``), by
    quadrature over ``theta`` with ``t`` integrated out analytically; float64.

    Returns:
        ``{"mean": (3,), "covariance": (3, 3)}`` tensors of ``[theta, t1, t2]``, and floats
        ``"theta_mean"``, ``"theta_variance"``, ``"theta_q10"``, ``"theta_q90"`` (the 10% and 90%
        quantiles of ``theta``).
    """
    mean, covariance, q10, q90 = _moments(_check_epsilon(epsilon))
    return {
        "mean": mean.clone(),
        "covariance": covariance.clone(),
        "theta_mean": float(mean[0]),
        "theta_variance": float(covariance[0, 0]),
        "theta_q10": q10,
        "theta_q90": q90,
    }
