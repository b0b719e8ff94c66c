"""The numba CPU rasterizer: one ``prange`` iteration renders one whole scene.

Per scene: camera transform and projection, area-weighted vertex normals, Gouraud vertex colours,
then per triangle (culled and off-screen ones skipped early) a scan of its bounding box clipped to
the image with edge functions and a z-buffer test keeping the nearest face id; a last pass
computes each covered pixel's barycentric weights in its visible triangle and interpolates the
vertex colours. Scratch arrays are allocated once per scene, never in the triangle loop.

All arithmetic is float32 in the same expression order as the torch path (conventions in
:mod:`probgraphics.render.mesh`); ``fastmath`` stays off so that nothing is reassociated or fused
and the two backends agree exactly on coverage and depth order.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

from probgraphics.render._torch_raster import HALO_REACH

__all__ = ["render", "render_batch"]

# float32 constants: a bare Python float would promote the arithmetic to float64.
_ZERO = np.float32(0.0)
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_INF = np.float32(np.inf)


@njit(cache=True, fastmath=False)
def _edge(start_x, start_y, end_x, end_y, sign):
    """Edge function ``gx * (px - ox) + gy * (py - oy)`` from the smaller endpoint (see torch)."""
    # Bitwise operators and conditional expressions (not if/else) let LLVM emit selects: which
    # endpoint comes first is a coin flip per edge, a branch would be mispredicted half the time.
    start_first = (start_x < end_x) | ((start_x == end_x) & (start_y <= end_y))
    ox = start_x if start_first else end_x
    oy = start_y if start_first else end_y
    tx = end_x if start_first else start_x
    ty = end_y if start_first else start_y
    m = sign if start_first else -sign
    gx = -(m * (ty - oy))
    gy = m * (tx - ox)
    top_left = (gx > _ZERO) | ((gx == _ZERO) & (gy > _ZERO))
    return ox, oy, gx, gy, top_left


@njit(cache=True, fastmath=False)
def _render_scene(
    vertices,
    faces,
    albedo,
    rotation,
    scale,
    offset_x,
    offset_y,
    light,
    ambient,
    diffuse,
    background,
    camera_distance,
    cull_backfaces,
    blur,
    image,
    face_ids,
):
    """Render one scene into ``image`` ``(C, H, W)`` and ``face_ids`` ``(H, W)`` in place;
    with ``blur > 0`` soften its silhouette (:func:`_halo_scene`)."""
    n_vertices = vertices.shape[0]
    n_faces = faces.shape[0]
    channels = albedo.shape[1]
    height = image.shape[1]
    width = image.shape[2]
    height_f = np.float32(height)
    width_f = np.float32(width)

    # -- vertices: camera space, screen, depth --------------------------------------------------
    camera = np.empty((n_vertices, 3), np.float32)
    screen_x = np.empty(n_vertices, np.float32)
    screen_y = np.empty(n_vertices, np.float32)
    depth = np.empty(n_vertices, np.float32)
    camera_finite = np.empty(n_vertices, np.bool_)
    drawable = np.empty(n_vertices, np.bool_)
    r00, r01, r02 = rotation[0, 0], rotation[0, 1], rotation[0, 2]
    r10, r11, r12 = rotation[1, 0], rotation[1, 1], rotation[1, 2]
    r20, r21, r22 = rotation[2, 0], rotation[2, 1], rotation[2, 2]
    for v in range(n_vertices):
        x = vertices[v, 0]
        y = vertices[v, 1]
        z = vertices[v, 2]
        x_cam = r00 * x + r01 * y + r02 * z
        y_cam = r10 * x + r11 * y + r12 * z
        z_cam = r20 * x + r21 * y + r22 * z
        camera[v, 0] = x_cam
        camera[v, 1] = y_cam
        camera[v, 2] = z_cam
        sx = (scale * x_cam + offset_x + _ONE) * _HALF * width_f
        sy = (_ONE - (scale * y_cam + offset_y)) * _HALF * height_f
        d = camera_distance - z_cam
        screen_x[v] = sx
        screen_y[v] = sy
        depth[v] = d
        finite = np.isfinite(x_cam) and np.isfinite(y_cam) and np.isfinite(z_cam)
        camera_finite[v] = finite
        drawable[v] = (
            finite and np.isfinite(sx) and np.isfinite(sy) and np.isfinite(d) and d > _ZERO
        )

    # -- normals and Gouraud vertex colours -----------------------------------------------------
    normals = np.zeros((n_vertices, 3), np.float32)
    for f in range(n_faces):
        i0 = faces[f, 0]
        i1 = faces[f, 1]
        i2 = faces[f, 2]
        if not (camera_finite[i0] and camera_finite[i1] and camera_finite[i2]):
            continue
        e1x = camera[i1, 0] - camera[i0, 0]
        e1y = camera[i1, 1] - camera[i0, 1]
        e1z = camera[i1, 2] - camera[i0, 2]
        e2x = camera[i2, 0] - camera[i0, 0]
        e2y = camera[i2, 1] - camera[i0, 1]
        e2z = camera[i2, 2] - camera[i0, 2]
        nx = e1y * e2z - e1z * e2y
        ny = e1z * e2x - e1x * e2z
        nz = e1x * e2y - e1y * e2x
        if not (np.isfinite(nx) and np.isfinite(ny) and np.isfinite(nz)):
            continue
        for i in (i0, i1, i2):
            normals[i, 0] += nx
            normals[i, 1] += ny
            normals[i, 2] += nz
    colour = np.empty((n_vertices, channels), np.float32)
    lx, ly, lz = light[0], light[1], light[2]
    for v in range(n_vertices):
        nx, ny, nz = normals[v, 0], normals[v, 1], normals[v, 2]
        length = np.sqrt(nx * nx + ny * ny + nz * nz)
        cosine = _ZERO
        if length > _ZERO and np.isfinite(length):
            cosine = max(_ZERO, (nx * lx + ny * ly + nz * lz) / length)
        shade = ambient + diffuse * cosine
        for ch in range(channels):
            colour[v, ch] = albedo[v, ch] * shade

    # -- rasterize: z-buffer over each triangle's clipped bounding box --------------------------
    nearest = np.full((height, width), _INF, np.float32)
    face_ids[:, :] = -1
    last_col = width_f - _ONE
    last_row = height_f - _ONE
    for f in range(n_faces):
        i0 = faces[f, 0]
        i1 = faces[f, 1]
        i2 = faces[f, 2]
        if not (drawable[i0] and drawable[i1] and drawable[i2]):
            continue
        ax, ay = screen_x[i0], screen_y[i0]
        bx, by = screen_x[i1], screen_y[i1]
        cx, cy = screen_x[i2], screen_y[i2]
        area2 = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
        # Rows grow downward, so a front (counter-clockwise in y-up) face has negative area here.
        if cull_backfaces and not area2 < _ZERO:
            continue
        if area2 == _ZERO or not np.isfinite(area2):
            continue
        x_low = min(ax, bx, cx) - _HALF
        x_high = max(ax, bx, cx) - _HALF
        y_low = min(ay, by, cy) - _HALF
        y_high = max(ay, by, cy) - _HALF
        if x_high < _ZERO or y_high < _ZERO or x_low > last_col or y_low > last_row:
            continue
        col0 = 0 if x_low <= _ZERO else int(np.ceil(x_low))
        col1 = width - 1 if x_high >= last_col else int(np.floor(x_high))
        row0 = 0 if y_low <= _ZERO else int(np.ceil(y_low))
        row1 = height - 1 if y_high >= last_row else int(np.floor(y_high))
        if col0 > col1 or row0 > row1:
            continue
        sign = _ONE if area2 > _ZERO else -_ONE
        inverse_area = _ONE / (sign * area2)
        o0x, o0y, g0x, g0y, tl0 = _edge(bx, by, cx, cy, sign)
        o1x, o1y, g1x, g1y, tl1 = _edge(cx, cy, ax, ay, sign)
        o2x, o2y, g2x, g2y, tl2 = _edge(ax, ay, bx, by, sign)
        da, db, dc = depth[i0], depth[i1], depth[i2]
        for row in range(row0, row1 + 1):
            py = np.float32(row) + _HALF
            t0 = g0y * (py - o0y)
            t1 = g1y * (py - o1y)
            t2 = g2y * (py - o2y)
            for col in range(col0, col1 + 1):
                px = np.float32(col) + _HALF
                w0 = g0x * (px - o0x) + t0
                w1 = g1x * (px - o1x) + t1
                w2 = g2x * (px - o2x) + t2
                # Branch-free coverage and depth tests (bitwise operators on bools, conditional
                # stores): per pixel the outcome is hard to predict, and mispredicted branches
                # cost more than the arithmetic of these mostly tiny boxes.
                inside = (
                    ((w0 > _ZERO) | ((w0 == _ZERO) & tl0))
                    & ((w1 > _ZERO) | ((w1 == _ZERO) & tl1))
                    & ((w2 > _ZERO) | ((w2 == _ZERO) & tl2))
                )
                l0 = w0 * inverse_area
                l1 = w1 * inverse_area
                l2 = w2 * inverse_area
                z = l0 * da + l1 * db + l2 * dc
                current = nearest[row, col]
                better = inside & (z < current)
                nearest[row, col] = z if better else current
                face_ids[row, col] = f if better else face_ids[row, col]

    # -- interpolate colours ---------------------------------------------------------------------
    for row in range(height):
        for col in range(width):
            f = face_ids[row, col]
            if f < 0:
                for ch in range(channels):
                    image[ch, row, col] = background[ch]
            else:
                i0 = faces[f, 0]
                i1 = faces[f, 1]
                i2 = faces[f, 2]
                # Barycentric weights of the pixel centre in the visible triangle.
                ax, ay = screen_x[i0], screen_y[i0]
                bx, by = screen_x[i1], screen_y[i1]
                cx, cy = screen_x[i2], screen_y[i2]
                px = np.float32(col) + _HALF
                py = np.float32(row) + _HALF
                inverse_area = _ONE / ((bx - ax) * (cy - ay) - (by - ay) * (cx - ax))
                l0 = ((cx - bx) * (py - by) - (cy - by) * (px - bx)) * inverse_area
                l1 = ((ax - cx) * (py - cy) - (ay - cy) * (px - cx)) * inverse_area
                l2 = ((bx - ax) * (py - ay) - (by - ay) * (px - ax)) * inverse_area
                for ch in range(channels):
                    image[ch, row, col] = (
                        l0 * colour[i0, ch] + l1 * colour[i1, ch] + (l2 * colour[i2, ch])
                    )

    if blur > 0:
        # The halo reuses this scene's screen positions and colours.
        _halo_scene(
            screen_x,
            screen_y,
            colour,
            drawable,
            faces,
            face_ids,
            background,
            blur,
            cull_backfaces,
            image,
        )


@njit(parallel=True, cache=True, fastmath=False)
def render_batch(
    vertices,
    faces,
    albedo,
    rotation,
    scale,
    offset,
    light,
    ambient,
    diffuse,
    background,
    camera_distance,
    cull_backfaces,
    blur,
    image,
    face_ids,
):
    """Render B scenes in parallel into preallocated ``image`` and ``face_ids``.

    Arrays (C-contiguous): vertices ``(B, V, 3)`` float32, faces ``(F, 3)`` int64, albedo
    ``(B, V, C)`` float32, rotation ``(B, 3, 3)``, scale ``(B,)``, offset ``(B, 2)``, light
    ``(B, 3)``, ambient ``(B,)``, diffuse ``(B,)``, background ``(B, C)`` float32;
    camera_distance float32; cull_backfaces bool; blur float (``silhouette_blur``, 0 for hard
    edges); image ``(B, C, H, W)`` float32 and face_ids
    ``(B, H, W)`` int64, written.
    """
    for b in prange(vertices.shape[0]):
        _render_scene(
            vertices[b],
            faces,
            albedo[b],
            rotation[b],
            scale[b],
            offset[b, 0],
            offset[b, 1],
            light[b],
            ambient[b],
            diffuse[b],
            background[b],
            camera_distance,
            cull_backfaces,
            blur,
            image[b],
            face_ids[b],
        )


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
    """Render validated, flattened float32 CPU inputs (see ``render_mesh``) with the kernel.

    Returns:
        image ``(B, C, H, W)`` float32, face ids ``(B, H, W)`` int64, CPU tensors.
    """
    n_scenes, _, channels = albedo.shape

    def array(t: Tensor) -> np.ndarray:
        # .numpy() shares memory: no copy for inputs that are already contiguous.
        return t.detach().contiguous().numpy()

    image = torch.empty((n_scenes, channels, height, width), dtype=torch.float32)
    face_ids = torch.empty((n_scenes, height, width), dtype=torch.int64)
    if n_scenes:
        render_batch(
            array(vertices),
            array(faces),
            array(albedo),
            array(rotation),
            array(scale),
            array(offset),
            array(light_direction),
            array(ambient),
            array(diffuse),
            array(background),
            np.float32(camera_distance),
            bool(cull_backfaces),
            float(silhouette_blur),
            image.numpy(),
            face_ids.numpy(),
        )
    return image, face_ids


@njit(cache=True, fastmath=False)
def _halo_scene(
    screen_x, screen_y, colour, drawable, faces, face_ids, background, blur, cull, image
):
    """One scene's soft silhouette, in float64: the torch path's ``silhouette_halo`` (whose
    docstring gives the formula), written into the uncovered pixels of ``image`` in place."""
    height, width = face_ids.shape
    channels = colour.shape[1]
    log_clear = np.zeros(height * width)
    weight = np.zeros(height * width)
    weighted = np.zeros((height * width, channels))
    reach = HALO_REACH * blur
    cut = np.exp(-0.5 * HALO_REACH * HALO_REACH)
    two_b2 = 2.0 * blur * blur
    fade_area = 0.5 * blur * blur
    # torch clamps the strength below 1 by float32's epsilon (the images are float32).
    most = 1.0 - 1.1920928955078125e-07
    for f in range(faces.shape[0]):
        i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
        if not (drawable[i0] and drawable[i1] and drawable[i2]):
            continue
        xs = (np.float64(screen_x[i0]), np.float64(screen_x[i1]), np.float64(screen_x[i2]))
        ys = (np.float64(screen_y[i0]), np.float64(screen_y[i1]), np.float64(screen_y[i2]))
        area2 = (xs[1] - xs[0]) * (ys[2] - ys[0]) - (ys[1] - ys[0]) * (xs[2] - xs[0])
        projected = -area2 if cull else abs(area2)
        if not (projected > 0.0) or not np.isfinite(area2):
            continue
        fade = min(1.0, projected / fade_area)
        col_min = int(np.ceil(min(max(min(xs[0], xs[1], xs[2]) - reach - 0.5, 0.0), width)))
        col_max = int(np.floor(min(max(max(xs[0], xs[1], xs[2]) + reach - 0.5, -1.0), width - 1)))
        row_min = int(np.ceil(min(max(min(ys[0], ys[1], ys[2]) - reach - 0.5, 0.0), height)))
        row_max = int(np.floor(min(max(max(ys[0], ys[1], ys[2]) + reach - 0.5, -1.0), height - 1)))
        corners = (i0, i1, i2)
        for row in range(row_min, row_max + 1):
            py = row + 0.5
            for col in range(col_min, col_max + 1):
                if face_ids[row, col] >= 0:
                    continue
                px = col + 0.5
                best = np.inf
                best_t = 0.0
                best_k = 0
                for k in range(3):
                    # Edge k runs from corner k+1 to corner k+2 (opposite corner k).
                    sx, sy = xs[(k + 1) % 3], ys[(k + 1) % 3]
                    ex, ey = xs[(k + 2) % 3] - sx, ys[(k + 2) % 3] - sy
                    length2 = ex * ex + ey * ey
                    t = ((px - sx) * ex + (py - sy) * ey) / length2 if length2 > 0 else 0.0
                    t = min(max(t, 0.0), 1.0)
                    dx, dy = px - (sx + t * ex), py - (sy + t * ey)
                    d2 = dx * dx + dy * dy
                    if d2 < best:
                        best, best_t, best_k = d2, t, k
                kernel = (np.exp(-best / two_b2) - cut) / (1.0 - cut)
                if kernel <= 0.0:
                    continue
                strength = min(fade * kernel, most)
                pixel = row * width + col
                log_clear[pixel] += np.log1p(-strength)
                weight[pixel] += strength
                first = corners[(best_k + 1) % 3]
                second = corners[(best_k + 2) % 3]
                for ch in range(channels):
                    weighted[pixel, ch] += strength * (
                        (1.0 - best_t) * colour[first, ch] + best_t * colour[second, ch]
                    )
    for row in range(height):
        for col in range(width):
            pixel = row * width + col
            if weight[pixel] <= 0.0:
                continue
            alpha = -np.expm1(log_clear[pixel])
            for ch in range(channels):
                value = alpha * weighted[pixel, ch] / weight[pixel] + (1.0 - alpha) * background[ch]
                image[ch, row, col] = np.float32(value)
