"""Posterior: construction and validation, the ArviZ view (0.x for real, 1.x through a stand-in
module), diagnostics without warnings, and atomic save/load."""

from __future__ import annotations

import logging
import math
import os
import sys
import types
import warnings

import matplotlib

matplotlib.use("Agg")

# ArviZ is imported here, at collection, on purpose: ArviZ 0.23 prints a once-a-day FutureWarning
# about its coming 1.0 when first imported, and the no-warning checks below must see only what
# the calls under test emit.
import arviz as az  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import xarray as xr  # noqa: E402

from probgraphics.inference import arviz_adapter  # noqa: E402
from probgraphics.inference.posterior import FORMAT_VERSION, Posterior  # noqa: E402

ARVIZ_MAJOR = arviz_adapter.arviz_major_version(az)
# Checks written against ArviZ 0.x's own API (InferenceData, plot_trace, its summary columns and
# logger); Python 3.11 can only have 0.x. The 1.x branch is exercised below with a stand-in.
arviz_0x_only = pytest.mark.skipif(ARVIZ_MAJOR != 0, reason="checks ArviZ 0.x's API")


def make_inputs(chains: int = 4, draws: int = 100, *, seed: int = 0, prior: bool = True) -> dict:
    """Keyword arguments of a valid Posterior: a scalar, a vector (3,) and a matrix (2, 2) site
    of independent standard-normal draws."""
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=dtype)

    inputs = {
        "samples": {
            "scale": normal(chains, draws),
            "shape": normal(chains, draws, 3, dtype=torch.float64),
            "pose": normal(chains, draws, 2, 2),
        },
        "sample_stats": {
            "distance": torch.rand(chains, draws, generator=generator),
            "accepted": torch.rand(chains, draws, generator=generator) < 0.3,
            "epsilon": torch.full((chains, draws), 0.25),
            "beta": torch.rand(chains, draws, generator=generator, dtype=torch.float64),
            "n_simulations": torch.arange(chains * draws).reshape(chains, draws),
        },
        "observation": {"image": torch.rand(3, 8, 8, generator=generator)},
        "method": "abc_mcmc",
        "settings": {"epsilon": 0.25, "kernel": "indicator", "window": (2, 3), "seed": None},
        "n_simulations": 4 * chains * draws,
        "wall_time": 2.5,
        "timings": {"pilot": 0.5, "sampling": 2.0},
    }
    if prior:
        inputs["prior"] = {
            "scale": normal(1, 50),
            "shape": normal(1, 50, 3, dtype=torch.float64),
            "pose": normal(1, 50, 2, 2),
        }
    return inputs


def build(inputs: dict) -> Posterior:
    inputs = dict(inputs)
    return Posterior(
        inputs.pop("samples"), inputs.pop("sample_stats"), inputs.pop("observation"), **inputs
    )


def assert_tensor_dicts_equal(got: dict | None, expected: dict | None) -> None:
    if expected is None:
        assert got is None
        return
    assert got is not None and set(got) == set(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor), name


def assert_posteriors_equal(got: Posterior, expected: Posterior) -> None:
    assert_tensor_dicts_equal(got.samples, expected.samples)
    assert_tensor_dicts_equal(got.sample_stats, expected.sample_stats)
    assert_tensor_dicts_equal(got.observation, expected.observation)
    assert_tensor_dicts_equal(got.prior, expected.prior)
    assert got.method == expected.method
    assert got.settings == expected.settings
    assert got.n_simulations == expected.n_simulations
    assert got.wall_time == expected.wall_time
    assert got.timings == expected.timings


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def arviz_log():
    """The warnings ArviZ 0.x logs (e.g. "Shape validation failed" when R-hat gets one chain).
    Its logger, ``arviz._log``, is a standalone Logger with no parent, so pytest's caplog never
    sees it, and it drops messages it has logged before, so its memory is emptied here."""
    logger = getattr(az, "_log", None)
    if not isinstance(logger, logging.Logger):
        pytest.skip("this ArviZ has no arviz._log logger to watch")
    records = _Records()
    remembered = list(getattr(logger, "cache", []))
    if hasattr(logger, "cache"):
        logger.cache.clear()
    logger.addHandler(records)
    yield records.messages
    logger.removeHandler(records)
    if hasattr(logger, "cache"):
        logger.cache[:] = remembered


# ---------------------------------------------------------------------------- construction


def test_constructor_stores_detached_cpu_copies_and_reports_the_run():
    inputs = make_inputs()
    inputs["samples"]["scale"].requires_grad_(True)
    posterior = build(inputs)

    stored = posterior.samples["scale"]
    assert stored.device.type == "cpu" and not stored.requires_grad
    assert torch.equal(stored, inputs["samples"]["scale"].detach())
    with torch.no_grad():
        inputs["samples"]["scale"].add_(1.0)  # the caller's buffer, not the posterior's
    assert not torch.equal(posterior["scale"], inputs["samples"]["scale"].detach())

    assert posterior.num_chains == 4 and posterior.num_draws == 100
    assert posterior["pose"].shape == (4, 100, 2, 2)
    assert posterior.method == "abc_mcmc"
    assert posterior.n_simulations == 1600
    assert posterior.wall_time == 2.5
    assert posterior.simulations_per_second == pytest.approx(1600 / 2.5)
    assert posterior.timings == {"pilot": 0.5, "sampling": 2.0}
    # Settings are JSON-normalized once, so a saved file gives back exactly the same.
    assert posterior.settings == {
        "epsilon": 0.25,
        "kernel": "indicator",
        "window": [2, 3],
        "seed": None,
    }
    assert set(posterior.sample_stats) == set(inputs["sample_stats"])
    assert posterior.prior["shape"].shape == (1, 50, 3)

    text = repr(posterior)
    assert "abc_mcmc" in text and "chains=4" in text and "draws=100" in text
    assert "pose(2, 2)" in text and len(text) < 200

    with pytest.raises(KeyError, match="no site 'texture'.*scale"):
        posterior["texture"]


def test_zero_wall_time_gives_nan_rate():
    inputs = make_inputs(prior=False)
    inputs["wall_time"] = 0
    assert math.isnan(build(inputs).simulations_per_second)


def _set(path: tuple, value):
    def mutate(inputs: dict) -> None:
        target = inputs
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _drop(group: str, name: str):
    def mutate(inputs: dict) -> None:
        del inputs[group][name]

    return mutate


INVALID = [
    ("samples not a dict", _set(("samples",), [1, 2]), TypeError, "dict of site name"),
    ("no sites", _set(("samples",), {}), ValueError, "at least one site"),
    ("numpy sample", _set(("samples", "scale"), np.zeros((4, 100))), TypeError, "as_tensor"),
    ("1-d sample", _set(("samples", "scale"), torch.zeros(100)), ValueError, "chains, draws"),
    (
        "int sample",
        _set(("samples", "scale"), torch.zeros(4, 100, dtype=torch.int64)),
        ValueError,
        "floating-point",
    ),
    ("chain mismatch", _set(("samples", "scale"), torch.zeros(3, 100)), ValueError, "disagree"),
    ("no draws", _set(("samples", "scale"), torch.zeros(4, 0)), ValueError, "at least one"),
    (
        "nan sample",
        _set(("samples", "scale"), torch.full((4, 100), math.nan)),
        ValueError,
        "400 non-finite",
    ),
    ("reserved name", _set(("samples", "draw"), torch.zeros(4, 100)), ValueError, "reserved"),
    ("empty name", _set(("samples", ""), torch.zeros(4, 100)), TypeError, "non-empty"),
    ("missing epsilon", _drop("sample_stats", "epsilon"), ValueError, r"lacks \['epsilon'\]"),
    (
        "stat shape",
        _set(("sample_stats", "distance"), torch.zeros(4, 99)),
        ValueError,
        r"\(chains, draws\)",
    ),
    (
        "float accepted",
        _set(("sample_stats", "accepted"), torch.zeros(4, 100)),
        ValueError,
        "bool tensor",
    ),
    (
        "int distance",
        _set(("sample_stats", "distance"), torch.zeros(4, 100, dtype=torch.int32)),
        ValueError,
        "float tensor",
    ),
    (
        "int beta",
        _set(("sample_stats", "beta"), torch.zeros(4, 100, dtype=torch.int32)),
        ValueError,
        "float tensor",
    ),
    (
        "complex stat",
        _set(("sample_stats", "phase"), torch.zeros(4, 100, dtype=torch.complex64)),
        ValueError,
        "complex",
    ),
    ("observation array", _set(("observation", "image"), [0.5]), TypeError, "torch.Tensor"),
    ("empty method", _set(("method",), ""), TypeError, "method"),
    ("float n_simulations", _set(("n_simulations",), 1.5), TypeError, "n_simulations"),
    ("bool n_simulations", _set(("n_simulations",), True), TypeError, "n_simulations"),
    ("negative n_simulations", _set(("n_simulations",), -1), ValueError, ">= 0"),
    ("nan wall_time", _set(("wall_time",), math.nan), ValueError, "finite"),
    ("inf wall_time", _set(("wall_time",), math.inf), ValueError, "finite"),
    ("negative wall_time", _set(("wall_time",), -1.0), ValueError, "finite"),
    ("string wall_time", _set(("wall_time",), "2.5"), TypeError, "real number"),
    ("settings not dict", _set(("settings",), [("a", 1)]), TypeError, "settings must be"),
    ("settings object", _set(("settings", "summary"), object()), ValueError, "JSON"),
    ("settings int key", _set(("settings",), {1: 2}), TypeError, "keys must be strings"),
    (
        "prior event",
        _set(("prior", "shape"), torch.zeros(1, 50, 4)),
        ValueError,
        "event shape",
    ),
    ("prior nan", _set(("prior", "scale"), torch.full((1, 50), math.nan)), ValueError, "finite"),
    ("negative timing", _set(("timings", "pilot"), -0.1), ValueError, "timings"),
    ("timings not dict", _set(("timings",), 3.0), TypeError, "timings"),
]


@pytest.mark.parametrize(
    "mutate, error, message", [case[1:] for case in INVALID], ids=[case[0] for case in INVALID]
)
def test_constructor_rejects_bad_input_with_a_message(mutate, error, message):
    inputs = make_inputs(chains=4, draws=100)
    mutate(inputs)
    with pytest.raises(error, match=message):
        build(inputs)


# ---------------------------------------------------------------------------- ArviZ view


def test_to_arviz_groups_dims_values_and_attributes():
    posterior = build(make_inputs())
    idata = posterior.to_arviz()

    if ARVIZ_MAJOR == 0:
        assert isinstance(idata, az.InferenceData)
    assert set(arviz_adapter.group_names(idata)) == {
        "posterior",
        "sample_stats",
        "observed_data",
        "prior",
    }
    post = idata.posterior
    assert post["scale"].dims == ("chain", "draw")
    assert post["shape"].dims == ("chain", "draw", "shape_dim_0")
    assert post["pose"].dims == ("chain", "draw", "pose_dim_0", "pose_dim_1")
    assert post.sizes["chain"] == 4 and post.sizes["draw"] == 100
    for name, tensor in posterior.samples.items():
        assert post[name].dtype == tensor.numpy().dtype
        np.testing.assert_array_equal(post[name].values, tensor.numpy())

    stats = idata.sample_stats
    assert stats["accepted"].dtype == np.bool_
    np.testing.assert_array_equal(
        stats["acceptance_rate"].values, posterior.sample_stats["accepted"].numpy().astype(float)
    )
    for name in ("distance", "epsilon", "beta", "n_simulations"):
        assert stats[name].dims == ("chain", "draw")
        np.testing.assert_array_equal(stats[name].values, posterior.sample_stats[name].numpy())

    assert idata.observed_data["image"].dims == ("image_dim_0", "image_dim_1", "image_dim_2")
    np.testing.assert_array_equal(
        idata.observed_data["image"].values, posterior.observation["image"].numpy()
    )
    assert idata.prior["pose"].dims == ("chain", "draw", "pose_dim_0", "pose_dim_1")
    assert idata.prior.sizes["chain"] == 1 and idata.prior.sizes["draw"] == 50

    for attrs in (arviz_adapter.root_attrs(idata), post.attrs):
        assert attrs["method"] == "abc_mcmc"
        assert attrs["n_simulations"] == 1600
        assert attrs["wall_time"] == 2.5
        assert attrs["simulations_per_second"] == pytest.approx(640.0)
        assert attrs["settings"] == (
            '{"epsilon": 0.25, "kernel": "indicator", "window": [2, 3], "seed": null}'
        )


def test_given_acceptance_rate_is_kept_and_a_site_may_share_a_statistic_name():
    inputs = make_inputs(prior=False)
    rate = torch.full((4, 100), 0.4, dtype=torch.float64)
    inputs["sample_stats"]["acceptance_rate"] = rate
    # A latent called "beta" with an event dim, beside the scalar "beta" statistic.
    inputs["samples"]["beta"] = torch.randn(4, 100, 3)
    idata = build(inputs).to_arviz()
    np.testing.assert_array_equal(idata.sample_stats["acceptance_rate"].values, rate.numpy())
    assert idata.posterior["beta"].dims == ("chain", "draw", "beta_dim_0")
    assert idata.sample_stats["beta"].dims == ("chain", "draw")


@arviz_0x_only
def test_arviz_diagnostics_and_trace_plot_emit_no_warnings(arviz_log):
    posterior = build(make_inputs(chains=4, draws=100))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idata = posterior.to_arviz()
        summary = az.summary(idata)
        rhat = az.rhat(idata)
        ess = az.ess(idata)
        axes = az.plot_trace(idata)
        ours = posterior.summary()
    plt.close("all")
    assert arviz_log == []

    rows = ["scale", "shape[0]", "shape[1]", "shape[2]"]
    rows += ["pose[0, 0]", "pose[0, 1]", "pose[1, 0]", "pose[1, 1]"]
    assert list(summary.index) == rows
    assert {"mean", "sd", "r_hat", "ess_bulk", "ess_tail", "mcse_mean"} <= set(summary.columns)
    pd.testing.assert_frame_equal(ours, summary)
    # The draws are independent, so R-hat is 1 up to its Monte Carlo spread (about 0.005 for 400
    # draws) and ESS near the 400 draws (relative spread about 10%).
    assert np.all(np.abs(summary["r_hat"].to_numpy() - 1.0) < 0.05)
    assert np.all((summary["ess_bulk"].to_numpy() > 200) & (summary["ess_bulk"] < 800))
    assert float(rhat["scale"]) == pytest.approx(summary.loc["scale", "r_hat"], abs=0.01)
    assert ess["pose"].shape == (2, 2)
    assert axes.shape == (3, 2)  # one row per site (vector elements overlaid), value and trace


def test_many_chains_with_few_draws_convert_without_the_transposition_warning(tmp_path):
    # ArviZ 0.x's from_dict warns "More chains than draws" for such arrays, guessing that they
    # were passed transposed; a short run of many chains is exactly this shape.
    inputs = make_inputs(chains=16, draws=5, prior=False)
    inputs["observation"]["count"] = torch.tensor(7.0)  # a 0-d observation round-trips too
    posterior = build(inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        idata = posterior.to_arviz()
        table = posterior.summary()
        posterior.save(tmp_path / "short.nc")
    assert idata.posterior.sizes["chain"] == 16 and idata.posterior.sizes["draw"] == 5
    assert idata.posterior["pose"].dims == ("chain", "draw", "pose_dim_0", "pose_dim_1")
    assert len(table) == 8 and table["r_hat"].notna().all()
    assert_posteriors_equal(Posterior.load(tmp_path / "short.nc"), posterior)


@arviz_0x_only
@pytest.mark.parametrize(
    "options",
    [{}, {"kind": "diagnostics"}, {"stat_focus": "median"}, {"hdi_prob": 0.9, "round_to": 4}],
    ids=["all", "diagnostics", "median", "hdi-round"],
)
def test_single_chain_summary_equals_arviz_without_its_shape_warning(arviz_log, options):
    posterior = build(make_inputs(chains=1, draws=200, prior=False))
    idata = posterior.to_arviz()

    # The reference: ArviZ's own summary, which logs that R-hat needs two chains.
    reference = az.summary(idata, **options)
    assert any("Shape validation failed" in message for message in arviz_log)
    arviz_log.clear()
    az._log.cache.clear()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = posterior.summary(**options)
        az.ess(idata)
        az.plot_trace(idata)
    plt.close("all")
    assert arviz_log == []
    assert ours["r_hat"].isna().all()
    pd.testing.assert_frame_equal(ours, reference)


@arviz_0x_only
def test_single_chain_summary_keeps_user_stat_funcs():
    posterior = build(make_inputs(chains=1, draws=50, prior=False))
    table = posterior.summary("scale", stat_funcs={"maximum": np.max})
    assert list(table.columns)[-2:] == ["r_hat", "maximum"]
    assert table.loc["scale", "maximum"] == pytest.approx(float(posterior["scale"].max()), abs=1e-3)


def test_summary_selects_sites_and_rejects_unknown_ones():
    posterior = build(make_inputs(prior=False))
    assert list(posterior.summary("shape").index) == ["shape[0]", "shape[1]", "shape[2]"]
    assert list(posterior.summary(["~shape", "~pose"]).index) == ["scale"]
    with pytest.raises(KeyError, match="texture"):
        posterior.summary(["scale", "texture"])


# ---------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("chains, prior", [(4, True), (1, False)], ids=["chains4-prior", "chain1"])
def test_save_then_load_restores_an_equal_posterior(tmp_path, chains, prior):
    inputs = make_inputs(chains=chains, draws=30, prior=prior)
    if not prior:
        inputs["observation"] = {}
        inputs["wall_time"] = 0.0
    posterior = build(inputs)
    path = tmp_path / "run.nc"
    assert posterior.save(path) == path
    assert sorted(os.listdir(tmp_path)) == ["run.nc"]  # no temporary file left behind
    loaded = Posterior.load(str(path))
    assert_posteriors_equal(loaded, posterior)
    assert "acceptance_rate" not in loaded.sample_stats  # derived on export, not stored state


def test_save_overwrites_an_existing_file(tmp_path):
    path = tmp_path / "run.nc"
    build(make_inputs(seed=1, prior=False)).save(path)
    second = build(make_inputs(seed=2, prior=False))
    second.save(path)
    assert_posteriors_equal(Posterior.load(path), second)


def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "run.nc"
    first = build(make_inputs(seed=1, prior=False))
    first.save(path)
    before = path.read_bytes()

    def write_half_then_fail(data, target):
        with open(target, "wb") as handle:
            handle.write(b"\x89HDF\r\n\x1a\n partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(arviz_adapter, "write_netcdf", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        build(make_inputs(seed=2, prior=False)).save(path)
    assert sorted(os.listdir(tmp_path)) == ["run.nc"]
    assert path.read_bytes() == before

    fresh = tmp_path / "fresh.nc"
    with pytest.raises(OSError):
        first.save(fresh)
    assert not fresh.exists() and sorted(os.listdir(tmp_path)) == ["run.nc"]


def test_save_rejects_bad_destinations_and_unstorable_names(tmp_path):
    posterior = build(make_inputs(prior=False))
    missing_dir = tmp_path / "nowhere" / "run.nc"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        posterior.save(missing_dir)
    with pytest.raises(IsADirectoryError):
        posterior.save(tmp_path)
    inputs = make_inputs(prior=False)
    inputs["samples"]["face/shape"] = torch.zeros(4, 100)
    with pytest.raises(ValueError, match="face/shape"):
        build(inputs).save(tmp_path / "slash.nc")
    assert os.listdir(tmp_path) == []


def test_load_errors_say_what_is_wrong(tmp_path):
    missing = tmp_path / "missing.nc"
    with pytest.raises(FileNotFoundError, match="missing.nc"):
        Posterior.load(missing)

    garbage = tmp_path / "garbage.nc"
    garbage.write_bytes(b"this is not a netcdf file" * 10)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        Posterior.load(garbage)

    good = tmp_path / "good.nc"
    build(make_inputs(prior=False)).save(good)
    truncated = tmp_path / "truncated.nc"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        Posterior.load(truncated)

    plain = tmp_path / "plain.nc"
    xr.Dataset({"x": ("n", np.arange(3.0))}).to_netcdf(plain, engine=arviz_adapter.netcdf_engine())
    with pytest.raises(ValueError, match="not a probgraphics posterior"):
        Posterior.load(plain)

    other_arviz = tmp_path / "other.nc"
    arviz_adapter.write_netcdf(
        arviz_adapter.from_groups(
            {"posterior": {"x": np.zeros((2, 10))}}, dims={}, attrs={"method": "nuts"}
        ),
        other_arviz,
    )
    with pytest.raises(ValueError, match="not a probgraphics posterior"):
        Posterior.load(other_arviz)

    with pytest.raises(IsADirectoryError):
        Posterior.load(tmp_path)


def test_load_refuses_newer_formats_and_inconsistent_contents(tmp_path, monkeypatch):
    posterior = build(make_inputs(prior=False))
    real_attrs = Posterior._attrs

    def attrs_with(**changes):
        def attrs(self):
            return {**real_attrs(self), **changes}

        return attrs

    monkeypatch.setattr(Posterior, "_attrs", attrs_with(probgraphics_format_version=99))
    posterior.save(tmp_path / "newer.nc")
    monkeypatch.setattr(
        Posterior, "_attrs", attrs_with(probgraphics_sample_stats='["distance", "energy"]')
    )
    posterior.save(tmp_path / "inconsistent.nc")
    monkeypatch.setattr(Posterior, "_attrs", attrs_with(settings="{not json"))
    posterior.save(tmp_path / "bad_settings.nc")
    monkeypatch.undo()

    with pytest.raises(ValueError, match=f"version 99.*{FORMAT_VERSION}"):
        Posterior.load(tmp_path / "newer.nc")
    with pytest.raises(ValueError, match="energy"):
        Posterior.load(tmp_path / "inconsistent.nc")
    with pytest.raises(ValueError, match="cannot be restored"):
        Posterior.load(tmp_path / "bad_settings.nc")


# ---------------------------------------------------------------------------- ArviZ 1.x branch


class FakeArviz1(types.ModuleType):
    """Stands in for ArviZ 1.x, which needs Python >= 3.12: records the calls, and builds the
    xarray DataTree that arviz_base.from_dict would (sample dims chain/draw except in groups
    named "*data*", event dims from `dims` or "{var}_dim_{k}", attrs keyed by group, "/" root)."""

    def __init__(self) -> None:
        super().__init__("arviz")
        self.__version__ = "1.3.0"
        self.from_dict_calls: list[tuple[dict, dict]] = []
        self.summary_calls: list[tuple[object, dict]] = []

    def from_dict(self, data, *, dims=None, attrs=None, **kwargs):
        self.from_dict_calls.append((data, {"dims": dims, "attrs": attrs, **kwargs}))
        dims, attrs = dims or {}, attrs or {}
        nodes = {}
        for group, variables in data.items():
            sample_dims = [] if "data" in group else ["chain", "draw"]
            data_vars = {}
            for name, array in variables.items():
                event_rank = array.ndim - len(sample_dims)
                event = dims.get(name, [f"{name}_dim_{k}" for k in range(event_rank)])
                data_vars[name] = (sample_dims + list(event), array)
            nodes[group] = xr.Dataset(data_vars, attrs=attrs.get(group, {}))
        tree = xr.DataTree.from_dict(nodes)
        tree.attrs = dict(attrs.get("/", {}))
        return tree

    def summary(self, data, **kwargs):
        self.summary_calls.append((data, kwargs))
        return "summary table"


def test_adapter_reads_the_major_version_from_version_or_signature():
    assert arviz_adapter.arviz_major_version(FakeArviz1()) == 1
    old = types.ModuleType("arviz")
    old.__version__ = "0.23.4"
    assert arviz_adapter.arviz_major_version(old) == 0

    def from_dict_1x(data, *, dims=None):
        return data

    def from_dict_0x(posterior=None, *, sample_stats=None):
        return posterior

    for from_dict, major in ((from_dict_1x, 1), (from_dict_0x, 0)):
        unversioned = types.ModuleType("arviz")
        unversioned.from_dict = from_dict
        assert arviz_adapter.arviz_major_version(unversioned) == major
    with pytest.raises(RuntimeError, match="which ArviZ"):
        arviz_adapter.arviz_major_version(types.ModuleType("arviz"))
    assert arviz_adapter.arviz_major_version() == int(az.__version__.split(".")[0])


def test_arviz_1x_branch_builds_one_nested_dict_and_round_trips_a_file(tmp_path, monkeypatch):
    fake = FakeArviz1()
    monkeypatch.setitem(sys.modules, "arviz", fake)
    posterior = build(make_inputs(chains=1, draws=40))

    tree = posterior.to_arviz()
    assert isinstance(tree, xr.DataTree)
    ((data, kwargs),) = fake.from_dict_calls
    assert list(data) == ["posterior", "sample_stats", "observed_data", "prior"]
    assert set(data["sample_stats"]) == {
        "distance",
        "accepted",
        "epsilon",
        "beta",
        "n_simulations",
        "acceptance_rate",
    }
    assert data["posterior"]["pose"].shape == (1, 40, 2, 2)
    assert kwargs["dims"] == {
        "shape": ["shape_dim_0"],
        "pose": ["pose_dim_0", "pose_dim_1"],
        "image": ["image_dim_0", "image_dim_1", "image_dim_2"],
    }
    assert kwargs["check_conventions"] is False
    assert kwargs["attrs"]["/"]["method"] == "abc_mcmc"
    assert kwargs["attrs"]["/"]["probgraphics_format_version"] == FORMAT_VERSION
    assert kwargs["attrs"]["posterior"]["sampling_time"] == 2.5
    assert arviz_adapter.group_dataset(tree, "posterior")["pose"].dims == (
        "chain",
        "draw",
        "pose_dim_0",
        "pose_dim_1",
    )
    assert arviz_adapter.group_dataset(tree, "warmup_posterior") is None

    # 1.x has no rhat-free single-chain detour: summary goes straight to az.summary.
    assert posterior.summary("scale", kind="stats") == "summary table"
    ((summarized, summary_kwargs),) = fake.summary_calls
    assert isinstance(summarized, xr.DataTree)
    assert summary_kwargs == {"var_names": ["scale"], "kind": "stats"}

    path = tmp_path / "run.nc"
    posterior.save(path)
    assert_posteriors_equal(Posterior.load(path), posterior)
    assert os.listdir(tmp_path) == ["run.nc"]


def test_adapter_rejects_unknown_groups():
    with pytest.raises(ValueError, match="warmup_posterior"):
        arviz_adapter.from_groups({"warmup_posterior": {"x": np.zeros((1, 2))}}, dims={}, attrs={})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_are_stored_on_cpu():
    inputs = make_inputs(prior=False)
    inputs["samples"] = {name: t.cuda() for name, t in inputs["samples"].items()}
    inputs["sample_stats"]["distance"] = inputs["sample_stats"]["distance"].cuda()
    posterior = build(inputs)
    assert all(t.device.type == "cpu" for t in posterior.samples.values())
    assert posterior.sample_stats["distance"].device.type == "cpu"
    assert posterior.to_arviz().posterior["pose"].shape == (4, 100, 2, 2)
