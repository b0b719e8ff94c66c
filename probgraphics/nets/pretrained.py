"""Bundled trained networks, loaded by name.

The weights live in ``probgraphics/nets/weights/<name>.pt`` (the checkpoint format of
:mod:`probgraphics.nets.checkpoint`), each with a model card ``<name>.md`` / ``<name>.json``
written by the training recipe that produced it (:mod:`probgraphics.training`; the command is in
the card).

>>> import probgraphics as pg                                          # doctest: +SKIP
>>> summary = pg.nets.pretrained("dcign-face-64")                      # an EncoderSummary
>>> pose = summary.subset("azimuth", "elevation", "light")
>>> net = pg.nets.pretrained("dcign-face-64", kind="model")            # the whole DC-IGN
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from probgraphics.nets.checkpoint import CheckpointError, load_checkpoint
from probgraphics.nets.summaries import EncoderSummary

__all__ = [
    "WEIGHTS_DIR",
    "BUNDLED_ARCHITECTURES",
    "available",
    "model_card",
    "pretrained",
    "pretrained_summary",
    "weights_path",
]

#: The folder of the bundled weights.
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

#: The architecture each bundled name must hold (a file of another kind under that name is an
#: error, not a surprise later).
BUNDLED_ARCHITECTURES: dict[str, str] = {
    "dcign-face-64": "dcign",
    "face-guide-64": "dcign-encoder",
    "muvae-shapes": "muvae",
}

#: Architecture kinds that have an encoder (usable as ``kind="summary"`` or ``"encoder"``).
_WITH_ENCODER = ("dcign", "dcign-encoder", "muvae", "muvae-encoder", "twin", "twin-encoder")
_KINDS = ("summary", "encoder", "model")


def _directory(directory: str | os.PathLike | None) -> Path:
    return WEIGHTS_DIR if directory is None else Path(directory)


def available(directory: str | os.PathLike | None = None) -> list[str]:
    """Names of the networks in ``directory`` (default: the bundled weights), sorted."""
    folder = _directory(directory)
    if not folder.is_dir():
        return []
    return sorted(path.stem for path in folder.glob("*.pt") if path.is_file())


def weights_path(name: str, directory: str | os.PathLike | None = None) -> Path:
    """The checkpoint file of network ``name``.

    Raises:
        KeyError: no network of that name (the message lists the available ones).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty str, got {name!r}.")
    names = available(directory)
    if name not in names:
        folder = _directory(directory)
        hint = (
            f" Train it with `probgraphics train {name}` (see probgraphics.training.RECIPES) "
            f"and place {name}.pt in {str(folder)!r}."
            if name in BUNDLED_ARCHITECTURES
            else ""
        )
        raise KeyError(
            f"no pretrained network named {name!r}; available: {names or 'none'} (in "
            f"{str(folder)!r}).{hint}"
        )
    return _directory(directory) / f"{name}.pt"


def model_card(name: str, directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """The JSON model card of network ``name`` (how it was trained, its measurements), or an
    empty dict when it has none."""
    path = weights_path(name, directory).with_suffix(".json")
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"the model card {str(path)!r} is not valid JSON: {error}") from None


def pretrained(
    name: str,
    *,
    kind: str = "summary",
    device: str | torch.device | None = None,
    directory: str | os.PathLike | None = None,
) -> EncoderSummary | nn.Module:
    """Load a bundled network by name.

    Args:
        name: one of :func:`available` (e.g. ``"dcign-face-64"``, ``"muvae-shapes"``).
        kind: what to return: ``"summary"`` (default; the trained encoder as an
            :class:`EncoderSummary`, for ``infer(..., summary=...)``), ``"encoder"`` (the
            encoder module) or ``"model"`` (the whole network, e.g. for ``programs.dcign``).
        device: where to put the network (default CPU).
        directory: load from this folder instead of the bundled weights.

    Returns:
        The summary or module, in eval mode, float32, on ``device``.

    Raises:
        KeyError: unknown name (lists the available ones).
        CheckpointError: the file is corrupt, or holds another architecture than the name's
            (``dcign-face-64`` must be a ``"dcign"``), or has no encoder for
            ``kind="summary"`` / ``"encoder"``.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}.")
    path = weights_path(name, directory)
    expected = BUNDLED_ARCHITECTURES.get(name)
    location = torch.device(device) if device is not None else torch.device("cpu")
    try:
        module, _config, _extra = load_checkpoint(
            path, expected_kind=expected, map_location=location
        )
    except CheckpointError as error:
        raise CheckpointError(f"pretrained({name!r}): {error}") from error
    if kind == "model":
        return module
    architecture = _kind_of(module)
    if architecture not in _WITH_ENCODER:
        raise CheckpointError(
            f"pretrained({name!r}) holds a {type(module).__name__}, which has no encoder; load "
            "it with kind='model'."
        )
    encoder = getattr(module, "encoder", module)
    if kind == "encoder":
        return encoder
    return EncoderSummary(encoder)


def pretrained_summary(
    spec: str,
    *,
    device: str | torch.device | None = None,
    directory: str | os.PathLike | None = None,
) -> EncoderSummary:
    """A bundled encoder as a summary statistic from a ``"NAME"`` or ``"NAME:group,group"`` spec
    (the form the command line and the benchmarks take), e.g.
    ``pretrained_summary("dcign-face-64:azimuth,elevation,light")`` keeps those code groups.

    Raises what :func:`pretrained` raises, and ``EncoderSummary.subset``'s error for a group the
    network's layout does not have.
    """
    if not isinstance(spec, str):
        raise TypeError(f"spec must be 'NAME' or 'NAME:group,group' (str), got {spec!r}.")
    name, _, groups = spec.partition(":")
    summary = pretrained(name, device=device, directory=directory)
    names = [group.strip() for group in groups.split(",") if group.strip()]
    return summary.subset(*names) if names else summary


def _kind_of(module: nn.Module) -> str:
    from probgraphics.nets.checkpoint import architectures

    for kind, (_config_class, module_class) in architectures().items():
        if type(module) is module_class:
            return kind
    return type(module).__name__


# ``probgraphics.nets.pretrained`` is this module's function once ``nets`` is imported (the
# package re-exports it), so the name listing rides along on the function as well.
pretrained.available = available  # type: ignore[attr-defined]
pretrained.model_card = model_card  # type: ignore[attr-defined]
