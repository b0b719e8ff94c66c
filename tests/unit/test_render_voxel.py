"""Voxel grids: rotation about the vertical axis, projection, voxelization."""

from __future__ import annotations

import math

import pytest
import torch

from probgraphics.render import project, rotate_about_vertical, rotation_matrix, voxelize


def _cube(low: tuple[float, float, float], high: tuple[float, float, float]):
    """A closed box mesh, faces counter-clockwise seen from outside."""
    (x0, y0, z0), (x1, y1, z1) = low, high
    vertices = torch.tensor([[x, y, z] for x in (x0, x1) for y in (y0, y1) for z in (z0, z1)])
    # vertex index = 4 * (x is high) + 2 * (y is high) + (z is high)
    quads = [
        (0, 1, 3, 2),  # x low, normal -x
        (4, 6, 7, 5),  # x high
        (0, 4, 5, 1),  # y low
        (2, 3, 7, 6),  # y high
        (0, 2, 6, 4),  # z low
        (1, 5, 7, 3),  # z high
    ]
    faces = [[a, b, c] for a, b, c, d in quads] + [[a, c, d] for a, b, c, d in quads]
    return vertices, torch.tensor(faces)


def _sphere(n_rings: int, n_segments: int, radius: float):
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

    def ring(i: int, j: int) -> int:
        return 1 + (i - 1) * n_segments + j % n_segments

    faces = []
    for j in range(n_segments):
        faces.append([0, ring(1, j), ring(1, j + 1)])
        faces.append([len(vertices) - 1, ring(n_rings - 1, j + 1), ring(n_rings - 1, j)])
    for i in range(1, n_rings - 1):
        for j in range(n_segments):
            faces.append([ring(i, j), ring(i + 1, j), ring(i + 1, j + 1)])
            faces.append([ring(i, j), ring(i + 1, j + 1), ring(i, j + 1)])
    return torch.tensor(vertices, dtype=torch.float64), torch.tensor(faces)


def _mesh_volume_and_area(vertices: torch.Tensor, faces: torch.Tensor) -> tuple[float, float]:
    a, b, c = (vertices[faces[:, k]] for k in range(3))
    volume = (a * torch.linalg.cross(b, c, dim=-1)).sum() / 6  # divergence theorem
    area = torch.linalg.cross(b - a, c - a, dim=-1).norm(dim=-1).sum() / 2
    return float(volume), float(area)


# -- rotation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_rotation_by_zero_is_identity(mode):
    grid = torch.rand(3, 9, 9, 9, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        rotate_about_vertical(grid, torch.zeros(3), mode=mode), grid, atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("size", [8, 9])
def test_quarter_turns_match_rot90(mode, size):
    grid = torch.rand(2, size, size, size, generator=torch.Generator().manual_seed(1))
    quarter = rotate_about_vertical(grid, torch.tensor([math.pi / 2, -math.pi / 2]), mode=mode)
    torch.testing.assert_close(
        quarter[0], torch.rot90(grid[0], k=1, dims=(-2, -1)), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        quarter[1], torch.rot90(grid[1], k=-1, dims=(-2, -1)), atol=1e-5, rtol=0
    )


def test_positive_azimuth_turns_the_near_side_to_the_right():
    size = 9
    grid = torch.zeros(size, size, size)
    grid[4, size - 1, 4] = 1.0  # middle row, nearest slice, centre column
    turned = rotate_about_vertical(grid, math.pi / 2, mode="nearest")
    assert turned[4, 4, size - 1] == 1 and turned.sum() == 1  # now at the right, mid-depth


def test_rotation_preserves_the_mass_of_a_centred_blob():
    size = 24
    centre = (size - 1) / 2
    y, z, x = torch.meshgrid(*(torch.arange(size, dtype=torch.float64),) * 3, indexing="ij")
    blob = torch.exp(-((x - centre) ** 2 + (y - centre) ** 2 + 0.5 * (z - centre) ** 2) / 18)
    angles = torch.tensor([0.3, 1.0, 2.5, -2.0], dtype=torch.float64)
    rotated = rotate_about_vertical(blob.expand(4, -1, -1, -1), angles)
    # Linear interpolation of a blob with a 3-voxel width changes its sum by well under 0.5%.
    torch.testing.assert_close(rotated.sum(dim=(1, 2, 3)), blob.sum().expand(4), rtol=5e-3, atol=0)
    # And the elongated blob really turned: at 90 degrees its long axis runs along x.
    turned = rotate_about_vertical(blob, math.pi / 2)
    torch.testing.assert_close(turned, blob.transpose(-1, -2), atol=1e-6, rtol=0)


def test_rotation_batches_and_broadcasts():
    g = torch.Generator().manual_seed(2)
    grid = torch.rand(2, 3, 6, 6, 6, generator=g)
    angles = torch.rand(2, 3, generator=g) * 6
    batched = rotate_about_vertical(grid, angles)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(
                batched[i, j], rotate_about_vertical(grid[i, j], angles[i, j])
            )
    shared = rotate_about_vertical(grid, 0.7)
    torch.testing.assert_close(shared, rotate_about_vertical(grid, torch.full((2, 3), 0.7)))


def test_rotation_gradcheck():
    g = torch.Generator().manual_seed(3)
    grid = torch.rand(2, 5, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    angles = torch.tensor([0.37, -1.21], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rotate_about_vertical, (grid, angles))


# -- projection ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_projection_of_a_cube(tau):
    grid = torch.zeros(2, 10, 10, 10)
    grid[0, 2:6, 3:8, 1:4] = 1.0  # rows 2..5, depth 5 voxels, columns 1..3
    image = project(grid, tau=tau)
    assert image.shape == (2, 1, 10, 10)
    expected = torch.zeros(10, 10)
    expected[2:6, 1:4] = 1 - math.exp(-tau * 5)
    torch.testing.assert_close(image[0, 0], expected)
    assert (image[1] == 0).all()
    per_item = project(grid, tau=torch.tensor([tau, 2.0]))
    torch.testing.assert_close(per_item[0], image[0])


# -- voxelization --------------------------------------------------------------------------------


def test_voxelized_aligned_cube_is_exact():
    vertices, faces = _cube((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
    occupancy = voxelize(vertices, faces, 16)
    assert occupancy.shape == (16, 16, 16) and occupancy.dtype == torch.float32
    expected = torch.zeros(16, 16, 16)
    expected[4:12, 4:12, 4:12] = 1  # voxel size 0.125: centres 4.5 .. 11.5 lie inside
    torch.testing.assert_close(occupancy, expected)


def test_voxelized_cube_axes():
    # A box in the +x, +y, +z octant: top rows, near slices, right columns.
    vertices, faces = _cube((0.35, 0.35, 0.35), (0.85, 0.85, 0.85))
    occupancy = voxelize(vertices[None], faces, 10)[0]
    expected = torch.zeros(10, 10, 10)
    # Voxel centres at -0.9 + 0.2 k (x, z) and 0.9 - 0.2 j (y): 0.5 and 0.7 are inside.
    expected[1:3, 7:9, 7:9] = 1
    torch.testing.assert_close(occupancy, expected)


@pytest.mark.parametrize("resolution", [20, 31])
def test_voxelized_sphere_volume(resolution):
    vertices, faces = _sphere(24, 48, radius=0.8)
    vertices = vertices + torch.tensor([0.013, -0.021, 0.007], dtype=torch.float64)
    occupancy = voxelize(vertices, faces, resolution)
    step = 2.0 / resolution
    volume, area = _mesh_volume_and_area(vertices, faces)
    measured = float(occupancy.sum()) * step**3
    # Only the ~area / step^2 voxels cut by the surface can be miscounted, each by less than its
    # volume and with either sign, so the error grows like sqrt(area) * step^2 (here a few
    # standard deviations); losing a whole layer would be ~area * step, 10x more.
    assert abs(measured - volume) < math.sqrt(area) * step**2, (measured, volume)
    # Solid: the centre column is filled from one side of the sphere to the other.
    middle = resolution // 2
    filled = occupancy[middle, :, middle].nonzero().squeeze(1)
    assert (filled.diff() == 1).all() and len(filled) >= int(1.4 / step)


def test_voxelize_matches_rotating_the_voxels():
    # An off-centre box turned a quarter about y, voxelized, equals the voxels turned by
    # rotate_about_vertical: both rotation conventions agree.
    vertices, faces = _cube((-0.7, -0.4, 0.1), (0.2, 0.6, 0.8))
    occupancy = voxelize(vertices, faces, 12)
    turned_mesh = vertices @ rotation_matrix(math.pi / 2, 0.0).T
    expected = voxelize(turned_mesh, faces, 12)
    turned = rotate_about_vertical(occupancy, math.pi / 2, mode="nearest")
    assert occupancy.sum() > 50
    torch.testing.assert_close(turned, expected)


def test_voxelize_batch_matches_single_meshes():
    vertices, faces = _cube((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
    batch = torch.stack([vertices * 0.5, vertices + 0.2, vertices * 1.5])
    occupancy = voxelize(batch, faces, 8, bounds=(-1.5, 1.5))
    assert occupancy.shape == (3, 8, 8, 8)
    for i in range(3):
        torch.testing.assert_close(occupancy[i], voxelize(batch[i], faces, 8, bounds=(-1.5, 1.5)))


def test_open_mesh_fills_toward_the_near_side():
    # A single square at z = 0 covering the middle columns: the documented parity rule fills
    # those columns from the square to the near end of the grid.
    vertices = torch.tensor(
        [[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]]
    )
    occupancy = voxelize(vertices, torch.tensor([[0, 1, 2], [0, 2, 3]]), 8)
    expected = torch.zeros(8, 8, 8)
    expected[2:6, 4:, 2:6] = 1
    torch.testing.assert_close(occupancy, expected)


def test_voxelize_skips_bad_triangles():
    vertices, faces = _cube((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
    vertices = torch.cat([vertices, torch.tensor([[float("nan"), 0.0, 0.0]])])
    faces = torch.cat([faces, torch.tensor([[0, 1, 8], [0, 0, 1]])])
    occupancy = voxelize(vertices, faces, 16)
    assert occupancy.sum() == 512


# -- bad input -----------------------------------------------------------------------------------


def test_bad_input_raises_with_a_message():
    grid = torch.zeros(2, 4, 4, 4)
    with pytest.raises(ValueError, match=r"\(\.\.\., D, D, D\)"):
        rotate_about_vertical(torch.zeros(2, 4, 4, 5), 0.0)
    with pytest.raises(TypeError, match="floating"):
        rotate_about_vertical(torch.zeros(2, 4, 4, 4, dtype=torch.long), 0.0)
    with pytest.raises(ValueError, match="mode"):
        rotate_about_vertical(grid, 0.0, mode="bicubic")
    with pytest.raises(ValueError, match="broadcast"):
        rotate_about_vertical(grid, torch.zeros(3))
    with pytest.raises(ValueError, match="positive"):
        project(grid, tau=0.0)
    vertices, faces = _cube((-0.5, -0.5, -0.5), (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="resolution"):
        voxelize(vertices, faces, 0)
    with pytest.raises(ValueError, match="low < high"):
        voxelize(vertices, faces, 8, bounds=(1.0, -1.0))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        voxelize(vertices, faces + 1, 8)
    with pytest.raises(TypeError, match="integer"):
        voxelize(vertices, faces.float(), 8)
    with pytest.raises(ValueError, match="V, 3"):
        voxelize(vertices[:, :2], faces, 8)
