"""Checkpoint files for ABC runs: written atomically, read with clear errors.

A checkpoint is a dict of tensors and plain Python values saved with ``torch.save`` and read back
with ``weights_only=True`` (no arbitrary code runs on load). Writing goes to a temporary file in the
same folder, flushed and fsynced, then ``os.replace``-d onto the target, so a crash mid-write never
leaves a partial checkpoint: the previous one (or none) stays in place
(:func:`probgraphics.atomic.atomic_torch_save`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from probgraphics.atomic import atomic_torch_save

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "save_checkpoint", "load_checkpoint"]

CHECKPOINT_FORMAT = "probgraphics-abc-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file, fsync, ``os.replace``).

    Returns the path written. On any failure the temporary file is removed and the error is
    re-raised; an existing file at ``path`` is left untouched.
    """
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise FileNotFoundError(
            f"cannot write checkpoint {str(path)!r}: folder {str(path.parent)!r} does not exist; "
            "create it first or pass another checkpoint path."
        )
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **payload}
    return atomic_torch_save(path, payload)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not a readable probgraphics ABC checkpoint (corrupt, truncated,
            another format, or another version).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {str(path)!r}; pass the path a run wrote with checkpoint=..., or "
            "drop resume= to start a new run."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(
            f"{str(path)!r} is not a readable checkpoint ({type(error).__name__}: {error}); it may "
            "be truncated or corrupt. Delete it and start the run again."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{str(path)!r} is not a probgraphics ABC checkpoint (expected format "
            f"{CHECKPOINT_FORMAT!r}); pass a file written by infer(..., checkpoint=path)."
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {str(path)!r} has version {payload.get('version')!r}; this probgraphics "
            f"reads version {CHECKPOINT_VERSION}. Start the run again."
        )
    return payload
