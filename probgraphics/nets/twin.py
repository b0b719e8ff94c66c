"""The twin-tailed encoder/decoder of seed 002: shape code -> volume, shape + pose code -> image.

Seed 002 section 3 and figures 1-2:

* :class:`TwinEncoder`: convolution, batch norm and randomized leaky ReLU (RReLU) stages, with a
  spatial-transformer down-sampler (:class:`SpatialTransformerDownsample`) after the first and the
  second convolution and a max-pool after the third, then (optionally) a fully connected RReLU
  layer (3000 units in the paper's disentangling experiment, sec. 4.5) and a linear map to a code
  split into a *shape code* (185 units) and a *transformation code* (15 units).
* :class:`VolumeDecoder`: shape code -> volumetric up-sampling and 3D convolutions with RReLU -> a
  ``V^3`` voxel grid, with a PReLU on the output layer (sec. 3.1).
* :class:`ImageDecoder`: shape code and transformation code -> spatial up-sampling and
  convolutions with RReLU -> the input image, PReLU on the output layer.

Gradient blocking (sec. 3.1, figure 2): "during training, the backward pass from the image decoder
to the shape code is blocked", so the shape code learns only from the volume loss and the
transformation code only from the image loss; the image decoder's own weights still learn from
the image loss. :class:`ImageDecoder` does this by reading ``shape_code.detach()`` (forward values
unchanged, zero gradient to the shape code and, through it, to the encoder's shape units).

Layer widths the paper does not state (convolution filters, decoder channels) are ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from probgraphics.nets.checkpoint import NetConfig
from probgraphics.nets.dcign import _leading_shape

__all__ = [
    "ImageDecoder",
    "SpatialTransformerDownsample",
    "TwinConfig",
    "TwinEncoder",
    "TwinOutput",
    "TwinTailed",
    "VolumeDecoder",
]


@dataclass(frozen=True)
class TwinConfig(NetConfig):
    """Architecture of the twin-tailed network (seed 002). Frozen and validated.

    Attributes:
        image_size: input and reconstructed images are ``S x S`` (80 in the paper); a multiple
            of 8 (two spatial-transformer halvings and one max-pool).
        in_channels: image channels (3: the paper's colour images).
        encoder_channels: filters of the three encoder convolutions.
        kernel_size: encoder convolution kernel (odd; 5).
        localisation_channels: filters of every localisation-network convolution.
        encoder_hidden: units of the fully connected RReLU layer before the code (3000 in seed
            002 sec. 4.5); 0 for none.
        shape_code_size: units of the shape code (185).
        transformation_code_size: units of the transformation code (15).
        volume_size: voxel grid edge ``V`` (80); divisible by ``2 ** len(volume_channels)``.
        volume_channels: channels of the volume decoder's up-sampling stages.
        image_channels: channels of the image decoder's three up-sampling stages.
        block_shape_gradient: block the image decoder's gradient into the shape code (the
            paper's training; False only for ablations).
    """

    image_size: int = 80
    in_channels: int = 3
    encoder_channels: tuple[int, int, int] = (32, 64, 96)
    kernel_size: int = 5
    localisation_channels: int = 20
    encoder_hidden: int = 3000
    shape_code_size: int = 185
    transformation_code_size: int = 15
    volume_size: int = 80
    volume_channels: tuple[int, ...] = (64, 32, 16)
    image_channels: tuple[int, int, int] = (96, 64, 32)
    block_shape_gradient: bool = True

    def __post_init__(self) -> None:
        for name in (
            "image_size",
            "in_channels",
            "kernel_size",
            "localisation_channels",
            "shape_code_size",
            "transformation_code_size",
            "volume_size",
        ):
            self._check_int(name)
        self._check_int("encoder_hidden", minimum=0)
        self._check_int_tuple("encoder_channels")
        self._check_int_tuple("volume_channels")
        self._check_int_tuple("image_channels")
        self._check_bool("block_shape_gradient")
        for name in ("encoder_channels", "image_channels"):
            if len(getattr(self, name)) != 3:
                raise ValueError(
                    f"TwinConfig.{name} must have 3 entries (the paper's three stages), got "
                    f"{getattr(self, name)!r}."
                )
        if self.kernel_size % 2 == 0:
            raise ValueError(f"TwinConfig.kernel_size must be odd, got {self.kernel_size}.")
        if self.image_size % 8:
            raise ValueError(
                f"TwinConfig.image_size must be a multiple of 8 (two spatial-transformer "
                f"halvings and a max-pool), got {self.image_size}."
            )
        factor = 2 ** len(self.volume_channels)
        if self.volume_size % factor:
            raise ValueError(
                f"TwinConfig.volume_size {self.volume_size} must be divisible by "
                f"2 ** len(volume_channels) = {factor}."
            )

    @property
    def code_size(self) -> int:
        """Shape plus transformation code units (200)."""
        return self.shape_code_size + self.transformation_code_size


def _pooled(size: int) -> int:
    return math.ceil(size / 2)


class SpatialTransformerDownsample(nn.Module):
    """A spatial transformer that halves the map size (seed 002 sec. 3.2).

    A localisation network regresses an affine matrix ``theta`` ``(B, 2, 3)`` from the feature
    maps; ``affine_grid`` builds an ``(H/2, W/2)`` sampling grid in normalized coordinates and
    ``grid_sample`` (bilinear, zero padding, ``align_corners=False``) reads the input there. The
    last localisation layer starts at zero weights and the identity bias, so at initialization the
    module samples each 2x2 block's centre, which equals 2x2 average pooling.

    ``variant`` picks the paper's localisation network: ``"first"`` (four 5x5 convolutions with
    batch norm, the first three followed by 2x2 max-pool) or ``"second"`` (two 5x5 and one 6x6
    convolution with batch norm, the last two followed by max-pool). Convolutions are padded so
    small maps do not vanish; pools round up.

    Input ``(B, C, H, W)`` float; output ``(B, C, H // 2, W // 2)``; ``last_theta`` keeps the most
    recent ``theta`` (detached) for inspection.
    """

    def __init__(self, channels: int, size: int, hidden: int, variant: str = "first") -> None:
        super().__init__()
        if variant == "first":
            plan = [(5, 2, True), (5, 2, True), (5, 2, True), (5, 2, False)]
        elif variant == "second":
            plan = [(5, 2, False), (5, 2, True), (6, 3, True)]
        else:
            raise ValueError(f"variant must be 'first' or 'second', got {variant!r}.")
        if size < 2:
            raise ValueError(
                f"a spatial-transformer down-sampler needs maps of size >= 2, got {size}."
            )
        layers: list[nn.Module] = []
        previous = channels
        spatial = size
        for kernel, padding, pool in plan:
            layers += [
                nn.Conv2d(previous, hidden, kernel, padding=padding),
                nn.BatchNorm2d(hidden),
                nn.ReLU(),
            ]
            spatial = spatial + 2 * padding - kernel + 1
            if pool:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                spatial = _pooled(spatial)
            previous = hidden
        self.localisation = nn.Sequential(*layers)
        self.regressor = nn.Linear(hidden * spatial * spatial, 6)
        nn.init.zeros_(self.regressor.weight)
        with torch.no_grad():
            self.regressor.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
        self.size = size
        self.last_theta: torch.Tensor | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = features.shape
        theta = self.regressor(self.localisation(features).flatten(1)).reshape(batch, 2, 3)
        self.last_theta = theta.detach()
        grid = F.affine_grid(theta, [batch, channels, height // 2, width // 2], align_corners=False)
        return F.grid_sample(
            features, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )


class TwinEncoder(nn.Module):
    """Images ``(*batch, C, S, S)`` float32 -> ``(shape_code, transformation_code)``, shapes
    ``(*batch, shape_code_size)`` and ``(*batch, transformation_code_size)``.

    Batch norm and RReLU make training-mode outputs batch-dependent and random; use ``.eval()``
    for deterministic encodings.
    """

    def __init__(self, config: TwinConfig) -> None:
        super().__init__()
        if not isinstance(config, TwinConfig):
            raise TypeError(f"TwinEncoder expects a TwinConfig, got {type(config).__name__}.")
        self.config = config
        c1, c2, c3 = config.encoder_channels
        k, pad, s = config.kernel_size, config.kernel_size // 2, config.image_size

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, k, padding=pad), nn.BatchNorm2d(cout), nn.RReLU()
            )

        self.stage1 = stage(config.in_channels, c1)
        self.transformer1 = SpatialTransformerDownsample(
            c1, s, config.localisation_channels, "first"
        )
        self.stage2 = stage(c1, c2)
        self.transformer2 = SpatialTransformerDownsample(
            c2, s // 2, config.localisation_channels, "second"
        )
        self.stage3 = stage(c2, c3)
        self.pool = nn.MaxPool2d(2)
        flatten = c3 * (s // 8) ** 2
        if config.encoder_hidden:
            self.hidden = nn.Sequential(nn.Linear(flatten, config.encoder_hidden), nn.RReLU())
            flatten = config.encoder_hidden
        else:
            self.hidden = nn.Identity()
        self.code = nn.Linear(flatten, config.code_size)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        s = c.image_size
        batch = _leading_shape(images, (c.in_channels, s, s), "images", self)
        hidden = self.transformer1(self.stage1(images.reshape(-1, c.in_channels, s, s)))
        hidden = self.transformer2(self.stage2(hidden))
        hidden = self.pool(self.stage3(hidden))
        code = self.code(self.hidden(hidden.flatten(1)))
        shape_code, transformation_code = code.split(
            [c.shape_code_size, c.transformation_code_size], dim=1
        )
        return shape_code.reshape(*batch, -1), transformation_code.reshape(*batch, -1)


class VolumeDecoder(nn.Module):
    """Shape codes ``(*batch, shape_code_size)`` -> voxel grids ``(*batch, V, V, V)`` (PReLU
    output, unbounded; trained with MSE against binary volumes as in seed 002 sec. 4.1)."""

    def __init__(self, config: TwinConfig) -> None:
        super().__init__()
        if not isinstance(config, TwinConfig):
            raise TypeError(f"VolumeDecoder expects a TwinConfig, got {type(config).__name__}.")
        self.config = config
        first = config.volume_channels[0]
        base = config.volume_size // 2 ** len(config.volume_channels)
        self._start = (first, base, base, base)
        self.fully_connected = nn.Sequential(
            nn.Linear(config.shape_code_size, first * base**3), nn.RReLU()
        )
        stages: list[nn.Module] = []
        previous = first
        for width in config.volume_channels:
            stages += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv3d(previous, width, 3, padding=1),
                nn.BatchNorm3d(width),
                nn.RReLU(),
            ]
            previous = width
        stages += [nn.Conv3d(previous, 1, 3, padding=1), nn.PReLU()]
        self.stages = nn.Sequential(*stages)

    def forward(self, shape_code: torch.Tensor) -> torch.Tensor:
        c = self.config
        batch = _leading_shape(shape_code, (c.shape_code_size,), "shape_code", self)
        hidden = self.fully_connected(shape_code.reshape(-1, c.shape_code_size))
        volume = self.stages(hidden.reshape(-1, *self._start))
        v = c.volume_size
        return volume.reshape(*batch, v, v, v)


class ImageDecoder(nn.Module):
    """``(shape_code, transformation_code)`` -> images ``(*batch, C, S, S)`` (PReLU output).

    The shape code enters as ``shape_code.detach()`` when ``config.block_shape_gradient`` (the
    default): the image loss trains this decoder and the transformation code but sends exactly
    zero gradient into the shape code (seed 002 sec. 3.1, figure 2).
    """

    def __init__(self, config: TwinConfig) -> None:
        super().__init__()
        if not isinstance(config, TwinConfig):
            raise TypeError(f"ImageDecoder expects a TwinConfig, got {type(config).__name__}.")
        self.config = config
        first = config.image_channels[0]
        base = config.image_size // 8
        self._start = (first, base, base)
        self.fully_connected = nn.Sequential(
            nn.Linear(config.code_size, first * base**2), nn.RReLU()
        )
        k, pad = config.kernel_size, config.kernel_size // 2
        stages: list[nn.Module] = []
        previous = first
        for width in config.image_channels:
            stages += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(previous, width, k, padding=pad),
                nn.BatchNorm2d(width),
                nn.RReLU(),
            ]
            previous = width
        stages += [nn.Conv2d(previous, config.in_channels, k, padding=pad), nn.PReLU()]
        self.stages = nn.Sequential(*stages)

    def forward(self, shape_code: torch.Tensor, transformation_code: torch.Tensor) -> torch.Tensor:
        c = self.config
        batch = _leading_shape(shape_code, (c.shape_code_size,), "shape_code", self)
        other = _leading_shape(
            transformation_code, (c.transformation_code_size,), "transformation_code", self
        )
        if batch != other:
            raise ValueError(
                f"shape_code and transformation_code need the same batch shape, got "
                f"{tuple(batch)} and {tuple(other)}."
            )
        if c.block_shape_gradient:
            shape_code = shape_code.detach()
        code = torch.cat([shape_code, transformation_code], dim=-1).reshape(-1, c.code_size)
        images = self.stages(self.fully_connected(code).reshape(-1, *self._start))
        s = c.image_size
        return images.reshape(*batch, c.in_channels, s, s)


class TwinOutput(NamedTuple):
    """What :meth:`TwinTailed.forward` returns (module's device, float32).

    Attributes:
        shape_code: ``(B, shape_code_size)``.
        transformation_code: ``(B, transformation_code_size)``.
        volume: ``(B, V, V, V)`` or ``None`` when the volume switch is off.
        image: ``(B, C, S, S)`` or ``None`` when the image switch is off.
    """

    shape_code: torch.Tensor
    transformation_code: torch.Tensor
    volume: torch.Tensor | None
    image: torch.Tensor | None


class TwinTailed(nn.Module):
    """Encoder plus volume and image decoders (seed 002 figure 1).

    The ``volume`` / ``image`` switches of :meth:`forward` are the paper's switches connecting the
    code to either decoder (sec. 4.5 alternates them every three batches).
    """

    def __init__(self, config: TwinConfig | None = None) -> None:
        super().__init__()
        config = TwinConfig() if config is None else config
        if not isinstance(config, TwinConfig):
            raise TypeError(f"TwinTailed expects a TwinConfig, got {type(config).__name__}.")
        self.config = config
        self.encoder = TwinEncoder(config)
        self.volume_decoder = VolumeDecoder(config)
        self.image_decoder = ImageDecoder(config)

    def forward(
        self, images: torch.Tensor, *, volume: bool = True, image: bool = True
    ) -> TwinOutput:
        """Encode images ``(*batch, C, S, S)`` and run the switched-on decoders."""
        shape_code, transformation_code = self.encoder(images)
        volumes = self.volume_decoder(shape_code) if volume else None
        reconstructions = self.image_decoder(shape_code, transformation_code) if image else None
        return TwinOutput(shape_code, transformation_code, volumes, reconstructions)
