"""A slow, obvious reference rasterizer: plain Python float64 loops over scenes, triangles, pixels.

Same conventions as :mod:`probgraphics.render.mesh` (read its docstring), written as directly as
possible so that the fast paths can be checked against it: every triangle is tested against every
pixel centre (no bounding boxes), edge functions use the textbook formula, and the z-buffer keeps
the strictly nearest fragment in face order.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["reference_render_mesh"]


def _per_scene(value, n_scenes: int) -> list[float]:
    array = np.asarray(value, dtype=np.float64)
    return [float(x) for x in np.broadcast_to(array, (n_scenes,))]


def _edge(u, v, p) -> float:
    """Twice the signed area of (u, v, p) in pixel coordinates (rows downward)."""
    return (v[0] - u[0]) * (p[1] - u[1]) - (v[1] - u[1]) * (p[0] - u[0])


def _top_left(u, v, sign: float) -> bool:
    """Whether edge u -> v of a triangle with orientation ``sign`` is a top or a left edge."""
    inward_x = -sign * (v[1] - u[1])
    inward_y = sign * (v[0] - u[0])
    return inward_x > 0 or (inward_x == 0 and inward_y > 0)


def _finite(values) -> bool:
    return all(math.isfinite(x) for x in values)


def _drawable(corners, depths) -> bool:
    """A triangle is drawn only with finite screen corners, all in front of the camera."""
    return all(_finite(p) for p in corners) and all(math.isfinite(d) and d > 0 for d in depths)


def reference_render_mesh(
    vertices,
    faces,
    albedo,
    *,
    rotation,
    scale,
    offset,
    light_direction,
    ambient=0.35,
    diffuse=0.65,
    image_size=(64, 64),
    background=0.0,
    camera_distance=10.0,
    cull_backfaces=True,
    silhouette_blur=0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``B`` scenes; arguments as ``render_mesh`` with a leading batch dimension ``B``.

    Accepts numpy arrays or CPU tensors (vertices ``(B, V, 3)``, faces ``(F, 3)``, albedo
    ``(B, V, C)``, rotation ``(B, 3, 3)``, scale ``(B,)`` or float, offset ``(B, 2)``,
    light_direction ``(B, 3)``, ambient/diffuse float or ``(B,)``, background float, ``(C,)`` or
    ``(B, C)``).

    ``silhouette_blur > 0``: every uncovered pixel is composited from every drawable triangle
    (front-facing when culling) as ``render_mesh``'s "Soft silhouettes" says, with the distance
    to the triangle taken over its three edges.

    Returns:
        image ``(B, C, H, W)`` float64 and face ids ``(B, H, W)`` int64 (-1 for background).
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    albedo = np.asarray(albedo, dtype=np.float64)
    rotation = np.asarray(rotation, dtype=np.float64)
    offset = np.asarray(offset, dtype=np.float64)
    light_direction = np.asarray(light_direction, dtype=np.float64)
    n_scenes, n_vertices, _ = vertices.shape
    channels = albedo.shape[2]
    height, width = image_size
    scales = _per_scene(scale, n_scenes)
    ambients = _per_scene(ambient, n_scenes)
    diffuses = _per_scene(diffuse, n_scenes)
    backgrounds = np.broadcast_to(np.asarray(background, dtype=np.float64), (n_scenes, channels))

    image = np.zeros((n_scenes, channels, height, width))
    face_ids = np.full((n_scenes, height, width), -1, dtype=np.int64)
    for b in range(n_scenes):
        with np.errstate(all="ignore"):  # NaN/inf vertices are part of what is tested
            camera = [rotation[b] @ vertices[b, v] for v in range(n_vertices)]
        camera = [[float(x) for x in p] for p in camera]

        # Vertex normals: area-weighted face normals (cross products), summed, normalized.
        normals = [[0.0, 0.0, 0.0] for _ in range(n_vertices)]
        for i, j, k in faces:
            a, b_, c = camera[i], camera[j], camera[k]
            if not (_finite(a) and _finite(b_) and _finite(c)):
                continue
            e1 = [b_[t] - a[t] for t in range(3)]
            e2 = [c[t] - a[t] for t in range(3)]
            n = [
                e1[1] * e2[2] - e1[2] * e2[1],
                e1[2] * e2[0] - e1[0] * e2[2],
                e1[0] * e2[1] - e1[1] * e2[0],
            ]
            for vertex in (i, j, k):
                for t in range(3):
                    normals[vertex][t] += n[t]
        light = [float(x) for x in light_direction[b]]
        colour = []
        for v in range(n_vertices):
            length = math.sqrt(sum(x * x for x in normals[v]))
            cosine = 0.0
            if length > 0:
                cosine = max(0.0, sum(normals[v][t] * light[t] for t in range(3)) / length)
            shade = ambients[b] + diffuses[b] * cosine
            colour.append([albedo[b, v, ch] * shade for ch in range(channels)])

        # Projection to continuous pixel coordinates (column, row) and depth.
        screen, depth = [], []
        for x_cam, y_cam, z_cam in camera:
            x_ndc = scales[b] * x_cam + offset[b, 0]
            y_ndc = scales[b] * y_cam + offset[b, 1]
            screen.append(((x_ndc + 1) / 2 * width, (1 - y_ndc) / 2 * height))
            depth.append(camera_distance - z_cam)

        nearest = np.full((height, width), np.inf)
        weights = np.zeros((height, width, 3))
        for f, (i, j, k) in enumerate(faces):
            corners = (screen[i], screen[j], screen[k])
            if not _drawable(corners, [depth[t] for t in (i, j, k)]):
                continue
            area2 = _edge(*corners)
            if area2 == 0 or not math.isfinite(area2):
                continue
            if cull_backfaces and area2 > 0:  # rows grow downward: front faces are negative
                continue
            sign = 1.0 if area2 > 0 else -1.0
            a, b_, c = corners
            edges = ((b_, c), (c, a), (a, b_))  # edge k is opposite vertex k
            top_left = [_top_left(u, v, sign) for u, v in edges]
            for row in range(height):
                for col in range(width):
                    p = (col + 0.5, row + 0.5)
                    w = [sign * _edge(u, v, p) for u, v in edges]
                    if not all(w[t] > 0 or (w[t] == 0 and top_left[t]) for t in range(3)):
                        continue
                    lam = [x / (sign * area2) for x in w]
                    z = lam[0] * depth[i] + lam[1] * depth[j] + lam[2] * depth[k]
                    if z < nearest[row, col]:
                        nearest[row, col] = z
                        face_ids[b, row, col] = f
                        weights[row, col] = lam

        for row in range(height):
            for col in range(width):
                f = face_ids[b, row, col]
                if f < 0:
                    image[b, :, row, col] = backgrounds[b]
                    if silhouette_blur > 0:
                        image[b, :, row, col] = _halo(
                            (col + 0.5, row + 0.5),
                            screen,
                            depth,
                            colour,
                            faces,
                            backgrounds[b],
                            cull_backfaces,
                            silhouette_blur,
                        )
                    continue
                lam = weights[row, col]
                for ch in range(channels):
                    image[b, ch, row, col] = sum(lam[t] * colour[faces[f, t]][ch] for t in range(3))
    return image, face_ids


def _halo(p, screen, depth, colour, faces, background, cull_backfaces, blur):
    """The soft-silhouette value of uncovered pixel centre ``p`` (a list of channel values)."""
    reach = 4.0 * blur
    cut = math.exp(-0.5 * 4.0 * 4.0)
    clear = 1.0
    total = 0.0
    weighted = [0.0] * len(background)
    for i, j, k in faces:
        corners = (screen[i], screen[j], screen[k])
        if not _drawable(corners, [depth[t] for t in (i, j, k)]):
            continue
        area2 = _edge(*corners)
        projected = -area2 if cull_backfaces else abs(area2)
        if not math.isfinite(area2) or projected <= 0:
            continue
        best = None
        for start, end in ((j, k), (k, i), (i, j)):
            (ax, ay), (bx, by) = screen[start], screen[end]
            ex, ey = bx - ax, by - ay
            length2 = ex * ex + ey * ey
            t = 0.0 if length2 == 0 else ((p[0] - ax) * ex + (p[1] - ay) * ey) / length2
            t = min(1.0, max(0.0, t))
            d2 = (p[0] - ax - t * ex) ** 2 + (p[1] - ay - t * ey) ** 2
            if best is None or d2 < best[0]:
                best = (d2, t, start, end)
        d2, t, start, end = best
        if d2 > reach * reach:
            continue
        fade = min(1.0, projected / (0.5 * blur * blur))
        strength = fade * max(0.0, (math.exp(-d2 / (2 * blur * blur)) - cut) / (1 - cut))
        clear *= 1.0 - strength
        total += strength
        for ch in range(len(background)):
            weighted[ch] += strength * ((1 - t) * colour[start][ch] + t * colour[end][ch])
    alpha = 1.0 - clear
    if total == 0:
        return list(background)
    return [
        alpha * weighted[ch] / total + (1 - alpha) * background[ch] for ch in range(len(weighted))
    ]
