"""Collapsed ABC-MCMC: a latent site the observation is affine in is drawn from its Gaussian
conditional at every move, the other latents move by the elliptical kernel's moves.

Setting. The ABC kernel is Gaussian on the L2 distance of the noise-free observation (integrated
observation noise: ``bandwidth h = sqrt(eps^2 + sigma^2)``, :mod:`~probgraphics.inference.
marginal_noise`), so the target over the whitened latents ``u = (theta, t)`` is

    pi(theta, t) ∝ N(theta; 0, I) N(t; 0, I) exp(-|y - f(theta, t)|^2 / (2 h^2)).

When ``f`` is affine in the site ``t`` for fixed ``theta``, ``f(theta, t) = c(theta) + A(theta) t``
(the face's render in its texture coefficients: Gouraud shading is linear in the albedo), the
conditional of ``t`` is Gaussian:

    q(t | theta) = N(t; mu, P^-1),   P = I + A^T A / h^2,   mu = P^-1 A^T (y - c) / h^2.

**The move.** Propose ``theta'`` by any elliptical move (a block, the joint move on a reference,
an independence draw), then ``t' ~ q(. | theta')``, and accept the pair with the Metropolis-Hastings
ratio of the joint target

    K(rho') N(t') q(t | theta)  /  (K(rho) N(t) q(t' | theta'))   x  the move's own ratio for theta.

It is exact for any ``q``: the program's affine map only has to be a good proposal. Where ``f`` is
exactly affine, ``K(rho) N(t) / q(t | theta)`` is the same for every ``t`` (it is the marginal
``Z(theta) = ∫ K N dt`` up to a constant), so the ratio is ``Z(theta') / Z(theta)``: the chains
move on the posterior of ``theta`` with ``t`` integrated out, and ``t`` is a fresh exact draw given
``theta`` at every accepted move (Rao-Blackwellization; a pseudo-marginal move whose estimate of
``Z`` is exact). Where the map is only approximate (the face's albedo clamp), the ratio corrects
it. Tightly coupled sites (pose and texture) no longer pin each other: a pose move does not have
to find a texture that explains the image under the new pose; it gets one.

**Cost.** The state keeps ``A^T A`` ``(K, K)`` and ``A^T (y - c)`` ``(K,)`` per chain (they do
not depend on the bandwidth, so tempering the tolerance needs no recomputation). A move simulates
twice: once to get the constrained values of ``theta'`` (which the affine map needs; any program,
any whitening), once at ``(theta', t')`` for the distance.

Blackjax style, like :mod:`~probgraphics.inference.kernels.elliptical`: pure functions over an
immutable :class:`CollapsedState` whose tensors lead with the chain dimension; per-chain decisions
are masks; randomness from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from probgraphics.inference.kernels import elliptical
from probgraphics.inference.kernels.elliptical import (
    EllipticalInfo,
    EllipticalNoise,
    GaussianReference,
)
from probgraphics.inference.simulator import Simulation

__all__ = [
    "CollapsedState",
    "LinearSite",
    "init",
    "conditional",
    "log_correction",
    "step_with_noise",
    "step",
    "independence_step",
]


class CollapsedState(NamedTuple):
    """Chains' current state: the elliptical kernel's three fields plus the collapsed site's
    sufficient statistics at the current ``theta``.

    Attributes:
        u: ``(C, D)`` whitened position (the collapsed site's coordinates included).
        values: ``(C, V)`` constrained latent values at ``u``.
        distance: ``(C,)`` L2 distance of the noise-free simulation at ``u``.
        gram: ``(C, K, K)`` float64 ``A^T A`` of the affine map at the current ``theta``.
        projection: ``(C, K)`` float64 ``A^T (y - c)``.
    """

    u: torch.Tensor
    values: torch.Tensor
    distance: torch.Tensor
    gram: torch.Tensor
    projection: torch.Tensor


class LinearSite(NamedTuple):
    """The collapsed site, as the kernel sees it.

    Attributes:
        mask: ``(D,)`` bool, the site's coordinates in ``u`` (its prior is ``N(0, I)``, so its
            whitened coordinates are its values).
        statistics: ``values (C, V) -> (gram (C, K, K), projection (C, K))``, float64: the affine
            map's ``A^T A`` and ``A^T (y - c)`` at each chain's latent values (the site's own
            value ignored). Non-finite statistics make that chain's proposal rejected.
    """

    mask: torch.Tensor
    statistics: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def init(
    u: torch.Tensor, values: torch.Tensor, distance: torch.Tensor, linear: LinearSite
) -> CollapsedState:
    """The state of ``C`` chains at ``u`` ``(C, D)`` whose simulations gave ``values`` ``(C, V)``
    and ``distance`` ``(C,)``; the statistics are computed here."""
    base = elliptical.init(u, values, distance)
    gram, projection = linear.statistics(values)
    return CollapsedState(base.u, base.values, base.distance, gram, projection)


def conditional(
    gram: torch.Tensor, projection: torch.Tensor, bandwidth: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Gaussian conditional ``N(mu, P^-1)`` of the collapsed site at one bandwidth.

    Args:
        gram: ``(C, K, K)`` float64 ``A^T A``; projection: ``(C, K)`` float64 ``A^T (y - c)``.
        bandwidth: the Gaussian kernel's ``h > 0`` (float).

    Returns:
        ``mean`` ``(C, K)``, ``cholesky`` ``(C, K, K)`` lower ``L`` with ``P = L L^T``, and ``ok``
        ``(C,)`` bool (False where ``P`` is not positive definite or not finite; those chains'
        mean and factor are placeholders, and their proposals must be rejected).
    """
    inverse_variance = 1.0 / (bandwidth * bandwidth)
    size = gram.shape[-1]
    identity = torch.eye(size, dtype=gram.dtype, device=gram.device)
    precision = identity + gram * inverse_variance
    finite = torch.isfinite(precision).flatten(1).all(-1) & torch.isfinite(projection).all(-1)
    precision = torch.where(finite[:, None, None], precision, identity)
    cholesky, info = torch.linalg.cholesky_ex(precision)
    ok = finite & (info == 0)
    cholesky = torch.where(ok[:, None, None], cholesky, identity)
    rhs = torch.where(ok[:, None], projection * inverse_variance, 0.0)
    mean = torch.cholesky_solve(rhs.unsqueeze(-1), cholesky).squeeze(-1)
    return mean, cholesky, ok


def _draw(z: torch.Tensor, mean: torch.Tensor, cholesky: torch.Tensor) -> torch.Tensor:
    """``mu + L^-T z``: a draw of ``N(mu, (L L^T)^-1)`` from standard-normal ``z`` ``(C, K)``."""
    offset = torch.linalg.solve_triangular(
        cholesky.transpose(-1, -2), z.unsqueeze(-1), upper=True
    ).squeeze(-1)
    return mean + offset


def log_correction(t: torch.Tensor, mean: torch.Tensor, cholesky: torch.Tensor) -> torch.Tensor:
    """``log N(t; 0, I) - log q(t)`` per chain ``(C,)`` for ``t`` ``(C, K)`` under the conditional
    ``q = N(mean, (L L^T)^-1)``: the collapsed site's part of the acceptance ratio."""
    whitened = (cholesky.transpose(-1, -2) @ (t - mean).unsqueeze(-1)).squeeze(-1)
    log_det = torch.log(torch.diagonal(cholesky, dim1=-2, dim2=-1)).sum(-1)
    return 0.5 * (whitened.square().sum(-1) - t.square().sum(-1)) - log_det


def step_with_noise(
    state: CollapsedState,
    simulate: Callable[[torch.Tensor], Simulation],
    linear: LinearSite,
    bandwidth: float,
    noise: EllipticalNoise,
    z: torch.Tensor,
    reference: GaussianReference | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[CollapsedState, EllipticalInfo]:
    """One collapsed step for all chains with the given random numbers.

    Args:
        state: the chains' :class:`CollapsedState`.
        simulate: ``u (C, D) -> Simulation`` of the noise-free observation (L2 distance).
        linear: the collapsed site (:class:`LinearSite`).
        bandwidth: the Gaussian kernel's ``h > 0``.
        noise: the elliptical move's random numbers (:func:`elliptical.draw_noise`).
        z: ``(C, K)`` standard normal, the conditional draw's.
        reference: the move's reference Gaussian (None: ``N(0, I)``); ``N(0, I)`` on the
            collapsed coordinates.
        mask: ``(D,)`` bool block the elliptical move changes (None: every coordinate but the
            collapsed site's). It must leave the collapsed coordinates out.

    Returns:
        ``(new_state, info)``; ``info.acceptance_probability`` is the joint move's.
    """
    site = linear.mask
    block = ~site if mask is None else mask & ~site
    moved, log_weight_change = elliptical.propose_with_weight(state.u, noise, reference, block)
    # The first simulation gives theta's constrained values, which the affine map needs.
    partial = simulate(moved)
    gram, projection = linear.statistics(partial.values)
    mean, cholesky, ok = conditional(gram, projection, bandwidth)
    t = _draw(z.to(mean.dtype), mean, cholesky)
    proposal = moved.clone()
    proposal[:, site] = t.to(proposal.dtype)
    simulation = simulate(proposal)

    current_mean, current_cholesky, _ = conditional(state.gram, state.projection, bandwidth)
    current_t = state.u[:, site].to(mean.dtype)
    log_ratio = (
        elliptical.log_acceptance_ratio(simulation.distance, state.distance, bandwidth, "gaussian")
        .to(mean.dtype)
        .add(log_correction(t, mean, cholesky))
        .sub(log_correction(current_t, current_mean, current_cholesky))
    )
    if log_weight_change is not None:
        log_ratio = log_ratio + log_weight_change.to(log_ratio.dtype)
    log_ratio = torch.where(ok, log_ratio, math.nan)
    accepted = noise.log_uniform.to(log_ratio.dtype) < log_ratio  # False for NaN
    acceptance_probability = torch.exp(log_ratio.clamp(max=0.0)).nan_to_num(0.0)
    take = accepted.unsqueeze(-1)
    new_state = CollapsedState(
        u=torch.where(take, proposal, state.u),
        values=torch.where(take, simulation.values, state.values),
        distance=torch.where(accepted, simulation.distance, state.distance),
        gram=torch.where(take.unsqueeze(-1), gram, state.gram),
        projection=torch.where(take, projection, state.projection),
    )
    info = EllipticalInfo(
        accepted, simulation.distance, noise.a, acceptance_probability.to(state.u.dtype)
    )
    return new_state, info


def _draw_z(generator: torch.Generator, state: CollapsedState) -> torch.Tensor:
    chains, size = state.projection.shape
    return torch.randn(
        chains, size, generator=generator, device=state.u.device, dtype=state.projection.dtype
    )


def step(
    generator: torch.Generator,
    state: CollapsedState,
    simulate: Callable[[torch.Tensor], Simulation],
    linear: LinearSite,
    bandwidth: float,
    beta: torch.Tensor,
    reference: GaussianReference | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[CollapsedState, EllipticalInfo]:
    """One collapsed step: an elliptical move of ``mask`` (with ``beta`` ``(C,)`` and an optional
    ``reference``, as :func:`elliptical.step`), then the collapsed site from its conditional.
    Random numbers in a fixed order: the elliptical move's (a, nu, log U), then ``z``."""
    noise = elliptical.draw_noise(generator, state, beta)
    z = _draw_z(generator, state)
    return step_with_noise(state, simulate, linear, bandwidth, noise, z, reference, mask)


def independence_step(
    generator: torch.Generator,
    state: CollapsedState,
    simulate: Callable[[torch.Tensor], Simulation],
    linear: LinearSite,
    bandwidth: float,
    proposal: GaussianReference,
    mask: torch.Tensor | None = None,
) -> tuple[CollapsedState, EllipticalInfo]:
    """An independence move (``a = 1``: a fresh draw of ``proposal`` on ``mask``, e.g. a guide's
    q(z | x_obs) marginal on the other latents), then the collapsed site from its conditional."""
    ones = torch.ones(state.u.shape[0], dtype=state.u.dtype, device=state.u.device)
    noise = elliptical.draw_noise(generator, state, ones)._replace(a=ones)
    z = _draw_z(generator, state)
    return step_with_noise(state, simulate, linear, bandwidth, noise, z, proposal, mask)
