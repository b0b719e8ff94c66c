"""Distances between simulated summaries ``(B, K)`` and the observed summary ``(1, K)``.

A distance is a callable ``(summaries (B, K), observed (1, K)) -> (B,)``, non-negative, on the
summaries' device. Named distances: ``"l1"``, ``"l2"`` and ``"standardized_l2"`` (the default),
an L2 distance after dividing each feature by its spread in the pilot run's prior-predictive
summaries (raw features can have very different scales).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "l1",
    "l2",
    "StandardizedL2",
    "DISTANCES",
    "resolve_distance",
    "distance_name",
    "DEFAULT_DISTANCE",
]

DEFAULT_DISTANCE = "standardized_l2"


def l1(summaries: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Sum of absolute feature differences: ``(B, K), (1, K) -> (B,)``."""
    return (summaries - observed).abs().sum(dim=-1)


def l2(summaries: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Euclidean distance: ``(B, K), (1, K) -> (B,)``."""
    return torch.linalg.vector_norm(summaries - observed, dim=-1)


class StandardizedL2:
    """L2 distance on features divided by a per-feature scale.

    Args:
        scale: ``(K,)`` positive float tensor (the prior-predictive standard deviations).
    """

    def __init__(self, scale: torch.Tensor) -> None:
        if not isinstance(scale, torch.Tensor) or scale.dim() != 1:
            raise ValueError(f"scale must be a 1-D tensor (K,), got {scale!r}")
        if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
            raise ValueError("scale must be finite and positive in every feature")
        self.scale = scale

    @classmethod
    def from_pilot(cls, summaries: torch.Tensor) -> StandardizedL2:
        """Scale from prior-predictive summaries ``(N, K)``: each feature's standard deviation.

        Zero or non-finite spread is guarded: a feature that did not vary in the pilot (or whose
        spread is below ``1e-12`` of the largest) gets the median spread of the features that did
        vary (1 when none did), so a mismatch on it still counts at an ordinary weight instead of
        an infinite one.
        """
        if summaries.dim() != 2 or summaries.shape[0] < 2:
            raise ValueError(
                "standardized_l2 needs at least 2 pilot summaries shaped (N, K), got "
                f"{tuple(summaries.shape)}; increase pilot_size."
            )
        finite = torch.isfinite(summaries).all(dim=-1)
        values = summaries[finite] if bool(finite.sum() >= 2) else summaries.nan_to_num()
        spread = values.double().std(dim=0)
        varied = torch.isfinite(spread) & (spread > 1e-12 * spread.nan_to_num(0.0).max())
        fallback = spread[varied].median() if bool(varied.any()) else spread.new_tensor(1.0)
        scale = torch.where(varied, spread, fallback).to(summaries.dtype)
        return cls(scale)

    def __call__(self, summaries: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
        scale = self.scale.to(device=summaries.device, dtype=summaries.dtype)
        return torch.linalg.vector_norm((summaries - observed) / scale, dim=-1)

    def __repr__(self) -> str:
        return f"StandardizedL2(K={self.scale.shape[0]})"


DISTANCES: dict[str, Callable] = {"l1": l1, "l2": l2, "standardized_l2": StandardizedL2}


def check_distance_spec(spec: str | Callable | None) -> None:
    """Raise a helpful error unless ``spec`` names a distance or is a callable."""
    if spec is None or callable(spec):
        return
    if isinstance(spec, str) and spec in DISTANCES:
        return
    raise ValueError(
        f"unknown distance {spec!r}; use one of {sorted(DISTANCES)} or a callable "
        "(summaries (B, K), observed (1, K)) -> (B,)."
    )


def resolve_distance(spec: str | Callable | None, pilot_summaries: torch.Tensor | None) -> Callable:
    """The distance callable for ``spec``.

    Args:
        spec: a name in :data:`DISTANCES` (``None`` means ``"standardized_l2"``) or a callable.
        pilot_summaries: ``(N, K)`` prior-predictive summaries; needed by ``"standardized_l2"``.
    """
    check_distance_spec(spec)
    if spec is None:
        spec = DEFAULT_DISTANCE
    if spec == "standardized_l2":
        if pilot_summaries is None:
            raise ValueError("standardized_l2 needs the pilot's prior-predictive summaries")
        return StandardizedL2.from_pilot(pilot_summaries)
    if isinstance(spec, str):
        return DISTANCES[spec]
    return spec


def distance_name(spec: str | Callable | None) -> str:
    """A JSON-friendly name for a distance spec."""
    if spec is None:
        return DEFAULT_DISTANCE
    if isinstance(spec, str):
        return spec
    return getattr(spec, "__qualname__", None) or type(spec).__qualname__
