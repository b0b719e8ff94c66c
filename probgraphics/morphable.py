"""A 3D morphable face model (3DMM): a synthetic one that ships with the package, and a loader for
a user-supplied Basel Face Model.

A morphable model maps standard-normal coefficients to a face mesh (seed 000 section 4.1)::

    vertices = mean_shape  + sum_k shape_coeffs[k]   * shape_std[k]   * shape_basis[k]
    albedo   = mean_albedo + sum_k texture_coeffs[k] * texture_std[k] * texture_basis[k]

Conventions (both the synthetic model and :meth:`MorphableModel.from_bfm`):

* Model units: the mean head fits in about ``[-1, 1]^3``; x right, y up, z toward the viewer
  (the face looks along +z).
* Basis normalization is **unit RMS**: every component ``basis[k]`` (a ``(V, 3)`` displacement
  field) satisfies ``sum_v |basis[k, v]|^2 == V``, i.e. its root-mean-square vertex displacement
  is 1, and distinct components are orthogonal (``sum(basis[j] * basis[k]) == 0``). So
  ``std[k]`` is the RMS vertex displacement (model units; albedo units for texture) of one
  standard deviation along component ``k``. ``std`` is non-increasing.
* Triangles are counter-clockwise seen from outside, so ``cross(v1 - v0, v2 - v0)`` points out.

The synthetic model is built like a real 3DMM: a face-like mean mesh (a latitude-longitude grid on
an ellipsoid deformed by smooth Gaussian bumps and dents: nose, brows, eye sockets, cheeks, lips,
chin, jaw, ears), a few hundred designed deformation fields (named facial variations first, then
random smooth localized ones on well-spread centres, coarse to fine, symmetric plus smaller
asymmetric parts) with amplitudes chosen so that +-3 standard deviations still give a face, and
the leading 200 principal components of their sum with standard-normal weights (an SVD), which
makes the components orthogonal with decreasing standard deviations, like a 3DMM learnt from
scans. The albedo model is built the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["MorphableModel", "SYNTHETIC_MAX_COMPONENTS"]

#: Most shape / texture components :meth:`MorphableModel.synthetic` can build.
SYNTHETIC_MAX_COMPONENTS = 200

# Fixed seed of the synthetic model's random deformation and albedo fields.
_SYNTHETIC_SEED = 20150601

# Latitude-longitude grid of the synthetic head: _N_LON vertices per ring, _N_RINGS rings between
# the two poles. 44 x 34 gives 1,498 vertices and 2,992 triangles (the renderer's budget is 3,500).
_N_LON = 44
_N_RINGS = 34

# Semi-axes (x, y, z) of the base ellipsoid in model units: a head is deeper than it is wide.
_HEAD_AXES = (0.70, 0.88, 0.78)


# --------------------------------------------------------------------------------------------
# Synthetic geometry (numpy, float64)
# --------------------------------------------------------------------------------------------


def _warped_grid(n: int, low: float, high: float, density, endpoint: bool) -> np.ndarray:
    """``n`` angles in ``[low, high)`` (or strictly inside when not ``endpoint``) spaced so that
    their local density follows ``density(angle)``: the inverse CDF of the density at uniform
    quantiles. Used to put more grid lines on the face than on the back of the head."""
    fine = np.linspace(low, high, 4001)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density(fine[1:]) + density(fine[:-1])))])
    cdf /= cdf[-1]
    quantiles = np.arange(n) / n if endpoint else (np.arange(n) + 1.0) / (n + 1.0)
    return np.interp(quantiles, cdf, fine)


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Longitude and latitude (radians) of every vertex, and the triangles.

    Vertex 0 is the north pole (top of the head), then ``_N_RINGS`` rings of ``_N_LON`` vertices
    from top to bottom, then the south pole. Longitude 0 faces +z; positive longitude is toward +x.
    """
    deg = np.pi / 180.0
    # 4x denser in front (the face) than at the back of the head.
    lon = _warped_grid(
        _N_LON, -np.pi, np.pi, lambda a: 1.0 + 3.0 * np.exp(-0.5 * (a / (55 * deg)) ** 2), True
    )
    # Densest around the eyes and nose, coarser toward the crown and under the chin.
    lat = _warped_grid(
        _N_RINGS,
        -np.pi / 2,
        np.pi / 2,
        lambda a: 1.0 + 1.5 * np.exp(-0.5 * ((a + 5 * deg) / (35 * deg)) ** 2),
        False,
    )[::-1]
    ring_lon = np.tile(lon, _N_RINGS)
    ring_lat = np.repeat(lat, _N_LON)
    vertex_lon = np.concatenate([[0.0], ring_lon, [0.0]])
    vertex_lat = np.concatenate([[np.pi / 2], ring_lat, [-np.pi / 2]])

    def ring_index(ring: int, column: np.ndarray) -> np.ndarray:
        return 1 + ring * _N_LON + column % _N_LON

    south = 1 + _N_RINGS * _N_LON
    column = np.arange(_N_LON)
    triangles = []
    # Seen from outside, longitude increases to the right (east) and rings go down; a triangle
    # (top-left, bottom-left, bottom-right) is then counter-clockwise.
    triangles.append(
        np.stack([np.zeros(_N_LON, int), ring_index(0, column), ring_index(0, column + 1)], 1)
    )
    for ring in range(_N_RINGS - 1):
        top_left, top_right = ring_index(ring, column), ring_index(ring, column + 1)
        bottom_left, bottom_right = ring_index(ring + 1, column), ring_index(ring + 1, column + 1)
        triangles.append(np.stack([top_left, bottom_left, bottom_right], 1))
        triangles.append(np.stack([top_left, bottom_right, top_right], 1))
    last = _N_RINGS - 1
    triangles.append(
        np.stack(
            [ring_index(last, column), np.full(_N_LON, south), ring_index(last, column + 1)], 1
        )
    )
    return vertex_lon, vertex_lat, np.concatenate(triangles).astype(np.int64)


def _directions(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Unit vectors ``(..., 3)`` at longitude / latitude (radians); longitude 0 is +z."""
    return np.stack([np.cos(lat) * np.sin(lon), np.sin(lat), np.cos(lat) * np.cos(lon)], -1)


def _window(
    directions: np.ndarray, lon: float, lat: float, east: float, north: float
) -> np.ndarray:
    """Anisotropic Gaussian window on the sphere, 1 at (lon, lat) degrees, with standard
    deviations ``east`` and ``north`` degrees along the local east / north directions.

    Tangent-plane coordinates make it round at any latitude (a plain (lon, lat) Gaussian is
    squeezed near the poles); the extra term in ``1 - cos(angle)`` removes the echo the tangent
    projection would otherwise give at the antipode.
    """
    deg = np.pi / 180.0
    lon, lat = lon * deg, lat * deg
    centre = _directions(np.array(lon), np.array(lat))
    east_axis = np.array([np.cos(lon), 0.0, -np.sin(lon)])
    north_axis = np.array([-np.sin(lat) * np.sin(lon), np.cos(lat), -np.sin(lat) * np.cos(lon)])
    u = directions @ east_axis / (east * deg)
    v = directions @ north_axis / (north * deg)
    w = (1.0 - directions @ centre) / (max(east, north) * deg)
    return np.exp(-0.5 * (u * u + v * v + w * w))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# Facial relief of the mean shape: (longitude, latitude, east width, north width) in degrees and a
# displacement in model units along the outward normal ("normal") or forward ("forward", +z).
# Entries with a nonzero longitude are mirrored to the other side.
_RELIEF: tuple[tuple[float, float, float, float, float, str], ...] = (
    # nose: bridge, tip, wings; the dip under it
    (0.0, -1.0, 4.0, 8.0, 0.07, "forward"),
    (0.0, -10.0, 5.0, 5.0, 0.13, "forward"),
    (6.5, -13.0, 3.5, 3.0, 0.03, "normal"),
    (0.0, -19.0, 4.0, 2.5, -0.015, "normal"),
    # eye sockets, eyeballs, brow ridges, glabella
    (16.0, 7.0, 8.0, 5.0, -0.075, "normal"),
    (16.0, 6.0, 4.5, 3.0, 0.035, "normal"),
    (15.0, 16.0, 10.0, 3.5, 0.05, "normal"),
    (0.0, 12.0, 5.0, 4.0, 0.015, "normal"),
    # cheekbones, cheek hollows, jaw angles, temples
    (28.0, -4.0, 9.0, 7.0, 0.035, "normal"),
    (27.0, -22.0, 8.0, 7.0, -0.015, "normal"),
    (55.0, -32.0, 10.0, 8.0, 0.015, "normal"),
    (50.0, 16.0, 10.0, 12.0, -0.02, "normal"),
    # lips and mouth line, the groove under the lower lip, chin, the throat under it
    (0.0, -24.0, 9.0, 3.0, 0.035, "normal"),
    (0.0, -30.5, 8.0, 3.0, 0.035, "normal"),
    (0.0, -27.5, 9.0, 1.8, -0.025, "normal"),
    (0.0, -35.5, 8.0, 2.5, -0.015, "normal"),
    (0.0, -42.0, 9.0, 5.0, 0.07, "normal"),
    (0.0, -62.0, 30.0, 10.0, -0.10, "normal"),
    # forehead, ears, the back of the skull
    (0.0, 30.0, 30.0, 12.0, 0.015, "normal"),
    (90.0, 2.0, 5.0, 8.0, 0.045, "normal"),
    (180.0, 15.0, 35.0, 20.0, 0.04, "normal"),
)


def _ellipsoid_normals(directions: np.ndarray) -> np.ndarray:
    """Unit outward normals ``(V, 3)`` of the base ellipsoid at the grid's directions.

    Deformation fields move vertices along these rather than along the mean mesh's normals:
    they are smooth across the nose and lips, so a bump there moves the feature as a whole
    instead of pushing its flanks apart or folding them together.
    """
    normals = directions / np.asarray(_HEAD_AXES)
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def _mean_head(directions: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Mean head vertices ``(V, 3)``: the ellipsoid, narrowed at the jaw, plus :data:`_RELIEF`."""
    axes = np.asarray(_HEAD_AXES)
    deg = np.pi / 180.0
    positions = directions * axes
    normals = _ellipsoid_normals(directions)
    normal_offset = np.zeros(len(directions))
    forward_offset = np.zeros(len(directions))
    for lon, lat_c, east, north, amplitude, kind in _RELIEF:
        window = _mirrored_window(directions, lon, lat_c, east, north)
        if kind == "normal":
            normal_offset += amplitude * window
        else:
            forward_offset += amplitude * window
    positions = positions + normal_offset[:, None] * normals
    positions[:, 2] += forward_offset
    # The jaw and neck are narrower than the cranium.
    positions[:, 0] *= 1.0 - 0.14 * _sigmoid((-lat - 18 * deg) / (9 * deg))
    return positions


def _mirrored_window(directions: np.ndarray, lon: float, lat: float, east: float, north: float):
    """:func:`_window` plus its mirror image at ``-lon`` (both sides of the face)."""
    window = _window(directions, lon, lat, east, north)
    if lon in (0.0, 180.0):
        return window
    return window + _window(directions, -lon, lat, east, north)


def _principal_components(fields: np.ndarray, n_keep: int) -> tuple[np.ndarray, np.ndarray]:
    """The leading ``n_keep`` principal components of ``sum_r z_r * fields[r]``, ``z ~ N(0, I)``:
    unit-RMS orthogonal basis ``(n_keep, V, 3)`` and standard deviations ``(n_keep,)``, from an
    SVD of the ``(R, V*3)`` fields (``n_keep <= R``).

    The SVD rotates the designed fields into orthogonal directions of decreasing variance; with
    all components kept the distribution of the sum is unchanged. Signs are fixed (largest-
    magnitude entry positive) so the basis does not depend on the LAPACK build.
    """
    n_fields, n_vertices, _ = fields.shape
    flat = fields.reshape(n_fields, -1)
    # SVD through the small (R, R) Gram matrix: 10x faster than an SVD of the (R, V*3) matrix,
    # and exact enough in float64 (the kept singular values span about three decades).
    eigenvalues, left = np.linalg.eigh(flat @ flat.T)
    order = np.argsort(eigenvalues)[::-1][:n_keep]
    singular_values = np.sqrt(np.maximum(eigenvalues[order], 0.0))
    right = (left[:, order].T @ flat) / singular_values[:, None]
    peak = right[np.arange(len(right)), np.abs(right).argmax(axis=1)]
    right = right * np.sign(peak)[:, None]
    scale = np.sqrt(n_vertices)
    return right.reshape(-1, n_vertices, 3) * scale, singular_values / scale


def _window_centres(
    rng: np.random.Generator,
    directions: np.ndarray,
    lon: np.ndarray,
    lat: np.ndarray,
    count: int,
    lon_max: float,
    lat_range: tuple[float, float],
) -> list[tuple[float, float]]:
    """``count`` well-spread (longitude, latitude) degrees on the right half of the head
    (``0 <= lon <= lon_max``), by farthest-point sampling of the grid's vertices from a random
    start. Spread-out centres keep the random fields built on them from being nearly linearly
    dependent (which would leave the trailing principal components with almost no variance)."""
    deg = np.pi / 180.0
    candidates = np.flatnonzero(
        (lon >= 0.0) & (lon <= lon_max * deg) & (lat >= lat_range[0] * deg)
        & (lat <= lat_range[1] * deg)
    )  # fmt: skip
    chosen = [int(candidates[rng.integers(len(candidates))])]
    distance = 1.0 - directions[candidates] @ directions[chosen[0]]
    for _ in range(count - 1):
        chosen.append(int(candidates[np.argmax(distance)]))
        distance = np.minimum(distance, 1.0 - directions[candidates] @ directions[chosen[-1]])
    return [(float(lon[i] / deg), float(lat[i] / deg)) for i in chosen]


def _window_lattice(
    rng: np.random.Generator,
    directions: np.ndarray,
    lon: np.ndarray,
    lat: np.ndarray,
    levels: tuple[tuple[float, int, float, tuple[float, float]], ...],
):
    """Random windows, coarse to fine: for each level ``(size in degrees, count, lon_max,
    lat_range)``, yields ``(right window, left (mirror) window, centre direction, centre
    longitude, east width, size in model units)`` with jittered size and aspect."""
    deg = np.pi / 180.0
    for size, count, lon_max, lat_range in levels:
        for centre_lon, centre_lat in _window_centres(
            rng, directions, lon, lat, count, lon_max, lat_range
        ):
            jittered = size * float(np.exp(rng.uniform(-0.15, 0.15)))
            aspect = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
            east, north = jittered * np.sqrt(aspect), jittered / np.sqrt(aspect)
            right = _window(directions, centre_lon, centre_lat, east, north)
            left = _window(directions, -centre_lon, centre_lat, east, north)
            centre = _directions(np.array(centre_lon * deg), np.array(centre_lat * deg))
            # Window widths in model units: degrees on a head of radius about 0.8.
            yield right, left, centre, centre_lon, east, jittered * deg * 0.8


def _shape_fields(
    positions: np.ndarray,
    normals: np.ndarray,
    directions: np.ndarray,
    lon: np.ndarray,
    lat: np.ndarray,
) -> np.ndarray:
    """The designed shape deformation fields ``(R, V, 3)``, R >= 200, each scaled to its size at
    one standard deviation (model units): named facial variations, then random smooth ones."""
    deg = np.pi / 180.0
    x, y, z = positions.T
    zeros = np.zeros_like(x)
    unit_x = np.array([1.0, 0.0, 0.0])
    unit_y = np.array([0.0, 1.0, 0.0])
    unit_z = np.array([0.0, 0.0, 1.0])

    def win(lon_c, lat_c, east, north):
        return _mirrored_window(directions, lon_c, lat_c, east, north)[:, None]

    lower_face = _sigmoid((-lat - 15 * deg) / (8 * deg))[:, None]
    upper_head = _sigmoid((lat - 20 * deg) / (10 * deg))[:, None]
    front = _window(directions, 0.0, 0.0, 45.0, 90.0)[:, None]
    outward_x = np.stack([x, zeros, zeros], 1)
    fields = [
        0.06 * outward_x,  # head width
        0.05 * np.stack([zeros, y, zeros], 1),  # head height
        0.05 * np.stack([zeros, zeros, z], 1),  # head depth
        0.04 * upper_head * np.stack([zeros, y, zeros], 1),  # cranium height
        0.10 * lower_face * outward_x,  # jaw width
        -0.03 * lower_face * front * unit_y,  # face length
        0.03 * win(0.0, -8.0, 5.0, 8.0) * unit_z,  # nose protrusion
        0.35 * win(0.0, -9.0, 7.0, 6.0) * outward_x,  # nose width
        0.015 * win(0.0, 0.0, 4.0, 6.0) * normals,  # nose bridge height
        0.015 * win(0.0, -11.0, 5.0, 4.0) * unit_y,  # nose tip up / down
        0.012 * win(15.0, 15.0, 10.0, 4.0) * unit_y,  # brow height
        0.015 * win(15.0, 15.0, 10.0, 4.0) * normals,  # brow ridge
        0.02 * win(16.0, 7.0, 7.0, 5.0) * normals,  # eye depth
        0.012 * win(16.0, 7.0, 7.0, 5.0) * np.sign(x)[:, None] * unit_x,  # eye separation
        0.025 * win(27.0, -12.0, 12.0, 12.0) * normals,  # cheek fullness
        0.015 * win(28.0, -3.0, 9.0, 6.0) * normals,  # cheekbones
        0.2 * win(0.0, -27.0, 12.0, 5.0) * outward_x,  # mouth width
        0.012 * win(0.0, -27.0, 9.0, 4.0) * normals,  # lip fullness
        0.015 * win(0.0, -27.0, 10.0, 5.0) * unit_y,  # mouth height
        0.025 * win(0.0, -41.0, 9.0, 6.0) * unit_z,  # chin protrusion
        0.02 * win(0.0, -41.0, 10.0, 6.0) * unit_y,  # chin height
        0.15 * win(0.0, -41.0, 12.0, 6.0) * outward_x,  # chin width
        0.03 * win(0.0, 30.0, 30.0, 12.0) * normals,  # forehead slope
        0.02 * win(90.0, 2.0, 5.0, 8.0) * normals,  # ears
        0.04 * win(180.0, 15.0, 35.0, 20.0) * normals,  # back of the skull
        0.015 * win(50.0, 16.0, 10.0, 12.0) * normals,  # temples
    ]
    rng = np.random.default_rng(_SYNTHETIC_SEED)
    mirror_x = np.array([-1.0, 1.0, 1.0])
    levels = ((26.0, 6, 180.0, (-70.0, 75.0)), (15.0, 22, 120.0, (-60.0, 60.0)),
              (9.0, 50, 80.0, (-50.0, 45.0)))  # fmt: skip
    for right, left, centre, centre_lon, east, size in _window_lattice(
        rng, directions, lon, lat, levels
    ):
        # Peak displacement grows like sqrt(window size): small windows get a steeper slope
        # (they would otherwise be invisible), large ones a gentler one (they would otherwise
        # dominate). Per centre: a symmetric bump along the normal, a symmetric tangential
        # shift, and a smaller asymmetric change. In the symmetric fields the product term
        # keeps the sum of the two windows <= 1 where they overlap (near the midline).
        amplitude = np.sqrt(size * 15.0 * deg * 0.8)
        overlap = (right * left)[:, None]
        fields.append(0.08 * amplitude * (right + left - right * left)[:, None] * normals)
        tangent = rng.normal(size=3)
        tangent -= (tangent @ centre) * centre
        tangent /= np.linalg.norm(tangent)
        mirrored = tangent * mirror_x
        symmetric = right[:, None] * tangent + left[:, None] * mirrored
        fields.append(0.06 * amplitude * (symmetric - overlap * (tangent + mirrored) / 2))
        if abs(centre_lon) < 1.5 * east:
            # Near the midline the two windows overlap: an asymmetric change there is a sideways
            # shift (e.g. a deviated nose); along the normal it would nearly cancel.
            axis = np.array([2.0, 0.0, 0.0]) + rng.normal(size=3) * [0.0, 1.0, 1.0]
            axis /= np.linalg.norm(axis)
            asymmetric = right[:, None] * axis - left[:, None] * axis * mirror_x
        else:
            asymmetric = (right - left)[:, None] * normals
        fields.append(0.04 * amplitude * asymmetric)
    return np.stack(fields)


def _albedo_regions(directions: np.ndarray, lon: np.ndarray, lat: np.ndarray) -> dict:
    """Soft masks ``(V,)`` in [0, 1] of the coloured regions of the synthetic face."""
    deg = np.pi / 180.0
    # The hairline: at the top of the forehead in front, above the ears at the sides, low on the
    # back of the head.
    hairline = (38.0 - 63.0 * (1.0 - np.cos(lon)) / 2.0) * deg
    hair = _sigmoid((lat - hairline) / (3.0 * deg))
    eye_white = np.minimum(_mirrored_window(directions, 16.0, 6.0, 4.5, 2.2) * 1.6, 1.0)
    return {
        "hair": hair,
        "skin": (1.0 - hair) * (1.0 - eye_white),
        "brows": _mirrored_window(directions, 15.0, 16.5, 9.0, 1.8),
        "eye_white": eye_white,
        "iris": _mirrored_window(directions, 16.0, 6.0, 1.8, 1.8),
        "lips": _window(directions, 0.0, -27.0, 8.5, 3.5),
        "cheeks": _mirrored_window(directions, 26.0, -12.0, 9.0, 8.0),
    }


def _mean_albedo(regions: dict) -> np.ndarray:
    """Mean albedo ``(V, 3)``: skin, then hair, brows, lips, cheeks and eyes painted over it."""
    albedo = np.tile(np.array([0.80, 0.60, 0.49]), (len(regions["hair"]), 1))

    def paint(colour, weight):
        weight = np.clip(weight, 0.0, 1.0)[:, None]
        return albedo * (1.0 - weight) + np.asarray(colour) * weight

    albedo = paint([0.84, 0.52, 0.45], 0.45 * regions["cheeks"])
    albedo = paint([0.62, 0.30, 0.30], regions["lips"])
    albedo = paint([0.22, 0.15, 0.11], regions["hair"])
    albedo = paint([0.25, 0.17, 0.12], 0.9 * regions["brows"])
    albedo = paint([0.95, 0.94, 0.92], regions["eye_white"])
    albedo = paint([0.22, 0.15, 0.10], regions["iris"])
    return albedo


def _texture_fields(regions: dict, directions: np.ndarray, lon: np.ndarray, lat: np.ndarray):
    """The designed albedo variation fields ``(R, V, 3)``, R >= 200, at one standard deviation:
    named ones (skin tone, hair colour, lips, brows, cheeks, eyes), then random smooth patches."""
    grey = np.array([1.0, 1.0, 1.0])

    def field(mask, colour):
        return mask[:, None] * np.asarray(colour, dtype=float)

    skin = regions["skin"]
    named = [
        field(skin, 0.08 * np.array([1.0, 0.92, 0.85])),  # skin lightness
        field(regions["hair"], [0.12, 0.10, 0.08]),  # hair lightness
        field(skin, [0.03, -0.01, -0.02]),  # skin redness
        field(skin, [0.015, 0.01, -0.025]),  # skin yellowness
        field(regions["hair"], [0.04, 0.015, 0.0]),  # hair redness
        field(regions["lips"], -0.05 * grey),  # lip darkness
        field(regions["lips"], [0.05, -0.02, 0.0]),  # lip redness
        field(regions["brows"], -0.06 * grey),  # brow darkness
        field(regions["cheeks"], [0.05, -0.02, -0.02]),  # cheek redness
        field(regions["iris"], [-0.05, 0.0, 0.08]),  # eye colour (brown to blue)
        field(regions["iris"], 0.06 * grey),  # eye lightness
        field(skin * np.sin(lat), 0.03 * grey),  # forehead vs chin lightness
    ]
    fields = named
    rng = np.random.default_rng(_SYNTHETIC_SEED + 1)
    redness = np.array([0.8, -0.3, -0.5])
    yellowness = np.array([0.45, 0.3, -0.85])
    levels = ((32.0, 6, 180.0, (-70.0, 80.0)), (17.0, 22, 120.0, (-60.0, 65.0)),
              (10.0, 56, 80.0, (-50.0, 50.0)))  # fmt: skip
    for right, left, _, centre_lon, east, size in _window_lattice(
        rng, directions, lon, lat, levels
    ):
        # Per centre: symmetric lightness (so grayscale renders vary), a symmetric tint along
        # the directions skin varies in (redness, yellowness; free hues look painted), and,
        # away from the midline where it would nearly cancel, a smaller asymmetric lightness.
        scale = np.sqrt(size / (30.0 * np.pi / 180.0 * 0.8))
        tint = rng.normal() * redness + rng.normal() * yellowness
        both = right + left - right * left  # soft union, <= 1 near the midline
        fields.append(field(both, 0.05 * scale * grey))
        fields.append(field(both, 0.02 * scale * tint / np.linalg.norm(tint)))
        if abs(centre_lon) >= 1.5 * east:
            fields.append(field(right - left, 0.025 * scale * grey))
    return np.stack(fields)


def _build_synthetic(n_shape: int, n_texture: int) -> MorphableModel:
    """Build (uncached) the synthetic model with the leading ``n_shape`` / ``n_texture`` components.

    The components are always those of the full 200-component model, truncated, so a smaller
    model is a prefix of the larger one.
    """
    lon, lat, triangles = _grid()
    directions = _directions(lon, lat)
    mean_shape = _mean_head(directions, lat)
    normals = _ellipsoid_normals(directions)
    shape_fields = _shape_fields(mean_shape, normals, directions, lon, lat)
    regions = _albedo_regions(directions, lon, lat)
    texture_fields = _texture_fields(regions, directions, lon, lat)
    for fields in (shape_fields, texture_fields):
        if len(fields) < SYNTHETIC_MAX_COMPONENTS:  # a guard on the constants above
            raise RuntimeError(
                f"synthetic model: only {len(fields)} designed fields for "
                f"{SYNTHETIC_MAX_COMPONENTS} components; add window centres."
            )
    shape_basis, shape_std = _principal_components(shape_fields, n_shape)
    texture_basis, texture_std = _principal_components(texture_fields, n_texture)

    def as_tensor(array: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    return MorphableModel(
        mean_shape=as_tensor(mean_shape),
        shape_basis=as_tensor(shape_basis),
        shape_std=as_tensor(shape_std),
        mean_albedo=as_tensor(_mean_albedo(regions)),
        texture_basis=as_tensor(texture_basis),
        texture_std=as_tensor(texture_std),
        triangles=torch.from_numpy(triangles),
        name="synthetic",
    )


@functools.lru_cache(maxsize=8)
def _synthetic_cached(n_shape: int, n_texture: int) -> MorphableModel:
    return _build_synthetic(n_shape, n_texture)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def _require_tensor(name: str, value, ndim: int, what: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"MorphableModel.{name} must be a torch.Tensor {what}, got {type(value)}.")
    if value.ndim != ndim:
        raise ValueError(
            f"MorphableModel.{name} must be {what} ({ndim} dimensions), got shape "
            f"{tuple(value.shape)}."
        )
    return value


@dataclass(frozen=True, eq=False)
class MorphableModel:
    """A 3D morphable face model: mean shape and albedo, orthogonal bases, standard deviations.

    Fields (all tensors on one device; the float ones share one floating dtype, float32 for the
    models this module builds):

    * ``mean_shape`` ``(V, 3)``: mean vertex positions, model units (the head fits in about
      ``[-1, 1]^3``; x right, y up, z toward the viewer).
    * ``shape_basis`` ``(K_s, V, 3)``: orthogonal deformation fields of unit RMS vertex
      displacement (``sum(shape_basis[k] ** 2) == V``).
    * ``shape_std`` ``(K_s,)``: standard deviation of each component (its RMS vertex
      displacement in model units), non-increasing.
    * ``mean_albedo`` ``(V, 3)``: mean RGB reflectance per vertex, in ``[0, 1]``.
    * ``texture_basis`` ``(K_t, V, 3)`` and ``texture_std`` ``(K_t,)``: the same for albedo.
    * ``triangles`` ``(F, 3)`` int64: vertex indices, counter-clockwise seen from outside.
    * ``name``: a label. ``source_scale`` / ``source_offset``: how the source file's coordinates
      map to model units, ``model = (source - source_offset) / source_scale`` (1 and 0 for the
      synthetic model).

    :meth:`vertices` and :meth:`albedo` take standard-normal coefficients with any leading batch
    shape. Each is one GEMM against a ``(K, V*3)`` std-scaled basis computed once at
    construction. They follow the coefficients' device and floating dtype, using a copy of the
    model made once per (device, dtype) by :meth:`to`.
    """

    mean_shape: Tensor
    shape_basis: Tensor
    shape_std: Tensor
    mean_albedo: Tensor
    texture_basis: Tensor
    texture_std: Tensor
    triangles: Tensor
    name: str = "synthetic"
    source_scale: float = 1.0
    source_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        self._validate()
        n_shape, n_texture = self.shape_basis.shape[0], self.texture_basis.shape[0]
        # The hot path of rendering: coefficients (N, K) @ (K, V*3) + mean (V*3,), one addmm.
        object.__setattr__(
            self,
            "_shape_matrix",
            (
                self.shape_std[:, None] * self.shape_basis.reshape(n_shape, 3 * self.n_vertices)
            ).contiguous(),
        )
        object.__setattr__(self, "_shape_offset", self.mean_shape.reshape(-1).contiguous())
        object.__setattr__(
            self,
            "_texture_matrix",
            (
                self.texture_std[:, None]
                * self.texture_basis.reshape(n_texture, 3 * self.n_vertices)
            ).contiguous(),
        )
        object.__setattr__(self, "_texture_offset", self.mean_albedo.reshape(-1).contiguous())
        # Copies on other devices / dtypes, shared by all copies so any of them finds the others.
        object.__setattr__(self, "_copies", {(self.device, self.dtype): self})

    def _validate(self) -> None:
        mean_shape = _require_tensor("mean_shape", self.mean_shape, 2, "of shape (V, 3)")
        if mean_shape.shape[1] != 3 or mean_shape.shape[0] < 3:
            raise ValueError(
                f"MorphableModel.mean_shape must have shape (V, 3) with V >= 3, got "
                f"{tuple(mean_shape.shape)}."
            )
        if not mean_shape.is_floating_point():
            raise TypeError(
                f"MorphableModel.mean_shape must be a floating tensor, got {mean_shape.dtype}."
            )
        n_vertices, dtype, device = mean_shape.shape[0], mean_shape.dtype, mean_shape.device
        checks = (
            ("shape_basis", self.shape_basis, 3, "of shape (K_s, V, 3)"),
            ("shape_std", self.shape_std, 1, "of shape (K_s,)"),
            ("mean_albedo", self.mean_albedo, 2, "of shape (V, 3)"),
            ("texture_basis", self.texture_basis, 3, "of shape (K_t, V, 3)"),
            ("texture_std", self.texture_std, 1, "of shape (K_t,)"),
        )
        for name, value, ndim, what in checks:
            _require_tensor(name, value, ndim, what)
            if value.dtype != dtype or value.device != device:
                raise ValueError(
                    f"MorphableModel.{name} is {value.dtype} on {value.device} but mean_shape is "
                    f"{dtype} on {device}; give all float fields one dtype and device."
                )
        for prefix, basis, std in (
            ("shape", self.shape_basis, self.shape_std),
            ("texture", self.texture_basis, self.texture_std),
        ):
            if tuple(basis.shape[1:]) != (n_vertices, 3) or std.shape[0] != basis.shape[0]:
                raise ValueError(
                    f"MorphableModel.{prefix}_basis must have shape (K, {n_vertices}, 3) and "
                    f"{prefix}_std shape (K,); got {tuple(basis.shape)} and {tuple(std.shape)}."
                )
            if not bool(torch.isfinite(std).all()) or bool((std < 0).any()):
                raise ValueError(f"MorphableModel.{prefix}_std must be finite and >= 0.")
        if tuple(self.mean_albedo.shape) != (n_vertices, 3):
            raise ValueError(
                f"MorphableModel.mean_albedo must have shape ({n_vertices}, 3) like mean_shape, "
                f"got {tuple(self.mean_albedo.shape)}."
            )
        if bool((self.mean_albedo < 0).any()) or bool((self.mean_albedo > 1).any()):
            raise ValueError("MorphableModel.mean_albedo must lie in [0, 1].")
        triangles = _require_tensor("triangles", self.triangles, 2, "of shape (F, 3)")
        if triangles.shape[1] != 3 or triangles.shape[0] < 1 or triangles.dtype != torch.int64:
            raise ValueError(
                f"MorphableModel.triangles must be int64 of shape (F, 3) with F >= 1, got "
                f"{triangles.dtype} {tuple(triangles.shape)}."
            )
        if triangles.device != device:
            raise ValueError(
                f"MorphableModel.triangles is on {triangles.device} but mean_shape is on {device}."
            )
        if bool((triangles < 0).any()) or bool((triangles >= n_vertices).any()):
            raise ValueError(
                f"MorphableModel.triangles must index vertices 0..{n_vertices - 1}, got values in "
                f"[{int(triangles.min())}, {int(triangles.max())}]."
            )

    # ---- sizes ---------------------------------------------------------------------------

    @property
    def n_vertices(self) -> int:
        """Number of vertices V."""
        return self.mean_shape.shape[0]

    @property
    def n_triangles(self) -> int:
        """Number of triangles F."""
        return self.triangles.shape[0]

    @property
    def n_shape(self) -> int:
        """Number of shape components K_s."""
        return self.shape_basis.shape[0]

    @property
    def n_texture(self) -> int:
        """Number of texture components K_t."""
        return self.texture_basis.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's float tensors."""
        return self.mean_shape.dtype

    @property
    def device(self) -> torch.device:
        """Device of the model's tensors."""
        return self.mean_shape.device

    def __repr__(self) -> str:
        return (
            f"MorphableModel(name={self.name!r}, vertices={self.n_vertices}, "
            f"triangles={self.n_triangles}, shape={self.n_shape}, texture={self.n_texture}, "
            f"dtype={self.dtype}, device={self.device})"
        )

    # ---- evaluation ------------------------------------------------------------------------

    def _coefficients(self, coeffs, size: int, argument: str) -> Tensor:
        if not isinstance(coeffs, Tensor):
            try:
                coeffs = torch.as_tensor(coeffs)
            except (TypeError, ValueError, RuntimeError) as error:
                raise TypeError(
                    f"MorphableModel: {argument} must be a float tensor of shape (..., {size}), "
                    f"got {type(coeffs)}."
                ) from error
        if not coeffs.is_floating_point():
            raise TypeError(
                f"MorphableModel: {argument} must be a floating tensor of shape (..., {size}), got "
                f"dtype {coeffs.dtype}; convert it with .float()."
            )
        if coeffs.ndim == 0 or coeffs.shape[-1] != size:
            raise ValueError(
                f"MorphableModel: {argument} must have shape (..., {size}) (standard-normal "
                f"coefficients, this model has {size} components), got {tuple(coeffs.shape)}."
            )
        return coeffs

    def _copy_for(self, coeffs: Tensor) -> MorphableModel:
        key = (coeffs.device, coeffs.dtype)
        model = self._copies.get(key)
        return model if model is not None else self.to(coeffs.device, coeffs.dtype)

    def vertices(self, shape_coeffs: Tensor) -> Tensor:
        """Vertex positions for standard-normal shape coefficients.

        Args:
            shape_coeffs: ``(..., K_s)`` floating tensor, any leading batch shape, any device.
        Returns:
            ``(..., V, 3)`` tensor of the coefficients' dtype and device:
            ``mean_shape + sum_k shape_coeffs[..., k] * shape_std[k] * shape_basis[k]``.
            Differentiable in ``shape_coeffs``.
        """
        coeffs = self._coefficients(shape_coeffs, self.n_shape, "shape_coeffs")
        model = self._copy_for(coeffs)
        flat = coeffs.reshape(math.prod(coeffs.shape[:-1]), self.n_shape)
        out = torch.addmm(model._shape_offset, flat, model._shape_matrix)
        return out.reshape(*coeffs.shape[:-1], self.n_vertices, 3)

    def albedo(self, texture_coeffs: Tensor) -> Tensor:
        """Per-vertex RGB albedo for standard-normal texture coefficients, clamped to [0, 1].

        Args:
            texture_coeffs: ``(..., K_t)`` floating tensor, any leading batch shape, any device.
        Returns:
            ``(..., V, 3)`` tensor of the coefficients' dtype and device, in ``[0, 1]``. The
            gradient is zero where the clamp is active.
        """
        coeffs = self._coefficients(texture_coeffs, self.n_texture, "texture_coeffs")
        model = self._copy_for(coeffs)
        flat = coeffs.reshape(math.prod(coeffs.shape[:-1]), self.n_texture)
        out = torch.addmm(model._texture_offset, flat, model._texture_matrix).clamp_(0.0, 1.0)
        return out.reshape(*coeffs.shape[:-1], self.n_vertices, 3)

    def to(self, device=None, dtype: torch.dtype | None = None) -> MorphableModel:
        """This model with its tensors on ``device`` (default: unchanged) and its float tensors
        of floating ``dtype`` (default: unchanged); triangles stay int64.

        Copies are made once per (device, dtype) and reused; ``model.to(model.device)`` is
        ``model``.
        """
        if isinstance(device, torch.dtype) and dtype is None:  # model.to(torch.float64)
            device, dtype = None, device
        if device is not None:
            try:  # normalizes "cuda" to "cuda:0", and fails early on an unusable device
                device = torch.empty(0, device=device).device
            except (RuntimeError, AssertionError, TypeError) as error:
                raise ValueError(
                    f"MorphableModel.to: cannot use device {device!r} ({error}); pass an "
                    "available torch device such as 'cpu' or 'cuda'."
                ) from error
        device = self.device if device is None else device
        dtype = self.dtype if dtype is None else dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(
                f"MorphableModel.to: dtype must be a floating torch.dtype, got {dtype}."
            )
        key = (device, dtype)
        model = self._copies.get(key)
        if model is None:
            float_fields = (
                "mean_shape", "shape_basis", "shape_std", "mean_albedo", "texture_basis",
                "texture_std",
            )  # fmt: skip
            changes = {name: getattr(self, name).to(device, dtype) for name in float_fields}
            model = dataclasses.replace(self, triangles=self.triangles.to(device), **changes)
            object.__setattr__(model, "_copies", self._copies)
            self._copies[key] = model
        return model

    # ---- constructors ----------------------------------------------------------------------

    @classmethod
    def synthetic(
        cls, n_shape: int = SYNTHETIC_MAX_COMPONENTS, n_texture: int = SYNTHETIC_MAX_COMPONENTS
    ) -> MorphableModel:
        """The deterministic synthetic face model that ships with the package (float32, CPU).

        A closed head mesh of 1,498 vertices and 2,992 triangles with nose, brows, eye sockets,
        cheeks, lips, chin, jaw and ears, and a skin / hair / lips / brows / eyes albedo. Its
        components are the leading ``n_shape`` shape and ``n_texture`` texture components
        (each 0..200) of one fixed 200-component model; built once per argument pair, in well
        under a second, and cached: repeated calls return the same object.

        Shape standard deviations (RMS vertex displacement) fall from about 0.03 model units
        (head width, height, depth, jaw) to about 2e-4; the largest single-vertex displacement
        at one std falls from about 0.05 to 1e-3. Each component alone at +-3 std, and prior
        samples, keep every triangle facing outward. Texture std falls from about 0.13 (skin and
        hair lightness) to 3e-4.
        """
        for argument, value in (("n_shape", n_shape), ("n_texture", n_texture)):
            if (
                not isinstance(value, int | np.integer)
                or isinstance(value, bool)
                or not 0 <= value <= SYNTHETIC_MAX_COMPONENTS
            ):
                raise ValueError(
                    f"MorphableModel.synthetic: {argument} must be an int in "
                    f"0..{SYNTHETIC_MAX_COMPONENTS}, got {value!r}."
                )
        return _synthetic_cached(int(n_shape), int(n_texture))

    @classmethod
    def from_bfm(
        cls, path: str | os.PathLike, n_shape: int | None = None, n_texture: int | None = None
    ) -> MorphableModel:
        """Read a Basel Face Model HDF5 file (the statismo layout of BFM 2009 / 2017 .h5).

        Datasets read: ``shape/model/mean`` ``(3N,)`` (x, y, z interleaved per point),
        ``shape/model/pcaBasis`` ``(3N, K)``, ``shape/model/pcaVariance`` ``(K,)`` (variances),
        the same three under ``color/model/``, and ``shape/representer/cells`` ``(3, F)`` or
        ``(F, 3)`` (0-based vertex indices).

        Conversion, per component ``k`` with basis column ``b_k`` and variance ``var_k``, reading
        the model as ``mean + sum_k c_k * sqrt(var_k) * b_k``: our basis is ``b_k`` scaled to unit
        RMS (``b_k / |b_k| * sqrt(N)``) and our std is ``sqrt(var_k) * |b_k| / sqrt(N)``, so
        ``std * basis`` (and hence :meth:`vertices`) is unchanged whether the file's columns are
        orthonormal or not. Shapes are centred on the mean shape's bounding-box centre and
        divided by its half-extent (millimetres in BFM 2009, micrometres in 2017), so the mean
        fits in ``[-1, 1]^3``; basis and std scale alike (see ``source_scale`` /
        ``source_offset``). Colours given in 0..255 (mean above 1.5) are divided by 255; the mean
        albedo is clipped to ``[0, 1]``. If most triangles face the centroid, the winding is
        flipped so normals point outward.

        Args:
            path: the ``.h5`` file.
            n_shape, n_texture: leading components to keep (error if the file has fewer);
                ``None`` keeps all the file has, at most 200 (the BFM 2009 and 2017 files have
                199 shape and 199 colour components).
        Returns:
            A float32 CPU :class:`MorphableModel` named after the file.
        Raises:
            ImportError: h5py is not installed. FileNotFoundError: no such file. KeyError: a
            dataset is missing. ValueError: inconsistent sizes, too few components, bad values.
        """
        return _read_bfm(path, n_shape, n_texture)


# --------------------------------------------------------------------------------------------
# Basel Face Model reader
# --------------------------------------------------------------------------------------------


# Components from_bfm keeps when not told: 200, as in seed 000 section 4.1.
_BFM_DEFAULT_COMPONENTS = 200


def _read_bfm(path, n_shape: int | None, n_texture: int | None) -> MorphableModel:
    try:
        import h5py
    except ImportError as error:
        raise ImportError(
            "MorphableModel.from_bfm needs h5py to read a Basel Face Model .h5 file, and it is "
            "not installed; install it with `pip install probgraphics[h5]` (or `pip install h5py`)."
        ) from error
    if not isinstance(path, str | os.PathLike):
        raise TypeError(
            f"MorphableModel.from_bfm: path must be a str or os.PathLike, got {path!r}."
        )
    for argument, value in (("n_shape", n_shape), ("n_texture", n_texture)):
        if value is not None and (
            not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 0
        ):
            raise ValueError(
                f"MorphableModel.from_bfm: {argument} must be None or an int >= 0, got {value!r}."
            )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"MorphableModel.from_bfm: no Basel Face Model file at {str(path)!r}; pass the path "
            "of the model's .h5 file (e.g. model2017-1_bfm_nomouth.h5)."
        )
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(
            f"MorphableModel.from_bfm: {str(path)!r} is not a readable HDF5 file ({error}); "
            "expected a Basel Face Model .h5 file."
        ) from error
    with handle:
        datasets: list[str] = []
        handle.visititems(
            lambda name, item: datasets.append(name) if isinstance(item, h5py.Dataset) else None
        )

        def read(name: str) -> np.ndarray:
            item = handle.get(name)
            if not isinstance(item, h5py.Dataset):
                raise KeyError(
                    f"MorphableModel.from_bfm: {str(path)!r} has no dataset {name!r}, which a "
                    f"Basel Face Model file must have; the file has: {sorted(datasets)}."
                )
            return np.asarray(item[()])

        shape_mean = read("shape/model/mean")
        shape_basis = read("shape/model/pcaBasis")
        shape_variance = read("shape/model/pcaVariance")
        color_mean = read("color/model/mean")
        color_basis = read("color/model/pcaBasis")
        color_variance = read("color/model/pcaVariance")
        cells = read("shape/representer/cells")

    mean = _flat_points(shape_mean, "shape/model/mean", None)
    n_vertices = mean.size // 3
    shape_fields, shape_std = _bfm_components(
        shape_basis, shape_variance, n_vertices, n_shape, "shape"
    )
    albedo_mean = _flat_points(color_mean, "color/model/mean", n_vertices)
    texture_fields, texture_std = _bfm_components(
        color_basis, color_variance, n_vertices, n_texture, "color"
    )
    triangles = _bfm_triangles(cells, n_vertices)

    points = mean.reshape(n_vertices, 3)
    centre = 0.5 * (points.min(axis=0) + points.max(axis=0))
    scale = float(np.abs(points - centre).max())
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(
            "MorphableModel.from_bfm: shape/model/mean has no extent (all points equal or not "
            "finite); expected a face mesh."
        )
    points = (points - centre) / scale
    shape_std = shape_std / scale

    colour_scale = 1.0 / 255.0 if float(albedo_mean.max()) > 1.5 else 1.0
    albedo = np.clip(albedo_mean.reshape(n_vertices, 3) * colour_scale, 0.0, 1.0)
    texture_std = texture_std * colour_scale

    if _faces_inward(points, triangles):
        triangles = triangles[:, [0, 2, 1]]

    def as_tensor(array: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    return MorphableModel(
        mean_shape=as_tensor(points),
        shape_basis=as_tensor(shape_fields),
        shape_std=as_tensor(shape_std),
        mean_albedo=as_tensor(albedo),
        texture_basis=as_tensor(texture_fields),
        texture_std=as_tensor(texture_std),
        triangles=torch.from_numpy(np.ascontiguousarray(triangles, dtype=np.int64)),
        name=f"bfm:{path.name}",
        source_scale=scale,
        source_offset=(float(centre[0]), float(centre[1]), float(centre[2])),
    )


def _flat_points(values: np.ndarray, name: str, n_vertices: int | None) -> np.ndarray:
    """``(3N,)`` float64 from a ``(3N,)`` or ``(N, 3)`` dataset, checked against ``n_vertices``."""
    values = np.asarray(values, dtype=np.float64)
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 3)) or values.size % 3:
        raise ValueError(
            f"MorphableModel.from_bfm: {name} must have shape (3N,) (x, y, z per point) or (N, 3), "
            f"got {values.shape}."
        )
    values = values.reshape(-1)
    if n_vertices is not None and values.size != 3 * n_vertices:
        raise ValueError(
            f"MorphableModel.from_bfm: {name} has {values.size // 3} points but shape/model/mean "
            f"has {n_vertices}; the file's shape and colour models must share one mesh."
        )
    if n_vertices is None and values.size < 9:
        raise ValueError(f"MorphableModel.from_bfm: {name} has fewer than 3 points.")
    if not np.isfinite(values).all():
        raise ValueError(f"MorphableModel.from_bfm: {name} contains NaN or inf.")
    return values


def _bfm_components(
    basis: np.ndarray, variance: np.ndarray, n_vertices: int, n_keep: int | None, model: str
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-RMS fields ``(n_keep, V, 3)`` and std ``(n_keep,)`` from a ``(3V, K)`` basis and its
    ``(K,)`` variances (see :meth:`MorphableModel.from_bfm`)."""
    basis_name, variance_name = f"{model}/model/pcaBasis", f"{model}/model/pcaVariance"
    basis = np.asarray(basis, dtype=np.float64)
    variance = np.asarray(variance, dtype=np.float64).reshape(-1)
    if basis.ndim != 2:
        raise ValueError(
            f"MorphableModel.from_bfm: {basis_name} must be a (3N, K) matrix, got shape "
            f"{basis.shape}."
        )
    if basis.shape[0] != 3 * n_vertices and basis.shape[1] == 3 * n_vertices:
        basis = basis.T  # stored as (K, 3N)
    if basis.shape[0] != 3 * n_vertices:
        raise ValueError(
            f"MorphableModel.from_bfm: {basis_name} has shape {basis.shape} but the mesh has "
            f"{n_vertices} points; expected ({3 * n_vertices}, K)."
        )
    if variance.size != basis.shape[1]:
        raise ValueError(
            f"MorphableModel.from_bfm: {variance_name} has {variance.size} entries but "
            f"{basis_name} has {basis.shape[1]} components; they must match."
        )
    if n_keep is None:
        n_keep = min(basis.shape[1], _BFM_DEFAULT_COMPONENTS)
    if n_keep > basis.shape[1]:
        raise ValueError(
            f"MorphableModel.from_bfm: asked for {n_keep} {model} components but the file has "
            f"only {basis.shape[1]}; pass n_{'shape' if model == 'shape' else 'texture'}="
            f"{basis.shape[1]} or fewer."
        )
    columns, variance = basis[:, :n_keep].T, variance[:n_keep]
    if not (np.isfinite(columns).all() and np.isfinite(variance).all()) or (variance < 0).any():
        raise ValueError(
            f"MorphableModel.from_bfm: {basis_name} / {variance_name} must be finite with "
            "variances >= 0."
        )
    norms = np.linalg.norm(columns, axis=1)
    if (norms == 0).any():
        raise ValueError(
            f"MorphableModel.from_bfm: {basis_name} has all-zero components "
            f"{np.flatnonzero(norms == 0).tolist()}; cannot normalize them."
        )
    root_n = np.sqrt(n_vertices)
    fields = (columns / norms[:, None] * root_n).reshape(n_keep, n_vertices, 3)
    return fields, np.sqrt(variance) * norms / root_n


def _bfm_triangles(cells: np.ndarray, n_vertices: int) -> np.ndarray:
    """``(F, 3)`` int64 triangles from ``(3, F)`` or ``(F, 3)`` cells, index-checked."""
    cells = np.asarray(cells)
    if cells.ndim != 2 or 3 not in cells.shape:
        raise ValueError(
            "MorphableModel.from_bfm: shape/representer/cells must have shape (3, F) or (F, 3), "
            f"got {cells.shape}."
        )
    if not np.issubdtype(cells.dtype, np.integer):
        if not (np.isfinite(cells).all() and (cells == np.round(cells)).all()):
            raise ValueError("MorphableModel.from_bfm: shape/representer/cells must hold integers.")
    # BFM stores (3, F); a square (3, 3) array is read that way too.
    triangles = (cells.T if cells.shape[0] == 3 else cells).astype(np.int64)
    if triangles.min() < 0 or triangles.max() >= n_vertices:
        raise ValueError(
            f"MorphableModel.from_bfm: shape/representer/cells index vertices in "
            f"[{triangles.min()}, {triangles.max()}] but the mesh has {n_vertices} points "
            "(0-based indices expected)."
        )
    return triangles


def _faces_inward(points: np.ndarray, triangles: np.ndarray) -> bool:
    """Whether most triangles' normals point toward the mesh centroid (inward winding)."""
    v0, v1, v2 = (points[triangles[:, i]] for i in range(3))
    normals = np.cross(v1 - v0, v2 - v0)
    outward = (v0 + v1 + v2) / 3.0 - points.mean(axis=0)
    alignment = np.einsum("ij,ij->i", normals, outward)
    return int((alignment < 0).sum()) > int((alignment > 0).sum())
