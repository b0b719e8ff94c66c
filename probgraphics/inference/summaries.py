"""Summary statistics: batched maps from simulated observations to feature vectors ``(B, K)``.

A summary is any callable. It receives the simulated observed site as a tensor ``(B, *event)`` when
the program has one observed site (``(B, C, H, W)`` for an image program), or a dict site ->
tensor when it has several. It returns float features ``(B, K)`` on the same device. It runs
under ``torch.no_grad()``.

Bundled: :func:`identity_summary` (flatten and concatenate; for toy programs), :func:`pixel_summary`
(an image as its pixels). Encoder summaries live in ``probgraphics.nets`` (any callable works).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

__all__ = ["identity_summary", "pixel_summary", "resolve_summary", "SUMMARIES", "summary_name"]

SummaryInput = torch.Tensor | Mapping[str, torch.Tensor]


def identity_summary(observed: SummaryInput) -> torch.Tensor:
    """Flatten each observed site to ``(B, -1)`` and concatenate (dict sites in sorted order).

    Args:
        observed: a tensor ``(B, *event)`` or a dict site -> ``(B, *event)``.

    Returns:
        ``(B, K)`` tensor, ``K`` the total event size, in the inputs' dtype and device.
    """
    if isinstance(observed, Mapping):
        if not observed:
            raise ValueError("identity_summary got an empty dict of observed sites")
        parts = [identity_summary(observed[name]) for name in sorted(observed)]
        batch = {part.shape[0] for part in parts}
        if len(batch) != 1:
            raise ValueError(
                f"identity_summary expects every observed site to share the batch size, got "
                f"{ {name: tuple(observed[name].shape) for name in sorted(observed)} }"
            )
        return torch.cat(parts, dim=-1)
    if not isinstance(observed, torch.Tensor) or observed.dim() < 1:
        raise TypeError(
            "identity_summary expects a tensor (B, *event) or a dict of them, got "
            f"{type(observed).__name__}"
            + (f" with shape {tuple(observed.shape)}" if isinstance(observed, torch.Tensor) else "")
        )
    return observed.reshape(observed.shape[0], -1)


def pixel_summary(images: torch.Tensor) -> torch.Tensor:
    """Images ``(B, C, H, W)`` -> their pixels ``(B, C*H*W)``, same dtype and device."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(
            f"pixel_summary expects images shaped (B, C, H, W), got {shape}; for non-image "
            "observations use summary='identity'."
        )
    return images.reshape(images.shape[0], -1)


SUMMARIES: dict[str, Callable[[SummaryInput], torch.Tensor]] = {
    "identity": identity_summary,
    "pixel": pixel_summary,
}


def resolve_summary(spec: str | Callable | None, observed_sites: list[str]) -> Callable:
    """The summary callable for ``spec``.

    Args:
        spec: ``None`` (pixels for a program observed at ``"image"`` alone, else identity), a name
            in :data:`SUMMARIES`, or a callable.
        observed_sites: the observed site names.
    """
    if spec is None:
        spec = "pixel" if observed_sites == ["image"] else "identity"
    if isinstance(spec, str):
        if spec not in SUMMARIES:
            raise ValueError(
                f"unknown summary {spec!r}; the named summaries are {sorted(SUMMARIES)}, or pass "
                "a callable mapping simulated observations (B, ...) to features (B, K)."
            )
        return SUMMARIES[spec]
    if not callable(spec):
        raise TypeError(
            f"summary must be None, one of {sorted(SUMMARIES)} or a callable, got "
            f"{type(spec).__name__}"
        )
    return spec


def summary_name(spec: str | Callable | None) -> str | None:
    """A JSON-friendly name for a summary spec (for settings and checkpoints)."""
    if spec is None or isinstance(spec, str):
        return spec
    for name, function in SUMMARIES.items():
        if spec is function:
            return name
    return getattr(spec, "__qualname__", None) or type(spec).__qualname__
