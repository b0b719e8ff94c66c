"""Ridge moves: a random walk of a few focus latents along which all the others follow.

Why. When many latents can compensate a few (the face's 400 shape and texture coefficients and
its camera, against its pose), the posterior is a long thin ridge: move the azimuth alone by one
degree and the scene falls hundreds of nats below the posterior's mass, yet a scene with the
azimuth one degree off and the shape refitted fits as well as the truth. Block moves cross such a
ridge only by tiny steps. A ridge move changes the focus coordinates and, with them, every other
coordinate by the amount that keeps the fit (``benchmarks/face_profile.py`` measures the ridge).

The directions come from a local linear-Gaussian picture of the target (the Gaussian ABC kernel on
summaries ``s(u)``, bandwidth ``h``, prior ``N(0, I)`` on the whitened ``u``): with ``J`` the
Jacobian of ``s`` along the moved coordinates, the Gauss-Newton precision is
``P = I + J^T J / h^2``. Split the coordinates into the focus ``f`` and the followers ``x``. Under
``N(., P^-1)``:

* the followers' conditional mean moves by ``T = -P_xx^-1 P_xf`` per unit of ``f``;
* the focus' marginal covariance is ``S = (P^-1)_ff``.

The move is ``u' = u + B delta``, ``delta ~ N(0, s^2 I_k)``, with ``B = [I; T] chol(S)`` (zero
rows for coordinates not moved) and a per-chain step ``s``. It is a symmetric random walk in a
fixed ``k``-dimensional subspace, so its Metropolis-Hastings ratio is the kernel ratio times the
prior ratio, ``K(rho') N(u') / (K(rho) N(u))``: exact for any directions (they are only fitted
during warm-up, then held). Good directions only make it move farther.

Blackjax style like :mod:`~probgraphics.inference.kernels.elliptical`: pure functions over the
elliptical kernel's :class:`~probgraphics.inference.kernels.elliptical.EllipticalState`, every
tensor with the chain dimension first, per-chain decisions as masks, randomness from the
``torch.Generator`` passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from probgraphics.inference.kernels import elliptical
from probgraphics.inference.kernels.elliptical import EllipticalInfo, EllipticalState
from probgraphics.inference.simulator import Simulation

__all__ = [
    "RidgeDirections",
    "RidgeNoise",
    "central_jacobian",
    "fit_directions",
    "draw_noise",
    "step_with_noise",
    "step",
]


class RidgeDirections(NamedTuple):
    """The walk's directions.

    Attributes:
        basis: ``(D, k)`` float, column ``j`` the change of ``u`` for one unit of the ``j``-th
            standardized focus direction (the followers' conditional-mean shift included).
    """

    basis: torch.Tensor


class RidgeNoise(NamedTuple):
    """One step's random numbers.

    Attributes:
        delta: ``(C, k)`` the walk's steps (already scaled by each chain's step size).
        log_uniform: ``(C,)`` ``log U`` for the accept test.
    """

    delta: torch.Tensor
    log_uniform: torch.Tensor


def central_jacobian(
    simulate: Callable[[torch.Tensor], Simulation],
    u: torch.Tensor,
    coordinates: torch.Tensor,
    step: float,
    batch_size: int = 1024,
) -> torch.Tensor:
    """Central-difference Jacobian of the summaries at one point: ``(K, m)`` float64.

    Args:
        simulate: ``u (B, D) -> Simulation`` (its ``summaries`` ``(B, K)``).
        u: ``(D,)`` the point.
        coordinates: ``(m,)`` long, the whitened coordinates to differentiate along.
        step: the difference step in whitened units (> 0).
        batch_size: simulations per call.

    Costs ``2 m`` simulations. Any deterministic function of ``u`` works here: the directions are
    a proposal, so a rough Jacobian (a renderer's pixel steps) only makes the moves shorter.
    """
    if not step > 0:
        raise ValueError(f"central_jacobian: step must be > 0, got {step}")
    m = coordinates.numel()
    shifts = torch.zeros(m, u.numel(), dtype=u.dtype, device=u.device)
    shifts[torch.arange(m, device=u.device), coordinates] = step
    points = torch.cat([u + shifts, u - shifts])
    summaries = torch.cat(
        [
            simulate(points[i : i + batch_size]).summaries.flatten(1)
            for i in range(0, points.shape[0], batch_size)
        ]
    ).double()
    return ((summaries[:m] - summaries[m:]) / (2.0 * step)).T


def fit_directions(
    jacobian: torch.Tensor,
    coordinates: torch.Tensor,
    focus: torch.Tensor,
    bandwidth: float,
    dim: int,
    dtype: torch.dtype = torch.float32,
) -> RidgeDirections:
    """The walk's directions from the summaries' Jacobian (see the module docstring).

    Args:
        jacobian: ``(K, m)`` float, the Jacobian along ``coordinates``.
        coordinates: ``(m,)`` long, which whitened coordinates its columns are.
        focus: ``(m,)`` bool, the focus coordinates among them (at least one, not all).
        bandwidth: the Gaussian kernel's ``h > 0``.
        dim: ``D``, the whitened dimension.
        dtype: the basis' dtype.

    Returns:
        :class:`RidgeDirections` with ``(D, k)`` basis, ``k = focus.sum()``, on the Jacobian's
        device.
    """
    m = coordinates.numel()
    if jacobian.dim() != 2 or jacobian.shape[1] != m or focus.shape != (m,):
        raise ValueError(
            f"fit_directions: jacobian must be (K, m) with m = {m} coordinates and focus (m,), "
            f"got {tuple(jacobian.shape)} and {tuple(focus.shape)}"
        )
    k = int(focus.sum())
    if k == 0 or k == m:
        raise ValueError(
            f"fit_directions: focus must pick at least one coordinate and leave at least one to "
            f"follow, got {k} of {m}"
        )
    if not bandwidth > 0:
        raise ValueError(f"fit_directions: bandwidth must be > 0, got {bandwidth}")
    j = jacobian.double()
    precision = torch.eye(m, dtype=j.dtype, device=j.device) + j.T @ j / bandwidth**2
    followers = ~focus
    p_xx = precision[followers][:, followers]
    p_xf = precision[followers][:, focus]
    # The followers' conditional-mean shift per unit of focus, and the focus' marginal
    # covariance (the inverse of its Schur complement).
    shift = -torch.linalg.solve(p_xx, p_xf)
    schur = precision[focus][:, focus] + p_xf.T @ shift
    marginal_root = torch.linalg.cholesky(torch.linalg.inv(schur))
    moves = torch.zeros(m, k, dtype=j.dtype, device=j.device)
    moves[focus] = marginal_root
    moves[followers] = shift @ marginal_root
    basis = torch.zeros(dim, k, dtype=j.dtype, device=j.device)
    basis[coordinates] = moves
    return RidgeDirections(basis.to(dtype))


def draw_noise(
    generator: torch.Generator, state: EllipticalState, step_size: torch.Tensor, k: int
) -> RidgeNoise:
    """One step's random numbers for every chain, in a fixed order (delta, log U);
    ``step_size`` ``(C,)``."""
    chains = state.u.shape[0]
    options = {"generator": generator, "device": state.u.device, "dtype": state.u.dtype}
    delta = torch.randn(chains, k, **options) * step_size.to(state.u).unsqueeze(-1)
    log_uniform = torch.log(torch.rand(chains, **options))
    return RidgeNoise(delta, log_uniform)


def step_with_noise(
    state: EllipticalState,
    simulate: Callable[[torch.Tensor], Simulation],
    epsilon: torch.Tensor | float,
    abc_kernel: str,
    directions: RidgeDirections,
    noise: RidgeNoise,
) -> tuple[EllipticalState, EllipticalInfo]:
    """One ridge move for all chains with the given random numbers.

    Args:
        state: the chains' :class:`EllipticalState` (``u`` ``(C, D)``).
        simulate: ``u (C, D) -> Simulation``.
        epsilon: the kernel's tolerance (bandwidth of the Gaussian kernel).
        abc_kernel: ``"gaussian"`` or ``"indicator"``.
        directions: :class:`RidgeDirections` ``(D, k)``.
        noise: :class:`RidgeNoise` ``(C, k)``.

    Returns:
        ``(new_state, info)``; ``info.a`` is the step's length ``|delta|`` per chain.
    """
    proposal = state.u + noise.delta @ directions.basis.T
    simulation = simulate(proposal)
    log_ratio = elliptical.log_acceptance_ratio(
        simulation.distance, state.distance, epsilon, abc_kernel
    )
    # A random walk, not a move that keeps the prior: the prior ratio is in the acceptance.
    prior = 0.5 * (state.u.square().sum(-1) - proposal.square().sum(-1))
    log_ratio = log_ratio + prior.to(log_ratio.dtype)
    new_state, accepted, acceptance_probability = elliptical.accept(
        state, proposal, simulation, log_ratio, noise.log_uniform
    )
    info = EllipticalInfo(
        accepted, simulation.distance, noise.delta.norm(dim=-1), acceptance_probability
    )
    return new_state, info


def step(
    generator: torch.Generator,
    state: EllipticalState,
    simulate: Callable[[torch.Tensor], Simulation],
    epsilon: torch.Tensor | float,
    abc_kernel: str,
    directions: RidgeDirections,
    step_size: torch.Tensor,
) -> tuple[EllipticalState, EllipticalInfo]:
    """One ridge move: :func:`draw_noise` then :func:`step_with_noise`. ``step_size`` ``(C,)``
    scales the standardized directions per chain."""
    noise = draw_noise(generator, state, step_size, directions.basis.shape[1])
    return step_with_noise(state, simulate, epsilon, abc_kernel, directions, noise)
