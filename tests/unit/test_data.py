"""Training data drawn from programs: random scenes, one-factor batches, image-volume pairs,
procedural voxel shapes."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from probgraphics import data, programs
from probgraphics.nets import DCIGN, DCIGNConfig
from probgraphics.programs.dcign import dcign
from probgraphics.render.voxel import project, rotate_about_vertical, voxelize

RES = 16


@pytest.fixture(scope="module")
def face():
    return programs.face(resolution=RES)


def toy_program():
    """Four factors, one of which (``b``) has a prior that depends on another (``a``)."""
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(a, 1.0))
    c = pyro.sample("c", dist.Normal(0.0, 1.0))
    d = pyro.sample("d", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    values = torch.stack(torch.broadcast_tensors(a, b, c, d[..., 0], d[..., 1]), dim=-1)
    render = pyro.deterministic("render", torch.sigmoid(values)[..., None, None, :], event_dim=3)
    return pyro.sample("image", dist.Normal(render, 0.1).to_event(3))


TOY_FACTORS = {"a": ["a"], "b": ["b"], "c": ["c"], "d": ["d"]}


# -- random scenes ---------------------------------------------------------------------------


def test_random_scenes_shapes_and_determinism(face):
    first = data.random_scenes(face, 3, seed=0)
    again = data.random_scenes(face, 3, seed=0)
    assert first["image"].shape == (3, 1, RES, RES) and first["shape"].shape == (3, 200)
    for name in first:
        torch.testing.assert_close(first[name], again[name], atol=0, rtol=0)
    assert not torch.equal(first["shape"], data.random_scenes(face, 3, seed=1)["shape"])
    with pytest.raises(ValueError, match="n must be"):
        data.random_scenes(face, 0, seed=0)
    with pytest.raises(TypeError, match="seed"):
        data.random_scenes(face, 2, seed=None)


# -- one-factor batches ----------------------------------------------------------------------


def _varies(value: torch.Tensor) -> bool:
    return not torch.equal(value, value[:1].expand_as(value))


@pytest.mark.parametrize("factor", ["azimuth", "elevation", "light", "intrinsic"])
def test_face_batches_vary_only_the_named_factor(face, factor):
    batches = data.one_factor_batches(face, 5, seed=0)
    assert batches.factors == data.FACE_FACTORS
    batch = batches.draw(factor, seed=11)
    assert batch.factor == factor
    assert batch.images.shape == (5, 1, RES, RES)
    assert set(batch.latents) == {"shape", "texture", "azimuth", "elevation", "light", "camera"}
    for name, value in batch.latents.items():
        assert value.shape[0] == 5
        assert _varies(value) == (name in data.FACE_FACTORS[factor]), name
    # The images are the noise-free renders of exactly these latents.
    torch.testing.assert_close(batch.images, face.render(**batch.latents), atol=1e-5, rtol=0)


def test_batches_are_reproducible_and_iterate(face):
    first = [(b.factor, b.images) for b in data.one_factor_batches(face, 3, seed=5, n_batches=4)]
    again = [(b.factor, b.images) for b in data.one_factor_batches(face, 3, seed=5, n_batches=4)]
    assert len(first) == 4
    for (f1, i1), (f2, i2) in zip(first, again, strict=True):
        assert f1 == f2 and torch.equal(i1, i2)
    other = next(data.one_factor_batches(face, 3, seed=6))
    assert not torch.equal(other.images, first[0][1])


def test_noisy_images_on_request(face):
    batch = data.one_factor_batches(face, 3, seed=0, images="image").draw("light", seed=1)
    rendered = face.render(**batch.latents)
    residual = batch.images - rendered
    assert residual.abs().max() > 0 and residual.std() == pytest.approx(face.noise, rel=0.3)


def test_factor_frequencies_match_the_ratio():
    n = 1000
    counts = dict.fromkeys(TOY_FACTORS, 0)
    for batch in data.one_factor_batches(toy_program, 2, seed=0, factors=TOY_FACTORS, n_batches=n):
        counts[batch.factor] += 1
    observed = torch.tensor([counts[f] for f in TOY_FACTORS], dtype=torch.float64)
    expected = n * torch.tensor(data.FACE_RATIO, dtype=torch.float64) / sum(data.FACE_RATIO)
    chi_square = float(((observed - expected) ** 2 / expected).sum())
    # Pearson's statistic is chi-square with 3 degrees of freedom under the ratio.
    assert chi_square < stats.chi2.ppf(0.999, df=3), (counts, chi_square)


def test_shared_latents_are_draws_from_their_priors():
    """The shared value of a latent is a prior draw, also when its prior depends on another
    shared or varying latent: b ~ N(a, 1) is drawn given the first scene's a."""
    n = 600
    batches = data.one_factor_batches(toy_program, 3, seed=1, factors=TOY_FACTORS)
    shared_c, b_minus_a = [], []
    for k in range(n):
        factor = ("a", "b", "d")[k % 3]
        batch = batches.draw(factor, seed=k)
        latents = batch.latents
        assert not _varies(latents["c"]) and _varies(latents[factor])
        shared_c.append(float(latents["c"][0]))
        b_minus_a.append(float(latents["b"][0] - latents["a"][0]))
    for sample in (torch.tensor(shared_c), torch.tensor(b_minus_a)):
        # N(0, 1): the mean within 4 standard errors, the variance within 4 of its SEs.
        assert abs(float(sample.mean())) < 4 / math.sqrt(n)
        assert abs(float(sample.var()) - 1) < 4 * math.sqrt(2 / (n - 1))


def test_dcign_program_default_factors():
    torch.manual_seed(0)
    net = DCIGN(
        DCIGNConfig(image_size=16, channels=(4,), decoder_channels=(4,), padding=2, code_size=6)
    )
    program = dcign(net)
    batches = data.one_factor_batches(program, 4, seed=0)
    assert batches.factors == {
        name: (name,) for name in ("azimuth", "elevation", "light", "intrinsic")
    }
    batch = batches.draw("elevation", seed=0)
    assert batch.images.shape == (4, 1, 16, 16)
    assert _varies(batch.latents["elevation"]) and not _varies(batch.latents["intrinsic"])


def test_one_factor_validation(face):
    with pytest.raises(ValueError, match="batch_size"):
        data.one_factor_batches(face, 1, seed=0)
    with pytest.raises(ValueError, match="one positive"):
        data.one_factor_batches(face, 4, seed=0, ratio=(1, 1, 10))
    with pytest.raises(ValueError, match="one positive"):
        data.one_factor_batches(face, 4, seed=0, ratio=(1, 0, 1, 10))
    with pytest.raises(ValueError, match="disjoint"):
        data.one_factor_batches(
            face, 4, seed=0, factors={"x": ["shape"], "y": ["shape"]}, ratio=(1, 1)
        )
    with pytest.raises(ValueError, match="no default factors"):
        data.one_factor_batches(toy_program, 4, seed=0)
    with pytest.raises(ValueError, match="images"):
        data.one_factor_batches(face, 4, seed=0, images="depth")
    bad = data.one_factor_batches(
        toy_program, 2, seed=0, factors={"x": ["a"], "y": ["zz"]}, ratio=(1, 1)
    )
    with pytest.raises(ValueError, match=r"not latent sites.*\['zz'\]"):
        next(bad)
    with pytest.raises(KeyError, match="unknown factor"):
        bad.draw("z", seed=0)


# -- image-volume pairs ----------------------------------------------------------------------


def test_image_volume_pairs(face):
    pairs = data.image_volume_pairs(face, 5, resolution=12, seed=0, chunk_size=2)
    assert pairs.images.shape == (5, 1, RES, RES)
    assert pairs.volumes.shape == (5, 12, 12, 12) and pairs.volumes.dtype == torch.float32
    assert set(pairs.volumes.unique().tolist()) <= {0.0, 1.0}
    fill = pairs.volumes.mean(dim=(1, 2, 3))
    assert torch.all(fill > 0.03) and torch.all(fill < 0.6), fill
    # Canonical pose: the volume is the face's own mesh, whatever the pose of its image.
    expected = voxelize(
        face.model.vertices(pairs.latents["shape"]), face.model.triangles, 12, bounds=(-1.2, 1.2)
    )
    torch.testing.assert_close(pairs.volumes, expected, atol=0, rtol=0)
    torch.testing.assert_close(pairs.images, face.render(**pairs.latents), atol=1e-5, rtol=0)
    again = data.image_volume_pairs(face, 5, resolution=12, seed=0)
    assert torch.equal(again.volumes, pairs.volumes) and torch.equal(again.images, pairs.images)


def test_image_volume_pairs_with_fewer_latent_components():
    program = programs.face(resolution=8, n_shape=10, n_texture=10)
    pairs = data.image_volume_pairs(program, 2, resolution=8, seed=1)
    padded = torch.cat([pairs.latents["shape"], torch.zeros(2, 190)], dim=-1)
    expected = voxelize(
        program.model.vertices(padded), program.model.triangles, 8, bounds=(-1.2, 1.2)
    )
    assert torch.equal(pairs.volumes, expected) and pairs.volumes.sum() > 0
    with pytest.raises(TypeError, match="face program"):
        data.image_volume_pairs(toy_program, 2, seed=0)


# -- procedural shapes -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes():
    return data.procedural_shapes(200, seed=0)


def test_shapes_types_determinism_and_images(shapes):
    n, r = 200, 28
    assert shapes.grids.shape == (n, r, r, r) and shapes.grids.dtype == torch.float32
    assert shapes.images.shape == (n, 1, r, r)
    assert shapes.azimuth.shape == (n,) and torch.all(shapes.azimuth.abs() <= math.pi)
    assert shapes.labels.dtype == torch.int64 and shapes.classes == data.SHAPE_CLASSES
    assert set(shapes.grids.unique().tolist()) == {0.0, 1.0}
    assert set(shapes.labels.tolist()) == {0, 1, 2, 3}
    assert torch.all(shapes.grids.sum(dim=(1, 2, 3)) > 20)
    again = data.procedural_shapes(200, seed=0)
    for left, right in zip(shapes[:4], again[:4], strict=True):
        assert torch.equal(left, right)
    assert not torch.equal(data.procedural_shapes(200, seed=1).grids, shapes.grids)
    expected = project(rotate_about_vertical(shapes.grids, shapes.azimuth))
    torch.testing.assert_close(shapes.images, expected, atol=1e-6, rtol=0)


def _of(shapes, name: str) -> torch.Tensor:
    return shapes.grids[shapes.labels == shapes.classes.index(name)]


def _occupied_rows(grid: torch.Tensor) -> torch.Tensor:
    return (grid.sum(dim=(1, 2)) > 0).nonzero()[:, 0]


def test_shapes_are_centred_and_fit_the_rotation_circle(shapes):
    r = 28
    coord = (torch.arange(r) + 0.5) * 2 / r - 1
    radius = (coord[:, None] ** 2 + coord[None, :] ** 2).sqrt()  # (z, x)
    occupied_columns = shapes.grids.amax(dim=1) > 0  # (n, z, x)
    assert radius.expand_as(occupied_columns)[occupied_columns].max() < 0.9 + 2 / r
    for grid in shapes.grids:
        rows = _occupied_rows(grid)
        # The vertical extent is centred to within one voxel.
        assert abs(float(rows.min() + rows.max()) / 2 - (r - 1) / 2) <= 1.0


def test_cups_are_hollow(shapes):
    cups = _of(shapes, "cup")
    assert len(cups) > 10
    centre = 28 // 2
    for grid in cups:
        rows = _occupied_rows(grid)
        middle = int(rows[len(rows) // 2])
        plane = grid[middle]  # (z, x) at mid-height
        assert plane[centre - 1 : centre + 1, centre - 1 : centre + 1].sum() == 0
        # ... while the wall surrounds the cavity on both sides along x and z.
        assert plane[centre, :centre].sum() > 0 and plane[centre, centre:].sum() > 0
        assert plane[:centre, centre].sum() > 0 and plane[centre:, centre].sum() > 0


def test_tables_are_heaviest_at_the_top_and_lamps_have_a_pole(shapes):
    for grid in _of(shapes, "table"):
        rows = _occupied_rows(grid)
        per_row = grid.sum(dim=(1, 2))
        upper = rows[: len(rows) // 3]
        lower = rows[-(len(rows) // 3) :]
        # The top slab (at least 0.9 x 0.6 units) outweighs the four legs in any row.
        assert per_row[upper].sum() > per_row[lower].sum()
        assert int(per_row.argmax()) in upper.tolist()
    centre = 28 // 2
    for grid in _of(shapes, "lamp"):
        rows = _occupied_rows(grid)
        middle = int(rows[len(rows) // 2])
        assert grid[middle, centre - 1 : centre + 1, centre - 1 : centre + 1].sum() > 0


def test_chairs_have_a_back_on_the_far_side(shapes):
    for grid in _of(shapes, "chair"):
        rows = _occupied_rows(grid)
        top = grid[rows[: len(rows) // 4]]  # (rows, z, x): the back only
        depth = top.sum(dim=(0, 2))
        assert depth[:14].sum() > 0 and depth[14:].sum() == 0


def test_shape_options_and_validation():
    cups = data.procedural_shapes(6, seed=2, classes=("cup",), resolution=16)
    assert cups.classes == ("cup",) and torch.all(cups.labels == 0)
    assert cups.grids.shape == (6, 16, 16, 16) and torch.all(cups.grids.sum(dim=(1, 2, 3)) > 0)
    nearest = data.procedural_shapes(4, seed=3, rotation_mode="nearest", tau=0.5)
    expected = project(
        rotate_about_vertical(nearest.grids, nearest.azimuth, mode="nearest"), tau=0.5
    )
    torch.testing.assert_close(nearest.images, expected)
    with pytest.raises(ValueError, match="classes"):
        data.procedural_shapes(2, seed=0, classes=("sofa",))
    with pytest.raises(ValueError, match="classes"):
        data.procedural_shapes(2, seed=0, classes=("cup", "cup"))
    with pytest.raises(ValueError, match="resolution"):
        data.procedural_shapes(2, seed=0, resolution=4)
    with pytest.raises(TypeError, match="seed"):
        data.procedural_shapes(2, seed=1.5)
