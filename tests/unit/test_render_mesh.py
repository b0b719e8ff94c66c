"""Mesh rasterizer: both fast paths against the reference, analytic cases, gradients, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probgraphics.render import (
    RenderOutput,
    _numba_raster,
    _torch_raster,
    render_mesh,
    rotation_matrix,
    vertex_normals,
)
from tests.reference_raster import reference_render_mesh

FAST_BACKENDS = ("numba", "torch")

# Fraction of pixels allowed to disagree with the float64 reference: float32 rounding can move a
# pixel centre lying within ~1e-6 pixel of an edge (or two depths within ~1e-7) across a tie.
TIE_TOLERANCE = 0.005


def _random_soup(seed: int, n_scenes: int, n_triangles: int, channels: int) -> dict:
    """Random triangle soup (each triangle its own vertices) with random cameras and light."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n_scenes, n_triangles, 1, 3, generator=g) * 2 - 1
    sizes = 0.05 + 0.6 * torch.rand(n_scenes, n_triangles, 1, 1, generator=g) ** 2
    corners = torch.randn(n_scenes, n_triangles, 3, 3, generator=g) * sizes
    vertices = (centres + corners).reshape(n_scenes, 3 * n_triangles, 3)
    faces = torch.arange(3 * n_triangles).reshape(n_triangles, 3)
    albedo = torch.rand(n_scenes, 3 * n_triangles, channels, generator=g)
    light = torch.randn(n_scenes, 3, generator=g)
    light = light / light.norm(dim=-1, keepdim=True)
    light[:, 2] = light[:, 2].abs()
    return dict(
        vertices=vertices,
        faces=faces,
        albedo=albedo,
        rotation=rotation_matrix(
            torch.rand(n_scenes, generator=g) * 2 - 1, torch.rand(n_scenes, generator=g) - 0.5
        ),
        scale=0.7 + 0.4 * torch.rand(n_scenes, generator=g),
        offset=(torch.rand(n_scenes, 2, generator=g) - 0.5) * 0.4,
        light_direction=light,
        ambient=torch.full((n_scenes,), 0.3),
        diffuse=torch.full((n_scenes,), 0.7),
        background=torch.rand(n_scenes, channels, generator=g),
    )


def _uv_sphere(
    n_rings: int, n_segments: int, radius: float = 0.8
) -> tuple[torch.Tensor, torch.Tensor]:
    """A closed UV sphere, faces counter-clockwise seen from outside."""
    vertices = [[0.0, radius, 0.0]]
    for i in range(1, n_rings):
        polar = math.pi * i / n_rings
        for j in range(n_segments):
            azimuth = 2 * math.pi * j / n_segments
            vertices.append(
                [
                    radius * math.sin(polar) * math.sin(azimuth),
                    radius * math.cos(polar),
                    radius * math.sin(polar) * math.cos(azimuth),
                ]
            )
    vertices.append([0.0, -radius, 0.0])
    bottom = len(vertices) - 1

    def ring(i: int, j: int) -> int:
        return 1 + (i - 1) * n_segments + j % n_segments

    faces = []
    for j in range(n_segments):
        faces.append([0, ring(1, j), ring(1, j + 1)])
        faces.append([bottom, ring(n_rings - 1, j + 1), ring(n_rings - 1, j)])
    for i in range(1, n_rings - 1):
        for j in range(n_segments):
            a, b = ring(i, j), ring(i, j + 1)
            c, d = ring(i + 1, j), ring(i + 1, j + 1)
            faces.append([a, c, d])
            faces.append([a, d, b])
    return torch.tensor(vertices), torch.tensor(faces)


def _sphere_scene(n_scenes: int, seed: int) -> dict:
    vertices, faces = _uv_sphere(8, 12)
    g = torch.Generator().manual_seed(seed)
    vertices = vertices + 0.05 * torch.randn(n_scenes, *vertices.shape, generator=g)
    return dict(
        vertices=vertices,
        faces=faces,
        albedo=torch.rand(n_scenes, vertices.shape[1], 3, generator=g),
        rotation=rotation_matrix(torch.rand(n_scenes, generator=g) * 6, torch.rand(n_scenes) - 0.5),
        scale=torch.full((n_scenes,), 1.0),
        offset=torch.zeros(n_scenes, 2),
        light_direction=torch.tensor([[0.3, 0.5, 0.81]]).expand(n_scenes, 3),
    )


def _flat_scene(
    points_px: list[list[tuple[float, float]]],
    height: int,
    width: int,
    depths: list[float] | None = None,
    albedo: float = 0.8,
) -> dict:
    """One scene of triangles given by pixel coordinates (col, row); identity camera.

    Each triangle is wound to face the camera (counter-clockwise in y-up model space).
    """
    vertices = []
    for t, triangle in enumerate(points_px):
        z = 0.0 if depths is None else depths[t]
        model = [(2 * c / width - 1, 1 - 2 * r / height, z) for c, r in triangle]
        (x0, y0, _), (x1, y1, _), (x2, y2, _) = model
        if (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0) < 0:
            model = [model[0], model[2], model[1]]
        vertices.extend(model)
    n = len(vertices)
    return dict(
        vertices=torch.tensor([vertices], dtype=torch.float32),
        faces=torch.arange(n).reshape(-1, 3),
        albedo=torch.full((1, n, 1), albedo),
        rotation=torch.eye(3)[None],
        scale=torch.ones(1),
        offset=torch.zeros(1, 2),
        light_direction=torch.tensor([[0.0, 0.0, 1.0]]),
        image_size=(height, width),
    )


def _reference(scene: dict, **options) -> tuple[np.ndarray, np.ndarray]:
    kwargs = {k: v for k, v in scene.items() if k not in ("vertices", "faces", "albedo")}
    kwargs.update(options)
    return reference_render_mesh(scene["vertices"], scene["faces"], scene["albedo"], **kwargs)


def _render(scene: dict, backend: str, **options) -> RenderOutput:
    kwargs = {k: v for k, v in scene.items() if k not in ("vertices", "faces", "albedo")}
    kwargs.update(options)
    return render_mesh(
        scene["vertices"], scene["faces"], scene["albedo"], backend=backend, **kwargs
    )


def _assert_matches_reference(
    out: RenderOutput, image: np.ndarray, ids: np.ndarray, tolerance: float = 1e-4
) -> None:
    got_ids = out.face_ids.numpy()
    mismatched = int((got_ids != ids).sum())
    assert mismatched <= TIE_TOLERANCE * ids.size, f"{mismatched} of {ids.size} pixels differ"
    same = np.broadcast_to((got_ids == ids)[:, None], image.shape)
    np.testing.assert_allclose(
        out.image.double().numpy()[same], image[same], atol=tolerance, rtol=0
    )


# -- agreement with the reference -----------------------------------------------------------------


@pytest.mark.parametrize(
    "seed, channels, size, cull",
    [(0, 3, (16, 16), True), (1, 1, (20, 24), False), (2, 3, (24, 18), True)],
)
def test_fast_paths_match_reference_on_random_soup(seed, channels, size, cull):
    scene = _random_soup(seed, n_scenes=3, n_triangles=40, channels=channels)
    image, ids = _reference(scene, image_size=size, cull_backfaces=cull)
    assert (ids >= 0).mean() > 0.2, "the scene should cover a good part of the image"
    for backend in FAST_BACKENDS:
        out = _render(scene, backend, image_size=size, cull_backfaces=cull)
        assert out.image.shape == (3, channels, *size) and out.image.dtype == torch.float32
        assert out.face_ids.shape == (3, *size) and out.face_ids.dtype == torch.int64
        _assert_matches_reference(out, image, ids)


def test_fast_paths_match_reference_on_closed_mesh_with_shared_vertices():
    scene = _sphere_scene(n_scenes=2, seed=3)
    image, ids = _reference(scene, image_size=(20, 20))
    for backend in FAST_BACKENDS:
        _assert_matches_reference(_render(scene, backend, image_size=(20, 20)), image, ids)


def test_torch_float64_matches_reference_exactly():
    scene = _random_soup(4, n_scenes=2, n_triangles=30, channels=3)
    image, ids = _reference(scene, image_size=(16, 20), cull_backfaces=False)
    scene64 = {k: v.double() if v.is_floating_point() else v for k, v in scene.items()}
    out = _render(scene64, "torch", image_size=(16, 20), cull_backfaces=False)
    np.testing.assert_array_equal(out.face_ids.numpy(), ids)
    np.testing.assert_allclose(out.image.numpy(), image, atol=1e-12, rtol=0)


def test_numba_and_torch_agree_exactly_in_float32():
    # Same expressions in the same order: coverage and depth order are bit-identical on CPU.
    scene = _random_soup(5, n_scenes=4, n_triangles=200, channels=3)
    numba_out = _render(scene, "numba", image_size=(32, 40))
    torch_out = _render(scene, "torch", image_size=(32, 40))
    np.testing.assert_array_equal(numba_out.face_ids.numpy(), torch_out.face_ids.numpy())
    np.testing.assert_allclose(numba_out.image.numpy(), torch_out.image.numpy(), atol=2e-6)


@pytest.mark.gpu
def test_torch_path_on_cuda_matches_numba_on_cpu():
    # The GPU runs the torch path; the CPU's numba kernel is the reference. Different hardware
    # may round an edge-tie pixel differently, nothing more.
    scene = _random_soup(6, n_scenes=4, n_triangles=200, channels=3)
    numba_out = _render(scene, "numba", image_size=(32, 40))
    on_gpu = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in scene.items()}
    cuda_out = _render(on_gpu, "torch", image_size=(32, 40))
    assert cuda_out.image.device.type == "cuda"
    _assert_matches_reference(
        RenderOutput(cuda_out.image.cpu(), cuda_out.face_ids.cpu()),
        numba_out.image.numpy(),
        numba_out.face_ids.numpy(),
        tolerance=1e-5,
    )


# -- analytic cases --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numba", "torch", "reference"])
def test_right_triangles_sharing_an_edge_partition_the_square(backend):
    # Corners on pixel centres: every edge passes exactly through pixel centres, so the top-left
    # rule decides; the two halves must tile the 7x7 block of centres with no gap or overlap.
    lower = [(0.5, 0.5), (0.5, 7.5), (7.5, 0.5)]
    upper = [(7.5, 0.5), (0.5, 7.5), (7.5, 7.5)]
    scene = _flat_scene([lower, upper], 8, 8)
    if backend == "reference":
        ids = _reference(scene)[1][0]
    else:
        ids = _render(scene, backend).face_ids[0].numpy()
    rows, cols = np.mgrid[0:8, 0:8]
    expected = np.full((8, 8), -1)
    expected[(rows + cols <= 6)] = 0  # left and top edges included, hypotenuse excluded
    expected[(rows + cols >= 7) & (rows <= 6) & (cols <= 6)] = 1  # hypotenuse included
    np.testing.assert_array_equal(ids, expected)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_covered_pixel_count_matches_area(backend):
    triangle = [(3.3, 4.1), (57.2, 9.7), (21.4, 60.6)]
    scene = _flat_scene([triangle], 64, 64)
    covered = _render(scene, backend).face_ids[0].numpy() >= 0
    # The exact set, by an independent float64 half-plane test (no centre lies on an edge here).
    rows, cols = np.mgrid[0:64, 0:64] + 0.5
    sides = [
        (triangle[(i + 1) % 3][0] - triangle[i][0]) * (rows - triangle[i][1])
        - (triangle[(i + 1) % 3][1] - triangle[i][1]) * (cols - triangle[i][0])
        for i in range(3)
    ]
    inside = ((sides[0] > 0) & (sides[1] > 0) & (sides[2] > 0)) | (
        (sides[0] < 0) & (sides[1] < 0) & (sides[2] < 0)
    )
    np.testing.assert_array_equal(covered, inside)
    count = int(covered.sum())
    (x0, y0), (x1, y1), (x2, y2) = triangle
    area = abs((x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)) / 2
    perimeter = sum(math.dist(triangle[i], triangle[(i + 1) % 3]) for i in range(3))
    # Only pixels cut by the boundary can be counted wrongly, and each error is < 1 pixel of area.
    assert abs(count - area) < perimeter / 2, (count, area)


@pytest.mark.parametrize("backend", ["numba", "torch", "reference"])
@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_triangle_wins_in_either_order(backend, near_first):
    a = [(2.0, 2.0), (14.0, 3.0), (4.0, 13.0)]
    b = [(5.0, 4.0), (15.0, 14.0), (3.0, 15.0)]
    depths = [0.5, -0.5] if near_first else [-0.5, 0.5]  # larger z is nearer the camera
    scene = _flat_scene([a, b], 16, 16, depths=depths)
    scene["albedo"] = torch.tensor([[[0.2]] * 3 + [[0.9]] * 3])
    if backend == "reference":
        image, ids = _reference(scene)
        image, ids = image[0, 0], ids[0]
    else:
        out = _render(scene, backend)
        image, ids = out.image[0, 0].numpy(), out.face_ids[0].numpy()
    near = 0 if near_first else 1
    only_a = _flat_scene([a], 16, 16)
    only_b = _flat_scene([b], 16, 16)
    covered_a = _render(only_a, "torch").face_ids[0].numpy() >= 0
    covered_b = _render(only_b, "torch").face_ids[0].numpy() >= 0
    overlap = covered_a & covered_b
    assert overlap.sum() > 10
    assert (ids[overlap] == near).all()
    assert (ids[covered_a & ~covered_b] == 0).all() and (ids[covered_b & ~covered_a] == 1).all()
    np.testing.assert_allclose(image[ids == 0], 0.2, atol=1e-6)
    np.testing.assert_allclose(image[ids == 1], 0.9, atol=1e-6)


@pytest.mark.parametrize("backend", ["numba", "torch", "reference"])
def test_exact_depth_tie_goes_to_lower_face_index(backend):
    triangle = [(1.0, 1.0), (14.0, 2.0), (3.0, 14.0)]
    scene = _flat_scene([triangle, triangle], 16, 16)
    ids = _reference(scene)[1] if backend == "reference" else _render(scene, backend).face_ids
    ids = np.asarray(ids)
    assert (ids >= 0).sum() > 20 and set(np.unique(ids)) == {-1, 0}


@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("light_angle", [0.0, 0.6, 1.2, 2.0])
def test_flat_lit_triangle_has_lambertian_value(backend, light_angle):
    scene = _flat_scene([[(1.0, 1.0), (15.0, 1.0), (1.0, 15.0)]], 16, 16, albedo=0.8)
    scene["light_direction"] = torch.tensor([[math.sin(light_angle), 0.0, math.cos(light_angle)]])
    out = _render(scene, backend, ambient=0.3, diffuse=0.6)
    expected = 0.8 * (0.3 + 0.6 * max(0.0, math.cos(light_angle)))
    values = out.image[0, 0][out.face_ids[0] >= 0]
    assert values.numel() > 50
    torch.testing.assert_close(values, torch.full_like(values, expected), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_azimuth_turns_the_normal_away_from_a_frontal_light(backend):
    # A square facing +z, turned by azimuth a about y, lit from +z: cos(a) of the diffuse term.
    square = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    azimuth = torch.tensor([0.0, 0.5, -1.0])
    out = render_mesh(
        square.expand(3, 4, 3),
        faces,
        torch.ones(3, 4, 1),
        rotation=rotation_matrix(azimuth, torch.zeros(3)),
        scale=1.0,
        offset=torch.zeros(3, 2),
        light_direction=torch.tensor([[0.0, 0.0, 1.0]]).expand(3, 3),
        ambient=0.2,
        diffuse=0.8,
        image_size=16,
        backend=backend,
    )
    for i, a in enumerate(azimuth.tolist()):
        values = out.image[i, 0][out.face_ids[i] >= 0]
        assert values.numel() > 10
        torch.testing.assert_close(values, torch.full_like(values, 0.2 + 0.8 * math.cos(a)))


def test_rotation_matrix_conventions():
    angles = torch.linspace(-3, 3, 7)
    rotation = rotation_matrix(angles[:, None], angles[None, :])
    assert rotation.shape == (7, 7, 3, 3)
    identity = torch.eye(3).expand(7, 7, 3, 3)
    torch.testing.assert_close(rotation @ rotation.transpose(-1, -2), identity, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(7, 7), atol=1e-5, rtol=0)
    nose = torch.tensor([0.0, 0.0, 1.0])
    turned = rotation_matrix(0.3, 0.0) @ nose
    assert turned[0] > 0 and abs(turned[1]) < 1e-7  # positive azimuth: toward viewer's right
    tilted = rotation_matrix(0.0, 0.3) @ nose
    assert tilted[1] > 0 and abs(tilted[0]) < 1e-7  # positive elevation: up
    both = rotation_matrix(torch.tensor(0.4), torch.tensor(-0.2))
    expected_rx = torch.tensor(
        [[1.0, 0, 0], [0, math.cos(-0.2), math.sin(-0.2)], [0, -math.sin(-0.2), math.cos(-0.2)]]
    )
    expected_ry = torch.tensor(
        [[math.cos(0.4), 0, math.sin(0.4)], [0, 1.0, 0], [-math.sin(0.4), 0, math.cos(0.4)]]
    )
    torch.testing.assert_close(both, expected_rx @ expected_ry)


@pytest.mark.parametrize("backend", ["numba", "torch", "reference"])
def test_backface_culling(backend):
    front = [(2.0, 2.0), (2.0, 14.0), (14.0, 2.0)]
    scene = _flat_scene([front], 16, 16)
    scene["faces"] = scene["faces"].flip(1)  # reversed winding: faces away from the camera

    def render(**options):
        if backend == "reference":
            image, ids = _reference(scene, **options)
            return torch.from_numpy(image), torch.from_numpy(ids)
        out = _render(scene, backend, **options)
        return out.image, out.face_ids

    image, ids = render(background=0.1)
    assert (ids == -1).all() and (image == 0.1).all()
    image, ids = render(cull_backfaces=False, ambient=0.3, diffuse=0.7)
    covered = ids[0] >= 0
    assert covered.sum() > 30
    # Its normal points away from the frontal light: ambient only.
    torch.testing.assert_close(
        image[0, 0][covered].double(),
        torch.full((int(covered.sum()),), 0.8 * 0.3, dtype=torch.double),
    )


@pytest.mark.parametrize("blur", [0.0, 0.7])
@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_bad_triangles_draw_nothing_and_make_no_nan(backend, blur):
    good = [[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]
    nan = float("nan")
    inf = float("inf")
    vertices = torch.tensor(
        [
            *good,  # 0: drawn
            [-0.5, -0.5, 0.0],
            [0.5, 0.5, 0.0],
            [0.0, 0.0, 0.0],  # 1: collinear (zero area)
            [3.0, 3.0, 0.0],
            [3.5, 3.0, 0.0],
            [3.0, 3.5, 0.0],  # 2: off-screen
            [-0.9, -0.9, 20.0],
            [0.9, -0.9, 20.0],
            [0.0, 0.9, 20.0],  # 3: behind the camera
            [-0.5, 0.0, 0.0],
            [nan, 0.0, 0.0],
            [-0.5, 0.5, 0.0],  # 4: a NaN vertex
            [0.0, -0.9, 0.0],
            [0.5, -0.9, 0.0],
            [0.0, inf, 0.0],  # 5: an infinite vertex
            [1e30, -1e30, 0.0],
            [1e30, 1e30, 0.0],
            [-1e30, 0.0, 0.0],  # 6: huge (overflows)
            [0.2, 0.2, 0.0],
            [0.2, 0.2, 0.0],
            [0.2, 0.2, 0.0],  # 7: a point
        ]
    )[None]
    faces = torch.arange(24).reshape(8, 3)
    # Triangle 8 shares the NaN vertex with a good one: its other normals must stay finite.
    faces = torch.cat([faces, torch.tensor([[12, 0, 14]]), torch.tensor([[0, 1, 2]])])
    out = render_mesh(
        vertices,
        faces,
        torch.full((1, 24, 3), 0.5),
        rotation=torch.eye(3)[None],
        scale=1.0,
        offset=torch.zeros(1, 2),
        light_direction=torch.tensor([[0.0, 0.0, 1.0]]),
        image_size=32,
        background=0.25,
        backend=backend,
        silhouette_blur=blur,
    )
    assert torch.isfinite(out.image).all()
    drawn = set(out.face_ids.unique().tolist())
    # Face 9 repeats face 0 (same depth): face 0 keeps every pixel by the lower-index rule.
    assert drawn <= {-1, 0, 8} and 0 in drawn and 8 in drawn
    background = out.image[0][:, out.face_ids[0] == -1]
    if blur == 0:
        assert (background == 0.25).all()
    else:  # the halo of the drawn triangles only: most uncovered pixels stay background
        assert (background != 0.25).any() and (background == 0.25).float().mean() > 0.5


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_triangle_larger_than_the_image_covers_every_pixel(backend):
    vertices = torch.tensor([[[-50.0, -50.0, 0.0], [50.0, -50.0, 0.0], [0.0, 80.0, 0.0]]])
    out = render_mesh(
        vertices,
        torch.tensor([[0, 1, 2]]),
        torch.ones(1, 3, 1),
        rotation=torch.eye(3)[None],
        scale=1.0,
        offset=torch.zeros(1, 2),
        light_direction=torch.tensor([[0.0, 0.0, 1.0]]),
        image_size=(40, 50),
        backend=backend,
    )
    assert (out.face_ids == 0).all()
    torch.testing.assert_close(out.image, torch.ones_like(out.image))


def test_torch_chunking_gives_the_same_face_ids(monkeypatch):
    # Many tiny triangles plus a few large ones, rendered with a candidate budget so small that
    # every bucket is split into many chunks.
    scene = _random_soup(6, n_scenes=2, n_triangles=300, channels=1)
    scene["vertices"][:, :9] *= 4  # three large triangles
    expected = _render(scene, "numba", image_size=(48, 40))
    monkeypatch.setattr(_torch_raster, "_CANDIDATE_BUDGET", 64)
    got = _render(scene, "torch", image_size=(48, 40))
    np.testing.assert_array_equal(got.face_ids.numpy(), expected.face_ids.numpy())
    np.testing.assert_allclose(got.image.numpy(), expected.image.numpy(), atol=2e-6)


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_closed_mesh_has_no_holes(backend):
    # Shared edges get exactly negated edge functions: no pixel inside the silhouette is lost.
    vertices, faces = _uv_sphere(24, 48, radius=0.8)
    scene = dict(
        vertices=vertices[None],
        faces=faces,
        albedo=torch.ones(1, len(vertices), 1),
        rotation=rotation_matrix(torch.tensor([0.37]), torch.tensor([0.21])),
        scale=1.0,
        offset=torch.zeros(1, 2),
        light_direction=torch.tensor([[0.0, 0.0, 1.0]]),
    )
    for cull in (True, False):
        ids = _render(scene, backend, image_size=64, cull_backfaces=cull).face_ids[0]
        rows, cols = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
        radius_px = torch.hypot(rows - 32, cols - 32)
        # The polygonal silhouette lies between radius * cos(pi / 48) and the radius (25.6 px).
        assert (ids[radius_px < 25.0] >= 0).all()
        assert (ids[radius_px > 25.7] == -1).all()


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_empty_batch_and_empty_mesh(backend):
    kwargs = dict(
        rotation=torch.eye(3)[None],
        scale=1.0,
        offset=torch.zeros(1, 2),
        light_direction=torch.tensor([[0.0, 0.0, 1.0]]),
        image_size=(5, 7),
        background=0.3,
        backend=backend,
    )
    out = render_mesh(
        torch.zeros(1, 0, 3), torch.zeros(0, 3, dtype=torch.long), torch.zeros(1, 0, 3), **kwargs
    )
    assert out.image.shape == (1, 3, 5, 7) and (out.image == 0.3).all()
    assert (out.face_ids == -1).all()
    kwargs.update(rotation=torch.eye(3).expand(0, 3, 3), offset=torch.zeros(0, 2))
    out = render_mesh(
        torch.zeros(0, 3, 3), torch.tensor([[0, 1, 2]]), torch.zeros(0, 3, 3), **kwargs
    )
    assert out.image.shape == (0, 3, 5, 7) and out.face_ids.shape == (0, 5, 7)


# -- batching and dispatch -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", FAST_BACKENDS)
def test_leading_batch_shape_and_broadcasting(backend):
    scene = _random_soup(7, n_scenes=6, n_triangles=20, channels=3)
    flat = _render(scene, backend, image_size=12)
    shaped = {k: v.reshape(2, 3, *v.shape[1:]) if k != "faces" else v for k, v in scene.items()}
    out = _render(shaped, backend, image_size=12)
    assert out.image.shape == (2, 3, 3, 12, 12) and out.face_ids.shape == (2, 3, 12, 12)
    torch.testing.assert_close(out.image.reshape(flat.image.shape), flat.image)
    torch.testing.assert_close(out.face_ids.reshape(flat.face_ids.shape), flat.face_ids)
    # One shared mesh under six cameras equals the mesh repeated six times.
    shared = dict(scene, vertices=scene["vertices"][0], albedo=scene["albedo"][0])
    repeated = dict(
        scene,
        vertices=scene["vertices"][:1].expand(6, -1, -1),
        albedo=scene["albedo"][:1].expand(6, -1, -1),
    )
    torch.testing.assert_close(
        _render(shared, backend, image_size=12).image,
        _render(repeated, backend, image_size=12).image,
    )


def test_auto_picks_numba_only_for_float32_cpu_without_grad(monkeypatch):
    calls = []
    original = _numba_raster.render

    def recording(**kwargs):
        calls.append(True)
        return original(**kwargs)

    monkeypatch.setattr(_numba_raster, "render", recording)
    scene = _random_soup(8, n_scenes=2, n_triangles=10, channels=1)
    out = _render(scene, "auto", image_size=8)
    assert len(calls) == 1 and not out.image.requires_grad
    scene["albedo"].requires_grad_(True)
    out = _render(scene, "auto", image_size=8)
    assert len(calls) == 1 and out.image.requires_grad
    with torch.no_grad():
        _render(scene, "auto", image_size=8)
    assert len(calls) == 2
    scene64 = {k: v.detach().double() if v.is_floating_point() else v for k, v in scene.items()}
    assert _render(scene64, "auto", image_size=8).image.dtype == torch.float64
    assert len(calls) == 2


# -- gradients -------------------------------------------------------------------------------------


def test_torch_path_gradcheck_away_from_edges():
    # Two triangles sharing an edge (so normals couple them), no pixel centre near any edge:
    # the finite differences of gradcheck (1e-6) cannot change visibility.
    vertices = torch.tensor(
        [[[-0.71, -0.60, 0.08], [0.68, -0.52, -0.16], [-0.47, 0.61, 0.25], [0.68, 0.54, -0.15]]],
        dtype=torch.float64,
    )
    faces = torch.tensor([[0, 1, 2], [2, 1, 3]])
    size = 8
    g = torch.Generator().manual_seed(0)
    albedo = torch.rand(1, 4, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    light = torch.tensor([[0.3, 0.4, 0.866]], dtype=torch.float64, requires_grad=True)
    scale = torch.tensor([0.95], dtype=torch.float64, requires_grad=True)
    offset = torch.tensor([[0.01, -0.02]], dtype=torch.float64, requires_grad=True)
    rotation = rotation_matrix(
        torch.tensor([0.1], dtype=torch.float64), torch.tensor([0.05], dtype=torch.float64)
    )
    _, screen_x, screen_y, *_ = _torch_raster.camera_transform(
        vertices, rotation, scale.detach(), offset.detach(), size, size, 10.0
    )
    screen = torch.stack([screen_x[0], screen_y[0]], dim=-1)
    centres = (
        torch.stack(
            torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="xy"), -1
        )
        .reshape(-1, 2)
        .double()
    )
    for i, j in [(0, 1), (1, 2), (2, 0), (1, 3), (3, 2)]:
        a, b = screen[i], screen[j]
        direction = (b - a) / (b - a).norm()
        distance = ((centres - a) @ torch.stack([-direction[1], direction[0]])).abs()
        assert distance.min() > 0.01, "test precondition: a pixel centre lies on an edge"

    vertices = vertices.requires_grad_(True)

    def image(vertices, albedo, light, scale, offset):
        return render_mesh(
            vertices,
            faces,
            albedo,
            rotation=rotation,
            scale=scale,
            offset=offset,
            light_direction=light,
            image_size=size,
            backend="torch",
        ).image

    out = image(vertices, albedo, light, scale, offset)
    assert out.requires_grad and (out != 0).any()
    assert torch.autograd.gradcheck(
        image, (vertices, albedo, light, scale, offset), eps=1e-6, atol=1e-6
    )


def test_vertex_normals_of_a_sphere_point_outward():
    vertices, faces = _uv_sphere(12, 24, radius=1.0)
    normals = vertex_normals(vertices[None].expand(2, -1, -1), faces)
    assert normals.shape == (2, len(vertices), 3)
    torch.testing.assert_close(normals.norm(dim=-1), torch.ones(2, len(vertices)))
    assert ((normals[0] * vertices).sum(-1) > 0.99).all()
    vertices[5] = float("nan")
    normals = vertex_normals(vertices, faces)
    assert torch.isfinite(normals).all() and (normals[5] == 0).all()


# -- bad input -------------------------------------------------------------------------------------


def _good_args() -> dict:
    return dict(
        vertices=torch.zeros(2, 4, 3),
        faces=torch.tensor([[0, 1, 2], [1, 2, 3]]),
        albedo=torch.zeros(2, 4, 3),
        rotation=torch.eye(3).expand(2, 3, 3),
        scale=torch.ones(2),
        offset=torch.zeros(2, 2),
        light_direction=torch.zeros(2, 3),
    )


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(vertices=torch.zeros(2, 4, 2)), ValueError, "vertices must have shape"),
        (dict(vertices=torch.zeros(2, 4, 3, dtype=torch.int32)), TypeError, "float32"),
        (dict(vertices=[[0.0, 0.0, 0.0]]), TypeError, "torch.Tensor"),
        (dict(faces=torch.zeros(2, 3)), TypeError, "integer"),
        (dict(faces=torch.tensor([0, 1, 2])), ValueError, "(F, 3)"),
        (dict(faces=torch.tensor([[0, 1, 4]])), ValueError, "[0, 4)"),
        (dict(faces=torch.tensor([[0, -1, 2]])), ValueError, "[0, 4)"),
        (dict(albedo=torch.zeros(2, 5, 3)), ValueError, "albedo must have shape"),
        (dict(albedo=torch.zeros(2, 4, 2)), ValueError, "C = 1 or 3"),
        (dict(albedo=torch.zeros(2, 4, 3, dtype=torch.float64)), TypeError, "share one dtype"),
        (dict(rotation=torch.eye(3)[:2]), ValueError, "rotation must have shape"),
        (dict(offset=torch.zeros(2, 3)), ValueError, "offset must have shape"),
        (dict(light_direction=torch.zeros(2, 2)), ValueError, "light_direction must have shape"),
        (dict(scale=torch.ones(3)), ValueError, "do not broadcast"),
        (dict(scale="big"), TypeError, "scale"),
        (dict(image_size=(0, 8)), ValueError, "positive"),
        (dict(image_size=(8.0, 8)), TypeError, "ints"),
        (dict(image_size="8x8"), TypeError, "image_size"),
        (dict(backend="opengl"), ValueError, "backend"),
        (dict(camera_distance=-1.0), ValueError, "camera_distance"),
        (dict(background=torch.zeros(2)), ValueError, "background"),
        (dict(cull_backfaces=1), TypeError, "cull_backfaces"),
    ],
)
def test_bad_input_raises_with_a_message(change, error, message):
    args = _good_args()
    args.update(change)
    vertices, faces, albedo = args.pop("vertices"), args.pop("faces"), args.pop("albedo")
    with pytest.raises(error, match=None) as info:
        render_mesh(vertices, faces, albedo, **args)
    assert message in str(info.value)


def test_numba_backend_refuses_what_it_cannot_do():
    args = _good_args()
    vertices, faces, albedo = args.pop("vertices"), args.pop("faces"), args.pop("albedo")
    with pytest.raises(ValueError, match="gradients"):
        render_mesh(vertices.requires_grad_(True), faces, albedo, backend="numba", **args)
    args64 = {k: v.double() for k, v in args.items()}
    with pytest.raises(TypeError, match="float32"):
        render_mesh(vertices.detach().double(), faces, albedo.double(), backend="numba", **args64)
