"""Encoders as summary statistics for likelihood-free inference (seed 000 section 4.1).

Seed 000 strips the decoder from a trained DC-IGN and uses the encoder as the summary statistic
``nu: x -> Z`` of ABC-MCMC: the observed image and every simulated image are mapped to their codes
and compared with a distance. :class:`EncoderSummary` is that map, in the form the inference
engine wants (``images (B, C, H, W) -> features (B, K)``, batched, no gradient): the encoder's
posterior *mean*, optionally restricted to named groups of the code (the azimuth, elevation and
light units of a DC-IGN, say).

>>> import torch
>>> from probgraphics.nets import DCIGN, DCIGNConfig
>>> net = DCIGN(DCIGNConfig(image_size=32, channels=(8, 8), decoder_channels=(8, 8), padding=2,
...                         code_size=16))
>>> summary = EncoderSummary(net)
>>> tuple(summary(torch.rand(5, 1, 32, 32)).shape), summary.layout["azimuth"]
((5, 16), (0,))
>>> pose = summary.subset("azimuth", "light")
>>> tuple(pose(torch.rand(5, 1, 32, 32)).shape), pose.layout["light"]
((5, 2), (1,))
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from probgraphics.nets.dcign import DCIGN, CodeLayout, DCIGNEncoder
from probgraphics.nets.muvae import MuVAE, ShapeEncoder
from probgraphics.nets.twin import TwinEncoder, TwinTailed

__all__ = ["EncoderSummary", "EncoderAdapter", "resolve_encoder"]


# --------------------------------------------------------------------------------------------
# Encoder adapter: one calling convention for the bundled encoders and user encoders
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderAdapter:
    """An encoder seen through one calling convention.

    Attributes:
        module: the ``nn.Module`` that maps images to codes (e.g. the ``DCIGNEncoder`` of a
            ``DCIGN``), or ``None`` for a plain callable.
        function: ``images (B, C, H, W) -> (mean (B, K), log_var (B, K) or None)``; ``None``
            log-variance for deterministic encoders (the twin-tailed encoder).
        input_shape: ``(C, H, W)`` the encoder accepts, when its config says; else ``None``.
        layout: the named code groups, when known; else ``None``.
        probabilistic: whether the encoder gives a log-variance (needed to be a guide).
    """

    module: nn.Module | None
    function: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
    input_shape: tuple[int, int, int] | None
    layout: CodeLayout | None
    probabilistic: bool


def _twin_function(encoder: TwinEncoder):
    def encode(images: torch.Tensor) -> tuple[torch.Tensor, None]:
        shape_code, transformation_code = encoder(images)
        return torch.cat([shape_code, transformation_code], dim=-1), None

    return encode


def _generic_function(encoder: Callable):
    def encode(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = encoder(images)
        if isinstance(out, torch.Tensor):
            return out, None
        if isinstance(out, (tuple, list)) and len(out) == 2:
            mean, log_var = out
            if isinstance(mean, torch.Tensor) and (
                log_var is None or isinstance(log_var, torch.Tensor)
            ):
                return mean, log_var
        raise TypeError(
            "an encoder must map images (B, C, H, W) to (mean, log_var), two (B, K) tensors, or "
            "to one (B, K) tensor of features (or (features, None)); "
            f"{type(encoder).__name__} returned {type(out).__name__}. Wrap it to return that, "
            "or pass the network's encoder part."
        )

    return encode


def resolve_encoder(encoder: object) -> EncoderAdapter:
    """Wrap ``encoder`` in an :class:`EncoderAdapter`.

    Accepted: a :class:`~probgraphics.nets.DCIGN` or its ``DCIGNEncoder`` (code layout from the
    config), a :class:`~probgraphics.nets.MuVAE` or its ``ShapeEncoder`` (one group ``"shape"``),
    a :class:`~probgraphics.nets.TwinTailed` or its ``TwinEncoder`` (deterministic; groups
    ``"shape"`` and ``"transformation"``), or any callable / module mapping images
    ``(B, C, H, W)`` to ``(mean, log_var)`` or to features ``(B, K)``; a ``layout`` attribute
    (a :class:`CodeLayout`) on such a module is used when present.
    """
    if isinstance(encoder, DCIGN):
        encoder = encoder.encoder
    elif isinstance(encoder, MuVAE):
        encoder = encoder.encoder
    elif isinstance(encoder, TwinTailed):
        encoder = encoder.encoder
    if isinstance(encoder, DCIGNEncoder):
        c = encoder.config
        return EncoderAdapter(
            encoder, encoder, (c.in_channels, c.image_size, c.image_size), c.layout, True
        )
    if isinstance(encoder, ShapeEncoder):
        c = encoder.config
        layout = CodeLayout(c.shape_code_size, {"shape": tuple(range(c.shape_code_size))})
        return EncoderAdapter(encoder, encoder, (1, c.voxel_size, c.voxel_size), layout, True)
    if isinstance(encoder, TwinEncoder):
        c = encoder.config
        k_shape, k_transformation = c.shape_code_size, c.transformation_code_size
        layout = CodeLayout(
            k_shape + k_transformation,
            {
                "shape": tuple(range(k_shape)),
                "transformation": tuple(range(k_shape, k_shape + k_transformation)),
            },
        )
        return EncoderAdapter(
            encoder,
            _twin_function(encoder),
            (c.in_channels, c.image_size, c.image_size),
            layout,
            False,
        )
    if not callable(encoder):
        raise TypeError(
            f"encoder must be a network (DCIGN, MuVAE, TwinTailed, their encoders) or a callable "
            f"mapping images (B, C, H, W) to (mean, log_var); got {type(encoder).__name__}."
        )
    layout = getattr(encoder, "layout", None)
    if layout is not None and not isinstance(layout, CodeLayout):
        layout = None
    module = encoder if isinstance(encoder, nn.Module) else None
    # A user encoder is probabilistic if it returns (mean, log_var); that is checked on use.
    return EncoderAdapter(module, _generic_function(encoder), None, layout, True)


@contextlib.contextmanager
def evaluation_mode(module: nn.Module | None) -> Iterator[None]:
    """Run ``module`` in eval mode (batch norm on running statistics), restoring its mode."""
    if module is None or not module.training:
        yield
        return
    module.eval()
    try:
        yield
    finally:
        module.train()


def module_device(module: nn.Module | None) -> torch.device | None:
    """The device of the module's first parameter or buffer; ``None`` when it has neither."""
    if module is None:
        return None
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return None


def module_dtype(module: nn.Module | None) -> torch.dtype:
    """The floating dtype of the module's first parameter; float32 when it has none."""
    if module is not None:
        for tensor in module.parameters():
            if tensor.is_floating_point():
                return tensor.dtype
    return torch.float32


def check_images(images: object, input_shape: tuple[int, ...] | None, who: str) -> torch.Tensor:
    """Validate a batch of images ``(B, C, H, W)`` (floating, finite shape); return it."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"{who} expects images as a torch.Tensor (B, C, H, W), got {type(images).__name__}."
        )
    if images.dim() != 4:
        hint = " Add the batch dimension with image[None]." if images.dim() == 3 else ""
        raise ValueError(
            f"{who} expects images shaped (B, C, H, W), got {tuple(images.shape)}.{hint}"
        )
    if input_shape is not None and tuple(images.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"{who}: the encoder takes images of shape (B, {', '.join(map(str, input_shape))}), "
            f"got {tuple(images.shape)}. Render the scenes at the encoder's resolution or use an "
            "encoder trained at this one."
        )
    if not images.is_floating_point():
        raise TypeError(f"{who} expects floating images in [0, 1], got dtype {images.dtype}.")
    return images


# --------------------------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------------------------


class EncoderSummary:
    """An encoder's posterior mean as a summary statistic: ``images (B, C, H, W) -> (B, K)``.

    Calls run under ``torch.no_grad()`` with the encoder in eval mode (its mode is restored
    afterwards), in chunks of ``chunk_size`` images to bound memory. The result is float32 on the
    *images'* device: when the images live on another device than the encoder, a copy of the
    encoder is made on that device once and cached (so a summary built on CPU follows ABC runs
    onto the GPU).

    Args:
        encoder: a network or encoder accepted by :func:`resolve_encoder` (a ``DCIGN``, a
            ``MuVAE``, a ``TwinTailed``, their encoder parts, or a callable returning
            ``(mean, log_var)`` or features).
        layout: names of groups of code units; default the encoder's own (a DC-IGN's
            ``config.layout``: azimuth, elevation, light, intrinsic).
        groups: keep only these groups' units, in this order (see :meth:`subset`).
        chunk_size: images encoded per forward pass.

    Attributes:
        layout: a :class:`CodeLayout` over the *output* features: ``summary.layout["azimuth"]``
            gives the columns of ``summary(images)`` holding the azimuth group. ``None`` when
            the encoder has no layout.
        groups: the groups kept, or ``None`` for the whole code.
        encoder: the encoder module (or callable).
    """

    def __init__(
        self,
        encoder: object,
        *,
        layout: CodeLayout | None = None,
        groups: Sequence[str] | None = None,
        chunk_size: int = 512,
    ) -> None:
        if isinstance(encoder, EncoderSummary):
            raise TypeError(
                "encoder is already an EncoderSummary; use summary.subset(...) to restrict it."
            )
        self._adapter = resolve_encoder(encoder)
        self.encoder = self._adapter.module if self._adapter.module is not None else encoder
        if layout is None:
            layout = self._adapter.layout
        if layout is not None and not isinstance(layout, CodeLayout):
            raise TypeError(
                f"layout must be a CodeLayout (e.g. CodeLayout(code_size, {{name: indices}})) or "
                f"None, got {type(layout).__name__}."
            )
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}.")
        self.chunk_size = chunk_size
        self._code_layout = layout
        self._copies: dict[torch.device, nn.Module] = {}
        self.groups: tuple[str, ...] | None = None
        self._columns: torch.Tensor | None = None
        self.layout: CodeLayout | None = layout
        if groups is not None:
            self._select(groups)

    # -- construction helpers ---------------------------------------------------------------
    def _select(self, groups: Sequence[str]) -> None:
        if isinstance(groups, str):
            groups = (groups,)
        groups = tuple(groups)
        if self._code_layout is None:
            raise ValueError(
                "this encoder has no code layout, so groups cannot be selected; pass "
                "layout=CodeLayout(code_size, {name: indices}) to EncoderSummary."
            )
        if not groups:
            raise ValueError(
                f"give at least one group to keep; the layout has {list(self._code_layout)}."
            )
        unknown = [g for g in groups if g not in self._code_layout]
        if unknown or len(set(groups)) != len(groups):
            raise ValueError(
                f"groups must be distinct names of the layout {list(self._code_layout)}; got "
                f"{list(groups)}" + (f" (unknown: {unknown})" if unknown else "") + "."
            )
        columns: list[int] = []
        new_groups: dict[str, tuple[int, ...]] = {}
        for name in groups:
            units = self._code_layout[name]
            new_groups[name] = tuple(range(len(columns), len(columns) + len(units)))
            columns.extend(units)
        self.groups = groups
        self._columns = torch.tensor(columns, dtype=torch.long)
        self.layout = CodeLayout(len(columns), new_groups)

    def subset(self, *groups: str) -> EncoderSummary:
        """A summary of the same encoder keeping only the named groups, in the order given.

        ``summary.subset("azimuth", "light")(images)`` is ``(B, 2)`` for a DC-IGN; its
        ``layout`` re-indexes the groups to the new columns. Shares the encoder (no copy).
        """
        if len(groups) == 1 and not isinstance(groups[0], str):
            groups = tuple(groups[0])
        other = copy.copy(self)
        other._copies = self._copies  # share device copies of the same encoder
        other._select(groups)
        return other

    @property
    def code_layout(self) -> CodeLayout | None:
        """The layout over the encoder's full code (before any group selection)."""
        return self._code_layout

    @property
    def device(self) -> torch.device | None:
        """The encoder's own device (``None`` for a parameter-free callable)."""
        return module_device(self._adapter.module)

    def to(self, device: torch.device | str) -> EncoderSummary:
        """Move the encoder to ``device`` (in place) and return ``self``."""
        if self._adapter.module is None:
            raise TypeError("this summary wraps a plain callable, which has no device to move.")
        self._adapter.module.to(device)
        self._copies.clear()
        return self

    def __repr__(self) -> str:
        name = type(self._adapter.module or self.encoder).__name__
        width = self.layout.code_size if self.layout is not None else "?"
        groups = "" if self.groups is None else f", groups={list(self.groups)}"
        return f"EncoderSummary({name}, features={width}{groups})"

    # -- the call ---------------------------------------------------------------------------
    def _encoder_on(self, device: torch.device) -> Callable:
        module = self._adapter.module
        own = module_device(module)
        if module is None or own is None or own == device:
            return self._adapter.function
        if device not in self._copies:
            self._copies[device] = copy.deepcopy(module).to(device).eval()
        return resolve_encoder(self._copies[device]).function

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Encode ``images`` ``(B, C, H, W)`` (float, on any device) to features ``(B, K)``.

        Returns float32 features on the images' device: the posterior mean (all code units, or
        the selected groups' units in group order). No gradient is recorded.
        """
        images = check_images(images, self._adapter.input_shape, "EncoderSummary")
        device = images.device
        function = self._encoder_on(device)
        module = self._adapter.module
        if module is not None and module_device(module) == device:
            mode = evaluation_mode(module)
        else:
            mode = contextlib.nullcontext()  # a cached copy, always in eval mode
        dtype = module_dtype(module)
        outputs = []
        with torch.no_grad(), mode:
            for start in range(0, images.shape[0], self.chunk_size):
                chunk = images[start : start + self.chunk_size].to(dtype)
                mean, _ = function(chunk)
                if mean.dim() != 2 or mean.shape[0] != chunk.shape[0]:
                    raise ValueError(
                        f"the encoder returned codes of shape {tuple(mean.shape)} for "
                        f"{chunk.shape[0]} images; expected (B, K)."
                    )
                if self._columns is not None:
                    mean = mean[:, self._columns.to(mean.device)]
                outputs.append(mean)
        if not outputs:
            width = self.layout.code_size if self.layout is not None else 0
            return torch.zeros(0, width, dtype=torch.float32, device=device)
        features = torch.cat(outputs).to(device=device, dtype=torch.float32)
        if self._code_layout is not None and self._columns is None:
            if features.shape[1] != self._code_layout.code_size:
                raise ValueError(
                    f"the encoder returned {features.shape[1]} code units but the layout has "
                    f"code_size {self._code_layout.code_size}; pass a matching layout."
                )
        return features
