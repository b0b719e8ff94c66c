"""The seed 002 (twin-tailed volumes) and seed 004 (mu-VAE) experiment scripts.

Each script runs at ``--size tiny`` into a temporary folder (its numbers mean nothing there) and
must write a markdown table, a PNG and JSON with finite, in-range values; a few of the scripts'
own functions are checked against obvious references.
"""

from __future__ import annotations

import math

import pytest
import torch


@pytest.fixture(scope="module")
def seed002(load_experiment):
    return load_experiment("seed002_volume")


@pytest.fixture(scope="module")
def seed004(load_experiment):
    return load_experiment("seed004_muvae")


# --------------------------------------------------------------------------------------------
# seed 002
# --------------------------------------------------------------------------------------------


def test_seed002_tiny_writes_sane_tables(seed002, tmp_path, experiment_outputs):
    result = seed002.main(["--size", "tiny", "--threads", "1", "--out-dir", str(tmp_path)])
    markdown, payload = experiment_outputs(tmp_path, "seed002_volume")
    assert markdown.splitlines()[2].startswith("Command: `python benchmarks/experiments/")
    assert "--size tiny" in markdown.splitlines()[2]
    settings = payload["settings"]
    volume = payload["volume"]
    for key in ("net", "nearest", "mean_volume"):
        stats = volume[key]
        assert 0.0 <= stats["mse"] <= 1.0 and math.isfinite(stats["mse_sd"])
        assert 0.0 <= stats["iou"] <= 1.0
        assert len(volume["per_item"][key]) == settings["test_pairs"]
    # The nearest neighbour's volumes are binary like the truth, so |p - t| = (p - t)^2.
    assert volume["nearest"]["mse"] == pytest.approx(volume["nearest"]["mae"], rel=1e-6)
    for test in ("t_test", "t_test_mean_volume"):
        assert volume[test]["df"] == settings["test_pairs"] - 1
        assert math.isfinite(volume[test]["t"]) and 0.0 <= volume[test]["p"] <= 1.0
    rows = payload["recognition"]["rows"]
    assert {(r["condition"], r["representation"]) for r in rows} == {
        (c, r) for c in ("pose", "light") for r in ("shape code", "whole code", "pixels")
    }
    for row in rows:
        assert 1.0 <= row["mean rank"] <= settings["gallery"]
        assert 0.0 <= row["top-1"] <= 1.0
    for by_representation in payload["recognition"]["ranks"].values():
        for ranks in by_representation.values():
            assert len(ranks) == settings["trials"]
    for text in ("| twin net |", "| nearest neighbour (pixels) |", "| pose | shape code |"):
        assert text in markdown
    assert "0.0096" in markdown and "11.08" in markdown and "1.02" in markdown
    assert "machine" in payload and result["volume"]["net"] == volume["net"]


def test_identity_ranks_count_the_distractors_nearer_than_the_target(seed002):
    probe = torch.zeros(3, 2)
    target = torch.tensor([[1.0, 0.0], [0.0, 3.0], [0.0, 0.1]])
    # Distances to the probe: 0.5, 2, 4 (and the same twice over).
    pool = torch.tensor([[0.5, 0.0], [0.0, 2.0], [4.0, 0.0]]).repeat(2, 1)
    ranks = seed002.identity_ranks(probe, target, pool, 7, torch.Generator().manual_seed(0))
    # Gallery = the target plus all six pool items: 2, 4 and 0 of them are nearer.
    assert ranks.tolist() == [3, 5, 1]


def test_nearest_indices_match_brute_force(seed002):
    generator = torch.Generator().manual_seed(1)
    query = torch.rand(70, 1, 4, 4, generator=generator)
    reference = torch.rand(50, 1, 4, 4, generator=generator)
    expected = torch.stack([((reference - q).square().flatten(1).sum(1)).argmin() for q in query])
    assert torch.equal(seed002.nearest_indices(query, reference), expected)


# --------------------------------------------------------------------------------------------
# seed 004
# --------------------------------------------------------------------------------------------


def check_seed004(markdown: str, payload: dict) -> None:
    held = payload["held_out"]
    assert 0.0 <= held["iou"] <= 1.0
    # The rotation search includes no rotation, so aligning can only help.
    assert held["iou_global_rotation"] >= held["iou"] - 1e-6
    for key in ("azimuth", "azimuth_true_grids"):
        assert 0.0 <= held[key]["mean_abs_deg"] <= 180.0
    assert set(held["iou_per_class"]) == set(held["azimuth_per_class_mean_abs_deg"])
    assert math.isfinite(held["reconstruction_mse"])
    assert len(payload["held_out_azimuth_fitted_deg"]) == held["shapes"]
    assert 0.0 <= payload["baseline"]["iou"] <= 1.0
    for name in [*held["iou_per_class"], "all"]:
        assert f"| {name} |" in markdown
    assert markdown.splitlines()[2].startswith("Command: `python benchmarks/experiments/")
    assert "qualitative" in markdown


def test_seed004_tiny_trains_and_scores(seed004, tmp_path, experiment_outputs):
    seed004.main(["--size", "tiny", "--train", "--threads", "1", "--out-dir", str(tmp_path)])
    markdown, payload = experiment_outputs(tmp_path, "seed004_muvae")
    check_seed004(markdown, payload)
    assert payload["weights"].startswith("trained here")
    # A network trained here (angle search) is scored on training shapes at its searched angles.
    training = payload["training"]
    assert training is not None and 0.0 <= training["azimuth"]["mean_abs_deg"] <= 180.0
    assert training["azimuth_source"] == "search"
    assert "azimuth error training (deg)" in markdown


def test_seed004_tiny_loads_weights(seed004, tmp_path, experiment_outputs):
    from probgraphics.nets import MuVAE, save_checkpoint

    torch.manual_seed(0)
    net = MuVAE(seed004.TINY_CONFIG)
    weights = save_checkpoint(tmp_path / "net.pt", net, net.config, kind="muvae")
    out = tmp_path / "out"
    seed004.main(["--size", "tiny", "--weights", str(weights), "--out-dir", str(out)])
    markdown, payload = experiment_outputs(out, "seed004_muvae")
    check_seed004(markdown, payload)
    assert payload["weights"] == str(weights) and payload["training"] is None


def test_fit_azimuth_recovers_the_angle_of_true_grids(seed004):
    from probgraphics.data import procedural_shapes
    from probgraphics.nets import MuVAE, MuVAEConfig

    shapes = procedural_shapes(8, resolution=16, seed=3, classes=("chair",))
    net = MuVAE(MuVAEConfig(voxel_size=16, decoder_channels=(8, 8), texturizer=False))
    angles, images, errors = seed004.fit_azimuth(net, shapes.images, shapes.grids, 72)

    # An orthographic projection sums along the ray, so it is the same seen from the back
    # mirrored, and a chair is left-right symmetric: azimuths t and pi - t look alike.
    def gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.remainder(a - b + math.pi, 2 * math.pi).sub(math.pi).abs()

    gaps = torch.minimum(gap(angles, shapes.azimuth), gap(angles, math.pi - shapes.azimuth))
    assert float(gaps.max()) <= math.radians(5.0)
    assert images.shape == shapes.images.shape
    # The best candidate's image error is far below that of a view a quarter turn away.
    quarter = net.render(shapes.grids, shapes.azimuth + math.pi / 2)
    wrong = (quarter - shapes.images).square().flatten(1).mean(1)
    assert float(errors.mean()) < 0.1 * float(wrong.mean())
