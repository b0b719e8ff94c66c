"""Batched triangle-mesh rasterizer: weak perspective, z-buffer, Gouraud-shaded Lambertian light.

Conventions (shared by the numba kernel, the torch path and the reference in the tests)
-----------------------------------------------------------------------------------------
Model space
    x right, y up, z toward the viewer. ``vertices`` ``(*S, V, 3)``; ``faces`` ``(F, 3)`` integer
    indices wound counter-clockwise when seen from the front, so a front face's normal
    ``(v1 - v0) x (v2 - v0)`` points toward +z (the camera) after rotation. ``albedo``
    ``(*S, V, C)`` in [0, 1] with C = 1 or 3. ``S`` is any leading batch shape (often ``(B,)``);
    per-scene arguments broadcast against each other.
Camera space
    ``p_cam = rotation @ p`` with ``rotation`` ``(*S, 3, 3)``; :func:`rotation_matrix` builds
    ``R = R_elevation @ R_azimuth``: first the azimuth, a rotation about the y axis where positive
    azimuth turns the face to the viewer's right (the nose at +z moves toward +x), then the
    elevation, a rotation about the x axis where positive elevation turns the face up (the nose
    moves toward +y, the top of the image).
Projection (weak perspective)
    ``x_ndc = scale * x_cam + offset[0]``, ``y_ndc = scale * y_cam + offset[1]``; NDC [-1, 1]
    covers the image. Continuous pixel coordinates: ``col = (x_ndc + 1) / 2 * W``,
    ``row = (1 - y_ndc) / 2 * H`` (row 0 is the top); pixel ``(r, c)`` is sampled at its centre
    ``(r + 0.5, c + 0.5)``. Depth ``d = camera_distance - z_cam``: smaller is nearer, the z-buffer
    keeps the smallest ``d`` (on an exact depth tie the lower face index wins), and a triangle with
    any vertex at ``d <= 0`` (behind the camera) is dropped.
Coverage rule
    A pixel centre is inside a triangle when its three edge functions, oriented to be positive
    inside, are all ``> 0``, or ``== 0`` on a *top-left* edge: an edge whose inward normal
    ``(gx, gy)`` (pixel coordinates, rows downward) has ``gx > 0``, or ``gx == 0`` and ``gy > 0``.
    Each edge function is evaluated from the edge's lexicographically smaller endpoint, so the two
    triangles sharing an edge get exactly negated values: a closed mesh has no holes and no doubly
    drawn pixels along its edges. Zero-area triangles and triangles with any non-finite vertex
    (NaN/inf input, or overflow) are never drawn and never produce NaN.
Back-face culling
    With ``cull_backfaces=True`` a triangle whose screen-space signed area says it faces away
    (clockwise in the y-up NDC plane) is dropped. Without culling, back faces are drawn with their
    own (away-pointing) normals, so a front light leaves them at the ambient level.
Shading (Gouraud, Lambertian)
    Vertex normals come from the camera-space mesh: area-weighted face normals summed per vertex
    and normalized (a vertex with no usable face gets a zero normal, i.e. ambient only).
    ``light_direction`` ``(*S, 3)`` is the direction from the surface toward the light, in camera
    space, used as given (pass a unit vector). Vertex colour =
    ``albedo * (ambient + diffuse * max(0, n . l))`` (not clamped), interpolated across the
    triangle with screen-space barycentric weights (exact for weak perspective). Background pixels
    get ``background``. Non-finite camera parameters (rotation, scale, offset) drop every
    triangle; NaN in albedo, light or shading coefficients reaches the pixels that use them.
Soft silhouettes (``silhouette_blur > 0``)
    The hard rasterizer's image is piecewise constant in the mesh's position: a pixel flips
    between face and background when an edge crosses its centre, and such flips carry no
    gradient. With ``silhouette_blur = b`` pixels, each uncovered pixel within ``4 b`` of a
    drawable triangle (front-facing when culling) is composited as
    ``alpha * halo_colour + (1 - alpha) * background``, where ``alpha = 1 - prod_t (1 - s_t)``
    over those triangles, ``s_t`` is a Gaussian of the pixel's distance to triangle ``t`` (width
    ``b``, shifted to reach 0 at ``4 b``) times a fade-in over the triangle's first ``b^2 / 2``
    square pixels of projected area (so a triangle turning edge-on fades instead of vanishing),
    and ``halo_colour`` is the ``s_t``-weighted Gouraud colour at each triangle's nearest point.
    At the outline ``alpha = 1`` and the colour is the edge's own, so pixel values are continuous
    across it and change continuously as the mesh moves, except where the mesh occludes itself.
    Covered pixels and ``face_ids`` are exactly the hard render's. The halo is computed by torch
    (after either backend), differentiably (after DIB-R, Chen et al. 2019).

Backends
--------
``"numba"``: a CPU kernel, one ``prange`` iteration per scene, float32 only, no gradients.
``"torch"``: any device, float32 or float64, differentiable with respect to vertices, albedo,
rotation, scale, offset, light, ambient, diffuse and background. Visibility (which triangle covers
a pixel) is piecewise constant and carries no gradient: derivatives flow through the barycentric
weights, the normals and the shading of the visible triangle, not through occlusion boundaries.
``"auto"``: numba when every tensor is a float32 CPU tensor and none requires grad, else torch.
In float32 the two backends evaluate the same expressions in the same order, so they agree on
coverage and depth order bit for bit on CPU.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd import forward_ad

from probgraphics.render import _torch_raster

__all__ = ["RenderOutput", "render_mesh", "rotation_matrix", "vertex_normals"]

_BACKENDS = ("auto", "numba", "torch")


class RenderOutput(NamedTuple):
    """What :func:`render_mesh` returns.

    Attributes:
        image: ``(*S, C, H, W)`` float (the inputs' dtype), on the inputs' device.
        face_ids: ``(*S, H, W)`` int64, index into ``faces`` of the visible triangle at each
            pixel, ``-1`` for background.
    """

    image: Tensor
    face_ids: Tensor


def rotation_matrix(azimuth: Tensor | float, elevation: Tensor | float) -> Tensor:
    """Model-to-camera rotation ``R = R_elevation @ R_azimuth`` for angles in radians.

    Azimuth rotates about the y axis, positive turning the face to the viewer's right (+z goes
    toward +x); elevation then rotates about the x axis, positive turning the face up (+z goes
    toward +y).

    Args:
        azimuth, elevation: floats or tensors (any shapes that broadcast), radians.

    Returns:
        ``(*batch, 3, 3)`` tensor, ``batch`` the broadcast shape of the two angles; dtype and
        device of the tensor argument(s) (float32 on CPU when both are Python numbers).
    """
    azimuth, elevation = _angles_as_tensors(azimuth, elevation)
    azimuth, elevation = torch.broadcast_tensors(azimuth, elevation)
    ca, sa = torch.cos(azimuth), torch.sin(azimuth)
    ce, se = torch.cos(elevation), torch.sin(elevation)
    zero = torch.zeros_like(ca)
    rows = [
        torch.stack([ca, zero, sa], dim=-1),
        torch.stack([-se * sa, ce, se * ca], dim=-1),
        torch.stack([-ce * sa, -se, ce * ca], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def _angles_as_tensors(azimuth, elevation) -> tuple[Tensor, Tensor]:
    template = next((a for a in (azimuth, elevation) if isinstance(a, Tensor)), None)
    out = []
    for name, angle in (("azimuth", azimuth), ("elevation", elevation)):
        if isinstance(angle, Tensor):
            if not angle.is_floating_point():
                raise TypeError(
                    f"rotation_matrix: {name} must be a floating tensor (radians), got dtype "
                    f"{angle.dtype}; convert with .float()."
                )
            out.append(angle)
        elif isinstance(angle, int | float) and not isinstance(angle, bool):
            if template is None:
                out.append(torch.tensor(float(angle), dtype=torch.float32))
            else:
                out.append(torch.tensor(float(angle), dtype=template.dtype, device=template.device))
        else:
            raise TypeError(
                f"rotation_matrix: {name} must be a float or a tensor of angles in radians, "
                f"got {type(angle).__name__}."
            )
    if out[0].device != out[1].device:
        raise ValueError(
            f"rotation_matrix: azimuth is on {out[0].device} but elevation on {out[1].device}; "
            "put both on one device."
        )
    dtype = torch.promote_types(out[0].dtype, out[1].dtype)
    return out[0].to(dtype), out[1].to(dtype)


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Unit vertex normals: area-weighted face normals summed per vertex, then normalized.

    Faces with a non-finite vertex contribute nothing; a vertex with no usable face gets a zero
    vector. Differentiable.

    Args:
        vertices: ``(*S, V, 3)`` float tensor (any device).
        faces: ``(F, 3)`` integer tensor of vertex indices on the same device, counter-clockwise
            seen from the side the normal should point to.

    Returns:
        ``(*S, V, 3)`` tensor, vertices' dtype and device.
    """
    _check_tensor("vertex_normals", "vertices", vertices)
    if vertices.dim() < 2 or vertices.shape[-1] != 3:
        raise ValueError(
            f"vertex_normals: vertices must have shape (..., V, 3), got {tuple(vertices.shape)}."
        )
    if not vertices.is_floating_point():
        raise TypeError(
            f"vertex_normals: vertices must be a floating tensor, got {vertices.dtype}."
        )
    faces = _check_faces("vertex_normals", faces, vertices.shape[-2], vertices.device)
    batch = vertices.shape[:-2]
    flat = vertices.reshape(-1, *vertices.shape[-2:])
    finite = torch.isfinite(flat).all(-1)
    safe = torch.where(finite[..., None], flat, torch.zeros((), dtype=flat.dtype))
    normals = _torch_raster.vertex_normals(safe, finite, faces)
    return normals.reshape(*batch, *vertices.shape[-2:])


def render_mesh(
    vertices: Tensor,
    faces: Tensor,
    albedo: Tensor,
    *,
    rotation: Tensor,
    scale: Tensor | float,
    offset: Tensor,
    light_direction: Tensor,
    ambient: Tensor | float = 0.35,
    diffuse: Tensor | float = 0.65,
    image_size: tuple[int, int] | int = (64, 64),
    background: Tensor | float = 0.0,
    camera_distance: float = 10.0,
    cull_backfaces: bool = True,
    backend: str = "auto",
    silhouette_blur: float = 0.0,
) -> RenderOutput:
    """Rasterize a batch of triangle meshes (conventions in the module docstring).

    Args:
        vertices: ``(*S, V, 3)`` float32 (float64 for the torch backend) model-space positions.
        faces: ``(F, 3)`` int64 (any integer dtype) vertex indices in ``[0, V)``, shared by all
            scenes, counter-clockwise from the front.
        albedo: ``(*S, V, C)`` per-vertex albedo in [0, 1], C = 1 or 3.
        rotation: ``(*S, 3, 3)`` model-to-camera rotation (see :func:`rotation_matrix`).
        scale: float or ``(*S,)`` weak-perspective scale (model units to NDC).
        offset: ``(*S, 2)`` NDC offset (x, y).
        light_direction: ``(*S, 3)`` unit direction toward the light, camera space.
        ambient, diffuse: floats or ``(*S,)`` tensors, the shading coefficients.
        image_size: ``(H, W)`` positive ints, or one int for a square image.
        background: float, or tensor ``(C,)`` or ``(*S, C)``: the colour of uncovered pixels.
        camera_distance: positive float; depth is ``camera_distance - z_cam``.
        cull_backfaces: drop triangles facing away from the camera.
        backend: ``"auto"``, ``"numba"`` (CPU, float32, no gradients) or ``"torch"``.
        silhouette_blur: float >= 0, in pixels. 0 (the default): the hard rasterizer. Above 0,
            uncovered pixels near the mesh take a halo of width about ``silhouette_blur``
            (see "Soft silhouettes" in the module docstring); covered pixels and ``face_ids``
            are unchanged.

    All tensors must be on one device and share one floating dtype; the leading batch shapes
    ``S`` of the per-scene arguments broadcast.

    Returns:
        :class:`RenderOutput` with ``image`` ``(*S, C, H, W)`` and ``face_ids`` ``(*S, H, W)``
        int64 (``-1`` where no triangle is visible), on the inputs' device.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"render_mesh: backend must be one of {_BACKENDS}, got {backend!r}.")
    height, width = _check_image_size(image_size)
    if isinstance(camera_distance, bool) or not isinstance(camera_distance, int | float):
        raise TypeError(
            "render_mesh: camera_distance must be a positive float, got "
            f"{type(camera_distance).__name__}."
        )
    if not (math.isfinite(camera_distance) and camera_distance > 0):
        raise ValueError(
            f"render_mesh: camera_distance must be positive and finite, got {camera_distance}."
        )
    if not isinstance(cull_backfaces, bool):
        raise TypeError(
            f"render_mesh: cull_backfaces must be True or False, got {cull_backfaces!r}."
        )
    silhouette_blur = check_silhouette_blur("render_mesh", silhouette_blur)

    for name, value in (
        ("vertices", vertices),
        ("albedo", albedo),
        ("rotation", rotation),
        ("offset", offset),
        ("light_direction", light_direction),
    ):
        _check_tensor("render_mesh", name, value)
    if not vertices.is_floating_point() or vertices.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"render_mesh: vertices must be float32 (or float64 with backend='torch'), got "
            f"{vertices.dtype}; convert with .float()."
        )
    dtype, device = vertices.dtype, vertices.device
    _check_trailing("vertices", vertices, (None, 3), "(..., V, 3)")
    n_vertices = vertices.shape[-2]
    _check_trailing("albedo", albedo, (n_vertices, None), f"(..., V={n_vertices}, C)")
    channels = albedo.shape[-1]
    if channels not in (1, 3):
        raise ValueError(
            f"render_mesh: albedo must have C = 1 or 3 channels in its last dimension, got "
            f"shape {tuple(albedo.shape)}."
        )
    _check_trailing("rotation", rotation, (3, 3), "(..., 3, 3)")
    _check_trailing("offset", offset, (2,), "(..., 2)")
    _check_trailing("light_direction", light_direction, (3,), "(..., 3)")
    faces = _check_faces("render_mesh", faces, n_vertices, device)

    scale_t = _per_scene_scalar("scale", scale, dtype, device)
    ambient_t = _per_scene_scalar("ambient", ambient, dtype, device)
    diffuse_t = _per_scene_scalar("diffuse", diffuse, dtype, device)
    background_t = _background(background, channels, dtype, device)

    floating = {
        "vertices": vertices,
        "albedo": albedo,
        "rotation": rotation,
        "offset": offset,
        "light_direction": light_direction,
        "scale": scale_t,
        "ambient": ambient_t,
        "diffuse": diffuse_t,
        "background": background_t,
    }
    for name, value in floating.items():
        if value.device != device:
            raise ValueError(
                f"render_mesh: {name} is on {value.device} but vertices on {device}; move all "
                "inputs to one device."
            )
        if value.dtype != dtype:
            raise TypeError(
                f"render_mesh: {name} has dtype {value.dtype} but vertices {dtype}; all floating "
                "inputs must share one dtype (float32, or float64 for the torch backend)."
            )

    event_dims = {
        "vertices": 2,
        "albedo": 2,
        "rotation": 2,
        "offset": 1,
        "light_direction": 1,
        "scale": 0,
        "ambient": 0,
        "diffuse": 0,
        "background": 1,
    }
    batch_shapes = {
        name: floating[name].shape[: floating[name].dim() - k] for name, k in event_dims.items()
    }
    try:
        batch = torch.broadcast_shapes(*batch_shapes.values())
    except RuntimeError:
        described = ", ".join(f"{name} {tuple(shape)}" for name, shape in batch_shapes.items())
        raise ValueError(
            "render_mesh: the leading (per-scene) batch shapes do not broadcast: "
            f"{described}. Give every per-scene argument the same leading shape (e.g. (B,))."
        ) from None
    n_scenes = math.prod(batch)

    def flat(value: Tensor, event_dim: int) -> Tensor:
        event = value.shape[value.dim() - event_dim :]
        return value.expand(*batch, *event).reshape(n_scenes, *event)

    args = {name: flat(value, event_dims[name]) for name, value in floating.items()}

    needs_grad = torch.is_grad_enabled() and any(v.requires_grad for v in floating.values())
    # Forward-mode AD (torch.func.jvp, forward_ad.make_dual) carries tangents without
    # requires_grad; the numba kernel would drop them silently.
    needs_grad = needs_grad or any(_has_tangent(v) for v in floating.values())
    if backend == "auto":
        use_numba = device.type == "cpu" and dtype == torch.float32 and not needs_grad
    elif backend == "numba":
        if device.type != "cpu":
            raise ValueError(
                f"render_mesh: backend='numba' runs on CPU tensors, got tensors on {device}; use "
                "backend='torch' (or 'auto') for other devices."
            )
        if dtype != torch.float32:
            raise TypeError(
                f"render_mesh: backend='numba' needs float32 inputs, got {dtype}; convert with "
                ".float() or use backend='torch'."
            )
        if needs_grad:
            raise ValueError(
                "render_mesh: backend='numba' cannot propagate gradients but an input requires "
                "grad (or carries a forward-mode tangent); use backend='torch' (or 'auto'), or "
                "detach the inputs."
            )
        use_numba = True
    else:
        use_numba = False

    common = dict(
        faces=faces,
        height=height,
        width=width,
        camera_distance=float(camera_distance),
        cull_backfaces=cull_backfaces,
        silhouette_blur=silhouette_blur,
    )
    if use_numba:
        from probgraphics.render import _numba_raster

        image, face_ids = _numba_raster.render(**args, **common)
    else:
        image, face_ids = _torch_raster.render(**args, **common)
    return RenderOutput(
        image=image.reshape(*batch, channels, height, width),
        face_ids=face_ids.reshape(*batch, height, width),
    )


# -- validation helpers -------------------------------------------------------------------------


def _has_tangent(value: Tensor) -> bool:
    """Whether ``value`` is a forward-mode AD dual tensor."""
    return forward_ad.unpack_dual(value).tangent is not None


def check_silhouette_blur(function: str, value) -> float:
    """``value`` as a float >= 0 (pixels), or a TypeError/ValueError naming ``function``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"{function}: silhouette_blur must be a float >= 0 (pixels), got "
            f"{type(value).__name__}."
        )
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(
            f"{function}: silhouette_blur must be finite and >= 0 (pixels; 0 for hard edges), "
            f"got {value}."
        )
    return float(value)


def _check_tensor(function: str, name: str, value) -> None:
    if not isinstance(value, Tensor):
        raise TypeError(
            f"{function}: {name} must be a torch.Tensor, got {type(value).__name__}; wrap it "
            "with torch.as_tensor(...)."
        )


def _check_trailing(name: str, value: Tensor, trailing: tuple, expected: str) -> None:
    shape = tuple(value.shape)
    ok = len(shape) >= len(trailing) and all(
        want is None or got == want
        for got, want in zip(shape[len(shape) - len(trailing) :], trailing)
    )
    if not ok:
        raise ValueError(f"render_mesh: {name} must have shape {expected}, got {shape}.")


def _check_faces(function: str, faces, n_vertices: int, device: torch.device) -> Tensor:
    _check_tensor(function, "faces", faces)
    if faces.is_floating_point() or faces.is_complex() or faces.dtype == torch.bool:
        raise TypeError(
            f"{function}: faces must be an integer tensor of vertex indices, got dtype "
            f"{faces.dtype}; convert with .long()."
        )
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(
            f"{function}: faces must have shape (F, 3), got {tuple(faces.shape)}; one row of "
            "three vertex indices per triangle, shared by all scenes."
        )
    if faces.device != device:
        raise ValueError(
            f"{function}: faces is on {faces.device} but vertices on {device}; move both to one "
            "device."
        )
    faces = faces.to(torch.int64)
    if faces.numel():
        low, high = int(faces.min()), int(faces.max())
        if low < 0 or high >= n_vertices:
            raise ValueError(
                f"{function}: faces must index vertices in [0, {n_vertices}), got indices in "
                f"[{low}, {high}]."
            )
    return faces.contiguous()


def _check_image_size(image_size) -> tuple[int, int]:
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)
    try:
        height, width = image_size
    except (TypeError, ValueError):
        raise TypeError(
            f"render_mesh: image_size must be (H, W) or an int, got {image_size!r}."
        ) from None
    for value in (height, width):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"render_mesh: image_size must hold Python ints, got {image_size!r}.")
        if value < 1:
            raise ValueError(f"render_mesh: image_size must be positive, got {image_size!r}.")
    return height, width


def _per_scene_scalar(name: str, value, dtype: torch.dtype, device: torch.device) -> Tensor:
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise TypeError(
                f"render_mesh: {name} must be a float or a floating tensor of shape (*S,), got "
                f"dtype {value.dtype}."
            )
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=dtype, device=device)
    raise TypeError(
        f"render_mesh: {name} must be a float or a tensor of shape (*S,), got "
        f"{type(value).__name__}."
    )


def _background(value, channels: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return torch.full((channels,), float(value), dtype=dtype, device=device)
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise TypeError(
            "render_mesh: background must be a float or a floating tensor of shape (C,) or "
            f"(*S, C), got {value!r:.80}."
        )
    if value.dim() == 0:
        return value.expand(channels)
    if value.shape[-1] != channels:
        raise ValueError(
            f"render_mesh: background must have shape (C,) or (*S, C) with C = {channels} (the "
            f"albedo's channels), got {tuple(value.shape)}."
        )
    return value
