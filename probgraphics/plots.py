"""Figures: image grids and observed-versus-posterior renders; matplotlib only, no pyplot state."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from probgraphics.atomic import atomic_path

__all__ = ["image_grid", "save_figure", "trace_figure"]


def _as_images(images) -> torch.Tensor:
    t = torch.as_tensor(images).detach().to("cpu", torch.float32)
    if t.dim() == 3:  # (N, H, W) -> one channel
        t = t[:, None]
    if t.dim() != 4 or t.shape[1] not in (1, 3):
        raise ValueError(
            f"images must be (N, C, H, W) with C in (1, 3) or (N, H, W), got {tuple(t.shape)}"
        )
    if not torch.isfinite(t).all():
        raise ValueError("images contain NaN or inf; clean them before plotting")
    return t.clamp(0.0, 1.0)


def image_grid(
    images,
    *,
    ncols: int | None = None,
    titles: Sequence[str] | None = None,
    cell_inches: float = 1.4,
    suptitle: str | None = None,
):
    """A matplotlib Figure showing ``images`` in a grid.

    Args:
        images: ``(N, C, H, W)`` (C = 1 gray or 3 RGB) or ``(N, H, W)``, values in [0, 1]
            (clipped), any device.
        ncols: columns (default: about sqrt(N)).
        titles: optional N short titles.
    """
    from matplotlib.figure import Figure

    t = _as_images(images)
    n = t.shape[0]
    if n == 0:
        raise ValueError("images is empty; pass at least one image")
    if titles is not None and len(titles) != n:
        raise ValueError(f"got {len(titles)} titles for {n} images")
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(cell_inches * ncols, cell_inches * nrows + (0.4 if suptitle else 0)))
    for i in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.set_axis_off()
        if i >= n:
            continue
        img = t[i].permute(1, 2, 0).numpy()
        if img.shape[-1] == 1:
            ax.imshow(img[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(img, interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically (temporary file, then rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path, fsync=False) as temporary:
            fig.savefig(temporary, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    finally:
        _release(fig)
    return path


def _release(fig) -> None:
    """Close ``fig`` if pyplot manages it (ArviZ plots go through pyplot), so none accumulate."""
    import matplotlib.pyplot as plt

    if plt.fignum_exists(getattr(fig, "number", -1)):
        plt.close(fig)


def trace_figure(posterior, var_names: Sequence[str], *, truth: dict | None = None):
    """ArviZ trace plot of ``var_names``: pooled density (left) and every chain's trace (right).

    ``truth`` (site -> float) draws the true values as reference lines.
    """
    import arviz as az

    lines = [(name, {}, [float(value)]) for name, value in (truth or {}).items()]
    axes = az.plot_trace(
        posterior.to_arviz(), var_names=list(var_names), combined=True, lines=lines or None
    )
    fig = axes.ravel()[0].figure
    fig.tight_layout()
    return fig
