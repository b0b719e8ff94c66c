"""Learned summary statistics for any program: semi-automatic ABC (Fearnhead & Prangle 2012).

The best summary of an observation for ABC's posterior mean is the posterior mean itself,
``E[theta | x]``. Semi-automatic ABC estimates it by regression on pilot simulations: draw
``(theta_i, x_i)`` from the prior predictive, fit ``f(x) ~ theta``, and use ``f(x)`` as the summary.
This is the DC-IGN's encoder-as-summary idea for arbitrary simulators: a small MLP regresses the
program's latents on its simulated observations, and its output (one feature per latent
coordinate) is the summary ``pg.infer`` compares.

    summary = semi_automatic_summary(program, simulations=5_000, seed=0)
    posterior = pg.infer(program, {"x": x_obs}, method="abc_smc", summary=summary,
                         simulations=45_000)     # 50,000 simulations in all

Training uses the project's own SVI code: :func:`~probgraphics.inference.svi.train_guide` with the
sleep loss on the fixed pilot set, the guide being ``q(theta | x) = N(f(x), diag(sigma^2))`` with a
learned ``sigma`` per coordinate. For a fixed ``sigma`` that loss is a weighted squared error, so
``f`` converges to the least-squares regression ``E[theta | x]``: Fearnhead & Prangle's estimator,
with an MLP in place of their linear regression on transformed features. Inputs and targets are
standardized with the pilot's means and spreads; a tenth of the pilot is held out, the weights
with the lowest held-out squared error are kept, and training stops once it has not improved for
``patience`` evaluations.

``targets="moments"`` regresses the squared latents too, ``E[theta^2 | x]`` beside
``E[theta | x]`` (Fearnhead & Prangle's suggestion of summaries for functions of ``theta``): a
parameter whose sign the data cannot tell (a scale entering as ``theta^2``) has ``E[theta | x] =
0`` for every ``x``, a useless summary, while ``E[theta^2 | x]`` still measures it.

The pilot is ``simulations`` prior simulations, drawn in batches under a plate: they count
towards a simulation budget (spend the rest on ``infer``). Failed simulations (NaN/inf
observations) are left out of the fit; the summary maps a NaN observation to NaN features, so a
failed simulation is never accepted. Everything is deterministic given ``seed``; the caller's
random state is left alone.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from torch import nn

from probgraphics.inference.svi import train_guide

__all__ = [
    "SemiAutomaticSummary",
    "TrainingReport",
    "pilot_simulations",
    "semi_automatic_summary",
]

#: Fraction of the pilot held out to choose the weights (early stopping).
VALIDATION_FRACTION = 0.1
#: What a learned summary regresses: the latents, or the latents and their squares.
SUMMARY_TARGETS = ("mean", "moments")
#: Simulations per program call while drawing the pilot.
PILOT_BATCH = 10_000


def _flatten(observed: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
    """``(B, *event)`` (or a dict of them, sorted by name) -> ``(B, K)``."""
    if isinstance(observed, Mapping):
        return torch.cat([_flatten(observed[name]) for name in sorted(observed)], dim=-1)
    if not isinstance(observed, torch.Tensor) or observed.dim() < 1:
        raise TypeError(
            "a learned summary takes the simulated observations as a tensor (B, *event) or a "
            f"dict of them, got {type(observed).__name__}"
        )
    return observed.reshape(observed.shape[0], -1)


def _latent_sites(trace: poutine.Trace, observed: str) -> dict[str, dict[str, Any]]:
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and name != observed
        and not site["is_observed"]
        and not site["infer"].get("_deterministic", False)
        and type(site["fn"]).__name__ != "_Subsample"
    }


def pilot_simulations(
    program: Callable[[], Any], observed: str, simulations: int, *, seed: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``simulations`` prior-predictive draws of ``program``, batched under a plate.

    Returns:
        ``(latents, observations)``: latent site -> ``(N, *event)`` and the observed site's
        values ``(N, *event)``, on the program's device. The caller's random state is untouched.
    """
    latents: dict[str, list[torch.Tensor]] = {}
    observations: list[torch.Tensor] = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for begin in range(0, simulations, PILOT_BATCH):
            size = min(PILOT_BATCH, simulations - begin)
            with pyro.plate("pilot", size, dim=-1):
                trace = poutine.trace(program).get_trace()
            if observed not in trace.nodes:
                names = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
                raise ValueError(
                    f"the program has no site {observed!r} to learn a summary of; its sample "
                    f"sites are {names}. Pass observed=<the observed site's name>."
                )
            sites = _latent_sites(trace, observed)
            if not sites:
                raise ValueError("the program has no latent sites to regress on.")
            for name, site in sites.items():
                value = site["value"]
                if value.shape[:1] != (size,):
                    raise ValueError(
                        f"latent site {name!r} has shape {tuple(value.shape)} under a plate of "
                        f"{size}; declare its event shape with .to_event so the program is "
                        "batch-polymorphic."
                    )
                latents.setdefault(name, []).append(value.detach())
            observations.append(trace.nodes[observed]["value"].detach())
    return {name: torch.cat(parts) for name, parts in latents.items()}, torch.cat(observations)


def _mlp(inputs: int, hidden: Sequence[int], outputs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = inputs
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        width = size
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers)


class _RegressionGuide(nn.Module):
    """``q(theta | x) = N(f(x), diag(sigma^2))`` over the program's latent sites, for the sleep
    loss; ``f`` works on standardized inputs and targets."""

    def __init__(
        self,
        net: nn.Module,
        sites: Sequence[tuple[str, torch.Size, int]],
        input_scale: tuple[torch.Tensor, torch.Tensor],
        observed: str,
    ) -> None:
        super().__init__()
        self.net = net
        self.sites = [name for name, _, _ in sites]
        self._layout = list(sites)
        self.register_buffer("input_mean", input_scale[0])
        self.register_buffer("input_std", input_scale[1])
        size = sum(count for _, _, count in sites)
        self.log_scale = nn.Parameter(torch.zeros(size))
        self.observed = observed
        self.plate_name = "batch"

    def standardized_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((_flatten(x) - self.input_mean) / self.input_std)

    def forward(self, observation: torch.Tensor) -> None:
        pyro.module("semi_automatic_summary", self)
        mean = self.standardized_mean(observation)
        scale = self.log_scale.exp()
        offset = 0
        with pyro.plate(self.plate_name, observation.shape[0], dim=-1):
            for name, event_shape, count in self._layout:
                part = slice(offset, offset + count)
                pyro.sample(
                    name,
                    dist.Normal(
                        mean[:, part].reshape((-1, *event_shape)),
                        scale[part].reshape(event_shape),
                    ).to_event(len(event_shape)),
                )
                offset += count


@dataclass(frozen=True)
class TrainingReport:
    """How a learned summary was fitted.

    Attributes:
        simulations: pilot simulations drawn (all count towards a budget).
        failed: of those, how many had NaN/inf observations (left out of the fit).
        train_size, validation_size: pilot draws used to fit and to choose the weights.
        steps: optimizer steps run; best_step: the step whose weights were kept.
        validation_mse: held-out mean squared error at the kept weights, in units of the
            prior's variance per coordinate (1.0: no better than the prior mean).
        losses: the sleep loss per step.
        seed: the seed that made it.
    """

    simulations: int
    failed: int
    train_size: int
    validation_size: int
    steps: int
    best_step: int
    validation_mse: float
    losses: tuple[float, ...]
    seed: int


class SemiAutomaticSummary:
    """The fitted ``E[theta | x]`` as a summary: observations ``(B, *event)`` (or a dict of
    them) -> features ``(B, P)`` in the latents' units, ``P`` the number of latent coordinates
    (sites in :attr:`sites` order, each flattened). NaN in an observation gives NaN features.

    Attributes:
        sites: the latent site names the features estimate, with their event shapes.
        report: a :class:`TrainingReport`.
    """

    def __init__(
        self,
        guide: _RegressionGuide,
        target_scale: tuple[torch.Tensor, torch.Tensor],
        report: TrainingReport,
    ) -> None:
        self._guide = guide.eval()
        self._target_mean, self._target_std = target_scale
        self.sites = {name: tuple(shape) for name, shape, _ in guide._layout}
        self.report = report

    @property
    def features(self) -> int:
        return int(self._target_mean.shape[0])

    def __call__(self, observed: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        x = _flatten(observed)
        inputs = self._guide.input_mean.shape[0]
        if x.shape[1] != inputs:
            raise ValueError(
                f"this summary was fitted to observations of {inputs} values, got "
                f"{tuple(x.shape[1:])} ({x.shape[1]} values) per item; fit one for this program."
            )
        guide = self._guide
        device, dtype = x.device, x.dtype
        if guide.input_mean.device != device:
            guide = self._guide = guide.to(device)
            self._target_mean = self._target_mean.to(device)
            self._target_std = self._target_std.to(device)
        with torch.no_grad():
            standardized = guide.standardized_mean(x.to(guide.input_mean.dtype))
            features = standardized * self._target_std + self._target_mean
        return features.to(dtype)

    def __repr__(self) -> str:
        r = self.report
        return (
            f"SemiAutomaticSummary(sites={list(self.sites)}, features={self.features}, "
            f"simulations={r.simulations}, validation_mse={r.validation_mse:.3g}, seed={r.seed})"
        )


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return value


def _standardize(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and spread ``(K,)``; a column that does not vary gets spread 1."""
    mean = values.mean(0)
    std = values.std(0)
    std = torch.where(
        torch.isfinite(std) & (std > 1e-12 * std.abs().max().clamp_min(1e-30)),
        std,
        torch.ones_like(std),
    )
    return mean, std


def semi_automatic_summary(
    program: Callable[[], Any],
    *,
    simulations: int = 5_000,
    seed: int = 0,
    observed: str | None = None,
    hidden: Sequence[int] = (64, 64),
    steps: int = 3_000,
    batch_size: int = 256,
    lr: float = 1e-3,
    patience: int = 10,
    evaluate_every: int = 50,
    progress: bool = False,
    targets: str = "mean",
) -> SemiAutomaticSummary:
    """Fit a semi-automatic ABC summary (Fearnhead & Prangle 2012) for ``program``.

    Args:
        program: a batch-polymorphic Pyro program (its latents declare ``.to_event``).
        simulations: pilot simulations to fit on (>= 20); they count towards a budget.
        seed: makes the pilot, the initial weights, the minibatches and so the summary.
        observed: the observed site; default ``program.observed`` when the program has it
            (``pg.programs.simulator`` programs do), else ``"image"``.
        hidden: widths of the MLP's hidden layers (ReLU).
        steps: the most optimizer steps (Adam, ``lr``) of ``batch_size`` pilot draws.
        patience: stop after this many held-out evaluations without improvement.
        evaluate_every: steps between held-out evaluations.
        progress: show the training progress bar.
        targets: ``"mean"`` (features ``E[theta | x]``, one per latent coordinate) or
            ``"moments"`` (also ``E[theta^2 | x]``: twice the features; see the module doc).

    Returns:
        A :class:`SemiAutomaticSummary`: pass it as ``summary=`` to ``pg.infer``.

    Raises:
        ValueError: bad arguments, no observed site of that name, fewer than 20 successful pilot
            simulations.
    """
    simulations = _check_int("simulations", simulations, 20)
    _check_int("steps", steps, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("patience", patience, 1)
    _check_int("evaluate_every", evaluate_every, 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}.")
    hidden = tuple(hidden)
    if not all(
        isinstance(width, int) and not isinstance(width, bool) and width >= 1 for width in hidden
    ):
        raise ValueError(f"hidden must be a sequence of ints >= 1, got {hidden!r}.")
    if targets not in SUMMARY_TARGETS:
        raise ValueError(
            f"targets must be one of {SUMMARY_TARGETS} (what the summary regresses: the "
            f"latents, or the latents and their squares), got {targets!r}."
        )
    if observed is None:
        observed = getattr(program, "observed", None) or "image"
    if not isinstance(observed, str):
        raise TypeError(f"observed must be a site name, got {observed!r}.")

    latents, observations = pilot_simulations(program, observed, simulations, seed=seed)
    layout = [
        (name, torch.Size(value.shape[1:]), math.prod(value.shape[1:]))
        for name, value in latents.items()
    ]
    if targets == "moments":
        # The squares as extra "sites" of the regression guide, named after their latents.
        layout += [(f"{name}_squared", shape, size) for name, shape, size in layout]
        latents = {**latents, **{f"{n}_squared": v.square() for n, v in latents.items()}}
    dtype = torch.float32
    target_values = torch.cat([value.reshape(simulations, -1) for value in latents.values()], -1)
    target_values = target_values.to(dtype)
    x = _flatten(observations).to(dtype)
    finite = torch.isfinite(x).all(-1) & torch.isfinite(target_values).all(-1)
    failed = int((~finite).sum())
    x, target_values = x[finite], target_values[finite]
    count = x.shape[0]
    if count < 20:
        raise ValueError(
            f"only {count} of {simulations} pilot simulations gave finite observations; a "
            "learned summary needs at least 20. Raise simulations or fix the simulator."
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(count, generator=generator)
    validation_size = max(1, round(VALIDATION_FRACTION * count))
    valid, train = order[:validation_size], order[validation_size:]
    input_scale = _standardize(x[train])
    target_mean, target_std = _standardize(target_values[train])
    standardized_targets = (target_values - target_mean) / target_std

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _mlp(x.shape[1], hidden, target_values.shape[1])
    guide = _RegressionGuide(net, layout, input_scale, observed).to(x.device)

    def unflatten(rows: torch.Tensor) -> dict[str, torch.Tensor]:
        values, offset = {}, 0
        for name, shape, size in layout:
            values[name] = rows[:, offset : offset + size].reshape((-1, *shape))
            offset += size
        return values

    # The guide's Normal is on the standardized targets: the latents it sees are standardized.
    batch = min(batch_size, train.shape[0])
    batch_generator = torch.Generator().manual_seed(seed + 1)
    per_epoch = max(1, train.shape[0] // batch)
    permutation: list[torch.Tensor] = []

    def batches(step: int) -> dict[str, Any]:
        epoch, position = divmod(step, per_epoch)
        while len(permutation) <= epoch:
            permutation.append(train[torch.randperm(train.shape[0], generator=batch_generator)])
        rows = permutation[epoch][position * batch : (position + 1) * batch]
        return {
            observed: x[rows].reshape((-1, *observations.shape[1:])),
            "latents": unflatten(standardized_targets[rows]),
        }

    best = {"mse": math.inf, "step": 0, "state": copy.deepcopy(guide.state_dict()), "stale": 0}
    x_valid, y_valid = x[valid], standardized_targets[valid]

    def evaluate(step: int, loss: float) -> bool:
        if step % evaluate_every and step != steps:
            return False
        with torch.no_grad():
            mse = float((guide.standardized_mean(x_valid) - y_valid).square().mean())
        if mse < best["mse"]:
            best.update(mse=mse, step=step, state=copy.deepcopy(guide.state_dict()), stale=0)
        else:
            best["stale"] += 1
        return best["stale"] >= patience

    # The standardized observations are what the guide regresses on; the program is traced once
    # by train_guide for the observed site's shape.
    result = train_guide(
        program,
        guide,
        batches,
        steps=steps,
        loss="sleep",
        optimizer="adam",
        lr=lr,
        observed=observed,
        plate_name="batch",
        progress=progress,
        seed=seed,
        callback=evaluate,
    )
    guide.load_state_dict(best["state"])
    report = TrainingReport(
        simulations=simulations,
        failed=failed,
        train_size=int(train.shape[0]),
        validation_size=validation_size,
        steps=result.steps,
        best_step=int(best["step"]),
        validation_mse=float(best["mse"]),
        losses=result.losses,
        seed=seed,
    )
    return SemiAutomaticSummary(guide, (target_mean, target_std), report)
