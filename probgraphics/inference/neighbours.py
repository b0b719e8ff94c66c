"""Nearest neighbours among draws, in coordinates scaled to unit spread.

Shared by :func:`probgraphics.inference.adjustment.posterior_modes` (the neighbour graph whose
components are the modes) and :mod:`probgraphics.inference.truncation` (the balls around the kept
draws). Both depend on the scale only up to one common factor, which neither changes.

>>> import torch
>>> near = scaled_neighbours(torch.tensor([[0.0, 0.0], [1.0, 10.0], [3.0, 30.0]]), k=1)
>>> near.indices[:, 1].tolist()
[1, 0, 1]
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = ["Neighbours", "scaled_neighbours"]


class Neighbours(NamedTuple):
    """Attributes: ``scale`` ``(D,)`` float64 CPU tensor (each coordinate's standard deviation,
    1 where it is 0); ``points`` ``(N, D)`` float64 numpy, the draws divided by it; ``tree`` a
    ``scipy.spatial.cKDTree`` of them; ``distances`` and ``indices`` ``(N, k + 1)`` numpy, each
    draw's ``k + 1`` nearest (itself first)."""

    scale: torch.Tensor
    points: np.ndarray
    tree: object
    distances: np.ndarray
    indices: np.ndarray


def scaled_neighbours(draws: torch.Tensor, k: int) -> Neighbours:
    """The ``k`` nearest neighbours of every draw of ``draws`` ``(N > k, D)`` (any float dtype or
    device), coordinates scaled to unit standard deviation."""
    from scipy.spatial import cKDTree

    points = draws.detach().cpu().double()
    spread = points.std(dim=0)
    scale = torch.where(spread > 0, spread, torch.ones_like(spread))
    scaled = (points / scale).numpy()
    tree = cKDTree(scaled)
    distances, indices = tree.query(scaled, k=k + 1)
    return Neighbours(
        scale, scaled, tree, distances.reshape(len(scaled), -1), indices.reshape(len(scaled), -1)
    )
