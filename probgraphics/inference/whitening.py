"""Prior whitening: run a Pyro program with every latent driven by a standard-normal vector ``u``.

ABC-MCMC works in the whitened space: each chain's state is ``u`` of shape ``(D,)`` with prior
``N(0, I)``, and the program's latent values are ``T(u)``. Because the transform is applied at each
sample site *while the program runs* (a non-centred reparameterization as a Pyro messenger), a
latent whose distribution depends on earlier latents is handled: its ``msg["fn"]`` already carries
the earlier values when the messenger sees it.

Transforms from standard-normal ``u`` to a site's distribution:

* ``Normal``: ``loc + scale * u``;
* ``MultivariateNormal``: ``loc + L u`` with ``L`` the lower Cholesky factor;
* ``Uniform``: ``low + (high - low) * Phi(u)``;
* ``TransformedDistribution`` (``LogNormal``, ``HalfNormal``, ``Gumbel``, ...): whiten the base,
  then apply the transforms;
* ``Independent`` / ``ExpandedDistribution`` / ``MaskedDistribution``: elementwise via the base;
* any other continuous distribution with ``icdf``: ``icdf(Phi(u))``, with ``Phi(u)`` clamped into
  ``(tiny, 1 - eps)`` so no value is infinite.

A site none of these cover (discrete, or no ``icdf``) raises :class:`WhiteningError` naming it.
The inverse transforms map constrained values back to ``u`` (to start chains from given values).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import (
    Independent,
    MultivariateNormal,
    Normal,
    TransformedDistribution,
    Uniform,
)

__all__ = [
    "WhiteningError",
    "WhitenedSite",
    "WhiteningLayout",
    "WhiteningMessenger",
    "trace_program",
    "sample_sites",
    "build_layout",
    "whiten",
    "unwhiten",
    "describe_distribution",
    "run_whitened",
    "whiten_values",
]


class WhiteningError(ValueError):
    """A site's distribution cannot be written as a transform of standard-normal noise."""


class _CannotWhiten(Exception):
    """Internal: raised deep in the transform recursion, re-raised with the site's name."""


def describe_distribution(fn: Any) -> str:
    """A short readable name for a distribution, unwrapping Independent/Expanded/Masked layers."""
    layers = []
    while isinstance(fn, (Independent, dist.ExpandedDistribution, dist.MaskedDistribution)):
        layers.append(type(fn).__name__)
        fn = fn.base_dist
    name = type(fn).__name__
    return "(".join([*layers, name]) + ")" * len(layers)


def _probability_bounds(dtype: torch.dtype) -> tuple[float, float]:
    """``(tiny, 1 - eps)`` for ``dtype``: the open interval ``Phi(u)`` is clamped into."""
    info = torch.finfo(dtype)
    return info.tiny, 1.0 - info.eps


def _normal_cdf_clamped(u: torch.Tensor) -> torch.Tensor:
    low, high = _probability_bounds(u.dtype)
    return torch.special.ndtr(u).clamp(low, high)


def _normal_icdf_clamped(p: torch.Tensor) -> torch.Tensor:
    low, high = _probability_bounds(p.dtype)
    return torch.special.ndtri(p.clamp(low, high))


def whiten(fn: Any, u: torch.Tensor) -> torch.Tensor:
    """Map standard-normal ``u`` to a draw of distribution ``fn``: the transform ``T_fn(u)``.

    Args:
        fn: a torch/Pyro distribution with ``batch_shape + event_shape`` broadcastable with ``u``.
        u: standard-normal values shaped ``fn.batch_shape + fn.event_shape``, float, on ``fn``'s
            device.

    Returns:
        Tensor of the same shape, distributed as ``fn`` when ``u ~ N(0, I)``.

    Raises:
        _CannotWhiten: internal; callers re-raise it as :class:`WhiteningError` with the site name.
    """
    if isinstance(fn, (Independent, dist.ExpandedDistribution, dist.MaskedDistribution)):
        # Elementwise transforms broadcast, so the base's smaller batch shape is fine.
        return whiten(fn.base_dist, u)
    if isinstance(fn, Normal):
        return fn.loc + fn.scale * u
    if isinstance(fn, MultivariateNormal):
        if fn.scale_tril.dim() == 2:  # one matrix for every row: one matmul, not B small ones
            return fn.loc + u @ fn.scale_tril.T
        return fn.loc + (fn.scale_tril @ u.unsqueeze(-1)).squeeze(-1)
    if isinstance(fn, Uniform):
        # No clamp needed: Phi(u) in [0, 1] maps into [low, high].
        return fn.low + (fn.high - fn.low) * torch.special.ndtr(u)
    if isinstance(fn, TransformedDistribution):
        if fn.base_dist.event_shape != fn.event_shape or fn.base_dist.batch_shape != fn.batch_shape:
            raise _CannotWhiten("its transforms change the shape of the base distribution")
        value = whiten(fn.base_dist, u)
        for transform in fn.transforms:
            value = transform(value)
        return value
    if fn.support.is_discrete:
        raise _CannotWhiten("it is discrete")
    try:
        return fn.icdf(_normal_cdf_clamped(u))
    except NotImplementedError:
        raise _CannotWhiten(f"{type(fn).__name__} has no icdf") from None


def unwhiten(fn: Any, value: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`whiten`: the standard-normal ``u`` with ``whiten(fn, u) == value``.

    Args:
        fn: the site's distribution (as in :func:`whiten`).
        value: constrained values shaped ``fn.batch_shape + fn.event_shape``.

    Returns:
        ``u``, same shape and dtype as ``value``. Values on the edge of a bounded support map to
        large finite ``u`` (probabilities are clamped into ``(tiny, 1 - eps)``). Many-to-one
        transforms (e.g. the absolute value behind ``HalfNormal``) return one preimage.
    """
    if isinstance(fn, (Independent, dist.ExpandedDistribution, dist.MaskedDistribution)):
        return unwhiten(fn.base_dist, value)
    if isinstance(fn, Normal):
        return (value - fn.loc) / fn.scale
    if isinstance(fn, MultivariateNormal):
        centred = (value - fn.loc).unsqueeze(-1)
        scale_tril = fn.scale_tril.expand(centred.shape[:-2] + fn.scale_tril.shape[-2:])
        return torch.linalg.solve_triangular(scale_tril, centred, upper=False).squeeze(-1)
    if isinstance(fn, Uniform):
        return _normal_icdf_clamped((value - fn.low) / (fn.high - fn.low))
    if isinstance(fn, TransformedDistribution):
        if fn.base_dist.event_shape != fn.event_shape or fn.base_dist.batch_shape != fn.batch_shape:
            raise _CannotWhiten("its transforms change the shape of the base distribution")
        for transform in reversed(fn.transforms):
            value = transform.inv(value)
        return unwhiten(fn.base_dist, value)
    if fn.support.is_discrete:
        raise _CannotWhiten("it is discrete")
    try:
        return _normal_icdf_clamped(fn.cdf(value))
    except NotImplementedError:
        raise _CannotWhiten(f"{type(fn).__name__} has no cdf") from None


@dataclass(frozen=True)
class WhitenedSite:
    """Where one whitened sample site lives in the per-chain vector ``u``.

    Attributes:
        name: the Pyro site name.
        event_shape: the site's event shape (its batch shape is ``()`` outside the chains plate).
        offset: first index of the site in ``u``; the site occupies ``u[..., offset:offset+size]``.
        size: ``prod(event_shape)``.
        dtype: the dtype of the site's values.
        distribution: readable name of the site's distribution (for messages).
        latent: True for latent sites; False for observed sites whose simulator noise is whitened.
        value_offset: for latent sites, the first index in the flattened latent-values vector.
    """

    name: str
    event_shape: torch.Size
    offset: int
    size: int
    dtype: torch.dtype
    distribution: str
    latent: bool
    value_offset: int


@dataclass(frozen=True)
class WhiteningLayout:
    """All whitened sites of a program, in program order, and the dimensions they add up to.

    ``dim`` is ``D``, the length of ``u`` per chain; ``latent_dim`` is the length of the flattened
    constrained latent values per chain (latent sites only).
    """

    sites: tuple[WhitenedSite, ...]

    @property
    def dim(self) -> int:
        return sum(site.size for site in self.sites)

    @property
    def latent_sites(self) -> tuple[WhitenedSite, ...]:
        return tuple(site for site in self.sites if site.latent)

    @property
    def latent_dim(self) -> int:
        return sum(site.size for site in self.latent_sites)

    @property
    def dtype(self) -> torch.dtype:
        dtype = torch.get_default_dtype()
        for site in self.sites:
            dtype = torch.promote_types(dtype, site.dtype)
        return dtype

    def site(self, name: str) -> WhitenedSite:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)

    def split_values(self, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flattened latent values ``(*batch, latent_dim)`` -> site -> ``(*batch, *event)``."""
        if values.shape[-1] != self.latent_dim:
            raise ValueError(
                f"expected latent values with last dimension {self.latent_dim}, got shape "
                f"{tuple(values.shape)}"
            )
        batch = values.shape[:-1]
        return {
            site.name: values[..., site.value_offset : site.value_offset + site.size]
            .reshape(batch + site.event_shape)
            .to(site.dtype)
            for site in self.latent_sites
        }

    def describe(self) -> list[dict[str, Any]]:
        """JSON-serializable description, used to check a checkpoint belongs to this program."""
        return [
            {
                "name": site.name,
                "event_shape": list(site.event_shape),
                "distribution": site.distribution,
                "latent": site.latent,
            }
            for site in self.sites
        ]


def trace_program(program: Callable[[], Any], seed: int = 0) -> poutine.Trace:
    """One unbatched trace of ``program``, without touching the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return poutine.trace(program).get_trace()


def sample_sites(trace: poutine.Trace) -> dict[str, dict[str, Any]]:
    """The program's sample sites that are not deterministic or plate subsample sites."""
    sites = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["infer"].get("_deterministic", False):
            continue
        sites[name] = site
    return sites


def _check_whitenable(name: str, fn: Any, event_shape: torch.Size, dtype: torch.dtype) -> None:
    """Run the forward transform once on zeros so an unsupported site fails up front."""
    try:
        whiten(fn, torch.zeros(fn.batch_shape + event_shape, dtype=dtype))
    except _CannotWhiten as error:
        raise WhiteningError(
            f"site {name!r} has distribution {describe_distribution(fn)}, which ABC cannot "
            f"whiten ({error}). ABC-MCMC needs every latent to be a transform of standard-normal "
            "noise: Normal, MultivariateNormal, Uniform, a TransformedDistribution of those, or "
            "a continuous distribution with icdf. Replace the site with a continuous one (e.g. a "
            "relaxed or thresholded continuous latent), or condition it to a fixed value."
        ) from None


def build_layout(
    trace: poutine.Trace,
    observed: Collection[str],
    *,
    whiten_observed: bool | Collection[str] = False,
) -> WhiteningLayout:
    """The whitening layout of a traced program.

    Args:
        trace: an unbatched trace (:func:`trace_program`).
        observed: names of the observed sites (given by the user); every other non-deterministic,
            non-conditioned sample site is a latent.
        whiten_observed: True to also whiten every observed site's simulator noise (the site then
            gets a slice of ``u``, making the simulation a deterministic function of ``u``), or
            the collection of observed site names to whiten.

    Raises:
        WhiteningError: a latent (or an observed site asked to be whitened) cannot be whitened,
            or a latent has a non-trivial batch shape (declare its shape with ``.to_event``).
    """
    if isinstance(whiten_observed, bool):
        whitened_observed = set(observed) if whiten_observed else set()
    else:
        whitened_observed = set(whiten_observed)
    sites = []
    offset = 0
    value_offset = 0
    for name, site in sample_sites(trace).items():
        if site["is_observed"]:
            continue  # conditioned inside the program: a constant, not a latent
        latent = name not in observed
        if not latent and name not in whitened_observed:
            continue
        fn = site["fn"]
        if fn.batch_shape != torch.Size():
            raise WhiteningError(
                f"site {name!r} ({describe_distribution(fn)}) has batch shape "
                f"{tuple(fn.batch_shape)} outside any plate; ABC expects every site to declare its "
                "shape as an event shape. Write it as e.g. "
                f"dist.Normal(...).expand([{', '.join(map(str, fn.batch_shape))}]).to_event("
                f"{len(fn.batch_shape)})."
            )
        value = site["value"]
        if not torch.is_floating_point(value):
            raise WhiteningError(
                f"site {name!r} has distribution {describe_distribution(fn)} with "
                f"non-floating values (dtype {value.dtype}); ABC can only whiten continuous "
                "sites. Replace the discrete latent with a continuous one, or condition it."
            )
        event_shape = fn.event_shape
        _check_whitenable(name, fn, event_shape, value.dtype)
        size = math.prod(event_shape)
        sites.append(
            WhitenedSite(
                name=name,
                event_shape=torch.Size(event_shape),
                offset=offset,
                size=size,
                dtype=value.dtype,
                distribution=describe_distribution(fn),
                latent=latent,
                value_offset=value_offset if latent else -1,
            )
        )
        offset += size
        if latent:
            value_offset += size
    return WhiteningLayout(tuple(sites))


class WhiteningMessenger(Messenger):
    """Sets each whitened site's value to ``T_site(u_site)`` as the program runs.

    Use it outside the chains plate so that ``msg["fn"]`` is already batched when it arrives::

        with WhiteningMessenger(layout, u) as whitening, pyro.plate("chains", C, dim=-1):
            program()
        whitening.values  # site -> value (C, *event) for whitened and recorded sites

    Args:
        layout: the program's :class:`WhiteningLayout`.
        u: ``(C, D)`` standard-normal values, float, on the program's device.
        given: optional site -> constrained values ``(C, *event)`` for latent sites; those sites
            take the given values and their slice of :attr:`u_out` becomes the inverse transform
            of them (how chains start from user-given values).
        record: extra site names (e.g. observed sites sampled by the program) whose values to
            record in :attr:`values`.
        mean_sites: observed site names that take their distribution's mean instead of a draw
            (``observation_noise="marginal"``: the noise is integrated out by the ABC kernel).

    Attributes:
        values: site -> value for every whitened site and every recorded site.
        u_out: ``u`` with the given sites' slices replaced by their inverse transforms.
    """

    def __init__(
        self,
        layout: WhiteningLayout,
        u: torch.Tensor,
        given: Mapping[str, torch.Tensor] | None = None,
        record: Collection[str] = (),
        mean_sites: Collection[str] = (),
    ) -> None:
        super().__init__()
        self.layout = layout
        self.u = u
        self.given = dict(given or {})
        self.record = set(record) | set(mean_sites)
        self.mean_sites = set(mean_sites)
        self.values: dict[str, torch.Tensor] = {}
        self.u_out = u.clone() if self.given else u
        self._sites = {site.name: site for site in layout.sites}

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if msg["name"] in self.mean_sites and not msg["is_observed"] and msg["value"] is None:
            msg["value"] = msg["fn"].mean
            return
        site = self._sites.get(msg["name"])
        if site is None or msg["is_observed"] or msg["value"] is not None:
            return
        fn = msg["fn"]
        batch = self.u.shape[:-1]
        try:
            if site.name in self.given:
                value = self.given[site.name].to(site.dtype)
                u_site = unwhiten(fn, value)
                self.u_out[..., site.offset : site.offset + site.size] = u_site.reshape(
                    batch + (site.size,)
                ).to(self.u_out.dtype)
            else:
                u_site = self.u[..., site.offset : site.offset + site.size]
                value = whiten(fn, u_site.reshape(batch + site.event_shape).to(site.dtype))
        except _CannotWhiten as error:
            raise WhiteningError(
                f"site {site.name!r} has distribution {describe_distribution(fn)} here, which "
                f"ABC cannot whiten ({error})."
            ) from None
        msg["value"] = value

    def _pyro_post_sample(self, msg: dict[str, Any]) -> None:
        if msg["name"] in self._sites or msg["name"] in self.record:
            self.values[msg["name"]] = msg["value"]


def run_whitened(
    program: Callable[[], Any],
    layout: WhiteningLayout,
    u: torch.Tensor,
    *,
    given: Mapping[str, torch.Tensor] | None = None,
    record: Collection[str] = (),
    mean_sites: Collection[str] = (),
    plate_name: str = "chains",
) -> WhiteningMessenger:
    """Run ``program`` for ``u.shape[0]`` chains in one call under the whitening messenger.

    Returns the messenger, whose ``values`` and ``u_out`` hold the results.
    """
    whitening = WhiteningMessenger(layout, u, given=given, record=record, mean_sites=mean_sites)
    with contextlib.ExitStack() as stack:
        stack.enter_context(whitening)
        stack.enter_context(pyro.plate(plate_name, u.shape[0], dim=-1))
        program()
    return whitening


class _LatentsDone(Exception):
    """Raised once every latent site has its value: what follows (the render) is not needed."""


class _LatentsOnlyMessenger(WhiteningMessenger):
    def _pyro_post_sample(self, msg: dict[str, Any]) -> None:
        super()._pyro_post_sample(msg)
        if all(site.name in self.values for site in self.layout.latent_sites):
            raise _LatentsDone


def whiten_values(
    program: Callable[[], Any],
    layout: WhiteningLayout,
    values: Mapping[str, torch.Tensor],
    *,
    plate_name: str = "chains",
) -> torch.Tensor:
    """The whitened ``u`` ``(B, D)`` of constrained latent values, without simulating.

    Args:
        program: the Pyro program ``layout`` was built from.
        layout: its :class:`WhiteningLayout`.
        values: latent site -> constrained values ``(B, *event)`` (all with one ``B``); sites left
            out (and observed sites' noise) get ``u = 0``.

    The program runs under the whitening messenger only until its last latent site is sampled,
    so the (costly) render after it never runs. A site's transform may depend on earlier sites'
    values (hierarchical priors): those come from ``values`` too.

    >>> import pyro, pyro.distributions as dist
    >>> def program():
    ...     pyro.sample("z", dist.Normal(1.0, 2.0))
    >>> layout = build_layout(trace_program(program), {}, whiten_observed=False)
    >>> whiten_values(program, layout, {"z": torch.tensor([3.0])})
    tensor([[1.]])
    """
    batch = {int(value.shape[0]) for value in values.values()}
    if len(batch) != 1:
        raise ValueError(f"values must share one leading batch size, got sizes {sorted(batch)}.")
    (size,) = batch
    template = next(iter(values.values()))
    u = torch.zeros(size, layout.dim, dtype=layout.dtype, device=template.device)
    whitening = _LatentsOnlyMessenger(layout, u, given=values)
    with torch.no_grad():
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(whitening)
                stack.enter_context(pyro.plate(plate_name, size, dim=-1))
                program()
        except _LatentsDone:
            pass
    return whitening.u_out
