"""The torch rasterizer: any device, batched over scenes, differentiable away from visibility.

Two stages (conventions in :mod:`probgraphics.render.mesh`):

1. **Visibility, without gradients.** Every drawable triangle's bounding box (clipped to the
   image) is expanded into candidate pixels, in buckets of similar box size and in chunks of at
   most ``_CANDIDATE_BUDGET`` pixels, so one full-screen triangle and thousands of one-pixel ones
   both stay within bounded memory. Covered candidates are reduced per pixel with
   ``scatter_reduce(amin)``: for float32 on a key packing the depth's bits (positive floats sort
   like their bit patterns) above the face index, so one pass keeps the nearest triangle and, on a
   depth tie, the lower index; for float64 in two passes (depth, then face index).
2. **Image, with autograd.** For each covered pixel the barycentric weights in its visible
   triangle are recomputed from the projected vertices, and the Gouraud-shaded vertex colours are
   interpolated. Gradients reach vertices (through barycentrics, normals and shading), albedo,
   rotation, scale, offset, light, ambient, diffuse and background; not through which triangle is
   visible.

In float32 the coverage and depth expressions are the numba kernel's, operation for operation, so
the two backends agree on face ids exactly on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "render",
    "HaloPairs",
    "halo_pairs",
    "silhouette_halo",
    "vertex_normals",
    "edge_coefficients",
    "box_candidates",
    "triangle_boxes",
    "triangle_edges",
]

# Candidate pixels per chunk: bounds the memory of the visibility pass (about 20 tensors of this
# many elements are alive at once, ~20 MB in float32).
_CANDIDATE_BUDGET = 1 << 18
_INT64_MAX = torch.iinfo(torch.int64).max


def camera_transform(
    vertices: Tensor,
    rotation: Tensor,
    scale: Tensor,
    offset: Tensor,
    height: int,
    width: int,
    camera_distance: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Camera-space positions and screen coordinates.

    Args:
        vertices: ``(B, V, 3)`` float. rotation ``(B, 3, 3)``, scale ``(B,)``, offset ``(B, 2)``.

    Returns:
        ``camera`` ``(B, V, 3)`` (non-finite input vertices replaced by 0 so that gradients stay
        finite), ``screen_x`` and ``screen_y`` ``(B, V)`` continuous pixel coordinates (column,
        row), ``depth`` ``(B, V)``, ``camera_finite`` ``(B, V)`` bool (usable for normals),
        ``drawable`` ``(B, V)`` bool (finite on screen and in front of the camera).
    """
    finite_input = torch.isfinite(vertices).all(-1)
    safe = torch.where(
        finite_input[..., None],
        vertices,
        torch.zeros((), dtype=vertices.dtype, device=vertices.device),
    )
    x, y, z = safe.unbind(-1)
    # Written out (not a matmul) so that float32 rounding matches the numba kernel exactly.
    r = rotation[..., None]
    x_cam = r[:, 0, 0] * x + r[:, 0, 1] * y + r[:, 0, 2] * z
    y_cam = r[:, 1, 0] * x + r[:, 1, 1] * y + r[:, 1, 2] * z
    z_cam = r[:, 2, 0] * x + r[:, 2, 1] * y + r[:, 2, 2] * z
    s = scale[:, None]
    screen_x = (s * x_cam + offset[:, 0, None] + 1.0) * 0.5 * width
    screen_y = (1.0 - (s * y_cam + offset[:, 1, None])) * 0.5 * height
    depth = camera_distance - z_cam
    camera = torch.stack([x_cam, y_cam, z_cam], dim=-1)
    camera_finite = finite_input & torch.isfinite(camera).all(-1)
    drawable = (
        camera_finite
        & torch.isfinite(screen_x)
        & torch.isfinite(screen_y)
        & torch.isfinite(depth)
        & (depth > 0)
    )
    return camera, screen_x, screen_y, depth, camera_finite, drawable


def vertex_normals(camera: Tensor, camera_finite: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted, normalized vertex normals.

    Args:
        camera: ``(B, V, 3)`` finite float positions. camera_finite: ``(B, V)`` bool, which
            positions are real (faces touching another vertex are skipped). faces: ``(F, 3)``
            int64.

    Returns:
        ``(B, V, 3)`` unit normals (zero where no usable face touches the vertex).
    """
    a = camera[:, faces[:, 0]]
    b = camera[:, faces[:, 1]]
    c = camera[:, faces[:, 2]]
    face_normal = torch.linalg.cross(b - a, c - a, dim=-1)  # length = 2 * area: area weighting
    usable = (
        camera_finite[:, faces[:, 0]]
        & camera_finite[:, faces[:, 1]]
        & camera_finite[:, faces[:, 2]]
        & torch.isfinite(face_normal).all(-1)
    )
    face_normal = torch.where(usable[..., None], face_normal, torch.zeros_like(face_normal))
    summed = torch.zeros_like(camera)
    for k in range(3):
        summed = summed.index_add(1, faces[:, k], face_normal)
    length = torch.linalg.vector_norm(summed, dim=-1, keepdim=True)
    ok = (length > 0) & torch.isfinite(length)
    # Dividing by a safe length keeps the zero-normal branch's gradient finite.
    safe_length = torch.where(ok, length, torch.ones_like(length))
    return torch.where(ok, summed / safe_length, torch.zeros_like(summed))


def edge_coefficients(
    start_x: Tensor, start_y: Tensor, end_x: Tensor, end_y: Tensor, sign: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One edge's function ``w(p) = gx * (p_x - ox) + gy * (p_y - oy)``, positive inside.

    The origin ``(ox, oy)`` is the lexicographically smaller endpoint, so two triangles sharing
    the edge compute exactly negated values. ``sign`` (+1 or -1) orients the triangle.

    Returns:
        ``ox, oy, gx, gy`` and ``top_left`` (bool): the edge's tie rule.
    """
    start_first = (start_x < end_x) | ((start_x == end_x) & (start_y <= end_y))
    ox = torch.where(start_first, start_x, end_x)
    oy = torch.where(start_first, start_y, end_y)
    tx = torch.where(start_first, end_x, start_x)
    ty = torch.where(start_first, end_y, start_y)
    m = torch.where(start_first, sign, -sign)
    gx = -(m * (ty - oy))
    gy = m * (tx - ox)
    top_left = (gx > 0) | ((gx == 0) & (gy > 0))
    return ox, oy, gx, gy, top_left


def triangle_boxes(
    ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor, cx: Tensor, cy: Tensor, height: int, width: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Twice the signed area of each triangle and the pixels its bounding box covers.

    Args:
        ax, ay, bx, by, cx, cy: corner coordinates (column, row) in continuous pixel units, any
            one shape, one floating dtype.
        height, width: the pixel grid; pixel ``(row, col)`` has its centre at
            ``(col + 0.5, row + 0.5)``.

    Returns:
        ``area2`` (floating), ``row_min, row_max, col_min, col_max`` (int64, inclusive bounds
        of the pixel centres inside the box, clipped to the grid) and ``usable`` (bool: the area
        is finite and non-zero and the clipped box is not empty), all of the corners' shape.
    """
    area2 = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    # Clamping before rounding keeps huge finite coordinates from overflowing the integer cast.
    x_low = torch.minimum(torch.minimum(ax, bx), cx) - 0.5
    x_high = torch.maximum(torch.maximum(ax, bx), cx) - 0.5
    y_low = torch.minimum(torch.minimum(ay, by), cy) - 0.5
    y_high = torch.maximum(torch.maximum(ay, by), cy) - 0.5
    col_min = torch.ceil(x_low.clamp(0, width)).long()
    col_max = torch.floor(x_high.clamp(-1, width - 1)).long()
    row_min = torch.ceil(y_low.clamp(0, height)).long()
    row_max = torch.floor(y_high.clamp(-1, height - 1)).long()
    usable = (area2 != 0) & torch.isfinite(area2)
    usable &= (col_min <= col_max) & (row_min <= row_max)
    return area2, row_min, row_max, col_min, col_max, usable


def triangle_edges(
    ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor, cx: Tensor, cy: Tensor, area2: Tensor
) -> tuple[list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]], Tensor]:
    """The three edge functions of each triangle and ``1 / |area2|``.

    Args:
        ax, ay, bx, by, cx, cy: ``(N,)`` corner coordinates; area2: ``(N,)`` twice the signed
            area (non-zero), as :func:`triangle_boxes` gives it.

    Returns:
        ``edges``: three :func:`edge_coefficients` tuples, the k-th for the edge opposite corner
        k (a, b, c), so its value at a point over ``|area2|`` is that corner's barycentric
        weight; and ``inverse_area`` ``(N,)``.
    """
    sign = torch.where(area2 > 0, torch.ones_like(area2), -torch.ones_like(area2))
    inverse_area = 1.0 / (sign * area2)
    edges = [
        edge_coefficients(bx, by, cx, cy, sign),
        edge_coefficients(cx, cy, ax, ay, sign),
        edge_coefficients(ax, ay, bx, by, sign),
    ]
    return edges, inverse_area


def box_candidates(
    row_min: Tensor, row_max: Tensor, col_min: Tensor, col_max: Tensor
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Enumerate every integer pixel in each of N boxes, in bounded chunks.

    Args:
        row_min, row_max, col_min, col_max: ``(N,)`` int64 inclusive bounds, non-empty boxes.

    Yields:
        ``(box, row, col)``: ``(M,)`` int64 tensors, box index and pixel, ``M`` at most about
        ``_CANDIDATE_BUDGET``. Boxes are bucketed by their longer side rounded up to a power of
        two, so a bucket's padding wastes at most 4x.
    """
    if row_min.numel() == 0:
        return
    side = torch.maximum(row_max - row_min, col_max - col_min) + 1
    largest = int(side.max())
    k = 1
    while True:
        in_bucket = (side <= k) & (side > k // 2)
        boxes = in_bucket.nonzero().squeeze(1)
        if boxes.numel():
            steps = torch.arange(k, device=row_min.device)
            per_chunk = max(1, _CANDIDATE_BUDGET // (k * k))
            for start in range(0, boxes.numel(), per_chunk):
                chunk = boxes[start : start + per_chunk]
                rows = row_min[chunk, None, None] + steps[None, :, None]
                cols = col_min[chunk, None, None] + steps[None, None, :]
                inside = (rows <= row_max[chunk, None, None]) & (cols <= col_max[chunk, None, None])
                which, dr, dc = inside.nonzero(as_tuple=True)
                # index_select: much faster than advanced indexing on CPU.
                box = chunk.index_select(0, which)
                yield box, row_min.index_select(0, box) + dr, col_min.index_select(0, box) + dc
        if k >= largest:
            break
        k *= 2


def _visible_faces(
    screen_x: Tensor,
    screen_y: Tensor,
    depth: Tensor,
    drawable: Tensor,
    faces: Tensor,
    height: int,
    width: int,
    cull_backfaces: bool,
) -> Tensor:
    """Face ids ``(B, H, W)`` int64 (-1 background) by a chunked z-buffer; no gradients."""
    n_scenes = screen_x.shape[0]
    device = screen_x.device
    ia, ib, ic = faces.unbind(1)
    ax, ay, da = screen_x[:, ia], screen_y[:, ia], depth[:, ia]
    bx, by, db = screen_x[:, ib], screen_y[:, ib], depth[:, ib]
    cx, cy, dc = screen_x[:, ic], screen_y[:, ic], depth[:, ic]
    area2, row_min, row_max, col_min, col_max, keep = triangle_boxes(
        ax, ay, bx, by, cx, cy, height, width
    )
    keep &= drawable[:, ia] & drawable[:, ib] & drawable[:, ic]
    if cull_backfaces:
        # Rows grow downward, so a front (counter-clockwise in y-up) face has negative area here.
        keep &= area2 < 0

    scene, face = keep.nonzero(as_tuple=True)
    n_pixels = n_scenes * height * width
    if scene.numel() == 0:
        return torch.full((n_scenes, height, width), -1, dtype=torch.int64, device=device)

    def pick(t: Tensor) -> Tensor:
        return t[scene, face]

    ax, ay, bx, by, cx, cy = (pick(t) for t in (ax, ay, bx, by, cx, cy))
    edges, inverse_area = triangle_edges(ax, ay, bx, by, cx, cy, pick(area2))
    params = torch.stack(
        [t for edge in edges for t in edge[:4]] + [inverse_area, pick(da), pick(db), pick(dc)],
        dim=1,
    )
    top_left = torch.stack([edge[4] for edge in edges], dim=1)
    base_pixel = scene * (height * width)

    def covered() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """(flat pixel, depth, triangle) of every covered candidate, chunk by chunk."""
        for tri, row, col in box_candidates(
            pick(row_min), pick(row_max), pick(col_min), pick(col_max)
        ):
            p = params[tri]
            tl = top_left[tri]
            px = col.to(p.dtype) + 0.5
            py = row.to(p.dtype) + 0.5
            inside = torch.ones_like(px, dtype=torch.bool)
            weights = []
            for k in range(3):
                ox, oy, gx, gy = p[:, 4 * k], p[:, 4 * k + 1], p[:, 4 * k + 2], p[:, 4 * k + 3]
                w = gx * (px - ox) + gy * (py - oy)
                inside &= (w > 0) | ((w == 0) & tl[:, k])
                weights.append(w)
            inverse_area, d0, d1, d2 = p[:, 12], p[:, 13], p[:, 14], p[:, 15]
            l0 = weights[0] * inverse_area
            l1 = weights[1] * inverse_area
            l2 = weights[2] * inverse_area
            z = l0 * d0 + l1 * d1 + l2 * d2
            pixel = base_pixel[tri] + row * width + col
            yield pixel[inside], z[inside], tri[inside]

    face_of = face
    if params.dtype == torch.float32:
        best = torch.full((n_pixels,), _INT64_MAX, dtype=torch.int64, device=device)
        for pixel, z, tri in covered():
            # Depths are >= 0 so their int32 bit patterns sort like the depths.
            bits = z.clamp_min(0).view(torch.int32).to(torch.int64)
            best.scatter_reduce_(0, pixel, (bits << 32) | face_of[tri], reduce="amin")
        ids = torch.where(best == _INT64_MAX, -1, best & 0xFFFFFFFF)
    else:
        nearest = torch.full((n_pixels,), torch.inf, dtype=params.dtype, device=device)
        for pixel, z, _ in covered():
            nearest.scatter_reduce_(0, pixel, z, reduce="amin")
        best = torch.full((n_pixels,), _INT64_MAX, dtype=torch.int64, device=device)
        for pixel, z, tri in covered():
            winner = z == nearest[pixel]
            best.scatter_reduce_(0, pixel[winner], face_of[tri[winner]], reduce="amin")
        ids = torch.where(best == _INT64_MAX, -1, best)
    return ids.reshape(n_scenes, height, width)


def barycentric_weights(
    corner_x: Tensor, corner_y: Tensor, row: Tensor, col: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Barycentric weights ``(l0, l1, l2)``, each ``(N,)``, of the pixel centres ``(col + 0.5,
    row + 0.5)`` (``(N,)`` integer) in triangles whose screen corners are ``corner_x``,
    ``corner_y`` ``(N, 3)`` float (the dtype of the weights)."""
    ax, bx, cx = corner_x.unbind(-1)
    ay, by, cy = corner_y.unbind(-1)
    px = col.to(corner_x.dtype) + 0.5
    py = row.to(corner_x.dtype) + 0.5
    # Signed areas: their ratios are the barycentric weights (the sign cancels).
    area2 = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    l0 = ((cx - bx) * (py - by) - (cy - by) * (px - bx)) / area2
    l1 = ((ax - cx) * (py - cy) - (ay - cy) * (px - cx)) / area2
    l2 = ((bx - ax) * (py - ay) - (by - ay) * (px - ax)) / area2
    return l0, l1, l2


def render(
    *,
    vertices: Tensor,
    faces: Tensor,
    albedo: Tensor,
    rotation: Tensor,
    scale: Tensor,
    offset: Tensor,
    light_direction: Tensor,
    ambient: Tensor,
    diffuse: Tensor,
    background: Tensor,
    height: int,
    width: int,
    camera_distance: float,
    cull_backfaces: bool,
    silhouette_blur: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Render validated, flattened inputs (see ``render_mesh``); with ``silhouette_blur > 0``
    soften the silhouette (:func:`silhouette_halo`).

    Args:
        vertices ``(B, V, 3)``, albedo ``(B, V, C)``, rotation ``(B, 3, 3)``, scale ``(B,)``,
        offset ``(B, 2)``, light_direction ``(B, 3)``, ambient ``(B,)``, diffuse ``(B,)``,
        background ``(B, C)``: one floating dtype, one device. faces ``(F, 3)`` int64 in range.

    Returns:
        image ``(B, C, H, W)`` (differentiable), face ids ``(B, H, W)`` int64.
    """
    n_scenes, _, channels = albedo.shape
    camera, screen_x, screen_y, depth, camera_finite, drawable = camera_transform(
        vertices, rotation, scale, offset, height, width, camera_distance
    )
    with torch.no_grad():
        face_ids = _visible_faces(
            screen_x.detach(),
            screen_y.detach(),
            depth.detach(),
            drawable,
            faces,
            height,
            width,
            cull_backfaces,
        )

    normals = vertex_normals(camera, camera_finite, faces)
    cosine = (normals * light_direction[:, None, :]).sum(-1).clamp_min(0)
    shade = ambient[:, None] + diffuse[:, None] * cosine
    colour = albedo * shade[..., None]  # (B, V, C)

    scene, row, col = (face_ids >= 0).nonzero(as_tuple=True)
    triangle = faces[face_ids[scene, row, col]]  # (N, 3)
    l0, l1, l2 = barycentric_weights(
        screen_x[scene[:, None], triangle], screen_y[scene[:, None], triangle], row, col
    )
    vertex_colour = colour[scene[:, None], triangle]  # (N, 3, C)
    pixel_colour = (
        l0[:, None] * vertex_colour[:, 0]
        + l1[:, None] * vertex_colour[:, 1]
        + l2[:, None] * vertex_colour[:, 2]
    )

    flat_image = background[:, None, :].expand(n_scenes, height * width, channels)
    flat_image = flat_image.reshape(n_scenes * height * width, channels)
    flat_index = (scene * height + row) * width + col
    flat_image = flat_image.index_put((flat_index,), pixel_colour)
    image = flat_image.reshape(n_scenes, height, width, channels).permute(0, 3, 1, 2)
    image = image.contiguous()
    if silhouette_blur > 0:
        image = silhouette_halo(
            image=image,
            face_ids=face_ids,
            screen_x=screen_x,
            screen_y=screen_y,
            drawable=drawable,
            colour=colour,
            faces=faces,
            background=background,
            cull_backfaces=cull_backfaces,
            blur=silhouette_blur,
        )
    return image, face_ids


#: The halo is cut at this many ``silhouette_blur`` widths (the kernel is shifted to reach 0 there).
HALO_REACH = 4.0


def _nearest_on_segment(
    px: Tensor, py: Tensor, ax: Tensor, ay: Tensor, bx: Tensor, by: Tensor
) -> tuple[Tensor, Tensor]:
    """Squared distance from ``p`` to segment ``a -> b`` and the nearest point's parameter in
    [0, 1] (0 at ``a``). A zero-length segment is its endpoint."""
    ex, ey = bx - ax, by - ay
    length2 = ex * ex + ey * ey
    safe = torch.where(length2 > 0, length2, torch.ones_like(length2))
    t = torch.where(length2 > 0, ((px - ax) * ex + (py - ay) * ey) / safe, torch.zeros_like(px))
    t = t.clamp(0, 1)
    dx, dy = px - (ax + t * ex), py - (ay + t * ey)
    return dx * dx + dy * dy, t


class HaloPairs(NamedTuple):
    """The geometry of a batch's silhouette halo (see :func:`silhouette_halo`): which uncovered
    pixels each triangle reaches, how strongly, and where on the triangle, independent of the
    vertex colours. ``N`` (pixel, triangle) pairs of a batch of ``B`` scenes of ``H x W`` pixels
    and ``V`` vertices; every tensor but the integer ones carries gradients when the screen
    coordinates do.

    Attributes:
        pixel: ``(N,)`` int64 flat uncovered pixel ``(scene * H + row) * W + col``.
        vertex: ``(N, 3)`` int64 flat vertex ``scene * V + v`` of the triangle's corners.
        first, second: ``(N, 1)`` int64 corner (0, 1 or 2, a column of ``vertex``) where the
            edge nearest to the pixel starts and ends.
        t: ``(N,)`` the nearest point's position on that edge, 0 at ``first``, 1 at ``second``.
        strength: ``(N,)`` ``s_t``, the triangle's weight at the pixel (0 beyond the reach).
        alpha: ``(B * H * W,)`` the halo's opacity ``1 - prod_t (1 - s_t)`` per flat pixel.
        weight: ``(B * H * W,)`` ``sum_t s_t`` per flat pixel.

    The halo's colour at a pixel is ``sum_t s_t ((1 - t) colour[first] + t colour[second]) /
    sum_t s_t`` over the pairs of that pixel, so for fixed geometry the halo is linear in the
    vertex colours.
    """

    pixel: Tensor
    vertex: Tensor
    first: Tensor
    second: Tensor
    t: Tensor
    strength: Tensor
    alpha: Tensor
    weight: Tensor


def halo_pairs(
    *,
    face_ids: Tensor,
    screen_x: Tensor,
    screen_y: Tensor,
    drawable: Tensor,
    faces: Tensor,
    cull_backfaces: bool,
    blur: float,
) -> HaloPairs | None:
    """The geometry of :func:`silhouette_halo` (whose docstring gives the formula), shared by
    the halo and ``FaceProgram.affine_observation``; ``None`` when no uncovered pixel lies
    within reach of a triangle.

    Args:
        face_ids: ``(B, H, W)`` int64 (-1 uncovered), the hard render's.
        screen_x, screen_y: ``(B, V)`` pixel coordinates, drawable ``(B, V)`` bool, as
            :func:`camera_transform` gives them. faces ``(F, 3)``, cull_backfaces: as
            :func:`render`. blur: positive float, in pixels.

    Returns:
        :class:`HaloPairs`, differentiable with respect to ``screen_x`` and ``screen_y``.
    """
    n_scenes, height, width = face_ids.shape
    n_pixels = n_scenes * height * width
    ia, ib, ic = faces.unbind(1)
    reach = HALO_REACH * blur
    with torch.no_grad():
        xs = torch.stack([screen_x[:, ia], screen_x[:, ib], screen_x[:, ic]], dim=-1)
        ys = torch.stack([screen_y[:, ia], screen_y[:, ib], screen_y[:, ic]], dim=-1)
        col_min = torch.ceil((xs.amin(-1) - reach - 0.5).clamp(0, width)).long()
        col_max = torch.floor((xs.amax(-1) + reach - 0.5).clamp(-1, width - 1)).long()
        row_min = torch.ceil((ys.amin(-1) - reach - 0.5).clamp(0, height)).long()
        row_max = torch.floor((ys.amax(-1) + reach - 0.5).clamp(-1, height - 1)).long()
        dx1, dy1 = xs[..., 1] - xs[..., 0], ys[..., 1] - ys[..., 0]
        dx2, dy2 = xs[..., 2] - xs[..., 0], ys[..., 2] - ys[..., 0]
        area2 = dx1 * dy2 - dy1 * dx2
        facing = -area2 if cull_backfaces else area2.abs()
        keep = drawable[:, ia] & drawable[:, ib] & drawable[:, ic] & (facing > 0)
        keep &= torch.isfinite(area2) & (col_min <= col_max) & (row_min <= row_max)
        # Most triangles lie inside the silhouette: keep those whose widened box holds an
        # uncovered pixel, counted from a summed-area table of the uncovered mask.
        table = torch.zeros(
            n_scenes, height + 1, width + 1, dtype=torch.int64, device=face_ids.device
        )
        table[:, 1:, 1:] = (face_ids < 0).long().cumsum(1).cumsum(2)
        r0, r1 = row_min.clamp(0, height - 1), (row_max + 1).clamp(1, height)
        c0, c1 = col_min.clamp(0, width - 1), (col_max + 1).clamp(1, width)
        flat_table = table.reshape(n_scenes, -1)
        stride = width + 1

        def corner(r: Tensor, c: Tensor) -> Tensor:
            return flat_table.gather(1, r * stride + c)

        empty = corner(r1, c1) - corner(r0, c1) - corner(r1, c0) + corner(r0, c0)
        keep &= empty > 0
        scene, face = keep.nonzero(as_tuple=True)
        uncovered = (face_ids < 0).reshape(-1)
        pieces = []
        for box, row, col in box_candidates(
            row_min[scene, face], row_max[scene, face], col_min[scene, face], col_max[scene, face]
        ):
            pixel = (scene[box] * height + row) * width + col
            near = uncovered.index_select(0, pixel).nonzero().squeeze(1)
            pieces.append(tuple(t.index_select(0, near) for t in (box, row, col, pixel)))
    if sum(piece[0].numel() for piece in pieces) == 0:
        return None
    box, row, col, pixel = (torch.cat(parts) for parts in zip(*pieces, strict=True))
    sc = scene.index_select(0, box)
    triangle = faces.index_select(0, face.index_select(0, box))  # (N, 3)
    # Flat gathers: much faster than two-index advanced indexing on CPU.
    vertex = sc[:, None] * screen_x.shape[1] + triangle  # (N, 3)
    flat_vertex = vertex.reshape(-1)
    corner_x = screen_x.reshape(-1).index_select(0, flat_vertex).reshape(-1, 3)  # (N, 3)
    corner_y = screen_y.reshape(-1).index_select(0, flat_vertex).reshape(-1, 3)
    px = col.to(screen_x.dtype) + 0.5
    py = row.to(screen_x.dtype) + 0.5
    # Edge k runs from corner k+1 to corner k+2 (opposite corner k), as in triangle_edges.
    start = torch.tensor([1, 2, 0], device=face_ids.device)
    end = torch.tensor([2, 0, 1], device=face_ids.device)
    squared, along = _nearest_on_segment(
        px[:, None],
        py[:, None],
        corner_x.index_select(1, start),
        corner_y.index_select(1, start),
        corner_x.index_select(1, end),
        corner_y.index_select(1, end),
    )  # (N, 3) each
    # Outside the triangle (every candidate pixel is uncovered, hence outside or on its
    # boundary) the nearest point of the triangle lies on its nearest edge.
    nearest_edge = squared.argmin(dim=1, keepdim=True)
    distance2 = squared.gather(1, nearest_edge).squeeze(1)
    t = along.gather(1, nearest_edge).squeeze(1)
    first = start[nearest_edge]  # (N, 1)
    second = end[nearest_edge]

    projected = (corner_x[:, 1] - corner_x[:, 0]) * (corner_y[:, 2] - corner_y[:, 0]) - (
        corner_y[:, 1] - corner_y[:, 0]
    ) * (corner_x[:, 2] - corner_x[:, 0])
    projected = -projected if cull_backfaces else projected.abs()
    fade = (projected / (0.5 * blur * blur)).clamp(0, 1)
    cut = math.exp(-0.5 * HALO_REACH * HALO_REACH)
    kernel = ((torch.exp(-distance2 / (2 * blur * blur)) - cut) / (1 - cut)).clamp_min(0)
    strength = fade * kernel
    # strength < 1 except at d = 0 with full fade; the clamp keeps log1p and its gradient finite.
    log_clear = torch.log1p(-strength.clamp(max=1 - torch.finfo(strength.dtype).eps))
    zeros = torch.zeros(n_pixels, dtype=screen_x.dtype, device=screen_x.device)
    alpha = -torch.expm1(zeros.index_add(0, pixel, log_clear))
    weight = zeros.index_add(0, pixel, strength)
    return HaloPairs(pixel, vertex, first, second, t, strength, alpha, weight)


def silhouette_halo(
    *,
    image: Tensor,
    face_ids: Tensor,
    screen_x: Tensor,
    screen_y: Tensor,
    drawable: Tensor,
    colour: Tensor,
    faces: Tensor,
    background: Tensor,
    cull_backfaces: bool,
    blur: float,
) -> Tensor:
    """Soften the silhouette of a rasterized batch: uncovered pixels near a triangle get a halo.

    Covered pixels keep their value (and ``face_ids`` are unchanged). An uncovered pixel ``p``
    takes ``alpha * halo_colour + (1 - alpha) * background`` with, over the drawable triangles
    ``t`` (front-facing ones when culling) within :data:`HALO_REACH` ``* blur`` pixels,

    * ``s_t = f_t * k(d_t)``: ``d_t`` the distance from ``p`` to the triangle,
      ``k(d) = (exp(-d^2 / (2 blur^2)) - c) / (1 - c)`` for ``d <= HALO_REACH * blur`` and 0 beyond,
      with ``c = exp(-HALO_REACH^2 / 2)`` so ``k`` is continuous; ``f_t = clamp(a_t / (blur^2 / 2),
      0, 1)`` with ``a_t`` the triangle's projected area in square pixels (signed toward the
      camera when culling): a triangle turning edge-on fades out instead of vanishing;
    * ``alpha = 1 - prod_t (1 - s_t)`` and ``halo_colour`` the ``s_t``-weighted mean of the
      Gouraud colour at each triangle's point nearest to ``p``.

    At the silhouette ``d = 0`` and ``f = 1`` give ``alpha = 1`` and the edge's own colour, so the
    image is continuous across it, and pixel values change continuously as the mesh moves except
    at occlusion boundaries inside the mesh (after Chen et al. 2019, DIB-R, whose background
    pixels take a product of per-triangle distance kernels). Differentiable with respect to the
    same inputs as :func:`render`, including through the silhouette. The numba kernel computes the
    same halo inside its scene loop (``_numba_raster._halo_scene``, float64). The geometry
    (everything but the colours) is :func:`halo_pairs`'s.

    Args:
        image: ``(B, C, H, W)`` the hard render; face_ids ``(B, H, W)`` int64 (-1 uncovered).
        screen_x, screen_y: ``(B, V)`` pixel coordinates, drawable ``(B, V)`` bool, as
            :func:`camera_transform` gives them; colour ``(B, V, C)`` Gouraud vertex colours.
        faces ``(F, 3)``, background ``(B, C)``, cull_backfaces: as :func:`render`.
        blur: positive float, in pixels.

    Returns:
        ``(B, C, H, W)`` image, the inputs' dtype and device.
    """
    n_scenes, channels, height, width = image.shape
    n_pixels = n_scenes * height * width
    pairs = halo_pairs(
        face_ids=face_ids,
        screen_x=screen_x,
        screen_y=screen_y,
        drawable=drawable,
        faces=faces,
        cull_backfaces=cull_backfaces,
        blur=blur,
    )
    if pairs is None:
        return image
    pixel, t, strength, alpha, weight = (
        pairs.pixel,
        pairs.t,
        pairs.strength,
        pairs.alpha,
        pairs.weight,
    )
    out = image.permute(0, 2, 3, 1).reshape(n_pixels, channels)
    corner_colour = (
        colour.reshape(-1, channels)
        .index_select(0, pairs.vertex.reshape(-1))
        .reshape(-1, 3, channels)
    )
    first = pairs.first[..., None].expand(-1, 1, channels)
    second = pairs.second[..., None].expand(-1, 1, channels)
    first_colour = corner_colour.gather(1, first).squeeze(1)
    second_colour = corner_colour.gather(1, second).squeeze(1)
    edge_colour = (1 - t)[:, None] * first_colour + t[:, None] * second_colour
    weighted = torch.zeros(n_pixels, channels, dtype=image.dtype, device=image.device).index_add(
        0, pixel, strength[:, None] * edge_colour
    )
    halo_colour = weighted / torch.where(weight > 0, weight, torch.ones_like(weight))[:, None]
    back = background[:, None, :].expand(n_scenes, height * width, channels)
    back = back.reshape(n_pixels, channels)
    soft = alpha[:, None] * halo_colour + (1 - alpha[:, None]) * back
    touched = torch.zeros(n_pixels, dtype=torch.bool, device=image.device)
    touched[pixel] = True
    out = torch.where(touched[:, None], soft, out)
    return out.reshape(n_scenes, height, width, channels).permute(0, 3, 1, 2).contiguous()
