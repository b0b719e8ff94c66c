"""Checkpoints: weights plus the config that built them, written atomically.

A checkpoint is one ``torch.save`` file holding only plain content (dicts, lists, str, numbers,
``None`` and tensors), so ``torch.load(path, weights_only=True)`` reads it::

    {
        "format": "probgraphics-checkpoint",
        "format_version": 1,
        "kind": "dcign",                     # architecture name, see ``architectures()``
        "config_class": "DCIGNConfig",
        "config": {...},                     # config.to_dict()
        "state_dict": {name: tensor, ...},   # on CPU
        "probgraphics_version": "0.1.0",
        "torch_version": "2.13.0",
        "extra": {...} or None,              # the caller's plain metadata
    }

:func:`load_checkpoint` rebuilds the module from the config with the architecture's class and
loads the weights strictly; every way this can fail is a :class:`CheckpointError` naming the file
and saying what to do.

This module also holds :class:`NetConfig`, the base of every network config (``to_dict`` /
``from_dict`` and field validation), because a config must round-trip through a checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from probgraphics.atomic import PRIVATE, atomic_torch_save

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "NetConfig",
    "architectures",
    "load_checkpoint",
    "register_architecture",
    "save_checkpoint",
]

FORMAT = "probgraphics-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or was built for another architecture."""


# --------------------------------------------------------------------------------------------
# Config base
# --------------------------------------------------------------------------------------------


class NetConfig:
    """Base class of the frozen network config dataclasses.

    Gives ``to_dict()`` (plain, JSON- and ``weights_only``-compatible content: tuples become
    lists, nested objects with a ``to_dict`` become dicts) and ``from_dict(data)`` (the inverse;
    unknown keys are an error), plus small validators for ``__post_init__``.
    """

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict of str keys to lists, dicts, str, numbers and ``None``."""
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Rebuild a config from :meth:`to_dict` output; missing keys take their defaults."""
        if not isinstance(data, Mapping):
            raise TypeError(
                f"{cls.__name__}.from_dict expects a mapping of field names to values, got "
                f"{type(data).__name__}."
            )
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(
                f"{cls.__name__}.from_dict got unknown fields {unknown}; the known fields are "
                f"{names}. Was the config written by a newer probgraphics? Upgrade, or drop "
                "those keys."
            )
        return cls(**{key: cls._field_from_plain(key, value) for key, value in data.items()})

    @classmethod
    def _field_from_plain(cls, name: str, value: Any) -> Any:
        """Turn one plain field value back into its typed form (override for nested objects)."""
        return value

    # Validators: each reads the field, checks it, and (for sequences) stores the normalized
    # tuple back through object.__setattr__ because the dataclasses are frozen.

    def _check_int(self, name: str, minimum: int = 1) -> None:
        value = getattr(self, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(
                f"{type(self).__name__}.{name} must be an int >= {minimum}, got {value!r}."
            )

    def _check_int_tuple(self, name: str, minimum: int = 1, min_length: int = 1) -> None:
        value = getattr(self, name)
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise ValueError(
                f"{type(self).__name__}.{name} must be a sequence of ints >= {minimum}, got "
                f"{value!r}."
            )
        items = tuple(value)
        bad = [v for v in items if not isinstance(v, int) or isinstance(v, bool) or v < minimum]
        if bad or len(items) < min_length:
            raise ValueError(
                f"{type(self).__name__}.{name} must be a sequence of at least {min_length} "
                f"ints >= {minimum}, got {value!r}."
            )
        object.__setattr__(self, name, items)

    def _check_float(
        self, name: str, *, minimum: float | None = None, strict: bool = False
    ) -> None:
        value = getattr(self, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
        if ok and minimum is not None:
            ok = value > minimum if strict else value >= minimum
        if not ok:
            bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
            raise ValueError(
                f"{type(self).__name__}.{name} must be a finite number{bound}, got {value!r}."
            )
        object.__setattr__(self, name, float(value))

    def _check_bool(self, name: str) -> None:
        value = getattr(self, name)
        if not isinstance(value, bool):
            raise ValueError(f"{type(self).__name__}.{name} must be True or False, got {value!r}.")


def _to_plain(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_plain(v) for k, v in value.items()}
    return value


# --------------------------------------------------------------------------------------------
# Architecture registry
# --------------------------------------------------------------------------------------------


class _Architecture(NamedTuple):
    config_class: type
    module_class: Callable[[Any], nn.Module]


_ARCHITECTURES: dict[str, _Architecture] = {}
_BUILTINS_LOADED = False


def register_architecture(kind: str, config_class: type, module_class: type) -> None:
    """Make ``kind`` saveable and loadable: ``module_class(config)`` rebuilds the module.

    ``config_class`` must have ``to_dict`` and a classmethod ``from_dict`` (subclass
    :class:`NetConfig`). Registering the same triple twice is a no-op; a different one under an
    existing name is an error.
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"an architecture kind must be a non-empty str, got {kind!r}.")
    for attribute in ("to_dict", "from_dict"):
        if not hasattr(config_class, attribute):
            raise TypeError(
                f"config class {config_class!r} has no {attribute}(); subclass "
                "probgraphics.nets.NetConfig."
            )
    _load_builtins()
    entry = _Architecture(config_class, module_class)
    existing = _ARCHITECTURES.get(kind)
    if existing is not None and existing != entry:
        raise ValueError(
            f"architecture {kind!r} is already registered as {existing.module_class.__name__} "
            f"with {existing.config_class.__name__}; choose another name."
        )
    _ARCHITECTURES[kind] = entry


def architectures() -> dict[str, tuple[type, type]]:
    """The registered architectures: ``{kind: (config_class, module_class)}``."""
    _load_builtins()
    return {kind: (a.config_class, a.module_class) for kind, a in sorted(_ARCHITECTURES.items())}


def _load_builtins() -> None:
    # Imported lazily: the network modules import NetConfig from this module.
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    from probgraphics.nets.dcign import DCIGN, DCIGNConfig, DCIGNDecoder, DCIGNEncoder
    from probgraphics.nets.muvae import MuVAE, MuVAEConfig, ShapeEncoder, VoxelDecoder
    from probgraphics.nets.twin import TwinConfig, TwinEncoder, TwinTailed

    builtins = {
        "dcign": (DCIGNConfig, DCIGN),
        "dcign-encoder": (DCIGNConfig, DCIGNEncoder),
        "dcign-decoder": (DCIGNConfig, DCIGNDecoder),
        "muvae": (MuVAEConfig, MuVAE),
        "muvae-encoder": (MuVAEConfig, ShapeEncoder),
        "muvae-decoder": (MuVAEConfig, VoxelDecoder),
        "twin": (TwinConfig, TwinTailed),
        "twin-encoder": (TwinConfig, TwinEncoder),
    }
    for kind, (config_class, module_class) in builtins.items():
        _ARCHITECTURES.setdefault(kind, _Architecture(config_class, module_class))


def _architecture(kind: str) -> _Architecture:
    _load_builtins()
    if kind not in _ARCHITECTURES:
        raise CheckpointError(
            f"unknown architecture kind {kind!r}; known kinds are {sorted(_ARCHITECTURES)}. "
            "Register a new one with probgraphics.nets.register_architecture."
        )
    return _ARCHITECTURES[kind]


# --------------------------------------------------------------------------------------------
# Save
# --------------------------------------------------------------------------------------------


def _probgraphics_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("probgraphics")
    except (ImportError, PackageNotFoundError):
        import probgraphics

        return str(getattr(probgraphics, "__version__", "unknown"))


def _check_plain(value: Any, where: str) -> None:
    """Raise TypeError unless ``value`` is loadable by ``torch.load(weights_only=True)``."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has a non-str key {key!r}; use str keys.")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}; checkpoints hold only dicts with str keys, "
        "lists, tuples, str, numbers, None and tensors (so torch.load(weights_only=True) can "
        "read them). Convert it, e.g. with .to_dict() or .tolist()."
    )


def save_checkpoint(
    path: str | os.PathLike,
    module: nn.Module,
    config: NetConfig,
    *,
    kind: str,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``module``'s weights and the ``config`` that built it to ``path``, atomically.

    The file is written to a temporary file in the same folder, synced and renamed into place
    with ``os.replace`` (:func:`probgraphics.atomic.atomic_torch_save`; owner-only permissions,
    ``0o600``), so ``path`` holds either its old content or the whole new checkpoint, never a
    partial one. Tensors are moved to CPU (the module itself is not changed).

    Args:
        path: destination file (parent folders are created).
        module: the network; must be an instance of the class registered for ``kind``.
        config: the config it was built from (``module.config`` when the module has one must
            equal it).
        kind: architecture name, one of :func:`architectures` (e.g. ``"dcign"``).
        extra: optional plain metadata (str keys; lists, str, numbers, None, tensors), e.g.
            training settings or a code layout.

    Returns:
        The path written.
    """
    architecture = _architecture(kind)
    if not isinstance(module, nn.Module):
        raise TypeError(f"save_checkpoint expects an nn.Module, got {type(module).__name__}.")
    if not isinstance(module, architecture.module_class):
        raise CheckpointError(
            f"kind {kind!r} is a {architecture.module_class.__name__}, but the module is a "
            f"{type(module).__name__}; pass the kind that matches the module."
        )
    if not isinstance(config, architecture.config_class):
        raise CheckpointError(
            f"kind {kind!r} is built from a {architecture.config_class.__name__}, but the "
            f"config is a {type(config).__name__}."
        )
    module_config = getattr(module, "config", None)
    if module_config is not None and module_config != config:
        raise CheckpointError(
            "the config passed to save_checkpoint differs from module.config, so the checkpoint "
            "would not rebuild this module; pass module.config."
        )
    if extra is not None:
        if not isinstance(extra, Mapping):
            raise TypeError(f"extra must be a dict or None, got {type(extra).__name__}.")
        extra = dict(extra)
        _check_plain(extra, "extra")

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config_class": type(config).__name__,
        "config": config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "probgraphics_version": _probgraphics_version(),
        "torch_version": str(torch.__version__),
        "extra": extra,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_torch_save(path, payload, mode=PRIVATE)


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------


class LoadedCheckpoint(NamedTuple):
    """What :func:`load_checkpoint` returns; unpacks as ``module, config, extra``."""

    module: nn.Module
    config: NetConfig
    extra: dict[str, Any] | None


def _config_classes() -> dict[str, type]:
    _load_builtins()
    return {a.config_class.__name__: a.config_class for a in _ARCHITECTURES.values()}


def _describe_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, Any]) -> str:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{key}: checkpoint {tuple(found[key].shape)} vs architecture {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(found))
        if isinstance(found[key], torch.Tensor) and found[key].shape != expected[key].shape
    ]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected)):
        if items:
            shown = ", ".join(items[:5]) + (
                f" (and {len(items) - 5} more)" if len(items) > 5 else ""
            )
            parts.append(f"{label}: {shown}")
    if shapes:
        shown = "; ".join(shapes[:5]) + (
            f" (and {len(shapes) - 5} more)" if len(shapes) > 5 else ""
        )
        parts.append(f"shape mismatches: {shown}")
    return "; ".join(parts)


def load_checkpoint(
    path: str | os.PathLike,
    *,
    expected_kind: str | None = None,
    map_location: str | torch.device = "cpu",
) -> LoadedCheckpoint:
    """Rebuild the module saved by :func:`save_checkpoint` and load its weights.

    Args:
        path: the checkpoint file.
        expected_kind: if given, the checkpoint's architecture must be this kind.
        map_location: device for the loaded module's tensors (default CPU).

    Returns:
        ``(module, config, extra)`` as a :class:`LoadedCheckpoint`; the module is in eval mode
        and float32 as saved.

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is corrupt or not a probgraphics checkpoint, its kind is not
            ``expected_kind``, its config class is unknown, or its weights do not fit the
            architecture (the message lists missing/unexpected keys and shape mismatches).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {str(path)!r}; check the path (save one with "
            "probgraphics.nets.save_checkpoint)."
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"{str(path)!r} could not be read as a checkpoint (corrupt, truncated, or not a "
            f"torch file): {type(error).__name__}: {str(error)[:200]}. Re-save or re-download it."
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(path)!r} is a torch file but not a probgraphics checkpoint (no "
            f"format={FORMAT!r} entry); write checkpoints with probgraphics.nets.save_checkpoint."
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format version {version!r}; this probgraphics reads "
            f"up to {FORMAT_VERSION}. Upgrade probgraphics."
        )
    required = ("kind", "config_class", "config", "state_dict")
    absent = [key for key in required if key not in payload]
    if absent:
        raise CheckpointError(f"{str(path)!r} is missing the entries {absent}; it is corrupt.")
    kind = payload["kind"]
    if expected_kind is not None and kind != expected_kind:
        raise CheckpointError(
            f"{str(path)!r} holds a {kind!r} network, but a {expected_kind!r} was expected; "
            "load the checkpoint built for this architecture."
        )
    config_class_name = payload["config_class"]
    config_classes = _config_classes()
    if config_class_name not in config_classes:
        raise CheckpointError(
            f"{str(path)!r} was built from an unknown config class {config_class_name!r}; "
            f"known classes are {sorted(config_classes)}. Register its architecture with "
            "probgraphics.nets.register_architecture before loading."
        )
    architecture = _architecture(kind)
    if architecture.config_class.__name__ != config_class_name:
        raise CheckpointError(
            f"{str(path)!r} says kind {kind!r} but config class {config_class_name!r}; kind "
            f"{kind!r} is built from {architecture.config_class.__name__}. The file is "
            "inconsistent; re-save it."
        )
    try:
        config = architecture.config_class.from_dict(payload["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"{str(path)!r} holds a config that does not validate: {error}"
        ) from error
    module = architecture.module_class(config)
    state_dict = payload["state_dict"]
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{str(path)!r} has a state_dict that is not a dict; it is corrupt.")
    mismatch = _describe_mismatch(module.state_dict(), state_dict)
    if mismatch:
        raise CheckpointError(
            f"the weights in {str(path)!r} do not fit a {kind!r} "
            f"{type(module).__name__} built from its config ({mismatch}). The file was written "
            "for another architecture or edited; load it with the architecture that wrote it."
        )
    module.load_state_dict(state_dict, strict=True)
    module.to(map_location)
    module.eval()
    extra = payload.get("extra")
    return LoadedCheckpoint(module, config, extra)
