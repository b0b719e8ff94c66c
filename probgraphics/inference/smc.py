"""ABC-SMC: a population of particles moved by the elliptical kernel through shrinking tolerances.

A sequential Monte Carlo sampler for the ABC targets of DESIGN section 4 (Del Moral, Doucet &
Jasra 2012, "An adaptive sequential Monte Carlo method for approximate Bayesian computation"), in
the whitened space ``u ~ N(0, I)``:

    pi_t(u) ∝ N(u; 0, I) K_{eps_t}(rho(u)),   eps_0 = inf > eps_1 > eps_2 > ...

* **Start.** ``P`` particles are prior draws ``u ~ N(0, I)``, simulated (after the pilot, whose
  prior-predictive summaries set the standardized distance's scale), with equal weights:
  a sample of ``pi_0``, the prior.
* **Round t.** (1) *Epsilon.* For the indicator kernel, ``eps_t`` is the weighted ``alpha``-
  quantile of the particles' distances (the fraction ``alpha`` of the weight is kept); for the
  Gaussian kernel, whose distances do not shrink below the simulator's noise however small the
  tolerance, ``eps_t`` is found by bisection so that the reweighting keeps the fraction ``alpha``
  of the effective sample size (Del Moral et al.'s rule; for the indicator kernel with equal
  weights the two coincide). A given final tolerance ``epsilon`` is a floor: ``eps_t =
  max(candidate, epsilon)``. (2) *Reweight* by ``K_{eps_t}(rho) / K_{eps_{t-1}}(rho)``
  (indicator: ``1[rho <= eps_t]``; Gaussian: ``exp(-rho^2 / 2 (eps_t^-2 - eps_{t-1}^-2))``).
  (3) *Resample* (systematic or multinomial) when the effective sample size falls below half
  the particles. (4) *Move* every particle of positive weight with ``k`` steps of the elliptical
  (pCN) kernel :func:`probgraphics.inference.kernels.elliptical.step` at ``eps_t``: it leaves
  ``pi_t`` invariant, so the weighted population stays a sample of ``pi_t``. The kernel's
  ``beta`` (one for the population) is adapted between rounds from the previous round's mean
  acceptance probability; with ``precondition`` the moves are centred on a
  :class:`~probgraphics.inference.kernels.elliptical.GaussianReference` fitted to the weighted
  population (:func:`probgraphics.inference.runner.fit_reference`). Both depend only on the
  population before the move, so each particle's move is a fixed ``pi_t``-invariant kernel.
* **Stop.** When the budget cannot pay for one more move of every particle (every simulator call
  counts, pilot included, so ``n_simulations <= simulations``), or, with no final ``epsilon``,
  when epsilon stops decreasing (the quantile equals the previous tolerance) or the moves stop
  working (mean acceptance below :data:`MIN_ACCEPTANCE`). With a final ``epsilon`` the schedule
  reaches it and the remaining budget is spent on rounds at exactly that tolerance (reweighting
  is then the identity; only moves), so the final population targets ``pi_epsilon`` exactly.
* **Result.** The final weighted population is resampled once more, into ``P`` equal-weight
  particles: an ordinary one-chain sample.

Blackjax style: pure functions over the immutable :class:`SMCState` whose tensors lead with the
particle dimension ``P``; per-particle decisions are masks; randomness comes from the explicit
``torch.Generator`` passed in. Host reads happen once per round (the new tolerance, how many
particles are alive, the acceptance rate), never per particle.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from probgraphics.inference import tempering
from probgraphics.inference.kernels import elliptical
from probgraphics.inference.kernels.elliptical import GaussianReference
from probgraphics.inference.posterior import Posterior
from probgraphics.inference.runner import MAX_REFERENCE_DIM, fit_reference
from probgraphics.inference.simulator import (
    Simulation,
    in_batches,
    seeded_simulator,
    simulate_pilot,
    simulated_posterior,
    simulation_bar,
)
from probgraphics.inference.tempering import (
    RESAMPLING_SCHEMES,
    effective_sample_size,
    incremental_log_weights,
    log_kernel,
    normalized_weights,
    resample_indices,
    weighted_moments,
    weighted_quantile,
)
from probgraphics.inference.whitening import WhiteningLayout

__all__ = [
    "RESAMPLING_SCHEMES",
    "SMCState",
    "MoveInfo",
    "init",
    "log_kernel",
    "normalized_weights",
    "effective_sample_size",
    "weighted_quantile",
    "next_epsilon",
    "reweight",
    "resample_indices",
    "resample",
    "fit_population_reference",
    "adaptive_steps",
    "move",
    "run_smc",
]

#: Resample when the effective sample size falls below this fraction of the particles (up to a
#: relative rounding margin of ``1e-9``: with ``alpha = 0.5`` an indicator round leaves exactly
#: half, and whether its floating-point ESS lands a hair below or above must not decide).
RESAMPLE_THRESHOLD = 0.5
#: beta is adapted toward this mean acceptance probability ...
TARGET_ACCEPTANCE = 0.25
#: ... by ``log beta += BETA_GAIN * (acceptance - TARGET_ACCEPTANCE)`` after each round,
BETA_GAIN = 2.0
#: clipped to ``[MIN_BETA, 1]``.
MIN_BETA = 1e-4
#: ``mcmc_steps="adaptive"``: enough steps that a particle stays put through all of them with
#: probability at most this (Drovandi & Pettitt 2011), ...
ADAPTIVE_STAY_PROBABILITY = 0.01
#: ... at most this many.
MAX_ADAPTIVE_STEPS = 20
#: Steps of the first round under ``mcmc_steps="adaptive"`` (no acceptance known yet).
FIRST_ADAPTIVE_STEPS = 2
#: With no final epsilon, the schedule stops when a round's moves accept less often than this.
MIN_ACCEPTANCE = 0.01
#: The reference the moves are centred on has this many times the population's covariance. At
#: 1, a population that came out of resampling a little too narrow stays too narrow (the moves
#: then propose mostly inside it): on linear_gaussian the final variance was 2-8% low at a fixed
#: tolerance; at 2 it matched.
REFERENCE_INFLATION = 2.0


class SMCState(NamedTuple):
    """The particle population.

    Attributes:
        u: ``(P, D)`` whitened positions, float (the layout's dtype).
        values: ``(P, V)`` constrained latent values at ``u`` (flattened), float.
        distance: ``(P,)`` summary distance of each particle's simulation, float (NaN possible).
        log_weight: ``(P,)`` unnormalized log importance weights, float64 (``-inf``: dead).
        epsilon: ``()`` float64, the tolerance the weighted population targets (``inf``: prior).
    """

    u: torch.Tensor
    values: torch.Tensor
    distance: torch.Tensor
    log_weight: torch.Tensor
    epsilon: torch.Tensor


class MoveInfo(NamedTuple):
    """What the move step of one round did.

    Attributes:
        moved: ``(P,)`` bool, the particle accepted at least one proposal this round.
        acceptance_rate: ``()`` float64, accepted proposals / proposals (moved particles only).
        acceptance_probability: ``()`` float64, the mean of ``min(1, ratio)`` over the same.
        n_simulations: simulations the move spent (a Python int, from tensor shapes).
        steps: kernel steps taken (a Python int).
    """

    moved: torch.Tensor
    acceptance_rate: torch.Tensor
    acceptance_probability: torch.Tensor
    n_simulations: int
    steps: int


def init(u: torch.Tensor, values: torch.Tensor, distance: torch.Tensor) -> SMCState:
    """Equal-weight particles at ``u`` ``(P, D)`` (prior draws) with their simulations' ``values``
    ``(P, V)`` and ``distance`` ``(P,)``; the tolerance is ``inf`` (the prior). A failed
    simulation (non-finite distance) has zero ABC kernel at every tolerance: its particle starts
    dead (weight 0), so no resampling ever picks it."""
    if u.dim() != 2 or values.dim() != 2 or distance.dim() != 1:
        raise ValueError(
            "init expects u (P, D), values (P, V) and distance (P,), got "
            f"{tuple(u.shape)}, {tuple(values.shape)}, {tuple(distance.shape)}"
        )
    if not (u.shape[0] == values.shape[0] == distance.shape[0]):
        raise ValueError(
            f"u, values and distance must share the particle dimension, got {u.shape[0]}, "
            f"{values.shape[0]}, {distance.shape[0]}"
        )
    alive = torch.isfinite(distance)
    log_weight = torch.where(alive, 0.0, -math.inf).to(torch.float64)
    epsilon = torch.tensor(math.inf, dtype=torch.float64, device=u.device)
    return SMCState(u, values, distance, log_weight, epsilon)


def next_epsilon(
    state: SMCState, alpha: float, abc_kernel: str, floor: float = 0.0
) -> torch.Tensor:
    """The population's next tolerance: :func:`probgraphics.inference.tempering.next_epsilon`
    of its distances and weights (``()`` float64)."""
    return tempering.next_epsilon(
        state.distance, state.log_weight, state.epsilon, alpha, abc_kernel, floor
    )


def reweight(state: SMCState, epsilon: torch.Tensor, abc_kernel: str) -> SMCState:
    """Move the weights from ``state.epsilon`` to ``epsilon``: multiply by
    ``K_eps(rho) / K_prev(rho)`` (dead particles stay dead; NaN distances die)."""
    epsilon = torch.as_tensor(epsilon, dtype=torch.float64, device=state.log_weight.device)
    increment = incremental_log_weights(state.distance, epsilon, state.epsilon, abc_kernel)
    alive = torch.isfinite(state.log_weight)
    log_weight = torch.where(alive, state.log_weight + increment, -math.inf)
    # Keep the largest log weight at 0 so weights never underflow over many rounds.
    shift = torch.where(torch.isfinite(log_weight), log_weight, -math.inf).max()
    shift = torch.where(torch.isfinite(shift), shift, 0.0)
    return state._replace(log_weight=log_weight - shift, epsilon=epsilon)


def resample(
    generator: torch.Generator, state: SMCState, scheme: str = "systematic"
) -> tuple[SMCState, torch.Tensor]:
    """Equal-weight population drawn from ``state``; returns ``(state, ancestor indices (P,))``."""
    index = resample_indices(generator, state.log_weight, scheme)
    new_state = SMCState(
        u=state.u[index],
        values=state.values[index],
        distance=state.distance[index],
        log_weight=torch.zeros_like(state.log_weight),
        epsilon=state.epsilon,
    )
    return new_state, index


def fit_population_reference(
    state: SMCState, rank: int | None = None, inflation: float = REFERENCE_INFLATION
) -> GaussianReference:
    """A :class:`GaussianReference` ``N(m, inflation * C)`` from the weighted population's mean
    ``m`` and covariance ``C`` (shrunk toward ``N(0, I)`` with the effective sample size as the
    count; see ``runner.fit_reference``)."""
    weights = normalized_weights(state.log_weight)
    u = state.u.to(torch.float64)
    count = effective_sample_size(state.log_weight).clamp(min=1.0)
    mean, covariance = weighted_moments(u, weights)
    total = count * mean
    outer = count * (inflation * covariance + torch.outer(mean, mean))
    return fit_reference(count, total, outer, state.u.dtype, rank)


def adaptive_steps(acceptance_rate: float) -> int:
    """Steps so a particle stays put through all of them with probability at most
    :data:`ADAPTIVE_STAY_PROBABILITY` at this acceptance rate, in ``[1, MAX_ADAPTIVE_STEPS]``."""
    if not acceptance_rate > 0.0:
        return MAX_ADAPTIVE_STEPS
    if acceptance_rate >= 1.0:
        return 1
    steps = math.ceil(math.log(ADAPTIVE_STAY_PROBABILITY) / math.log1p(-acceptance_rate))
    return min(max(steps, 1), MAX_ADAPTIVE_STEPS)


def move(
    generator: torch.Generator,
    state: SMCState,
    simulate: Callable[[torch.Tensor], Simulation],
    beta: torch.Tensor,
    abc_kernel: str,
    steps: int,
    reference: GaussianReference | None = None,
) -> tuple[SMCState, MoveInfo]:
    """``steps`` elliptical-kernel steps at ``state.epsilon`` for every particle of positive
    weight (dead ones are not simulated: they carry no weight).

    Args:
        generator: the kernel's ``torch.Generator`` (on the particles' device).
        state: the reweighted (and possibly resampled) population.
        simulate: batched simulator ``u (B, D) -> Simulation``.
        beta: ``()`` the population's proposal scale in ``(0, 1]``.
        abc_kernel: ``"indicator"`` or ``"gaussian"``.
        steps: kernel steps (>= 1).
        reference: optional Gaussian the moves are centred on.

    Returns:
        ``(state, info)``; weights and tolerance unchanged.
    """
    count = state.u.shape[0]
    alive = torch.isfinite(state.log_weight)
    n_alive = int(alive.sum())  # one host read per round
    everyone = n_alive == count
    index = None if everyone else torch.nonzero(alive).squeeze(-1)
    kernel_state = elliptical.init(
        state.u if everyone else state.u[index],
        state.values if everyone else state.values[index],
        state.distance if everyone else state.distance[index],
    )
    epsilon = state.epsilon.to(state.u.dtype)
    beta_per_particle = beta.to(state.u.dtype).expand(n_alive)
    moved = torch.zeros(n_alive, dtype=torch.bool, device=state.u.device)
    accepted_total = torch.zeros((), dtype=torch.float64, device=state.u.device)
    probability_total = torch.zeros((), dtype=torch.float64, device=state.u.device)
    for _ in range(steps):
        kernel_state, info = elliptical.step(
            generator, kernel_state, simulate, epsilon, beta_per_particle, abc_kernel, reference
        )
        moved |= info.accepted
        accepted_total += info.accepted.to(torch.float64).sum()
        probability_total += info.acceptance_probability.to(torch.float64).sum()
    proposals = max(n_alive * steps, 1)
    if everyone:
        new_state = state._replace(
            u=kernel_state.u, values=kernel_state.values, distance=kernel_state.distance
        )
        moved_all = moved
    else:
        new_state = state._replace(
            u=state.u.index_copy(0, index, kernel_state.u),
            values=state.values.index_copy(0, index, kernel_state.values),
            distance=state.distance.index_copy(0, index, kernel_state.distance),
        )
        moved_all = torch.zeros(count, dtype=torch.bool, device=state.u.device)
        moved_all = moved_all.index_copy(0, index, moved)
    info = MoveInfo(
        moved=moved_all,
        acceptance_rate=accepted_total / proposals,
        acceptance_probability=probability_total / proposals,
        n_simulations=n_alive * steps,
        steps=steps,
    )
    return new_state, info


def run_smc(
    program: Callable[[], Any],
    layout: WhiteningLayout,
    observation: Mapping[str, torch.Tensor],
    *,
    simulations: int,
    particles: int,
    alpha: float,
    mcmc_steps: int | str,
    abc_kernel: str,
    epsilon: float | None,
    resampling: str,
    precondition: bool,
    summary: Callable,
    distance: str | Callable | None,
    seed: int,
    device: str,
    batch_size: int,
    pilot_size: int,
    progress: bool,
    settings: dict[str, Any],
) -> Posterior:
    """Run ABC-SMC and return a one-chain :class:`Posterior` of ``particles`` equal-weight draws.

    Args:
        program, layout, observation, summary: as for the ABC-MCMC runner.
        simulations: the hard budget: every simulator call, pilot included.
        particles: population size ``P``; ``simulations >= pilot_size + 2 * particles`` (the
            caller checks: the start and at least one move).
        alpha: fraction of the weight (indicator) or effective sample size (Gaussian) each
            round keeps, in ``(0, 1)``.
        mcmc_steps: kernel steps per round (int >= 1), or ``"adaptive"``.
        abc_kernel: ``"indicator"`` or ``"gaussian"``.
        epsilon: final tolerance (None: adaptive until the budget is spent or epsilon stalls).
        resampling: ``"systematic"`` or ``"multinomial"``.
        precondition: centre the moves on a Gaussian fitted to the population each round.
        distance: distance name or callable (resolved with the pilot's summaries).
        seed: seeds every random number of the run.
        device: where to simulate.
        batch_size: simulations per program call.
        pilot_size: prior simulations whose summaries set the standardized distance's scale.
        progress: show a tqdm bar over simulations.
        settings: JSON-serializable options to record.

    Returns:
        A :class:`Posterior` with samples ``(1, P, *event)``, sample stats ``distance``,
        ``accepted`` (the particle moved in the last round), ``epsilon``, ``beta``; the pilot
        as ``prior``; in ``settings`` the schedule per round (``epsilon_sequence``,
        ``acceptance_rates``, ``effective_sample_sizes`` after reweighting, ``resampled``,
        ``steps_per_round``, ``betas``), ``final_effective_sample_size`` (before the final
        resampling), ``last_resampling_effective_sample_size`` (before the last resampling
        inside the rounds, the final one excluded; ``P`` if none), ``unique_particles``,
        ``stop_reason``.
    """
    start = time.perf_counter()
    torch_device = torch.device(device)
    generator, simulator = seeded_simulator(
        program, layout, observation, summary, device=torch_device, seed=seed
    )
    dtype = layout.dtype
    bar = simulation_bar(simulations, "abc_smc", progress)

    def advance() -> None:
        if bar is not None:
            bar.update(simulator.n_simulations - bar.n)

    try:
        # Pilot: prior simulations for the distance's scale (part of the budget).
        pilot = simulate_pilot(simulator, generator, pilot_size, batch_size, distance)
        advance()
        pilot_seconds = time.perf_counter() - start
        simulate = in_batches(simulator, batch_size)

        # The starting population: prior draws.
        u = torch.randn(
            particles, layout.dim, generator=generator, device=torch_device, dtype=dtype
        )
        simulation = simulate(u)
        advance()
        state = init(u, simulation.values, simulation.distance)
        if not bool(torch.isfinite(state.distance).any()):
            raise ValueError(
                "no starting particle has a finite distance; check that the program and summary "
                "produce finite features."
            )
        log_beta = torch.zeros((), dtype=torch.float64, device=torch_device)
        floor = 0.0 if epsilon is None else float(epsilon)
        record: dict[str, list] = {
            "epsilon_sequence": [],
            "acceptance_rates": [],
            "effective_sample_sizes": [],
            "resampled": [],
            "steps_per_round": [],
            "betas": [],
        }
        last_resampling_ess = float(particles)
        moved = torch.zeros(particles, dtype=torch.bool, device=torch_device)
        stop_reason = "budget"
        previous_epsilon = math.inf
        acceptance = math.nan
        preconditions = precondition and layout.dim <= MAX_REFERENCE_DIM
        while simulations - simulator.n_simulations >= particles:
            # (1) the next tolerance, (2) reweight, (3) resample when degenerate.
            epsilon_t = next_epsilon(state, alpha, abc_kernel, floor)
            epsilon_value = float(epsilon_t)
            if epsilon is None and not epsilon_value < previous_epsilon:
                stop_reason = "epsilon_stalled"
                break
            state = reweight(state, epsilon_t, abc_kernel)
            ess = float(effective_sample_size(state.log_weight))
            resampled = ess < RESAMPLE_THRESHOLD * particles * (1.0 + 1e-9)
            if resampled:
                last_resampling_ess = ess
                state, _ = resample(generator, state, resampling)
            # (4) move.
            reference = fit_population_reference(state) if preconditions else None
            if mcmc_steps == "adaptive":
                steps = (
                    FIRST_ADAPTIVE_STEPS if math.isnan(acceptance) else adaptive_steps(acceptance)
                )
            else:
                steps = int(mcmc_steps)
            n_alive = int(torch.isfinite(state.log_weight).sum())
            steps = min(steps, (simulations - simulator.n_simulations) // max(n_alive, 1))
            beta = log_beta.exp()
            state, info = move(generator, state, simulate, beta, abc_kernel, steps, reference)
            advance()
            moved = info.moved
            acceptance = float(info.acceptance_rate)
            probability = float(info.acceptance_probability)
            log_beta = (log_beta + BETA_GAIN * (probability - TARGET_ACCEPTANCE)).clamp(
                math.log(MIN_BETA), 0.0
            )
            record["epsilon_sequence"].append(epsilon_value)
            record["acceptance_rates"].append(acceptance)
            record["effective_sample_sizes"].append(ess)
            record["resampled"].append(resampled)
            record["steps_per_round"].append(steps)
            record["betas"].append(float(beta))
            previous_epsilon = epsilon_value
            if bar is not None:
                bar.set_postfix(eps=f"{epsilon_value:.3g}", acc=f"{acceptance:.2f}", refresh=False)
            if epsilon is None and acceptance < MIN_ACCEPTANCE:
                stop_reason = "acceptance_collapsed"
                break
        final_ess = float(effective_sample_size(state.log_weight))
        final_state, ancestors = resample(generator, state, resampling)
        moved = moved[ancestors]
    finally:
        if bar is not None:
            bar.close()

    reached = epsilon is None or (
        bool(record["epsilon_sequence"]) and record["epsilon_sequence"][-1] <= floor
    )
    if not reached:
        warnings.warn(
            f"abc_smc spent its budget of {simulations} simulations before reaching epsilon="
            f"{epsilon}; the population targets epsilon={float(final_state.epsilon):.4g}. Raise "
            "simulations, or lower alpha so the tolerance falls faster.",
            RuntimeWarning,
            stacklevel=3,
        )
    values = final_state.values.cpu()
    samples = {name: value.unsqueeze(0) for name, value in layout.split_values(values).items()}
    final_epsilon = final_state.epsilon.to(dtype).cpu()
    stats = {
        "distance": final_state.distance.cpu().unsqueeze(0),
        "accepted": moved.cpu().unsqueeze(0),
        "epsilon": final_epsilon.expand(1, particles).clone(),
        "beta": torch.full(
            (1, particles), record["betas"][-1] if record["betas"] else 1.0, dtype=dtype
        ),
    }
    prior = None
    if pilot is not None:
        prior = {
            name: value.unsqueeze(0)
            for name, value in layout.split_values(pilot.values.cpu()).items()
        }
    wall_time = time.perf_counter() - start
    full_settings = dict(settings)
    full_settings.update(record)
    full_settings.update(
        {
            "rounds": len(record["epsilon_sequence"]),
            "epsilon_target": float(final_state.epsilon),
            "epsilon_reached": reached,
            "final_effective_sample_size": final_ess,
            "last_resampling_effective_sample_size": last_resampling_ess,
            "unique_particles": int(torch.unique(final_state.u, dim=0).shape[0]),
            "stop_reason": stop_reason,
            "layout": layout.describe(),
        }
    )
    return simulated_posterior(
        simulator,
        wall_time,
        "abc_smc",
        samples,
        stats,
        observation,
        full_settings,
        prior=prior,
        pilot_seconds=pilot_seconds,
    )
