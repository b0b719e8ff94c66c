"""ABC-PMC: population Monte Carlo ABC with adaptive tolerances.

Beaumont, Cornuet, Marin & Robert (2009), "Adaptive approximate Bayesian computation", with the
tolerance schedule of pyabc (each tolerance the weighted median of the previous generation's
accepted distances) and optionally the locally optimal kernel covariance of Filippi, Barnes,
Cornebise & Stumpf (2013) or a nearest-neighbour one. It works in the engine's whitened space
``u ~ N(0, I)`` (DESIGN section 4), where the prior density is ``N(u; 0, I)`` and every
proposal lies in the prior's support (no simulation is spent on a proposal outside it). The
target of generation ``t`` is

    pi_t(u) ∝ N(u; 0, I) P(rho(s(x_sim(T(u))), s(x_obs)) <= eps_t),   eps_0 > eps_1 > ...

whose image under the whitening transform ``T`` is the indicator-kernel ABC posterior.

* **Pilot and generation 0.** ``pilot_size`` prior draws are simulated; their summaries set the
  standardized distance's scale, and the closest ``particles`` of them are generation 0 with
  equal weights, ``eps_0`` their largest distance (rejection ABC, as ``abc_rejection`` keeps its
  closest draws).
* **Generation t.** (1) ``eps_t`` is the weighted ``quantile`` (0.5: the median) of generation
  ``t-1``'s distances, floored at a given final ``epsilon``. (2) The proposal is the mixture
  ``q(u) = sum_j w_j N(u; u_j, Sigma_j)`` over generation ``t-1``: ``"beaumont"`` uses
  ``Sigma_j = 2 C`` (``C`` the population's weighted covariance), ``"silverman"`` ``h^2 C`` with
  Silverman's factor ``h = (4 / (n (D + 2)))^(1 / (D + 4))`` at the effective sample size ``n``
  (pyabc's default ``MultivariateNormalTransition``), ``"olcm"`` Filippi et al.'s locally
  optimal ``Sigma_j = sum_k w'_k (u_k - u_j)(u_k - u_j)^T`` over the particles ``k`` already
  within ``eps_t`` (weights ``w'`` renormalized among them), i.e. ``C' + (m' - u_j)(m' - u_j)^T``;
  ``"knn"`` the second moment ``(1/k) sum (u_k - u_j)(u_k - u_j)^T`` of particle ``j``'s ``k``
  nearest neighbours (:data:`KNN_FRACTION` of the population; pyabc's ``LocalTransition``),
  which follows a curved or thin posterior (two_moons' crescents) where one covariance for all
  particles is as wide as the whole population.
  (3) Proposals are simulated in batches (sized from the acceptance rate so far), and those with
  distance ``<= eps_t`` are accepted until ``particles`` are (the first ones in proposal order:
  the proposals are independent, so the first ``N`` accepted are ``N`` independent draws of
  ``q`` restricted to the acceptance region). (4) Each accepted particle gets the importance
  weight ``w ∝ N(u; 0, I) / q(u)``, normalized.
* **Budget.** Every simulator call counts, pilot included: a batch is never larger than what is
  left, so ``n_simulations <= simulations``. A generation whose expected cost (``particles``
  over the expected acceptance rate, :func:`expected_rate`) is more than half of what is left
  is the last: it spends all that is left at its tolerance and keeps every acceptance, which
  are as many independent draws of ``q`` given acceptance as the fixed number of proposals
  gave, so with their importance weights a valid weighted sample of ``pi_t`` (of random size,
  often more than ``particles``). A generation cut short by the budget is, for the same
  reason, a valid weighted sample of ``pi_t``, only smaller. A last generation with fewer than
  ``particles`` accepted is returned when its effective sample size is at least
  :data:`PARTIAL_ESS_FRACTION` of the previous generation's (its tolerance is smaller), else
  the previous generation is.
* **Stop.** When the budget is spent; with no final ``epsilon``, also when the tolerance stops
  decreasing (ties in the distances).
* **Result.** The final weighted population resampled (systematically) to ``draws``
  equal-weight draws: one chain, like ``abc_smc``'s.

Blackjax style: pure functions over the immutable :class:`PMCState` and :class:`Proposal`, whose
tensors lead with the particle dimension; per-particle decisions are masks; randomness comes from
the explicit ``torch.Generator``. Host reads happen once per simulated batch (how many were
accepted) and once per generation (the tolerance, the effective sample size), never per particle.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from probgraphics.inference.posterior import Posterior
from probgraphics.inference.simulator import (
    Simulation,
    in_batches,
    seeded_simulator,
    simulate_pilot,
    simulated_posterior,
    simulation_bar,
)
from probgraphics.inference.tempering import (
    effective_sample_size,
    normalized_weights,
    resample_indices,
    weighted_moments,
    weighted_quantile,
)
from probgraphics.inference.whitening import WhiteningLayout

__all__ = [
    "KERNELS",
    "PMCState",
    "Proposal",
    "init",
    "next_epsilon",
    "fit_proposal",
    "propose",
    "log_proposal_density",
    "importance_log_weights",
    "expected_rate",
    "run_pmc",
]

#: Perturbation kernels: ``"knn"`` (nearest neighbours' covariance, the default), ``"olcm"``
#: (Filippi et al. 2013's locally optimal covariance), ``"beaumont"`` (twice the weighted
#: covariance), ``"silverman"`` (pyabc's default bandwidth).
KERNELS = ("knn", "olcm", "beaumont", "silverman")
#: ``"knn"``: each component's covariance is the second moment of its particle's nearest
#: neighbours, this fraction of the population. pyabc's ``LocalTransition`` takes a quarter; on
#: sbibm's two_moons at 1e5 simulations (observation 1, seeds 0-2) a tenth gave C2ST 0.556 /
#: 0.528 / 0.545 against a quarter's 0.603 / 0.612 / 0.597 (smaller final tolerances).
KNN_FRACTION = 0.1
#: A generation cut short by the budget is returned when its effective sample size is at least
#: this fraction of the previous complete generation's (its tolerance is smaller).
PARTIAL_ESS_FRACTION = 0.5
#: A generation is the last when the budget left is below this many times its expected cost
#: (``particles`` over the expected acceptance rate): it then spends all of it.
LAST_GENERATION_FACTOR = 2.0
#: Smallest batch simulated inside a generation (the fixed cost of a call is not worth less).
MIN_BATCH = 256
#: Accepted particles whose mixture density is evaluated at once (memory ``chunk * N``).
DENSITY_CHUNK = 512
#: A final population whose effective sample size is below this fraction of its particles gets
#: a warning: its importance weights have collapsed onto a few particles.
MIN_ESS_FRACTION = 0.05
#: Covariances get this much of their mean diagonal added, so a collapsed population (all
#: particles equal in some direction) still has a positive-definite kernel.
JITTER = 1e-9


class PMCState(NamedTuple):
    """A weighted population: a sample of ``pi_epsilon``.

    Attributes:
        u: ``(N, D)`` whitened positions (the layout's dtype).
        values: ``(N, V)`` constrained latent values at ``u`` (flattened).
        distance: ``(N,)`` each particle's summary distance (all ``<= epsilon``).
        log_weight: ``(N,)`` float64 log importance weights (the largest 0).
        epsilon: ``()`` float64 tolerance the population targets.
    """

    u: torch.Tensor
    values: torch.Tensor
    distance: torch.Tensor
    log_weight: torch.Tensor
    epsilon: torch.Tensor


class Proposal(NamedTuple):
    """The mixture ``q(u) = sum_j w_j N(u; centre_j, L_j L_j^T)``.

    Attributes:
        centre: ``(N, D)`` float64 mixture centres (the previous population).
        log_weight: ``(N,)`` float64 normalized log mixture weights.
        scale_tril: ``(N, D, D)`` or ``(1, D, D)`` (one shared) float64 Cholesky factors.
        inverse_tril: their inverses, same shape.
        log_det: ``(N,)`` or ``(1,)`` ``sum log diag L_j``.
    """

    centre: torch.Tensor
    log_weight: torch.Tensor
    scale_tril: torch.Tensor
    inverse_tril: torch.Tensor
    log_det: torch.Tensor


def init(u: torch.Tensor, values: torch.Tensor, distance: torch.Tensor, count: int) -> PMCState:
    """Generation 0: the ``count`` prior draws among ``u`` ``(M, D)`` with the smallest finite
    distances, equal weights, ``epsilon`` the largest kept distance (ties: the earlier draw).
    Raises when fewer than ``count`` draws have a finite distance."""
    finite = torch.isfinite(distance)
    available = int(finite.sum())
    if available < count:
        raise ValueError(
            f"only {available} of the {distance.shape[0]} prior simulations have a finite "
            f"distance, fewer than the {count} particles of generation 0; raise pilot_size, lower "
            "particles, or check that the program and summary give finite features."
        )
    ranking = torch.where(finite, distance.to(torch.float64), math.inf)
    order = torch.argsort(ranking, stable=True)[:count]
    kept = distance[order]
    return PMCState(
        u=u[order],
        values=values[order],
        distance=kept,
        log_weight=torch.zeros(count, dtype=torch.float64, device=u.device),
        epsilon=kept.max().to(torch.float64),
    )


def next_epsilon(state: PMCState, quantile: float, floor: float = 0.0) -> torch.Tensor:
    """``max(weighted quantile of the distances, floor)``, ``()`` float64."""
    candidate = weighted_quantile(state.distance, state.log_weight, quantile)
    return torch.clamp(candidate, min=floor)


def _weighted_moments(u: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~probgraphics.inference.tempering.weighted_moments` with the covariance made
    exactly symmetric (its Cholesky factor is taken)."""
    mean, covariance = weighted_moments(u, weights)
    return mean, 0.5 * (covariance + covariance.T)


def _regularize(covariance: torch.Tensor) -> torch.Tensor:
    """``covariance + JITTER * mean diagonal * I`` (batched over leading dimensions)."""
    dim = covariance.shape[-1]
    level = torch.diagonal(covariance, dim1=-2, dim2=-1).mean(-1).clamp(min=1e-12)
    eye = torch.eye(dim, dtype=covariance.dtype, device=covariance.device)
    return covariance + JITTER * level[..., None, None] * eye


def fit_proposal(state: PMCState, kernel: str, epsilon: torch.Tensor) -> Proposal:
    """The perturbation mixture around ``state`` for the next tolerance ``epsilon`` (see the
    module doc for the three ``kernel`` choices; ``"olcm"`` needs ``epsilon``: the particles
    within it define each component's covariance)."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {list(KERNELS)}, got {kernel!r}")
    u = state.u.to(torch.float64)
    dim = u.shape[1]
    log_weight = torch.log(normalized_weights(state.log_weight))
    weights = log_weight.exp()
    mean, covariance = _weighted_moments(u, weights)
    if kernel == "beaumont":
        covariances = (2.0 * covariance).unsqueeze(0)
    elif kernel == "silverman":
        n = effective_sample_size(state.log_weight).clamp(min=1.0)
        factor = (4.0 / (n * (dim + 2))) ** (1.0 / (dim + 4))
        covariances = (factor.square() * covariance).unsqueeze(0)
    elif kernel == "knn":
        count = u.shape[0]
        k = min(count - 1, max(dim + 1, round(KNN_FRACTION * count)))
        # The k nearest others (the particle itself, at distance 0, comes first).
        neighbours = torch.cdist(u, u).topk(k + 1, largest=False).indices[:, 1:]  # (N, k)
        offset = u[neighbours] - u.unsqueeze(1)  # (N, k, D)
        covariances = offset.transpose(-1, -2) @ offset / k
    else:
        # Filippi et al.'s OLCM: the particles already within the next tolerance, reweighted.
        inside = (state.distance.to(torch.float64) <= epsilon) & (weights > 0)
        inside_weights = torch.where(inside, weights, 0.0)
        total = inside_weights.sum()
        # Fewer than two inside (only with a floor far below the population): use them all.
        enough = (inside.sum() >= 2) & (total > 0)
        sub_weights = torch.where(enough, inside_weights / total.clamp(min=1e-300), weights)
        sub_mean, sub_covariance = _weighted_moments(u, sub_weights)
        offset = sub_mean - u  # (N, D)
        covariances = sub_covariance + offset.unsqueeze(-1) * offset.unsqueeze(-2)
    scale_tril = torch.linalg.cholesky(_regularize(covariances))
    eye = torch.eye(dim, dtype=torch.float64, device=u.device).expand_as(scale_tril)
    inverse_tril = torch.linalg.solve_triangular(scale_tril, eye, upper=False)
    log_det = torch.diagonal(scale_tril, dim1=-2, dim2=-1).log().sum(-1)
    return Proposal(u, log_weight, scale_tril, inverse_tril, log_det)


def propose(
    generator: torch.Generator, proposal: Proposal, count: int, dtype: torch.dtype
) -> torch.Tensor:
    """``count`` independent draws ``(count, D)`` of the mixture, in ``dtype``."""
    weights = proposal.log_weight.exp()
    index = torch.multinomial(weights, count, replacement=True, generator=generator)
    dim = proposal.centre.shape[1]
    noise = torch.randn(count, dim, generator=generator, device=weights.device, dtype=torch.float64)
    tril = proposal.scale_tril[index] if proposal.scale_tril.shape[0] > 1 else proposal.scale_tril
    step = (tril @ noise.unsqueeze(-1)).squeeze(-1)
    return (proposal.centre[index] + step).to(dtype)


def log_proposal_density(proposal: Proposal, u: torch.Tensor) -> torch.Tensor:
    """``log q(u)`` ``(M,)`` float64 for ``u`` ``(M, D)``, without the ``-D/2 log 2 pi``.

    With one covariance per component, the Mahalanobis distances ``(u - c_j)^T P_j (u - c_j)``
    are expanded as ``<u u^T, P_j> - 2 u^T P_j c_j + c_j^T P_j c_j``: two matrix products
    instead of an ``(M, N, D)`` tensor (in float64; the terms are at most the squared
    distances' scale times ``|u|^2``)."""
    u = u.to(torch.float64)
    shared = proposal.scale_tril.shape[0] == 1
    if shared:
        inverse = proposal.inverse_tril[0]
        centre = proposal.centre @ inverse.T
    else:
        count, dim = proposal.centre.shape
        precision = proposal.inverse_tril.transpose(-1, -2) @ proposal.inverse_tril  # (N, D, D)
        pulled = (precision @ proposal.centre.unsqueeze(-1)).squeeze(-1)  # P_j c_j, (N, D)
        constant = (pulled * proposal.centre).sum(-1)  # (N,)
        flat = precision.reshape(count, dim * dim)
    parts = []
    for chunk in torch.split(u, DENSITY_CHUNK):
        if shared:
            squared = torch.cdist(chunk @ inverse.T, centre).square()
        else:
            outer = (chunk.unsqueeze(-1) * chunk.unsqueeze(-2)).reshape(chunk.shape[0], -1)
            squared = outer @ flat.T - 2.0 * chunk @ pulled.T + constant
            squared = squared.clamp(min=0.0)
        log_component = -0.5 * squared - proposal.log_det
        parts.append(torch.logsumexp(proposal.log_weight + log_component, dim=-1))
    return torch.cat(parts)


def importance_log_weights(proposal: Proposal, u: torch.Tensor) -> torch.Tensor:
    """``log N(u; 0, I) - log q(u)`` ``(M,)`` float64, shifted so the largest is 0."""
    log_prior = -0.5 * u.to(torch.float64).square().sum(-1)
    log_weight = log_prior - log_proposal_density(proposal, u)
    return log_weight - log_weight.max()


def expected_rate(rates: list[float]) -> float:
    """The next generation's expected acceptance rate from the previous ones: the last rate
    times the last ratio of consecutive rates (clipped to ``[0.05, 1]``; 0.5 with one rate)."""
    decay = 0.5 if len(rates) < 2 else min(max(rates[-1] / rates[-2], 0.05), 1.0)
    return max(rates[-1] * decay, 1e-6)


class _Generation(NamedTuple):
    """What one generation's simulations gave: the accepted particles (at most ``N``)."""

    u: torch.Tensor
    values: torch.Tensor
    distance: torch.Tensor
    proposed: int
    accepted: int


def _simulate_generation(
    generator: torch.Generator,
    proposal: Proposal,
    simulate: Callable[[torch.Tensor], Simulation],
    epsilon: torch.Tensor,
    count: int | None,
    budget_left: int,
    rate: float,
    batch_size: int,
    dtype: torch.dtype,
) -> _Generation:
    """Propose and simulate in batches until ``count`` are accepted or ``budget_left`` is spent
    (``count=None``: spend it all, keep every acceptance); ``rate`` (the expected acceptance
    rate) sizes the first batch."""
    kept_u, kept_values, kept_distance = [], [], []
    accepted = proposed = 0
    seen_accepted = 0
    limit = math.inf if count is None else count
    while accepted < limit and proposed < budget_left:
        estimate = max(rate if seen_accepted == 0 else seen_accepted / proposed, 1e-4)
        size = batch_size if count is None else math.ceil((count - accepted) / estimate)
        size = min(max(size, MIN_BATCH), batch_size, budget_left - proposed)
        u = propose(generator, proposal, size, dtype)
        simulation = simulate(u)
        proposed += size
        inside = simulation.distance.to(torch.float64) <= epsilon  # NaN: False
        index = torch.nonzero(inside).squeeze(-1)
        found = int(index.shape[0])  # one host read per batch
        seen_accepted += found
        if count is not None:
            index = index[: count - accepted]
        accepted += int(index.shape[0])
        kept_u.append(u[index])
        kept_values.append(simulation.values[index])
        kept_distance.append(simulation.distance[index])
    return _Generation(
        torch.cat(kept_u), torch.cat(kept_values), torch.cat(kept_distance), proposed, accepted
    )


def run_pmc(
    program: Callable[[], Any],
    layout: WhiteningLayout,
    observation: Mapping[str, torch.Tensor],
    *,
    simulations: int,
    particles: int,
    draws: int,
    resample: bool,
    quantile: float,
    kernel: str,
    epsilon: float | None,
    summary: Callable,
    distance: str | Callable | None,
    seed: int,
    device: str,
    batch_size: int,
    pilot_size: int,
    progress: bool,
    settings: dict[str, Any],
) -> Posterior:
    """Run ABC-PMC and return a one-chain :class:`Posterior` of ``draws`` equal-weight draws
    (with ``resample=False``: the weighted population).

    Args:
        program, layout, observation, summary: as for the ABC-MCMC runner (the layout does not
            whiten the observed sites: every simulation draws fresh noise).
        simulations: the hard budget: every simulator call, pilot included
            (``>= pilot_size``; the caller checks).
        particles: population size ``N`` (``<= pilot_size``).
        draws: equal-weight draws returned, resampled from the final weighted population.
        resample: False returns the final weighted population itself instead (``draws`` is
            then ignored), its normalized log weights in ``sample_stats["log_weight"]``: not
            an equal-weight sample (weighted means, ``numpy.average``, not plain ones).
        quantile: each tolerance is this weighted quantile of the previous distances.
        kernel: one of :data:`KERNELS`.
        epsilon: final tolerance (a floor of the schedule; None: adaptive to the end).
        distance: distance name or callable (resolved with the pilot's summaries).
        seed: seeds every random number of the run.
        device: where to simulate.
        batch_size: most simulations per program call.
        pilot_size: prior simulations for the distance's scale; the best ``N`` are generation 0.
        progress: show a tqdm bar over simulations.
        settings: JSON-serializable options to record.

    Returns:
        A :class:`Posterior` with samples ``(1, draws, *event)``, sample stats ``distance``,
        ``accepted`` (all True), ``epsilon``; in ``settings`` per generation
        ``epsilon_sequence`` (generation 0 first), ``acceptance_rates``,
        ``simulations_per_generation``, ``effective_sample_sizes``, all of ``particles``-sized
        generations; ``generations`` (their count); ``last_generation`` (None when the run
        stopped on a stalled tolerance, else ``{"accepted", "simulations",
        "effective_sample_size", "epsilon", "used"}`` for the one that ended the budget, and
        whether it is the result), ``final_effective_sample_size``,
        ``epsilon_target``, ``epsilon_reached``, ``stop_reason``.
    """
    start = time.perf_counter()
    torch_device = torch.device(device)
    generator, simulator = seeded_simulator(
        program, layout, observation, summary, device=torch_device, seed=seed
    )
    dtype = layout.dtype
    bar = simulation_bar(simulations, "abc_pmc", progress)

    def advance() -> None:
        if bar is not None:
            bar.update(simulator.n_simulations - bar.n)

    try:
        # Pilot: prior simulations; their summaries set the distance, their best are generation 0.
        pilot = simulate_pilot(simulator, generator, pilot_size, batch_size, distance)
        with torch.no_grad():
            pilot_distance = simulator.distance(pilot.summaries, simulator.observed_summary)
        state = init(pilot.u, pilot.values, pilot_distance, particles)
        advance()
        pilot_seconds = time.perf_counter() - start
        simulate = in_batches(simulator, batch_size)

        floor = 0.0 if epsilon is None else float(epsilon)
        record: dict[str, list] = {
            "epsilon_sequence": [float(state.epsilon)],
            "acceptance_rates": [particles / pilot_size],
            "simulations_per_generation": [pilot_size],
            "effective_sample_sizes": [float(particles)],
        }
        rate = particles / pilot_size
        stop_reason = "budget"
        last = None
        while simulations - simulator.n_simulations > 0:
            epsilon_t = next_epsilon(state, quantile, floor)
            epsilon_value = float(epsilon_t)
            if epsilon is None and not epsilon_value < float(state.epsilon):
                stop_reason = "epsilon_stalled"
                break
            remaining = simulations - simulator.n_simulations
            expected = expected_rate(record["acceptance_rates"])
            # The last generation keeps every acceptance of the rest of the budget (module doc).
            final = remaining < LAST_GENERATION_FACTOR * particles / expected
            proposal = fit_proposal(state, kernel, epsilon_t)
            generation = _simulate_generation(
                generator,
                proposal,
                simulate,
                epsilon_t,
                None if final else particles,
                remaining,
                rate,
                batch_size,
                dtype,
            )
            advance()
            if generation.accepted == 0:
                last = {
                    "accepted": 0,
                    "simulations": generation.proposed,
                    "effective_sample_size": 0.0,
                    "epsilon": epsilon_value,
                    "used": False,
                }
                break
            log_weight = importance_log_weights(proposal, generation.u)
            ess = float(effective_sample_size(log_weight))
            new_state = PMCState(
                generation.u, generation.values, generation.distance, log_weight, epsilon_t
            )
            if final or generation.accepted < particles:
                # The budget ends with this generation: see the module doc.
                previous_ess = float(effective_sample_size(state.log_weight))
                used = generation.accepted >= particles or (
                    ess >= PARTIAL_ESS_FRACTION * previous_ess
                )
                last = {
                    "accepted": generation.accepted,
                    "simulations": generation.proposed,
                    "effective_sample_size": ess,
                    "epsilon": epsilon_value,
                    "used": used,
                }
                if used:
                    state = new_state
                break
            rate = particles / generation.proposed
            state = new_state
            record["epsilon_sequence"].append(epsilon_value)
            record["acceptance_rates"].append(rate)
            record["simulations_per_generation"].append(generation.proposed)
            record["effective_sample_sizes"].append(ess)
            if bar is not None:
                bar.set_postfix(eps=f"{epsilon_value:.3g}", acc=f"{rate:.3f}", refresh=False)
        final_ess = float(effective_sample_size(state.log_weight))
        if resample:
            index = resample_indices(generator, state.log_weight, "systematic", draws)
        else:
            index = torch.arange(state.u.shape[0], device=state.u.device)
            draws = state.u.shape[0]
    finally:
        if bar is not None:
            bar.close()

    final_epsilon = float(state.epsilon)
    reached = epsilon is None or final_epsilon <= floor
    if not reached:
        warnings.warn(
            f"abc_pmc spent its budget of {simulations} simulations before reaching epsilon="
            f"{epsilon}; the population targets epsilon={final_epsilon:.4g}. Raise simulations, "
            "or lower quantile so the tolerance falls faster.",
            RuntimeWarning,
            stacklevel=3,
        )
    population = state.u.shape[0]
    if final_ess < MIN_ESS_FRACTION * population:
        warnings.warn(
            f"abc_pmc's final population of {population} particles has an effective sample size "
            f"of {final_ess:.1f}: its importance weights collapsed onto a few particles (common "
            f"for population Monte Carlo beyond a few latent dimensions; this run has "
            f"{layout.dim}). Its draws repeat those few. Try kernel='olcm' or 'beaumont', more "
            "particles, or abc_rejection with adjust='linear'.",
            RuntimeWarning,
            stacklevel=3,
        )
    values = state.values[index].cpu()
    samples = {name: value.unsqueeze(0) for name, value in layout.split_values(values).items()}
    stats = {
        "distance": state.distance[index].cpu().unsqueeze(0),
        "accepted": torch.ones(1, draws, dtype=torch.bool),
        "epsilon": torch.full((1, draws), final_epsilon, dtype=dtype),
    }
    if not resample:
        log_weight = state.log_weight - torch.logsumexp(state.log_weight, 0)
        stats["log_weight"] = log_weight.cpu().unsqueeze(0)
    prior = {
        name: value.unsqueeze(0) for name, value in layout.split_values(pilot.values.cpu()).items()
    }
    wall_time = time.perf_counter() - start
    full_settings = dict(settings)
    full_settings.update(record)
    full_settings.update(
        {
            "generations": len(record["epsilon_sequence"]),
            "last_generation": last,
            "epsilon_target": final_epsilon,
            "epsilon_reached": reached,
            "final_effective_sample_size": final_ess,
            "stop_reason": stop_reason,
            "layout": layout.describe(),
        }
    )
    return simulated_posterior(
        simulator,
        wall_time,
        "abc_pmc",
        samples,
        stats,
        observation,
        full_settings,
        prior=prior,
        pilot_seconds=pilot_seconds,
    )
