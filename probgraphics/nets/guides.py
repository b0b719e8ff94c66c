"""Image encoders as amortized variational guides for scene programs.

:class:`EncoderGuide` turns an encoder (images -> mean and log-variance of a diagonal Gaussian code)
into a Pyro guide for a scene program: one distribution per latent site of the program, each with
that site's support. Units of the code are assigned to sites (by the encoder's
:class:`~probgraphics.nets.CodeLayout` when its group names are the program's sites, as for the
``dcign`` program; in program order otherwise; or explicitly with ``site_layout``). A site's
units give an unconstrained Gaussian ``u ~ N(mean, exp(log_var))``; the site's value is
``biject_to(support)(u)``: the Gaussian itself for real sites, a sigmoid-affine transform for a
``Uniform(a, b)`` site, ``exp`` for a positive one, and so on.

The guide takes the observation as its argument (the model takes none; training conditions the
model on the observation at its observed site, see :func:`probgraphics.inference.svi.train_guide`):

>>> import torch
>>> from probgraphics.nets import DCIGN, DCIGNConfig
>>> from probgraphics.programs.dcign import dcign
>>> net = DCIGN(DCIGNConfig(image_size=32, channels=(8, 8), decoder_channels=(8, 8), padding=2,
...                         code_size=16))
>>> guide = EncoderGuide(net, dcign(net))
>>> values = guide(torch.rand(4, 1, 32, 32))          # a Pyro guide: samples every latent site
>>> tuple(values["azimuth"].shape), tuple(values["intrinsic"].shape)
((4, 1), (4, 13))
>>> draws = guide.posterior(torch.rand(4, 1, 32, 32), num_samples=10)
>>> tuple(draws["intrinsic"].shape)
(10, 4, 13)
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import biject_to, constraints

from probgraphics.inference.tracing import sample_sites
from probgraphics.nets.dcign import CodeLayout
from probgraphics.nets.summaries import (
    evaluation_mode,
    module_device,
    module_dtype,
    resolve_encoder,
)

__all__ = ["EncoderGuide", "GuideSite", "discover_sites", "load_guide"]


# --------------------------------------------------------------------------------------------
# Site discovery
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuideSite:
    """A latent site of a program as the guide sees it.

    Attributes:
        name: the site name.
        event_shape: the site's event shape (its value is ``(*batch, *event_shape)``).
        support: the site distribution's support (a torch constraint).
        unconstrained_shape: the event shape of the unconstrained Gaussian (equal to
            ``event_shape`` except for shape-changing bijections such as the simplex's).
        real: whether the support is the reals (no transform).
        units: the code units (indices into the encoder's code) that parametrize the site;
            empty until a layout assigns them.
    """

    name: str
    event_shape: tuple[int, ...]
    support: constraints.Constraint
    unconstrained_shape: tuple[int, ...]
    real: bool
    units: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        """Number of code units the site needs: ``prod(unconstrained_shape)``."""
        return math.prod(self.unconstrained_shape)


def _is_real(constraint: constraints.Constraint) -> bool:
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    return isinstance(constraint, type(constraints.real))


def _constraint_to(constraint: constraints.Constraint, device: torch.device):
    """A copy of ``constraint`` whose tensor attributes (bounds) live on ``device``."""
    if isinstance(constraint, constraints.independent):
        return constraints.independent(
            _constraint_to(constraint.base_constraint, device),
            constraint.reinterpreted_batch_ndims,
        )
    tensors = {
        key: value
        for key, value in vars(constraint).items()
        if isinstance(value, torch.Tensor) and value.device != device
    }
    if not tensors:
        return constraint
    moved = copy.copy(constraint)
    for key, value in tensors.items():
        setattr(moved, key, value.to(device))
    return moved


def discover_sites(
    program: object, observed: str = "image"
) -> tuple[list[GuideSite], torch.Tensor, int]:
    """Trace ``program`` once and describe its latent sites.

    Returns ``(sites, observed_value, plate_nesting)``: the latent sample sites in program order
    (every sample site except ``observed`` and ``pyro.deterministic`` sites), one simulated value
    of the observed site, and the deepest plate nesting in the program. The trace runs under
    ``torch.no_grad()`` without touching the caller's random state.

    Raises:
        ValueError: the program has no site named ``observed``, has a latent site with a batch
            shape outside any plate (declare its event shape with ``.to_event``), or a discrete
            latent site (an encoder guide is Gaussian).
    """
    if not callable(program):
        raise TypeError(f"program must be a callable Pyro model, got {type(program).__name__}.")
    traced, plate_nesting = sample_sites(program, observed, hint="the name of its image site")
    sites: list[GuideSite] = []
    for name, site in traced.items():
        if name == observed or site["infer"].get("_deterministic") or site["is_observed"]:
            continue
        fn = site["fn"]
        plates = len(site["cond_indep_stack"])
        batch_shape = tuple(fn.batch_shape)
        if len(batch_shape) > plates:
            raise ValueError(
                f"latent site {name!r} has batch shape {batch_shape} outside any plate; a scene "
                "program declares every latent's event shape, e.g. "
                "dist.Normal(0, 1).expand([k]).to_event(1)."
            )
        support = fn.support
        if support.is_discrete:
            raise ValueError(
                f"latent site {name!r} is discrete ({type(fn).__name__}); an encoder guide "
                "gives Gaussian (or transformed Gaussian) distributions only. Marginalize the "
                "site or guide it with another guide."
            )
        event_shape = tuple(fn.event_shape)
        try:
            transform = biject_to(support)
        except NotImplementedError:
            raise ValueError(
                f"latent site {name!r} has support {support}, which torch cannot map to the "
                "reals (no biject_to); use a distribution with a standard support."
            ) from None
        unconstrained = tuple(transform.inverse_shape(torch.Size(event_shape)))
        sites.append(GuideSite(name, event_shape, support, unconstrained, _is_real(support)))
    if not sites:
        raise ValueError("the program has no latent sample sites to guide.")
    return sites, traced[observed]["value"], plate_nesting


def _assign_units(
    sites: list[GuideSite],
    code_size: int,
    encoder_layout: CodeLayout | None,
    site_layout: Mapping[str, Sequence[int]] | CodeLayout | None,
) -> list[GuideSite]:
    by_name = {site.name: site for site in sites}
    sizes = {site.name: site.size for site in sites}
    if site_layout is None:
        if encoder_layout is not None and all(
            name in encoder_layout and len(encoder_layout[name]) == size
            for name, size in sizes.items()
        ):
            layout = {name: encoder_layout[name] for name in sizes}
        elif sum(sizes.values()) == code_size:
            layout, start = {}, 0
            for name, size in sizes.items():
                layout[name] = tuple(range(start, start + size))
                start += size
        else:
            raise ValueError(
                f"cannot assign the encoder's {code_size} code units to the program's latent "
                f"sites {sizes} (name: units needed, {sum(sizes.values())} in all): the encoder's "
                "layout does not name them and the sizes do not add up. Pass "
                "site_layout={site: [code unit indices]} (it may cover a subset of the sites)."
            )
    else:
        if isinstance(site_layout, CodeLayout):
            layout = {name: site_layout[name] for name in site_layout if name in by_name}
            if not layout:
                raise ValueError(
                    f"site_layout names none of the program's latent sites {list(by_name)}; its "
                    f"groups are {list(site_layout)}."
                )
        elif isinstance(site_layout, Mapping):
            unknown = [name for name in site_layout if name not in by_name]
            if unknown:
                raise ValueError(
                    f"site_layout names {unknown}, which are not latent sites of the program; "
                    f"its latent sites are {list(by_name)}."
                )
            layout = {name: site_layout[name] for name in site_layout}
            if not layout:
                raise ValueError("site_layout is empty; give at least one site's code units.")
        else:
            raise TypeError(
                "site_layout must be None, a CodeLayout or a dict site -> code unit indices, got "
                f"{type(site_layout).__name__}."
            )
    owner: dict[int, str] = {}
    assigned = []
    for name, units in layout.items():
        if isinstance(units, torch.Tensor):
            units = units.tolist()
        units = tuple(units)
        if any(isinstance(u, bool) or not isinstance(u, int) for u in units):
            raise ValueError(f"site_layout[{name!r}] must be ints, got {units!r}.")
        if len(units) != sizes[name]:
            raise ValueError(
                f"site {name!r} needs {sizes[name]} code units (unconstrained shape "
                f"{by_name[name].unconstrained_shape}), but the layout gives it {len(units)}."
            )
        for unit in units:
            if not 0 <= unit < code_size:
                raise ValueError(
                    f"site {name!r} is assigned code unit {unit}, outside the encoder's code "
                    f"[0, {code_size})."
                )
            if unit in owner:
                raise ValueError(
                    f"code unit {unit} is assigned to both {owner[unit]!r} and {name!r}; give "
                    "each site its own units."
                )
            owner[unit] = name
        site = by_name[name]
        assigned.append(
            GuideSite(
                site.name,
                site.event_shape,
                site.support,
                site.unconstrained_shape,
                site.real,
                units,
            )
        )
    order = {site.name: i for i, site in enumerate(sites)}
    return sorted(assigned, key=lambda site: order[site.name])


# --------------------------------------------------------------------------------------------
# The guide
# --------------------------------------------------------------------------------------------


class EncoderGuide(nn.Module):
    """An encoder as an amortized Pyro guide for a scene program.

    Args:
        encoder: a network or encoder accepted by
            :func:`~probgraphics.nets.summaries.resolve_encoder` that gives a mean and a
            log-variance: a ``DCIGN`` / ``DCIGNEncoder``, a ``MuVAE`` / ``ShapeEncoder``, or any
            ``nn.Module`` mapping images ``(B, C, H, W)`` to ``(mean, log_var)``, each ``(B, K)``.
        program: the scene program (a Pyro model taking no arguments). It is traced once to find
            its latent sites, their event shapes and supports.
        site_layout: which code units parametrize which site: a dict ``site -> unit indices``
            (it may name a subset of the sites; the others are then not guided) or a
            :class:`CodeLayout`. Default: the encoder's layout when its groups are exactly the
            program's latent sites (the ``dcign`` program), else the sites in program order over
            the whole code (the code size must then equal the sites' total size).
        observed: the program's observed site (``"image"``).
        name: the name the encoder's parameters are registered under in Pyro's param store.
        plate_name: the name of the plate over a batch of observations; the model must use the
            same name (``train_guide`` does).
        log_var_bounds: the encoder's log-variances are clamped to this range (the scale stays
            positive and finite).

    Calling ``guide(observation)`` samples every guided site (``pyro.sample``), batched: an
    observation ``(B, C, H, W)`` gives values ``(B, *event)`` under ``pyro.plate(plate_name,
    B)``; an unbatched ``(C, H, W)`` gives ``(*event)``. Values are on the encoder's device.
    Inside ``with guide.observing(images):`` the guide can be called with no argument (for Pyro
    utilities that call the guide with the model's arguments, which are none).
    """

    def __init__(
        self,
        encoder: object,
        program: object,
        *,
        site_layout: Mapping[str, Sequence[int]] | CodeLayout | None = None,
        observed: str = "image",
        name: str = "encoder",
        plate_name: str = "batch",
        log_var_bounds: tuple[float, float] = (-18.0, 18.0),
    ) -> None:
        super().__init__()
        adapter = resolve_encoder(encoder)
        if not adapter.probabilistic:
            raise TypeError(
                f"{type(adapter.module).__name__} is deterministic (it gives codes, not a mean "
                "and a log-variance), so it cannot be a variational guide; use it as an "
                "EncoderSummary instead."
            )
        for label, value in (("observed", observed), ("name", name), ("plate_name", plate_name)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{label} must be a non-empty str, got {value!r}.")
        low, high = (float(v) for v in log_var_bounds)
        if not low < high:
            raise ValueError(
                f"log_var_bounds must be (low, high) with low < high, got {log_var_bounds!r}."
            )
        self._adapter = adapter
        # Registered as a submodule so .to(), .parameters(), .state_dict() see the encoder.
        self.encoder = adapter.module if adapter.module is not None else nn.Identity()
        self._has_module = adapter.module is not None
        # Kept outside nn.Module's registry: a program's own modules are not the guide's.
        self.__dict__["program"] = program
        self.observed = observed
        self.name = name
        self.plate_name = plate_name
        self.log_var_bounds = (low, high)

        sites, observed_value, plate_nesting = discover_sites(program, observed)
        self.observed_shape = tuple(observed_value.shape)
        self.program_plate_nesting = plate_nesting
        self.code_size = self._probe(observed_value)
        self._sites = _assign_units(sites, self.code_size, adapter.layout, site_layout)
        self._transforms: dict[tuple[str, torch.device], object] = {}
        self._unit_index: dict[tuple[str, torch.device], slice | torch.Tensor] = {}
        self._observation: torch.Tensor | None = None

    # -- description ------------------------------------------------------------------------
    @property
    def sites(self) -> tuple[str, ...]:
        """The guided latent sites, in program order."""
        return tuple(site.name for site in self._sites)

    @property
    def site_info(self) -> dict[str, GuideSite]:
        """``site -> GuideSite`` (event shape, support, code units)."""
        return {site.name: site for site in self._sites}

    @property
    def site_shapes(self) -> dict[str, tuple[int, ...]]:
        """``site -> event shape``."""
        return {site.name: site.event_shape for site in self._sites}

    @property
    def site_layout(self) -> dict[str, tuple[int, ...]]:
        """``site -> code unit indices``."""
        return {site.name: site.units for site in self._sites}

    @property
    def device(self) -> torch.device:
        """The encoder's device (CPU for a parameter-free encoder)."""
        return module_device(self._adapter.module) or torch.device("cpu")

    def extra_repr(self) -> str:
        return f"sites={dict(self.site_shapes)}, observed={self.observed!r}"

    # -- encoding ---------------------------------------------------------------------------
    def _probe(self, observed_value: torch.Tensor) -> int:
        """Encode the traced observation once: checks the encoder accepts the program's images
        and gives (mean, log_var); returns the code size."""
        device = self.device
        image = observed_value.detach().to(device=device, dtype=module_dtype(self._adapter.module))
        with torch.no_grad(), evaluation_mode(self._adapter.module):
            try:
                mean, log_var = self._adapter.function(image.unsqueeze(0))
            except (RuntimeError, ValueError, TypeError) as error:
                raise ValueError(
                    f"the encoder cannot encode the program's {self.observed!r} site of shape "
                    f"{tuple(observed_value.shape)}: {error}"
                ) from error
        if log_var is None:
            raise TypeError(
                "the encoder returned features without a log-variance; a guide needs "
                "(mean, log_var). Use it as an EncoderSummary instead."
            )
        if mean.dim() != 2 or mean.shape[0] != 1 or log_var.shape != mean.shape:
            raise ValueError(
                f"the encoder must return (mean, log_var), each (B, K); for one image it gave "
                f"{tuple(mean.shape)} and {tuple(log_var.shape)}."
            )
        return int(mean.shape[1])

    def _check_observation(self, observation: object) -> tuple[torch.Tensor, bool]:
        if not isinstance(observation, torch.Tensor):
            raise TypeError(
                f"the guide expects the observation as a tensor (B, {self._shape_text()}) or "
                f"({self._shape_text()}), got {type(observation).__name__}."
            )
        shape = tuple(observation.shape)
        n = len(self.observed_shape)
        if shape == self.observed_shape:
            batched = False
        elif len(shape) == n + 1 and shape[1:] == self.observed_shape:
            batched = True
        else:
            raise ValueError(
                f"the observation must be shaped ({self._shape_text()}) or (B, "
                f"{self._shape_text()}) like the program's {self.observed!r} site, got {shape}."
            )
        if not observation.is_floating_point():
            raise TypeError(f"the observation must be floating, got {observation.dtype}.")
        if not bool(torch.isfinite(observation).all()):
            raise ValueError("the observation has NaN/inf values; pass finite images.")
        dtype = module_dtype(self._adapter.module)
        images = observation.to(device=self.device, dtype=dtype)
        return (images if batched else images.unsqueeze(0)), batched

    def _shape_text(self) -> str:
        return ", ".join(map(str, self.observed_shape))

    def _encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self._adapter.function(images)
        if log_var is None or mean.shape != (images.shape[0], self.code_size):
            raise ValueError(
                f"the encoder must return (mean, log_var), each (B, {self.code_size}), got "
                f"{tuple(mean.shape)} and "
                f"{None if log_var is None else tuple(log_var.shape)}."
            )
        return mean, log_var.clamp(*self.log_var_bounds)

    def _transform(self, site: GuideSite, device: torch.device):
        key = (site.name, device)
        if key not in self._transforms:
            self._transforms[key] = biject_to(_constraint_to(site.support, device))
        return self._transforms[key]

    def _site_parameters(
        self, mean: torch.Tensor, log_var: torch.Tensor
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``site -> (loc, scale)``, each ``(B, *unconstrained_shape)``."""
        batch = mean.shape[0]
        out = {}
        for site in self._sites:
            units = self._units_on(site, mean.device)
            loc = mean[:, units].reshape(batch, *site.unconstrained_shape)
            scale = (0.5 * log_var[:, units]).exp()
            out[site.name] = (loc, scale.reshape(batch, *site.unconstrained_shape))
        return out

    def _units_on(self, site: GuideSite, device: torch.device) -> slice | torch.Tensor:
        """The site's code units as a slice when contiguous (a view), else an index tensor."""
        key = (site.name, device)
        if key not in self._unit_index:
            first = site.units[0]
            if site.units == tuple(range(first, first + len(site.units))):
                self._unit_index[key] = slice(first, first + len(site.units))
            else:
                self._unit_index[key] = torch.tensor(site.units, dtype=torch.long, device=device)
        return self._unit_index[key]

    def _distribution(self, site: GuideSite, loc: torch.Tensor, scale: torch.Tensor):
        base = dist.Normal(loc, scale)
        if site.unconstrained_shape:
            base = base.to_event(len(site.unconstrained_shape))
        if site.real:
            return base
        return dist.TransformedDistribution(base, [self._transform(site, loc.device)])

    def distributions(self, images: torch.Tensor) -> dict[str, dist.TorchDistribution]:
        """The guide's distribution of every site given ``images`` ``(B, C, H, W)``.

        Returns ``site -> distribution`` with batch shape ``(B,)`` and the site's event shape,
        on the encoder's device; differentiable with respect to the encoder's parameters (the
        encoder runs in its current train/eval mode).
        """
        images, batched = self._check_observation(images)
        if not batched:
            raise ValueError(
                f"distributions() expects a batch (B, {self._shape_text()}); add the batch "
                "dimension with image[None]."
            )
        parameters = self._site_parameters(*self._encode(images))
        return {site.name: self._distribution(site, *parameters[site.name]) for site in self._sites}

    # -- the Pyro guide ---------------------------------------------------------------------
    @contextlib.contextmanager
    def observing(self, observation: torch.Tensor) -> Iterator[EncoderGuide]:
        """Within the block, ``guide()`` without arguments uses ``observation``."""
        previous = self._observation
        self._observation = observation
        try:
            yield self
        finally:
            self._observation = previous

    def forward(self, observation: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Sample every guided site given the observation (see the class docstring).

        Returns ``site -> value`` (``(B, *event)`` for a batch, ``(*event)`` for one image).
        """
        if observation is None:
            observation = self._observation
        if observation is None:
            raise ValueError(
                "the guide needs the observation: call guide(images), or call it inside "
                "`with guide.observing(images):`."
            )
        images, batched = self._check_observation(observation)
        if self._has_module:
            pyro.module(self.name, self._adapter.module)
        parameters = self._site_parameters(*self._encode(images))
        values: dict[str, torch.Tensor] = {}
        if batched:
            with pyro.plate(self.plate_name, images.shape[0], dim=-1):
                for site in self._sites:
                    distribution = self._distribution(site, *parameters[site.name])
                    values[site.name] = pyro.sample(site.name, distribution)
        else:
            for site in self._sites:
                loc, scale = parameters[site.name]
                distribution = self._distribution(site, loc[0], scale[0])
                values[site.name] = pyro.sample(site.name, distribution)
        return values

    # -- inference-time helpers -------------------------------------------------------------
    def _inference_parameters(self, images: torch.Tensor, who: str):
        images, batched = self._check_observation(images)
        if not batched:
            raise ValueError(
                f"{who} expects images (B, {self._shape_text()}); add the batch dimension with "
                "image[None]."
            )
        with torch.no_grad(), evaluation_mode(self._adapter.module):
            return self._site_parameters(*self._encode(images))

    def posterior(
        self,
        images: torch.Tensor,
        num_samples: int,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Draw ``num_samples`` scenes per image from the guide (no gradient, eval mode).

        Args:
            images: ``(B, C, H, W)`` observations.
            num_samples: draws per image, >= 1.
            generator: random source (a ``torch.Generator`` on the encoder's device or CPU);
                default the global generator.

        Returns:
            ``site -> (num_samples, B, *event)`` tensors on the encoder's device, each value in
            its site's support.
        """
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}.")
        parameters = self._inference_parameters(images, "posterior()")
        out = {}
        for site in self._sites:
            loc, scale = parameters[site.name]
            noise_device = generator.device if generator is not None else loc.device
            noise = torch.randn(
                (num_samples, *loc.shape),
                generator=generator,
                device=noise_device,
                dtype=loc.dtype,
            ).to(loc.device)
            value = loc + scale * noise
            if not site.real:
                value = self._transform(site, loc.device)(value)
            out[site.name] = value
        return out

    def point_estimate(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The guide's point estimate of every site: ``biject_to(support)(mean)``.

        For real sites this is the posterior mean; for sites with an elementwise monotone
        transform (intervals, positive) it is the posterior median. ``images`` ``(B, C, H, W)``;
        returns ``site -> (B, *event)`` on the encoder's device (no gradient, eval mode).
        """
        parameters = self._inference_parameters(images, "point_estimate()")
        out = {}
        for site in self._sites:
            loc, _ = parameters[site.name]
            out[site.name] = loc if site.real else self._transform(site, loc.device)(loc)
        return out

    def initial_values(
        self,
        image: torch.Tensor,
        chains: int,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Starting values for ``chains`` MCMC chains from the guide's posterior for one image.

        The coarse-to-fine use of seed 000: pass the result as ``infer(..., init=...)`` so ABC
        refines the encoder's answer. ``image`` is ``(C, H, W)``; returns
        ``site -> (chains, *event)`` on CPU.
        """
        if not isinstance(image, torch.Tensor) or tuple(image.shape) != self.observed_shape:
            got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(
                f"initial_values() expects one image shaped ({self._shape_text()}), got {got}."
            )
        draws = self.posterior(image.unsqueeze(0), chains, generator=generator)
        return {name: value[:, 0].cpu() for name, value in draws.items()}


# --------------------------------------------------------------------------------------------
# Loading a trained guide
# --------------------------------------------------------------------------------------------


def load_guide(
    source: str | os.PathLike,
    program: object,
    *,
    site_layout: Mapping[str, Sequence[int]] | CodeLayout | None = None,
    observed: str = "image",
    device: str | torch.device | None = None,
    directory: str | os.PathLike | None = None,
) -> EncoderGuide:
    """An :class:`EncoderGuide` for ``program`` from a saved network.

    Args:
        source: a bundled network's name (``probgraphics.nets.pretrained.available()``, e.g.
            ``"face-guide-64"``) or the path of a checkpoint written by
            :func:`~probgraphics.nets.save_checkpoint` (a file that exists is taken as a path).
        program: the scene program the guide is for (its latent sites are traced).
        site_layout: which code units parametrize which site (see :class:`EncoderGuide`).
            Default, in order: the checkpoint's ``extra["site_layout"]`` when it has one; the
            guide's own default (the encoder's groups when they are exactly the program's
            sites, else the program's sites in order over the whole code); failing both, the
            encoder's named code groups that are latent sites of the program (a DC-IGN's
            ``azimuth`` / ``elevation`` / ``light`` units for the face program; the other
            latents are then left to the prior).
        observed: the program's observed site.
        device: where to put the network (default CPU).
        directory: look bundled names up in this folder instead of the bundled weights.

    Returns:
        The guide (the network in eval mode, on ``device``).

    Raises:
        KeyError: ``source`` is neither an existing file nor a known network name.
        CheckpointError: the file is corrupt or holds a network without an encoder.
        ValueError: no layout fits the encoder's code to the program's sites.
    """
    from probgraphics.nets.checkpoint import CheckpointError, load_checkpoint
    from probgraphics.nets.pretrained import BUNDLED_ARCHITECTURES, weights_path

    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"source must be a network name or a checkpoint path, got {type(source).__name__}."
        )
    location = torch.device(device) if device is not None else torch.device("cpu")
    path = Path(source)
    if path.is_file():
        expected = None
    else:
        name = os.fspath(source)
        path = weights_path(name, directory)  # KeyError listing the available names
        expected = BUNDLED_ARCHITECTURES.get(name)
    module, _config, extra = load_checkpoint(path, expected_kind=expected, map_location=location)
    try:
        adapter = resolve_encoder(module)
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"{str(path)!r} holds a {type(module).__name__}, which cannot be used as an encoder "
            f"guide: {error}"
        ) from error
    if site_layout is None and extra and extra.get("site_layout") is not None:
        site_layout = {
            str(site): [int(unit) for unit in units]
            for site, units in dict(extra["site_layout"]).items()
        }
    if site_layout is not None:
        return EncoderGuide(module, program, site_layout=site_layout, observed=observed)
    try:
        return EncoderGuide(module, program, observed=observed)
    except ValueError as error:
        if "cannot assign the encoder's" not in str(error) or adapter.layout is None:
            raise
        sites = {site.name for site in discover_sites(program, observed)[0]}
        named = [group for group in adapter.layout if group in sites]
        if not named:
            raise ValueError(
                f"{error} (the encoder's code groups {list(adapter.layout)} name none of the "
                f"program's latent sites {sorted(sites)} either)"
            ) from None
        return EncoderGuide(module, program, site_layout=adapter.layout, observed=observed)
