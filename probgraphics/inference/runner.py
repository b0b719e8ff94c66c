"""The ABC run loop shared by the kernels: pilot, epsilon, warm-up, sampling, checkpoints.

One run is ``prepare -> warmup -> sample -> finish``; :func:`run_abc` does all four. The pieces
compose: ``warmup(run, 10); warmup(run, 20)`` equals ``warmup(run, 30)``, and so on, bit for bit,
because every random number comes from the run's generators in a fixed order.

* **Pilot.** ``pilot_size`` prior simulations (``u ~ N(0, I)``), in batches. Their summaries set
  the standardized distance's per-feature scale; their distances give epsilon when a
  ``quantile`` is asked for, and the starting chains.
* **Start.** ``init="pilot"``: the ``chains`` best pilot particles; ``"prior"``: fresh prior draws;
  a dict site -> constrained values ``(chains, *event)``: those values, mapped back to ``u`` by the
  inverse whitening transforms (sites left out start from the prior).
* **Warm-up.** Epsilon is annealed over the first ``anneal_fraction`` of warm-up, then held:
  geometrically from the starting chains' largest distance to a given ``epsilon`` or to the
  ``quantile`` of pilot distances; with neither (the default) adaptively, from the starting
  chains' median distance by a Robbins-Monro update on ``log epsilon`` toward an acceptance rate of
  :data:`EPSILON_TARGET_ACCEPTANCE` with beta held at 1 (lower, with a larger gain, for more than
  :data:`EPSILON_REFERENCE_CHAINS` chains: :func:`epsilon_adaptation`; the slice sampler's signal
  is how often its first angle is accepted), so epsilon shrinks as long as the chains still move
  and the target is where annealing ends (after Vihola & Franks 2020). With ``precondition``, a
  reference Gaussian is fitted to the chains' states (pooled over chains; over the steps since the
  previous fit while epsilon moves, over all steps since it settled after) at warm-up steps
  ``k * warmup / 8`` for ``k = 1..7``, shrunk toward ``N(0, I)`` and kept to its
  :data:`REFERENCE_RANK` most informative directions; the kernels centre their moves on it (see
  the kernel modules), which lets them take large steps along weakly constrained directions.
  The elliptical kernel's per-chain ``beta`` is adapted toward ``target_acceptance`` by a
  Robbins-Monro update on ``log beta`` (constant gain while epsilon moves under a given schedule,
  then a gain decaying from each change of the reference), clipped to ``[1e-4, 1]``. Everything
  adapted is frozen after warm-up, so the sampling phase is a fixed, exact MCMC kernel.
* **Blocks and data-driven proposals** (``abc_mcmc``). With ``blocks`` the move cycles over blocks
  of coordinates (by default one block per latent site, and one for the observation's whitened
  noise), each with its own per-chain ``beta``; with a ``guide_proposal`` (a Gaussian in the
  whitened space, e.g. a trained guide's q(z | x_obs)) the cycle ends with an independence
  Metropolis-Hastings move drawing from it. With ``precondition`` the cycle also has a joint move
  of every coordinate (of the latents, when there are more than :data:`MAX_REFERENCE_DIM`) centred
  on the fitted reference Gaussian, which moves along the correlations between blocks. Each move
  leaves the ABC target invariant, so the cycle does. With several moves and adaptive epsilon,
  epsilon is annealed once per cycle by the adaptive-tempering rule of ABC-SMC: the next epsilon is
  the one at which the chains' incremental weights ``K_eps'(rho) / K_eps(rho)`` keep an effective
  sample size of :data:`TEMPERING_ESS_FRACTION` of the chains (never below
  :data:`TEMPERING_MIN_RATIO` times the last), and the chains are resampled by those weights, so
  chains stuck far away take the places of copies of good ones (warm-up only: the sampling phase is
  plain MCMC).
* **Ridge moves** (``abc_mcmc``, ``ridge=`` focus sites). The cycle ends with a random walk of the
  focus sites in which every other latent follows by its conditional-mean shift under the local
  Gauss-Newton picture of the target (:mod:`~probgraphics.inference.kernels.ridge`): it moves
  along the ridge that compensating latents make (the face's pose against its shape). The
  directions are fitted at the start and at the reference's refit steps of warm-up, at the chain
  with the smallest distance (a central-difference Jacobian of the summaries along every latent
  coordinate: ``2 x latent_dim`` simulations a fit, counted in the budget); the per-chain step
  adapts like ``beta``; both are frozen for sampling.
* **Sampling.** ``draws * thin`` steps at the target epsilon; every ``thin``-th state is kept with
  its distance, accepted flag, epsilon, beta, and simulations used.
* **Checkpoints.** Every ``checkpoint_every`` steps (and at the end) the whole run state goes to
  ``checkpoint`` atomically; :func:`resume_run` continues it exactly where it stopped.

Statistics per run: simulations spent (pilot included), simulations per second, wall time, and
the time inside simulate + summary + distance against the total (the engine's overhead).
``timings["overhead_fraction"]`` is ``1 - simulate_in_steps / (warmup + sampling)``: the simulate
time is what the :class:`~probgraphics.inference.simulator.Simulator` clocks (the Pyro program
under the whitening messenger and the chains plate, the summary, the distance); everything else
in a warm-up or sampling step is overhead: the kernel's random numbers and proposal arithmetic,
the reference Gaussian's moments and fits (``timings["reference_fit"]``), adaptation, records,
progress bar and checkpoints. The pilot, the start and :func:`finish` are outside both.

Threads: while the chains' ``(chains, D)`` tensors are small the step loops run the engine's own
CPU arithmetic on one thread and each simulation on the thread count that was set (see
:data:`SERIAL_ENGINE_MAX_ELEMENTS`). Its ops (elementwise, per-row sums, matmuls split over rows)
gave the same bits on one thread as on two for every shape tried, and a face-program run's
chains are bit-identical to those of the all-threads loop.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from probgraphics.inference import checkpoint as checkpoint_io
from probgraphics.inference import marginal_noise, tempering
from probgraphics.inference.collapse import linear_site
from probgraphics.inference.distances import StandardizedL2, resolve_distance
from probgraphics.inference.kernels import collapsed, elliptical, elliptical_slice, ridge
from probgraphics.inference.kernels.elliptical import GaussianReference
from probgraphics.inference.posterior import Posterior
from probgraphics.inference.simulator import Simulator, derive_seeds
from probgraphics.inference.whitening import WhiteningLayout

__all__ = [
    "RunConfig",
    "AbcRun",
    "KERNEL_METHODS",
    "prepare",
    "warmup",
    "sample",
    "finish",
    "run_abc",
    "complete",
    "resume_run",
    "load_run",
    "save_run",
    "epsilon_schedule",
    "fit_reference",
    "fit_gaussian_proposal",
    "block_masks",
    "reference_fit_steps",
]

#: Method name -> kernel module.
KERNEL_METHODS = {"abc_mcmc": elliptical, "abc_slice": elliptical_slice}

MIN_BETA = 1e-4
#: Robbins-Monro gain on log beta while epsilon is annealed (tracking a moving target) ...
ANNEALING_GAIN = 0.2
#: ... and after, decaying as gain / (1 + k)^ADAPTATION_DECAY so beta settles.
ADAPTATION_DECAY = 0.6
#: Reference refits happen at warm-up steps round(k * warmup / REFIT_DIVISIONS), k = 1..REFIT_COUNT.
REFIT_DIVISIONS = 8
REFIT_COUNT = 7
#: The reference Gaussian keeps at most this many directions away from unit scale.
REFERENCE_RANK = 64
#: Above this many whitened dimensions no reference is fitted (its D x D moments and eigen-
#: decomposition would cost more than they save); the kernels use the plain moves.
MAX_REFERENCE_DIM = 2048
#: States of at most this many chains a step go into the reference's moments.
MOMENT_CHAINS = 32
#: Warm-up and sampling steps run the engine's own CPU arithmetic on one thread (simulations keep
#: the thread count set) while its per-chain tensors have at most this many elements: below it
#: an elementwise op takes less time on one thread than waking the sleeping OpenMP workers costs
#: (tens of microseconds, measured), on any number of cores (see ``Simulator.engine_threads``).
SERIAL_ENGINE_MAX_ELEMENTS = 1 << 19
#: Adaptive epsilon: Robbins-Monro on log epsilon toward this acceptance rate at beta = 1 ...
EPSILON_TARGET_ACCEPTANCE = 0.2
#: ... with this constant gain, both for up to this many chains (see :func:`epsilon_adaptation`).
EPSILON_GAIN = 0.05
EPSILON_REFERENCE_CHAINS = 64

#: Adaptive tempering (several moves): the next epsilon keeps this fraction of the chains as the
#: effective sample size of the incremental weights ...
TEMPERING_ESS_FRACTION = 0.5
#: ... and shrinks by at most this factor a cycle (resampled copies all share one distance, which
#: would otherwise let epsilon fall to zero in one step).
TEMPERING_MIN_RATIO = 0.7

#: Blocked moves start small: chains started from a guide stay near it until the adaptation
#: finds how far a block can move (a first move of the prior's scale loses the guide's start).
INITIAL_BLOCK_BETA = 0.1
#: Ridge moves: the central-difference step (whitened units) of the Jacobian their directions are
#: fitted from (a secant over a few pixels' worth of movement: a hard renderer's pixel steps
#: make shorter differences noise; on the face from its truth 0.003 and 0.03 mixed alike with
#: the soft outline, 0.03 better without), the per-chain walk
#: step's start (in units of the focus' fitted marginal standard deviations) and its range.
RIDGE_DIFFERENCE_STEP = 3e-2
RIDGE_INITIAL_STEP = 0.5
RIDGE_STEP_RANGE = (1e-3, 10.0)

# Options a resumed run may change: they do not change the rest of the run's result.
# ``init`` only shapes the state before the first checkpoint, which the checkpoint holds.
_PRESENTATION_OPTIONS = ("progress", "checkpoint", "checkpoint_every", "init")


@dataclass(frozen=True)
class RunConfig:
    """Validated settings of one ABC-MCMC run (``probgraphics.infer`` builds it).

    ``init`` is ``"pilot"``, ``"prior"`` or ``"given"`` (values passed to :func:`prepare`).
    ``observation_noise`` is the resolved mode, ``"whitened"``, ``"fresh"`` or ``"marginal"``;
    with ``"marginal"``, ``noise_scale`` is the observation's sigma the kernels widen their
    bandwidth by (:mod:`probgraphics.inference.marginal_noise`).
    """

    method: str
    chains: int
    draws: int
    warmup: int
    seed: int
    thin: int = 1
    epsilon: float | None = None
    quantile: float | None = None
    abc_kernel: str = "gaussian"
    init: str = "pilot"
    pilot_size: int = 1000
    target_acceptance: float = 0.25
    max_shrinks: int = elliptical_slice.DEFAULT_MAX_SHRINKS
    anneal_fraction: float = 0.5
    device: str = "cpu"
    batch_size: int = 1024
    observation_noise: str = "fresh"
    noise_scale: float = 0.0
    summary: str | None = None
    distance: str = "standardized_l2"
    progress: bool = False
    checkpoint: str | None = None
    checkpoint_every: int = 100
    precondition: bool = True
    blocks: tuple[tuple[str, ...], ...] | None = None
    guide_proposals: bool = False
    simulations: int | None = None
    collapse: str | None = None
    ridge: tuple[str, ...] | None = None

    @property
    def multi_move(self) -> bool:
        """The step cycles over blocks, guide proposals and/or ridge moves (abc_mcmc only);
        ``blocks=None`` with no guide is the single joint move with its reference Gaussian. A
        collapsed site always takes the cycle's path (its moves leave the site's coordinates
        out)."""
        return self.method == "abc_mcmc" and (
            self.blocks is not None
            or self.guide_proposals
            or self.collapse is not None
            or self.ridge is not None
        )

    @property
    def simulations_per_step(self) -> int:
        """Simulations a chain a step of abc_mcmc: two for a collapsed move (one for the other
        latents' values, which the site's affine map needs; one at the whole proposal)."""
        return 2 if self.collapse is not None else 1

    @property
    def adaptive_epsilon(self) -> bool:
        """Neither epsilon nor a pilot quantile given: epsilon is annealed adaptively."""
        return self.epsilon is None and self.quantile is None

    @property
    def adapts_beta(self) -> bool:
        return self.method == "abc_mcmc"

    @property
    def total_steps(self) -> int:
        return self.warmup + self.draws * self.thin

    def settings(self) -> dict[str, Any]:
        """JSON-serializable options (what a Posterior and a checkpoint record)."""
        return asdict(self)


@dataclass
class AbcRun:
    """Everything one run needs; the tensors in it are what a checkpoint stores.

    Attributes:
        config: the run's :class:`RunConfig`.
        layout: the program's whitening layout.
        observation: observed site -> tensor (CPU).
        simulator: the batched simulator (holds the program's seed generator).
        generator: the kernel's ``torch.Generator`` on the run's device.
        state: the kernel state (tensors lead with ``chains``).
        log_beta: ``(chains,)`` per-chain log proposal scale (elliptical kernel), else None.
        epsilon_start: where annealing starts; epsilon_target: where it ends (with adaptive
            epsilon, known once annealing is over); epsilon_current: the adaptive schedule's
            current value.
        warmup_done, sampling_steps_done: steps taken so far in each phase.
        records: per kept draw, ``(chains, draws, ...)`` buffers on the device.
        prior_values: pilot latent values ``(pilot_size, latent_dim)`` on CPU (the prior group).
        pilot_distance: the pilot's distances ``(pilot_size,)`` on CPU.
        seconds: wall time per phase so far (``pilot``, ``warmup``, ``sampling``).
        simulate_seconds_in_steps: simulate time inside warm-up and sampling steps.
        reference_fit_seconds: time spent fitting the reference Gaussian (part of the overhead).
        reference: the kernels' reference Gaussian (None: ``N(0, I)``).
        moments: float64 running ``count``, ``sum`` ``(D,)``, ``outer`` ``(D, D)`` of chain
            states since the last reference fit.
        steps_since_change: warm-up steps since epsilon settled or the reference changed.
    """

    config: RunConfig
    layout: WhiteningLayout
    observation: dict[str, torch.Tensor]
    simulator: Simulator
    generator: torch.Generator
    state: Any = None
    log_beta: torch.Tensor | None = None
    epsilon_start: float = math.inf
    epsilon_target: float = math.inf
    epsilon_current: float = math.inf
    warmup_done: int = 0
    sampling_steps_done: int = 0
    records: dict[str, torch.Tensor] = field(default_factory=dict)
    prior_values: torch.Tensor | None = None
    pilot_distance: torch.Tensor | None = None
    seconds: dict[str, float] = field(
        default_factory=lambda: {"pilot": 0.0, "warmup": 0.0, "sampling": 0.0}
    )
    simulate_seconds_in_steps: float = 0.0
    reference_fit_seconds: float = 0.0
    reference: GaussianReference | None = None
    moments: dict[str, torch.Tensor] | None = None
    steps_since_change: int = 0
    progress_bar: Any = None
    masks: torch.Tensor | None = None
    joint_mask: torch.Tensor | None = None
    latent_mask: torch.Tensor | None = None
    guide_proposal: GaussianReference | None = None
    linear: collapsed.LinearSite | None = None
    ridge_focus: torch.Tensor | None = None
    ridge_directions: ridge.RidgeDirections | None = None
    ridge_log_step: torch.Tensor | None = None

    @property
    def n_moves(self) -> int:
        """Moves in one cycle: the blocks, plus the guide's independence move when on, plus the
        ridge move when on (last)."""
        blocks = 1 if self.masks is None else self.masks.shape[0]
        return blocks + int(self.guide_proposal is not None) + int(self.ridge_focus is not None)

    def is_ridge_move(self, move: int) -> bool:
        """Whether move ``move`` of the cycle (0-based) is the ridge move."""
        return self.ridge_focus is not None and move == self.n_moves - 1

    @property
    def kernel(self):
        return KERNEL_METHODS[self.config.method]

    @property
    def draws_done(self) -> int:
        return self.sampling_steps_done // self.config.thin

    @property
    def steps_done(self) -> int:
        return self.warmup_done + self.sampling_steps_done


def epsilon_schedule(
    step: int, warmup_steps: int, epsilon_start: float, epsilon_target: float, fraction: float
) -> float:
    """Epsilon at warm-up step ``step`` (0-based): geometric from ``epsilon_start`` to
    ``epsilon_target`` over the first ``ceil(fraction * warmup_steps)`` steps, then the target.

    When ``epsilon_start <= epsilon_target`` (already inside) it is the target throughout.
    """
    anneal_steps = math.ceil(fraction * warmup_steps)
    if step >= anneal_steps or not epsilon_start > epsilon_target or math.isinf(epsilon_start):
        return epsilon_target
    progress = (step + 1) / anneal_steps
    return float(epsilon_start * (epsilon_target / epsilon_start) ** progress)


def epsilon_adaptation(chains: int) -> tuple[float, float]:
    """``(gain, target acceptance)`` of the adaptive epsilon for ``chains`` chains.

    Up to :data:`EPSILON_REFERENCE_CHAINS` chains: the constants. With ``k`` times as many chains
    a budget leaves ``k`` times fewer annealing steps, so the gain grows by ``k`` (gain x steps,
    how far log epsilon can travel, stays put); the acceptance rate averaged over the chains is
    ``sqrt(k)`` times less noisy, which lets it. The target falls by ``sqrt(k)``: a lower epsilon
    while the accepted moves per step still grow as ``sqrt(chains)``. (sbibm's gaussian_linear at
    1e5 simulations, 1,000 chains, two seeds, the quadratic C2ST of benchmarks/abc_accuracy.py:
    0.90 at the constants, 0.77-0.80 with the gain grown by ``sqrt(k)``, 0.74-0.75 by ``k``.)
    """
    ratio = max(1.0, chains / EPSILON_REFERENCE_CHAINS)
    return EPSILON_GAIN * ratio, EPSILON_TARGET_ACCEPTANCE / math.sqrt(ratio)


def reference_fit_steps(warmup_steps: int) -> list[int]:
    """Warm-up step counts after which the reference Gaussian is refitted (distinct, >= 1)."""
    steps = {round(k * warmup_steps / REFIT_DIVISIONS) for k in range(1, REFIT_COUNT + 1)}
    return sorted(step for step in steps if step >= 1)


def fit_reference(
    count: float,
    total: torch.Tensor,
    outer: torch.Tensor,
    dtype: torch.dtype,
    rank: int | None = None,
) -> GaussianReference:
    """Fit ``N(m, S)`` from pooled moments of ``count`` states (``total`` ``(D,)``, ``outer``
    ``(D, D)``, float64).

    The covariance is shrunk toward the prior ``N(0, I)`` with a pseudo-count of ``D`` states,
    ``(n Cov + D I) / (n + D)``, so directions the states barely explored keep the prior's unit
    scale (chain states are autocorrelated and may number fewer than ``D``). Only the ``rank``
    eigen-directions farthest from unit scale (largest ``|log eigenvalue|``; default
    :data:`REFERENCE_RANK`) are kept, the rest set to exactly 1, so the kernels' cost per step
    is ``O(C D rank)``. Any reference gives an exact kernel; a closer one mixes faster.
    """
    dim = total.shape[0]
    rank = min(dim, REFERENCE_RANK if rank is None else rank)
    mean = total / count
    covariance = outer / count - torch.outer(mean, mean)
    covariance = 0.5 * (covariance + covariance.T)
    identity = torch.eye(dim, dtype=covariance.dtype, device=covariance.device)
    shrunk = (count * covariance + dim * identity) / (count + dim)
    # One thread: a multi-threaded LAPACK eigh stalls for seconds when the cores are busy.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        eigenvalues, basis = torch.linalg.eigh(shrunk.cpu())
    finally:
        torch.set_num_threads(threads)
    eigenvalues = eigenvalues.clamp(min=1e-12)
    keep = torch.argsort(eigenvalues.log().abs(), descending=True, stable=True)[:rank]
    keep = keep.sort().values
    return GaussianReference(
        mean.to(dtype),
        basis[:, keep].to(device=mean.device, dtype=dtype),
        eigenvalues[keep].sqrt().to(device=mean.device, dtype=dtype),
    )


def block_masks(layout: WhiteningLayout, blocks: tuple[tuple[str, ...], ...]) -> torch.Tensor:
    """``(n_blocks, D)`` bool masks of the whitened coordinates each block moves.

    ``blocks`` name latent sites; latent sites no block names get a block each, and the whitened
    noise of observed sites (when the layout has it) one more, so every coordinate moves.
    """
    sites = {site.name: site for site in layout.sites}
    named = [name for block in blocks for name in block]
    unknown = sorted(set(named) - {site.name for site in layout.latent_sites})
    if unknown:
        raise ValueError(
            f"blocks name {unknown}, which are not latent sites of this program; its latent "
            f"sites are {[site.name for site in layout.latent_sites]}."
        )
    repeated = sorted({name for name in named if named.count(name) > 1})
    if repeated:
        raise ValueError(f"blocks name {repeated} more than once; give each site one block.")
    groups = [list(block) for block in blocks if block]
    groups += [[site.name] for site in layout.latent_sites if site.name not in named]
    noise = [site.name for site in layout.sites if not site.latent]
    if noise:
        groups.append(noise)
    masks = torch.zeros(len(groups), layout.dim, dtype=torch.bool)
    for row, group in enumerate(groups):
        for name in group:
            site = sites[name]
            masks[row, site.offset : site.offset + site.size] = True
    return masks


def fit_gaussian_proposal(u: torch.Tensor, mask: torch.Tensor) -> GaussianReference:
    """A Gaussian ``N(m, S)`` fitted to draws ``u`` ``(M, D)`` on the ``mask`` coordinates
    (``(D,)`` bool), ``N(0, I)`` elsewhere: the independence proposal of a guide's draws mapped
    into the whitened space. Full rank on the mask (its ``D_mask`` eigen-directions)."""
    if u.dim() != 2 or u.shape[0] < 2:
        raise ValueError(f"need draws shaped (M >= 2, D), got {tuple(u.shape)}.")
    inside = u[:, mask].double()
    mean = inside.mean(0)
    covariance = torch.cov(inside.T).reshape(mean.numel(), mean.numel())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see fit_reference
    try:
        eigenvalues, basis = torch.linalg.eigh(0.5 * (covariance + covariance.T))
    finally:
        torch.set_num_threads(threads)
    fitted = GaussianReference(
        mean.to(u.dtype), basis.to(u.dtype), eigenvalues.clamp(min=1e-12).sqrt().to(u.dtype)
    )
    return _embed_reference(fitted, mask)


def _reset_moments(run: AbcRun) -> None:
    dim = run.layout.dim if run.joint_mask is None else int(run.joint_mask.sum())
    device = torch.device(run.config.device)
    run.moments = {
        "count": torch.zeros((), dtype=torch.float64, device=device),
        "sum": torch.zeros(dim, dtype=torch.float64, device=device),
        "outer": torch.zeros(dim, dim, dtype=torch.float64, device=device),
    }


def _accumulate_moments(run: AbcRun) -> None:
    """Add the states of (at most :data:`MOMENT_CHAINS`, rotating) chains to the moments, so the
    cost per step does not grow with the number of chains."""
    u = run.state.u
    chains = u.shape[0]
    if chains > MOMENT_CHAINS:
        start = (run.warmup_done * MOMENT_CHAINS) % chains
        index = (torch.arange(MOMENT_CHAINS, device=u.device) + start) % chains
        u = u[index]
    if run.joint_mask is not None:
        u = u[:, run.joint_mask]
    u = u.to(torch.float64)
    run.moments["count"] += u.shape[0]
    run.moments["sum"] += u.sum(0)
    run.moments["outer"] += u.T @ u


def _make_simulator(
    program: Callable[[], Any],
    layout: WhiteningLayout,
    observation: Mapping[str, torch.Tensor],
    summary: Callable,
    config: RunConfig,
    simulator_seed: int,
    synchronize_timing: bool,
) -> Simulator:
    return Simulator(
        program,
        layout,
        observation,
        summary,
        device=torch.device(config.device),
        seed=simulator_seed,
        synchronize_timing=synchronize_timing,
        observed_mean=config.observation_noise == "marginal",
    )


def _allocate_records(run: AbcRun) -> None:
    config = run.config
    device = torch.device(config.device)
    dtype = run.layout.dtype
    shape = (config.chains, config.draws)
    run.records = {
        "values": torch.zeros(shape + (run.layout.latent_dim,), dtype=dtype, device=device),
        "distance": torch.zeros(shape, dtype=dtype, device=device),
        "accepted": torch.zeros(shape, dtype=torch.bool, device=device),
        "epsilon": torch.zeros(shape, dtype=dtype, device=device),
        "n_simulations": torch.zeros(shape, dtype=torch.int64, device=device),
    }
    if config.adapts_beta:
        run.records["beta"] = torch.zeros(shape, dtype=dtype, device=device)
    else:
        run.records["cap_hits"] = torch.zeros(shape, dtype=torch.int64, device=device)


def _pilot(
    run: AbcRun, distance_spec: str | Callable | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the pilot and set the simulator's distance; return the pilot's ``(u, values,
    distance)``."""
    config = run.config
    start = time.perf_counter()
    device = torch.device(config.device)
    dtype = run.layout.dtype
    dim = run.layout.dim
    us, values, summaries = [], [], []
    for begin in range(0, config.pilot_size, config.batch_size):
        size = min(config.batch_size, config.pilot_size - begin)
        u = torch.randn(size, dim, generator=run.generator, device=device, dtype=dtype)
        _, batch_values, batch_summaries = run.simulator.run(u)
        us.append(u)
        values.append(batch_values)
        summaries.append(batch_summaries)
    if us:
        pilot_u = torch.cat(us)
        pilot_values = torch.cat(values)
        pilot_summaries = torch.cat(summaries)
    else:
        pilot_u = torch.zeros(0, dim, device=device, dtype=dtype)
        pilot_values = torch.zeros(0, run.layout.latent_dim, device=device, dtype=dtype)
        pilot_summaries = None
    distance = resolve_distance(distance_spec, pilot_summaries)
    run.simulator.set_distance(distance)
    if pilot_summaries is not None:
        with torch.no_grad():
            pilot_distance = distance(pilot_summaries, run.simulator.observed_summary)
        run.prior_values = pilot_values.cpu()
    else:
        pilot_distance = torch.zeros(0, device=device, dtype=dtype)
    run.seconds["pilot"] += time.perf_counter() - start
    return pilot_u, pilot_values, pilot_distance


def _choose_epsilon_target(config: RunConfig, pilot_distance: torch.Tensor) -> float:
    if config.epsilon is not None:
        return float(config.epsilon)
    if config.quantile is None:
        return math.nan  # adaptive: set when annealing ends
    finite = pilot_distance[torch.isfinite(pilot_distance)]
    if finite.numel() == 0:
        raise ValueError(
            "epsilon was not given and no pilot simulation produced a finite distance; pass "
            "epsilon=..., or check that the program and summary produce finite features."
        )
    return float(torch.quantile(finite.double(), config.quantile))


def _initial_state(
    run: AbcRun,
    pilot: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    init_values: Mapping[str, torch.Tensor] | None,
):
    config = run.config
    device = torch.device(config.device)
    dtype = run.layout.dtype
    chains = config.chains
    if config.init == "pilot":
        pilot_u, pilot_values, pilot_distance = pilot
        ranking = torch.nan_to_num(pilot_distance, nan=math.inf)
        best = torch.argsort(ranking, stable=True)[:chains]
        return _init_state(run, pilot_u[best], pilot_values[best], pilot_distance[best])
    u = torch.randn(chains, run.layout.dim, generator=run.generator, device=device, dtype=dtype)
    if config.init == "prior":
        simulation = run.simulator(u)
        return _init_state(run, u, simulation.values, simulation.distance)
    given = {name: value.to(device) for name, value in (init_values or {}).items()}
    u, simulation = run.simulator.simulate_given(u, given)
    if not bool(torch.isfinite(u).all()):
        raise ValueError(
            "the given init values map to non-finite whitened values; keep every value inside "
            "its site's support (e.g. strictly within a Uniform's bounds)."
        )
    return _init_state(run, u, simulation.values, simulation.distance)


def _init_state(run: AbcRun, u: torch.Tensor, values: torch.Tensor, distance: torch.Tensor):
    """The kernel's state at ``u``; a collapsed run's also holds its site's statistics."""
    if run.linear is not None:
        return collapsed.init(u, values, distance, run.linear)
    return run.kernel.init(u, values, distance)


def prepare(
    program: Callable[[], Any],
    layout: WhiteningLayout,
    observation: Mapping[str, torch.Tensor],
    config: RunConfig,
    *,
    summary: Callable,
    distance: str | Callable | None,
    init_values: Mapping[str, torch.Tensor] | None = None,
    synchronize_timing: bool = False,
    guide_proposal: GaussianReference | None = None,
) -> AbcRun:
    """Build a run: simulator, pilot, distance, epsilon target, starting chains.

    Args:
        program: the Pyro program.
        layout: its whitening layout (observed sites' noise included when whitened).
        observation: observed site -> tensor (the site's event shape).
        config: validated :class:`RunConfig`.
        summary: the summary callable.
        distance: a distance name or callable (resolved with the pilot's summaries).
        init_values: for ``config.init == "given"``: latent site -> ``(chains, *event)`` values.
        synchronize_timing: synchronize CUDA around simulate timings (benchmarks).
        guide_proposal: with ``config.guide_proposals``, the independence proposal ``N(m, S)`` in
            the whitened space (:func:`fit_gaussian_proposal`; ``N(0, I)`` outside the latents).

    Returns:
        An :class:`AbcRun` ready for :func:`warmup`.
    """
    kernel_seed, simulator_seed = derive_seeds(config.seed)
    device = torch.device(config.device)
    simulator = _make_simulator(
        program, layout, observation, summary, config, simulator_seed, synchronize_timing
    )
    generator = torch.Generator(device=device).manual_seed(kernel_seed)
    run = AbcRun(
        config=config,
        layout=layout,
        observation={name: value.detach().cpu() for name, value in observation.items()},
        simulator=simulator,
        generator=generator,
    )
    _set_moves(run, guide_proposal)
    pilot = _pilot(run, distance)
    if config.collapse is not None:
        run.linear = linear_site(program, layout, config.collapse, run.simulator.observed_summary)
    run.pilot_distance = pilot[2].cpu()
    run.epsilon_target = _choose_epsilon_target(config, pilot[2])
    run.state = _initial_state(run, pilot, init_values)
    finite = run.state.distance[torch.isfinite(run.state.distance)]
    if config.adaptive_epsilon:
        if finite.numel() == 0:
            raise ValueError(
                "no starting chain has a finite distance, so epsilon cannot be annealed from "
                "them; pass epsilon=..., or check the program and summary give finite features."
            )
        # The median, not the largest: started from a guide, a few far chains would otherwise
        # set an epsilon at which every chain wanders off its good start before the annealing
        # brings epsilon down (the Robbins-Monro update raises it again if chains stick).
        run.epsilon_start = float(finite.median())
        run.epsilon_current = run.epsilon_start
        run.epsilon_target = run.epsilon_start  # until annealing ends
    else:
        run.epsilon_start = float(finite.max()) if finite.numel() else run.epsilon_target
    if config.adapts_beta:
        shape = (config.chains, run.masks.shape[0]) if config.multi_move else (config.chains,)
        start = math.log(INITIAL_BLOCK_BETA) if config.multi_move else 0.0
        run.log_beta = torch.full(shape, start, dtype=layout.dtype, device=device)
    if _preconditions(run):
        _reset_moments(run)
    if run.ridge_focus is not None:
        epsilon = run.epsilon_current if config.adaptive_epsilon else run.epsilon_start
        fit_ridge(run, epsilon)
        run.ridge_log_step = torch.full(
            (config.chains,), math.log(RIDGE_INITIAL_STEP), dtype=layout.dtype, device=device
        )
    _allocate_records(run)
    return run


def _set_moves(run: AbcRun, guide_proposal: GaussianReference | None) -> None:
    """The multi-move cycle's block masks, latent mask and guide proposal (on the device)."""
    config = run.config
    if config.guide_proposals and guide_proposal is None:
        raise ValueError("guide_proposals=True needs the guide's proposal (guide_proposal=...).")
    if not config.multi_move:
        return
    device = torch.device(config.device)
    dim = run.layout.dim
    latent = torch.zeros(dim, dtype=torch.bool)
    for site in run.layout.latent_sites:
        latent[site.offset : site.offset + site.size] = True
    run.latent_mask = latent.to(device)
    if config.blocks is None:
        # The paper's single move (cycled with the guide's): one block of every coordinate,
        # itself the joint move on the reference when one is affordable.
        run.masks = torch.ones(1, dim, dtype=torch.bool, device=device)
        if config.precondition and dim <= MAX_REFERENCE_DIM:
            run.joint_mask = run.masks[0]
    else:
        run.masks = block_masks(run.layout, config.blocks).to(device)
        # The cycle's preconditioned joint move: over every coordinate when a reference over
        # all of them is affordable, else over the latents (the noise block then moves on its
        # own only).
        if config.precondition and dim <= MAX_REFERENCE_DIM:
            run.joint_mask = torch.ones(dim, dtype=torch.bool, device=device)
        elif config.precondition and run.layout.latent_dim <= MAX_REFERENCE_DIM:
            run.joint_mask = run.latent_mask
        if run.joint_mask is not None:
            run.masks = torch.cat([run.masks, run.joint_mask.unsqueeze(0)])
    if config.collapse is not None:
        _leave_out_collapsed(run)
    if config.ridge is not None:
        focus = torch.zeros(dim, dtype=torch.bool)
        for name in config.ridge:
            site = run.layout.site(name)
            focus[site.offset : site.offset + site.size] = True
        run.ridge_focus = focus.to(device)
    if config.guide_proposals:
        run.guide_proposal = GaussianReference(
            *(tensor.to(device=device, dtype=run.layout.dtype) for tensor in guide_proposal)
        )
        if config.collapse is not None:
            site = run.layout.site(config.collapse)
            span = slice(site.offset, site.offset + site.size)
            proposal = run.guide_proposal
            if bool(proposal.mean[span].ne(0).any() or proposal.basis[span].ne(0).any()):
                raise ValueError(
                    f"the guide's proposal must be N(0, I) on the collapsed site "
                    f"{config.collapse!r} (its moves draw the site from its conditional); fit it "
                    "without the site (fit_gaussian_proposal with a mask that leaves it out)."
                )


def _leave_out_collapsed(run: AbcRun) -> None:
    """The moves of a collapsed run change every coordinate but the collapsed site's (drawn from
    its conditional after each move): blocks of the site alone go; with every latent collapsed,
    one empty block remains, whose move only redraws the site."""
    site = run.layout.site(run.config.collapse)
    others = torch.ones(run.layout.dim, dtype=torch.bool, device=run.masks.device)
    others[site.offset : site.offset + site.size] = False
    masks = run.masks & others
    if run.joint_mask is not None:
        run.joint_mask = run.joint_mask & others
        if not bool(run.joint_mask.any()):
            run.joint_mask = None
            masks = masks[:-1]
    kept = masks.any(-1)
    if run.joint_mask is not None:
        kept[-1] = True  # the joint move stays the cycle's last block
    masks = masks[kept]
    if masks.shape[0] == 0:
        masks = others.logical_and(~others).unsqueeze(0)  # one empty block
    run.masks = masks
    run.latent_mask = run.latent_mask & others


def _preconditions(run: AbcRun) -> bool:
    config = run.config
    if config.multi_move:
        return run.joint_mask is not None  # the cycle's joint move
    return config.precondition and run.layout.dim <= MAX_REFERENCE_DIM


def ridge_fits(warmup_steps: int) -> int:
    """How many times a run with ridge moves fits their directions: at the start, then at each
    of the reference's refit steps of warm-up."""
    return 1 + len(reference_fit_steps(warmup_steps))


def fit_ridge(run: AbcRun, epsilon: float) -> None:
    """Fit the ridge moves' directions at the chain with the smallest distance, for the kernel
    at tolerance ``epsilon`` (``2 x latent_dim`` simulations; see
    :mod:`~probgraphics.inference.kernels.ridge`)."""
    config = run.config
    bandwidth = marginal_noise.bandwidth(epsilon, config.noise_scale)
    if not (math.isfinite(bandwidth) and bandwidth > 0):
        bandwidth = 1.0  # no tolerance yet: the prior's scale
    distance = run.state.distance.nan_to_num(math.inf)
    best = int(distance.argmin())
    coordinates = run.latent_mask.nonzero().squeeze(1)  # ridge moves imply the cycle's masks
    jacobian = ridge.central_jacobian(
        run.simulator, run.state.u[best], coordinates, RIDGE_DIFFERENCE_STEP, config.batch_size
    )
    if isinstance(run.simulator.distance, StandardizedL2):  # the kernel compares these
        jacobian = jacobian / run.simulator.distance.scale.reshape(-1, 1).to(jacobian)
    run.ridge_directions = ridge.fit_directions(
        jacobian,
        coordinates,
        run.ridge_focus[coordinates],
        bandwidth,
        run.layout.dim,
        dtype=run.layout.dtype,
    )


def _embed_reference(reference: GaussianReference, mask: torch.Tensor) -> GaussianReference:
    """A reference fitted on the ``mask`` coordinates, as ``N(0, I)`` on the others."""
    if bool(mask.all()):
        return reference
    basis = reference.basis.new_zeros(mask.shape[0], reference.basis.shape[1])
    basis[mask] = reference.basis
    mean = reference.mean.new_zeros(mask.shape[0])
    mean[mask] = reference.mean
    return GaussianReference(mean, basis, reference.scale)


def _kernel_step(run: AbcRun, epsilon: float):
    """One kernel step at tolerance ``epsilon``; returns ``(accepted, acceptance_probability,
    n_simulations, cap_hits)``."""
    config = run.config
    simulate = run.simulator
    # The kernels see the bandwidth: the tolerance itself, or widened by the noise it integrates.
    epsilon = marginal_noise.bandwidth(epsilon, config.noise_scale)
    if run.linear is not None:
        return _collapsed_step(run, epsilon)
    if config.multi_move:
        move = run.steps_done % run.n_moves
        if run.is_ridge_move(move):
            run.state, info = ridge.step(
                run.generator,
                run.state,
                simulate,
                epsilon,
                config.abc_kernel,
                run.ridge_directions,
                run.ridge_log_step.exp(),
            )
        elif move == run.masks.shape[0]:
            run.state, info = elliptical.independence_step(
                run.generator,
                run.state,
                simulate,
                epsilon,
                run.guide_proposal,
                config.abc_kernel,
                run.latent_mask,
            )
        else:
            joint = run.joint_mask is not None and move == run.masks.shape[0] - 1
            whole = joint and bool(run.joint_mask.all())
            run.state, info = elliptical.step(
                run.generator,
                run.state,
                simulate,
                epsilon,
                run.log_beta[:, move].exp(),
                config.abc_kernel,
                run.reference if joint else None,
                None if whole else run.masks[move],
            )
        ones = torch.ones_like(info.accepted, dtype=torch.int64)
        return info.accepted, info.acceptance_probability, ones, None
    if config.method == "abc_mcmc":
        run.state, info = elliptical.step(
            run.generator,
            run.state,
            simulate,
            epsilon,
            run.log_beta.exp(),
            config.abc_kernel,
            run.reference,
        )
        ones = torch.ones_like(info.accepted, dtype=torch.int64)
        return info.accepted, info.acceptance_probability, ones, None
    # A hard budget caps the shrinking rounds: the rest of the budget is this step's limit.
    limit = None
    if config.simulations is not None:
        limit = max(0, config.simulations - simulate.n_simulations)
    run.state, info = elliptical_slice.step(
        run.generator,
        run.state,
        simulate,
        epsilon,
        config.abc_kernel,
        config.max_shrinks,
        run.reference,
        limit,
    )
    # The slice sampler always moves; how often its first angle is accepted says how well the
    # chains move (it is the acceptance of an independence-like proposal).
    first_angle = (info.n_simulations == 1).to(run.state.u.dtype)
    return info.accepted, first_angle, info.n_simulations, info.cap_hit


def _collapsed_step(run: AbcRun, bandwidth: float):
    """One move of a collapsed run's cycle (see :mod:`~probgraphics.inference.kernels.
    collapsed`): the same cycle as :func:`_kernel_step`'s, each move then drawing the site."""
    move = run.steps_done % run.n_moves
    if move == run.masks.shape[0]:
        run.state, info = collapsed.independence_step(
            run.generator,
            run.state,
            run.simulator,
            run.linear,
            bandwidth,
            run.guide_proposal,
            run.latent_mask,
        )
    else:
        joint = run.joint_mask is not None and move == run.masks.shape[0] - 1
        run.state, info = collapsed.step(
            run.generator,
            run.state,
            run.simulator,
            run.linear,
            bandwidth,
            run.log_beta[:, move].exp(),
            run.reference if joint else None,
            run.masks[move],
        )
    twice = torch.full_like(info.accepted, run.config.simulations_per_step, dtype=torch.int64)
    return info.accepted, info.acceptance_probability, twice, None


def _adapt_beta(run: AbcRun, acceptance_probability: torch.Tensor, epsilon_moving: bool) -> None:
    config = run.config
    if epsilon_moving:
        gain = ANNEALING_GAIN
    else:
        # Each block's beta is updated once a cycle: its gain decays with its own updates.
        updates = run.steps_since_change // (run.n_moves if config.multi_move else 1)
        gain = ANNEALING_GAIN / (1.0 + updates) ** ADAPTATION_DECAY
    update = gain * (acceptance_probability - config.target_acceptance)
    if not config.multi_move:
        run.log_beta = (run.log_beta + update).clamp(math.log(MIN_BETA), 0.0)
        return
    move = run.steps_done % run.n_moves  # the move just taken (steps_done not yet counted)
    if run.is_ridge_move(move):
        low, high = RIDGE_STEP_RANGE
        run.ridge_log_step = (run.ridge_log_step + update).clamp(math.log(low), math.log(high))
    elif move < run.masks.shape[0]:  # the guide's independence move has no beta
        column = (run.log_beta[:, move] + update).clamp(math.log(MIN_BETA), 0.0)
        run.log_beta = run.log_beta.index_copy(
            1, torch.tensor([move], device=column.device), column.unsqueeze(1)
        )


def _temper(run: AbcRun) -> None:
    """One adaptive-tempering update (see the module docstring): lower epsilon, resample."""
    config = run.config
    sigma = config.noise_scale
    distance = run.state.distance
    # Tempering lowers the kernels' bandwidth (the tolerance widened by integrated noise, if any);
    # it cannot go below the noise itself (tolerance 0: the exact posterior).
    current = marginal_noise.bandwidth(run.epsilon_current, sigma)
    equal = torch.zeros(distance.shape[0], dtype=torch.float64, device=distance.device)
    floor = max(TEMPERING_MIN_RATIO * current, sigma)
    epsilon = tempering.next_epsilon(
        distance, equal, current, TEMPERING_ESS_FRACTION, config.abc_kernel, floor
    )
    # Chains outside the set (indicator kernel) must not raise it.
    lowered = max(min(float(epsilon), current), sigma)
    run.epsilon_current = marginal_noise.tolerance(lowered, sigma)
    log_weights = tempering.incremental_log_weights(distance, lowered, current, config.abc_kernel)
    if not bool(torch.isfinite(log_weights).any()):
        return  # no chain has a finite distance: nothing to weigh them by
    index = tempering.resample_indices(run.generator, log_weights)
    run.state = type(run.state)(*(tensor[index] for tensor in run.state))


def _engine_threads(run: AbcRun):
    """The context the step loops run in: one CPU thread for the engine's own arithmetic when its
    ``(chains, D)`` tensors are small (simulations keep the thread count), else nothing."""
    layout = run.layout
    elements = run.config.chains * max(layout.dim, layout.latent_dim, 1)
    if elements > SERIAL_ENGINE_MAX_ELEMENTS:
        return contextlib.nullcontext()
    return run.simulator.engine_threads(1)


def _after_step(run: AbcRun) -> None:
    config = run.config
    if run.progress_bar is not None:
        run.progress_bar.update(1)
    if config.checkpoint is not None and run.steps_done % config.checkpoint_every == 0:
        save_run(run, config.checkpoint)


def _progress_postfix(run: AbcRun, epsilon: float, acceptance: torch.Tensor, phase: str) -> None:
    bar = run.progress_bar
    if bar is None:
        return
    now = time.perf_counter()
    if now - getattr(bar, "_probgraphics_last", 0.0) < 0.5:
        return
    bar._probgraphics_last = now
    # The phase times are added when a phase ends: rate since the bar opened instead.
    opened, simulations_then = bar._probgraphics_opened
    rate = (run.simulator.n_simulations - simulations_then) / max(now - opened, 1e-9)
    # Reading the acceptance is a host sync: only here, at most twice a second, for display.
    bar.set_postfix(
        phase=phase,
        eps=f"{epsilon:.3g}",
        acc=f"{float(acceptance.float().mean()):.2f}",
        sims_per_s=f"{rate:.3g}",
        refresh=False,
    )


def warmup(run: AbcRun, n_steps: int | None = None) -> AbcRun:
    """Take ``n_steps`` warm-up steps (default: all that remain of ``config.warmup``).

    Epsilon follows :func:`epsilon_schedule`; beta adapts (elliptical kernel). Returns ``run``.
    """
    config = run.config
    remaining = config.warmup - run.warmup_done
    n_steps = remaining if n_steps is None else n_steps
    if n_steps < 0 or n_steps > remaining:
        raise ValueError(f"warmup: asked for {n_steps} steps, but {remaining} remain")
    anneal_steps = math.ceil(config.anneal_fraction * config.warmup)
    precondition = _preconditions(run)
    fit_steps = set(reference_fit_steps(config.warmup))
    refits = fit_steps if precondition else set()
    ridge_refits = fit_steps if run.ridge_focus is not None else set()
    start = time.perf_counter()
    simulate_before = run.simulator.seconds
    with _engine_threads(run):
        for _ in range(n_steps):
            if config.adaptive_epsilon:
                moving = run.warmup_done < anneal_steps
                epsilon = run.epsilon_current if moving else run.epsilon_target
            else:
                # Annealed in bandwidth: with integrated noise the target tolerance may be 0.
                sigma = config.noise_scale
                bandwidth = epsilon_schedule(
                    run.warmup_done,
                    config.warmup,
                    marginal_noise.bandwidth(run.epsilon_start, sigma),
                    marginal_noise.bandwidth(run.epsilon_target, sigma),
                    config.anneal_fraction,
                )
                epsilon = marginal_noise.tolerance(bandwidth, sigma)
                moving = run.warmup_done < anneal_steps and run.epsilon_start > run.epsilon_target
            accepted, acceptance_probability, _, _ = _kernel_step(run, epsilon)
            tempering = config.adaptive_epsilon and config.multi_move
            if tempering:
                _adapt_beta(run, acceptance_probability, moving)
            elif config.adaptive_epsilon and moving:
                # Beta stays at 1 meanwhile, so the acceptance measures how well the chains move
                # at this epsilon (one host read per annealing step).
                rate = float(acceptance_probability.float().mean())
                gain, target = epsilon_adaptation(config.chains)
                update = gain * (rate - target)
                run.epsilon_current = float(epsilon * math.exp(-update))
                if run.warmup_done + 1 == anneal_steps:
                    run.epsilon_target = run.epsilon_current
            elif config.adapts_beta:
                _adapt_beta(run, acceptance_probability, moving)
            run.warmup_done += 1
            run.steps_since_change += 1
            if tempering and moving:
                cycle_done = run.warmup_done % run.n_moves == 0
                if cycle_done or run.warmup_done == anneal_steps:
                    _temper(run)
                if run.warmup_done == anneal_steps:
                    run.epsilon_target = run.epsilon_current
            if run.warmup_done == anneal_steps:
                run.steps_since_change = 0
            if run.warmup_done in ridge_refits:
                fit_start = time.perf_counter()
                fit_ridge(run, run.epsilon_current if config.adaptive_epsilon else epsilon)
                run.reference_fit_seconds += time.perf_counter() - fit_start
            if precondition:
                _accumulate_moments(run)
                if run.warmup_done in refits:
                    moments = run.moments
                    fit_start = time.perf_counter()
                    run.reference = fit_reference(
                        moments["count"], moments["sum"], moments["outer"], run.layout.dtype
                    )
                    if run.joint_mask is not None:
                        run.reference = _embed_reference(run.reference, run.joint_mask)
                    run.reference_fit_seconds += time.perf_counter() - fit_start
                    run.steps_since_change = 0
                # While epsilon moves, each fit uses the states since the previous one (the target
                # changes); once it is held, the states pile up so later fits use more of them.
                if run.warmup_done <= anneal_steps and (
                    run.warmup_done in refits or run.warmup_done == anneal_steps
                ):
                    _reset_moments(run)
            _progress_postfix(run, epsilon, accepted, "warmup")
            _after_step(run)
    run.seconds["warmup"] += time.perf_counter() - start
    run.simulate_seconds_in_steps += run.simulator.seconds - simulate_before
    return run


def sample(run: AbcRun, n_draws: int | None = None) -> AbcRun:
    """Take ``n_draws * thin`` sampling steps at the target epsilon, keeping every ``thin``-th.

    Default: all remaining draws. Warm-up must be complete. Returns ``run``.
    """
    config = run.config
    if run.warmup_done < config.warmup:
        raise ValueError(
            f"sample: warm-up has {config.warmup - run.warmup_done} steps left; call warmup first"
        )
    remaining = config.draws * config.thin - run.sampling_steps_done
    n_steps = remaining if n_draws is None else n_draws * config.thin
    if n_steps < 0 or n_steps > remaining:
        raise ValueError(
            f"sample: asked for {n_draws} draws, but {remaining // config.thin} remain"
        )
    epsilon = run.epsilon_target
    beta = None
    if run.log_beta is not None:
        # Several blocks: the geometric mean of the chain's block betas.
        beta = run.log_beta.exp() if run.log_beta.dim() == 1 else run.log_beta.mean(1).exp()
    records = run.records
    start = time.perf_counter()
    simulate_before = run.simulator.seconds
    with _engine_threads(run):
        for _ in range(n_steps):
            accepted, _, n_simulations, cap_hits = _kernel_step(run, epsilon)
            draw, offset = divmod(run.sampling_steps_done, config.thin)
            records["n_simulations"][:, draw] += n_simulations
            if cap_hits is not None:
                records["cap_hits"][:, draw] += cap_hits.to(torch.int64)
            if offset == config.thin - 1:
                records["values"][:, draw] = run.state.values
                records["distance"][:, draw] = run.state.distance
                records["accepted"][:, draw] = accepted
                records["epsilon"][:, draw] = epsilon
                if beta is not None:
                    records["beta"][:, draw] = beta
            run.sampling_steps_done += 1
            _progress_postfix(run, epsilon, accepted, "sampling")
            _after_step(run)
    run.seconds["sampling"] += time.perf_counter() - start
    run.simulate_seconds_in_steps += run.simulator.seconds - simulate_before
    return run


def _timings(run: AbcRun) -> dict[str, float]:
    step_seconds = run.seconds["warmup"] + run.seconds["sampling"]
    total = sum(run.seconds.values())
    overhead = 1.0 - run.simulate_seconds_in_steps / step_seconds if step_seconds > 0 else 0.0
    return {
        "pilot": run.seconds["pilot"],
        "warmup": run.seconds["warmup"],
        "sampling": run.seconds["sampling"],
        "simulate": run.simulator.seconds,
        "simulate_in_steps": run.simulate_seconds_in_steps,
        "reference_fit": run.reference_fit_seconds,
        "total": total,
        "overhead_fraction": min(max(overhead, 0.0), 1.0),
    }


def finish(run: AbcRun) -> Posterior:
    """The run's :class:`~probgraphics.inference.posterior.Posterior` (all draws must be taken).

    Writes a final checkpoint when the run has a checkpoint path.
    """
    config = run.config
    if run.draws_done < config.draws:
        raise ValueError(f"finish: {config.draws - run.draws_done} draws remain; call sample first")
    if run.progress_bar is not None:
        run.progress_bar.close()
        run.progress_bar = None
    if config.checkpoint is not None and run.steps_done % config.checkpoint_every != 0:
        save_run(run, config.checkpoint)
    records = {name: tensor.cpu() for name, tensor in run.records.items()}
    samples = run.layout.split_values(records.pop("values"))
    stats = records
    prior = None
    if run.prior_values is not None and run.prior_values.shape[0] > 0:
        prior = {
            name: value.unsqueeze(0)
            for name, value in run.layout.split_values(run.prior_values).items()
        }
    settings = config.settings()
    settings["epsilon_target"] = run.epsilon_target
    settings["epsilon_start"] = run.epsilon_start
    settings["layout"] = run.layout.describe()
    timings = _timings(run)
    return Posterior(
        samples,
        stats,
        dict(run.observation),
        method=config.method,
        settings=settings,
        n_simulations=run.simulator.n_simulations,
        wall_time=timings["total"],
        prior=prior,
        timings=timings,
    )


def _open_progress_bar(run: AbcRun) -> None:
    if not run.config.progress:
        return
    from tqdm.auto import tqdm

    run.progress_bar = tqdm(
        total=run.config.total_steps,
        initial=run.steps_done,
        desc=run.config.method,
        unit="step",
        mininterval=0.5,
    )
    run.progress_bar._probgraphics_opened = (time.perf_counter(), run.simulator.n_simulations)


def run_abc(
    program: Callable[[], Any],
    layout: WhiteningLayout,
    observation: Mapping[str, torch.Tensor],
    config: RunConfig,
    *,
    summary: Callable,
    distance: str | Callable | None,
    init_values: Mapping[str, torch.Tensor] | None = None,
    synchronize_timing: bool = False,
) -> Posterior:
    """``prepare``, ``warmup``, ``sample`` and ``finish`` in one call (see :func:`prepare`)."""
    run = prepare(
        program,
        layout,
        observation,
        config,
        summary=summary,
        distance=distance,
        init_values=init_values,
        synchronize_timing=synchronize_timing,
    )
    return complete(run)


def complete(run: AbcRun) -> Posterior:
    """Take whatever warm-up and sampling remain (with a progress bar when configured) and
    return :func:`finish`'s Posterior."""
    _open_progress_bar(run)
    try:
        warmup(run)
        sample(run)
    finally:
        if run.progress_bar is not None:
            run.progress_bar.close()
            run.progress_bar = None
    return finish(run)


# ---------------------------------------------------------------------------- checkpoints


def _fingerprint(config: RunConfig, layout: WhiteningLayout) -> dict[str, Any]:
    settings = {
        key: value for key, value in config.settings().items() if key not in _PRESENTATION_OPTIONS
    }
    return {"settings": settings, "layout": layout.describe()}


def save_run(run: AbcRun, path: str) -> None:
    """Write the run's complete state to ``path`` atomically."""
    state = {name: tensor.cpu() for name, tensor in run.state._asdict().items()}
    draws = run.draws_done
    partial_draw = run.sampling_steps_done % run.config.thin != 0
    kept = draws + (1 if partial_draw else 0)
    distance = run.simulator.distance
    payload = {
        "fingerprint": _fingerprint(run.config, run.layout),
        "observation": dict(run.observation),
        "state": state,
        "log_beta": None if run.log_beta is None else run.log_beta.cpu(),
        "epsilon_start": run.epsilon_start,
        "epsilon_target": run.epsilon_target,
        "epsilon_current": run.epsilon_current,
        "warmup_done": run.warmup_done,
        "sampling_steps_done": run.sampling_steps_done,
        "records": {name: tensor[:, :kept].cpu() for name, tensor in run.records.items()},
        "generator": run.generator.get_state(),
        "simulator": run.simulator.state_dict(),
        "distance_scale": distance.scale.cpu() if isinstance(distance, StandardizedL2) else None,
        "prior_values": run.prior_values,
        "seconds": dict(run.seconds),
        "simulate_seconds_in_steps": run.simulate_seconds_in_steps,
        "reference_fit_seconds": run.reference_fit_seconds,
        "reference": None
        if run.reference is None
        else {name: tensor.cpu() for name, tensor in run.reference._asdict().items()},
        "moments": None
        if run.moments is None
        else {name: tensor.cpu() for name, tensor in run.moments.items()},
        "steps_since_change": run.steps_since_change,
        "guide_proposal": None
        if run.guide_proposal is None
        else {name: tensor.cpu() for name, tensor in run.guide_proposal._asdict().items()},
        "ridge": None
        if run.ridge_focus is None
        else {
            "basis": run.ridge_directions.basis.cpu(),
            "log_step": run.ridge_log_step.cpu(),
        },
    }
    checkpoint_io.save_checkpoint(path, payload)


def checkpoint_settings(path: str) -> dict[str, Any]:
    """The run-defining settings recorded in the checkpoint at ``path``."""
    return dict(checkpoint_io.load_checkpoint(path)["fingerprint"]["settings"])


def resume_run(
    path: str,
    program: Callable[[], Any],
    layout: WhiteningLayout,
    observation: Mapping[str, torch.Tensor],
    config: RunConfig,
    *,
    summary: Callable,
    distance: str | Callable | None,
    synchronize_timing: bool = False,
) -> Posterior:
    """Continue the run saved at ``path`` to its end, exactly as if it had never stopped.

    ``config`` and ``layout`` must match the checkpoint's (presentation options such as
    ``progress`` and ``checkpoint`` may differ); the observation must be the same.
    """
    run = load_run(
        path,
        program,
        layout,
        observation,
        config,
        summary=summary,
        distance=distance,
        synchronize_timing=synchronize_timing,
    )
    return complete(run)


def load_run(
    path: str,
    program: Callable[[], Any],
    layout: WhiteningLayout,
    observation: Mapping[str, torch.Tensor],
    config: RunConfig,
    *,
    summary: Callable,
    distance: str | Callable | None,
    synchronize_timing: bool = False,
) -> AbcRun:
    """Rebuild the :class:`AbcRun` saved at ``path`` (see :func:`resume_run`)."""
    payload = checkpoint_io.load_checkpoint(path)
    saved = payload["fingerprint"]
    current = _fingerprint(config, layout)
    if saved["layout"] != current["layout"]:
        raise ValueError(
            f"checkpoint {path!r} was written for a program with sites {saved['layout']}, but this "
            f"program has {current['layout']}; resume with the program that wrote it."
        )
    differences = {
        key: (saved["settings"].get(key), value)
        for key, value in current["settings"].items()
        if saved["settings"].get(key) != value
    }
    if differences:
        listed = ", ".join(
            f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in differences.items()
        )
        raise ValueError(
            f"checkpoint {path!r} was written with other settings ({listed}); resume with the "
            "same settings (or leave those options out to take the checkpoint's)."
        )
    for name, value in observation.items():
        saved_value = payload["observation"].get(name)
        if saved_value is None or not torch.equal(saved_value, value.detach().cpu()):
            raise ValueError(
                f"checkpoint {path!r} was written for another observation at site {name!r}; "
                "resume with the same observation."
            )
    device = torch.device(config.device)
    simulator = _make_simulator(
        program, layout, observation, summary, config, 0, synchronize_timing
    )
    simulator.load_state_dict(payload["simulator"])
    if payload["distance_scale"] is not None:
        simulator.set_distance(StandardizedL2(payload["distance_scale"].to(device)))
    else:
        simulator.set_distance(resolve_distance(distance, None))
    generator = torch.Generator(device=device)
    generator.set_state(payload["generator"])
    run = AbcRun(
        config=config,
        layout=layout,
        observation={name: value.detach().cpu() for name, value in observation.items()},
        simulator=simulator,
        generator=generator,
    )
    saved_proposal = payload.get("guide_proposal")
    _set_moves(run, None if saved_proposal is None else GaussianReference(**saved_proposal))
    state = {name: tensor.to(device) for name, tensor in payload["state"].items()}
    if config.collapse is not None:
        run.linear = linear_site(program, layout, config.collapse, simulator.observed_summary)
        run.state = collapsed.CollapsedState(**state)
    else:
        run.state = run.kernel.init(state["u"], state["values"], state["distance"])
    run.log_beta = None if payload["log_beta"] is None else payload["log_beta"].to(device)
    run.epsilon_start = float(payload["epsilon_start"])
    run.epsilon_target = float(payload["epsilon_target"])
    run.epsilon_current = float(payload["epsilon_current"])
    run.warmup_done = int(payload["warmup_done"])
    run.sampling_steps_done = int(payload["sampling_steps_done"])
    run.prior_values = payload["prior_values"]
    run.seconds = dict(payload["seconds"])
    run.simulate_seconds_in_steps = float(payload["simulate_seconds_in_steps"])
    run.reference_fit_seconds = float(payload.get("reference_fit_seconds", 0.0))
    if payload["reference"] is not None:
        run.reference = GaussianReference(
            **{name: tensor.to(device) for name, tensor in payload["reference"].items()}
        )
    if payload["moments"] is not None:
        run.moments = {name: tensor.to(device) for name, tensor in payload["moments"].items()}
    run.steps_since_change = int(payload["steps_since_change"])
    if run.ridge_focus is not None:
        saved_ridge = payload["ridge"]
        run.ridge_directions = ridge.RidgeDirections(saved_ridge["basis"].to(device))
        run.ridge_log_step = saved_ridge["log_step"].to(device)
    _allocate_records(run)
    for name, saved_records in payload["records"].items():
        kept = saved_records.shape[1]
        run.records[name][:, :kept] = saved_records.to(device)
    return run
