"""The seed 000 invariance (figure 9 d-f) and verification (sec. 4.2) experiment scripts.

Each script runs end to end at ``--size tiny`` into a temporary folder; the protocol's pieces
(pair correlations, the threshold search, cosine distances) are checked against slow, obvious
references.
"""

from __future__ import annotations

import math

import pytest
import torch

from probgraphics.evaluation import pearson


@pytest.fixture(scope="module")
def invariance(load_experiment):
    return load_experiment("seed000_invariance")


@pytest.fixture(scope="module")
def verification(load_experiment):
    return load_experiment("seed000_verification")


# --------------------------------------------------------------------------------------------
# seed000_invariance.py
# --------------------------------------------------------------------------------------------


def test_invariance_tiny_trains_every_network_and_writes_the_table(
    invariance, tmp_path, experiment_outputs
):
    result = invariance.main(["--size", "tiny", "--threads", "1", "--out-dir", str(tmp_path)])
    markdown, payload = experiment_outputs(tmp_path, "seed000_invariance")
    nets = list(invariance.VARIANTS)
    assert list(payload["networks"]) == nets == list(result["networks"])
    assert payload["command"].startswith("python benchmarks/experiments/seed000_invariance.py")
    assert payload["command"] in markdown
    angles = payload["settings"]["angles_deg"]
    frontal = angles.index(0.0)
    for net in nets:
        for factor in invariance.FACTORS:
            stats = payload["results"][net][factor]
            assert len(stats["mean"]) == len(angles)
            assert len(stats["per_face"]) == payload["settings"]["faces"]
            # The frontal image is its own reference; cosine distances lie in [0, 2].
            assert stats["mean"][frontal] == pytest.approx(0.0, abs=1e-9)
            assert all(0.0 <= v <= 2.0 + 1e-9 and math.isfinite(v) for v in stats["mean"])
            assert set(stats["at_abs_angle"]) == {"15", "45", "90"}
        assert 0.0 <= payload["results"][net]["between_faces"] <= 2.0
        assert payload["networks"][net]["steps"] == 5
    # One table row per network and factor, and the paper's ordering beside ours.
    table_rows = [line for line in markdown.splitlines() if line.startswith(f"| {nets[0]} |")]
    assert len(table_rows) == len(invariance.FACTORS)
    assert len(payload["table"]) == len(nets) * len(invariance.FACTORS)
    assert [row["factor"] for row in payload["ordering"]] == list(invariance.FACTORS)
    for row in payload["ordering"]:
        assert row["ours: agrees"] in ("yes", "no")
        assert row["ours, ÷ other faces: agrees"] in ("yes", "no")
        assert sorted(row["ours"].split(" < ")) == sorted(nets)
    for net in nets:
        for factor in invariance.FACTORS:
            stats = payload["results"][net][factor]
            between = payload["results"][net]["between_faces"]
            assert stats["relative_to_other_faces"] == pytest.approx(
                stats["mean_over_angles"] / between
            )


def test_invariance_uses_given_weights_instead_of_training(invariance, tmp_path):
    from probgraphics.nets import DCIGN, save_checkpoint

    torch.manual_seed(0)
    net = DCIGN(invariance._shared.TINY_DCIGN)
    path = tmp_path / "net.pt"
    save_checkpoint(path, net, net.config, kind="dcign")
    out = tmp_path / "out"
    payload = invariance.main(
        ["--size", "tiny", "--threads", "1", "--out-dir", str(out), "--nets", "plain-vae",
         "--weights", f"plain-vae={path}", "--weights", f"extra={path}"]
    )  # fmt: skip
    assert list(payload["networks"]) == ["plain-vae", "extra"]
    assert all("loaded from" in info["source"] for info in payload["networks"].values())
    # The same weights give the same distances under either name.
    assert payload["results"]["plain-vae"] == payload["results"]["extra"]
    assert {row["ours: agrees"] for row in payload["ordering"]} == {"n/a"}


def test_invariance_rejects_bad_weights_arguments(invariance, tmp_path):
    with pytest.raises(SystemExit, match="NAME=PATH"):
        invariance.main(["--size", "tiny", "--out-dir", str(tmp_path), "--weights", "nopath"])
    with pytest.raises(SystemExit, match="cannot use"):
        invariance.main(
            ["--size", "tiny", "--out-dir", str(tmp_path), "--weights", f"x={tmp_path / 'no.pt'}"]
        )
    with pytest.raises(SystemExit, match="whole steps"):
        invariance.angle_grid(7.0)


def test_cosine_distances_match_a_loop(invariance):
    generator = torch.Generator().manual_seed(0)
    codes = torch.randn(3, 5, 4, generator=generator)
    distances = invariance.cosine_distance_to_reference(codes, 2)
    for f in range(3):
        for a in range(5):
            x, y = codes[f, a].double(), codes[f, 2].double()
            expected = 1.0 - float(x @ y / (x.norm() * y.norm()))
            assert float(distances[f, a]) == pytest.approx(expected, abs=1e-12)
    between = invariance.between_face_distance(codes[:, 0])
    pairs = [
        1.0 - float(torch.nn.functional.cosine_similarity(codes[i, 0], codes[j, 0], dim=0))
        for i in range(3)
        for j in range(3)
        if i != j
    ]
    assert between == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)
    assert math.isnan(invariance.between_face_distance(codes[:1, 0]))
    assert invariance.angle_grid(45.0) == (-90.0, -45.0, 0.0, 45.0, 90.0)


def test_cosine_distance_of_parallel_codes_is_never_negative(invariance):
    # Unclamped, about half of these scaled copies come out a few ulps below zero.
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(50, 1, 200, generator=generator)
    codes = torch.cat([base, 0.37 * base, 5.1 * base], dim=1)
    distances = invariance.cosine_distance_to_reference(codes, 0)
    assert bool((distances >= 0.0).all()) and float(distances.max()) < 1e-12


# --------------------------------------------------------------------------------------------
# seed000_verification.py
# --------------------------------------------------------------------------------------------


def test_verification_tiny_writes_the_table(verification, tmp_path, experiment_outputs):
    payload = verification.main(
        ["--size", "tiny", "--threads", "1", "--out-dir", str(tmp_path), "--sets", "2"]
    )
    markdown, written = experiment_outputs(tmp_path, "seed000_verification")
    assert written["per_set"] == payload["per_set"]
    representations = ["DC-IGN identity code", "DC-IGN whole code", "raw pixels"]
    assert list(payload["per_set"]) == representations
    for label in representations:
        assert f"| {label} |" in markdown
        records = payload["per_set"][label]
        assert len(records) == 2
        for record in records:
            assert 0.5 <= record["accuracy_best_threshold"] <= 1.0  # "all same" scores 0.5
            assert 0.0 <= record["accuracy_leave_one_out"] <= 1.0
            assert -1.0 <= record["threshold"] <= 1.0
        correlations = payload["correlations_first_set"][label]
        assert len(correlations) == 96 and all(-1.0 <= r <= 1.0 for r in correlations)
    assert sum(payload["same_first_set"]) == 48
    assert "0.78" in markdown and "humans" in markdown
    assert 0.5 <= payload["chance_under_protocol"]["mean"] <= 1.0


def test_verification_pairs_share_identity_only_in_same_pairs(verification):
    import probgraphics as pg

    program = pg.programs.face(resolution=16)
    pairs = verification.verification_pairs(program, same=3, different=2, seed=5)
    assert pairs["first"].shape == pairs["second"].shape == (5, 1, 16, 16)
    assert pairs["same"].tolist() == [True, True, True, False, False]
    for name in ("shape", "texture"):
        first, second = pairs["identity_first"][name], pairs["identity_second"][name]
        assert torch.equal(first[:3], second[:3])
        assert not (first[3:] == second[3:]).any()
    # Same-pair images still differ: pose, light and framing are redrawn.
    for i in range(3):
        assert not torch.equal(pairs["first"][i], pairs["second"][i])


def test_pair_correlations_match_pearson(verification):
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(6, 10, generator=generator)
    b = 0.5 * a + torch.randn(6, 10, generator=generator)
    b[5] = 3.0  # constant: correlates 0 with anything
    r = verification.pair_correlations(a, b)
    for i in range(5):
        assert float(r[i]) == pytest.approx(pearson(a[i], b[i]), abs=1e-12)
    assert float(r[5]) == 0.0
    with pytest.raises(ValueError, match="one shape"):
        verification.pair_correlations(a, b[:, :3])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_best_threshold_matches_exhaustive_search(verification, seed):
    generator = torch.Generator().manual_seed(seed)
    n = 30
    same = torch.rand(n, generator=generator) < 0.5
    # Correlations rounded to a tenth: ties between pairs, across labels too.
    r = (torch.rand(n, generator=generator) * 2 - 1 + 0.4 * same).clamp(-1, 1)
    r = (r * 10).round() / 10
    threshold, accuracy = verification.best_threshold(r.double(), same)

    # Every split {r >= t} for t in [-1, 1] is {r >= r_i} for some i, or empty (t = 1 above all).
    def accuracy_at(t: float) -> float:
        return sum(bool(ri >= t) == bool(si) for ri, si in zip(r.tolist(), same.tolist())) / n

    best = max(accuracy_at(t) for t in [*r.tolist(), 1.0])
    assert accuracy == pytest.approx(best)
    assert accuracy_at(threshold) == pytest.approx(accuracy)
    assert -1.0 <= threshold <= 1.0


def test_leave_one_out_on_separable_and_on_uninformative_scores(verification):
    same = torch.tensor([True] * 10 + [False] * 10)
    separable = torch.cat([torch.linspace(0.55, 0.9, 10), torch.linspace(-0.5, 0.42, 10)])
    assert verification.leave_one_out_accuracy(separable.double(), same) == 1.0
    assert verification.best_threshold(separable.double(), same)[1] == 1.0
    constant = torch.zeros(20, dtype=torch.float64)
    # One score for every pair: any threshold calls all the same, half right.
    assert verification.best_threshold(constant, same)[1] == 0.5
    mean, sd = verification.shuffled_label_accuracy(separable.double(), same, shuffles=50, seed=0)
    assert 0.5 <= mean < 1.0 and sd >= 0.0
