"""ABC rejection: simulate from the prior, keep the closest fraction.

``simulations`` prior draws are simulated in batches. The first ``pilot_size`` of them (part of
the budget) set the standardized distance's scale; after that only the best ``kept`` candidates
are held (a running top-k), so memory stays ``O(kept + pilot_size)`` whatever the budget. The
result is one chain of ``kept = max(1, round(keep_fraction * simulations))`` draws in simulation
order; its ``epsilon`` is the largest kept distance (the implied indicator-kernel tolerance).

With ``rounds=R`` the budget is split into ``R`` rounds. Each round after the first draws from the
prior truncated to a region around the draws kept so far (:mod:`~probgraphics.inference.
truncation`), and every round feeds the same running top-``kept``. ``settings`` records each
round's simulations, tolerance and prior draws.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from probgraphics.inference import truncation
from probgraphics.inference.adjustment import linear_regression_adjustment
from probgraphics.inference.distances import resolve_distance
from probgraphics.inference.posterior import Posterior
from probgraphics.inference.simulator import seeded_simulator, simulated_posterior
from probgraphics.inference.whitening import WhiteningLayout

__all__ = ["run_rejection", "kept_count", "round_sizes"]


def kept_count(simulations: int, keep_fraction: float) -> int:
    """How many draws rejection keeps: ``max(1, round(keep_fraction * simulations))``."""
    return max(1, round(keep_fraction * simulations))


def round_sizes(simulations: int, rounds: int) -> list[int]:
    """The budget split over ``rounds`` rounds as evenly as it goes, earlier rounds the larger.

    >>> round_sizes(10, 3)
    [4, 3, 3]
    """
    share, extra = divmod(simulations, rounds)
    return [share + (1 if r < extra else 0) for r in range(rounds)]


def _merge_best(
    best: tuple[torch.Tensor, ...] | None,
    candidates: tuple[torch.Tensor, ...],
    kept: int,
) -> tuple[torch.Tensor, ...]:
    """Keep the ``kept`` smallest distances of ``best`` and ``candidates`` (distance, values,
    simulation index, then any per-simulation tensors such as summaries); ties go to the
    earlier simulation, NaN distances last."""
    if best is not None:
        candidates = tuple(torch.cat([a, b]) for a, b in zip(best, candidates, strict=True))
    # Sorting by index first, then stably by distance, makes ties resolve by simulation order.
    order = torch.argsort(candidates[2], stable=True)
    candidates = tuple(t[order] for t in candidates)
    ranking = torch.nan_to_num(candidates[0], nan=torch.inf)
    order = torch.argsort(ranking, stable=True)[:kept]
    return tuple(t[order] for t in candidates)


def run_rejection(
    program: Callable[[], Any],
    layout: WhiteningLayout,
    observation: Mapping[str, torch.Tensor],
    *,
    simulations: int,
    keep_fraction: float,
    summary: Callable,
    distance: str | Callable | None,
    seed: int,
    device: str,
    batch_size: int,
    pilot_size: int,
    progress: bool,
    settings: dict[str, Any],
    adjust: tuple[torch.Tensor, torch.Tensor] | None = None,
    adjust_modes: bool = False,
    rounds: int = 1,
) -> Posterior:
    """Run ABC rejection and return a one-chain :class:`Posterior`.

    Args:
        program, layout, observation, summary: as for the ABC-MCMC runner.
        simulations: total prior simulations (the budget).
        keep_fraction: fraction of simulations kept, in ``(0, 1]``.
        distance: distance name or callable.
        seed: seeds every random number of the run.
        device: where to simulate.
        batch_size: simulations per program call.
        pilot_size: simulations whose summaries set the standardized distance's scale.
        progress: show a tqdm bar.
        settings: JSON-serializable options to record.
        adjust: ``(lower, upper)`` prior support bounds ``(latent_dim,)``: adjust the kept draws
            by linear regression on their summaries
            (:func:`~probgraphics.inference.adjustment.linear_regression_adjustment`); None keeps
            them as simulated.
        adjust_modes: with ``adjust``, one regression per posterior mode, on the parameters'
            own scale (``modes=True`` of the adjustment).
        rounds: simulate in this many rounds, each after the first from the prior truncated to
            a region around the draws kept so far (:mod:`probgraphics.inference.truncation`).
    """
    start = time.perf_counter()
    torch_device = torch.device(device)
    generator, simulator = seeded_simulator(
        program, layout, observation, summary, device=torch_device, seed=seed
    )
    kept = kept_count(simulations, keep_fraction)
    dtype = layout.dtype
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=simulations, desc="abc_rejection", unit="sim", mininterval=0.5)
    best = None
    pilot_values, pilot_summaries = [], []
    sizes = round_sizes(simulations, rounds)
    # The distance's scale comes from the first round, which draws from the prior.
    scale_size = min(max(pilot_size, 2), sizes[0])
    done = 0
    distance_fn = None
    region = None
    record: dict[str, list] = {"round_simulations": [], "round_epsilon": [], "prior_draws": []}
    try:
        for round_index, round_size in enumerate(sizes):
            if round_index > 0:
                # The draws kept so far anchor the next region (truncation module doc).
                region = truncation.region_around(best[3][torch.isfinite(best[0])], region)
            round_done = prior_draws = 0
            while round_done < round_size:
                size = min(batch_size, round_size - round_done)
                if distance_fn is None:
                    size = min(size, scale_size - done)
                short = False
                if region is None:
                    u = torch.randn(
                        size, layout.dim, generator=generator, device=torch_device, dtype=dtype
                    )
                    prior_draws += size
                else:
                    u, drawn = truncation.sample_prior_in(
                        region, generator, size, layout.dim, dtype=dtype, device=torch_device
                    )
                    prior_draws += drawn
                    short = u.shape[0] < size
                    size = u.shape[0]
                    if size == 0:
                        break
                _, values, summaries = simulator.run(u)
                index = torch.arange(done, done + size, device=torch_device)
                done += size
                round_done += size
                if bar is not None:
                    bar.update(size)
                if distance_fn is None:
                    pilot_values.append((values, index, u))
                    pilot_summaries.append(summaries)
                    if done < scale_size:
                        continue
                    all_summaries = torch.cat(pilot_summaries)
                    distance_fn = resolve_distance(distance, all_summaries)
                    values = torch.cat([v for v, _, _ in pilot_values])
                    index = torch.cat([i for _, i, _ in pilot_values])
                    u = torch.cat([w for _, _, w in pilot_values])
                    summaries = all_summaries
                    pilot_values, pilot_summaries = [], []
                with torch.no_grad():
                    batch_distance = distance_fn(summaries, simulator.observed_summary)
                payload = (summaries,) if adjust is not None else ()
                best = _merge_best(best, (batch_distance, values, index, u, *payload), kept)
                if short:
                    break  # the region holds under 1/1000 of the prior: the round stops short
            record["round_simulations"].append(round_done)
            record["round_epsilon"].append(float(torch.nan_to_num(best[0], nan=torch.inf).max()))
            record["prior_draws"].append(prior_draws)
    finally:
        if bar is not None:
            bar.close()
    distance_kept, values_kept, index_kept = best[:3]
    summaries_kept = best[4] if adjust is not None else None
    # Failed simulations (NaN distance) rank last but are never kept: fewer than asked, if so.
    finite = torch.isfinite(distance_kept)
    if not bool(finite.all()):
        count = int(finite.sum())
        if count == 0:
            raise ValueError(
                f"none of the {simulations} simulations produced a finite distance; check the "
                "program and summary (failed simulations give NaN), or the prior's range."
            )
        warnings.warn(
            f"abc_rejection keeps {count} simulations, not {kept}: the others of the best "
            f"{kept} failed (non-finite distance). Lower keep_fraction, or raise simulations.",
            stacklevel=2,
        )
        distance_kept, values_kept = distance_kept[finite], values_kept[finite]
        index_kept, kept = index_kept[finite], count
        if summaries_kept is not None:
            summaries_kept = summaries_kept[finite]
    order = torch.argsort(index_kept)
    distance_kept, values_kept = distance_kept[order].cpu(), values_kept[order].cpu()
    if adjust is not None:
        values_kept = linear_regression_adjustment(
            values_kept,
            summaries_kept[order].cpu(),
            simulator.observed_summary.reshape(-1).cpu(),
            distance_kept,
            lower=adjust[0],
            upper=adjust[1],
            modes=adjust_modes,
        )
    epsilon = distance_kept.max()
    samples = {name: value.unsqueeze(0) for name, value in layout.split_values(values_kept).items()}
    stats = {
        "distance": distance_kept.unsqueeze(0),
        "accepted": torch.ones(1, kept, dtype=torch.bool),
        "epsilon": epsilon.expand(1, kept).clone(),
    }
    wall_time = time.perf_counter() - start
    full_settings = dict(settings)
    full_settings["epsilon_target"] = float(epsilon)
    full_settings["kept"] = kept
    full_settings.update(record)
    return simulated_posterior(
        simulator,
        wall_time,
        "abc_rejection",
        samples,
        stats,
        observation,
        full_settings,
    )
