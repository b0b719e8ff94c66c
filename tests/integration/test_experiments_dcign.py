"""The DC-IGN experiment scripts (seed 000 sec. 4.1 / fig. 6, seed 001 fig. 6) at --size tiny."""

from __future__ import annotations

import math

import pytest
import torch

import probgraphics as pg


def table_rows(markdown: str) -> list[list[str]]:
    """The body rows of every markdown table in ``markdown``, split into cells."""
    rows = []
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.fixture
def check_outputs(experiment_outputs):
    """The shared output checks, plus: the command line stands alone on line 3 of the report."""

    def check(folder, name: str) -> tuple[str, dict]:
        text, payload = experiment_outputs(folder, name)
        assert text.splitlines()[2].startswith(f"`python benchmarks/experiments/{name}.py ")
        return text, payload

    return check


def test_seed000_summaries_tiny(tmp_path, load_experiment, check_outputs):
    script = load_experiment("seed000_summaries")
    result = script.main(["--size", "tiny", "--threads", "1", "--out-dir", str(tmp_path)])
    text, payload = check_outputs(tmp_path, "seed000_summaries")
    labels = ["prior", "pixel", "dcign-20", "dcign-80", "dcign-200", "random-conv-200"]
    assert [row["summary"] for row in payload["rows"]] == labels
    assert [row["summary"] for row in result["rows"]] == labels
    table = [cells[0] for cells in table_rows(text)]
    for label in labels:
        assert label in table
    budgets = set()
    for row in payload["rows"]:
        for key in ("azimuth_rmse", "elevation_rmse", "light_rmse", "render_mse"):
            assert math.isfinite(row[key]) and row[key] >= 0, (row["summary"], key)
        if row["summary"] != "prior":
            budgets.add(row["n_simulations"])
            assert row["seconds"] > 0
            assert 0 <= row["acceptance"] <= 1
    # Equal budgets: the pilot (whose best particles start the chains) plus one simulation a
    # chain a step.
    sizes, chains = payload["run_sizes"], payload["chains"]
    expected = sizes["pilot_size"] + chains * (sizes["warmup"] + sizes["draws"])
    assert budgets == {expected}
    assert payload["checks"]["same_budget"] is True
    # Every code size without weights was trained (tiny: 5 steps) and its time reported.
    for size in ("20", "80", "200"):
        encoder = payload["encoders"][size]
        assert encoder["steps"] == 5 and encoder["seconds"] > 0
    # Figure 6(a): each traced chain's error at every recorded step, from step 0 to the end.
    total = sizes["warmup"] + sizes["draws"]
    for label, per_image in payload["traces"].items():
        (trace,) = per_image
        assert trace["steps"][0] == 0 and trace["steps"][-1] == total, label
        assert trace["steps"] == sorted(set(trace["steps"]))
        assert all(len(point) == payload["trace_chains"] for point in trace["render_mse"])
        assert all(math.isfinite(e) and e > 0 for point in trace["render_mse"] for e in point)


def test_traced_run_is_infer_and_traces_the_chains_state(load_experiment):
    """Running in traced pieces gives infer's posterior bit for bit, and the last recorded
    errors are those of the last draw of each traced chain."""
    script = load_experiment("seed000_summaries")
    program = pg.programs.face(resolution=32)
    image = pg.programs.simulate(program, seed=5)["image"]
    sizes = {"pilot_size": 8, "warmup": 5, "draws": 4}
    posterior, trace, seconds = script.traced_run(
        program,
        image,
        "pixel",
        chains=3,
        sizes=sizes,
        seed=7,
        device="cpu",
        trace_every=2,
        trace_chains=2,
    )
    reference = pg.infer(
        program,
        image,
        method="abc_mcmc",
        summary="pixel",
        chains=3,
        seed=7,
        progress=False,
        **sizes,
    )
    for name, value in reference.samples.items():
        assert torch.equal(posterior.samples[name], value), name
    assert torch.equal(posterior.sample_stats["distance"], reference.sample_stats["distance"])
    assert trace["steps"] == [0, 2, 4, 6, 8, 9]
    assert seconds > 0
    for chain in range(2):
        last = {name: value[chain, -1:] for name, value in posterior.samples.items()}
        expected = script.render_mse(program, last, image)
        assert trace["render_mse"][-1][chain] == pytest.approx(expected, rel=1e-6)


def test_seed000_summaries_rejects_bad_arguments(tmp_path, capsys, load_experiment):
    script = load_experiment("seed000_summaries")
    with pytest.raises(SystemExit):
        script.main(["--size", "tiny", "--images", "0", "--out-dir", str(tmp_path)])
    assert "--images must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main(["--size", "tiny", "--weights", "eighty=x.pt", "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="cannot use --weights"):
        script.main(
            [
                "--size",
                "tiny",
                "--weights-20",
                str(tmp_path / "missing.pt"),
                "--out-dir",
                str(tmp_path),
            ]
        )
    assert not (tmp_path / "seed000_summaries.md").exists()


def test_seed001_factors_tiny(tmp_path, load_experiment, check_outputs):
    script = load_experiment("seed001_factors")
    result = script.main(["--size", "tiny", "--threads", "1", "--out-dir", str(tmp_path)])
    text, payload = check_outputs(tmp_path, "seed001_factors")
    rows = {cells[0]: cells for cells in table_rows(text)}
    for factor in ("azimuth", "elevation", "light"):
        assert factor in rows
    assert [row["factor"] for row in payload["rows"]] == ["azimuth", "elevation", "light"]
    for row in payload["rows"]:
        for key in ("r_pooled", "r_within_batch", "r_random_scenes"):
            assert -1.0 <= row[key] <= 1.0, (row["factor"], key)
        assert row["meets_target"] == ("yes" if abs(row["r_pooled"]) >= 0.9 else "no")
    # The scatter's points are the batches the library's factor_correlations measured.
    assert payload["checks"]["scatter_matches_evaluation"] is True
    n = payload["scenes_per_factor"]
    for factor, points in payload["points"].items():
        assert len(points["unit"]) == len(points["truth"]) == len(points["batch"]) >= n, factor
        assert all(-90.0 <= t <= 90.0 for t in points["truth"])
    assert 0 < payload["evaluation"]["reconstruction_mse"] < 1
    assert "Reconstruction MSE" in text
    assert result["checks"] == payload["checks"]
    for row in payload["rows"]:
        low, high = (float(x) for x in row["r_pooled_95ci"].split(" .. "))
        assert -1.0 <= low <= high <= 1.0, row


def test_pooled_r_interval_resamples_whole_batches(load_experiment):
    script = load_experiment("seed001_factors")
    generator = torch.Generator().manual_seed(0)
    truth = torch.rand(40, 20, generator=generator, dtype=torch.float64) * 180 - 90
    # Every batch has the same slope; the batches' offsets are what the interval must see.
    steady = {
        "unit": (truth / 90).flatten(),
        "truth": truth.flatten(),
        "batch": torch.arange(40).repeat_interleave(20),
    }
    offsets = torch.randn(40, 1, generator=generator, dtype=torch.float64)
    shifted = dict(steady, unit=(truth / 90 + offsets).flatten())
    low, high = script.pooled_r_interval(steady, draws=200)
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)
    low, high = script.pooled_r_interval(shifted, draws=200)
    r = float(torch.corrcoef(torch.stack([shifted["unit"], shifted["truth"]]))[0, 1])
    assert low < r < high < 1.0 and high - low > 0.05


def test_seed001_factors_missing_weights_says_what_to_do(tmp_path, monkeypatch, load_experiment):
    script = load_experiment("seed001_factors")
    with pytest.raises(SystemExit, match="probgraphics train dcign-face-64"):
        script.main(["--weights", str(tmp_path / "nope.pt"), "--out-dir", str(tmp_path)])

    def not_installed(name, **_):
        raise KeyError(name)

    # Neither --weights nor the bundled network: the message says how to get one.
    monkeypatch.setattr(pg.nets, "pretrained", not_installed)
    with pytest.raises(SystemExit, match="probgraphics train dcign-face-64"):
        script.main(["--size", "quick", "--out-dir", str(tmp_path)])
    assert not (tmp_path / "seed001_factors.md").exists()
