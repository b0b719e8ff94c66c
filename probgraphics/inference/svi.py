"""Training amortized guides with stochastic variational inference, for any program and guide.

:func:`train_guide` runs ``pyro.infer.SVI`` over a stream of observation batches:

* The **model** is the scene program conditioned on each batch at its observed site, under
  ``pyro.plate(plate_name, B)`` and ``poutine.scale(1 / B)`` (losses are per-observation averages,
  so learning rates do not depend on the batch size). Modules the model should train as well
  (e.g. a learned decoder) are registered with ``modules=``.
* The **guide** is called with the batch, ``guide(observation)``, and must sample the program's
  latents (an :class:`~probgraphics.nets.EncoderGuide` does, under a plate of the same name).
* The **loss** is ``"elbo"`` (``Trace_ELBO``), ``"sleep"`` (:func:`sleep_loss`, for programs whose
  renderer is not differentiable), any ``pyro.infer.ELBO``, or any callable
  ``loss(model, guide, observation, **extras) -> scalar tensor`` (SVI's custom-loss form).
  Batch fields other than the observation (a one-factor batch's ``factor``, a dataset batch's
  ``indices``) reach callable losses as ``extras``: this is how paper-specific procedures (the
  DC-IGN clamped procedure, the mu-VAE objective; see ``probgraphics.training``) plug in.

Training runs in its own scope of Pyro's param store (no clash with other runs' parameter names;
modules are trained in place). Checkpoints hold the modules' state, every Pyro parameter, the
optimizer state, the step, the loss history and every random generator's state, written
atomically; resuming from one continues exactly as if never interrupted, provided ``batches`` is
deterministic (a callable of the step, or an iterable that replays the same batches, e.g. one
built from a seed: the first ``step`` batches are skipped on resume).

**Data-parallel training.** Launched under ``torchrun --nproc_per_node N`` (or inside any
initialized ``torch.distributed`` process group), :func:`train_guide` trains with
``DistributedDataParallel``: every process takes the same global batch from ``batches``, keeps its
own contiguous ``1/N`` share of the rows, and the modules' gradients are averaged over the
processes, so a step equals a single-process step on the global batch (within float rounding; for
deterministic losses, and up to the Monte Carlo draws of stochastic ones, which each process draws
from its own stream). The process group uses gloo for CPU modules and NCCL for CUDA ones; rank 0
alone shows progress and writes checkpoints.

This module never imports ``probgraphics.nets``, ``programs`` or ``render``.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.optim
import pyro.poutine as poutine
import torch
import torch.distributed as dist
from pyro.infer import ELBO, SVI, Trace_ELBO
from pyro.infer.util import zero_grads
from pyro.poutine.messenger import Messenger
from torch import nn

from probgraphics.atomic import PRIVATE, atomic_torch_save
from probgraphics.inference.tracing import sample_sites

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "TRAINING_CHECKPOINT_FORMAT",
    "TrainResult",
    "load_training_checkpoint",
    "sleep_loss",
    "train_guide",
]

TRAINING_CHECKPOINT_FORMAT = "probgraphics-svi-checkpoint"
TRAINING_CHECKPOINT_VERSION = 1


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_guide` returns.

    Attributes:
        losses: the loss of every step from step 1 (including steps before a resume), each a
            per-observation average (float).
        wall_time: seconds spent training, summed over resumed runs.
        steps: steps completed in all.
        start_step: the step this call started from (0, or the resumed checkpoint's step).
        run_time: seconds this call ran (``wall_time`` less the time of earlier runs).
        params: the Pyro parameters that are not module parameters (e.g. a mu-VAE's per-item
            azimuth parameters), name -> constrained value (detached), as training left them.
        checkpoint: the training checkpoint written last, or ``None``. In a data-parallel run
            rank 0 writes it and every rank returns its path.
        world_size: processes that trained together (1 unless data-parallel).
        rank: this process's rank among them (0 unless data-parallel).
    """

    losses: tuple[float, ...]
    wall_time: float
    steps: int
    start_step: int = 0
    run_time: float = 0.0
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    checkpoint: Path | None = None
    world_size: int = 1
    rank: int = 0

    @property
    def seconds_per_step(self) -> float:
        """``run_time`` per step this call ran (``nan`` if none ran)."""
        ran = self.steps - self.start_step
        return self.run_time / ran if ran > 0 else float("nan")


# --------------------------------------------------------------------------------------------
# Model and guide wrappers
# --------------------------------------------------------------------------------------------


class _BatchedModel:
    """The program conditioned on a batch at its observed site, under a plate and a 1/B scale.

    Called as ``model(observation)`` with ``observation (B, *event)``, or
    ``model(None, batch_size=B)`` to simulate ``B`` scenes (the observed site is then sampled).
    """

    def __init__(
        self,
        program: Callable,
        observed_site: str,
        plate_name: str,
        modules: Mapping[str, nn.Module],
    ) -> None:
        self.program = program
        self.observed_site = observed_site
        self.plate_name = plate_name
        self.modules = dict(modules)

    def __call__(
        self, observation: torch.Tensor | None = None, *, batch_size: int | None = None, **_: Any
    ):
        for name, module in self.modules.items():
            pyro.module(name, module)
        size = _batch_size(observation, batch_size)
        model = self.program
        if observation is not None:
            model = poutine.condition(model, data={self.observed_site: observation})
        with poutine.scale(scale=1.0 / size), pyro.plate(self.plate_name, size, dim=-1):
            return model()


class _BatchedGuide:
    """The guide called with the batch, under a 1/B scale (the guide opens its own plate)."""

    def __init__(self, guide: Callable) -> None:
        self.guide = guide
        self.sites = getattr(guide, "sites", None)

    def __call__(
        self, observation: torch.Tensor | None = None, *, batch_size: int | None = None, **_: Any
    ):
        size = _batch_size(observation, batch_size)
        with poutine.scale(scale=1.0 / size):
            return self.guide(observation)


def _batch_size(observation: torch.Tensor | None, batch_size: int | None) -> int:
    if observation is not None:
        return int(observation.shape[0])
    if batch_size is None:
        raise ValueError("pass an observation batch or batch_size=<number of scenes>.")
    return int(batch_size)


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def _latent_values(trace: poutine.Trace, observed_site: str) -> dict[str, torch.Tensor]:
    return {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and name != observed_site
        and not site["is_observed"]
        and not site["infer"].get("_deterministic")
        and type(site["fn"]).__name__ != "_Subsample"
    }


def sleep_loss(
    model: Callable,
    guide: Callable,
    observation: torch.Tensor | None = None,
    *,
    batch_size: int | None = None,
    latents: Mapping[str, torch.Tensor] | None = None,
    **_: Any,
) -> torch.Tensor:
    """The sleep-phase loss ``E_{p(z, x)}[-log q(z | x)]`` (wake-sleep's "simulate, then fit q").

    The standard amortized objective when the program's renderer is not differentiable (the
    face program renders with numba on CPU): the program simulates scenes ``(z, x)`` without
    gradient and the guide is fit to recover ``z`` from ``x``. Its minimizer over ``q`` is the
    true posterior (it is the expected ``KL(p(z|x) || q(z|x))`` up to a constant).

    Args:
        model, guide: as :func:`train_guide` builds them (``model(None, batch_size=B)``
            simulates ``B`` scenes; the model has an ``observed_site`` attribute).
        observation: ignored unless ``latents`` is given (the scenes are simulated); its
            batch size is used when ``batch_size`` is not given.
        batch_size: number of scenes to simulate per step.
        latents: optional ``site -> (B, *event)`` true latents of ``observation`` (e.g. a
            training set's); then nothing is simulated.

    Returns:
        The scalar loss: ``-sum_i log q(z_i | x_i) / B``, differentiable in the guide's
        parameters.
    """
    observed_site = getattr(model, "observed_site", "image")
    if latents is None or observation is None:
        size = batch_size if batch_size is not None else _batch_size(observation, None)
        with torch.no_grad():
            trace = poutine.trace(model).get_trace(None, batch_size=size)
        latents = _latent_values(trace, observed_site)
        observation = trace.nodes[observed_site]["value"].detach()
    guide_trace = poutine.trace(poutine.condition(guide, data=dict(latents))).get_trace(observation)
    guided = [
        name
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample" and name in latents
    ]
    if not guided:
        raise ValueError(
            f"the guide samples none of the program's latent sites {sorted(latents)}; the sleep "
            "loss fits q(z | x) on those sites."
        )
    return -guide_trace.log_prob_sum()


#: Named losses: ``"elbo"`` builds a ``Trace_ELBO``; ``"sleep"`` is :func:`sleep_loss`.
LOSSES: dict[str, Callable[..., Any]] = {
    "elbo": lambda num_particles: Trace_ELBO(num_particles=num_particles),
    "sleep": lambda num_particles: sleep_loss,
}

#: Named optimizers (Pyro wrappers of the torch optimizers).
OPTIMIZERS: dict[str, Callable[[dict], pyro.optim.PyroOptim]] = {
    "adam": pyro.optim.Adam,
    "rmsprop": pyro.optim.RMSprop,
    "sgd": pyro.optim.SGD,
}


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


class _BatchSource:
    """``get(index)`` -> ``(observation or None, extras)`` for the 0-based step index."""

    def __init__(self, batches: Any, observed_site: str) -> None:
        self.observed_site = observed_site
        self._fixed: Any = None
        self._callable: Callable[[int], Any] | None = None
        self._iterable: Iterable | None = None
        self._iterator = None
        self._position = 0
        if isinstance(batches, bool):
            raise TypeError("batches must be an int, a tensor, an iterable or a callable.")
        if isinstance(batches, int):
            if batches < 1:
                raise ValueError(f"a batch size must be >= 1, got {batches}.")
            self._fixed = batches
        elif isinstance(batches, (torch.Tensor, Mapping)):
            self._fixed = batches
        elif callable(batches) and not hasattr(batches, "__iter__"):
            self._callable = batches
        elif hasattr(batches, "__iter__") or hasattr(batches, "__next__"):
            self._iterable = batches
        else:
            raise TypeError(
                "batches must be a batch size (int, for losses that simulate), a tensor of "
                "observations (B, *event), an iterable of batches, or a callable step -> batch; "
                f"got {type(batches).__name__}."
            )

    @property
    def observation_free(self) -> bool:
        return isinstance(self._fixed, int)

    def get(self, index: int) -> tuple[torch.Tensor | None, dict[str, Any]] | None:
        if isinstance(self._fixed, int):
            return None, {"batch_size": self._fixed}
        if self._fixed is not None:
            return self._split(self._fixed)
        if self._callable is not None:
            return self._split(self._callable(index))
        if self._iterator is None:
            self._iterator = iter(self._iterable)
        while self._position < index:  # skip batches already used (resume)
            if next(self._iterator, _END) is _END:
                return None
            self._position += 1
        item = next(self._iterator, _END)
        if item is _END:
            return None
        self._position += 1
        return self._split(item)

    def _split(self, item: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        if isinstance(item, torch.Tensor):
            return item, {}
        if hasattr(item, "_asdict"):
            item = item._asdict()
        if not isinstance(item, Mapping):
            raise TypeError(
                "each batch must be a tensor (B, *event), a dict or a NamedTuple holding the "
                f"observations under {self.observed_site!r} or 'images'; got "
                f"{type(item).__name__}."
            )
        for key in (self.observed_site, "images"):
            if key in item:
                extras = {k: v for k, v in item.items() if k != key}
                return item[key], extras
        raise KeyError(
            f"a batch has the fields {sorted(item)}, but none is the observation: name it "
            f"{self.observed_site!r} or 'images'."
        )


_END = object()


# --------------------------------------------------------------------------------------------
# Checkpoints and random state
# --------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "random": [version, list(internal), gauss],
        "numpy": [
            numpy_state[0],
            torch.from_numpy(numpy_state[1].astype(np.int64)),
            int(numpy_state[2]),
            int(numpy_state[3]),
            float(numpy_state[4]),
        ],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_save(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_torch_save(path, payload, mode=PRIVATE)


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint written by :func:`train_guide` (CPU tensors).

    Keys: ``step``, ``losses``, ``wall_time``, ``modules`` (name -> state dict), ``params``
    (Pyro parameter name -> unconstrained tensor), ``optimizer``, ``rng``, ``settings``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is corrupt, truncated, or not a training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no training checkpoint at {str(path)!r}; pass a path train_guide(checkpoint=...) "
            "wrote, or drop resume= to start afresh."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise ValueError(
            f"{str(path)!r} could not be read as a training checkpoint ({type(error).__name__}: "
            f"{str(error)[:200]}); it may be truncated or corrupt. Delete it and train afresh."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != TRAINING_CHECKPOINT_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a probgraphics training checkpoint (expected format "
            f"{TRAINING_CHECKPOINT_FORMAT!r}); network weights are loaded with "
            "probgraphics.nets.load_checkpoint instead."
        )
    if payload.get("version") != TRAINING_CHECKPOINT_VERSION:
        raise ValueError(
            f"{str(path)!r} has training-checkpoint version {payload.get('version')!r}; this "
            f"probgraphics reads version {TRAINING_CHECKPOINT_VERSION}."
        )
    return payload


class _RestoreParams(Messenger):
    """Restores saved Pyro parameters the first time each is declared after a resume.

    A module parameter (declared by ``pyro.module`` with the module's own ``nn.Parameter``) is
    overwritten in place, so the module keeps training its own tensors; any other parameter is
    put into the param store with the constraint its declaration gives, so the declaration
    returns the saved value exactly.
    """

    def __init__(self, saved: Mapping[str, torch.Tensor], device: torch.device) -> None:
        super().__init__()
        self.pending = dict(saved)
        self.device = device

    def _pyro_param(self, msg: dict) -> None:
        name = msg["args"][0] if msg["args"] else msg.get("name")
        if name not in self.pending:
            return
        saved = self.pending.pop(name)
        store = pyro.get_param_store()
        if name in store:
            return
        init = msg["args"][1] if len(msg["args"]) > 1 else None
        if isinstance(init, nn.Parameter):
            if init.shape != saved.shape:
                raise ValueError(
                    f"cannot resume: parameter {name!r} has shape {tuple(init.shape)} but the "
                    f"checkpoint holds {tuple(saved.shape)}; resume with the same networks."
                )
            with torch.no_grad():
                init.copy_(saved.to(device=init.device, dtype=init.dtype))
            return
        constraint = msg["kwargs"].get("constraint", torch.distributions.constraints.real)
        device = init.device if isinstance(init, torch.Tensor) else self.device
        value = saved.to(device).detach().clone().requires_grad_(True)
        store.set_state({"params": {name: value}, "constraints": {name: constraint}})


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _program_info(program: Callable, observed_site: str) -> tuple[tuple[int, ...], int]:
    """Trace the program once: the observed site's event shape and the program's plate depth."""
    sites, nesting = sample_sites(program, observed_site, hint="its observed site")
    return tuple(sites[observed_site]["value"].shape), nesting


def _resolve_loss(loss: Any, num_particles: int) -> tuple[Any, str]:
    if isinstance(loss, str):
        if loss not in LOSSES:
            raise ValueError(
                f"unknown loss {loss!r}; the named losses are {sorted(LOSSES)}, or pass a "
                "pyro.infer.ELBO or a callable loss(model, guide, observation, **extras)."
            )
        return LOSSES[loss](num_particles), loss
    if isinstance(loss, ELBO):
        return loss, type(loss).__name__
    if callable(loss):
        return loss, getattr(loss, "__name__", type(loss).__name__)
    raise TypeError(
        f"loss must be one of {sorted(LOSSES)}, a pyro.infer.ELBO or a callable, got "
        f"{type(loss).__name__}."
    )


def _resolve_optimizer(
    optimizer: Any, lr: float, options: Mapping[str, Any] | None
) -> tuple[pyro.optim.PyroOptim, str]:
    if isinstance(optimizer, pyro.optim.PyroOptim):
        return optimizer, type(optimizer).__name__
    if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
        raise ValueError(
            f"optimizer must be one of {sorted(OPTIMIZERS)} or a pyro.optim optimizer, got "
            f"{optimizer!r}."
        )
    if (
        isinstance(lr, bool)
        or not isinstance(lr, (int, float))
        or not (math.isfinite(lr) and lr > 0)
    ):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}; try 1e-3.")
    arguments = {"lr": float(lr), **dict(options or {})}
    return OPTIMIZERS[optimizer](arguments), optimizer


def _check_observation(
    observation: Any, event_shape: tuple[int, ...], step: int, device: torch.device | None
) -> torch.Tensor:
    if not isinstance(observation, torch.Tensor):
        raise TypeError(
            f"batch {step}: the observation must be a tensor (B, {event_shape}), got "
            f"{type(observation).__name__}."
        )
    if observation.dim() != len(event_shape) + 1 or tuple(observation.shape[1:]) != event_shape:
        raise ValueError(
            f"batch {step}: observations must be shaped (B, "
            f"{', '.join(map(str, event_shape))}) like the program's observed site, got "
            f"{tuple(observation.shape)}."
        )
    if observation.shape[0] < 1:
        raise ValueError(f"batch {step} is empty.")
    if not observation.is_floating_point():
        raise TypeError(
            f"batch {step}: observations must be floating tensors, got {observation.dtype}."
        )
    if not bool(torch.isfinite(observation).all()):
        raise ValueError(f"batch {step}: the observations have NaN/inf values; pass finite images.")
    return observation if device is None else observation.to(device)


def _trainable_modules(
    program: Any, guide: Any, modules: Mapping[str, nn.Module]
) -> dict[str, nn.Module]:
    found: dict[str, nn.Module] = {}
    seen: set[int] = set()
    candidates = [("guide", guide), ("program", program)]
    candidates += [(f"module:{name}", module) for name, module in modules.items()]
    for key, module in candidates:
        if isinstance(module, nn.Module) and id(module) not in seen:
            seen.add(id(module))
            found[key] = module
    return found


def _first_device(modules: Mapping[str, nn.Module]) -> torch.device | None:
    for module in modules.values():
        for tensor in module.parameters():
            return tensor.device
    return None


# --------------------------------------------------------------------------------------------
# Data-parallel training (torch.distributed)
# --------------------------------------------------------------------------------------------


class _TrainedModules(nn.Module):
    """Every trained module under one parent, so one ``DistributedDataParallel`` averages all
    their gradients. Its forward runs the step's loss, so the loss is computed inside DDP's
    forward and its backward outside it, as DDP requires."""

    def __init__(self, modules: Mapping[str, nn.Module]) -> None:
        super().__init__()
        # ModuleDict keys may not hold "." (user module names may).
        self.trained = nn.ModuleDict({f"module_{i}": m for i, m in enumerate(modules.values())})

    def forward(self, compute_loss: Callable[[], torch.Tensor]) -> torch.Tensor:
        return compute_loss()


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _rank_seed(seed: int, rank: int) -> int:
    """The seed of ``rank``: ``seed`` itself on rank 0 (a one-process run replays the plain
    run), an independent stream on the others (below 2**32, as numpy's seeding requires)."""
    if rank == 0:
        return seed
    state = np.random.SeedSequence([seed, rank]).generate_state(1, dtype=np.uint32)
    return int(state[0])


def _environment_world_size() -> int | None:
    """``WORLD_SIZE`` as torchrun sets it, or None when this process was not launched so."""
    text = os.environ.get("WORLD_SIZE", "")
    return int(text) if text.isdigit() else None


class _DataParallel:
    """One data-parallel training run: the process group, the DDP wrapper, batch sharding,
    the step and the agreement between ranks.

    Every collective here is entered by every rank in the same order: each step the ranks agree
    that all have a batch of one global size (one all-reduce), take a DDP forward/backward (the
    gradient all-reduces), agree on the loss and on parameters DDP does not cover (one
    all-reduce), and, with a callback, on stopping (one more).
    """

    def __init__(self, device: torch.device | None) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.backend = str(dist.get_backend())
        self.device = device or torch.device("cpu")
        # NCCL reduces CUDA tensors only; gloo takes CPU ones.
        self.collective_device = self.device if self.backend == "nccl" else torch.device("cpu")
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        self._module_parameters: set[int] = set()

    # ------------------------------------------------------------------ set-up

    @classmethod
    def open(cls, mode: bool | None, device: torch.device | None) -> _DataParallel | None:
        """The run's data-parallel context, or None for a single-process run.

        ``mode`` None: data-parallel inside an initialized process group, or when launched by
        torchrun with ``WORLD_SIZE`` > 1: the group is then initialized here, kept for later
        runs of the process (initializing a group again over torchrun's store after destroying
        one can reach stale addresses), and destroyed at exit. True: the same, but a plain
        launch is an error. False: single process.
        """
        if mode is False:
            return None
        available = dist.is_available()
        initialized = available and dist.is_initialized()
        launched = _environment_world_size()
        if not initialized and (launched is None or (mode is None and launched <= 1)):
            if mode:
                raise RuntimeError(
                    "distributed=True trains data-parallel, but no torch.distributed process "
                    "group is initialized and this process was not launched by torchrun "
                    "(WORLD_SIZE is not set); launch with `torchrun --nproc_per_node N "
                    "script.py`, call torch.distributed.init_process_group first, or pass "
                    "distributed=None."
                )
            return None
        if not available:
            raise RuntimeError(
                "data-parallel training needs torch.distributed, which this torch build lacks; "
                "pass distributed=False to train in one process."
            )
        if not initialized:
            cls._check_launch(device)
            if device is not None and device.type == "cuda":
                torch.cuda.set_device(device)
                dist.init_process_group("nccl", device_id=device)
            else:
                dist.init_process_group("gloo")
            atexit.register(_destroy_process_group)
        context = cls(device)
        if context.backend == "nccl" and context.device.type != "cuda":
            context.close()
            raise ValueError(
                "the process group uses NCCL, which reduces CUDA tensors only, but the trained "
                f"modules are on {context.device}; move them to this rank's GPU, or initialize "
                "the group with backend='gloo' for CPU training."
            )
        return context

    @staticmethod
    def _check_launch(device: torch.device | None) -> None:
        """Under torchrun each rank must train on its own GPU (NCCL refuses two ranks on one).
        Where a process sees several GPUs, rank ``LOCAL_RANK`` takes ``cuda:LOCAL_RANK``; where
        the batch system shows each process one GPU (``CUDA_VISIBLE_DEVICES``), any is its own.
        """
        if device is None or device.type != "cuda":
            return
        visible = torch.cuda.device_count()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        index = device.index if device.index is not None else torch.cuda.current_device()
        if visible > 1 and index != local_rank % visible:
            raise ValueError(
                f"this process has LOCAL_RANK {local_rank} and sees {visible} GPUs, but its "
                f"modules are on cuda:{index}; each process trains on its own GPU: move the "
                "guide and modules to torch.device('cuda', int(os.environ['LOCAL_RANK'])) "
                "before train_guide."
            )

    def wrap(self, modules: Mapping[str, nn.Module]) -> None:
        """Wrap the trained modules in DDP; this broadcasts rank 0's weights to every rank."""
        parent = _TrainedModules(modules)
        parameters = [p for p in parent.parameters() if p.requires_grad]
        if not parameters:
            raise ValueError(
                "data-parallel training averages the gradients of nn.Module parameters, but the "
                "guide, the program and modules= have none that require gradients; pass the "
                "guide as an nn.Module (e.g. an EncoderGuide)."
            )
        self._module_parameters = {id(p) for p in parent.parameters()}
        device_ids = [self.device] if self.device.type == "cuda" else None
        # Losses may leave parameters unused (a program module under the sleep loss).
        self.ddp = nn.parallel.DistributedDataParallel(
            parent, device_ids=device_ids, find_unused_parameters=True
        )

    def close(self) -> None:
        """Release the DDP wrapper (its reducer holds the group's communicators)."""
        self.ddp = None

    # ------------------------------------------------------------------ collectives

    def _sum(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.collective_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.cpu().tolist()

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every rank, in rank order (on every rank)."""
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    # ------------------------------------------------------------------ steps

    def shard(
        self, batch: tuple[torch.Tensor | None, dict[str, Any]] | None, step: int
    ) -> tuple[torch.Tensor | None, dict[str, Any]] | None:
        """This rank's rows of the global batch (None when every rank's batches ran out)."""
        if batch is None:
            size = 0
        else:
            observation, extras = batch
            size = int(observation.shape[0]) if observation is not None else extras["batch_size"]
        have, total, squares = self._sum([float(batch is not None), size, size * size])
        if have == 0:
            return None
        if have < self.world_size:
            raise RuntimeError(
                f"at step {step} the batches ran out on {self.world_size - int(have)} of "
                f"{self.world_size} processes only; every process must get the same global "
                "batches (build batches from a seed, not from the rank)."
            )
        if squares * self.world_size != total * total:
            raise ValueError(
                f"at step {step} the processes got global batches of different sizes (this one "
                f"{size}); every process must get the same global batch, and train_guide keeps "
                "each process's share of it."
            )
        if size % self.world_size:
            raise ValueError(
                f"the global batch of step {step} has {size} rows, which {self.world_size} "
                f"processes cannot share equally; use a batch size divisible by "
                f"{self.world_size}."
            )
        share = size // self.world_size
        begin, end = self.rank * share, (self.rank + 1) * share
        assert batch is not None
        observation, extras = batch
        if observation is None:
            return None, {**extras, "batch_size": share}
        return observation[begin:end], _shard_extras(extras, size, begin, end)

    def step(
        self,
        compute_loss: Callable[[], torch.Tensor],
        optim: pyro.optim.PyroOptim,
        step: int,
    ) -> float:
        """One optimizer step on gradients averaged over the ranks; returns the global loss
        (the mean of the ranks' per-observation losses)."""
        assert self.ddp is not None
        with poutine.trace(param_only=True) as capture:
            loss = self.ddp(compute_loss)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(
                f"the loss must return a scalar tensor, got {type(loss).__name__}"
                + (f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else "")
            )
        if loss.requires_grad:
            loss.backward()
        nodes = capture.trace.nodes
        loose = sorted(
            name
            for name, site in nodes.items()
            if id(site["value"].unconstrained()) not in self._module_parameters
        )
        total, loose_total = self._sum([float(loss.detach()), float(len(loose))])
        if loose_total:
            raise ValueError(
                f"data-parallel training averages the gradients of nn.Module parameters only, "
                f"but the Pyro parameters {loose or '(on other ranks)'} belong to no module; "
                "make them nn.Parameters of a module passed in modules=..., or train in one "
                "process (distributed=False)."
            )
        params = {site["value"].unconstrained() for site in nodes.values()}
        optim(params)
        zero_grads(params)
        return total / self.world_size

    def agree_to_stop(self, stop: bool) -> bool:
        """True on every rank when the callback asked any rank to stop."""
        (count,) = self._sum([float(stop)])
        return count > 0

    def agree(self, fine: bool) -> bool:
        """True on every rank when every rank says ``fine``."""
        (count,) = self._sum([float(fine)])
        return count == self.world_size


def _shard_extras(extras: Mapping[str, Any], size: int, begin: int, end: int) -> dict[str, Any]:
    """Rows ``begin:end`` of every tensor in ``extras`` whose first dim is the batch's ``size``
    (in nested dicts too, e.g. a sleep batch's ``latents``); other values as they are."""
    out: dict[str, Any] = {}
    for key, value in extras.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size:
            out[key] = value[begin:end]
        elif isinstance(value, Mapping):
            out[key] = _shard_extras(value, size, begin, end)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train_guide(
    program: Callable,
    guide: Callable,
    batches: Any,
    *,
    steps: int,
    loss: str | ELBO | Callable = "elbo",
    optimizer: str | pyro.optim.PyroOptim = "adam",
    lr: float = 1e-3,
    optimizer_options: Mapping[str, Any] | None = None,
    observed: str | None = None,
    modules: Mapping[str, nn.Module] | None = None,
    plate_name: str | None = None,
    num_particles: int = 1,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    resume: str | os.PathLike | None = None,
    seed: int | None = None,
    callback: Callable[[int, float], bool | None] | None = None,
    distributed: bool | None = None,
) -> TrainResult:
    """Fit an amortized guide (and optionally model-side networks) with SVI.

    Args:
        program: the scene program (a Pyro model taking no arguments).
        guide: a callable ``guide(observation)`` sampling the program's latents for a batch
            ``(B, *event)`` (e.g. :class:`probgraphics.nets.EncoderGuide`); an ``nn.Module``
            guide registers its parameters with ``pyro.module`` when called.
        batches: the data, one batch per step: an iterable of batches, a callable
            ``step_index -> batch`` (0-based; makes resuming O(1)), a tensor (the same batch
            every step), or an int batch size for losses that simulate (``"sleep"``). A batch
            is a tensor of observations ``(B, *event)`` or a dict / NamedTuple holding them
            under the observed site's name or ``"images"``; its other fields are passed to
            callable losses as keyword arguments.
        steps: total number of steps (a resumed run continues up to it), >= 1.
        loss: ``"elbo"``, ``"sleep"``, a ``pyro.infer.ELBO``, or a callable
            ``loss(model, guide, observation, **extras) -> scalar tensor``.
        optimizer: ``"adam"``, ``"rmsprop"``, ``"sgd"`` or a ``pyro.optim`` optimizer.
        lr: learning rate for a named optimizer.
        optimizer_options: other arguments of the named optimizer (e.g. ``{"alpha": 0.9}``).
        observed: the program's observed site; default ``guide.observed`` or ``"image"``.
        modules: model-side networks to train too, name -> module (registered with
            ``pyro.module`` in the model), e.g. ``{"decoder": net.decoder}``.
        plate_name: the batch plate's name; default ``guide.plate_name`` or ``"batch"``.
        num_particles: particles of the named ``"elbo"`` loss.
        progress: show a progress bar.
        checkpoint: path of the training checkpoint, written atomically every
            ``checkpoint_every`` steps and at the end.
        checkpoint_every: steps between checkpoints, >= 1.
        resume: a training checkpoint to continue from (may equal ``checkpoint``); the
            modules, parameters, optimizer and random state are restored, and so is a callable
            loss's own state when it has ``state_dict()`` / ``load_state_dict(state)`` (e.g. a
            discriminator it trains). A named optimizer continues at this call's ``lr`` (its
            moment estimates are kept), so a run can be resumed at a lower rate.
        seed: seeds torch, numpy and Python's generators at the start (not on resume). With a
            seed or a resume the caller's global random state is restored afterwards.
        callback: ``callback(step, loss)`` after every step; returning ``True`` stops training
            (a checkpoint is written first). Data-parallel: called on every rank with the
            global loss; any rank returning ``True`` stops all.
        distributed: ``None`` (default): train data-parallel when this process runs in an
            initialized ``torch.distributed`` process group, or was launched by ``torchrun``
            with ``WORLD_SIZE`` > 1 (the group is then initialized here, gloo for CPU modules,
            NCCL for CUDA ones, kept for later calls and destroyed at exit); otherwise in one
            process. ``True``:
            data-parallel, and an error without a group or torchrun. ``False``: one process.
            Data-parallel, every rank must build the same program, guide and ``batches`` (the
            global batches; each rank keeps rows ``rank * B/N : (rank + 1) * B/N`` of the
            observation and of every batch tensor whose first dim is ``B``; an int batch size
            ``B`` has each rank simulate ``B/N`` scenes), with ``B`` divisible by the number of
            processes ``N``; the modules' weights start from rank 0's (DDP broadcasts them) and
            their gradients are averaged, so a step equals a one-process step on the global
            batch. Each rank draws its random numbers from its own stream (``seed`` on rank 0,
            streams derived from it on the others), and batch-norm statistics are per rank, so
            stochastic losses and batch-norm networks match a one-process run in distribution,
            not draw for draw. Only rank 0 shows progress and writes checkpoints (holding every
            rank's random state; resume with the same number of processes). Pyro parameters
            outside any ``nn.Module`` are refused (their gradients would not be averaged). On
            CUDA each rank's modules must be on its own GPU (``cuda:LOCAL_RANK`` where a process
            sees several).

    Returns:
        A :class:`TrainResult`. The guide's and modules' weights are trained in place.

    Raises:
        ValueError / TypeError: bad arguments, a batch of the wrong shape or with NaN/inf, a
            non-finite loss (lower the learning rate), an unreadable resume checkpoint.
    """
    if not callable(program):
        raise TypeError(f"program must be a callable Pyro model, got {type(program).__name__}.")
    if not callable(guide):
        raise TypeError(f"guide must be a callable Pyro guide, got {type(guide).__name__}.")
    for label, value in (
        ("steps", steps),
        ("checkpoint_every", checkpoint_every),
        ("num_particles", num_particles),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be an int >= 1, got {value!r}.")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {seed!r}.")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}.")
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(
            f"distributed must be None (data-parallel under torchrun), True or False, got "
            f"{distributed!r}."
        )
    modules = dict(modules or {})
    for name, module in modules.items():
        if not isinstance(module, nn.Module):
            raise TypeError(f"modules[{name!r}] must be an nn.Module, got {type(module).__name__}.")
    observed_site = observed or getattr(guide, "observed", None) or "image"
    plate = plate_name or getattr(guide, "plate_name", None) or "batch"
    event_shape, nesting = _program_info(program, observed_site)
    loss_fn, loss_name = _resolve_loss(loss, num_particles)
    optim, optimizer_name = _resolve_optimizer(optimizer, lr, optimizer_options)
    source = _BatchSource(batches, observed_site)
    is_elbo = isinstance(loss_fn, ELBO)
    if is_elbo and source.observation_free:
        raise ValueError(
            f"the {loss_name} loss needs observations, but batches is a batch size; pass "
            "batches of images, or use loss='sleep', which simulates them."
        )
    if is_elbo and loss_fn.max_plate_nesting == float("inf"):
        # A fixed nesting: otherwise Pyro guesses it by running model and guide once on the
        # first step, which draws random numbers and would make a resumed run differ.
        loss_fn.max_plate_nesting = nesting + 1

    trainable = _trainable_modules(program, guide, modules)
    device = _first_device(trainable)
    model_wrapper = _BatchedModel(program, observed_site, plate, modules)
    guide_wrapper = _BatchedGuide(guide)
    settings = {
        "loss": loss_name,
        "optimizer": optimizer_name,
        "lr": float(lr),
        "observed": observed_site,
        "plate_name": plate,
        "seed": seed,
        "steps": steps,
    }

    saved = load_training_checkpoint(resume) if resume is not None else None
    checkpoint_path = Path(checkpoint) if checkpoint is not None else None
    isolate = seed is not None or saved is not None
    caller_rng = _rng_state() if isolate else None
    store = pyro.get_param_store()
    parallel = _DataParallel.open(distributed, device)
    world_size = parallel.world_size if parallel is not None else 1
    rank = parallel.rank if parallel is not None else 0
    lead = rank == 0  # shows progress, warns and writes checkpoints
    if parallel is not None:
        settings["world_size"] = world_size
    run_start = time.perf_counter()

    def write_checkpoint(step: int) -> Path | None:
        """Rank 0 writes the checkpoint (every rank's random state gathered into it); every
        rank returns once it is on disk, so any rank may read it next."""
        elapsed = previous_time + time.perf_counter() - run_start
        states = parallel.gather(_rng_state()) if parallel is not None else None
        failure: BaseException | None = None
        if lead:
            payload = _payload(step, losses, elapsed, trainable, optim, settings, loss_fn)
            payload["world_size"] = world_size
            if states is not None:
                payload["rng_by_rank"] = states
            try:
                _atomic_save(checkpoint_path, payload)
            except Exception as error:  # re-raised below, once the other ranks know
                failure = error
        if parallel is not None and not parallel.agree(failure is None) and failure is None:
            raise RuntimeError(
                f"rank 0 could not write the checkpoint {str(checkpoint_path)!r}; see its error."
            )
        if failure is not None:
            raise failure
        return checkpoint_path

    try:
        if (
            parallel is not None
            and is_elbo
            and not callable(getattr(loss_fn, "differentiable_loss", None))
        ):
            raise ValueError(
                f"data-parallel training computes the loss inside DDP's forward with "
                f"{type(loss_fn).__name__}.differentiable_loss, which it does not implement; use "
                "Trace_ELBO, TraceMeanField_ELBO or TraceEnum_ELBO, or distributed=False."
            )
        with store.scope():
            if saved is not None:
                _check_resume_world_size(saved, world_size, resume)
                start_step, losses, previous_time = _restore(
                    saved,
                    trainable,
                    optim,
                    loss_fn,
                    lr=float(lr) if isinstance(optimizer, str) else None,
                )
                if parallel is not None:
                    _set_rng_state(saved["rng_by_rank"][rank])
                restorer: Messenger | None = _RestoreParams(
                    saved["params"], device or torch.device("cpu")
                )
            else:
                start_step, losses, previous_time, restorer = 0, [], 0.0, None
                if seed is not None:
                    pyro.set_rng_seed(_rank_seed(seed, rank))
            if parallel is not None:
                parallel.wrap(trainable)
            svi = SVI(model_wrapper, guide_wrapper, optim, loss=loss_fn)
            bar = _progress_bar(progress and lead, steps, start_step, loss_name)
            step = start_step
            last_written: Path | None = None
            try:
                for step in range(start_step + 1, steps + 1):
                    batch = source.get(step - 1)
                    if batch is not None and batch[0] is not None:
                        batch = (_check_observation(batch[0], event_shape, step, device), batch[1])
                    if parallel is not None:
                        batch = parallel.shard(batch, step)
                    if batch is None:
                        if lead:
                            warnings.warn(
                                f"batches ran out after {step - 1} steps of the {steps} asked "
                                "for; training stopped there.",
                                stacklevel=2,
                            )
                        step -= 1
                        break
                    observation, extras = batch
                    with restorer if restorer is not None else contextlib.nullcontext():
                        if parallel is not None:
                            value = parallel.step(
                                _loss_closure(
                                    loss_fn, is_elbo, model_wrapper, guide_wrapper, batch
                                ),
                                optim,
                                step,
                            )
                        elif is_elbo:
                            value = svi.step(observation)
                        else:
                            value = svi.step(observation, **extras)
                    value = float(value)
                    if not math.isfinite(value):
                        raise FloatingPointError(
                            f"the loss is {value} at step {step}; training diverged. Lower the "
                            f"learning rate (lr={lr}) or check the batches."
                        )
                    losses.append(value)
                    if bar is not None:
                        bar.update(1)
                        if step % 10 == 0 or step == steps:
                            bar.set_postfix(loss=f"{value:.4g}")
                    stop = bool(callback(step, value)) if callback is not None else False
                    if parallel is not None and callback is not None:
                        stop = parallel.agree_to_stop(stop)
                    due = step % checkpoint_every == 0 or step == steps or stop
                    if checkpoint_path is not None and due:
                        last_written = write_checkpoint(step)
                    if stop:
                        break
            finally:
                if bar is not None:
                    bar.close()
            if checkpoint_path is not None and last_written is None and step > start_step:
                last_written = write_checkpoint(step)
            params = {
                name: value.detach().clone() for name, value in store.items() if "$$$" not in name
            }
    finally:
        if parallel is not None:
            parallel.close()
        if caller_rng is not None:
            _set_rng_state(caller_rng)
    run_time = time.perf_counter() - run_start
    return TrainResult(
        losses=tuple(losses),
        wall_time=previous_time + run_time,
        steps=step,
        start_step=start_step,
        params=params,
        checkpoint=last_written,
        run_time=run_time,
        world_size=world_size,
        rank=rank,
    )


def _loss_closure(
    loss_fn: Any,
    is_elbo: bool,
    model: Callable,
    guide: Callable,
    batch: tuple[torch.Tensor | None, dict[str, Any]],
) -> Callable[[], torch.Tensor]:
    """The step's differentiable loss as a closure, for DDP's forward. SVI.step computes the
    same: ``ELBO.loss_and_grads`` differentiates the surrogate ``differentiable_loss`` returns,
    and a callable loss's tensor is differentiated as it is."""
    observation, extras = batch

    def compute() -> torch.Tensor:
        if is_elbo:
            return loss_fn.differentiable_loss(model, guide, observation)
        return loss_fn(model, guide, observation, **extras)

    return compute


def _check_resume_world_size(saved: Mapping[str, Any], world_size: int, path: Any) -> None:
    written_by = int(saved.get("world_size", 1))
    if written_by != world_size:
        launch = f"torchrun --nproc_per_node {written_by}" if written_by > 1 else "one process"
        raise ValueError(
            f"cannot resume from {str(path)!r}: it was written by a run of {written_by} "
            f"process(es) and holds each one's random state, but this run has {world_size}; "
            f"resume with {launch}."
        )


def _payload(
    step: int,
    losses: list[float],
    wall_time: float,
    modules: Mapping[str, nn.Module],
    optim: pyro.optim.PyroOptim,
    settings: dict[str, Any],
    loss_fn: Any,
) -> dict[str, Any]:
    store = pyro.get_param_store()
    payload = {
        "format": TRAINING_CHECKPOINT_FORMAT,
        "version": TRAINING_CHECKPOINT_VERSION,
        "step": step,
        "losses": list(losses),
        "wall_time": float(wall_time),
        "modules": {
            key: {k: v.detach().cpu() for k, v in module.state_dict().items()}
            for key, module in modules.items()
        },
        "params": {name: value.detach().cpu() for name, value in store.named_parameters()},
        "optimizer": optim.get_state(),
        "rng": _rng_state(),
        "settings": dict(settings),
    }
    if _has_state(loss_fn):
        payload["loss_state"] = loss_fn.state_dict()
    return payload


def _has_state(loss_fn: Any) -> bool:
    # Pyro's ELBOs keep no state between steps; a callable loss may (a discriminator).
    return (
        not isinstance(loss_fn, ELBO)
        and callable(getattr(loss_fn, "state_dict", None))
        and callable(getattr(loss_fn, "load_state_dict", None))
    )


def _restore(
    saved: Mapping[str, Any],
    modules: Mapping[str, nn.Module],
    optim: pyro.optim.PyroOptim,
    loss_fn: Any,
    *,
    lr: float | None = None,
) -> tuple[int, list[float], float]:
    states = saved["modules"]
    missing = sorted(set(modules) - set(states))
    extra = sorted(set(states) - set(modules))
    if missing or extra:
        raise ValueError(
            f"cannot resume: the checkpoint holds the modules {sorted(states)} but this run "
            f"trains {sorted(modules)}; resume with the same program, guide and modules."
        )
    for key, module in modules.items():
        try:
            module.load_state_dict(states[key])
        except RuntimeError as error:
            raise ValueError(
                f"cannot resume: the checkpoint's {key!r} weights do not fit this run's module "
                f"({str(error)[:300]}); resume with the same architecture."
            ) from None
    optimizer_state = saved["optimizer"]
    if lr is not None:
        # torch's load_state_dict restores each parameter group's lr; the run's own lr wins, so
        # a resumed run can continue at a lower rate (the moment estimates are kept).
        optimizer_state = {
            name: {
                **state,
                "param_groups": [{**group, "lr": lr} for group in state["param_groups"]],
            }
            for name, state in optimizer_state.items()
        }
    optim.set_state(optimizer_state)
    if _has_state(loss_fn):
        try:
            loss_fn.load_state_dict(saved.get("loss_state", {}))
        except (KeyError, RuntimeError, ValueError) as error:
            raise ValueError(
                f"cannot resume: the checkpoint's loss state does not fit this run's loss "
                f"({str(error)[:300]}); resume with the same loss settings."
            ) from None
    _set_rng_state(saved["rng"])
    return int(saved["step"]), [float(v) for v in saved["losses"]], float(saved["wall_time"])


def _progress_bar(progress: bool, steps: int, start: int, label: str):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency; train silently without it
        return None
    return tqdm(total=steps, initial=start, desc=f"train ({label})", unit="step")
