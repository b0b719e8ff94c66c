"""Batched simulation: whitened ``u`` (C, D) -> latent values, summaries and distances, one call.

The program runs under ``pyro.plate("chains", C, dim=-1)`` and the whitening messenger; the
observed sites are sampled by the program (not conditioned), or, when their noise is whitened,
are themselves a transform of their slice of ``u``; then the summary statistic maps them to
features and the distance compares those with the observation's.

**Direct simulation.** A program that is a prior plus a batched function (such as
``programs.simulator``) may offer ``program.direct_simulation() -> DirectSimulation``: its one
latent site's prior and the function ``theta (B, D) -> x (B, K)``. The simulator then whitens and
calls the function itself, without running the program under Pyro, whose tracing costs about
0.7 ms a call: most of a step on a cheap simulator. The values, the random numbers drawn and so
the results are those of the Pyro path (tested against it).

Randomness is explicit. The program's own sampling (an observed site whose noise is not whitened,
or any randomness inside the program) uses torch's global RNG, so every call draws a seed from the
simulator's own CPU ``torch.Generator`` and runs the program inside ``torch.random.fork_rng`` with
that seed: results are reproducible, a checkpoint resumes exactly (it stores the generator's
state), and the caller's global RNG state is untouched. Drawing the seed reads a CPU tensor, which
is never a device synchronization.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import pyro
import torch

from probgraphics.inference.distances import resolve_distance
from probgraphics.inference.posterior import Posterior
from probgraphics.inference.whitening import WhiteningLayout, run_whitened, whiten

__all__ = [
    "DirectSimulation",
    "Simulation",
    "Simulator",
    "derive_seeds",
    "seeded_simulator",
    "in_batches",
    "Pilot",
    "simulate_pilot",
    "simulation_bar",
    "simulated_posterior",
]


class DirectSimulation(NamedTuple):
    """How to simulate a program without Pyro (see the module doc).

    Attributes:
        latent: the program's one latent site.
        prior: its distribution (batch shape ``()``), as the program samples it.
        observed: the program's one observed site.
        simulate: ``theta (B, *event) -> x (B, *observed event)``, exactly what the program
            records at ``observed`` for those values, drawing the same random numbers.
    """

    latent: str
    prior: Any
    observed: str
    simulate: Callable[[torch.Tensor], torch.Tensor]


class Simulation(NamedTuple):
    """One batch of simulations.

    Attributes:
        values: ``(B, latent_dim)`` constrained latent values, flattened in layout order.
        summaries: ``(B, K)`` summary features of the simulated observation.
        distance: ``(B,)`` distance to the observation's summary (NaN when it is not set yet).
    """

    values: torch.Tensor
    summaries: torch.Tensor
    distance: torch.Tensor


class Simulator:
    """Simulates a batch of chains in one program call and measures the time it takes.

    Args:
        program: the Pyro program (no required arguments).
        layout: its :class:`~probgraphics.inference.whitening.WhiteningLayout`.
        observation: observed site -> observed tensor (unbatched, the site's event shape).
        summary: summary callable (see :mod:`probgraphics.inference.summaries`).
        device: where ``u`` and the program's tensors live.
        seed: seeds the generator that seeds the program's own RNG on every call.
        synchronize_timing: on CUDA, synchronize before reading the clock so the simulate time is
            the device time (for benchmarks; it costs a host sync per call).
        observed_mean: the observed sites take their distribution's mean (the noise-free
            observation) instead of a draw: ``observation_noise="marginal"``, where the ABC kernel
            integrates the noise out (:mod:`probgraphics.inference.marginal_noise`).
        direct: use the program's :class:`DirectSimulation` when it offers one that fits the
            layout (False: always run the program under Pyro, the reference path).

    Attributes:
        n_simulations: simulations run so far (a Python int; counted from tensor shapes).
        seconds: wall time spent inside program + summary + distance so far.
        generator: the CPU ``torch.Generator`` that seeds the program's RNG.
    """

    def __init__(
        self,
        program: Callable[[], Any],
        layout: WhiteningLayout,
        observation: Mapping[str, torch.Tensor],
        summary: Callable,
        *,
        device: torch.device,
        seed: int,
        synchronize_timing: bool = False,
        observed_mean: bool = False,
        direct: bool = True,
    ) -> None:
        self.program = program
        self.layout = layout
        self.device = torch.device(device)
        self.observed_sites = list(observation)
        self.mean_sites = tuple(self.observed_sites) if observed_mean else ()
        self.direct = self._direct_simulation() if direct else None
        self.observation = {
            name: value.to(device=self.device) for name, value in observation.items()
        }
        self.summary = summary
        self.distance: Callable | None = None
        self.generator = torch.Generator().manual_seed(seed)
        self.n_simulations = 0
        self.seconds = 0.0
        self.synchronize_timing = synchronize_timing and self.device.type == "cuda"
        # Inside engine_threads: torch's CPU thread count to simulate with (None: leave it).
        self._simulation_threads: int | None = None
        self._features: int | None = None
        self.observed_summary = self._summarize(
            {name: value.unsqueeze(0) for name, value in self.observation.items()}, batch=1
        )
        if not bool(torch.isfinite(self.observed_summary).all()):
            raise ValueError(
                "the summary of the observation has non-finite features; check the observation "
                "(NaN/inf values) and the summary callable."
            )

    def _summarize(self, outputs: Mapping[str, torch.Tensor], batch: int) -> torch.Tensor:
        argument = outputs[self.observed_sites[0]] if len(outputs) == 1 else dict(outputs)
        with torch.no_grad():
            features = self.summary(argument)
        if not isinstance(features, torch.Tensor) or features.dim() != 2:
            got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features)
            raise ValueError(
                f"the summary must return features shaped (B, K) = ({batch}, K), got {got}; wrap "
                "the callable so it flattens its output per item."
            )
        if features.shape[0] != batch or (
            self._features is not None and features.shape[1] != self._features
        ):
            raise ValueError(
                f"the summary returned shape {tuple(features.shape)} for a batch of {batch}; "
                f"expected ({batch}, {self._features or 'K'})."
            )
        self._features = features.shape[1]
        return features

    def _direct_simulation(self) -> DirectSimulation | None:
        """The program's direct simulation if it offers one that fits: one latent site, one
        observed site drawn by the program (not whitened, not replaced by its mean)."""
        offer = getattr(self.program, "direct_simulation", None)
        direct = offer() if callable(offer) else None
        if not isinstance(direct, DirectSimulation) or self.mean_sites:
            return None
        sites = self.layout.sites
        if len(sites) != 1 or not sites[0].latent or sites[0].name != direct.latent:
            return None
        if self.observed_sites != [direct.observed]:
            return None
        return direct

    def _simulate_direct(self, u: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The direct path of :meth:`_run`: ``(values (B, V), {observed: x})``, as the program
        under the whitening messenger would give them."""
        (site,) = self.layout.sites
        batch = u.shape[0]
        u_site = u[..., site.offset : site.offset + site.size].reshape((batch,) + site.event_shape)
        theta = whiten(self.direct.prior, u_site.to(site.dtype))
        observed = self.direct.simulate(theta)
        return theta.reshape(batch, site.size).to(self.layout.dtype), {
            self.direct.observed: observed
        }

    def set_distance(self, distance: Callable) -> None:
        """Set the distance callable ``(summaries (B, K), observed (1, K)) -> (B,)``."""
        self.distance = distance

    @contextlib.contextmanager
    def engine_threads(self, threads: int = 1) -> Iterator[None]:
        """Run the caller's torch CPU ops on ``threads`` threads inside the block, while every
        simulation (program, summary, distance) runs on the count set when the block is entered.

        Why: the run loop's per-step arithmetic is a few dozen ops on ``(chains, D)`` tensors of
        tens of microseconds each. With several threads each op wakes the sleeping OpenMP
        workers (``OMP_WAIT_POLICY=PASSIVE``), which costs about as much as the op itself, more
        on an idle virtual machine; the rendering inside simulate is long enough to use them
        well. A no-op off the CPU, when the count is already at most ``threads``, or inside
        another ``engine_threads`` block. Not thread-safe: torch's thread count is global.
        """
        current = torch.get_num_threads()
        if self.device.type != "cpu" or current <= threads or self._simulation_threads is not None:
            yield
            return
        self._simulation_threads = current
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(current)
            self._simulation_threads = None

    @contextlib.contextmanager
    def _simulating(self) -> Iterator[None]:
        """Simulate on the thread count set when :meth:`engine_threads` was entered."""
        threads = self._simulation_threads
        engine = torch.get_num_threads()
        if threads is None or threads == engine:
            yield
            return
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(engine)

    def _cuda_index(self) -> int:
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    def _fork(self) -> contextlib.AbstractContextManager:
        devices = [self._cuda_index()] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)

    def _seed_program_rng(self, seed: int) -> None:
        torch.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.default_generators[self._cuda_index()].manual_seed(seed)

    def _clock(self) -> float:
        if self.synchronize_timing:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def run(
        self, u: torch.Tensor, given: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the program and the summary for a batch.

        Args:
            u: ``(B, D)`` whitened values on :attr:`device`.
            given: optional latent site -> constrained values ``(B, *event)``; those sites take
                the given values (see ``WhiteningMessenger``).

        Returns:
            ``(u_out, values, summaries)``: ``u`` with the given sites replaced by their inverse
            transforms ``(B, D)``, the latent values ``(B, latent_dim)``, summaries ``(B, K)``.
        """
        with self._simulating():
            return self._run(u, given)

    def _run(
        self, u: torch.Tensor, given: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`run` on the thread count already set."""
        start = self._clock()
        batch = u.shape[0]
        # A CPU generator: reading its draw is not a device synchronization.
        seed = int(torch.randint(0, 2**62, (), generator=self.generator))
        device_default = (
            torch.device(self.device) if self.device.type != "cpu" else contextlib.nullcontext()
        )
        # Validation checks every distribution's arguments on every call (a third of a small
        # program's time); the program was already run once with validation when it was traced.
        with self._fork(), torch.no_grad(), device_default, pyro.validation_enabled(False):
            self._seed_program_rng(seed)
            if self.direct is not None and not given:
                values, outputs = self._simulate_direct(u)
                summaries = self._summarize(outputs, batch)
                self.n_simulations += batch
                self.seconds += self._clock() - start
                return u, values, summaries
            whitening = run_whitened(
                self.program,
                self.layout,
                u,
                given=given,
                record=self.observed_sites,
                mean_sites=self.mean_sites,
            )
            missing = [name for name in self.observed_sites if name not in whitening.values]
            if missing:
                raise ValueError(
                    f"the program did not sample the observed site(s) {missing} in this run; "
                    "every run must sample each observed site."
                )
            parts = [
                whitening.values[site.name].reshape(batch, site.size).to(self.layout.dtype)
                for site in self.layout.latent_sites
            ]
            values = torch.cat(parts, dim=-1) if parts else u.new_zeros(batch, 0)
            outputs = {name: whitening.values[name] for name in self.observed_sites}
            summaries = self._summarize(outputs, batch)
        self.n_simulations += batch
        self.seconds += self._clock() - start
        return whitening.u_out, values, summaries

    def __call__(self, u: torch.Tensor) -> Simulation:
        """Simulate ``u`` ``(B, D)`` and measure the distance to the observation: a Simulation."""
        if self.distance is None:
            raise RuntimeError("set the distance (set_distance) before simulating distances")
        with self._simulating():
            _, values, summaries = self._run(u)
            start = self._clock()
            with torch.no_grad():
                distance = self.distance(summaries, self.observed_summary)
            self.seconds += self._clock() - start
        if distance.shape != (u.shape[0],):
            raise ValueError(
                f"the distance must return shape (B,) = ({u.shape[0]},), got "
                f"{tuple(distance.shape)}"
            )
        return Simulation(values, summaries, distance)

    def simulate_given(
        self, u: torch.Tensor, given: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, Simulation]:
        """Like ``__call__`` with some latents fixed to given constrained values.

        Returns ``(u_out, simulation)`` where ``u_out`` maps the given values back to ``u``.
        """
        with self._simulating():
            u_out, values, summaries = self._run(u, given=given)
            with torch.no_grad():
                distance = self.distance(summaries, self.observed_summary)
        return u_out, Simulation(values, summaries, distance)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue exactly: the seed generator's state and counters."""
        return {
            "generator": self.generator.get_state(),
            "n_simulations": self.n_simulations,
            "seconds": self.seconds,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.n_simulations = int(state["n_simulations"])
        self.seconds = float(state["seconds"])


def derive_seeds(seed: int) -> tuple[int, int]:
    """Two independent 62-bit seeds (kernel generator, simulator generator) from one."""
    master = torch.Generator().manual_seed(seed)
    kernel_seed, simulator_seed = torch.randint(0, 2**62, (2,), generator=master).tolist()
    return kernel_seed, simulator_seed


def seeded_simulator(
    program: Callable[[], Any],
    layout: WhiteningLayout,
    observation: Mapping[str, torch.Tensor],
    summary: Callable,
    *,
    device: torch.device,
    seed: int,
) -> tuple[torch.Generator, Simulator]:
    """A population method's two random streams from one ``seed``: the kernel's generator on
    ``device`` and a :class:`Simulator` seeded apart from it (:func:`derive_seeds`)."""
    kernel_seed, simulator_seed = derive_seeds(seed)
    generator = torch.Generator(device=device).manual_seed(kernel_seed)
    simulator = Simulator(program, layout, observation, summary, device=device, seed=simulator_seed)
    return generator, simulator


def in_batches(simulator: Simulator, batch_size: int) -> Callable[[torch.Tensor], Simulation]:
    """``simulator`` called on chunks of at most ``batch_size`` rows, results concatenated."""

    def simulate(u: torch.Tensor) -> Simulation:
        if u.shape[0] <= batch_size:
            return simulator(u)
        parts = [simulator(chunk) for chunk in torch.split(u, batch_size)]
        return Simulation(*(torch.cat(field) for field in zip(*parts, strict=True)))

    return simulate


class Pilot(NamedTuple):
    """A population method's pilot: prior draws ``u`` ``(M, D)``, their constrained latent values
    ``(M, latent_dim)`` and summaries ``(M, K)``."""

    u: torch.Tensor
    values: torch.Tensor
    summaries: torch.Tensor


def simulate_pilot(
    simulator: Simulator,
    generator: torch.Generator,
    size: int,
    batch_size: int,
    distance: str | Callable | None,
) -> Pilot | None:
    """Simulate ``size`` prior draws ``u ~ N(0, I)`` (from ``generator``, in batches of at most
    ``batch_size``) and set ``simulator``'s distance from their summaries
    (:func:`~probgraphics.inference.distances.resolve_distance`). Returns the :class:`Pilot`,
    or None for ``size == 0`` (the distance then resolved without summaries)."""
    layout = simulator.layout
    draws, values, summaries = [], [], []
    for begin in range(0, size, batch_size):
        count = min(batch_size, size - begin)
        u = torch.randn(
            count, layout.dim, generator=generator, device=simulator.device, dtype=layout.dtype
        )
        _, batch_values, batch_summaries = simulator.run(u)
        draws.append(u)
        values.append(batch_values)
        summaries.append(batch_summaries)
    pilot = None
    if draws:
        pilot = Pilot(torch.cat(draws), torch.cat(values), torch.cat(summaries))
    simulator.set_distance(resolve_distance(distance, None if pilot is None else pilot.summaries))
    return pilot


def simulation_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar over ``total`` simulations (None when not ``enabled``)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sim", mininterval=0.5)


def simulated_posterior(
    simulator: Simulator,
    wall_time: float,
    method: str,
    samples: dict[str, torch.Tensor],
    stats: dict[str, torch.Tensor],
    observation: Mapping[str, torch.Tensor],
    settings: dict[str, Any],
    *,
    prior: dict[str, torch.Tensor] | None = None,
    pilot_seconds: float | None = None,
) -> Posterior:
    """The :class:`~probgraphics.inference.posterior.Posterior` of a population method's run
    that took ``wall_time`` seconds and simulated through ``simulator``: its simulation count,
    and timings ``pilot`` (when given), ``simulate``, ``total`` and ``overhead_fraction``."""
    timings = {} if pilot_seconds is None else {"pilot": pilot_seconds}
    timings.update(
        simulate=simulator.seconds,
        total=wall_time,
        overhead_fraction=max(0.0, 1.0 - simulator.seconds / max(wall_time, 1e-12)),
    )
    return Posterior(
        samples,
        stats,
        {name: value.detach().cpu() for name, value in observation.items()},
        method=method,
        settings=settings,
        n_simulations=simulator.n_simulations,
        wall_time=wall_time,
        prior=prior,
        timings=timings,
    )
