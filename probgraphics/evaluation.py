"""Measurements of trained networks against the ground truth of the programs that made the data.

* DC-IGN (seed 001 figure 6): the correlation of the azimuth, elevation and light code units with
  the true angles on held-out face scenes, and the reconstruction error.
* mu-VAE (seed 004): the voxel IoU of the decoded shape against the true occupancy grid, and the
  error of the learned per-image azimuths.

All functions run without gradient, with networks in eval mode (restored afterwards).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from probgraphics.nets.dcign import DCIGN
from probgraphics.nets.muvae import MuVAE
from probgraphics.nets.summaries import EncoderSummary, evaluation_mode

__all__ = [
    "average_grid_iou",
    "azimuth_error",
    "azimuth_errors",
    "evaluate_dcign",
    "evaluate_muvae",
    "factor_correlations",
    "pearson",
    "reconstruction_mse",
    "voxel_iou",
]

_FACTORS = ("azimuth", "elevation", "light")


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two ``(n,)`` tensors (float64); ``nan`` if either is constant."""
    x = x.detach().reshape(-1).double().cpu()
    y = y.detach().reshape(-1).double().cpu()
    if x.shape != y.shape or x.numel() < 2:
        raise ValueError(
            f"pearson needs two vectors of one length >= 2, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}."
        )
    x = x - x.mean()
    y = y - y.mean()
    denominator = (x.square().sum() * y.square().sum()).sqrt()
    if float(denominator) == 0.0:
        return float("nan")
    return float((x * y).sum() / denominator)


def _as_summary(net_or_summary: object) -> EncoderSummary:
    if isinstance(net_or_summary, EncoderSummary):
        return net_or_summary
    return EncoderSummary(net_or_summary)


def factor_correlations(
    net_or_summary: object,
    program,
    *,
    n: int = 400,
    seed: int = 10_000,
    factors: Sequence[str] = _FACTORS,
    mode: str = "one_factor",
    batch_size: int = 20,
    images: str = "render",
) -> dict[str, float]:
    """Correlation of each factor's code unit with the factor's true value on held-out scenes.

    Args:
        net_or_summary: a DC-IGN (or an :class:`EncoderSummary` with a layout naming the
            factors); the factor's group must be one unit (the face layout's are).
        program: the program that makes the scenes, e.g. ``programs.face(resolution=64)``; its
            latent sites must include the factors.
        n: scenes per factor.
        seed: the held-out draw (use one the training did not).
        factors: the factors to measure.
        mode: ``"one_factor"`` (seed 001 figure 6: for each factor, batches in which only it
            varies, pooled), ``"within_batch"`` (the same batches, the mean over batches of the
            correlation within each batch: equivariance alone, blind to offsets between
            batches) or ``"random"`` (scenes in which everything varies).
        batch_size: scenes per one-factor batch.
        images: what the encoder is shown: ``"render"`` (the noise-free render, default) or
            ``"image"`` (the program's noisy observation, what inference feeds it). The scenes
            are the same either way.

    Returns:
        ``factor -> Pearson r`` (signed; the paper's target is ``|r| >= 0.9``).
    """
    from probgraphics.data import OneFactorBatches, one_factor_batches, random_scenes

    summary = _as_summary(net_or_summary)
    layout = summary.layout
    if layout is None:
        raise ValueError("the encoder has no code layout, so its factor units are unknown.")
    for factor in factors:
        if factor not in layout or len(layout[factor]) != 1:
            raise ValueError(
                f"factor {factor!r} must be a one-unit group of the code layout {layout}."
            )
    if mode not in ("one_factor", "within_batch", "random"):
        raise ValueError(f"mode must be 'one_factor', 'within_batch' or 'random', got {mode!r}.")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}.")
    if images not in ("render", "image"):
        raise ValueError(
            f"images must be 'render' (noise-free) or 'image' (the noisy observation), got "
            f"{images!r}."
        )
    out: dict[str, float] = {}
    if mode == "random":
        scenes = random_scenes(program, n, seed=seed)
        features = summary(scenes[images])
        for factor in factors:
            out[factor] = pearson(features[:, layout[factor][0]], scenes[factor])
        return out
    batches: OneFactorBatches = one_factor_batches(program, batch_size, seed=seed, images=images)
    generator = torch.Generator().manual_seed(seed)
    for factor in factors:
        values, truths = [], []
        for _ in range(max(1, math.ceil(n / batch_size))):
            batch = batches.draw(factor, int(torch.randint(0, 2**62, (1,), generator=generator)))
            values.append(summary(batch.images)[:, layout[factor][0]])
            truths.append(batch.latents[factor].reshape(-1))
        if mode == "within_batch":
            per_batch = [pearson(v, t) for v, t in zip(values, truths, strict=True)]
            finite = [r for r in per_batch if math.isfinite(r)]
            out[factor] = sum(finite) / len(finite) if finite else float("nan")
        else:
            out[factor] = pearson(torch.cat(values), torch.cat(truths))
    return out


def reconstruction_mse(net: DCIGN, images: torch.Tensor, *, chunk_size: int = 256) -> float:
    """Mean squared error per pixel of ``net.decode(net.encode(images).mean)`` against
    ``images`` ``(B, C, S, S)`` (seed 001 reports this per-pixel figure)."""
    if not isinstance(net, DCIGN):
        raise TypeError(f"net must be a DCIGN, got {type(net).__name__}.")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[0] < 1:
        raise ValueError("images must be a non-empty tensor (B, C, S, S).")
    device = next(net.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad(), evaluation_mode(net):
        for chunk in images.split(chunk_size):
            chunk = chunk.to(device=device, dtype=torch.float32)
            mean, _ = net.encode(chunk)
            total += float((net.decode(mean) - chunk).square().sum())
            count += chunk.numel()
    return total / count


def evaluate_dcign(
    net: DCIGN,
    program=None,
    *,
    n: int = 400,
    seed: int = 10_000,
    random_n: int | None = None,
) -> dict[str, Any]:
    """The DC-IGN measurements on held-out face scenes.

    Returns ``{"correlation_one_factor": {factor: r}, "correlation_within_batch": {factor: mean
    r}, "correlation_random": {factor: r}, "correlation_random_image": {factor: r},
    "reconstruction_mse": float, "scenes": n, "random_scenes": random_n, "seed": seed}`` (see
    :func:`factor_correlations` for the modes). The one-factor modes use ``n`` scenes per
    factor; the random-scene correlations use ``random_n`` scenes (default ``n``) in which
    everything varies, shown to the encoder as noise-free renders (``correlation_random``) and
    as the program's noisy observations (``correlation_random_image``: the same scenes, what
    inference feeds the encoder). ``program`` defaults to the face program at the network's
    resolution.
    """
    from probgraphics.data import random_scenes

    if not isinstance(net, DCIGN):
        raise TypeError(f"net must be a DCIGN, got {type(net).__name__}.")
    if random_n is None:
        random_n = n
    if isinstance(random_n, bool) or not isinstance(random_n, int) or random_n < 2:
        raise ValueError(f"random_n must be an int >= 2 or None, got {random_n!r}.")
    if program is None:
        from probgraphics.programs.face import face

        program = face(resolution=net.config.image_size)
    summary = EncoderSummary(net)
    scenes = random_scenes(program, n, seed=seed + 1)
    return {
        "correlation_one_factor": factor_correlations(summary, program, n=n, seed=seed),
        "correlation_within_batch": factor_correlations(
            summary, program, n=n, seed=seed, mode="within_batch"
        ),
        "correlation_random": factor_correlations(
            summary, program, n=random_n, seed=seed + 1, mode="random"
        ),
        "correlation_random_image": factor_correlations(
            summary, program, n=random_n, seed=seed + 1, mode="random", images="image"
        ),
        "reconstruction_mse": reconstruction_mse(net, scenes["render"]),
        "scenes": n,
        "random_scenes": random_n,
        "seed": seed,
    }


# --------------------------------------------------------------------------------------------
# mu-VAE
# --------------------------------------------------------------------------------------------


def voxel_iou(
    predicted: torch.Tensor, true: torch.Tensor, *, threshold: float = 0.5
) -> torch.Tensor:
    """Intersection over union of occupancy grids ``(B, D, D, D)`` thresholded at
    ``threshold``; returns ``(B,)`` float32 (1 where both are empty)."""
    if (
        not isinstance(predicted, torch.Tensor)
        or not isinstance(true, torch.Tensor)
        or (predicted.shape != true.shape or predicted.dim() != 4)
    ):
        raise ValueError(
            "voxel_iou needs two grids of one shape (B, D, D, D), got "
            f"{getattr(predicted, 'shape', predicted)} and {getattr(true, 'shape', true)}."
        )
    a = (predicted > threshold).flatten(1)
    b = (true.to(predicted.device) > threshold).flatten(1)
    intersection = (a & b).sum(1).float()
    union = (a | b).sum(1).float()
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))


def average_grid_iou(reference, shapes) -> tuple[torch.Tensor, float]:
    """The baseline a 3D reconstruction must beat: IoU on ``shapes`` of the average grid of the
    ``reference`` shapes (:class:`~probgraphics.data.ShapeSet`, other draws), thresholded at
    the level of 0.05, 0.10, ..., 0.95 that gives the best mean IoU on ``reference`` itself.

    Returns:
        ``(per_item, threshold)``: IoU ``(n,)`` float32 (CPU) per shape of ``shapes``, and the
        level used.
    """
    mean = reference.grids.float().mean(0, keepdim=True)

    def iou(grids: torch.Tensor, threshold: float) -> torch.Tensor:
        return voxel_iou((mean > threshold).float().expand_as(grids), grids)

    levels = [round(0.05 * k, 2) for k in range(1, 20)]
    threshold = max(levels, key=lambda t: float(iou(reference.grids, t).mean()))
    return iou(shapes.grids, threshold), threshold


def _azimuth_fit(predicted: torch.Tensor, true: torch.Tensor) -> tuple[dict, torch.Tensor]:
    if predicted.shape != true.shape or predicted.dim() != 1 or predicted.numel() < 1:
        raise ValueError(
            f"azimuth_error needs two (n,) tensors, got {tuple(predicted.shape)} and "
            f"{tuple(true.shape)}."
        )
    p = predicted.detach().double().cpu()
    t = true.detach().double().cpu()
    best, best_error = None, None
    for sign in (1.0, -1.0):
        difference = sign * p - t
        offset = math.atan2(float(difference.sin().mean()), float(difference.cos().mean()))
        error = (torch.remainder(difference - offset + math.pi, 2 * math.pi) - math.pi).abs()
        candidate = {
            "mean_abs_deg": math.degrees(float(error.mean())),
            "median_abs_deg": math.degrees(float(error.median())),
            "offset_deg": math.degrees(offset),
            "mirrored": sign < 0,
        }
        if best is None or candidate["mean_abs_deg"] < best["mean_abs_deg"]:
            best, best_error = candidate, error
    return best, best_error


def azimuth_error(predicted: torch.Tensor, true: torch.Tensor) -> dict[str, float]:
    """Circular error of learned azimuths ``(n,)`` against true ones ``(n,)`` (radians).

    A network that learns 3D from images alone picks its own canonical frame, so the learned
    angle can differ from the truth by a global offset and, for a mirrored frame, a sign. Both
    are fitted (the circular mean of the differences, for each sign) and the better fit is
    reported: ``{"mean_abs_deg", "median_abs_deg", "offset_deg", "mirrored"}``. For reference,
    angles unrelated to the truth give a mean error of about 90 degrees.
    """
    return _azimuth_fit(predicted, true)[0]


def azimuth_errors(
    predicted: torch.Tensor, true: torch.Tensor
) -> tuple[dict[str, float], torch.Tensor]:
    """:func:`azimuth_error`'s fit and the per-item absolute errors ``(n,)`` float64 radians
    (CPU) under that one fitted frame, for breaking the error down by group (e.g. per shape
    class) without fitting a frame per group."""
    return _azimuth_fit(predicted, true)


def evaluate_muvae(
    net: MuVAE,
    shapes,
    *,
    azimuth_latent_mean: torch.Tensor | None = None,
    azimuth_candidates: int | None = None,
    rotations: int = 24,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """The mu-VAE measurements on a :class:`~probgraphics.data.ShapeSet`.

    The decoded grid of each image's shape-code mean is compared with the true grid:

    * ``iou``: mean IoU in the network's canonical frame as is;
    * ``iou_global_rotation``: mean IoU after the one rotation about the vertical axis (of
      ``rotations`` evenly spaced) that best aligns the network's frame with the data's;
    * ``iou_per_class``: the latter per shape class;
    * ``azimuth``: with ``azimuth_latent_mean`` ``(n, m)`` (the learned per-image parameters of
      these shapes), :func:`azimuth_error` of the azimuth net's angles, overall and per class;
    * ``learned_angle_resultant``: with ``azimuth_latent_mean``, the mean resultant length
      ``|mean_i exp(i theta_i)|`` of those angles: 1 when every image got the same angle (the
      azimuth latent collapsed, and the decoder can only learn a grid facing one view), near 0
      for angles spread around the circle as the true ones are.
    * ``azimuth_source``: ``"latent"`` for the above, or ``"search"`` when instead
      ``azimuth_candidates`` is given: each image's angle is the one of that many evenly spaced
      at which its decoded grid renders closest to it (:func:`~probgraphics.nets.search_azimuth`,
      projections compared, as ``MuVAEObjective(azimuth="search")`` picks them in training).
      This works for any image, held-out ones included, and fills the same keys.
    """
    from probgraphics.nets.muvae import search_azimuth
    from probgraphics.render.voxel import rotate_about_vertical

    if not isinstance(net, MuVAE):
        raise TypeError(f"net must be a MuVAE, got {type(net).__name__}.")
    if azimuth_latent_mean is not None and azimuth_candidates is not None:
        raise ValueError(
            "give azimuth_latent_mean (learned per-image latents) or azimuth_candidates (angles "
            "found by search), not both."
        )
    device = next(net.parameters()).device
    with torch.no_grad(), evaluation_mode(net):
        images = shapes.images.to(device)
        mean, _ = net.encode(images)
        predicted = torch.cat([net.decode(chunk) for chunk in mean.split(256)])
        true = shapes.grids.to(device)
        raw = voxel_iou(predicted, true, threshold=threshold)
        best_angle, best_iou, best_per_item = 0.0, -1.0, raw
        for k in range(rotations):
            angle = 2 * math.pi * k / rotations
            angles = torch.full((predicted.shape[0],), angle, device=device)
            rotated = rotate_about_vertical(predicted, angles, mode="nearest") if k else predicted
            per_item = voxel_iou(rotated, true, threshold=threshold)
            if float(per_item.mean()) > best_iou:
                best_angle, best_iou, best_per_item = angle, float(per_item.mean()), per_item
        result: dict[str, Any] = {
            "iou": float(raw.mean()),
            "iou_global_rotation": best_iou,
            "global_rotation_deg": math.degrees(best_angle),
            "iou_per_class": {
                name: float(best_per_item[shapes.labels.to(device) == label].mean())
                for label, name in enumerate(shapes.classes)
                if bool((shapes.labels == label).any())
            },
            "shapes": int(predicted.shape[0]),
        }
        angles = None
        if azimuth_latent_mean is not None:
            latent = azimuth_latent_mean.to(device)
            if latent.shape[0] != predicted.shape[0]:
                raise ValueError(
                    f"azimuth_latent_mean has {latent.shape[0]} rows for "
                    f"{predicted.shape[0]} shapes."
                )
            angles = net.azimuth_net(latent).cpu()
            result["azimuth_source"] = "latent"
        elif azimuth_candidates is not None:
            angles = torch.cat(
                [
                    search_azimuth(net, grids, chunk, azimuth_candidates).angle
                    for grids, chunk in zip(predicted.split(256), images.split(256), strict=True)
                ]
            ).cpu()
            result["azimuth_source"] = "search"
            result["azimuth_candidates"] = int(azimuth_candidates)
        if angles is not None:
            fit, errors = _azimuth_fit(angles, shapes.azimuth)
            result["azimuth"] = fit
            result["learned_angle_resultant"] = float(
                torch.complex(angles.double().cos(), angles.double().sin()).mean().abs()
            )
            # Per class with the one global frame fitted above (a frame is not per class).
            result["azimuth_per_class_mean_abs_deg"] = {
                name: math.degrees(float(errors[shapes.labels == label].mean()))
                for label, name in enumerate(shapes.classes)
                if bool((shapes.labels == label).any())
            }
    return result
