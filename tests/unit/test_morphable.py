"""Tests of probgraphics.morphable: the synthetic 3DMM and the Basel Face Model reader."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter

import numpy as np
import pytest
import torch

from probgraphics import morphable
from probgraphics.morphable import MorphableModel

requires_h5py = pytest.mark.skipif(
    importlib.util.find_spec("h5py") is None, reason="needs h5py (pip install probgraphics[h5])"
)


@pytest.fixture(scope="module")
def model() -> MorphableModel:
    return MorphableModel.synthetic()


def face_normals(vertices: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Unnormalized outward normals ``(..., F, 3)`` (CCW winding seen from outside)."""
    v0, v1, v2 = (vertices[..., triangles[:, i], :] for i in range(3))
    return torch.linalg.cross(v1 - v0, v2 - v0)


def signed_volume(vertices: np.ndarray, triangles: np.ndarray) -> float:
    """Volume enclosed by a closed mesh; positive when its triangles wind outward."""
    v0, v1, v2 = (vertices[triangles[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", v0, np.cross(v1, v2)).sum() / 6.0)


def nearest_vertex(model: MorphableModel, lon_deg: float, lat_deg: float) -> int:
    """The synthetic grid vertex closest in direction to (longitude, latitude) degrees."""
    lon, lat, _ = morphable._grid()
    directions = morphable._directions(lon, lat)
    target = morphable._directions(np.radians(lon_deg), np.radians(lat_deg))
    return int(np.argmax(directions @ target))


# ----------------------------------------------------------------------------------------------
# synthetic(): construction
# ----------------------------------------------------------------------------------------------


def test_synthetic_is_cached_and_deterministic(model):
    assert MorphableModel.synthetic() is model
    assert MorphableModel.synthetic(200, 200) is model
    rebuilt = morphable._build_synthetic(200, 200)
    assert rebuilt is not model
    for name in ("mean_shape", "shape_basis", "shape_std", "mean_albedo", "texture_basis",
                 "texture_std", "triangles"):  # fmt: skip
        assert torch.equal(getattr(rebuilt, name), getattr(model, name)), name


def test_synthetic_sizes_and_dtypes(model):
    assert (model.n_shape, model.n_texture) == (200, 200)
    assert 1000 <= model.n_vertices <= 1800
    assert 2000 <= model.n_triangles <= 3500
    assert model.mean_shape.shape == (model.n_vertices, 3)
    assert model.shape_basis.shape == (200, model.n_vertices, 3)
    assert model.texture_basis.shape == (200, model.n_vertices, 3)
    assert model.shape_std.shape == model.texture_std.shape == (200,)
    for tensor in (model.mean_shape, model.shape_basis, model.shape_std, model.mean_albedo,
                   model.texture_basis, model.texture_std):  # fmt: skip
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu"
    assert model.triangles.dtype == torch.int64
    assert model.name == "synthetic"


def test_smaller_synthetic_models_are_prefixes(model):
    small = MorphableModel.synthetic(10, 20)
    assert small is MorphableModel.synthetic(10, 20)
    assert (small.n_shape, small.n_texture) == (10, 20)
    torch.testing.assert_close(small.shape_basis, model.shape_basis[:10])
    torch.testing.assert_close(small.texture_std, model.texture_std[:20])
    assert torch.equal(small.mean_shape, model.mean_shape)


@pytest.mark.parametrize("bad", [-1, 201, 2.0, True, "200"])
def test_synthetic_rejects_bad_component_counts(bad):
    with pytest.raises(ValueError, match="n_shape must be an int in 0..200"):
        MorphableModel.synthetic(n_shape=bad)


# ----------------------------------------------------------------------------------------------
# synthetic(): the mesh
# ----------------------------------------------------------------------------------------------


def test_triangles_form_a_closed_consistently_oriented_mesh(model):
    triangles = model.triangles.numpy()
    assert triangles.min() >= 0 and triangles.max() < model.n_vertices
    assert all(len(set(t)) == 3 for t in triangles.tolist()), "degenerate triangle"
    assert len(np.unique(triangles)) == model.n_vertices, "unused vertex"
    # Closed and consistently wound: every directed edge appears once, and its reverse once.
    directed = Counter()
    for a, b, c in triangles.tolist():
        directed.update([(a, b), (b, c), (c, a)])
    assert max(directed.values()) == 1
    assert all((b, a) in directed for a, b in directed)
    # Euler characteristic of a sphere.
    n_edges = len(directed) // 2
    assert model.n_vertices - n_edges + model.n_triangles == 2


def test_triangles_wind_outward(model):
    vertices = model.mean_shape.double().numpy()
    triangles = model.triangles.numpy()
    volume = signed_volume(vertices, triangles)
    assert volume > 0
    # About the ellipsoid's volume (4/3 pi abc with semi-axes near 0.7, 0.88, 0.78).
    assert 1.4 < volume < 2.6
    # And locally: nearly every face normal points away from the head's centre.
    normals = face_normals(model.mean_shape.double(), model.triangles).numpy()
    centres = vertices[triangles].mean(axis=1) - vertices.mean(axis=0)
    assert (np.einsum("ij,ij->i", normals, centres) > 0).mean() > 0.97


def test_mean_shape_fits_the_unit_cube_facing_plus_z(model):
    mean = model.mean_shape
    assert mean.abs().max() <= 1.05
    extent = mean.max(0).values - mean.min(0).values
    assert extent[1] > extent[0]  # taller than wide
    assert extent.min() > 1.2  # a head, not a sheet


def test_mean_shape_is_left_right_symmetric(model):
    mean = model.mean_shape.double()
    mirrored = mean * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    nearest = torch.cdist(mirrored, mean).min(dim=1).values
    assert nearest.max() < 1e-4


def test_nose_is_the_frontmost_point_on_the_centre_line(model):
    mean = model.mean_shape
    tip = int(mean[:, 2].argmax())
    x, y, z = mean[tip].tolist()
    assert abs(x) < 0.02
    assert -0.4 < y < 0.1  # below the eyes, above the mouth
    # It protrudes: well in front of the cheeks beside it.
    cheek = mean[nearest_vertex(model, 28.0, -8.0)]
    assert z - cheek[2].item() > 0.15


def test_facial_relief(model):
    lon, lat, _ = morphable._grid()
    base = morphable._directions(lon, lat) * np.array(morphable._HEAD_AXES)
    # Relief: how far each vertex stands out of (or sinks into) the base ellipsoid.
    relief = model.mean_shape.double().norm(dim=1).numpy() - np.linalg.norm(base, axis=1)

    def at(lon_deg, lat_deg):
        return relief[nearest_vertex(model, lon_deg, lat_deg)]

    # Eye sockets are concave: sunk into the head, below the brow ridge and the cheekbone.
    for side in (-1.0, 1.0):
        assert at(side * 16, 7) < -0.02
        assert at(side * 16, 7) < at(side * 15, 16) - 0.05
        assert at(side * 16, 7) < at(side * 28, -4) - 0.05
    # The nose stands out most; lips stand out of the mouth line; the chin out of the groove.
    assert at(0, -8) > 0.1
    assert at(0, -24) > at(0, -27.5) and at(0, -30.5) > at(0, -27.5)
    assert at(0, -42) > at(0, -35.5) + 0.01
    # Ears stick out at the sides.
    assert at(90, 2) > 0.02 and at(-90, 2) > 0.02


def test_albedo_regions(model):
    albedo = model.mean_albedo
    assert albedo.min() >= 0 and albedo.max() <= 1
    luminance = albedo @ torch.tensor([0.299, 0.587, 0.114])

    def at(lon, lat):
        return nearest_vertex(model, lon, lat)

    skin = at(26, 25)  # forehead side
    assert luminance[at(16, 6)] < luminance[skin]  # iris
    assert luminance[at(15, 16.5)] < luminance[skin] - 0.15  # brow
    assert luminance[at(0, 80)] < luminance[skin] - 0.2  # hair
    lips = albedo[at(0, -27)]
    assert lips[0] > lips[1] + 0.2  # red


# ----------------------------------------------------------------------------------------------
# synthetic(): the components
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["shape", "texture"])
def test_components_are_orthogonal_with_unit_rms(model, kind):
    basis = getattr(model, f"{kind}_basis").double().reshape(200, -1)
    gram = basis @ basis.T / model.n_vertices
    torch.testing.assert_close(gram, torch.eye(200, dtype=torch.float64), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["shape", "texture"])
def test_standard_deviations_decrease(model, kind):
    std = getattr(model, f"{kind}_std")
    assert (std > 0).all()
    assert (std[1:] <= std[:-1]).all()
    # A real spread: the leading components dominate, the trailing ones still exist.
    assert std[0] > 20 * std[-1]
    assert std[-1] > 1e-5


def test_leading_shape_component_size(model):
    # Leading components move vertices by a few hundredths of the head (RMS, one std).
    assert 0.01 < model.shape_std[0] < 0.1


def test_shape_components_are_smooth_and_keep_a_face_at_three_std(model):
    mean_normals = face_normals(model.mean_shape, model.triangles)
    mean_normals = mean_normals / mean_normals.norm(dim=-1, keepdim=True)
    # Every component alone at +-3 std: no triangle turns more than 60 degrees.
    coefficients = torch.cat([3 * torch.eye(200), -3 * torch.eye(200)])
    normals = face_normals(model.vertices(coefficients), model.triangles)
    cosine = (normals / normals.norm(dim=-1, keepdim=True) * mean_normals).sum(-1)
    assert cosine.min() > 0.5
    # Typical prior samples: no triangle flips over.
    generator = torch.Generator().manual_seed(0)
    samples = model.vertices(torch.randn(200, 200, generator=generator))
    normals = face_normals(samples, model.triangles)
    assert ((normals * mean_normals).sum(-1) > 0).all()
    # And the nose stays the frontmost point, near the centre line.
    tips = samples[torch.arange(200), samples[..., 2].argmax(-1)]
    assert tips[:, 0].abs().max() < 0.1


def test_texture_varies_in_luminance(model):
    generator = torch.Generator().manual_seed(1)
    albedo = model.albedo(torch.randn(100, 200, generator=generator))
    luminance = albedo @ torch.tensor([0.299, 0.587, 0.114])
    face = nearest_vertex(model, 20, 0)
    assert luminance[:, face].std() > 0.05


# ----------------------------------------------------------------------------------------------
# vertices() / albedo()
# ----------------------------------------------------------------------------------------------


def test_zero_coefficients_give_the_means(model):
    assert torch.equal(model.vertices(torch.zeros(200)), model.mean_shape)
    assert torch.equal(model.albedo(torch.zeros(200)), model.mean_albedo)


def slow_sum(mean, basis, std, coefficients):
    """The definition, one component at a time in float64."""
    out = mean.double().clone()
    for k in range(len(std)):
        out += coefficients[k].double() * std[k].double() * basis[k].double()
    return out


def test_vertices_and_albedo_match_the_slow_sum(model):
    generator = torch.Generator().manual_seed(2)
    coefficients = torch.randn(3, 200, generator=generator)
    vertices = model.vertices(coefficients)
    albedo = model.albedo(coefficients)
    for i in range(3):
        expected = slow_sum(model.mean_shape, model.shape_basis, model.shape_std, coefficients[i])
        torch.testing.assert_close(vertices[i].double(), expected, atol=2e-6, rtol=0)
        expected = slow_sum(
            model.mean_albedo, model.texture_basis, model.texture_std, coefficients[i]
        ).clamp(0, 1)
        torch.testing.assert_close(albedo[i].double(), expected, atol=2e-6, rtol=0)


def test_batch_shapes(model):
    generator = torch.Generator().manual_seed(3)
    coefficients = torch.randn(2, 3, 200, generator=generator)
    vertices = model.vertices(coefficients)
    albedo = model.albedo(coefficients)
    assert vertices.shape == albedo.shape == (2, 3, model.n_vertices, 3)
    torch.testing.assert_close(vertices[1, 2], model.vertices(coefficients[1, 2]))
    torch.testing.assert_close(albedo[0, 1], model.albedo(coefficients[0, 1]))
    assert model.vertices(torch.zeros(0, 200)).shape == (0, model.n_vertices, 3)
    # Non-contiguous input.
    transposed = torch.randn(200, 4, generator=generator).T
    torch.testing.assert_close(model.vertices(transposed), model.vertices(transposed.contiguous()))


def test_albedo_is_clamped(model):
    generator = torch.Generator().manual_seed(4)
    albedo = model.albedo(10 * torch.randn(50, 200, generator=generator))
    assert albedo.min() == 0 and albedo.max() == 1  # the clamp is active and holds


def test_outputs_follow_the_coefficient_dtype(model):
    generator = torch.Generator().manual_seed(5)
    coefficients = torch.randn(4, 200, generator=generator)
    vertices64 = model.vertices(coefficients.double())
    assert vertices64.dtype == torch.float64
    torch.testing.assert_close(vertices64.float(), model.vertices(coefficients), atol=1e-5, rtol=0)
    assert model.vertices(np.zeros(200)).dtype == torch.float64  # numpy input is accepted


def test_gradient_flows_to_coefficients(model):
    coefficients = torch.zeros(2, 200, requires_grad=True)
    model.vertices(coefficients).sum().backward()
    expected = model.shape_std * model.shape_basis.sum(dim=(1, 2))
    torch.testing.assert_close(coefficients.grad, expected.expand(2, -1), atol=1e-4, rtol=1e-4)


def test_to_caches_copies(model):
    as_double = model.to(torch.float64)
    assert as_double is model.to(dtype=torch.float64) is model.to("cpu", torch.float64)
    assert as_double.dtype == torch.float64 and as_double.triangles.dtype == torch.int64
    assert as_double.to(dtype=torch.float32) is model
    assert model.to("cpu") is model
    torch.testing.assert_close(as_double.shape_basis.float(), model.shape_basis)
    with pytest.raises(TypeError, match="floating torch.dtype"):
        model.to(dtype=torch.int32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_follows_coefficients_to_cuda(model):
    coefficients = torch.randn(8, 200)
    on_gpu = model.vertices(coefficients.cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), model.vertices(coefficients), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("coefficients", "error", "match"),
    [
        (torch.zeros(199), ValueError, r"shape \(\.\.\., 200\).*got \(199,\)"),
        (torch.zeros(()), ValueError, r"shape \(\.\.\., 200\)"),
        (torch.zeros(200, dtype=torch.int64), TypeError, "floating"),
        ("abc", TypeError, "float tensor"),
    ],
)
def test_bad_coefficients(model, coefficients, error, match):
    with pytest.raises(error, match=match):
        model.vertices(coefficients)
    with pytest.raises(error, match=match):
        model.albedo(coefficients)


def test_constructor_validates(model):
    fields = {f: getattr(model, f) for f in ("mean_shape", "shape_basis", "shape_std",
              "mean_albedo", "texture_basis", "texture_std", "triangles")}  # fmt: skip
    bad_triangles = model.triangles.clone()
    bad_triangles[0, 0] = model.n_vertices
    with pytest.raises(ValueError, match="triangles must index vertices"):
        MorphableModel(**{**fields, "triangles": bad_triangles})
    with pytest.raises(ValueError, match="shape_basis must have shape"):
        MorphableModel(**{**fields, "shape_basis": model.shape_basis[:, :-1]})
    with pytest.raises(ValueError, match="one dtype and device"):
        MorphableModel(**{**fields, "shape_std": model.shape_std.double()})
    with pytest.raises(ValueError, match=r"mean_albedo must lie in \[0, 1\]"):
        MorphableModel(**{**fields, "mean_albedo": model.mean_albedo + 1})
    with pytest.raises(ValueError, match="int64"):
        MorphableModel(**{**fields, "triangles": model.triangles.int()})


# ----------------------------------------------------------------------------------------------
# from_bfm()
# ----------------------------------------------------------------------------------------------

# An octahedron in millimetres, off-centre, wound inward (BFM files need not be outward).
OCTAHEDRON_POINTS = np.array(
    [[90, 0, 0], [-70, 0, 0], [10, 100, 0], [10, -100, 0], [10, 0, 80], [10, 0, -80]],
    dtype=np.float64,
) + np.array([5.0, 30.0, -20.0])
OCTAHEDRON_OUTWARD = np.array(
    [[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]]
)


def bfm_arrays(n_shape: int = 4, n_texture: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_points = len(OCTAHEDRON_POINTS)
    return {
        "shape/model/mean": OCTAHEDRON_POINTS.reshape(-1),
        "shape/model/pcaBasis": rng.normal(size=(3 * n_points, n_shape)),
        "shape/model/pcaVariance": np.linspace(40.0, 10.0, n_shape),
        "color/model/mean": rng.uniform(0.2, 0.8, size=3 * n_points),
        "color/model/pcaBasis": rng.normal(size=(3 * n_points, n_texture)),
        "color/model/pcaVariance": np.linspace(0.01, 0.002, n_texture),
        "shape/representer/cells": OCTAHEDRON_OUTWARD[:, [0, 2, 1]].T.astype(np.uint32),
    }


def write_bfm(path, arrays: dict[str, np.ndarray]):
    import h5py

    with h5py.File(path, "w") as handle:
        for name, value in arrays.items():
            handle.create_dataset(name, data=value)
    return path


@requires_h5py
def test_from_bfm_round_trips_the_model(tmp_path):
    arrays = bfm_arrays()
    model = MorphableModel.from_bfm(write_bfm(tmp_path / "bfm.h5", arrays))
    assert (model.n_vertices, model.n_triangles, model.n_shape, model.n_texture) == (6, 8, 4, 3)
    assert model.name == "bfm:bfm.h5" and model.mean_shape.dtype == torch.float32

    # Centred on the bounding box, scaled by its half-extent (100 mm here).
    assert model.source_scale == pytest.approx(100.0)
    assert model.source_offset == pytest.approx((15.0, 30.0, -20.0))
    assert model.mean_shape.abs().max().item() == pytest.approx(1.0)

    # The model reproduces the file's mean + basis @ (sqrt(variance) * c), in model units.
    generator = torch.Generator().manual_seed(6)
    coefficients = torch.randn(5, 4, generator=generator).double()
    expected = (
        arrays["shape/model/mean"]
        + (coefficients.numpy() * np.sqrt(arrays["shape/model/pcaVariance"]))
        @ arrays["shape/model/pcaBasis"].T
    )
    expected = (expected.reshape(5, 6, 3) - np.array(model.source_offset)) / 100.0
    torch.testing.assert_close(
        model.vertices(coefficients), torch.from_numpy(expected), atol=1e-5, rtol=1e-5
    )
    texture = torch.randn(5, 3, generator=generator).double()
    expected = (
        arrays["color/model/mean"]
        + (texture.numpy() * np.sqrt(arrays["color/model/pcaVariance"]))
        @ arrays["color/model/pcaBasis"].T
    )
    torch.testing.assert_close(
        model.albedo(texture),
        torch.from_numpy(np.clip(expected, 0, 1).reshape(5, 6, 3)),
        atol=1e-5,
        rtol=1e-5,
    )

    # Variance -> std: std = sqrt(variance) * |column| / sqrt(N) / scale, basis of unit RMS.
    norms = np.linalg.norm(arrays["shape/model/pcaBasis"], axis=0)
    expected_std = np.sqrt(arrays["shape/model/pcaVariance"]) * norms / np.sqrt(6) / 100.0
    np.testing.assert_allclose(model.shape_std.numpy(), expected_std, rtol=1e-5)
    rms = model.shape_basis.double().pow(2).sum(dim=(1, 2)).div(6).sqrt()
    torch.testing.assert_close(rms, torch.ones(4, dtype=torch.float64), atol=1e-6, rtol=0)


@requires_h5py
def test_from_bfm_orients_triangles_outward(tmp_path):
    arrays = bfm_arrays()
    inward = MorphableModel.from_bfm(write_bfm(tmp_path / "inward.h5", arrays))
    arrays["shape/representer/cells"] = OCTAHEDRON_OUTWARD.T
    outward = MorphableModel.from_bfm(write_bfm(tmp_path / "outward.h5", arrays))
    for model in (inward, outward):
        volume = signed_volume(model.mean_shape.double().numpy(), model.triangles.numpy())
        assert volume > 0
    assert torch.equal(outward.triangles, torch.from_numpy(OCTAHEDRON_OUTWARD))


@requires_h5py
def test_from_bfm_reads_cells_either_way_round(tmp_path):
    arrays = bfm_arrays()
    by_column = MorphableModel.from_bfm(write_bfm(tmp_path / "a.h5", arrays))
    arrays["shape/representer/cells"] = arrays["shape/representer/cells"].T
    by_row = MorphableModel.from_bfm(write_bfm(tmp_path / "b.h5", arrays))
    assert torch.equal(by_column.triangles, by_row.triangles)


@requires_h5py
def test_from_bfm_truncates(tmp_path):
    path = write_bfm(tmp_path / "bfm.h5", bfm_arrays())
    full = MorphableModel.from_bfm(path)
    small = MorphableModel.from_bfm(path, n_shape=2, n_texture=1)
    assert (small.n_shape, small.n_texture) == (2, 1)
    torch.testing.assert_close(small.shape_basis, full.shape_basis[:2])
    torch.testing.assert_close(small.texture_std, full.texture_std[:1])
    with pytest.raises(ValueError, match="asked for 5 shape components but the file has only 4"):
        MorphableModel.from_bfm(path, n_shape=5)
    with pytest.raises(ValueError, match="n_texture=3 or fewer"):
        MorphableModel.from_bfm(path, n_texture=4)
    with pytest.raises(ValueError, match="n_shape must be None or an int >= 0"):
        MorphableModel.from_bfm(path, n_shape=-1)


@requires_h5py
def test_from_bfm_scales_colours_given_in_0_to_255(tmp_path):
    arrays = bfm_arrays()
    reference = MorphableModel.from_bfm(write_bfm(tmp_path / "unit.h5", arrays))
    arrays["color/model/mean"] = arrays["color/model/mean"] * 255
    arrays["color/model/pcaVariance"] = arrays["color/model/pcaVariance"] * 255**2
    scaled = MorphableModel.from_bfm(write_bfm(tmp_path / "bytes.h5", arrays))
    torch.testing.assert_close(scaled.mean_albedo, reference.mean_albedo)
    torch.testing.assert_close(scaled.texture_std, reference.texture_std)


@requires_h5py
def test_from_bfm_missing_field(tmp_path):
    arrays = bfm_arrays()
    del arrays["color/model/pcaVariance"]
    path = write_bfm(tmp_path / "partial.h5", arrays)
    with pytest.raises(KeyError, match=r"color/model/pcaVariance.*the file has: \[.*color/model/"):
        MorphableModel.from_bfm(path)


@requires_h5py
def test_from_bfm_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "model2017.h5"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MorphableModel.from_bfm(path)


@requires_h5py
def test_from_bfm_not_hdf5(tmp_path):
    path = tmp_path / "model.h5"
    path.write_text("not an HDF5 file")
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        MorphableModel.from_bfm(path)


@requires_h5py
def test_from_bfm_without_h5py(tmp_path, monkeypatch):
    path = write_bfm(tmp_path / "bfm.h5", bfm_arrays())
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` raise ImportError
    with pytest.raises(ImportError, match=r"pip install probgraphics\[h5\]"):
        MorphableModel.from_bfm(path)


@requires_h5py
@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("color/model/mean", np.full(15, 0.5), "color/model/mean has 5 points but"),
        ("shape/model/pcaBasis", np.ones((12, 4)), r"has shape \(12, 4\) but the mesh has 6"),
        ("shape/model/pcaVariance", np.ones(3), "has 3 entries but"),
        ("shape/representer/cells", np.array([[0, 1, 9]] * 4).T, r"index vertices in \[0, 9\]"),
        ("shape/representer/cells", np.zeros((4, 4), dtype=int), r"\(3, F\) or \(F, 3\)"),
        ("shape/model/mean", np.ones(17), r"\(3N,\)"),
    ],
)
@requires_h5py
def test_from_bfm_shape_mismatches(tmp_path, field, value, match):
    arrays = bfm_arrays()
    arrays[field] = value
    with pytest.raises(ValueError, match=match):
        MorphableModel.from_bfm(write_bfm(tmp_path / "bad.h5", arrays))
