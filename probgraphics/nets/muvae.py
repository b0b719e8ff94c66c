"""The mu-VAE 3D autoencoder of seed 004: 2D encoder, 3D decoder, azimuth net, texturizer.

Seed 004 section 3 and figure 2:

* :class:`ShapeEncoder` (sec. 3.1): 2D convolutions with 3x3 kernels and stride 2, each with batch
  norm and leaky ReLU, then linear maps to the mean and log-variance of the shape code ``Z_S``.
* :class:`VoxelDecoder` (sec. 3.1): a linear layer to a small 3D feature volume, then 3D
  de-convolutions (3x3x3 kernels, stride 2) with batch norm and leaky ReLU, the last with a
  sigmoid, to a ``28^3`` occupancy grid with values in (0, 1).
* :class:`AzimuthNet` (sec. 3.2, case 2b): the azimuth is its own latent ``Z_theta`` with
  non-amortized, per-item parameters ``(mu_theta, sigma_theta)`` (held by the training code, not
  here); this two-layer tanh network maps a sample of it to ``theta`` in ``[-pi, pi]``.
* Projection (sec. 3.2, eq. 2): rotate the grid about the vertical axis by ``theta`` and project
  with ``1 - exp(-sum along rays)``; this is :mod:`probgraphics.render.voxel`.
* :class:`Texturizer` (sec. 3): an optional two-layer fully connected network on the projected
  image that learns shading and texture, so the projection can learn the shape alone.

Loss functions for the objectives of seed 004 table 1 (VAE, beta-VAE, mu-VAE) are plain functions
at the end of the module; each docstring gives its formula.

Two additions of ours, for training on images alone (see ``MuVAEObjective``):

* :func:`search_azimuth`: each image's azimuth as the best of a few evenly spaced angles at
  which its grid renders closest to it (render and compare, no gradient).
* :class:`ViewDiscriminator`: a small convolutional classifier that tells training images from
  renders of decoded grids at new azimuths, the idea of projective GANs (Gadelha et al. 2017,
  seed 004's reference 8): a grid must look like a data image from every side, not only from
  the view it was fitted to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from probgraphics.nets.checkpoint import NetConfig
from probgraphics.nets.dcign import _leading_shape, reparameterize

__all__ = [
    "AzimuthNet",
    "LossTerms",
    "MuVAE",
    "MuVAEConfig",
    "MuVAEOutput",
    "AzimuthSearch",
    "ShapeEncoder",
    "Texturizer",
    "ViewDiscriminator",
    "VoxelDecoder",
    "beta_vae_loss",
    "elbo_loss",
    "gaussian_kl",
    "mu_vae_loss",
    "reconstruction_error",
    "search_azimuth",
]


@dataclass(frozen=True)
class MuVAEConfig(NetConfig):
    """Architecture of the seed 004 model. Frozen and validated on construction.

    Images are grayscale ``(1, voxel_size, voxel_size)``: the projection of a ``voxel_size^3``
    grid is an image of that size (28x28 in the paper).

    Attributes:
        voxel_size: grid edge ``D`` (28); must be divisible by ``2 ** len(decoder_channels)``.
        encoder_channels: filters of the 3x3 stride-2 convolutions.
        shape_code_size: units of the shape code ``Z_S`` (not stated in seed 004; our default).
        decoder_channels: channels of the 3D feature volume after the linear layer and after
            each de-convolution but the last (which outputs the 1-channel grid).
        leaky_slope: negative slope of the leaky ReLUs.
        azimuth_latent_size: units of the azimuth latent ``Z_theta`` (a diagonal Gaussian in
            seed 004; its size is not stated, ours).
        azimuth_hidden: hidden units of the two-layer tanh azimuth net.
        texturizer: whether the model has a texturizer (the paper's final model does).
        texturizer_hidden: hidden units of the texturizer.
        mean_bound: latent clipping of the shape-code mean, ``mean = b * tanh(raw / b)``; ``None``
            leaves it unbounded.
        bounded_std: if True the shape-code standard deviation is ``sigmoid(raw)`` in (0, 1), so
            ``log_var <= 0``. The mu-VAE objective needs this (its ``-log sigma^2`` term is
            unbounded below otherwise); the VAE and beta-VAE objectives work either way.
    """

    voxel_size: int = 28
    encoder_channels: tuple[int, ...] = (32, 64, 128)
    shape_code_size: int = 32
    decoder_channels: tuple[int, ...] = (64, 32)
    leaky_slope: float = 0.2
    azimuth_latent_size: int = 4
    azimuth_hidden: int = 32
    texturizer: bool = True
    texturizer_hidden: int = 512
    mean_bound: float | None = 3.0
    bounded_std: bool = True

    def __post_init__(self) -> None:
        for name in (
            "voxel_size",
            "shape_code_size",
            "azimuth_latent_size",
            "azimuth_hidden",
            "texturizer_hidden",
        ):
            self._check_int(name)
        self._check_int_tuple("encoder_channels")
        self._check_int_tuple("decoder_channels")
        self._check_float("leaky_slope", minimum=0.0)
        self._check_bool("texturizer")
        self._check_bool("bounded_std")
        if self.mean_bound is not None:
            self._check_float("mean_bound", minimum=0.0, strict=True)
        factor = 2 ** len(self.decoder_channels)
        if self.voxel_size % factor:
            raise ValueError(
                f"MuVAEConfig.voxel_size {self.voxel_size} must be divisible by "
                f"2 ** len(decoder_channels) = {factor} (each de-convolution doubles the grid); "
                "change voxel_size or the number of decoder stages."
            )

    @property
    def encoder_sizes(self) -> tuple[int, ...]:
        """Spatial size of the image and after each stride-2 convolution (28, 14, 7, 4)."""
        sizes = [self.voxel_size]
        for _ in self.encoder_channels:
            sizes.append((sizes[-1] - 1) // 2 + 1)
        return tuple(sizes)

    @property
    def decoder_base_size(self) -> int:
        """Edge of the first 3D feature volume (7 for 28 with two de-convolutions)."""
        return self.voxel_size // 2 ** len(self.decoder_channels)


class ShapeEncoder(nn.Module):
    """Images ``(*batch, 1, D, D)`` float32 -> ``(mean, log_var)``, each
    ``(*batch, shape_code_size)``.

    With ``config.mean_bound`` / ``config.bounded_std`` the outputs are latent-clipped (see
    :class:`MuVAEConfig`). Batch norm makes training-mode outputs depend on the whole batch;
    call ``.eval()`` for per-image encodings.
    """

    def __init__(self, config: MuVAEConfig) -> None:
        super().__init__()
        if not isinstance(config, MuVAEConfig):
            raise TypeError(f"ShapeEncoder expects a MuVAEConfig, got {type(config).__name__}.")
        self.config = config
        layers: list[nn.Module] = []
        previous = 1
        for width in config.encoder_channels:
            layers += [
                nn.Conv2d(previous, width, 3, stride=2, padding=1),
                nn.BatchNorm2d(width),
                nn.LeakyReLU(config.leaky_slope),
            ]
            previous = width
        self.features = nn.Sequential(*layers)
        flatten = previous * config.encoder_sizes[-1] ** 2
        self.mean_head = nn.Linear(flatten, config.shape_code_size)
        self.scale_head = nn.Linear(flatten, config.shape_code_size)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        d = c.voxel_size
        batch = _leading_shape(images, (1, d, d), "images", self)
        hidden = self.features(images.reshape(-1, 1, d, d)).flatten(1)
        mean = self.mean_head(hidden)
        if c.mean_bound is not None:
            mean = c.mean_bound * torch.tanh(mean / c.mean_bound)
        raw = self.scale_head(hidden)
        # log(sigmoid(raw)^2) computed stably.
        log_var = 2.0 * F.logsigmoid(raw) if c.bounded_std else raw
        return mean.reshape(*batch, -1), log_var.reshape(*batch, -1)


class VoxelDecoder(nn.Module):
    """Shape codes ``(*batch, shape_code_size)`` float32 -> occupancy grids ``(*batch, D, D, D)``
    in (0, 1)."""

    def __init__(self, config: MuVAEConfig) -> None:
        super().__init__()
        if not isinstance(config, MuVAEConfig):
            raise TypeError(f"VoxelDecoder expects a MuVAEConfig, got {type(config).__name__}.")
        self.config = config
        base = config.decoder_base_size
        first = config.decoder_channels[0]
        self._start = (first, base, base, base)
        self.fully_connected = nn.Linear(config.shape_code_size, first * base**3)
        self.input_norm = nn.BatchNorm3d(first)
        stages: list[nn.Module] = []
        widths = (*config.decoder_channels, 1)
        for index in range(len(config.decoder_channels)):
            last = index == len(config.decoder_channels) - 1
            stages.append(
                nn.ConvTranspose3d(
                    widths[index], widths[index + 1], 3, stride=2, padding=1, output_padding=1
                )
            )
            if not last:
                stages += [nn.BatchNorm3d(widths[index + 1]), nn.LeakyReLU(config.leaky_slope)]
        self.deconvolutions = nn.Sequential(*stages)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        c = self.config
        batch = _leading_shape(code, (c.shape_code_size,), "code", self)
        hidden = self.fully_connected(code.reshape(-1, c.shape_code_size)).reshape(-1, *self._start)
        hidden = F.leaky_relu(self.input_norm(hidden), c.leaky_slope)
        grid = torch.sigmoid(self.deconvolutions(hidden))
        d = c.voxel_size
        return grid.reshape(*batch, d, d, d)


class AzimuthNet(nn.Module):
    """Azimuth latents ``(*batch, azimuth_latent_size)`` -> azimuths ``(*batch,)`` in radians,
    in ``[-pi, pi]``: ``pi * tanh(W2 tanh(W1 z + b1) + b2)`` (seed 004 sec. 3.2, case 2b).

    The ends are reached when the tanh saturates; in float32 they are pi rounded to float32."""

    def __init__(self, config: MuVAEConfig) -> None:
        super().__init__()
        if not isinstance(config, MuVAEConfig):
            raise TypeError(f"AzimuthNet expects a MuVAEConfig, got {type(config).__name__}.")
        self.config = config
        self.hidden = nn.Linear(config.azimuth_latent_size, config.azimuth_hidden)
        self.output = nn.Linear(config.azimuth_hidden, 1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        _leading_shape(latent, (self.config.azimuth_latent_size,), "latent", self)
        return math.pi * torch.tanh(self.output(torch.tanh(self.hidden(latent)))).squeeze(-1)


class Texturizer(nn.Module):
    """Projected images ``(*batch, 1, D, D)`` -> shaded images ``(*batch, 1, D, D)`` in (0, 1).

    Seed 004 sec. 3: "an optional two layer fully connected neural network, referred as a
    texturizer, is added to the output of projection layer to improve learning shades and
    texture": ``sigmoid(W2 leaky_relu(W1 vec(P) + b1) + b2)``.
    """

    def __init__(self, config: MuVAEConfig) -> None:
        super().__init__()
        if not isinstance(config, MuVAEConfig):
            raise TypeError(f"Texturizer expects a MuVAEConfig, got {type(config).__name__}.")
        self.config = config
        pixels = config.voxel_size**2
        self.hidden = nn.Linear(pixels, config.texturizer_hidden)
        self.output = nn.Linear(config.texturizer_hidden, pixels)

    def forward(self, projection: torch.Tensor) -> torch.Tensor:
        d = self.config.voxel_size
        batch = _leading_shape(projection, (1, d, d), "projection", self)
        hidden = F.leaky_relu(
            self.hidden(projection.reshape(*batch, d * d)), self.config.leaky_slope
        )
        return torch.sigmoid(self.output(hidden)).reshape(*batch, 1, d, d)


class MuVAEOutput(NamedTuple):
    """What :meth:`MuVAE.forward` returns (module's device, float32; ``B`` = batch).

    Attributes:
        shape_mean, shape_log_var: ``(B, shape_code_size)`` encoder outputs.
        shape_code: ``(B, shape_code_size)`` the decoded code (sample, or mean).
        grid: ``(B, D, D, D)`` occupancy in (0, 1), canonical pose.
        azimuth: ``(B,)`` radians used to rotate the grid (zeros when none was given).
        projection: ``(B, 1, D, D)`` ``1 - exp(-sum along rays)`` of the rotated grid.
        texture: ``(B, 1, D, D)`` texturizer output, or ``None`` without a texturizer.
    """

    shape_mean: torch.Tensor
    shape_log_var: torch.Tensor
    shape_code: torch.Tensor
    grid: torch.Tensor
    azimuth: torch.Tensor
    projection: torch.Tensor
    texture: torch.Tensor | None


class MuVAE(nn.Module):
    """Seed 004's probabilistic 3D autoencoder: image -> shape code -> voxels -> image.

    Rendering goes through :func:`probgraphics.render.voxel.rotate_about_vertical` and
    :func:`probgraphics.render.voxel.project`.
    """

    def __init__(self, config: MuVAEConfig | None = None) -> None:
        super().__init__()
        config = MuVAEConfig() if config is None else config
        if not isinstance(config, MuVAEConfig):
            raise TypeError(f"MuVAE expects a MuVAEConfig, got {type(config).__name__}.")
        self.config = config
        self.encoder = ShapeEncoder(config)
        self.decoder = VoxelDecoder(config)
        self.azimuth_net = AzimuthNet(config)
        self.texturizer = Texturizer(config) if config.texturizer else None

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(*batch, 1, D, D)`` -> shape-code ``(mean, log_var)``, each ``(*batch, K)``."""
        return self.encoder(images)

    def decode(self, shape_code: torch.Tensor) -> torch.Tensor:
        """``(*batch, K)`` -> occupancy grids ``(*batch, D, D, D)``."""
        return self.decoder(shape_code)

    def render(self, grid: torch.Tensor, azimuth: torch.Tensor | None = None) -> torch.Tensor:
        """Project grids ``(*batch, D, D, D)`` seen at ``azimuth`` ``(*batch,)`` radians (None:
        canonical pose, no resampling) to images ``(*batch, 1, D, D)``."""
        from probgraphics.render.voxel import project, rotate_about_vertical

        d = self.config.voxel_size
        if not isinstance(grid, torch.Tensor) or grid.dim() < 4 or grid.shape[-3:] != (d, d, d):
            raise ValueError(
                f"MuVAE.render expects grids of shape (*batch, {d}, {d}, {d}), got "
                f"{tuple(grid.shape) if isinstance(grid, torch.Tensor) else type(grid).__name__}."
            )
        batch = grid.shape[:-3]
        flat = grid.reshape(-1, d, d, d)
        if azimuth is not None:
            if not isinstance(azimuth, torch.Tensor) or azimuth.shape != batch:
                got = tuple(azimuth.shape) if isinstance(azimuth, torch.Tensor) else azimuth
                raise ValueError(
                    f"MuVAE.render expects azimuth of shape {tuple(batch)} (one angle per grid), "
                    f"got {got!r}."
                )
            flat = rotate_about_vertical(flat, azimuth.reshape(-1))
        return project(flat).reshape(*batch, 1, d, d)

    def forward(
        self,
        images: torch.Tensor,
        *,
        azimuth: torch.Tensor | None = None,
        azimuth_latent: torch.Tensor | None = None,
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> MuVAEOutput:
        """Encode ``images`` ``(B, 1, D, D)``, decode a grid, render it at the azimuth.

        Give at most one of ``azimuth`` (``(B,)`` radians) or ``azimuth_latent``
        (``(B, azimuth_latent_size)``, a sample of the per-item azimuth latent, mapped by
        :class:`AzimuthNet`). With neither, the azimuth is the constant 0 (seed 004 sec. 3.2,
        case 1) and the grid is projected unrotated.
        """
        if azimuth is not None and azimuth_latent is not None:
            raise ValueError("give azimuth or azimuth_latent, not both.")
        d = self.config.voxel_size
        _leading_shape(images, (1, d, d), "images", self)
        if images.dim() != 4:
            raise ValueError(
                f"MuVAE.forward expects images (B, 1, {d}, {d}), got {tuple(images.shape)}."
            )
        mean, log_var = self.encoder(images)
        code = reparameterize(mean, log_var, generator) if sample else mean
        grid = self.decoder(code)
        if azimuth_latent is not None:
            azimuth = self.azimuth_net(azimuth_latent)
        projection = self.render(grid, azimuth)
        if azimuth is None:
            azimuth = torch.zeros(images.shape[0], dtype=images.dtype, device=images.device)
        texture = self.texturizer(projection) if self.texturizer is not None else None
        return MuVAEOutput(mean, log_var, code, grid, azimuth, projection, texture)


class AzimuthSearch(NamedTuple):
    """What :func:`search_azimuth` returns (the grids' device; ``n`` = number of images).

    Attributes:
        angle: ``(n,)`` the best candidate azimuth, radians in ``[-pi, pi)``.
        image: ``(n, 1, D, D)`` the network's image there (texturized when searched so).
        error: ``(n,)`` mean squared pixel error of ``image``.
    """

    angle: torch.Tensor
    image: torch.Tensor
    error: torch.Tensor


def search_azimuth(
    net: MuVAE,
    grids: torch.Tensor,
    images: torch.Tensor,
    candidates: int,
    *,
    texturize: bool = False,
) -> AzimuthSearch:
    """For each image, the azimuth among ``candidates`` evenly spaced ones at which its grid
    renders closest to it: ``argmin_k ||x_i - render(g_i, -pi + 2 pi k / candidates)||^2``.

    With ``texturize`` (and a network with a texturizer) the error is that of the projection
    plus that of the texturized image, as in the training loss. Runs without gradient; ties go
    to the first candidate. Memory is one rendered batch at a time.

    Args:
        net: the :class:`MuVAE` whose :meth:`~MuVAE.render` (and texturizer) draw the images.
        grids: ``(n, D, D, D)`` occupancy grids, canonical pose.
        images: ``(n, 1, D, D)`` images, same device.
        candidates: number of angles tried, >= 1.
        texturize: compare texturized images too.

    Returns:
        :class:`AzimuthSearch`.
    """
    if not isinstance(net, MuVAE):
        raise TypeError(f"net must be a MuVAE, got {type(net).__name__}.")
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates must be an int >= 1, got {candidates!r}.")
    d = net.config.voxel_size
    if not isinstance(grids, torch.Tensor) or grids.dim() != 4 or grids.shape[1:] != (d, d, d):
        got = tuple(grids.shape) if isinstance(grids, torch.Tensor) else type(grids).__name__
        raise ValueError(f"grids must be (n, {d}, {d}, {d}), got {got}.")
    n = grids.shape[0]
    if not isinstance(images, torch.Tensor) or images.shape != (n, 1, d, d):
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be ({n}, 1, {d}, {d}) to match the grids, got {got}.")
    texturizer = net.texturizer if texturize else None
    best_error = torch.full((n,), math.inf, device=grids.device)
    best_angle = torch.zeros(n, device=grids.device)
    best_image = torch.zeros_like(images)
    best_pixel_error = torch.zeros(n, device=grids.device)
    with torch.no_grad():
        for k in range(candidates):
            angle = -math.pi + 2.0 * math.pi * k / candidates
            projection = net.render(grids, torch.full((n,), angle, device=grids.device))
            shown = projection if texturizer is None else texturizer(projection)
            pixel_error = (shown - images).square().flatten(1).mean(1)
            error = pixel_error
            if texturizer is not None:
                error = error + (projection - images).square().flatten(1).mean(1)
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best_angle = torch.where(better, torch.full_like(best_angle, angle), best_angle)
            best_image[better] = shown[better]
            best_pixel_error = torch.where(better, pixel_error, best_pixel_error)
    return AzimuthSearch(best_angle, best_image, best_pixel_error)


class ViewDiscriminator(nn.Module):
    """Images ``(*batch, 1, D, D)`` -> logits ``(*batch,)`` that they are training images rather
    than renders of decoded grids at new azimuths.

    Two 4x4 stride-2 convolutions with leaky ReLU (``channels`` filters), then a linear layer.
    Small on purpose: it needs only to see whether a render's silhouette is that of a real
    shape from some side.

    Args:
        voxel_size: image edge ``D`` (the mu-VAE's ``voxel_size``).
        channels: filters of the convolutions.
        leaky_slope: negative slope of the leaky ReLUs.
    """

    def __init__(
        self,
        voxel_size: int = 28,
        *,
        channels: Sequence[int] = (32, 64),
        leaky_slope: float = 0.2,
    ) -> None:
        super().__init__()
        if isinstance(voxel_size, bool) or not isinstance(voxel_size, int) or voxel_size < 4:
            raise ValueError(f"voxel_size must be an int >= 4, got {voxel_size!r}.")
        channels = tuple(channels)
        if not channels or any(
            isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in channels
        ):
            raise ValueError(f"channels must be ints >= 1, got {channels!r}.")
        layers: list[nn.Module] = []
        size, previous = voxel_size, 1
        for width in channels:
            layers += [nn.Conv2d(previous, width, 4, 2, 1), nn.LeakyReLU(leaky_slope)]
            size, previous = size // 2, width
        self.voxel_size = voxel_size
        self.features = nn.Sequential(*layers)
        self.output = nn.Linear(previous * size * size, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        d = self.voxel_size
        batch = _leading_shape(images, (1, d, d), "images", self)
        features = self.features(images.reshape(-1, 1, d, d)).flatten(1)
        return self.output(features).reshape(batch)


# --------------------------------------------------------------------------------------------
# Objectives (seed 004 table 1), as losses to minimize, averaged over the batch
# --------------------------------------------------------------------------------------------


class LossTerms(NamedTuple):
    """Scalar tensors: ``loss = reconstruction + regularization`` (each averaged over the
    batch)."""

    loss: torch.Tensor
    reconstruction: torch.Tensor
    regularization: torch.Tensor


def _as_reconstructions(
    images: torch.Tensor, reconstructions: torch.Tensor | Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    if not isinstance(images, torch.Tensor) or images.dim() < 2:
        raise ValueError(
            "images must be a tensor of shape (B, ...) with at least one dimension after B, got "
            f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}."
        )
    items = (
        [reconstructions] if isinstance(reconstructions, torch.Tensor) else list(reconstructions)
    )
    if not items:
        raise ValueError("give at least one reconstruction.")
    for index, item in enumerate(items):
        if not isinstance(item, torch.Tensor) or item.shape != images.shape:
            raise ValueError(
                f"reconstruction {index} must have the images' shape {tuple(images.shape)}, got "
                f"{tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__}."
            )
    return items


def _check_gaussian(mean: torch.Tensor, log_var: torch.Tensor, batch: int, name: str) -> None:
    for label, tensor in (("mean", mean), ("log_var", log_var)):
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2 or tensor.shape[0] != batch:
            raise ValueError(
                f"{name} {label} must be a (B, D) tensor with B = {batch} (the images' batch), "
                f"got {tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else tensor!r}."
            )
    if mean.shape != log_var.shape:
        raise ValueError(
            f"{name} mean and log_var must have one shape, got {tuple(mean.shape)} and "
            f"{tuple(log_var.shape)}."
        )


def reconstruction_error(
    images: torch.Tensor, reconstructions: torch.Tensor | Sequence[torch.Tensor]
) -> torch.Tensor:
    """Per-item squared error ``(B,)``: ``sum_r ||x - x'_r||^2`` over all non-batch dims.

    With a texturizer pass both outputs, ``(projection, texture)``: seed 004 eq. 3,
    ``L_recon = ||X - X'_projection||^2 + ||X - X'_texture||^2``. Used as ``-log p(x | z)``
    (seed 004 sec. 3.4: mean squared error for all objectives), i.e. a Gaussian likelihood with
    variance 1/2, up to an additive constant.
    """
    items = _as_reconstructions(images, reconstructions)
    batch = images.shape[0]
    return sum((images - item).square().reshape(batch, -1).sum(dim=1) for item in items)


def gaussian_kl(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """``KL(N(mean, diag(exp(log_var))) || N(0, I))`` per item ``(B,)`` for ``(B, D)`` inputs:
    ``0.5 * sum_d (mean_d^2 + exp(log_var_d) - log_var_d - 1)``."""
    if mean.shape != log_var.shape or mean.dim() != 2:
        raise ValueError(
            f"gaussian_kl needs mean and log_var of one (B, D) shape, got {tuple(mean.shape)} "
            f"and {tuple(log_var.shape)}."
        )
    return 0.5 * (mean.square() + log_var.exp() - log_var - 1.0).sum(dim=1)


def elbo_loss(
    images: torch.Tensor,
    reconstructions: torch.Tensor | Sequence[torch.Tensor],
    mean: torch.Tensor,
    log_var: torch.Tensor,
) -> LossTerms:
    """Negative VAE objective (seed 004 table 1, ``L_e``), averaged over the batch.

    ``L_e = E_q[log p(x|z)] - KL(q(z|x) || p(z))``; the loss is
    ``(1/B) sum_i [ sum_r ||x_i - x'_{r,i}||^2 + 0.5 sum_d (mu_{i,d}^2 + sigma_{i,d}^2
    - log sigma_{i,d}^2 - 1) ]`` with the expectation estimated by the reconstruction(s) of one
    sample (see :func:`reconstruction_error`). ``mean``, ``log_var``: ``(B, D)``.
    """
    return beta_vae_loss(images, reconstructions, mean, log_var, beta=1.0)


def beta_vae_loss(
    images: torch.Tensor,
    reconstructions: torch.Tensor | Sequence[torch.Tensor],
    mean: torch.Tensor,
    log_var: torch.Tensor,
    beta: float = 30.0,
) -> LossTerms:
    """Negative beta-VAE objective (seed 004 table 1, ``L_beta``), averaged over the batch.

    ``L_beta = E_q[log p(x|z)] - beta * KL(q(z|x) || p(z))``; the loss is
    ``(1/B) sum_i [ sum_r ||x_i - x'_{r,i}||^2 + beta * KL_i ]`` with ``KL_i`` as in
    :func:`gaussian_kl`. Seed 004 sec. 3.4 uses ``beta = 30`` (the default).
    """
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite number, got {beta!r}.")
    items = _as_reconstructions(images, reconstructions)
    _check_gaussian(mean, log_var, images.shape[0], "shape code")
    reconstruction = reconstruction_error(images, items).mean()
    regularization = float(beta) * gaussian_kl(mean, log_var).mean()
    return LossTerms(reconstruction + regularization, reconstruction, regularization)


def mu_vae_loss(
    images: torch.Tensor,
    reconstructions: torch.Tensor | Sequence[torch.Tensor],
    shape_mean: torch.Tensor,
    shape_log_var: torch.Tensor,
    azimuth_mean: torch.Tensor | None = None,
    azimuth_log_var: torch.Tensor | None = None,
) -> LossTerms:
    """Negative mu-VAE objective (seed 004 table 1, ``L_mu``; Ucar 2019), batch-averaged.

    With ``B`` items, shape-code means ``mu_S`` and log-variances ``log sigma_S^2`` (``(B, D_S)``)
    and, when the azimuth is a latent, ``mu_theta`` and ``log sigma_theta^2`` (``(B, D_theta)``):

    ``loss = (1/B) sum_i sum_r ||x_i - x'_{r,i}||^2
    + (1/B) |sum_i sum_d mu_S[i,d]| + (1/B) |sum_i sum_d mu_theta[i,d]|
    - (1/B) sum_i sum_d log sigma_S^2[i,d] - (1/B) sum_i sum_d log sigma_theta^2[i,d]``.

    The first regularizer keeps the *aggregate* mean of the codes at the prior's 0 while letting
    individual codes spread out; the second pushes every standard deviation up toward its bound.

    Sign of the log-variance term: the text of seed 004 as extracted shows ``+ [log sigma^2]``
    inside the bracket that is subtracted from ``L_mu``, but the bars and signs of that table are
    garbled. We take ``-log sigma^2`` in the loss: it is the term the mu-VAE keeps from the KL
    (``KL`` contains ``-0.5 log sigma^2``) to prevent posterior collapse, and with the standard
    deviation bounded to (0, 1) by latent clipping (``MuVAEConfig.bounded_std``) it is >= 0 and
    minimal at sigma = 1, while the opposite sign would be unbounded below. Use bounded standard
    deviations with this loss.

    Returns:
        :class:`LossTerms` (scalar tensors).
    """
    items = _as_reconstructions(images, reconstructions)
    batch = images.shape[0]
    _check_gaussian(shape_mean, shape_log_var, batch, "shape code")
    if (azimuth_mean is None) != (azimuth_log_var is None):
        raise ValueError("give both azimuth_mean and azimuth_log_var, or neither.")
    reconstruction = reconstruction_error(images, items).mean()
    regularization = (shape_mean.sum().abs() - shape_log_var.sum()) / batch
    if azimuth_mean is not None:
        _check_gaussian(azimuth_mean, azimuth_log_var, batch, "azimuth latent")
        regularization = regularization + (azimuth_mean.sum().abs() - azimuth_log_var.sum()) / batch
    return LossTerms(reconstruction + regularization, reconstruction, regularization)
