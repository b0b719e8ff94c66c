"""ABC-MCMC with elliptical (preconditioned Crank-Nicolson) proposals, batched over chains.

Target, in the whitened space: ``pi_eps(u) ∝ N(u; 0, I) K_eps(rho(u))``. The proposal

    u' = sqrt(1 - a^2) u + a nu,   nu ~ N(0, I),   a ~ Uniform(-beta, beta)

leaves ``N(0, I)`` invariant and is reversible (seed 000 section 4.1, after Neal), so the
Metropolis-Hastings acceptance probability is the kernel ratio ``K_eps(rho') / K_eps(rho)`` with no
prior ratio:

* indicator kernel: accept iff ``rho' <= eps``. A chain that is outside the ABC set (possible only
  while epsilon is being annealed, or from a poor start) accepts any proposal no farther than
  where it is, ``rho' <= max(eps, rho)``, so it walks into the set instead of freezing; for a chain
  inside the set this is exactly ``rho' <= eps``;
* Gaussian kernel ``exp(-rho^2 / (2 eps^2))``: accept iff
  ``log U < (rho^2 - rho'^2) / (2 eps^2)``.

**Reference Gaussian (optional).** With ``reference = N(m, S)`` (fitted to the chains during
warm-up by the run loop, then frozen), the move becomes the generalized pCN move around it,

    u' = m + sqrt(1 - a^2) (u - m) + a S^(1/2) nu,

which is reversible with respect to ``N(m, S)``; the acceptance ratio then carries the weight
``w(u) = N(u; 0, I) / N(u; m, S)``: ``K(rho') w(u') / (K(rho) w(u))``. With ``reference=None``
(``m = 0``, ``S = I``) this is exactly the paper's move with no prior ratio. A reference close to
the posterior lets the move take large steps along the directions the data barely constrain and
small ones across the directions it pins down, which the plain move cannot.

**Blocks.** With a ``mask`` ``(D,)`` bool the move changes only the masked coordinates of ``u``
and keeps the rest: Metropolis-within-Gibbs on one block (e.g. one latent site). Since the prior
``N(0, I)`` factorizes over coordinates, the block move is still reversible with respect to it,
and the acceptance ratio keeps the same form. A reference used with a mask must be ``N(0, I)``
outside the mask (zero mean and basis rows there), so its weight does not depend on the kept
coordinates.

**Independence move (data-driven proposals).** :func:`independence_step` is the move with
``a = 1``: ``u' = m + S^(1/2) nu``, a fresh draw of the reference ``N(m, S)`` whatever ``u`` is
(for example a trained guide's q(z | x_obs) pushed into the whitened space). Its acceptance ratio
``K(rho') w(u') / (K(rho) w(u))`` is exactly the independence Metropolis-Hastings ratio: ABC
kernel ratio x prior ratio ``N(u') / N(u)`` x proposal ratio ``q(u) / q(u')``. Any proposal
gives an exact kernel; a good one only makes it faster.

Blackjax style: pure functions; :class:`EllipticalState` and :class:`EllipticalInfo` are immutable
NamedTuples whose tensors all lead with the chain dimension ``C``; per-chain decisions are masks;
randomness comes from the ``torch.Generator`` passed in; nothing reads a tensor on the host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from probgraphics.inference.simulator import Simulation

__all__ = [
    "GaussianReference",
    "reference_log_weight",
    "EllipticalState",
    "EllipticalInfo",
    "EllipticalNoise",
    "ABC_KERNELS",
    "init",
    "propose",
    "propose_with_weight",
    "log_acceptance_ratio",
    "accept",
    "draw_noise",
    "step_with_noise",
    "step",
    "independence_step",
]

ABC_KERNELS = ("indicator", "gaussian")
#: A full-rank reference up to this dimension moves in its whitened coordinates
#: (:func:`_full_rank_move`), whose two ``(D, D)`` products a step cost little only for small D.
FULL_RANK_MOVE_MAX_DIM = 64


class GaussianReference(NamedTuple):
    """A Gaussian ``N(mean, S)`` in the whitened space, ``S = I + B (diag(scale^2) - I) B^T``.

    ``S`` differs from the prior's identity only along the ``k`` orthonormal columns of ``B``
    (``k = D`` gives any covariance); moves and weights then cost ``O(C D k)``.

    Attributes:
        mean: ``(D,)`` float.
        basis: ``(D, k)`` orthonormal columns ``B``.
        scale: ``(k,)`` positive standard deviations along the columns of ``B``.
    """

    mean: torch.Tensor
    basis: torch.Tensor
    scale: torch.Tensor

    def offset(self, nu: torch.Tensor) -> torch.Tensor:
        """``S^(1/2) nu`` for standard-normal ``nu`` ``(C, D)``: a draw of ``N(0, S)``."""
        return nu + ((nu @ self.basis) * (self.scale - 1.0)) @ self.basis.T

    def squared_mahalanobis(
        self,
        u: torch.Tensor,
        projected: torch.Tensor | None = None,
        centred: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(u - mean)^T S^-1 (u - mean)`` per chain: ``(C, D) -> (C,)``.

        ``projected``: ``(u - mean) @ basis`` ``(C, k)`` when already known (saves a matmul);
        ``centred``: ``u - mean`` ``(C, D)`` when already known (saves a pass over ``u``).
        """
        if centred is None:
            centred = u - self.mean
        if projected is None:
            projected = centred @ self.basis
        correction = (projected.square() * (self.scale.square().reciprocal() - 1.0)).sum(-1)
        return centred.square().sum(-1) + correction

    def log_weight(
        self,
        u: torch.Tensor,
        projected: torch.Tensor | None = None,
        centred: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:func:`reference_log_weight` of ``u`` ``(C, D)``, given its projection and
        ``u - mean`` if known."""
        return 0.5 * (self.squared_mahalanobis(u, projected, centred) - u.square().sum(-1))


def reference_log_weight(reference: GaussianReference | None, u: torch.Tensor) -> torch.Tensor:
    """``log N(u; 0, I) - log N(u; m, S)`` up to a constant, per chain: ``(C, D) -> (C,)``.

    Zero for ``reference=None``. The constant ``sum(log scale)`` is left out: it cancels in every
    ratio the kernels take.
    """
    if reference is None:
        return u.new_zeros(u.shape[0])
    return reference.log_weight(u)


class EllipticalState(NamedTuple):
    """Chains' current state.

    Attributes:
        u: ``(C, D)`` whitened position, float.
        values: ``(C, V)`` the constrained latent values at ``u`` (flattened), float.
        distance: ``(C,)`` summary distance of the simulation at ``u``, float.
    """

    u: torch.Tensor
    values: torch.Tensor
    distance: torch.Tensor


class EllipticalInfo(NamedTuple):
    """What one step did, per chain.

    Attributes:
        accepted: ``(C,)`` bool, the proposal was accepted.
        proposed_distance: ``(C,)`` the proposal's distance.
        a: ``(C,)`` the proposal's ellipse coefficient.
        acceptance_probability: ``(C,)`` ``min(1, K(rho') / K(rho))`` (0 for a NaN distance);
            its average is a lower-variance acceptance estimate used for adapting beta.
    """

    accepted: torch.Tensor
    proposed_distance: torch.Tensor
    a: torch.Tensor
    acceptance_probability: torch.Tensor


class EllipticalNoise(NamedTuple):
    """The random numbers of one step, drawn up front so a reference loop can replay them.

    Attributes:
        a: ``(C,)`` ellipse coefficients in ``(-beta, beta)``.
        nu: ``(C, D)`` standard-normal directions.
        log_uniform: ``(C,)`` ``log U``, ``U ~ Uniform[0, 1)``, for the accept test.
    """

    a: torch.Tensor
    nu: torch.Tensor
    log_uniform: torch.Tensor


def _check_abc_kernel(abc_kernel: str) -> None:
    if abc_kernel not in ABC_KERNELS:
        raise ValueError(f"abc_kernel must be one of {ABC_KERNELS}, got {abc_kernel!r}")


def init(u: torch.Tensor, values: torch.Tensor, distance: torch.Tensor) -> EllipticalState:
    """The state of ``C`` chains at ``u`` ``(C, D)``, whose simulations gave ``values`` ``(C, V)``
    and ``distance`` ``(C,)`` (e.g. the best pilot particles)."""
    if u.dim() != 2 or values.dim() != 2 or distance.dim() != 1:
        raise ValueError(
            "init expects u (C, D), values (C, V) and distance (C,), got "
            f"{tuple(u.shape)}, {tuple(values.shape)}, {tuple(distance.shape)}"
        )
    if not (u.shape[0] == values.shape[0] == distance.shape[0]):
        raise ValueError(
            f"u, values and distance must share the chain dimension, got {u.shape[0]}, "
            f"{values.shape[0]}, {distance.shape[0]}"
        )
    return EllipticalState(u, values, distance)


def propose(
    u: torch.Tensor,
    nu: torch.Tensor,
    a: torch.Tensor,
    reference: GaussianReference | None = None,
) -> torch.Tensor:
    """The elliptical move ``sqrt(1 - a^2) u + a nu``: ``(C, D), (C, D), (C,) -> (C, D)``.

    With a ``reference`` ``N(m, S)``: ``m + sqrt(1 - a^2) (u - m) + a S^(1/2) nu``.
    """
    a = a.unsqueeze(-1)
    if reference is None:
        return torch.sqrt(1.0 - a * a) * u + a * nu
    return (
        reference.mean + torch.sqrt(1.0 - a * a) * (u - reference.mean) + a * reference.offset(nu)
    )


def log_acceptance_ratio(
    proposed_distance: torch.Tensor,
    current_distance: torch.Tensor,
    epsilon: torch.Tensor | float,
    abc_kernel: str,
) -> torch.Tensor:
    """``log K(rho') - log K(rho)`` per chain ``(C,)`` (see the module docstring for the indicator
    kernel's walk-in rule). NaN distances give NaN, which every accept test rejects."""
    if abc_kernel == "indicator":
        threshold = torch.maximum(current_distance, torch.as_tensor(epsilon).to(current_distance))
        inside = proposed_distance <= threshold
        ratio = torch.where(inside, 0.0, -torch.inf).to(proposed_distance.dtype)
        return torch.where(torch.isnan(proposed_distance), torch.nan, ratio)
    _check_abc_kernel(abc_kernel)
    epsilon = torch.as_tensor(epsilon).to(current_distance)
    return (current_distance.square() - proposed_distance.square()) / (2.0 * epsilon.square())


def draw_noise(
    generator: torch.Generator, state: EllipticalState, beta: torch.Tensor
) -> EllipticalNoise:
    """Draw one step's random numbers for every chain, in a fixed order (a, nu, log U)."""
    chains, dim = state.u.shape
    options = {"generator": generator, "device": state.u.device, "dtype": state.u.dtype}
    a = beta.to(state.u) * (2.0 * torch.rand(chains, **options) - 1.0)
    nu = torch.randn(chains, dim, **options)
    log_uniform = torch.log(torch.rand(chains, **options))
    return EllipticalNoise(a, nu, log_uniform)


def _full_rank_move(
    u: torch.Tensor, noise: EllipticalNoise, reference: GaussianReference
) -> tuple[torch.Tensor, torch.Tensor]:
    """The move around a full-rank reference (``k = D``, small ``D``), in its whitened
    coordinates ``z = S^(-1/2) (u - m)``: there it is the plain ``sqrt(1 - a^2) z + a nu``, and
    ``log w(u) = (|z|^2 - |u|^2) / 2``. The same move as the low-rank form (``S^(1/2) nu`` is
    ``B diag(scale) B^T nu`` either way) in about half the tensor operations, which is what a
    step of a cheap simulator costs. Returns ``(proposal (C, D), log w(proposal) - log w(u))``.
    """
    basis, scale = reference.basis, reference.scale
    root = (basis * scale) @ basis.T  # S^(1/2), symmetric
    inverse_root = (basis / scale) @ basis.T  # S^(-1/2)
    whitened = (u - reference.mean) @ inverse_root
    a = noise.a.unsqueeze(-1)
    moved = torch.sqrt(1.0 - a * a) * whitened + a * noise.nu
    proposal = reference.mean + moved @ root
    change = moved.square() - whitened.square() - proposal.square() + u.square()
    return proposal, 0.5 * change.sum(-1)


def propose_with_weight(
    u: torch.Tensor,
    noise: EllipticalNoise,
    reference: GaussianReference | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The move's proposal ``(C, D)`` from ``u`` ``(C, D)`` with the step's random numbers, and the
    change of the reference's log weight ``log w(u') - log w(u)`` ``(C,)`` its acceptance ratio
    carries (None without a reference: the plain move needs no correction). ``mask``: the block
    of coordinates it changes (None: all).
    """
    if mask is not None:
        proposal = torch.where(mask, propose(u, noise.nu, noise.a, reference), u)
        log_weight_change = None
        if reference is not None:
            # The reference is N(0, I) outside the mask, so the kept coordinates cancel here.
            log_weight_change = reference.log_weight(proposal) - reference.log_weight(u)
    elif reference is None:
        proposal = propose(u, noise.nu, noise.a)
        log_weight_change = None
    elif reference.basis.shape[0] == reference.basis.shape[1] <= FULL_RANK_MOVE_MAX_DIM:
        proposal, log_weight_change = _full_rank_move(u, noise, reference)
    else:
        # Three (C, D) x (D, k) products a step: the proposal's projection onto the reference's
        # basis follows from the current one and nu's, since B^T S^(1/2) nu = scale * B^T nu.
        centred = u - reference.mean
        projected = centred @ reference.basis
        nu_projected = noise.nu @ reference.basis
        a = noise.a.unsqueeze(-1)
        keep = torch.sqrt(1.0 - a * a)
        # proposal = m + keep (u - m) + a (nu + B ((scale - 1) B^T nu)), accumulated in place in
        # this step's own temporaries (three fewer (C, D) allocations); IEEE addition and
        # multiplication commute, so these are the same bits as the expression written out.
        offset = (nu_projected * (reference.scale - 1.0)) @ reference.basis.T
        offset += noise.nu
        offset *= a
        proposal = keep * centred
        proposal += reference.mean
        proposal += offset
        proposal_projected = keep * projected + a * reference.scale * nu_projected
        log_weight_change = reference.log_weight(
            proposal, proposal_projected
        ) - reference.log_weight(u, projected, centred)
    return proposal, log_weight_change


def step_with_noise(
    state: EllipticalState,
    simulate: Callable[[torch.Tensor], Simulation],
    epsilon: torch.Tensor | float,
    abc_kernel: str,
    noise: EllipticalNoise,
    reference: GaussianReference | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[EllipticalState, EllipticalInfo]:
    """One ABC-MCMC step for all chains with the given random numbers.

    Args:
        state: the chains' state.
        simulate: ``u (C, D) -> Simulation`` (values, summaries, distance), batched.
        epsilon: the ABC tolerance, a float or a tensor broadcastable to ``(C,)``.
        abc_kernel: ``"indicator"`` or ``"gaussian"``.
        noise: the step's random numbers (:func:`draw_noise`).
        reference: optional :class:`GaussianReference` (see the module docstring).
        mask: optional ``(D,)`` bool, the block of coordinates the move changes (None: all).

    Returns:
        ``(new_state, info)``.
    """
    _check_abc_kernel(abc_kernel)
    proposal, log_weight_change = propose_with_weight(state.u, noise, reference, mask)
    simulation = simulate(proposal)
    log_ratio = log_acceptance_ratio(simulation.distance, state.distance, epsilon, abc_kernel)
    if log_weight_change is not None:
        log_ratio = log_ratio + log_weight_change
    new_state, accepted, acceptance_probability = accept(
        state, proposal, simulation, log_ratio, noise.log_uniform
    )
    info = EllipticalInfo(accepted, simulation.distance, noise.a, acceptance_probability)
    return new_state, info


def accept(
    state: EllipticalState,
    proposal: torch.Tensor,
    simulation: Simulation,
    log_ratio: torch.Tensor,
    log_uniform: torch.Tensor,
) -> tuple[EllipticalState, torch.Tensor, torch.Tensor]:
    """The Metropolis-Hastings decision of every chain: ``log U < log_ratio`` (``(C,)``; False
    for NaN) takes the ``proposal`` ``(C, D)`` and its ``simulation``, else keeps ``state``.
    Returns ``(new_state, accepted (C,) bool, min(1, exp(log_ratio)) (C,), 0 for NaN)``."""
    accepted = log_uniform.to(log_ratio.dtype) < log_ratio
    acceptance_probability = torch.exp(log_ratio.clamp(max=0.0)).nan_to_num(0.0)
    new_state = EllipticalState(
        u=torch.where(accepted.unsqueeze(-1), proposal, state.u),
        values=torch.where(accepted.unsqueeze(-1), simulation.values, state.values),
        distance=torch.where(accepted, simulation.distance, state.distance),
    )
    return new_state, accepted, acceptance_probability


def step(
    generator: torch.Generator,
    state: EllipticalState,
    simulate: Callable[[torch.Tensor], Simulation],
    epsilon: torch.Tensor | float,
    beta: torch.Tensor,
    abc_kernel: str = "indicator",
    reference: GaussianReference | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[EllipticalState, EllipticalInfo]:
    """One ABC-MCMC step with elliptical proposals for all chains.

    Args:
        generator: a ``torch.Generator`` on the state's device.
        state: :class:`EllipticalState` with ``C`` chains.
        simulate: batched simulator ``u (C, D) -> Simulation``.
        epsilon: the ABC tolerance (> 0; ``inf`` samples the prior).
        beta: ``(C,)`` per-chain proposal scale in ``(0, 1]``; ``a ~ Uniform(-beta, beta)``.
        abc_kernel: ``"indicator"`` or ``"gaussian"``.
        reference: optional :class:`GaussianReference` the move is centred on (None: ``N(0, I)``,
            the paper's move).
        mask: optional ``(D,)`` bool block of coordinates to move (None: all of them).

    Returns:
        ``(new_state, info)``.
    """
    noise = draw_noise(generator, state, beta)
    return step_with_noise(state, simulate, epsilon, abc_kernel, noise, reference, mask)


def independence_step(
    generator: torch.Generator,
    state: EllipticalState,
    simulate: Callable[[torch.Tensor], Simulation],
    epsilon: torch.Tensor | float,
    proposal: GaussianReference,
    abc_kernel: str = "indicator",
    mask: torch.Tensor | None = None,
) -> tuple[EllipticalState, EllipticalInfo]:
    """One independence Metropolis-Hastings step: every chain proposes a fresh draw of
    ``proposal`` ``N(m, S)`` (on the ``mask`` block; see the module docstring).

    Draws the same random numbers as :func:`step` (with ``a`` then set to 1), so a schedule that
    mixes both consumes the generator in a fixed order.
    """
    ones = torch.ones(state.u.shape[0], dtype=state.u.dtype, device=state.u.device)
    noise = draw_noise(generator, state, ones)._replace(a=ones)
    return step_with_noise(state, simulate, epsilon, abc_kernel, noise, proposal, mask)
