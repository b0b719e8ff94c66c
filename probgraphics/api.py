"""``infer()``: validate the inputs, pick the inference method, return a Posterior.

Methods are looked up in a registry, so other parts of probgraphics (e.g. amortized inference
with a trained guide) add theirs with :func:`register_method` without touching ``infer``:

>>> import probgraphics as pg  # doctest: +SKIP
>>> program = pg.programs.linear_gaussian(dim=3)  # doctest: +SKIP
>>> x = pg.programs.simulate(program, seed=0)["x"]  # doctest: +SKIP
>>> posterior = pg.infer(program, {"x": x}, chains=8, draws=100, progress=False)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import numbers
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from probgraphics.inference import marginal_noise
from probgraphics.inference.adjustment import support_bounds
from probgraphics.inference.collapse import check_collapsible
from probgraphics.inference.distances import (
    DISTANCES,
    check_distance_spec,
    distance_name,
    resolve_distance,
)
from probgraphics.inference.kernels.elliptical import ABC_KERNELS
from probgraphics.inference.kernels.elliptical_slice import DEFAULT_MAX_SHRINKS
from probgraphics.inference.pmc import KERNELS as PMC_KERNELS
from probgraphics.inference.pmc import run_pmc
from probgraphics.inference.posterior import Posterior
from probgraphics.inference.rejection import kept_count, run_rejection
from probgraphics.inference.runner import (
    KERNEL_METHODS,
    AbcRun,
    RunConfig,
    block_masks,
    checkpoint_settings,
    complete,
    fit_gaussian_proposal,
    load_run,
    prepare,
    ridge_fits,
)
from probgraphics.inference.simulator import Simulator
from probgraphics.inference.smc import run_smc
from probgraphics.inference.summaries import SUMMARIES, resolve_summary, summary_name
from probgraphics.inference.tempering import RESAMPLING_SCHEMES
from probgraphics.inference.whitening import (
    WhiteningError,
    WhiteningLayout,
    build_layout,
    describe_distribution,
    sample_sites,
    trace_program,
    whiten_values,
)

__all__ = [
    "infer",
    "prepare_abc",
    "register_method",
    "available_methods",
    "method_options",
    "MethodSpec",
    "ProgramInfo",
    "inspect_program",
    "normalize_observation",
    "resolve_device",
    "AUTO_WHITEN_MAX_SIZE",
]

#: Simulated observations carry pixel noise, so an image may stray this far outside [0, 1];
#: anything beyond is the wrong scale (e.g. 0-255).
IMAGE_RANGE_MARGIN = 0.25

#: ``observation_noise="auto"`` whitens the observed sites' noise when it can and their total
#: size per chain is at most this (toy observations: yes; images: their noise is drawn fresh, as
#: a proposal over thousands of pixel-noise values costs more than it helps).
AUTO_WHITEN_MAX_SIZE = 256


@dataclass(frozen=True)
class MethodSpec:
    """An inference method ``infer`` can dispatch to.

    Attributes:
        name: the method's name (``infer(..., method=name)``).
        run: ``run(program, observation, options, explicit) -> Posterior``, where ``observation``
            is validated (site -> tensor), ``options`` are the defaults updated with the user's
            keyword options, and ``explicit`` is the set of option names the user passed.
        options: option name -> default value; any other keyword is rejected up front.
        description: one line for error messages and docs.
    """

    name: str
    run: Callable[..., Posterior]
    options: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


_METHODS: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    run: Callable[..., Posterior],
    *,
    options: Mapping[str, Any],
    description: str = "",
    replace: bool = False,
) -> None:
    """Register an inference method under ``name`` (see :class:`MethodSpec` for ``run``)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"method name must be a non-empty string, got {name!r}")
    if not callable(run):
        raise TypeError(f"run must be callable, got {type(run).__name__}")
    if name in _METHODS and not replace:
        raise ValueError(f"a method named {name!r} is already registered; pass replace=True")
    _METHODS[name] = MethodSpec(name, run, dict(options), description)


def available_methods() -> list[str]:
    """Names of the registered inference methods, sorted."""
    return sorted(_METHODS)


def _check_method(method: Any) -> None:
    if not isinstance(method, str) or method not in _METHODS:
        raise ValueError(
            f"unknown method {method!r}; the methods are {available_methods()}. Pass one of them "
            "as method=..., or register your own with probgraphics.api.register_method."
        )


def method_options(method: str) -> dict[str, Any]:
    """The keyword options ``infer(..., method=method)`` takes, with their defaults.

    >>> method_options("abc_rejection")["keep_fraction"]
    0.01
    """
    _check_method(method)
    return dict(_METHODS[method].options)


def infer(program: Callable[[], Any], observation: Any, method: str = "abc_mcmc", **options: Any):
    """Sample the posterior of ``program``'s latents given ``observation``.

    Args:
        program: a Pyro program (a callable with no required arguments) whose latent sites
            declare their shapes with ``.to_event`` (see DESIGN section 3).
        observation: a tensor for the site ``"image"`` (``(C, H, W)``, float in [0, 1]), or a
            dict site name -> tensor (the site's shape, unbatched).
        method: ``"abc_mcmc"`` (elliptical proposals, default), ``"abc_slice"`` (elliptical
            slice sampling), ``"abc_rejection"``, ``"guide"`` (a trained guide's amortized
            posterior), or any method registered with :func:`register_method`.
        **options: keyword-only method options. ABC-MCMC methods: ``chains`` (64), ``draws``
            (500), ``warmup`` (500), ``thin`` (1), ``epsilon`` (None: annealed adaptively
            during warm-up while the chains still move; a number: that tolerance),
            ``quantile`` (instead of epsilon: that quantile of the pilot's distances),
            ``summary`` (None: pixels for images, identity otherwise;
            or a callable ``(B, ...) -> (B, K)``), ``distance`` (``"standardized_l2"``, ``"l2"``,
            ``"l1"`` or a callable), ``abc_kernel`` (``"gaussian"`` or ``"indicator"``),
            ``init`` (``"pilot"``, ``"prior"``, ``"guide"`` with ``guide=``, or a dict site ->
            ``(chains, *event)`` values),
            ``seed`` (None: random, recorded in the settings), ``device`` (``"cpu"``,
            ``"cuda"``, ...), ``progress``, ``checkpoint`` (a path), ``checkpoint_every``,
            ``resume`` (a checkpoint path), ``pilot_size``, ``batch_size``,
            ``observation_noise`` (``"auto"``, ``"whitened"``, ``"fresh"``, or ``"marginal"``:
            Gaussian noise with one sigma integrated out of the Gaussian kernel, exactly, with
            the observation as summary and the L2 distance; ``epsilon=0`` is then the exact
            posterior),
            ``anneal_fraction``, ``precondition`` (True: centre the moves on a Gaussian fitted
            to the chains during warm-up; False: the paper's plain moves), ``simulations``
            (a hard budget, pilot included: chains, warm-up and draws not given are derived
            from it, with many chains a step for observations of at most 256 elements, whose
            simulators are cheap; abc_slice plans on about 3 simulations a chain a step and
            stops its shrinking rounds where the budget ends); ``abc_mcmc`` adds
            ``target_acceptance`` and ``collapse`` (None, or the name of one latent site with a
            standard-normal prior that the observation is affine in given the others, offered by
            the program's ``affine_observation(site, latents)``, e.g. the face's
            ``"texture"``: every move then draws it from its Gaussian conditional, with the
            exact joint acceptance ratio, and costs two simulations; it needs the noise
            integrated out, which ``observation_noise="auto"`` then picks; see
            :mod:`probgraphics.inference.collapse`) and ``ridge`` (None, or focus latent sites,
            e.g. ``["azimuth", "elevation", "light"]``: the cycle adds a random walk of those
            sites in which every other latent follows by its fitted conditional-mean shift, so
            chains move along the ridge that compensating latents make; its directions are
            fitted from a central-difference Jacobian of the summaries, ``2 x latent_dim``
            simulations at the start and at warm-up's refits, counted in the budget; see
            :mod:`probgraphics.inference.kernels.ridge`), ``abc_slice`` adds ``max_shrinks``.
            ``init="guide"`` with ``guide=`` a trained guide (an ``EncoderGuide``) starts the chains
            from independent draws of the guide's q(z | observation) (seed 000's coarse-to-fine;
            latents the guide leaves out start from the prior; the pilot still runs, for the
            standardized distance's scale). ``abc_rejection``: ``simulations``, ``keep_fraction``,
            ``adjust`` (None, or ``"linear"``: Beaumont's regression adjustment of the kept
            draws on their summaries, which lets a larger ``keep_fraction`` stay accurate where
            the parameters depend on the summary about linearly; ``"linear_modes"``: one such
            regression per posterior mode, for posteriors a fold of the parameters makes
            multimodal), ``rounds`` (1; more: each round after the first simulates from the
            prior truncated to a region around the draws kept so far, all rounds pooled),
            ``summary``, ``distance``,
            ``seed``, ``device``, ``progress``, ``batch_size``, ``pilot_size``. ``abc_pmc``
            (population Monte Carlo ABC, :mod:`probgraphics.inference.pmc`): ``simulations``,
            ``particles`` (1000), ``draws`` (None: ``particles`` equal-weight draws resampled
            from the final weighted population), ``resample`` (False: that population itself,
            its weights in ``sample_stats["log_weight"]``), ``quantile`` (0.5: each tolerance
            the weighted median of the last generation's distances), ``kernel`` (``"knn"``,
            ``"olcm"``, ``"beaumont"``, ``"silverman"``), ``epsilon`` (a final tolerance),
            ``summary``, ``distance``, ``seed``, ``device``, ``progress``, ``batch_size``,
            ``pilot_size`` (None: ``2 * particles``; its closest ``particles`` are the first
            generation). ``guide`` (amortized inference, no MCMC): ``guide`` (required: an
            ``EncoderGuide``, or any object with ``.posterior(images, num_samples,
            generator=)``), ``chains`` (4), ``draws`` (1000), ``seed``; the draws of q are
            independent, so chains are only a reshaping of ``chains * draws`` draws. Its
            sample statistics: ``accepted`` all True, ``epsilon`` NaN, and ``distance`` NaN
            unless ``summary`` is given (default None: nothing is simulated); with a summary,
            each draw is simulated (fresh observation noise; latents the guide leaves out from
            their prior) and its ``distance`` (``"standardized_l2"`` after a pilot of
            ``pilot_size`` prior simulations, as ABC's) recorded, so it compares with ABC's
            distances; ``batch_size``, ``device``, ``progress`` apply to that simulation.

    Returns:
        A :class:`~probgraphics.inference.posterior.Posterior` (CPU tensors).

    Raises:
        ValueError / TypeError: bad input, with what was expected, what came, and what to do.
        RuntimeError: CUDA requested but not available.
    """
    _check_method(method)
    spec, observation, merged = _check_call(method, program, observation, options)
    return spec.run(program, observation, merged, frozenset(options))


def _check_call(
    method: str, program: Any, observation: Any, options: Mapping[str, Any]
) -> tuple[MethodSpec, dict[str, torch.Tensor], dict[str, Any]]:
    """The checks ``infer`` and ``prepare_abc`` share, for a known ``method``: its spec, the
    normalized observation, and the options merged over the method's defaults."""
    spec = _METHODS[method]
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for method {method!r}; its options are "
            f"{sorted(spec.options)}."
        )
    if not callable(program):
        raise TypeError(
            f"program must be a callable Pyro model (no required arguments), got "
            f"{type(program).__name__}; build one with e.g. probgraphics.programs.face()."
        )
    return spec, normalize_observation(observation), {**spec.options, **options}


# ---------------------------------------------------------------------------- validation helpers


def normalize_observation(observation: Any) -> dict[str, torch.Tensor]:
    """A tensor -> ``{"image": tensor}``; a dict is checked. Values are validated:

    every value a real, finite tensor; the ``"image"`` site ``(C, H, W)`` float in [0, 1] (up to
    :data:`IMAGE_RANGE_MARGIN` outside, for pixel noise).
    """
    if isinstance(observation, torch.Tensor):
        observation = {"image": observation}
    elif isinstance(observation, Mapping):
        observation = dict(observation)
    else:
        raise TypeError(
            "observation must be a tensor (the 'image' site, shaped (C, H, W)) or a dict of site "
            f"name -> tensor, got {type(observation).__name__}."
        )
    if not observation:
        raise ValueError("observation is an empty dict; give at least one observed site")
    for name, value in observation.items():
        if not isinstance(name, str):
            raise TypeError(f"observation keys must be site names (str), got {name!r}")
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"observation[{name!r}] must be a torch.Tensor, got {type(value).__name__}; "
                "convert with torch.as_tensor(...)."
            )
        if value.dtype == torch.bool or value.is_complex():
            raise TypeError(f"observation[{name!r}] must be real numbers, got dtype {value.dtype}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise ValueError(
                f"observation[{name!r}] has {bad} NaN/inf values; observations must be finite. "
                "Replace or mask the bad values before inference."
            )
        if name == "image":
            if value.dim() != 3:
                raise ValueError(
                    f"the image observation must be shaped (C, H, W), got {tuple(value.shape)}; "
                    "for a batch, run infer once per image; for (H, W) add a channel with "
                    "image[None]."
                )
            if not value.is_floating_point():
                raise TypeError(
                    f"the image must be float in [0, 1], got dtype {value.dtype}; for 8-bit "
                    "images use image.float() / 255."
                )
            low, high = float(value.min()), float(value.max())
            if low < -IMAGE_RANGE_MARGIN or high > 1.0 + IMAGE_RANGE_MARGIN:
                raise ValueError(
                    f"the image must be in [0, 1], got values in [{low:.4g}, {high:.4g}]; rescale "
                    "it (e.g. image / 255 for 8-bit images, or clamp)."
                )
    return {name: value.detach() for name, value in observation.items()}


def resolve_device(device: Any) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device`` -> ``torch.device``, checked."""
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError:
            raise ValueError(
                f"device {device!r} is not a device name; use 'cpu', 'cuda' or 'cuda:N'."
            ) from None
    if not isinstance(device, torch.device):
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device {str(device)!r} was requested but CUDA is not available here (no GPU, "
                "or a CPU-only torch build); pass device='cpu'."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {str(device)!r} does not exist; this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)."
            )
    elif device.type != "cpu":
        raise ValueError(f"device must be 'cpu' or a CUDA device, got {str(device)!r}")
    return device


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_fraction(name: str, value: Any, *, include_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in (0, 1], got {value!r}")
    value = float(value)
    if not ((0.0 <= value if include_zero else 0.0 < value) and value <= 1.0):
        interval = "[0, 1]" if include_zero else "(0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return value


def _check_epsilon(value: Any, *, allow_zero: bool = False) -> float | None:
    """``allow_zero``: the noise is integrated out of the kernel, so ``eps = 0`` is the exact
    posterior (``observation_noise="marginal"``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"epsilon must be a positive number (or None to choose it from the pilot), got "
            f"{value!r}"
        )
    value = float(value)
    if math.isnan(value) or value < 0.0 or (value == 0.0 and not allow_zero):
        raise ValueError(
            f"epsilon must be > 0 (float('inf') samples the prior), got {value!r}; pass None to "
            "choose it as a quantile of the pilot's distances (epsilon=0, the exact posterior, "
            "needs observation_noise='marginal')."
        )
    return value


def _check_seed(value: Any) -> int:
    if value is None:
        return secrets.randbelow(2**62)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise TypeError(f"seed must be a non-negative int or None, got {value!r}")
    return int(value)


def _check_path(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path (str or os.PathLike), got {value!r}")
    return str(Path(value))


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


# ---------------------------------------------------------------------------- program inspection


@dataclass(frozen=True)
class ProgramInfo:
    """What one trace of a program says: its sample sites, which are observed, their shapes."""

    sample_sites: dict[str, dict[str, Any]]
    deterministic_sites: list[str]


def inspect_program(program: Callable[[], Any]) -> tuple[ProgramInfo, Any]:
    """Trace ``program`` once (unbatched); return its sites and the trace."""
    trace = trace_program(program)
    deterministic = [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and site["infer"].get("_deterministic", False)
    ]
    return ProgramInfo(sample_sites(trace), deterministic), trace


def _check_observed_sites(
    program_sites: dict[str, dict[str, Any]],
    deterministic: list[str],
    observation: dict[str, torch.Tensor],
) -> None:
    listing = ", ".join(
        f"{name!r} ({describe_distribution(site['fn'])}, shape {tuple(site['value'].shape)})"
        for name, site in program_sites.items()
    )
    for name, value in observation.items():
        if name in deterministic:
            raise ValueError(
                f"{name!r} is a deterministic site of the program (pyro.deterministic), not an "
                f"observable sample site; observe one of its sample sites: {listing}."
            )
        if name not in program_sites:
            raise ValueError(
                f"the program has no sample site {name!r} to observe; its sample sites are "
                f"{listing}. Pass the observation under one of those names."
            )
        site = program_sites[name]
        if site["is_observed"]:
            raise ValueError(
                f"site {name!r} is already conditioned inside the program (obs=... or "
                "pyro.condition); pass the unconditioned program and give the observation to "
                "infer instead."
            )
        expected = tuple(site["value"].shape)
        if tuple(value.shape) != expected:
            raise ValueError(
                f"observation[{name!r}] has shape {tuple(value.shape)}, but the program's site "
                f"{name!r} has shape {expected}; pass one unbatched observation of that shape."
            )
    if len(observation) == len(program_sites):
        raise ValueError(
            f"every sample site of the program is observed ({sorted(observation)}); there are no "
            "latents to infer."
        )


def _whitenable_observed(trace, observation: dict[str, torch.Tensor]) -> bool:
    try:
        build_layout(trace, observation, whiten_observed=True)
    except WhiteningError:
        return False
    return True


def _build_layout(
    trace,
    observation: dict[str, torch.Tensor],
    mode: str,
    *,
    blocked: bool = False,
    marginal: str | None = None,
) -> tuple:
    """The layout for ``mode`` (auto/whitened/fresh/marginal); returns ``(layout, resolved_mode,
    noise_scale)`` (``noise_scale`` is 0 unless the mode resolves to ``"marginal"``).

    ``marginal`` says why the noise cannot be integrated out for this run (None: it can, if the
    program's observation is Gaussian with one sigma; see :mod:`~probgraphics.inference.
    marginal_noise`). ``auto`` whitens small observations' noise, and any size when the moves
    are ``blocked``: the noise is then one more block, moved on its own, so a scene move compares
    images under the same noise (correlated pseudo-marginal). It does not pick ``"marginal"``:
    on the face benchmark the exact kernel fits pixels better but pins the chains in poorer
    poses (docs/results.md section 3).
    """
    latent_layout = build_layout(trace, observation, whiten_observed=False)
    if mode == "fresh":
        return latent_layout, "fresh", 0.0
    size = sum(value.numel() for value in observation.values())
    if mode == "marginal":
        if marginal is not None:
            raise ValueError(f"observation_noise='marginal' {marginal}")
        try:
            return latent_layout, "marginal", marginal_noise.noise_scale(trace, observation)
        except marginal_noise.MarginalNoiseError as error:
            raise ValueError(str(error)) from None
    if mode == "auto":
        too_large = size > AUTO_WHITEN_MAX_SIZE and not blocked
        if too_large or not _whitenable_observed(trace, observation):
            return latent_layout, "fresh", 0.0
    return build_layout(trace, observation, whiten_observed=True), "whitened", 0.0


def _marginal_obstacle(
    method: str, options: Mapping[str, Any], explicit: frozenset[str]
) -> str | None:
    """Why this run's noise cannot be integrated out of the kernel (None: it can, see
    :mod:`probgraphics.inference.marginal_noise`), as the end of an error message."""
    if method not in ("abc_mcmc", "abc_slice"):
        return f"is for abc_mcmc and abc_slice; {method} draws the noise ('whitened' or 'fresh')."
    if options["abc_kernel"] != "gaussian":
        return (
            "needs abc_kernel='gaussian' (the noise integrates out of a Gaussian kernel only); "
            f"got {options['abc_kernel']!r}."
        )
    if not (options["summary"] is None or options["summary"] in ("identity", "pixel")):
        return (
            "needs the observation itself as the summary (summary=None, 'identity' or 'pixel'), "
            f"got {summary_name(options['summary'])!r}; use 'whitened' or 'fresh' with it."
        )
    if "distance" in explicit and options["distance"] != "l2":
        return (
            "needs the plain L2 distance (one bandwidth for every element), got distance="
            f"{distance_name(options['distance'])!r}; pass distance='l2' or leave it out."
        )
    return None


def _move_program(program: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """Programs with constants on a device may define ``to(device)``; call it when not on CPU."""
    if device.type != "cpu" and callable(getattr(program, "to", None)):
        return program.to(device)
    return program


def _traced_program(
    program: Callable[[], Any], device: torch.device, observation: dict[str, torch.Tensor]
) -> tuple[Callable[[], Any], ProgramInfo, Any]:
    """The program on ``device``, its sites and one trace, with the observation checked against
    its sites: ``(program, info, trace)``."""
    program = _move_program(program, device)
    info, trace = inspect_program(program)
    _check_observed_sites(info.sample_sites, info.deterministic_sites, observation)
    return program, info, trace


def _check_summary_spec(spec: Any) -> None:
    if not (spec is None or isinstance(spec, str) or callable(spec)):
        raise TypeError(f"summary must be None, a summary name or a callable, got {spec!r}")


# ---------------------------------------------------------------------------- ABC methods


_ABC_COMMON_OPTIONS: dict[str, Any] = {
    "chains": 64,
    "draws": 500,
    "warmup": 500,
    "thin": 1,
    "epsilon": None,
    "quantile": None,
    "summary": None,
    "distance": "standardized_l2",
    "abc_kernel": "gaussian",
    "init": "pilot",
    "seed": None,
    "device": "cpu",
    "progress": True,
    "checkpoint": None,
    "checkpoint_every": 100,
    "resume": None,
    "pilot_size": None,
    "batch_size": None,
    "observation_noise": "auto",
    "anneal_fraction": 0.5,
    "precondition": True,
    "guide": None,
    "simulations": None,
}
_ABC_MCMC_OPTIONS = {
    **_ABC_COMMON_OPTIONS,
    "target_acceptance": 0.25,
    "blocks": "sites",
    "guide_proposals": None,
    "collapse": None,
    "ridge": None,
}
_ABC_SLICE_OPTIONS = {**_ABC_COMMON_OPTIONS, "max_shrinks": DEFAULT_MAX_SHRINKS}
#: abc_rejection's ``adjust=`` choices: None, linear regression adjustment, or one regression per
#: posterior mode (for posteriors a fold of the parameters makes multimodal).
ADJUSTMENTS = (None, "linear", "linear_modes")
_REJECTION_OPTIONS: dict[str, Any] = {
    "simulations": 10_000,
    "keep_fraction": 0.01,
    "adjust": None,
    "rounds": 1,
    "summary": None,
    "distance": "standardized_l2",
    "seed": None,
    "device": "cpu",
    "progress": True,
    "batch_size": None,
    "pilot_size": 1000,
}
_ABC_SMC_OPTIONS: dict[str, Any] = {
    "simulations": 20_000,
    "particles": 1024,
    "alpha": 0.5,
    "mcmc_steps": 2,
    "abc_kernel": "indicator",
    "epsilon": None,
    "resampling": "systematic",
    "precondition": True,
    "observation_noise": "auto",
    "summary": None,
    "distance": "standardized_l2",
    "seed": None,
    "device": "cpu",
    "progress": True,
    "batch_size": None,
    "pilot_size": 1000,
}

_ABC_PMC_OPTIONS: dict[str, Any] = {
    "simulations": 20_000,
    "particles": 1000,
    "draws": None,
    "resample": True,
    "quantile": 0.5,
    "kernel": "knn",
    "epsilon": None,
    "summary": None,
    "distance": "standardized_l2",
    "seed": None,
    "device": "cpu",
    "progress": True,
    "batch_size": None,
    "pilot_size": None,
}


def _check_init(
    init: Any, layout: WhiteningLayout, chains: int
) -> tuple[str, dict[str, torch.Tensor] | None]:
    if isinstance(init, str):
        return _check_choice("init", init, ("pilot", "prior", "guide")), None
    if not isinstance(init, Mapping):
        raise TypeError(
            "init must be 'pilot', 'prior', 'guide' (with guide=...), or a dict latent site -> "
            f"values shaped (chains, *event), got {type(init).__name__}"
        )
    latents = {site.name: site for site in layout.latent_sites}
    values = {}
    for name, value in init.items():
        if name not in latents:
            raise ValueError(
                f"init has site {name!r}, which is not a latent of the program; its latents are "
                f"{sorted(latents)}."
            )
        expected = (chains, *latents[name].event_shape)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"init[{name!r}] must be a tensor shaped (chains, *event) = {expected}, got {got}."
            )
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"init[{name!r}] has NaN/inf values; give finite starting values.")
        values[name] = value.detach()
    return "given", values


def _abc_config(
    method: str,
    options: dict[str, Any],
    layout_mode: str,
    summary_spec: Any,
) -> RunConfig:
    chains = _check_int("chains", options["chains"], 1)
    draws = _check_int("draws", options["draws"], 1)
    warmup = _check_int("warmup", options["warmup"], 0)
    pilot_size = options["pilot_size"]
    if pilot_size is None:
        pilot_size = max(1000, 4 * chains)
    pilot_size = _check_int("pilot_size", pilot_size, 0)
    batch_size = options["batch_size"]
    batch_size = max(chains, 256) if batch_size is None else _check_int("batch_size", batch_size, 1)
    extra = {}
    if method == "abc_mcmc":
        extra["target_acceptance"] = _check_fraction(
            "target_acceptance", options["target_acceptance"]
        )
        extra["blocks"] = _check_blocks(options["blocks"])
        proposals = options["guide_proposals"]
        if proposals is None:
            proposals = options["guide"] is not None
        extra["guide_proposals"] = _check_bool("guide_proposals", proposals)
        # A resumed run's checkpoint holds the guide's proposal; a new run needs the guide.
        if extra["guide_proposals"] and options["guide"] is None and options["resume"] is None:
            raise ValueError(
                "guide_proposals=True proposes from a trained guide, but no guide was given; "
                "pass guide=load_guide(...), or leave guide_proposals out."
            )
        if extra["target_acceptance"] >= 1.0:
            raise ValueError("target_acceptance must be < 1 (e.g. 0.25)")
        collapse = options["collapse"]
        if collapse is not None and not isinstance(collapse, str):
            raise TypeError(
                "collapse must be the name of one latent site (a str, e.g. 'texture') or None, "
                f"got {collapse!r}."
            )
        extra["collapse"] = collapse
        extra["ridge"] = _check_ridge(options["ridge"])
        if extra["ridge"] is not None and collapse is not None:
            raise ValueError(
                f"ridge={list(extra['ridge'])} and collapse={collapse!r} do not combine yet (the "
                "ridge move would have to redraw the collapsed site); use one of them."
            )
    else:
        extra["max_shrinks"] = _check_int("max_shrinks", options["max_shrinks"], 1)
    quantile = options["quantile"]
    if quantile is not None:
        quantile = _check_fraction("quantile", quantile)
        if options["epsilon"] is not None:
            raise ValueError(
                "give either epsilon (the tolerance itself) or quantile (epsilon as that quantile "
                f"of the pilot's distances), not both; got epsilon={options['epsilon']!r} and "
                f"quantile={quantile!r}."
            )
    return RunConfig(
        method=method,
        chains=chains,
        draws=draws,
        warmup=warmup,
        seed=_check_seed(options["seed"]),
        thin=_check_int("thin", options["thin"], 1),
        epsilon=_check_epsilon(
            options["epsilon"], allow_zero=options["observation_noise"] == "marginal"
        ),
        quantile=quantile,
        abc_kernel=_check_choice("abc_kernel", options["abc_kernel"], ABC_KERNELS),
        init="pilot",  # replaced by the caller once the layout is known
        pilot_size=pilot_size,
        anneal_fraction=_check_fraction(
            "anneal_fraction", options["anneal_fraction"], include_zero=True
        ),
        device=str(resolve_device(options["device"])),
        batch_size=batch_size,
        observation_noise=layout_mode,
        summary=summary_name(summary_spec),
        distance=distance_name(options["distance"]),
        progress=_check_bool("progress", options["progress"]),
        checkpoint=_check_path("checkpoint", options["checkpoint"]),
        checkpoint_every=_check_int("checkpoint_every", options["checkpoint_every"], 1),
        precondition=_check_bool("precondition", options["precondition"]),
        simulations=options["simulations"],
        **extra,
    )


def _check_ridge(sites: Any) -> tuple[str, ...] | None:
    """``ridge=``: None (no ridge moves) or the focus latent sites, a non-empty list of distinct
    names (a checkpoint records a list). Unknown names are reported once the program's sites are
    known."""
    if sites is None:
        return None
    if isinstance(sites, str):
        sites = [sites]
    if (
        not isinstance(sites, (list, tuple))
        or not sites
        or not all(isinstance(name, str) for name in sites)
    ):
        raise TypeError(
            "ridge must be None or a list of latent site names whose random walk the other "
            f"latents follow, e.g. ['azimuth', 'elevation', 'light'], got {sites!r}"
        )
    repeated = sorted({name for name in sites if list(sites).count(name) > 1})
    if repeated:
        raise ValueError(f"ridge names {repeated} more than once; name each site once.")
    return tuple(sites)


def _check_ridge_sites(config: RunConfig, layout: WhiteningLayout) -> None:
    """The ridge's focus sites must be latent sites, and leave at least one to follow them."""
    if config.ridge is None:
        return
    latents = [site.name for site in layout.latent_sites]
    unknown = sorted(set(config.ridge) - set(latents))
    if unknown:
        raise ValueError(
            f"ridge names {unknown}, which are not latent sites of this program; its latent "
            f"sites are {latents}."
        )
    if set(latents) <= set(config.ridge):
        raise ValueError(
            f"ridge names every latent site ({latents}); leave out the sites that should follow "
            "the focus sites' walk (ridge moves shift them along the fitted ridge)."
        )


def _check_blocks(blocks: Any) -> tuple[tuple[str, ...], ...] | None:
    """``"sites"`` -> ``()`` (one block per latent site), ``"joint"`` -> None (one move of all
    coordinates: the paper's), a list of lists of site names -> those blocks (sites left out get
    a block each). Unknown names are reported once the program's sites are known."""
    if blocks is None:  # a checkpoint's record of 'joint'
        return None
    if isinstance(blocks, (list, tuple)) and len(blocks) == 0:  # a checkpoint's 'sites'
        return ()
    if isinstance(blocks, str):
        choice = _check_choice("blocks", blocks, ("sites", "joint"))
        return () if choice == "sites" else None
    message = (
        "blocks must be 'sites' (one block per latent site), 'joint' (one move of every "
        "latent) or a list of lists of latent site names, e.g. [['azimuth', 'elevation'], "
        f"['shape']], got {blocks!r}"
    )
    if not isinstance(blocks, (list, tuple)) or not blocks:
        raise TypeError(message)
    checked = []
    for block in blocks:
        if isinstance(block, str) or not isinstance(block, (list, tuple)) or not block:
            raise TypeError(message)
        if not all(isinstance(name, str) for name in block):
            raise TypeError(message)
        checked.append(tuple(block))
    return tuple(checked)


#: With ``simulations=N`` and no ``chains``: ``N // SIMULATIONS_PER_CHAIN`` chains, clipped ...
#: (on held-out face scenes at 20,000 simulations, 25 chains gave a third lower render error
#: than 50 at the same angle error: longer chains refine further)
SIMULATIONS_PER_CHAIN = 800
#: ... to this range.
BUDGET_CHAINS = (8, 64)
#: Observations of at most :data:`AUTO_WHITEN_MAX_SIZE` elements (a simulator's summary, not an
#: image) come from cheap simulators, whose steps cost the engine's fixed per-call time more than
#: simulating: ``N // CHEAP_SIMULATIONS_PER_CHAIN`` chains in :data:`CHEAP_BUDGET_CHAINS`, so one
#: step simulates many (sbibm's gaussian_linear at 1e5: 1,000 chains, 96 steps, against 64 chains
#: and 1,500 steps; benchmarks/engine_throughput.py).
CHEAP_SIMULATIONS_PER_CHAIN = 100
CHEAP_BUDGET_CHAINS = (8, 1024)
#: abc_slice under ``simulations=N`` plans its steps on this many simulations a chain a step
#: (its shrinking rounds; measured: about 3 on the face and the toy programs once epsilon
#: settles), and stops the rounds where the budget ends.
SLICE_SIMULATIONS_PER_STEP = 3


def _apply_budget(
    method: str,
    options: dict[str, Any],
    explicit: frozenset[str],
    observation_size: int,
    reserved: int = 0,
) -> None:
    """``simulations=N``: derive chains, pilot, warm-up and draws (those not given) so the run
    spends at most ``N`` simulations, pilot and start included; reject a budget that cannot.
    ``observation_size``: elements in the observation (small: a cheap simulator, more chains);
    ``reserved``: simulations the run spends outside its steps (the ridge moves' fits)."""
    budget = options["simulations"]
    if budget is None:
        return
    budget = _check_int("simulations", budget, 1)
    options["simulations"] = budget
    if "chains" not in explicit:
        if observation_size <= AUTO_WHITEN_MAX_SIZE:
            (low, high), per_chain = CHEAP_BUDGET_CHAINS, CHEAP_SIMULATIONS_PER_CHAIN
        else:
            (low, high), per_chain = BUDGET_CHAINS, SIMULATIONS_PER_CHAIN
        options["chains"] = min(high, max(low, budget // per_chain))
    chains = _check_int("chains", options["chains"], 1)
    pilot = options["pilot_size"]
    if pilot is None:
        pilot = min(max(1000, 4 * chains), budget // 10)
        options["pilot_size"] = pilot
    pilot = _check_int("pilot_size", pilot, 0)
    init = options["init"]
    starting = 0 if isinstance(init, str) and init == "pilot" else chains
    thin = _check_int("thin", options["thin"], 1)
    # abc_slice's steps cost a varying number of simulations: plan on the typical count, and the
    # run stops its shrinking rounds where the budget ends (runner._kernel_step).
    per_step = SLICE_SIMULATIONS_PER_STEP if method == "abc_slice" else 1
    if method == "abc_mcmc" and options.get("collapse") is not None:
        per_step = 2  # a collapsed move simulates twice (RunConfig.simulations_per_step)
    steps = (budget - pilot - starting - reserved) // (chains * per_step)
    if pilot > budget or steps < 2:
        fits = f", the ridge moves' fits ({reserved})" if reserved else ""
        raise ValueError(
            f"simulations={budget} cannot pay for the pilot ({pilot}), the {chains} chains' "
            f"start ({starting}){fits} and at least two steps of {chains} chains; raise "
            "simulations (e.g. to 20_000) or lower chains and pilot_size."
        )
    given = {name: options[name] for name in ("warmup", "draws") if name in explicit}
    warmup = given.get("warmup", steps // 2)
    draws = given.get("draws", max(1, (steps - warmup) // thin))
    # at least per_step simulations a chain a step
    needed = pilot + starting + reserved + chains * per_step * (warmup + draws * thin)
    if needed > budget:
        raise ValueError(
            f"warmup={warmup} and draws={draws} with {chains} chains need at least {needed} "
            f"simulations (pilot and start included), more than simulations={budget}; leave "
            "warmup and draws out to have them derived from the budget."
        )
    options["warmup"], options["draws"] = warmup, draws


def _prepare_abc_method(
    method: str,
    program: Callable[[], Any],
    observation: dict[str, torch.Tensor],
    options: dict[str, Any],
    explicit: frozenset[str],
) -> AbcRun:
    resume = _check_path("resume", options["resume"])
    if resume is not None:
        _take_checkpoint_settings(resume, options, explicit)
    noise_mode = _check_choice(
        "observation_noise",
        options["observation_noise"],
        ("auto", "whitened", "fresh", "marginal"),
    )
    check_distance_spec(options["distance"])
    summary_spec = options["summary"]
    _check_summary_spec(summary_spec)
    # Every option is checked before the program runs (the noise mode and init are settled
    # once its sites are known).
    if method == "abc_mcmc" and options["guide"] is not None and "init" not in explicit:
        options["init"] = "guide"  # the recommended call: start from the guide, propose from it
    if resume is None:  # a checkpoint holds the sizes its budget gave
        size = sum(value.numel() for value in observation.values())
        _apply_budget(method, options, explicit, size)
    if method == "abc_mcmc" and options["collapse"] is not None:
        if noise_mode not in ("auto", "marginal"):
            raise ValueError(
                f"collapse={options['collapse']!r} draws the site from its Gaussian conditional "
                "under the kernel with the observation noise integrated out; it needs "
                f"observation_noise='marginal' (or 'auto'), got {noise_mode!r}."
            )
        noise_mode = options["observation_noise"] = "marginal"
    config = _abc_config(method, options, noise_mode, summary_spec)
    device = torch.device(config.device)
    program, info, trace = _traced_program(program, device, observation)
    if config.collapse is not None:
        check_collapsible(
            program,
            config.collapse,
            {name: trace.nodes[name] for name in _latent_sites(info.sample_sites, observation)},
            observation,
        )
    if config.blocks == () and len(_latent_sites(info.sample_sites, observation)) == 1:
        config = replace(config, blocks=None)  # one latent site: its block is the joint move
    layout, resolved_mode, noise_scale = _build_layout(
        trace,
        observation,
        noise_mode,
        blocked=config.multi_move,
        marginal=_marginal_obstacle(method, options, explicit),
    )
    if resolved_mode == "marginal":
        # The bandwidth is one number for every element: the plain L2 distance.
        options["distance"] = "l2"
        config = replace(config, distance="l2", noise_scale=noise_scale)
    if config.multi_move:
        block_masks(layout, config.blocks or ())  # unknown or repeated sites fail before the pilot
    _check_ridge_sites(config, layout)
    if config.ridge is not None and config.simulations is not None and resume is None:
        # The ridge's fits simulate too: re-plan the budget with them reserved.
        reserved = 2 * layout.latent_dim * ridge_fits(options["warmup"])
        _apply_budget(method, options, explicit, size, reserved=reserved)
        config = replace(config, warmup=options["warmup"], draws=options["draws"])
    init = _resolve_guide_init(options, info, observation, config, resumed=resume is not None)
    init_mode, init_values = _check_init(init, layout, config.chains)
    config = replace(config, init=init_mode, observation_noise=resolved_mode)
    if config.checkpoint is not None and not Path(config.checkpoint).parent.exists():
        raise FileNotFoundError(
            f"checkpoint folder {str(Path(config.checkpoint).parent)!r} does not exist; create it "
            "or pass another checkpoint path."
        )
    if config.init == "pilot" and config.pilot_size < config.chains:
        raise ValueError(
            f"init='pilot' starts the chains from the best pilot simulations, so pilot_size "
            f"({config.pilot_size}) must be >= chains ({config.chains}); raise pilot_size or use "
            "init='prior'."
        )
    needs_pilot = config.quantile is not None or config.distance == "standardized_l2"
    if config.pilot_size < 2 and needs_pilot:
        raise ValueError(
            f"pilot_size={config.pilot_size} is too small: the pilot sets the standardized "
            "distance's scale (and epsilon, with quantile=...); use pilot_size >= 2, or a "
            "distance other than 'standardized_l2'."
        )
    summary = resolve_summary(summary_spec, list(observation))
    observation = {name: value.to(device) for name, value in observation.items()}
    if resume is not None:
        return load_run(
            resume,
            program,
            layout,
            observation,
            config,
            summary=summary,
            distance=options["distance"],
        )
    guide_proposal = None
    if config.guide_proposals:
        guide_proposal = _guide_proposal(
            options["guide"], program, layout, info, observation, config.seed, config.collapse
        )
    return prepare(
        program,
        layout,
        observation,
        config,
        summary=summary,
        distance=options["distance"],
        init_values=init_values,
        guide_proposal=guide_proposal,
    )


#: Guide draws the independence proposal's Gaussian is fitted to (no simulations: the draws are
#: mapped to the whitened space without rendering).
GUIDE_PROPOSAL_DRAWS = 4096


def _guide_proposal(
    guide: Any,
    program: Callable[[], Any],
    layout: WhiteningLayout,
    info: Any,
    observation: Mapping[str, torch.Tensor],
    seed: int,
    collapse: str | None = None,
):
    """The guide's q(z | observation) as a Gaussian in the whitened space (see
    ``runner.fit_gaussian_proposal``); its draws are a stream of their own. A collapsed site is
    left out (``N(0, I)`` there): its moves draw it from its conditional instead."""
    _check_guide(guide, "guide_proposals")
    latents = _latent_sites(info.sample_sites, observation)
    draws = _guide_draws(guide, observation, latents, GUIDE_PROPOSAL_DRAWS, _guide_seed(seed) + 1)
    device = next(iter(observation.values())).device
    u = whiten_values(program, layout, {name: value.to(device) for name, value in draws.items()})
    mask = torch.zeros(layout.dim, dtype=torch.bool, device=u.device)
    for site in layout.latent_sites:
        if site.name in draws and site.name != collapse:
            mask[site.offset : site.offset + site.size] = True
    return fit_gaussian_proposal(u, mask)


def _take_checkpoint_settings(path: str, options: dict[str, Any], explicit: frozenset[str]) -> None:
    """Fill the options the user left out from the checkpoint's settings, so ``resume=path`` alone
    continues the run. Summaries and distances given as callables must be passed again (only
    their names are recorded); a mismatch is reported when the run is loaded."""
    saved = checkpoint_settings(path)
    for key, value in saved.items():
        if key not in options or key in explicit:
            continue
        if key == "summary" and value is not None and value not in SUMMARIES:
            continue
        if key == "distance" and value not in DISTANCES:
            continue
        options[key] = value
    if "init" not in explicit:
        options["init"] = "prior"  # not used: the checkpoint holds the chains' state
    if options.get("checkpoint") is None:
        options["checkpoint"] = path


def prepare_abc(
    program: Callable[[], Any], observation: Any, method: str = "abc_mcmc", **options: Any
) -> AbcRun:
    """Validate like :func:`infer` and return the prepared run instead of running it.

    For composing the run loop by hand (``method`` is ``"abc_mcmc"`` or ``"abc_slice"``)::

        from probgraphics.inference import runner
        run = prepare_abc(program, observation, chains=8, draws=100, warmup=100, seed=0)
        runner.warmup(run, 40); runner.warmup(run)    # all of warm-up, in two pieces
        runner.sample(run)                            # every draw
        posterior = runner.finish(run)                # == infer(..., same options)

    With ``resume=path`` the run is rebuilt from that checkpoint.
    """
    if method not in KERNEL_METHODS:
        raise ValueError(
            f"prepare_abc runs the ABC-MCMC methods {sorted(KERNEL_METHODS)}, got {method!r}"
        )
    _, observation, merged = _check_call(method, program, observation, options)
    return _prepare_abc_method(method, program, observation, merged, frozenset(options))


def _run_abc_mcmc(program, observation, options, explicit) -> Posterior:
    posterior = complete(
        _prepare_abc_method("abc_mcmc", program, observation, dict(options), explicit)
    )
    return _record_guide_init(posterior, options)


def _run_abc_slice(program, observation, options, explicit) -> Posterior:
    posterior = complete(
        _prepare_abc_method("abc_slice", program, observation, dict(options), explicit)
    )
    return _record_guide_init(posterior, options)


def _run_abc_rejection(program, observation, options, explicit) -> Posterior:
    simulations = _check_int("simulations", options["simulations"], 1)
    keep_fraction = _check_fraction("keep_fraction", options["keep_fraction"])
    seed = _check_seed(options["seed"])
    device = resolve_device(options["device"])
    pilot_size = _check_int("pilot_size", options["pilot_size"], 2)
    batch_size = options["batch_size"]
    batch_size = 1024 if batch_size is None else _check_int("batch_size", batch_size, 1)
    check_distance_spec(options["distance"])
    rounds = _check_int("rounds", options["rounds"], 1)
    if rounds > 1 and min(simulations // rounds, kept_count(simulations, keep_fraction)) < 2:
        raise ValueError(
            f"abc_rejection with rounds={rounds} needs at least 2 simulations a round and 2 kept "
            f"draws to anchor each round's region; simulations={simulations} with keep_fraction="
            f"{keep_fraction} leaves too few. Raise simulations or keep_fraction, or lower rounds."
        )
    adjust = options["adjust"]
    if adjust not in ADJUSTMENTS:
        raise ValueError(
            f"adjust must be one of {ADJUSTMENTS} (None: the kept draws as simulated; 'linear': "
            f"Beaumont's regression adjustment on their summaries; 'linear_modes': one such "
            f"regression per posterior mode), got {adjust!r}."
        )
    program, info, trace = _traced_program(program, device, observation)
    layout = build_layout(trace, observation, whiten_observed=False)
    summary = resolve_summary(options["summary"], list(observation))
    settings = {
        "simulations": simulations,
        "keep_fraction": keep_fraction,
        "adjust": adjust,
        "rounds": rounds,
        "summary": summary_name(options["summary"]),
        "distance": distance_name(options["distance"]),
        "seed": seed,
        "device": str(device),
        "batch_size": batch_size,
        "pilot_size": pilot_size,
    }
    return run_rejection(
        program,
        layout,
        {name: value.to(device) for name, value in observation.items()},
        simulations=simulations,
        keep_fraction=keep_fraction,
        summary=summary,
        distance=options["distance"],
        seed=seed,
        device=str(device),
        batch_size=batch_size,
        pilot_size=pilot_size,
        progress=bool(options["progress"]),
        settings=settings,
        adjust=None if adjust is None else support_bounds(trace, layout),
        adjust_modes=adjust == "linear_modes",
        rounds=rounds,
    )


def _run_abc_smc(program, observation, options, explicit) -> Posterior:
    simulations = _check_int("simulations", options["simulations"], 1)
    particles = _check_int("particles", options["particles"], 2)
    alpha = _check_fraction("alpha", options["alpha"])
    if alpha >= 1.0:
        raise ValueError(
            f"alpha must be in (0, 1): each round keeps that fraction of the particles' weight "
            f"(e.g. 0.5), got {alpha!r}; 1 would never lower epsilon."
        )
    mcmc_steps = options["mcmc_steps"]
    if mcmc_steps != "adaptive":
        if isinstance(mcmc_steps, str):
            raise ValueError(f"mcmc_steps must be an int >= 1 or 'adaptive', got {mcmc_steps!r}")
        mcmc_steps = _check_int("mcmc_steps", mcmc_steps, 1)
    abc_kernel = _check_choice("abc_kernel", options["abc_kernel"], ABC_KERNELS)
    epsilon = _check_epsilon(options["epsilon"])
    resampling = _check_choice("resampling", options["resampling"], RESAMPLING_SCHEMES)
    precondition = _check_bool("precondition", options["precondition"])
    noise_mode = _check_choice(
        "observation_noise", options["observation_noise"], ("auto", "whitened", "fresh")
    )
    seed = _check_seed(options["seed"])
    device = resolve_device(options["device"])
    progress = _check_bool("progress", options["progress"])
    check_distance_spec(options["distance"])
    pilot_minimum = 2 if distance_name(options["distance"]) == "standardized_l2" else 0
    pilot_size = _check_int("pilot_size", options["pilot_size"], pilot_minimum)
    batch_size = options["batch_size"]
    batch_size = 1024 if batch_size is None else _check_int("batch_size", batch_size, 1)
    needed = pilot_size + 2 * particles
    if simulations < needed:
        raise ValueError(
            f"simulations={simulations} cannot pay for the pilot ({pilot_size}), the starting "
            f"population ({particles} particles) and one move of every particle ({particles}): "
            f"it must be >= pilot_size + 2 * particles = {needed}. Raise simulations, or lower "
            "particles or pilot_size."
        )
    summary_spec = options["summary"]
    _check_summary_spec(summary_spec)
    program, info, trace = _traced_program(program, device, observation)
    layout, resolved_mode, _ = _build_layout(trace, observation, noise_mode)
    summary = resolve_summary(summary_spec, list(observation))
    # The checked options go to the run as they are and into its recorded settings.
    checked = {
        "simulations": simulations,
        "particles": particles,
        "alpha": alpha,
        "mcmc_steps": mcmc_steps,
        "abc_kernel": abc_kernel,
        "epsilon": epsilon,
        "resampling": resampling,
        "precondition": precondition,
        "seed": seed,
        "device": str(device),
        "batch_size": batch_size,
        "pilot_size": pilot_size,
    }
    settings = {
        **checked,
        "observation_noise": resolved_mode,
        "summary": summary_name(summary_spec),
        "distance": distance_name(options["distance"]),
    }
    return run_smc(
        program,
        layout,
        {name: value.to(device) for name, value in observation.items()},
        **checked,
        summary=summary,
        distance=options["distance"],
        progress=progress,
        settings=settings,
    )


def _run_abc_pmc(program, observation, options, explicit) -> Posterior:
    simulations = _check_int("simulations", options["simulations"], 1)
    particles = _check_int("particles", options["particles"], 2)
    draws = options["draws"]
    draws = particles if draws is None else _check_int("draws", draws, 1)
    resample = _check_bool("resample", options["resample"])
    if not resample and options["draws"] is not None:
        raise ValueError(
            f"draws={options['draws']!r} sets how many equal-weight draws the final population is "
            "resampled into, but resample=False returns the weighted population itself; leave "
            "draws out, or resample."
        )
    quantile = _check_fraction("quantile", options["quantile"])
    if quantile >= 1.0:
        raise ValueError(
            f"quantile must be in (0, 1): each generation's tolerance is that weighted quantile "
            f"of the previous generation's distances (e.g. 0.5, the median), got {quantile!r}; "
            "1 would never lower epsilon."
        )
    kernel = _check_choice("kernel", options["kernel"], PMC_KERNELS)
    epsilon = _check_epsilon(options["epsilon"])
    seed = _check_seed(options["seed"])
    device = resolve_device(options["device"])
    progress = _check_bool("progress", options["progress"])
    check_distance_spec(options["distance"])
    pilot_size = options["pilot_size"]
    pilot_size = 2 * particles if pilot_size is None else _check_int("pilot_size", pilot_size, 2)
    if pilot_size < particles:
        raise ValueError(
            f"pilot_size={pilot_size} is smaller than particles={particles}: generation 0 is the "
            "closest particles of the pilot's prior simulations; raise pilot_size (default: "
            "2 * particles) or lower particles."
        )
    batch_size = options["batch_size"]
    batch_size = 10_000 if batch_size is None else _check_int("batch_size", batch_size, 1)
    needed = pilot_size + particles
    if simulations < needed:
        raise ValueError(
            f"simulations={simulations} cannot pay for the pilot ({pilot_size} prior "
            f"simulations, generation 0) and one more generation of at least {particles} "
            f"simulations: it must be >= pilot_size + particles = {needed}. Raise simulations, "
            "or lower particles or pilot_size."
        )
    summary_spec = options["summary"]
    _check_summary_spec(summary_spec)
    program, info, trace = _traced_program(program, device, observation)
    # Fresh observation noise in every simulation: a proposal perturbs the latents only.
    layout = build_layout(trace, observation, whiten_observed=False)
    summary = resolve_summary(summary_spec, list(observation))
    # The checked options go to the run as they are and into its recorded settings.
    checked = {
        "simulations": simulations,
        "particles": particles,
        "draws": draws,
        "resample": resample,
        "quantile": quantile,
        "kernel": kernel,
        "epsilon": epsilon,
        "seed": seed,
        "device": str(device),
        "batch_size": batch_size,
        "pilot_size": pilot_size,
    }
    settings = {
        **checked,
        "summary": summary_name(summary_spec),
        "distance": distance_name(options["distance"]),
    }
    return run_pmc(
        program,
        layout,
        {name: value.to(device) for name, value in observation.items()},
        **checked,
        summary=summary,
        distance=options["distance"],
        progress=progress,
        settings=settings,
    )


# ---------------------------------------------------------------------------- trained guides

#: Mixed into the run's seed for the guide's draws, so they are a stream of their own (apart
#: from the kernel's and the simulator's, which the runner derives from the same seed).
_GUIDE_SEED_SALT = 0x5EED_6D1D_E000_0001

_GUIDE_HINT = (
    "pass guide=EncoderGuide(encoder, program) (probgraphics.nets.EncoderGuide; trained with "
    "probgraphics.train_guide), or any object with .posterior(images (B, C, H, W), num_samples, "
    "generator=...) -> dict site -> (num_samples, B, *event)"
)


def _guide_seed(seed: int) -> int:
    """The seed of the guide's draws for a run seeded with ``seed`` (a 63-bit mix)."""
    return (seed * 0x9E37_79B9_7F4A_7C15 + _GUIDE_SEED_SALT) % (2**63)


def _check_guide(guide: Any, who: str) -> Any:
    if guide is None:
        raise ValueError(f"{who} needs a trained guide; {_GUIDE_HINT}.")
    if not callable(getattr(guide, "posterior", None)):
        raise TypeError(
            f"guide must be an EncoderGuide or another object with a .posterior method, got "
            f"{type(guide).__name__}; {_GUIDE_HINT}."
        )
    return guide


def _latent_sites(
    program_sites: Mapping[str, Mapping[str, Any]], observation: Mapping[str, torch.Tensor]
) -> dict[str, tuple[tuple[int, ...], Any]]:
    """The program's latents as the guide must cover them: ``site -> (event_shape, support)``."""
    return {
        name: (tuple(site["fn"].event_shape), site["fn"].support)
        for name, site in program_sites.items()
        if name not in observation and not site["is_observed"]
    }


def _describe_shapes(shapes: Mapping[str, tuple[int, ...]]) -> str:
    return "{" + ", ".join(f"{name!r}: {tuple(shape)}" for name, shape in shapes.items()) + "}"


def _site_mismatch(
    guide_shapes: Mapping[str, tuple[int, ...]],
    latents: Mapping[str, tuple[tuple[int, ...], Any]],
) -> str | None:
    """Why a guide with sites ``guide_shapes`` does not fit the program, or None."""
    unknown = [name for name in guide_shapes if name not in latents]
    wrong = [
        name
        for name, shape in guide_shapes.items()
        if name in latents and tuple(shape) != latents[name][0]
    ]
    if not unknown and not wrong:
        return None
    program = _describe_shapes({name: shape for name, (shape, _) in latents.items()})
    parts = []
    if unknown:
        parts.append(f"it guides {unknown}, which are not latent sites of this program")
    if wrong:
        parts.append(
            "event shapes differ for "
            + ", ".join(
                f"{name!r} (guide {tuple(guide_shapes[name])}, program {latents[name][0]})"
                for name in wrong
            )
        )
    return (
        f"the guide was built for a program with other latent sites: {'; '.join(parts)}. The "
        f"guide's sites are {_describe_shapes(guide_shapes)}; this program's latents are "
        f"{program}. Build the guide for this program: EncoderGuide(encoder, program)."
    )


def _guide_image(guide: Any, observation: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The observed value the guide encodes, checked against its site name and shape."""
    observed = getattr(guide, "observed", "image")
    if not isinstance(observed, str) or observed not in observation:
        raise ValueError(
            f"the guide encodes the observed site {observed!r}, but the observation has "
            f"{sorted(observation)}; pass the observation under {observed!r}, or a guide built "
            "for this observed site."
        )
    value = observation[observed]
    expected = getattr(guide, "observed_shape", None)
    if expected is not None and tuple(expected) != tuple(value.shape):
        raise ValueError(
            f"the guide encodes {observed!r} observations shaped {tuple(expected)}, but the "
            f"observation is shaped {tuple(value.shape)}; use a guide built for this program "
            "(its resolution and channels), or resize the image."
        )
    return value


def _guide_draws(
    guide: Any,
    observation: Mapping[str, torch.Tensor],
    latents: Mapping[str, tuple[tuple[int, ...], Any]],
    num_samples: int,
    seed: int,
) -> dict[str, torch.Tensor]:
    """``num_samples`` independent draws of q(z | observation): ``site -> (num_samples,
    *event)`` on CPU, each checked to be finite and inside its site's support."""
    shapes = getattr(guide, "site_shapes", None)
    if isinstance(shapes, Mapping):  # an EncoderGuide says its sites up front
        problem = _site_mismatch(shapes, latents)
        if problem is not None:
            raise ValueError(problem)
    image = _guide_image(guide, observation)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        draws = guide.posterior(image.unsqueeze(0), num_samples, generator=generator)
    if not isinstance(draws, Mapping) or not draws:
        raise TypeError(
            "guide.posterior(images, num_samples) must return a non-empty dict site -> "
            f"(num_samples, B, *event) tensor, got {type(draws).__name__}."
        )
    got_shapes = {}
    for name, value in draws.items():
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise TypeError(
                f"guide.posterior returned {got} for site {name!r}; expected a tensor shaped "
                f"(num_samples, B, *event) = ({num_samples}, 1, ...)."
            )
        got_shapes[name] = tuple(value.shape[2:])
    problem = _site_mismatch(got_shapes, latents)
    if problem is not None:
        raise ValueError(problem)
    out = {}
    for name, value in draws.items():
        expected = (num_samples, 1, *latents[name][0])
        if tuple(value.shape) != expected:
            raise ValueError(
                f"guide.posterior returned shape {tuple(value.shape)} for site {name!r} given "
                f"one image and num_samples={num_samples}; expected {expected}."
            )
        value = value[:, 0].detach().cpu()
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise ValueError(
                f"the guide's draws of site {name!r} are not finite floating-point values "
                f"(dtype {value.dtype}); check the encoder (NaN weights or inputs)."
            )
        support = latents[name][1]
        inside = support.check(value.to(_support_device(support)))
        if not bool(inside.all()):
            raise ValueError(
                f"the guide drew values of site {name!r} outside its support ({support}); a guide "
                "for this program must map its draws into each site's support (EncoderGuide does, "
                "via biject_to)."
            )
        out[name] = value
    return out


def _support_device(support: Any) -> torch.device:
    """Where a constraint's bounds live (CPU for constraints without tensors)."""
    while hasattr(support, "base_constraint"):
        support = support.base_constraint
    for value in vars(support).values():
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def _resolve_guide_init(
    options: Mapping[str, Any],
    info: ProgramInfo,
    observation: Mapping[str, torch.Tensor],
    config: RunConfig,
    *,
    resumed: bool,
) -> Any:
    """``init="guide"`` -> a dict site -> ``(chains, *event)`` draws of q(z | observation) for the
    dict-init path (sites the guide leaves out start from the prior); other inits pass through."""
    init, guide = options["init"], options["guide"]
    if not (isinstance(init, str) and init == "guide"):
        if guide is not None and not config.guide_proposals:
            raise ValueError(
                f"guide=... is used only with init='guide' (start the chains from the guide's "
                f"posterior), but init={init!r}; pass init='guide', or leave guide out."
            )
        return init
    _check_guide(guide, "init='guide'")
    if resumed:
        return "prior"  # not used: the checkpoint holds the chains' state
    latents = _latent_sites(info.sample_sites, observation)
    return _guide_draws(guide, observation, latents, config.chains, _guide_seed(config.seed))


def _record_guide_init(posterior: Posterior, options: Mapping[str, Any]) -> Posterior:
    """The runner records ``init="given"`` for any dict of starting values; say it was the guide."""
    init = options["init"]
    if not (isinstance(init, str) and init == "guide") or options["resume"] is not None:
        return posterior
    settings = posterior.settings
    settings["init"] = "guide"
    settings["guide"] = type(options["guide"]).__name__
    return Posterior(
        posterior.samples,
        posterior.sample_stats,
        posterior.observation,
        method=posterior.method,
        settings=settings,
        n_simulations=posterior.n_simulations,
        wall_time=posterior.wall_time,
        prior=posterior.prior,
        timings=posterior.timings,
    )


_GUIDE_OPTIONS: dict[str, Any] = {
    "guide": None,
    "chains": 4,
    "draws": 1000,
    "seed": None,
    "summary": None,
    "distance": "standardized_l2",
    "pilot_size": 1000,
    "batch_size": None,
    "device": "cpu",
    "progress": True,
}


def _run_guide(program, observation, options, explicit) -> Posterior:
    """``method="guide"``: independent draws of the trained guide's q(z | observation).

    With ``summary=None`` nothing is simulated: ``distance`` is NaN, ``n_simulations`` 0, and the
    samples hold the sites the guide covers. With a summary, every draw is simulated (latents the
    guide leaves out drawn from their prior, the observation's noise fresh) and its distance to
    the observation recorded, as ABC would measure it; the samples then hold every latent.
    """
    start = time.perf_counter()
    guide = _check_guide(options["guide"], "method='guide'")
    chains = _check_int("chains", options["chains"], 1)
    draws = _check_int("draws", options["draws"], 1)
    seed = _check_seed(options["seed"])
    device = resolve_device(options["device"])
    progress = _check_bool("progress", options["progress"])
    summary_spec = options["summary"]
    if not (summary_spec is None or isinstance(summary_spec, str) or callable(summary_spec)):
        raise TypeError(
            f"summary must be None (no simulation), a summary name or a callable, got "
            f"{summary_spec!r}"
        )
    check_distance_spec(options["distance"])
    pilot_size = _check_int("pilot_size", options["pilot_size"], 0)
    batch_size = options["batch_size"]
    batch_size = 1024 if batch_size is None else _check_int("batch_size", batch_size, 1)
    simulate = summary_spec is not None
    if simulate and options["distance"] in (None, "standardized_l2") and pilot_size < 2:
        raise ValueError(
            f"pilot_size={pilot_size} is too small: the standardized distance takes its scale "
            "from a pilot of prior simulations; use pilot_size >= 2, or another distance."
        )
    # Without a summary nothing is simulated, so the program stays where it is.
    where = device if simulate else torch.device("cpu")
    program, info, trace = _traced_program(program, where, observation)
    latents = _latent_sites(info.sample_sites, observation)
    total = chains * draws
    values = _guide_draws(guide, observation, latents, total, _guide_seed(seed))
    guide_seconds = time.perf_counter() - start

    settings = {
        "guide": type(guide).__name__,
        "guide_sites": list(values),
        "chains": chains,
        "draws": draws,
        "seed": seed,
        "summary": summary_name(summary_spec),
        "distance": distance_name(options["distance"]) if simulate else None,
        "pilot_size": pilot_size if simulate else 0,
        "batch_size": batch_size,
        "device": str(device),
    }
    timings = {"guide": guide_seconds}
    prior = None
    n_simulations = 0
    if simulate:
        samples_flat, distance, prior, n_simulations, simulate_seconds = _simulate_guide_draws(
            program,
            trace,
            observation,
            values,
            summary=resolve_summary(summary_spec, list(observation)),
            distance_spec=options["distance"],
            pilot_size=pilot_size,
            batch_size=batch_size,
            device=device,
            seed=seed,
            progress=progress,
        )
        timings["simulate"] = simulate_seconds
    else:
        samples_flat = values
        distance = torch.full((total,), math.nan)
    samples = {
        name: value.reshape(chains, draws, *value.shape[1:]) for name, value in samples_flat.items()
    }
    stats = {
        "distance": distance.reshape(chains, draws).float(),
        "accepted": torch.ones(chains, draws, dtype=torch.bool),
        "epsilon": torch.full((chains, draws), math.nan),
        "n_simulations": torch.full((chains, draws), int(simulate), dtype=torch.int64),
    }
    wall_time = time.perf_counter() - start
    timings["total"] = wall_time
    return Posterior(
        samples,
        stats,
        dict(observation),
        method="guide",
        settings=settings,
        n_simulations=n_simulations,
        wall_time=wall_time,
        prior=prior,
        timings=timings,
    )


def _simulate_guide_draws(
    program: Callable[[], Any],
    trace: Any,
    observation: Mapping[str, torch.Tensor],
    values: Mapping[str, torch.Tensor],
    *,
    summary: Callable,
    distance_spec: Any,
    pilot_size: int,
    batch_size: int,
    device: torch.device,
    seed: int,
    progress: bool,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor] | None, int, float]:
    """Simulate each guide draw and measure its distance to the observation.

    Returns ``(samples site -> (N, *event), distance (N,), prior or None, simulations,
    seconds)`` on CPU; the distance is set up exactly as ABC's (a pilot of ``pilot_size`` prior
    simulations gives the standardized distance its scale, and becomes the prior group).
    """
    start = time.perf_counter()
    layout = build_layout(trace, observation, whiten_observed=False)
    master = torch.Generator().manual_seed(seed)
    noise_seed, simulator_seed = torch.randint(0, 2**62, (2,), generator=master).tolist()
    generator = torch.Generator(device=device).manual_seed(noise_seed)
    on_device = {name: value.to(device) for name, value in observation.items()}
    simulator = Simulator(program, layout, on_device, summary, device=device, seed=simulator_seed)
    dtype = layout.dtype
    total = next(iter(values.values())).shape[0]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=pilot_size + total, desc="guide", unit="sim", mininterval=0.5)
    pilot_values, pilot_summaries = [], []
    for begin in range(0, pilot_size, batch_size):
        size = min(batch_size, pilot_size - begin)
        u = torch.randn(size, layout.dim, generator=generator, device=device, dtype=dtype)
        _, batch_values, batch_summaries = simulator.run(u)
        pilot_values.append(batch_values)
        pilot_summaries.append(batch_summaries)
        if bar is not None:
            bar.update(size)
    summaries = torch.cat(pilot_summaries) if pilot_summaries else None
    simulator.set_distance(resolve_distance(distance_spec, summaries))
    simulated, distances = [], []
    for begin in range(0, total, batch_size):
        size = min(batch_size, total - begin)
        u = torch.randn(size, layout.dim, generator=generator, device=device, dtype=dtype)
        given = {
            name: value[begin : begin + size].to(device=device, dtype=layout.site(name).dtype)
            for name, value in values.items()
        }
        _, simulation = simulator.simulate_given(u, given)
        simulated.append(simulation.values.cpu())
        distances.append(simulation.distance.cpu())
        if bar is not None:
            bar.update(size)
    if bar is not None:
        bar.close()
    samples = layout.split_values(torch.cat(simulated))
    # The guided sites are the guide's draws exactly (the simulation's copy went through the
    # device and the layout's dtype).
    samples.update({name: value.to(samples[name].dtype) for name, value in values.items()})
    prior = None
    if pilot_values:
        prior = {
            name: value.unsqueeze(0)
            for name, value in layout.split_values(torch.cat(pilot_values).cpu()).items()
        }
    seconds = time.perf_counter() - start
    return samples, torch.cat(distances), prior, simulator.n_simulations, seconds


register_method(
    "abc_mcmc",
    _run_abc_mcmc,
    options=_ABC_MCMC_OPTIONS,
    description="ABC-MCMC with elliptical (pCN) proposals, adapted per chain",
)
register_method(
    "abc_slice",
    _run_abc_slice,
    options=_ABC_SLICE_OPTIONS,
    description="elliptical slice sampling on the ABC kernel",
)
register_method(
    "abc_rejection",
    _run_abc_rejection,
    options=_REJECTION_OPTIONS,
    description="ABC rejection: keep the closest fraction of prior simulations",
)
register_method(
    "abc_smc",
    _run_abc_smc,
    options=_ABC_SMC_OPTIONS,
    description="ABC-SMC: a particle population moved by the elliptical kernel as epsilon shrinks",
)
register_method(
    "abc_pmc",
    _run_abc_pmc,
    options=_ABC_PMC_OPTIONS,
    description="ABC-PMC: importance-weighted populations from a kernel mixture as epsilon shrinks",
)
register_method(
    "guide",
    _run_guide,
    options=_GUIDE_OPTIONS,
    description="amortized inference: independent draws of a trained guide's q(z | observation)",
)
