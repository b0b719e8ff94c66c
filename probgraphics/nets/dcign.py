"""The Deep Convolutional Inverse Graphics Network (DC-IGN; seed 001 figure 1, seed 000 sec. 3).

Encoder (de-renderer): ``len(channels)`` stages of convolution (kernel 5, ReLU) and 2x2 max-pool
(96, 64, 32 filters in the paper), flattened (7200 values at 150x150: 32 maps of 15x15 with the
paper's unpadded convolutions), then two linear maps to the mean and the log-variance of a
diagonal Gaussian over the graphics code (200 units): seed 001 eq. 1-3, ``mu = W y`` and
``Sigma = diag(exp(W' y))``.

Decoder (renderer): a fully connected layer from the code back to the encoder's last feature map
shape, then per stage nearest-neighbour unpooling followed by a convolution (kernel 7; 32, 64, 96
filters), and a final convolution to the image channels with a sigmoid, so pixels are in [0, 1].
The unpooling targets mirror the encoder's feature-map sizes (150 <- 73 <- 34 <- 15 at 150 px), so
the output is exactly ``image_size`` for any input size; where the size exactly doubles this is the
usual 2x nearest-neighbour unpooling.

:class:`CodeLayout` names groups of code units (azimuth z1, elevation z2, light z3, intrinsic
z4..n; seed 001 figure 2), used by the clamped training procedure (:mod:`.clamped`) and by
encoder summaries that keep a named subset of the code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from probgraphics.nets.checkpoint import NetConfig

__all__ = [
    "CodeLayout",
    "DCIGN",
    "DCIGNConfig",
    "DCIGNDecoder",
    "DCIGNEncoder",
    "DCIGNOutput",
    "reparameterize",
]


# --------------------------------------------------------------------------------------------
# Code layout
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeLayout:
    """Named, disjoint groups of units of a code vector of ``code_size`` units.

    Build it from a mapping ``{name: indices}`` (insertion order is kept) or with
    :meth:`dcign`. Groups need not cover every unit; units in no group are treated as inactive
    by the clamped procedure.

    >>> layout = CodeLayout.dcign(code_size=200)
    >>> layout["azimuth"], layout["light"], len(layout["intrinsic"])
    ((0,), (2,), 197)
    """

    code_size: int
    groups: Mapping[str, Sequence[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        size = self.code_size
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"CodeLayout.code_size must be an int >= 1, got {size!r}.")
        if not isinstance(self.groups, Mapping):
            raise TypeError(
                f"CodeLayout.groups must be a mapping of names to index lists, got "
                f"{type(self.groups).__name__}."
            )
        normalized: dict[str, tuple[int, ...]] = {}
        owner: dict[int, str] = {}
        for name, indices in self.groups.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"CodeLayout group names must be non-empty str, got {name!r}.")
            if isinstance(indices, torch.Tensor):
                indices = indices.tolist()
            if isinstance(indices, (str, bytes)) or not hasattr(indices, "__iter__"):
                raise ValueError(
                    f"CodeLayout group {name!r} must be a sequence of unit indices, got "
                    f"{indices!r}."
                )
            items = tuple(indices)
            if not items:
                raise ValueError(f"CodeLayout group {name!r} is empty; give it at least one unit.")
            for index in items:
                if not isinstance(index, int) or isinstance(index, bool):
                    raise ValueError(f"CodeLayout group {name!r} has a non-int index {index!r}.")
                if not 0 <= index < size:
                    raise ValueError(
                        f"CodeLayout group {name!r} has index {index}, outside the code "
                        f"[0, {size}); use indices below code_size."
                    )
                if index in owner:
                    raise ValueError(
                        f"CodeLayout groups must be disjoint: unit {index} is in both "
                        f"{owner[index]!r} and {name!r}."
                    )
                owner[index] = name
            normalized[name] = items
        # A read-only copy: the layout is hashable-by-value in spirit and must not change.
        object.__setattr__(self, "groups", _FrozenGroups(normalized))

    @classmethod
    def dcign(cls, code_size: int = 200) -> CodeLayout:
        """The face layout of seed 001 figure 2: azimuth [0], elevation [1], light [2], intrinsic
        [3, code_size)."""
        if not isinstance(code_size, int) or isinstance(code_size, bool) or code_size < 4:
            raise ValueError(
                f"CodeLayout.dcign needs code_size >= 4 (three extrinsic units and at least one "
                f"intrinsic), got {code_size!r}."
            )
        return cls(
            code_size,
            {
                "azimuth": (0,),
                "elevation": (1,),
                "light": (2,),
                "intrinsic": tuple(range(3, code_size)),
            },
        )

    @property
    def names(self) -> tuple[str, ...]:
        """Group names in order."""
        return tuple(self.groups)

    def __getitem__(self, name: str) -> tuple[int, ...]:
        """The unit indices of group ``name`` as a tuple of ints (usable to index a tensor)."""
        if name not in self.groups:
            raise KeyError(f"no code group named {name!r}; the layout has {list(self.groups)}.")
        return self.groups[name]

    def __contains__(self, name: object) -> bool:
        return name in self.groups

    def __iter__(self) -> Iterator[str]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def indices(
        self, name: str | Sequence[str], device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Unit indices of one group, or of several groups concatenated, as an int64 tensor."""
        names = [name] if isinstance(name, str) else list(name)
        units = [i for n in names for i in self[n]]
        return torch.tensor(units, dtype=torch.long, device=device)

    def mask(
        self, name: str | Sequence[str], device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Bool tensor ``(code_size,)``: True at the units of the named group(s)."""
        mask = torch.zeros(self.code_size, dtype=torch.bool, device=device)
        mask[self.indices(name, device=device)] = True
        return mask

    def to_dict(self) -> dict[str, Any]:
        """Plain form: ``{"code_size": int, "groups": {name: [indices]}}``."""
        return {
            "code_size": self.code_size,
            "groups": {name: list(indices) for name, indices in self.groups.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CodeLayout:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, Mapping) or set(data) != {"code_size", "groups"}:
            raise ValueError(
                "CodeLayout.from_dict expects {'code_size': int, 'groups': {name: [indices]}}, "
                f"got {data!r}."
            )
        return cls(data["code_size"], data["groups"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CodeLayout):
            return NotImplemented
        return self.code_size == other.code_size and list(self.groups.items()) == list(
            other.groups.items()
        )

    def __hash__(self) -> int:
        return hash((self.code_size, tuple(self.groups.items())))

    def __repr__(self) -> str:
        parts = []
        for name, indices in self.groups.items():
            contiguous = list(indices) == list(range(indices[0], indices[0] + len(indices)))
            if contiguous and len(indices) > 1:
                parts.append(f"{name}=[{indices[0]}..{indices[-1]}]")
            else:
                parts.append(f"{name}={list(indices)}")
        return f"CodeLayout(code_size={self.code_size}, {', '.join(parts)})"


class _FrozenGroups(Mapping):
    """A read-only ordered mapping of group name to index tuple."""

    def __init__(self, groups: dict[str, tuple[int, ...]]) -> None:
        self._groups = dict(groups)

    def __getitem__(self, key: str) -> tuple[int, ...]:
        return self._groups[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)

    def __repr__(self) -> str:
        return repr(self._groups)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DCIGNConfig(NetConfig):
    """Architecture of a DC-IGN (seed 001 figure 1). Frozen and validated on construction.

    Attributes:
        image_size: input and output images are ``image_size x image_size`` (150 in the paper;
            64 is the CPU default).
        in_channels: image channels (1: grayscale as in the paper).
        channels: encoder filters per conv+pool stage (paper: 96, 64, 32).
        kernel_size: encoder convolution kernel (paper: 5).
        padding: encoder convolution zero padding; 0 (the paper's unpadded convolutions, giving
            the 7200-unit flatten at 150 px). Use ``kernel_size // 2`` for small images where
            unpadded stages would shrink the maps to nothing.
        pool_size: max-pool window and stride (2).
        code_size: graphics code units (200).
        decoder_channels: filters of the unpool+conv stages, coarse to fine (paper: 32, 64,
            96); as many stages as the encoder has.
        decoder_kernel: decoder convolution kernel, odd (paper: 7).
        layout: named code groups; ``None`` means :meth:`CodeLayout.dcign` (needs
            ``code_size >= 4``; pass a layout otherwise).
    """

    image_size: int = 64
    in_channels: int = 1
    channels: tuple[int, ...] = (96, 64, 32)
    kernel_size: int = 5
    padding: int = 0
    pool_size: int = 2
    code_size: int = 200
    decoder_channels: tuple[int, ...] = (32, 64, 96)
    decoder_kernel: int = 7
    layout: CodeLayout | None = None

    def __post_init__(self) -> None:
        for name in ("image_size", "in_channels", "kernel_size", "pool_size", "code_size"):
            self._check_int(name)
        self._check_int("padding", minimum=0)
        self._check_int("decoder_kernel")
        self._check_int_tuple("channels")
        self._check_int_tuple("decoder_channels")
        if self.decoder_kernel % 2 == 0:
            raise ValueError(
                f"DCIGNConfig.decoder_kernel must be odd (the decoder's convolutions keep the "
                f"map size), got {self.decoder_kernel}."
            )
        if len(self.decoder_channels) != len(self.channels):
            raise ValueError(
                f"DCIGNConfig.decoder_channels has {len(self.decoder_channels)} stages but the "
                f"encoder has {len(self.channels)}; the decoder mirrors the encoder, give one "
                "decoder stage per encoder stage."
            )
        size = self.image_size
        for stage in range(len(self.channels)):
            convolved = size + 2 * self.padding - self.kernel_size + 1
            if convolved < self.pool_size:
                raise ValueError(
                    f"DCIGNConfig: image_size {self.image_size} is too small for "
                    f"{len(self.channels)} conv(kernel {self.kernel_size}, padding "
                    f"{self.padding}) + pool({self.pool_size}) stages: stage {stage + 1} gets a "
                    f"{size}x{size} map. Use fewer channels stages, padding="
                    f"{self.kernel_size // 2}, or a larger image_size."
                )
            size = convolved // self.pool_size
        layout = self.layout
        if layout is None:
            if self.code_size < 4:
                raise ValueError(
                    f"DCIGNConfig.code_size {self.code_size} is too small for the default "
                    "azimuth/elevation/light/intrinsic layout; pass layout=CodeLayout(...)."
                )
            layout = CodeLayout.dcign(self.code_size)
        elif isinstance(layout, Mapping):
            layout = CodeLayout.from_dict(layout)
        if not isinstance(layout, CodeLayout):
            raise TypeError(
                f"DCIGNConfig.layout must be a CodeLayout or None, got {type(layout).__name__}."
            )
        if layout.code_size != self.code_size:
            raise ValueError(
                f"DCIGNConfig.layout is for a code of {layout.code_size} units but code_size is "
                f"{self.code_size}; build the layout with the same code_size."
            )
        object.__setattr__(self, "layout", layout)

    @classmethod
    def paper(cls, **overrides: Any) -> DCIGNConfig:
        """The architecture of seed 001 figure 1: 150x150 grayscale, 96/64/32 filters of 5x5,
        7200 -> 200 code, decoder 32/64/96 filters of 7x7. Keyword ``overrides`` change fields."""
        return cls(**{"image_size": 150, **overrides})

    @classmethod
    def _field_from_plain(cls, name: str, value: Any) -> Any:
        if name == "layout" and value is not None:
            return CodeLayout.from_dict(value)
        return value

    @property
    def feature_sizes(self) -> tuple[int, ...]:
        """Spatial size of the image and of each encoder stage's output: (150, 73, 34, 15) for
        the paper."""
        sizes = [self.image_size]
        for _ in self.channels:
            sizes.append((sizes[-1] + 2 * self.padding - self.kernel_size + 1) // self.pool_size)
        return tuple(sizes)

    @property
    def flatten_size(self) -> int:
        """Units of the flattened last feature map (7200 for the paper's 150x150 network)."""
        return self.channels[-1] * self.feature_sizes[-1] ** 2


# --------------------------------------------------------------------------------------------
# Shared input checks
# --------------------------------------------------------------------------------------------


def _leading_shape(
    tensor: torch.Tensor, trailing: tuple[int, ...], name: str, owner: nn.Module
) -> torch.Size:
    """Check ``tensor`` is ``(*batch, *trailing)`` in the module's dtype; return ``batch``."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(
            f"{type(owner).__name__} expects {name} as a torch.Tensor of shape "
            f"(*batch, {', '.join(map(str, trailing))}), got {type(tensor).__name__}."
        )
    n = len(trailing)
    if tensor.dim() < n + 1 or tuple(tensor.shape[-n:]) != trailing:
        raise ValueError(
            f"{type(owner).__name__} expects {name} of shape (*batch, "
            f"{', '.join(map(str, trailing))}), got {tuple(tensor.shape)}. Resize the input or "
            "build the network with a matching config."
        )
    parameter = next(owner.parameters(), None)
    if parameter is not None and tensor.dtype != parameter.dtype:
        raise TypeError(
            f"{type(owner).__name__} has {parameter.dtype} weights but {name} is "
            f"{tensor.dtype}; convert with .to({parameter.dtype})."
        )
    return tensor.shape[:-n]


def reparameterize(
    mean: torch.Tensor, log_var: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A reparameterized sample ``mean + exp(log_var / 2) * eps``, ``eps ~ N(0, I)``.

    ``mean`` and ``log_var`` have the same shape, dtype and device; so does the result.
    """
    if mean.shape != log_var.shape:
        raise ValueError(
            f"reparameterize needs mean and log_var of one shape, got {tuple(mean.shape)} and "
            f"{tuple(log_var.shape)}."
        )
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * log_var) * noise


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


class DCIGNEncoder(nn.Module):
    """Images ``(*batch, C, S, S)`` float32 in [0, 1] -> ``(mean, log_var)``, each
    ``(*batch, code_size)``, on the module's device."""

    def __init__(self, config: DCIGNConfig) -> None:
        super().__init__()
        if not isinstance(config, DCIGNConfig):
            raise TypeError(f"DCIGNEncoder expects a DCIGNConfig, got {type(config).__name__}.")
        self.config = config
        layers: list[nn.Module] = []
        previous = config.in_channels
        for width in config.channels:
            layers += [
                nn.Conv2d(previous, width, config.kernel_size, padding=config.padding),
                nn.ReLU(),
                nn.MaxPool2d(config.pool_size),
            ]
            previous = width
        self.features = nn.Sequential(*layers)
        self.mean_head = nn.Linear(config.flatten_size, config.code_size)
        self.log_var_head = nn.Linear(config.flatten_size, config.code_size)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        batch = _leading_shape(images, (c.in_channels, c.image_size, c.image_size), "images", self)
        hidden = self.features(images.reshape(-1, c.in_channels, c.image_size, c.image_size))
        hidden = hidden.flatten(1)
        mean = self.mean_head(hidden).reshape(*batch, c.code_size)
        log_var = self.log_var_head(hidden).reshape(*batch, c.code_size)
        return mean, log_var


class DCIGNDecoder(nn.Module):
    """Codes ``(*batch, code_size)`` float32 -> images ``(*batch, C, S, S)`` in (0, 1)."""

    def __init__(self, config: DCIGNConfig) -> None:
        super().__init__()
        if not isinstance(config, DCIGNConfig):
            raise TypeError(f"DCIGNDecoder expects a DCIGNConfig, got {type(config).__name__}.")
        self.config = config
        sizes = config.feature_sizes
        self._start = (config.channels[-1], sizes[-1], sizes[-1])
        # Unpool to the encoder's map sizes in reverse, ending at the image size.
        self._unpool_sizes = tuple(reversed(sizes[:-1]))
        self.fully_connected = nn.Linear(config.code_size, config.flatten_size)
        pad = config.decoder_kernel // 2
        convs = []
        previous = config.channels[-1]
        for width in config.decoder_channels:
            convs.append(nn.Conv2d(previous, width, config.decoder_kernel, padding=pad))
            previous = width
        self.stages = nn.ModuleList(convs)
        self.output = nn.Conv2d(previous, config.in_channels, config.decoder_kernel, padding=pad)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        c = self.config
        batch = _leading_shape(code, (c.code_size,), "code", self)
        hidden = F.relu(self.fully_connected(code.reshape(-1, c.code_size)))
        hidden = hidden.reshape(-1, *self._start)
        for size, conv in zip(self._unpool_sizes, self.stages, strict=True):
            hidden = F.interpolate(hidden, size=(size, size), mode="nearest")
            hidden = F.relu(conv(hidden))
        images = torch.sigmoid(self.output(hidden))
        return images.reshape(*batch, c.in_channels, c.image_size, c.image_size)


class DCIGNOutput(NamedTuple):
    """What :meth:`DCIGN.forward` returns (all on the module's device, float32).

    Attributes:
        reconstruction: ``(B, C, S, S)`` decoded images in (0, 1).
        mean: ``(B, K)`` posterior means from the encoder.
        log_var: ``(B, K)`` posterior log-variances.
        code: ``(B, K)`` the code the decoder saw: the reparameterized sample (or the mean when
            ``sample=False``), with inactive units clamped when ``active`` was given.
    """

    reconstruction: torch.Tensor
    mean: torch.Tensor
    log_var: torch.Tensor
    code: torch.Tensor


class DCIGN(nn.Module):
    """The DC-IGN variational autoencoder: :class:`DCIGNEncoder` + :class:`DCIGNDecoder`.

    >>> net = DCIGN(DCIGNConfig(image_size=32, channels=(8, 8), decoder_channels=(8, 8),
    ...                         padding=2, code_size=16))
    >>> out = net(torch.rand(4, 1, 32, 32), active="azimuth")
    >>> tuple(out.reconstruction.shape), tuple(out.code.shape)
    ((4, 1, 32, 32), (4, 16))
    """

    def __init__(self, config: DCIGNConfig | None = None) -> None:
        super().__init__()
        config = DCIGNConfig() if config is None else config
        if not isinstance(config, DCIGNConfig):
            raise TypeError(f"DCIGN expects a DCIGNConfig, got {type(config).__name__}.")
        self.config = config
        self.encoder = DCIGNEncoder(config)
        self.decoder = DCIGNDecoder(config)

    @property
    def layout(self) -> CodeLayout:
        """The named code groups (``config.layout``)."""
        return self.config.layout

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(*batch, C, S, S)`` -> ``(mean, log_var)``, each ``(*batch, code_size)``."""
        return self.encoder(images)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """``(*batch, code_size)`` -> images ``(*batch, C, S, S)`` in (0, 1)."""
        return self.decoder(code)

    def forward(
        self,
        images: torch.Tensor,
        *,
        active: str | Sequence[str] | Sequence[int] | torch.Tensor | None = None,
        invariance_scale: float = 0.01,
        clamp_to: str = "mean",
        sample: bool = True,
        generator: torch.Generator | None = None,
    ) -> DCIGNOutput:
        """Encode, sample the code, optionally clamp it, decode.

        Args:
            images: ``(B, C, S, S)`` float32 in [0, 1].
            active: for the clamped training procedure (seed 001 sec. 3.1-3.2), the group
                name(s) of ``layout`` or the unit indices that vary in this batch; every other
                unit is clamped by :func:`~probgraphics.nets.clamped.clamp_inactive`. ``None``:
                no clamping (plain SGVB).
            invariance_scale: scale of the invariance-target gradient for clamped units.
            clamp_to: ``"mean"`` (seed 001) or ``"first"`` (seed 000), see ``clamp_inactive``.
            sample: draw a reparameterized sample (True) or use the mean.
            generator: random source for the sample.
        """
        from probgraphics.nets.clamped import clamp_inactive

        mean, log_var = self.encoder(images)
        code = reparameterize(mean, log_var, generator) if sample else mean
        if active is not None:
            if code.dim() != 2:
                raise ValueError(
                    "clamping needs one batch dimension: images (B, C, S, S), got "
                    f"{tuple(images.shape)}."
                )
            if isinstance(active, str) or (
                isinstance(active, (list, tuple)) and active and isinstance(active[0], str)
            ):
                active = self.layout.indices(active, device=code.device)
            code = clamp_inactive(code, active, invariance_scale, clamp_to=clamp_to)
        return DCIGNOutput(self.decoder(code), mean, log_var, code)
