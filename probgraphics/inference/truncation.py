"""Truncated prior regions for ABC rejection in rounds.

Round one of ``abc_rejection(rounds=R)`` simulates from the prior. Each later round simulates
from the prior truncated to a region around the draws the rounds so far kept, so its
simulations land where the tolerance is decided (as truncated sequential neural posterior
estimation truncates its proposals; Deistler et al. 2022). A draw of the prior truncated to a
region has equal weight, so the kept draws need no importance weights, and the draws of earlier
rounds that fall inside the last region are draws of the same truncated prior: all rounds pool.

A region is the union of balls around the anchors (the kept draws, whitened coordinates scaled
by the anchors' spread per coordinate), of radius :data:`RADIUS_FACTOR` times the median
distance from an anchor to its :data:`RADIUS_NEIGHBOURS`-th nearest anchor, intersected with
the previous round's region: nested regions keep every earlier draw inside the last one a draw
of the last truncated prior. The result is the ABC posterior at the final tolerance truncated to
the last region; it is exact where that region holds the posterior's support, which the margin of
``RADIUS_FACTOR`` neighbour distances around every kept draw of a wider tolerance is for.

>>> import torch
>>> anchors = torch.randn(200, 2, dtype=torch.float64) * 0.1 + 2.0
>>> region = region_around(anchors)
>>> bool(contains(region, anchors).all()), bool(contains(region, torch.zeros(1, 2)).any())
(True, False)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from probgraphics.inference.neighbours import scaled_neighbours

__all__ = ["Region", "contains", "region_around", "sample_prior_in"]

#: Ball radius, in median distances from an anchor to its ``RADIUS_NEIGHBOURS``-th neighbour.
RADIUS_FACTOR = 3.0
RADIUS_NEIGHBOURS = 10
#: Prior draws per simulation a round may spend finding points inside its region before it
#: stops short (the region then holds less than 1/this of the prior's mass).
MAX_PRIOR_DRAWS_PER_SIMULATION = 1_000


@dataclass(frozen=True)
class Region:
    """A union of balls around ``anchors`` in coordinates divided by ``scale``, intersected
    with ``parent`` (None: the whole space).

    Attributes:
        anchors: ``(k, D)`` float64 CPU, the scaled anchors.
        scale: ``(D,)`` float64 CPU, the per-coordinate scale.
        radius: the balls' radius in scaled coordinates.
        tree: a ``scipy.spatial.cKDTree`` of the scaled anchors.
        parent: the enclosing region or None.
    """

    anchors: torch.Tensor
    scale: torch.Tensor
    radius: float
    tree: object
    parent: Region | None


def region_around(anchors: torch.Tensor, parent: Region | None = None) -> Region:
    """The region around ``anchors`` ``(k >= 2, D)`` (whitened draws, any float dtype or
    device), inside ``parent``."""
    if anchors.dim() != 2 or anchors.shape[0] < 2 or not bool(torch.isfinite(anchors).all()):
        raise ValueError(
            f"a truncation region needs at least 2 finite anchors (k, D), got "
            f"{tuple(anchors.shape)}; keep more draws per round."
        )
    near = scaled_neighbours(anchors, min(RADIUS_NEIGHBOURS, anchors.shape[0] - 1))
    typical = float(torch.as_tensor(near.distances[:, -1]).median())
    radius = RADIUS_FACTOR * typical if typical > 0 else math.inf
    return Region(torch.from_numpy(near.points), near.scale, radius, near.tree, parent)


def contains(region: Region | None, u: torch.Tensor) -> torch.Tensor:
    """``(N,)`` bool: which of ``u`` ``(N, D)`` lie inside ``region`` (all, for None); on
    ``u``'s device."""
    inside = torch.ones(u.shape[0], dtype=torch.bool)
    points = u.detach().cpu().double()
    while region is not None:
        nearest, _ = region.tree.query((points / region.scale).numpy(), k=1)
        inside &= torch.as_tensor(nearest <= region.radius)
        region = region.parent
    return inside.to(u.device)


def sample_prior_in(
    region: Region,
    generator: torch.Generator,
    count: int,
    dim: int,
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[torch.Tensor, int]:
    """``count`` draws ``(m, dim)`` of ``N(0, I)`` truncated to ``region``, by rejection; and
    how many prior draws that took. ``m < count`` only when
    :data:`MAX_PRIOR_DRAWS_PER_SIMULATION` per draw were spent first."""
    kept, found, drawn = [], 0, 0
    limit = MAX_PRIOR_DRAWS_PER_SIMULATION * count
    while found < count and drawn < limit:
        # The first batch measures how much of the prior the region holds; later ones aim at
        # what is missing with a fifth to spare.
        rate = max(found / drawn, 1e-3) if drawn else 1.0
        size = min(max(math.ceil(1.2 * (count - found) / rate), 1024), limit - drawn)
        u = torch.randn(size, dim, generator=generator, device=device, dtype=dtype)
        drawn += size
        inside = u[contains(region, u)]
        kept.append(inside[: count - found])
        found += int(kept[-1].shape[0])
    return torch.cat(kept), drawn
