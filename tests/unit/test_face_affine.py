"""FaceProgram.affine_observation: the render as an affine function of the texture."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import forward_ad

from probgraphics import programs

HELD = ("shape", "azimuth", "elevation", "light", "camera")


def _scenes(program, n: int, seed: int, texture_scale: float) -> dict[str, torch.Tensor]:
    """Prior latents of ``n`` scenes with the texture scaled by ``texture_scale``."""
    draws = programs.simulate(program, n=n, seed=seed)
    latents = {name: draws[name] for name in program.latent_sites}
    latents["texture"] = latents["texture"] * texture_scale
    return latents


def _pre_clamp_albedo(program, texture: torch.Tensor) -> torch.Tensor:
    """``mean + texture @ basis`` before the clamp to [0, 1], ``(B, V * C)``."""
    _, _, albedo_mean, albedo_matrix, _ = program._basis(torch.device("cpu"))
    return albedo_mean + texture @ albedo_matrix


def _predict(offset: torch.Tensor, matrix: torch.Tensor, texture: torch.Tensor) -> torch.Tensor:
    return offset + (matrix @ texture[..., None]).squeeze(-1)


@pytest.mark.parametrize("color", ["gray", "rgb"])
@pytest.mark.parametrize("supersample", [1, 2])
@pytest.mark.parametrize("blur", [0.0, 0.5, 1.0])
def test_map_equals_render_where_no_albedo_is_clamped(color, supersample, blur):
    # With silhouette_blur > 0 the halo's pixels are rows of the map too: for fixed geometry
    # the halo is a weighted mean of vertex colours, linear in the texture.
    program = programs.face(
        resolution=32, color=color, supersample=supersample, silhouette_blur=blur
    )
    latents = _scenes(program, n=5, seed=3, texture_scale=0.3)
    albedo = _pre_clamp_albedo(program, latents["texture"])
    assert bool(((albedo > 0) & (albedo < 1)).all()), "the test scenes must be unclamped"

    offset, matrix = program.affine_observation("texture", latents)
    channels = 1 if color == "gray" else 3
    pixels = channels * 32 * 32
    assert offset.shape == (5, pixels) and matrix.shape == (5, pixels, 200)
    assert offset.dtype == matrix.dtype == torch.float32
    assert not offset.requires_grad and not matrix.requires_grad

    image = program.render(**latents)
    assert float(image.amax()) > 0.1  # the faces are in view: the comparison is not vacuous
    torch.testing.assert_close(
        _predict(offset, matrix, latents["texture"]), image.reshape(5, -1), atol=1e-5, rtol=0
    )
    # The background (offset 0 and no texture dependence) is where the render is 0.
    background = (matrix == 0).all(-1) & (offset == 0)
    assert bool(background.any()) and bool((image.reshape(5, -1)[background] == 0).all())
    if blur > 0:
        hard_program = programs.face(resolution=32, color=color, supersample=supersample)
        hard_offset, hard_matrix = hard_program.affine_observation("texture", latents)
        hard = hard_program.render(**latents).reshape(5, -1)
        halo = (image.reshape(5, -1) - hard).abs() > 1e-3
        assert int(halo.sum()) > 50, "test precondition: the halo shows"
        hard_rows = (hard_matrix != 0).any(-1)
        rows = (matrix != 0).any(-1)
        assert bool((rows | ~hard_rows).all()) and int((rows & ~hard_rows).sum()) > 50
        if supersample == 1:
            # A covered pixel keeps the hard map's row: the halo only adds uncovered ones.
            assert torch.equal(matrix[hard_rows], hard_matrix[hard_rows])
            assert torch.equal(offset[hard_rows], hard_offset[hard_rows])


@pytest.mark.parametrize("blur", [0.0, 0.5])
def test_numba_and_torch_visibility_give_one_map(blur):
    latents = _scenes(programs.face(resolution=32), n=3, seed=4, texture_scale=0.3)
    numba = programs.face(resolution=32, backend="numba", silhouette_blur=blur)
    torch_ = programs.face(resolution=32, backend="torch", silhouette_blur=blur)
    numba = numba.affine_observation("texture", latents)
    torch_ = torch_.affine_observation("texture", latents)
    for a, b in zip(numba, torch_, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("blur, supersample", [(0.0, 1), (0.5, 1), (1.0, 2)])
def test_matrix_is_the_autograd_jacobian_of_render(blur, supersample):
    # Few texture components keep the forward-mode columns cheap; the map's code is the same.
    program = programs.face(
        resolution=32,
        n_texture=12,
        backend="torch",
        silhouette_blur=blur,
        supersample=supersample,
    )
    latents = _scenes(program, n=1, seed=5, texture_scale=0.3)
    texture = latents["texture"][0]
    albedo = _pre_clamp_albedo(program, texture)
    assert bool(((albedo > 0) & (albedo < 1)).all())
    held = {name: latents[name][0] for name in HELD}

    columns = []
    for k in range(12):
        with forward_ad.dual_level():
            dual = forward_ad.make_dual(texture, torch.eye(12)[k])
            out = program.render(texture=dual, **held)
            columns.append(forward_ad.unpack_dual(out).tangent.reshape(-1))
    jacobian = torch.stack(columns, dim=-1)  # (P, K)
    assert float(jacobian.abs().amax()) > 1e-3

    offset, matrix = program.affine_observation("texture", latents)
    torch.testing.assert_close(matrix[0], jacobian, atol=1e-5, rtol=0)
    # And the offset is the render at texture = 0.
    zero = program.render(texture=torch.zeros(12), **held).reshape(-1)
    torch.testing.assert_close(offset[0], zero, atol=1e-6, rtol=0)


def test_map_ignores_the_clamp():
    program = programs.face(resolution=32)
    small = _scenes(program, n=4, seed=6, texture_scale=0.3)
    large = dict(small, texture=small["texture"] * 10.0)
    assert bool((_pre_clamp_albedo(program, large["texture"]) < 0).any())

    offset, matrix = program.affine_observation("texture", large)
    # The value of the mapped site is ignored: the same map as at the small texture.
    offset_small, matrix_small = program.affine_observation("texture", small)
    assert torch.equal(offset, offset_small) and torch.equal(matrix, matrix_small)
    # With the clamp active the unclamped map leaves [0, 1] and differs from the render...
    predicted = _predict(offset, matrix, large["texture"])
    rendered = program.render(**large).reshape(4, -1)
    assert float((predicted - rendered).abs().amax()) > 0.1
    assert float(predicted.amin()) < 0 or float(predicted.amax()) > 1
    # ... and still matches it at the unclamped point.
    torch.testing.assert_close(
        _predict(offset, matrix, small["texture"]),
        program.render(**small).reshape(4, -1),
        atol=1e-5,
        rtol=0,
    )


def test_bad_input_is_refused_with_a_helpful_message():
    program = programs.face(resolution=16)
    latents = _scenes(program, n=2, seed=7, texture_scale=0.3)
    for site in ("shape", "azimuth", "image", "textures"):
        with pytest.raises(ValueError, match=r"affine function of \('texture',\) only.*" + site):
            program.affine_observation(site, latents)
    missing = {k: v for k, v in latents.items() if k not in ("camera", "light")}
    with pytest.raises(ValueError, match=r"missing the site\(s\) \['light', 'camera'\]"):
        program.affine_observation("texture", missing)
    # The mapped site's own value is not needed.
    without_texture = {k: v for k, v in latents.items() if k != "texture"}
    offset, _ = program.affine_observation("texture", without_texture)
    assert offset.shape == (2, 16 * 16)
