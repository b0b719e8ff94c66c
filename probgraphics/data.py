"""Training sets drawn from scene programs, and procedural voxel shapes.

* :func:`random_scenes`: ``n`` independent scenes from a program's prior (a thin wrapper on
  :func:`~probgraphics.programs.simulate`).
* :func:`one_factor_batches`: DC-IGN training batches in which one scene factor varies and every
  other latent is one draw shared by the batch (seed 001 sec. 3.1-3.2), factors chosen in the
  ratio 1:1:1:10 (azimuth : elevation : light : intrinsic).
* :func:`image_volume_pairs`: face images under random pose and light with the occupancy grid of
  the same face in canonical pose (seed 002 sec. 3-4).
* :func:`procedural_shapes`: chairs, tables, cups and lamps composed of boxes, cylinders, cones,
  spheres and a torus, rasterized straight into voxel grids, with their projections at random
  azimuths (for the mu-VAE of seed 004).

Images are the programs' noise-free ``render`` site unless ``images="image"`` asks for the noisy
observation: the networks learn to reconstruct renders, and the observation noise is the
likelihood's business, not the training target's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from torch import Tensor

from probgraphics.programs.dcign import DCIGNProgram
from probgraphics.programs.face import FaceProgram
from probgraphics.programs.simulate import simulate
from probgraphics.render.voxel import project, rotate_about_vertical, voxelize

__all__ = [
    "FACE_FACTORS",
    "FACE_RATIO",
    "SHAPE_CLASSES",
    "FactorBatch",
    "ImageVolumePairs",
    "OneFactorBatches",
    "ShapeSet",
    "default_factors",
    "image_volume_pairs",
    "one_factor_batches",
    "procedural_shapes",
    "random_scenes",
]

#: The face program's factors (seed 001 sec. 3.2): three extrinsic ones, and the intrinsic
#: properties of the face (its shape and texture, and the camera framing it).
FACE_FACTORS: dict[str, tuple[str, ...]] = {
    "azimuth": ("azimuth",),
    "elevation": ("elevation",),
    "light": ("light",),
    "intrinsic": ("shape", "texture", "camera"),
}

#: Batch-type ratio azimuth : elevation : light : intrinsic of seed 001 sec. 3.2.
FACE_RATIO = (1, 1, 1, 10)

#: The classes :func:`procedural_shapes` can draw.
SHAPE_CLASSES = ("chair", "table", "cup", "lamp")


def _check_count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return value


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int (it makes the draw reproducible), got {seed!r}.")
    return seed


def _check_images_site(images: str) -> str:
    if images not in ("render", "image"):
        raise ValueError(
            f"images must be 'render' (noise-free) or 'image' (the noisy observation), got "
            f"{images!r}."
        )
    return images


# --------------------------------------------------------------------------------------------
# Random scenes
# --------------------------------------------------------------------------------------------


def random_scenes(program: Callable[[], object], n: int, *, seed: int) -> dict[str, Tensor]:
    """``n`` independent scenes from ``program``'s prior, in one batched call.

    Returns:
        dict of site name -> ``(n, *event)`` tensor for every latent, deterministic and observed
        site (e.g. ``image`` ``(n, C, H, W)``), on the program's device.
    """
    if not callable(program):
        raise TypeError(f"program must be a callable Pyro model, got {type(program).__name__}.")
    return simulate(program, _check_count("n", n), seed=_check_seed(seed))


# --------------------------------------------------------------------------------------------
# One-factor-varies batches (seed 001)
# --------------------------------------------------------------------------------------------


class FactorBatch(NamedTuple):
    """One DC-IGN training batch in which only ``factor`` varies.

    Attributes:
        images: ``(B, C, H, W)`` float in [0, 1] (the ``render`` site unless asked otherwise).
        factor: the name of the factor that varies.
        latents: site name -> ``(B, *event)`` value of every latent site of the program. The
            factor's sites differ across the batch; every other latent is one draw, repeated.
    """

    images: Tensor
    factor: str
    latents: dict[str, Tensor]


class _ShareAcrossBatch(Messenger):
    """Draws every latent site not in ``varying`` once per batch and repeats it in every scene.

    It must sit outside the batch plate, so the site's distribution is already expanded to the
    batch when it draws: the first scene's draw then stands for all, which is an exact draw of a
    shared value even when a prior depends on other (shared) latents.
    """

    def __init__(self, varying: frozenset[str]) -> None:
        super().__init__()
        self.varying = varying

    def _pyro_sample(self, msg) -> None:
        if (
            msg["name"] in self.varying
            or msg["is_observed"]
            or msg["value"] is not None
            or msg["infer"].get("_deterministic", False)
            # pyro.plate's own subsample site is not a distribution.
            or not isinstance(msg["fn"], torch.distributions.Distribution)
        ):
            return
        fn = msg["fn"]
        value = fn(*msg["args"], **msg["kwargs"])
        # The batch plate is the rightmost batch dimension (simulate's convention, dim=-1).
        axis = value.dim() - len(fn.event_shape) - 1
        if axis < 0:
            return
        msg["value"] = value.narrow(axis, 0, 1).expand_as(value)


def default_factors(program) -> dict[str, tuple[str, ...]]:
    """The factors of a bundled program: :data:`FACE_FACTORS` for the face program, one factor
    per code group (named as the group) for the DC-IGN program."""
    if isinstance(program, FaceProgram):
        return dict(FACE_FACTORS)
    if isinstance(program, DCIGNProgram):
        return {name: (name,) for name in program.latent_sites}
    raise ValueError(
        f"no default factors for a program of type {type(program).__name__}; pass factors="
        "{factor name: [site names]}, e.g. {'pose': ['azimuth'], 'identity': ['shape']}."
    )


def _check_factors(factors) -> dict[str, tuple[str, ...]]:
    if not isinstance(factors, Mapping) or not factors:
        raise TypeError(
            f"factors must be a non-empty mapping of factor name -> site names, got {factors!r}."
        )
    checked: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for name, sites in factors.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"factor names must be non-empty str, got {name!r}.")
        if isinstance(sites, str):
            sites = (sites,)
        if not isinstance(sites, Sequence) or not sites:
            raise ValueError(f"factor {name!r} must list the site names it varies, got {sites!r}.")
        for site in sites:
            if not isinstance(site, str):
                raise ValueError(f"factor {name!r} has a site name that is not a str: {site!r}.")
            if site in owner:
                raise ValueError(
                    f"factors must be disjoint: site {site!r} is in both {owner[site]!r} and "
                    f"{name!r}."
                )
            owner[site] = name
        checked[name] = tuple(sites)
    return checked


def _check_ratio(ratio, n_factors: int) -> Tensor:
    try:
        weights = [float(w) for w in ratio]
    except (TypeError, ValueError):
        raise ValueError(f"ratio must be a sequence of positive numbers, got {ratio!r}.") from None
    if len(weights) != n_factors or not all(math.isfinite(w) and w > 0 for w in weights):
        raise ValueError(
            f"ratio must give one positive, finite weight per factor ({n_factors} factors), "
            f"got {ratio!r}."
        )
    return torch.tensor(weights, dtype=torch.float64)


class OneFactorBatches:
    """An iterator of :class:`FactorBatch`; build it with :func:`one_factor_batches`.

    Each ``next()`` picks a factor with probability proportional to its ratio weight, then draws
    the batch in one traced, batched run of the program (one render call). Reproducible: the
    ``k``-th batch depends only on ``seed`` and ``k``.

    Attributes: ``program``, ``batch_size``, ``factors`` (name -> site names), ``ratio`` (float64
    weights, one per factor, in ``factors`` order), ``images`` (the site the images come from),
    ``observed`` (the observation site, never treated as a latent), ``n_batches`` (``None``:
    endless).
    """

    def __init__(
        self,
        program,
        batch_size: int,
        *,
        seed: int,
        ratio: Tensor,
        factors: dict[str, tuple[str, ...]],
        images: str,
        observed: str,
        n_batches: int | None,
    ) -> None:
        self.program = program
        self.batch_size = batch_size
        self.factors = factors
        self.names = tuple(factors)
        self.ratio = ratio
        self.images = images
        self.observed = observed
        self.n_batches = n_batches
        self._generator = torch.Generator().manual_seed(seed)
        self._drawn = 0
        self._checked = False

    def __iter__(self) -> Iterator[FactorBatch]:
        return self

    def __next__(self) -> FactorBatch:
        if self.n_batches is not None and self._drawn >= self.n_batches:
            raise StopIteration
        index = int(torch.multinomial(self.ratio, 1, generator=self._generator))
        seed = int(torch.randint(0, 2**62, (1,), generator=self._generator))
        self._drawn += 1
        return self.draw(self.names[index], seed)

    def draw(self, factor: str, seed: int) -> FactorBatch:
        """One batch in which ``factor`` varies, drawn with ``seed``; the iterator does not
        advance."""
        if factor not in self.factors:
            raise KeyError(f"unknown factor {factor!r}; the factors are {list(self.names)}.")
        varying = frozenset(self.factors[factor]) | {self.observed}
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(_check_seed(seed))
            with _ShareAcrossBatch(varying), pyro.plate("scenes", self.batch_size, dim=-1):
                trace = poutine.trace(self.program).get_trace()
        sites = {name: site for name, site in trace.nodes.items() if site["type"] == "sample"}
        latents = {
            name: site["value"].contiguous()
            for name, site in sites.items()
            if not site["is_observed"]
            and not site["infer"].get("_deterministic", False)
            and name != self.observed
        }
        if not self._checked:
            self._check_sites(sites, latents)
            self._checked = True
        return FactorBatch(sites[self.images]["value"].contiguous(), factor, latents)

    def _check_sites(self, sites: dict, latents: dict) -> None:
        for site in (self.images, self.observed):
            if site not in sites:
                raise ValueError(
                    f"the program has no site {site!r} (its sites are {sorted(sites)}); programs "
                    "record their noise-free render as pyro.deterministic('render', ...) and "
                    "observe 'image'."
                )
        unknown = sorted(s for sites_ in self.factors.values() for s in sites_ if s not in latents)
        if unknown:
            raise ValueError(
                f"factors name sites that are not latent sites of the program: {unknown}; its "
                f"latent sites are {sorted(latents)}."
            )


def one_factor_batches(
    program,
    batch_size: int,
    *,
    seed: int,
    ratio: Sequence[float] = FACE_RATIO,
    factors: Mapping[str, Sequence[str]] | None = None,
    images: str = "render",
    observed: str = "image",
    n_batches: int | None = None,
) -> OneFactorBatches:
    """DC-IGN training batches in which only one factor varies (seed 001 sec. 3.1-3.2).

    For each batch a factor is chosen with probability proportional to ``ratio``; the sites of
    that factor are drawn independently for every scene, and every other latent site is drawn
    once and shared by the whole batch. For the face program the factors are ``azimuth``,
    ``elevation``, ``light`` and ``intrinsic`` (``shape``, ``texture`` and ``camera`` vary), in
    the ratio 1:1:1:10.

    Args:
        program: a scene program (e.g. ``programs.face(resolution=64)``, ``programs.dcign(net)``).
        batch_size: scenes per batch ``B`` (>= 2 for anything to vary).
        seed: makes the sequence of batches reproducible; does not touch the global RNG.
        ratio: one positive weight per factor, in ``factors`` order.
        factors: factor name -> site names it varies; the default is :func:`default_factors`.
        images: ``"render"`` (noise-free, default) or ``"image"`` (noisy observation).
        observed: the program's observation site, which is never shared.
        n_batches: stop after this many batches; ``None`` (default) iterates forever.

    Returns:
        :class:`OneFactorBatches`, an iterator of :class:`FactorBatch` with ``images``
        ``(B, C, H, W)`` on the program's device.
    """
    if not callable(program):
        raise TypeError(f"program must be a callable Pyro model, got {type(program).__name__}.")
    batch_size = _check_count("batch_size", batch_size, minimum=2)
    seed = _check_seed(seed)
    factors = _check_factors(default_factors(program) if factors is None else factors)
    weights = _check_ratio(ratio, len(factors))
    images = _check_images_site(images)
    if not isinstance(observed, str):
        raise TypeError(f"observed must be a site name (str), got {observed!r}.")
    if n_batches is not None:
        n_batches = _check_count("n_batches", n_batches)
    return OneFactorBatches(
        program,
        batch_size,
        seed=seed,
        ratio=weights,
        factors=factors,
        images=images,
        observed=observed,
        n_batches=n_batches,
    )


# --------------------------------------------------------------------------------------------
# Image-volume pairs (seed 002)
# --------------------------------------------------------------------------------------------


class ImageVolumePairs(NamedTuple):
    """Faces seen under random pose and light, with their volumes in canonical pose.

    Attributes:
        images: ``(n, C, H, W)`` float in [0, 1].
        volumes: ``(n, R, R, R)`` float32 occupancy in {0, 1}, axes (y top->bottom, z far->near,
            x left->right), of the same face's mesh in canonical pose (no rotation, no camera).
        latents: site name -> ``(n, *event)`` value of every scene latent.
    """

    images: Tensor
    volumes: Tensor
    latents: dict[str, Tensor]


def image_volume_pairs(
    face_program: FaceProgram,
    n: int,
    *,
    resolution: int = 32,
    seed: int,
    bounds: tuple[float, float] = (-1.2, 1.2),
    images: str = "render",
    chunk_size: int = 256,
) -> ImageVolumePairs:
    """Image-volume training pairs from the face program (seed 002 sec. 3-4).

    The images are ``n`` scenes of the program (random shape, texture, pose, light and camera),
    rendered in one batched call; each volume is the solid occupancy of that scene's face mesh
    (``program.model.vertices(shape)``) in canonical pose, voxelized with
    :func:`~probgraphics.render.voxelize` over the cube ``bounds^3`` (model units; the synthetic
    head fits in about ``[-1.1, 1.1]^3``).

    Args:
        face_program: a :class:`~probgraphics.programs.FaceProgram`.
        n: number of pairs.
        resolution: voxels per side ``R`` of the volumes.
        seed: makes the draw reproducible.
        bounds: ``(low, high)`` model-space extent of the volume on every axis.
        images: ``"render"`` (noise-free, default) or ``"image"``.
        chunk_size: faces voxelized at a time (bounds the voxelizer's memory).

    Returns:
        :class:`ImageVolumePairs` on the program's device.
    """
    if not isinstance(face_program, FaceProgram):
        raise TypeError(
            "image_volume_pairs needs the face program (probgraphics.programs.face(...)), got "
            f"{type(face_program).__name__}."
        )
    n = _check_count("n", n)
    resolution = _check_count("resolution", resolution)
    chunk_size = _check_count("chunk_size", chunk_size)
    images = _check_images_site(images)
    scenes = random_scenes(face_program, n, seed=seed)
    model = face_program.model
    shape = scenes["shape"]
    if shape.shape[-1] < model.n_shape:
        # The program uses the leading components only; the rest of the model's are at 0.
        shape = torch.cat([shape, shape.new_zeros(n, model.n_shape - shape.shape[-1])], dim=-1)
    triangles = model.triangles.to(shape.device)
    volumes = torch.cat(
        [
            voxelize(model.vertices(chunk), triangles, resolution, bounds=bounds)
            for chunk in shape.split(chunk_size)
        ]
    )
    latents = {name: scenes[name] for name in face_program.latent_sites}
    return ImageVolumePairs(scenes[images], volumes, latents)


# --------------------------------------------------------------------------------------------
# Procedural voxel shapes
# --------------------------------------------------------------------------------------------


class ShapeSet(NamedTuple):
    """Procedural shapes and their projections.

    Attributes:
        grids: ``(n, R, R, R)`` float32 occupancy in {0, 1}, axes (y top->bottom, z far->near,
            x left->right), canonical pose, centred.
        images: ``(n, 1, R, R)`` float32 in [0, 1]: ``project(rotate_about_vertical(grids,
            azimuth))``.
        azimuth: ``(n,)`` float32 radians in [-pi, pi).
        labels: ``(n,)`` int64 indices into ``classes``.
        classes: the class names, as given.
    """

    grids: Tensor
    images: Tensor
    azimuth: Tensor
    labels: Tensor
    classes: tuple[str, ...]


class _Space:
    """Voxel-centre coordinates of an ``R^3`` grid spanning ``[-1, 1]^3``, and primitives.

    Coordinates: ``x`` (columns, left->right) and ``z`` (depth, far->near) increase with the
    index; ``y`` (rows) decreases with it, so row 0 is the top. Every primitive is batched over
    ``m`` shapes: parameters are ``(m,)`` tensors, masks are ``(m, R, R, R)`` bool.
    """

    def __init__(self, resolution: int) -> None:
        self.voxel = 2.0 / resolution
        self.coord = (torch.arange(resolution, dtype=torch.float32) + 0.5) * self.voxel - 1.0
        self.x = self.coord
        self.z = self.coord
        self.y = -self.coord

    def at_least(self, size: Tensor, voxels: float) -> Tensor:
        """``size`` raised to ``voxels`` voxel edges, so thin parts never fall between centres."""
        return size.clamp_min(voxels * self.voxel)

    @staticmethod
    def _interval(axis: Tensor, low: Tensor, high: Tensor) -> Tensor:
        return (axis >= low[:, None]) & (axis <= high[:, None])

    def box(self, x: tuple, y: tuple, z: tuple) -> Tensor:
        """Axis-aligned boxes; ``x``, ``y``, ``z`` are ``(low, high)`` pairs of ``(m,)``."""
        in_x = self._interval(self.x, *x)
        in_y = self._interval(self.y, *y)
        in_z = self._interval(self.z, *z)
        return in_y[:, :, None, None] & in_z[:, None, :, None] & in_x[:, None, None, :]

    def corner_legs(self, half_width: Tensor, half_depth: Tensor, leg: Tensor, y: tuple) -> Tensor:
        """Four square legs of side ``leg`` spanning heights ``y`` (a ``(low, high)`` pair), one
        flush with each corner of the ``2 half_width x 2 half_depth`` footprint."""
        legs = []
        for sx in (-1.0, 1.0):
            for sz in (-1.0, 1.0):
                x_edge, z_edge = sx * half_width, sz * half_depth
                x_inner, z_inner = x_edge - sx * leg, z_edge - sz * leg
                legs.append(
                    self.box(
                        (torch.minimum(x_edge, x_inner), torch.maximum(x_edge, x_inner)),
                        y,
                        (torch.minimum(z_edge, z_inner), torch.maximum(z_edge, z_inner)),
                    )
                )
        return legs[0] | legs[1] | legs[2] | legs[3]

    def _radius_squared(self, centre_x: Tensor | float = 0.0) -> Tensor:
        """``(m or 1, R_z, R_x)`` squared distance from the vertical axis through (centre_x, 0)."""
        dx = self.x - (centre_x[:, None] if isinstance(centre_x, Tensor) else centre_x)
        return self.z[None, :, None] ** 2 + (dx**2).reshape(-1, 1, len(self.x))

    def cylinder(self, radius: Tensor, y: tuple, inner: Tensor | None = None) -> Tensor:
        """Vertical cylinders about the centre axis; with ``inner`` radii, tubes."""
        r2 = self._radius_squared()
        disc = r2 <= radius[:, None, None] ** 2
        if inner is not None:
            disc &= r2 > inner[:, None, None] ** 2
        return self._interval(self.y, *y)[:, :, None, None] & disc[:, None, :, :]

    def frustum(self, bottom: Tensor, top: Tensor, y: tuple) -> Tensor:
        """Solid truncated cones about the centre axis, radius ``bottom`` at ``y[0]`` going
        linearly to ``top`` at ``y[1]``."""
        low, high = y
        t = ((self.y - low[:, None]) / (high - low)[:, None]).clamp(0.0, 1.0)
        radius = bottom[:, None] + (top - bottom)[:, None] * t  # (m, R_y)
        inside = self._radius_squared()[None] <= (radius**2)[:, :, None, None]
        return self._interval(self.y, low, high)[:, :, None, None] & inside

    def sphere(self, centre_y: Tensor, radius: Tensor) -> Tensor:
        """Spheres centred on the vertical axis at height ``centre_y``."""
        dy2 = (self.y - centre_y[:, None]) ** 2  # (m, R_y)
        return (dy2[:, :, None, None] + self._radius_squared()[None]) <= (radius**2)[
            :, None, None, None
        ]

    def handle(
        self, centre_x: Tensor, centre_y: Tensor, major: Tensor, minor: Tensor, cut_x: Tensor
    ) -> Tensor:
        """Tori in the x-y plane (a cup handle): ring of radius ``major`` about
        (``centre_x``, ``centre_y``, 0), tube radius ``minor``, kept where ``x >= cut_x``."""
        dx = self.x - centre_x[:, None]  # (m, R_x)
        dy = self.y - centre_y[:, None]  # (m, R_y)
        ring = (dy[:, :, None] ** 2 + dx[:, None, :] ** 2).sqrt() - major[:, None, None]
        inside = (ring[:, :, None, :] ** 2 + self.z[None, None, :, None] ** 2) <= (minor**2)[
            :, None, None, None
        ]
        return inside & (self.x >= cut_x[:, None])[:, None, None, :]


def _uniform(generator: torch.Generator, m: int, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(m, generator=generator)


def _chairs(space: _Space, m: int, g: torch.Generator) -> Tensor:
    """Seat, four legs at its corners and a back along its far edge."""
    half_width = _uniform(g, m, 0.35, 0.55)
    half_depth = _uniform(g, m, 0.35, 0.55)
    seat = space.at_least(_uniform(g, m, 0.10, 0.18), 1.2)
    leg_height = _uniform(g, m, 0.5, 0.8)
    back_height = _uniform(g, m, 0.5, 0.85)
    leg = space.at_least(_uniform(g, m, 0.10, 0.16), 1.2)
    back = space.at_least(_uniform(g, m, 0.08, 0.14), 1.2)
    bottom = -(leg_height + seat + back_height) / 2
    seat_low = bottom + leg_height
    seat_high = seat_low + seat
    shape = space.box((-half_width, half_width), (seat_low, seat_high), (-half_depth, half_depth))
    shape |= space.box(
        (-half_width, half_width),
        (seat_high, seat_high + back_height),
        (-half_depth, -half_depth + back),
    )
    return shape | space.corner_legs(half_width, half_depth, leg, (bottom, seat_low))


def _tables(space: _Space, m: int, g: torch.Generator) -> Tensor:
    """A top slab on four legs."""
    half_width = _uniform(g, m, 0.45, 0.62)
    half_depth = _uniform(g, m, 0.30, 0.62)
    top = space.at_least(_uniform(g, m, 0.08, 0.16), 1.2)
    leg_height = _uniform(g, m, 0.6, 1.1)
    leg = space.at_least(_uniform(g, m, 0.10, 0.18), 1.2)
    bottom = -(leg_height + top) / 2
    top_low = bottom + leg_height
    shape = space.box((-half_width, half_width), (top_low, -bottom), (-half_depth, half_depth))
    return shape | space.corner_legs(half_width, half_depth, leg, (bottom, top_low))


def _cups(space: _Space, m: int, g: torch.Generator) -> Tensor:
    """A tube closed at the bottom (the cup's axis is the grid's vertical axis) and a handle."""
    radius = _uniform(g, m, 0.30, 0.50)
    wall = space.at_least(_uniform(g, m, 0.06, 0.10), 1.2)
    height = _uniform(g, m, 0.6, 1.2)
    floor = space.at_least(_uniform(g, m, 0.06, 0.10), 1.2)
    minor = space.at_least(_uniform(g, m, 0.04, 0.07), 0.75)
    major = torch.minimum(_uniform(g, m, 0.15, 0.25), height / 2 - minor - space.voxel)
    bottom, top = -height / 2, height / 2
    shape = space.cylinder(radius, (bottom, bottom + floor))
    shape |= space.cylinder(radius, (bottom, top), inner=radius - wall)
    shape |= space.handle(radius, torch.zeros(m), major, minor, cut_x=radius - wall / 2)
    return shape


def _lamps(space: _Space, m: int, g: torch.Generator) -> Tensor:
    """A disc base, a pole, and a shade: a truncated cone or a globe, half of each."""
    base_radius = _uniform(g, m, 0.25, 0.45)
    base_height = space.at_least(_uniform(g, m, 0.06, 0.14), 1.2)
    pole_radius = space.at_least(_uniform(g, m, 0.04, 0.07), 0.75)
    pole_height = _uniform(g, m, 0.6, 1.0)
    cone_bottom = _uniform(g, m, 0.30, 0.55)
    cone_top = _uniform(g, m, 0.10, 0.25)
    cone_height = _uniform(g, m, 0.30, 0.55)
    globe_radius = _uniform(g, m, 0.20, 0.35)
    globe = torch.rand(m, generator=g) < 0.5
    shade_height = torch.where(globe, 1.7 * globe_radius, cone_height)
    bottom = -(base_height + pole_height + shade_height) / 2
    pole_top = bottom + base_height + pole_height
    shape = space.cylinder(base_radius, (bottom, bottom + base_height))
    shape |= space.cylinder(pole_radius, (bottom, pole_top))
    cone = space.frustum(cone_bottom, cone_top, (pole_top, pole_top + cone_height))
    sphere = space.sphere(pole_top + 0.7 * globe_radius, globe_radius)
    shape |= torch.where(globe[:, None, None, None], sphere, cone)
    return shape


_BUILDERS = {"chair": _chairs, "table": _tables, "cup": _cups, "lamp": _lamps}


def procedural_shapes(
    n: int,
    *,
    resolution: int = 28,
    seed: int,
    classes: Sequence[str] = SHAPE_CLASSES,
    rotation_mode: str = "bilinear",
    tau: float = 1.0,
    chunk_size: int = 1024,
) -> ShapeSet:
    """Voxel shapes composed of primitives with random proportions, and their projections.

    Each shape is one of ``classes``, chosen uniformly:

    * ``chair``: seat, four legs at its corners, a back along the far edge;
    * ``table``: a top slab on four legs (most of its occupancy is in the top layers);
    * ``cup``: a tube with a floor, axis on the grid's vertical axis (so its centre column is
      empty above the floor), and a torus handle on the +x side;
    * ``lamp``: disc base, pole, and a truncated-cone or globe shade.

    Shapes are rasterized straight into the grid (a voxel is occupied when its centre is inside a
    primitive; thin parts are at least about one voxel thick), centred vertically and on the
    vertical axis, and kept within radius 0.9 of it so rotations do not clip them. Sizes are in
    units of the grid's half-width, so they scale with ``resolution``. Each image is
    ``project(rotate_about_vertical(grid, azimuth, mode=rotation_mode), tau=tau)`` with the
    azimuth uniform in [-pi, pi).

    Args:
        n: number of shapes.
        resolution: grid edge ``R`` (>= 8).
        seed: makes the set reproducible; does not touch the global RNG.
        classes: a non-empty subset of :data:`SHAPE_CLASSES`, without repeats.
        rotation_mode: ``"bilinear"`` or ``"nearest"``, as in ``rotate_about_vertical``.
        tau: projection density, as in ``project``.
        chunk_size: shapes rotated and projected at a time (bounds temporary memory).

    Returns:
        :class:`ShapeSet`, float32 / int64 tensors on the CPU.
    """
    n = _check_count("n", n)
    resolution = _check_count("resolution", resolution, minimum=8)
    seed = _check_seed(seed)
    chunk_size = _check_count("chunk_size", chunk_size)
    if isinstance(classes, str) or not isinstance(classes, Sequence) or not classes:
        raise ValueError(f"classes must be a non-empty sequence of names, got {classes!r}.")
    classes = tuple(classes)
    unknown = [c for c in classes if c not in _BUILDERS]
    if unknown or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names from {SHAPE_CLASSES}, got {classes!r}.")
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(classes), (n,), generator=generator)
    azimuth = (torch.rand(n, generator=generator) * 2.0 - 1.0) * math.pi
    space = _Space(resolution)
    grids = torch.zeros(n, resolution, resolution, resolution)
    for label, name in enumerate(classes):
        members = (labels == label).nonzero(as_tuple=True)[0]
        if members.numel():
            grids[members] = _BUILDERS[name](space, members.numel(), generator).float()
    images = torch.cat(
        [
            project(rotate_about_vertical(g, a, mode=rotation_mode), tau=tau)
            for g, a in zip(grids.split(chunk_size), azimuth.split(chunk_size), strict=True)
        ]
    )
    return ShapeSet(grids, images, azimuth, labels, classes)
