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

from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = [
    "render",
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
                yield chunk[which], row_min[chunk][which] + dr, col_min[chunk][which] + dc
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
) -> tuple[Tensor, Tensor]:
    """Render validated, flattened inputs (see ``render_mesh``).

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
    ax, ay = screen_x[scene, triangle[:, 0]], screen_y[scene, triangle[:, 0]]
    bx, by = screen_x[scene, triangle[:, 1]], screen_y[scene, triangle[:, 1]]
    cx, cy = screen_x[scene, triangle[:, 2]], screen_y[scene, triangle[:, 2]]
    px = col.to(screen_x.dtype) + 0.5
    py = row.to(screen_x.dtype) + 0.5
    # Signed areas: their ratios are the barycentric weights (the sign cancels).
    area2 = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    l0 = ((cx - bx) * (py - by) - (cy - by) * (px - bx)) / area2
    l1 = ((ax - cx) * (py - cy) - (ay - cy) * (px - cx)) / area2
    l2 = ((bx - ax) * (py - ay) - (by - ay) * (px - ax)) / area2
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
    return image.contiguous(), face_ids
