"""Elliptical slice sampling (Murray, Adams & MacKay 2010) on the ABC kernel, batched over chains.

The log-likelihood in the whitened space is the ABC kernel, ``log L(u) = -rho(u)^2 / (2 eps^2)``
(Gaussian kernel) or ``0 if rho(u) <= eps else -inf`` (indicator kernel). One step per chain:

1. draw ``nu ~ N(0, I)`` and the slice threshold ``log y = log L(u) + log U``;
2. ``theta ~ Uniform(0, 2 pi)``, bracket ``[theta - 2 pi, theta]``;
3. propose ``u' = u cos(theta) + nu sin(theta)``; if ``log L(u') > log y`` accept, else shrink the
   bracket towards 0 (``theta < 0``: lower end, else upper end) and draw ``theta`` in it again.

The shrinking loop is batched: every round simulates, in one call, the chains that are still
shrinking (finished chains keep their state), for at most ``max_shrinks`` rounds; a chain that
reaches the cap keeps its current state, and ``info.cap_hit`` counts it. ``max_simulations``
(a hard budget's remainder) stops the rounds before one would exceed it, with the same rule. As
in the elliptical kernel, a chain outside the indicator kernel's set accepts any point no farther
than where it is.

With a reference Gaussian ``N(m, S)`` (fitted during warm-up by the run loop, then frozen), this
is generalized elliptical slice sampling (Nishihara, Murray & Adams 2014): the ellipse is
``m + (u - m) cos(theta) + S^(1/2) nu sin(theta)`` and the likelihood gains the weight
``w(u) = N(u; 0, I) / N(u; m, S)``, so the target is unchanged.

All of a step's random numbers are drawn up front (:class:`EllipticalSliceNoise`), so a
single-chain reference loop can replay them. The one host read per round is the number of chains
still shrinking (it sizes the batch, so finished chains cost no simulations).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from probgraphics.inference.kernels.elliptical import ABC_KERNELS, GaussianReference
from probgraphics.inference.simulator import Simulation

__all__ = [
    "EllipticalSliceState",
    "EllipticalSliceInfo",
    "EllipticalSliceNoise",
    "init",
    "log_likelihood",
    "draw_noise",
    "step_with_noise",
    "step",
    "DEFAULT_MAX_SHRINKS",
]

DEFAULT_MAX_SHRINKS = 30


class EllipticalSliceState(NamedTuple):
    """Chains' current state: ``u`` ``(C, D)``, ``values`` ``(C, V)``, ``distance`` ``(C,)``."""

    u: torch.Tensor
    values: torch.Tensor
    distance: torch.Tensor


class EllipticalSliceInfo(NamedTuple):
    """What one step did, per chain.

    Attributes:
        n_simulations: ``(C,)`` int64, simulations this chain used (shrink rounds it took part in).
        cap_hit: ``(C,)`` bool, the chain reached ``max_shrinks`` and kept its state.
        accepted: ``(C,)`` bool, the chain moved (``~cap_hit``).
        theta: ``(C,)`` the accepted angle (0 where the cap was hit).
    """

    n_simulations: torch.Tensor
    cap_hit: torch.Tensor
    accepted: torch.Tensor
    theta: torch.Tensor


class EllipticalSliceNoise(NamedTuple):
    """A step's random numbers: ``nu`` ``(C, D)``, ``log_uniform`` ``(C,)`` for the threshold,
    and ``angle_uniforms`` ``(C, max_shrinks)`` in ``[0, 1)``: column 0 places the first angle in
    ``[0, 2 pi)``, column ``r`` the angle after ``r`` shrinks."""

    nu: torch.Tensor
    log_uniform: torch.Tensor
    angle_uniforms: torch.Tensor


def init(u: torch.Tensor, values: torch.Tensor, distance: torch.Tensor) -> EllipticalSliceState:
    """The state of ``C`` chains at ``u`` ``(C, D)`` with simulated ``values`` and ``distance``."""
    if u.dim() != 2 or values.dim() != 2 or distance.dim() != 1:
        raise ValueError(
            "init expects u (C, D), values (C, V) and distance (C,), got "
            f"{tuple(u.shape)}, {tuple(values.shape)}, {tuple(distance.shape)}"
        )
    if not (u.shape[0] == values.shape[0] == distance.shape[0]):
        raise ValueError("u, values and distance must share the chain dimension")
    return EllipticalSliceState(u, values, distance)


def log_likelihood(
    distance: torch.Tensor,
    epsilon: torch.Tensor | float,
    abc_kernel: str,
    walk_in_distance: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ABC kernel as a log-likelihood of distances ``(C,) -> (C,)``; NaN distances give -inf.

    ``walk_in_distance`` (indicator kernel only): accept up to ``max(eps, walk_in_distance)``.
    """
    epsilon = torch.as_tensor(epsilon).to(distance)
    if abc_kernel == "gaussian":
        value = -distance.square() / (2.0 * epsilon.square())
    elif abc_kernel == "indicator":
        threshold = (
            epsilon if walk_in_distance is None else torch.maximum(epsilon, walk_in_distance)
        )
        value = torch.where(distance <= threshold, 0.0, -torch.inf).to(distance.dtype)
    else:
        raise ValueError(f"abc_kernel must be one of {ABC_KERNELS}, got {abc_kernel!r}")
    return torch.where(torch.isnan(distance), -torch.inf, value)


def draw_noise(
    generator: torch.Generator, state: EllipticalSliceState, max_shrinks: int
) -> EllipticalSliceNoise:
    """Draw a step's random numbers for every chain, in a fixed order (nu, log U, angles)."""
    chains, dim = state.u.shape
    options = {"generator": generator, "device": state.u.device, "dtype": state.u.dtype}
    nu = torch.randn(chains, dim, **options)
    log_uniform = torch.log(torch.rand(chains, **options))
    angle_uniforms = torch.rand(chains, max_shrinks, **options)
    return EllipticalSliceNoise(nu, log_uniform, angle_uniforms)


def step_with_noise(
    state: EllipticalSliceState,
    simulate: Callable[[torch.Tensor], Simulation],
    epsilon: torch.Tensor | float,
    abc_kernel: str,
    noise: EllipticalSliceNoise,
    reference: GaussianReference | None = None,
    max_simulations: int | None = None,
) -> tuple[EllipticalSliceState, EllipticalSliceInfo]:
    """One elliptical slice step for all chains with the given random numbers.

    ``max_shrinks`` is ``noise.angle_uniforms.shape[1]``. See :func:`step` for the arguments.
    """
    u, values, distance = state
    chains = u.shape[0]
    max_shrinks = noise.angle_uniforms.shape[1]
    if max_shrinks < 1:
        raise ValueError("max_shrinks must be at least 1")
    if abc_kernel == "indicator":
        # log L(u) = 0 inside the set; with the walk-in rule the same holds for a chain outside it.
        walk_in = distance
        log_threshold = noise.log_uniform
    else:
        walk_in = None
        log_threshold = log_likelihood(distance, epsilon, abc_kernel) + noise.log_uniform
    if reference is not None:
        # Projections onto the reference's basis: a proposal's follows from these two without
        # another (C, D) x (D, k) product, since B^T S^(1/2) nu = scale * B^T nu.
        centre = reference.mean
        projected = (u - centre) @ reference.basis
        nu_projected = noise.nu @ reference.basis
        direction = noise.nu + (nu_projected * (reference.scale - 1.0)) @ reference.basis.T
        direction_projected = reference.scale * nu_projected
        log_threshold = log_threshold + reference.log_weight(u, projected)
    else:
        centre = None
        direction = noise.nu
    theta = noise.angle_uniforms[:, 0] * (2.0 * math.pi)
    lower = theta - 2.0 * math.pi
    upper = theta.clone()
    active = torch.ones(chains, dtype=torch.bool, device=u.device)
    accepted_theta = torch.zeros_like(theta)
    n_simulations = torch.zeros(chains, dtype=torch.int64, device=u.device)
    new_u, new_values, new_distance = u.clone(), values.clone(), distance.clone()
    spent = 0
    for round_index in range(max_shrinks):
        index = active.nonzero().squeeze(-1)
        if index.numel() == 0:  # the one host read per round: are any chains still shrinking?
            break
        if max_simulations is not None and spent + index.numel() > max_simulations:
            break  # the budget is spent: the chains still shrinking keep their state
        spent += index.numel()
        angle = theta[index].unsqueeze(-1)
        cosine, sine = torch.cos(angle), torch.sin(angle)
        if centre is None:
            proposal = u[index] * cosine + direction[index] * sine
        else:
            proposal = centre + (u[index] - centre) * cosine + direction[index] * sine
            proposal_projected = projected[index] * cosine + direction_projected[index] * sine
        simulation = simulate(proposal)
        n_simulations[index] += 1
        chain_walk_in = walk_in[index] if walk_in is not None else None
        log_l = log_likelihood(simulation.distance, epsilon, abc_kernel, chain_walk_in)
        if reference is not None:
            log_l = log_l + reference.log_weight(proposal, proposal_projected)
        on_slice = log_l > log_threshold[index]
        done = index[on_slice]
        new_u[done] = proposal[on_slice]
        new_values[done] = simulation.values[on_slice]
        new_distance[done] = simulation.distance[on_slice]
        accepted_theta[done] = theta[done]
        active[done] = False
        shrink = index[~on_slice]
        shrink_theta = theta[shrink]
        below = shrink_theta < 0
        lower[shrink] = torch.where(below, shrink_theta, lower[shrink])
        upper[shrink] = torch.where(below, upper[shrink], shrink_theta)
        if round_index + 1 < max_shrinks:
            fraction = noise.angle_uniforms[shrink, round_index + 1]
            theta[shrink] = lower[shrink] + (upper[shrink] - lower[shrink]) * fraction
    cap_hit = active
    new_state = EllipticalSliceState(new_u, new_values, new_distance)
    info = EllipticalSliceInfo(n_simulations, cap_hit, ~cap_hit, accepted_theta)
    return new_state, info


def step(
    generator: torch.Generator,
    state: EllipticalSliceState,
    simulate: Callable[[torch.Tensor], Simulation],
    epsilon: torch.Tensor | float,
    abc_kernel: str = "gaussian",
    max_shrinks: int = DEFAULT_MAX_SHRINKS,
    reference: GaussianReference | None = None,
    max_simulations: int | None = None,
) -> tuple[EllipticalSliceState, EllipticalSliceInfo]:
    """One elliptical slice sampling step on the ABC kernel for all chains.

    Args:
        generator: a ``torch.Generator`` on the state's device.
        state: :class:`EllipticalSliceState` with ``C`` chains.
        simulate: batched simulator ``u (B, D) -> Simulation`` (called with ``B <= C``).
        epsilon: the ABC tolerance (> 0; ``inf`` with the Gaussian kernel samples the prior).
        abc_kernel: ``"gaussian"`` (the likelihood ``exp(-rho^2 / (2 eps^2))``) or
            ``"indicator"``.
        max_shrinks: cap on shrink rounds (simulations) per chain and step.
        reference: optional reference Gaussian (None: ``N(0, I)``, plain elliptical slice
            sampling).
        max_simulations: at most this many simulations this step (None: no limit); the chains
            a round would exceed it for keep their state (counted as cap hits).

    Returns:
        ``(new_state, info)``.
    """
    noise = draw_noise(generator, state, max_shrinks)
    return step_with_noise(state, simulate, epsilon, abc_kernel, noise, reference, max_simulations)
