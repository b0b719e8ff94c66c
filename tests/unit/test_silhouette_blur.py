"""Soft silhouettes (``render_mesh(silhouette_blur=...)``): against the slow reference, covered
pixels untouched, continuity as the mesh moves, gradients through the outline, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probgraphics import programs
from probgraphics.render import render_mesh, rotation_matrix
from tests.reference_raster import reference_render_mesh
from tests.unit.test_render_mesh import _random_soup, _sphere_scene


def _split(scene: dict) -> tuple[tuple, dict]:
    mesh = (scene["vertices"], scene["faces"], scene["albedo"])
    return mesh, {k: v for k, v in scene.items() if k not in ("vertices", "faces", "albedo")}


@pytest.mark.parametrize(
    "make, blur, cull, size",
    [
        (lambda: _random_soup(3, 2, 6, 3), 0.7, True, (14, 12)),
        (lambda: _random_soup(4, 2, 5, 1), 1.5, False, (12, 16)),
        (lambda: _sphere_scene(2, 5), 0.5, True, (16, 16)),
    ],
)
def test_halo_matches_reference(make, blur, cull, size):
    scene = {
        k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v
        for k, v in make().items()
    }
    mesh, options = _split(scene)
    options.update(image_size=size, cull_backfaces=cull)
    expected, ids = reference_render_mesh(*mesh, silhouette_blur=blur, **options)
    got = render_mesh(*mesh, backend="torch", silhouette_blur=blur, **options)
    assert (got.face_ids.numpy() == ids).all()
    hard = render_mesh(*mesh, backend="torch", **options).image.numpy()
    assert (np.abs(expected - hard) > 1e-3).sum() > 10, "test precondition: the halo shows"
    np.testing.assert_allclose(got.image.numpy(), expected, atol=1e-9, rtol=0)


@pytest.mark.parametrize(
    "make, blur, cull",
    [
        (lambda: _random_soup(6, 3, 8, 3), 0.8, True),
        (lambda: _random_soup(7, 2, 6, 1), 1.3, False),
        (lambda: _sphere_scene(3, 8), 0.5, True),
    ],
)
def test_numba_halo_matches_the_torch_halo(make, blur, cull):
    # float32 CPU inputs without gradients: render_mesh's numba path composites the halo with
    # the numba kernel (float64 inside), the torch path with torch ops in float32.
    mesh, options = _split(make())
    options.update(image_size=(20, 18), cull_backfaces=cull, silhouette_blur=blur)
    fast = render_mesh(*mesh, backend="numba", **options)
    slow = render_mesh(*mesh, backend="torch", **options)
    hard = render_mesh(*mesh, backend="numba", **{**options, "silhouette_blur": 0.0})
    assert fast.face_ids.equal(slow.face_ids)
    assert ((fast.image - hard.image).abs() > 1e-3).sum() > 10, "the halo shows"
    torch.testing.assert_close(fast.image, slow.image, atol=2e-6, rtol=0)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_covered_pixels_and_face_ids_are_the_hard_render(backend):
    scene = _sphere_scene(3, 1)
    mesh, options = _split(scene)
    hard = render_mesh(*mesh, backend=backend, image_size=24, **options)
    soft = render_mesh(*mesh, backend=backend, image_size=24, silhouette_blur=0.8, **options)
    assert soft.face_ids.equal(hard.face_ids)
    covered = (hard.face_ids >= 0)[:, None].expand_as(hard.image)
    assert soft.image[covered].equal(hard.image[covered])
    changed = (soft.image != hard.image) & ~covered
    assert changed.any(), "the halo changes some uncovered pixels"
    # Zero blur is the hard render itself.
    zero = render_mesh(*mesh, backend=backend, image_size=24, silhouette_blur=0.0, **options)
    assert zero.image.equal(hard.image)


def test_face_pixels_change_continuously_as_the_face_turns():
    """Sweep the azimuth in steps of 0.01 degree: the hard render's pixels jump (an edge
    crosses a pixel centre: face against background), the soft one's only by small amounts."""
    program_hard = programs.face(resolution=32)
    program_soft = programs.face(resolution=32, silhouette_blur=0.5)
    latents = programs.simulate(program_hard, n=1, seed=4)
    steps = 400
    azimuth = float(latents["azimuth"]) + 0.01 * torch.arange(steps, dtype=torch.float32)

    def sweep(program):
        with torch.no_grad():
            return program.render(
                shape=latents["shape"].expand(steps, -1),
                texture=latents["texture"].expand(steps, -1),
                azimuth=azimuth,
                elevation=latents["elevation"].expand(steps),
                light=latents["light"].expand(steps),
                camera=latents["camera"].expand(steps, -1),
            )

    hard_jump = sweep(program_hard).diff(dim=0).abs().amax()
    soft_jump = sweep(program_soft).diff(dim=0).abs().amax()
    assert hard_jump > 0.05, "test precondition: the hard outline crosses a pixel centre"
    assert soft_jump < hard_jump / 4, (soft_jump, hard_jump)


def test_gradient_through_the_outline_matches_finite_differences():
    # A single front-facing triangle on a background: the uncovered pixels' values depend on
    # the vertices only through the halo, which the hard path gives no gradient.
    vertices = torch.tensor(
        [[[-0.52, -0.41, 0.0], [0.47, -0.36, 0.0], [-0.05, 0.55, 0.0]]], dtype=torch.float64
    )
    faces = torch.tensor([[0, 1, 2]])
    albedo = torch.tensor([[[0.9], [0.6], [0.3]]], dtype=torch.float64)
    common = dict(
        rotation=rotation_matrix(torch.zeros(1, dtype=torch.float64), torch.zeros(1).double()),
        scale=1.0,
        offset=torch.zeros(1, 2, dtype=torch.float64),
        light_direction=torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64),
        image_size=12,
        backend="torch",
        silhouette_blur=0.9,
        background=0.1,
    )
    direction = torch.randn(vertices.shape, generator=torch.Generator().manual_seed(0)).double()
    direction[..., 2] = 0
    hard_ids = render_mesh(vertices, faces, albedo, **common).face_ids
    uncovered = (hard_ids < 0)[:, None]

    def image(v):
        return render_mesh(v, faces, albedo, **common).image

    v = vertices.clone().requires_grad_(True)
    weights = torch.rand(1, 1, 12, 12, generator=torch.Generator().manual_seed(1)).double()
    weights = weights * uncovered  # only the halo: visibility is fixed for small moves there
    (image(v) * weights).sum().backward()
    analytic = (v.grad * direction).sum()
    h = 1e-6
    for sign in (1, -1):  # the move must not change which pixels are covered
        moved = render_mesh(vertices + sign * h * direction, faces, albedo, **common)
        assert moved.face_ids.equal(hard_ids)
    plus = image(vertices + h * direction)
    minus = image(vertices - h * direction)
    numeric = ((plus - minus) * weights).sum() / (2 * h)
    assert analytic.abs() > 1e-3, "test precondition: the halo depends on the vertices"
    assert torch.allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "value, error, message",
    [
        (-0.5, ValueError, "silhouette_blur must be finite and >= 0"),
        (float("nan"), ValueError, "silhouette_blur must be finite and >= 0"),
        ("wide", TypeError, "silhouette_blur must be a float >= 0"),
        (True, TypeError, "silhouette_blur must be a float >= 0"),
    ],
)
def test_bad_blur_is_refused(value, error, message):
    mesh, options = _split(_sphere_scene(1, 0))
    with pytest.raises(error, match=message):
        render_mesh(*mesh, silhouette_blur=value, **options)
    with pytest.raises(error, match=message):
        programs.face(resolution=16, silhouette_blur=value)


@pytest.mark.parametrize("blur", [0.0, 0.6])
def test_forward_mode_tangents_take_the_torch_path(blur):
    """``backend="auto"`` with forward-mode dual inputs (no requires_grad) must not pick the
    numba kernel, which would drop the tangents: jvp equals the reverse-mode product."""
    mesh, options = _split(_sphere_scene(1, 2))
    vertices = mesh[0]
    direction = torch.randn(vertices.shape, generator=torch.Generator().manual_seed(3))
    weights = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))

    def image(v):
        return render_mesh(v, *mesh[1:], image_size=16, silhouette_blur=blur, **options).image

    _, tangent = torch.func.jvp(image, (vertices,), (direction,))
    v = vertices.clone().requires_grad_(True)
    (image(v) * weights).sum().backward()
    assert (tangent * weights).sum().abs() > 1e-3
    torch.testing.assert_close((tangent * weights).sum(), (v.grad * direction).sum())
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(vertices, direction)
        with pytest.raises(ValueError, match="forward-mode tangent"):
            render_mesh(dual, *mesh[1:], image_size=16, backend="numba", **options)
