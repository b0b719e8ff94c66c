"""infer_many on a two-worker Dask LocalCluster: results equal a sequential loop of infer bit for
bit; a worker killed mid-run loses nothing; a bad image fails alone with its message; files,
manifest and the stacked ArviZ dataset; bad calls fail before any cluster starts."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import arviz as az
import cloudpickle
import numpy as np
import pytest
import torch

import probgraphics as pg
from probgraphics.inference.posterior import Posterior
from probgraphics.scale import MANIFEST_NAME, ImagePosteriors, local_client

# Short toy runs: about a tenth of a second each.
TOY_OPTIONS = {"chains": 8, "draws": 60, "warmup": 60}


@pytest.fixture(scope="module")
def client():
    """Two single-threaded worker processes, as infer_many starts on a two-core machine."""
    with local_client(2) as client:
        yield client


@pytest.fixture(scope="module")
def toy():
    program = pg.programs.linear_gaussian(dim=3)
    observations = [{"x": pg.programs.simulate(program, seed=i)["x"]} for i in range(5)]
    return program, observations


def sequential(program, observations, seed, method="abc_mcmc", **options) -> list[Posterior]:
    """The loop infer_many must equal: infer on each image with its derived seed."""
    seeds = pg.image_seeds(seed, len(observations))
    return [
        pg.infer(program, observation, method=method, seed=image_seed, progress=False, **options)
        for observation, image_seed in zip(observations, seeds)
    ]


def assert_identical(got: Posterior, expected: Posterior) -> None:
    for group in ("samples", "sample_stats", "observation"):
        a, b = getattr(got, group), getattr(expected, group)
        assert a.keys() == b.keys(), group
        for name in b:
            assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), (group, name)
    assert (got.prior is None) == (expected.prior is None)
    for name, value in (expected.prior or {}).items():
        assert torch.equal(got.prior[name], value), ("prior", name)
    assert got.settings == expected.settings
    assert got.n_simulations == expected.n_simulations


def test_results_equal_a_sequential_loop_bit_for_bit(client, toy):
    """Chunks of two over two workers, in whatever order they finish: each image's posterior is
    the one the loop gives with that image's derived seed."""
    program, observations = toy
    result = pg.infer_many(
        program, observations, client=client, seed=11, chunk_size=2, progress=False, **TOY_OPTIONS
    )
    assert isinstance(result, ImagePosteriors)
    assert result.names == ("image_0", "image_1", "image_2", "image_3", "image_4")
    assert result.seeds == tuple(pg.image_seeds(11, 5)) and result.failures == {}
    assert result.workers == 2
    expected = sequential(program, observations, 11, **TOY_OPTIONS)
    for name, posterior in zip(result.names, expected):
        assert_identical(result[name], posterior)
    # Different images get different seeds, hence different chains.
    assert not torch.equal(result["image_0"]["z"], result["image_1"]["z"])


def test_face_images_equal_a_sequential_loop_bit_for_bit(client):
    """The face program (16 px, the numba rasterizer) travels to the workers once, as a task."""
    program = pg.programs.face(resolution=16)
    images = pg.programs.simulate(program, n=2, seed=3)["image"]
    options = {"chains": 4, "draws": 15, "warmup": 15, "pilot_size": 64}
    result = pg.infer_many(program, images, client=client, seed=5, progress=False, **options)
    assert result.failures == {}
    expected = sequential(program, list(images), 5, **options)
    for name, posterior in zip(result.names, expected):
        assert_identical(result[name], posterior)


def test_a_bad_image_fails_alone_with_its_message(client, toy):
    """NaN pixels are refused on the client (infer's own check, so its message); a shape the
    program does not have fails inside infer on a worker. The other images complete, equal to
    the loop, and the call does not raise."""
    program, observations = toy
    images = {
        "good_a": observations[0],
        "nan": {"x": torch.tensor([0.0, float("nan"), 1.0])},
        "wrong_shape": {"x": torch.zeros(4)},
        "not_a_tensor": {"x": [1.0, 2.0, 3.0]},
        "good_b": observations[1],
    }
    result = pg.infer_many(program, images, client=client, seed=2, progress=False, **TOY_OPTIONS)
    assert list(result.posteriors) == ["good_a", "good_b"]
    assert result.failures["nan"].startswith("ValueError: observation['x'] has 1 NaN/inf values")
    assert result.failures["wrong_shape"].startswith(
        "ValueError: observation['x'] has shape (4,), but the program's site 'x' has shape (3,)"
    )
    assert "Traceback" in result.tracebacks["wrong_shape"]
    assert result.failures["not_a_tensor"].startswith("TypeError: observation['x'] must be a")
    with pytest.raises(KeyError, match="image 'nan' failed: ValueError"):
        result["nan"]
    seeds = pg.image_seeds(2, 5)
    for position, name in ((0, "good_a"), (4, "good_b")):
        expected = pg.infer(
            program, images[name], seed=seeds[position], progress=False, **TOY_OPTIONS
        )
        assert_identical(result[name], expected)


def test_out_writes_one_file_per_image_a_manifest_and_the_stacked_dataset(client, toy, tmp_path):
    program, observations = toy
    images = {"first": observations[0], "bad": {"x": torch.zeros(4)}, "third": observations[2]}
    out = tmp_path / "posteriors"
    result = pg.infer_many(
        program, images, client=client, seed=4, out=out, progress=False, **TOY_OPTIONS
    )
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [MANIFEST_NAME, "first.nc", "third.nc"]
    )
    for name in ("first", "third"):
        assert result.paths[name] == out / f"{name}.nc"
        assert_identical(Posterior.load(out / f"{name}.nc"), result[name])
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert (manifest["seed"], manifest["completed"], manifest["failed"]) == (4, 2, 1)
    records = {record["name"]: record for record in manifest["images"]}
    assert records["first"]["status"] == "ok" and records["first"]["file"] == "first.nc"
    assert records["bad"]["status"] == "failed" and "shape (4,)" in records["bad"]["error"]
    assert [record["seed"] for record in manifest["images"]] == pg.image_seeds(4, 3)

    data = result.to_arviz()
    posterior = data.posterior
    assert posterior["z"].dims == ("chain", "draw", "image", "z_dim_0")
    assert list(posterior["image"].values) == ["first", "third"]
    np.testing.assert_array_equal(
        posterior["z"].sel(image="third").values, result["third"]["z"].numpy()
    )
    assert data.observed_data["x"].dims == ("image", "x_dim_0")
    assert data.sample_stats["acceptance_rate"].dims == ("chain", "draw", "image")
    assert "n_simulations" not in posterior.attrs  # per image: in the images attribute
    assert [record["name"] for record in json.loads(data.attrs["images"])] == list(images)
    table = az.summary(data, var_names=["z"], kind="stats")
    assert "z[first, 0]" in table.index and "z[third, 2]" in table.index

    path = result.save(tmp_path / "all.nc")
    reopened = az.from_netcdf(path)
    np.testing.assert_array_equal(reopened.posterior["z"].values, posterior["z"].values)
    assert list(reopened.posterior["image"].values) == ["first", "third"]


def test_the_stacked_dataset_is_a_datatree_under_arviz_1(client, toy, monkeypatch):
    """ArviZ 1.x (Python >= 3.12) holds results as an xarray DataTree: the stacking builds one
    when the installed ArviZ says it is 1.x (each image's own data still comes from the real
    adapter)."""
    import xarray as xr

    from probgraphics.inference import arviz_adapter

    program, observations = toy
    result = pg.infer_many(
        program, observations[:2], client=client, seed=4, progress=False, **TOY_OPTIONS
    )
    real = arviz_adapter.arviz_major_version
    monkeypatch.setattr(
        arviz_adapter,
        "arviz_major_version",
        lambda module=None: 1 if module is None else real(module),
    )
    tree = result.to_arviz()
    assert isinstance(tree, xr.DataTree)
    assert tree["posterior"]["z"].dims == ("chain", "draw", "image", "z_dim_0")
    assert list(tree["posterior"]["image"].values) == ["image_0", "image_1"]
    assert tree.attrs["probgraphics_format"] == "probgraphics.ImagePosteriors"


def test_keep_false_holds_no_posterior_and_reads_the_files_back(client, toy, tmp_path):
    program, observations = toy
    images = {"first": observations[0], "second": observations[1]}
    kept = pg.infer_many(program, images, client=client, seed=4, progress=False, **TOY_OPTIONS)
    dropped = pg.infer_many(
        program,
        images,
        client=client,
        seed=4,
        out=tmp_path,
        keep=False,
        progress=False,
        **TOY_OPTIONS,
    )
    assert dropped.posteriors == {} and dropped.completed == ("first", "second")
    for name in images:
        assert_identical(dropped[name], kept[name])
    np.testing.assert_array_equal(
        dropped.to_arviz().posterior["z"].values, kept.to_arviz().posterior["z"].values
    )


class MarkedProgram:
    """linear_gaussian that leaves a file named after the process that runs it, so a test can
    tell which worker processes were running inference."""

    def __init__(self, folder: Path) -> None:
        self.inner = pg.programs.linear_gaussian(dim=3)
        self.folder = str(folder)

    def __call__(self):
        Path(self.folder, str(os.getpid())).touch()
        return self.inner()


# Workers unpickle MarkedProgram by value: they need not import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def test_a_worker_killed_mid_run_loses_nothing(client, toy, tmp_path):
    """SIGKILL a worker process while it runs an image: the nanny restarts it, the scheduler
    reruns its task elsewhere with the same seed, and every result equals the loop. A run takes
    about half a second and the kill waits until the worker's program has run (inference has
    started), so it lands mid-run."""
    _, observations = toy
    markers = tmp_path / "markers"
    markers.mkdir()
    program = MarkedProgram(markers)
    options = {"chains": 8, "draws": 250, "warmup": 250}
    killed: list[int] = []
    done = threading.Event()

    def kill_a_worker_running_inference() -> None:
        pids = client.run(os.getpid)
        deadline = time.monotonic() + 120
        while not done.is_set() and time.monotonic() < deadline:
            for address, keys in client.processing().items():
                busy = any("infer-many-images" in str(key) for key in keys)
                pid = pids.get(address)
                if busy and pid is not None and (markers / str(pid)).exists():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker_running_inference, daemon=True)
    killer.start()
    try:
        result = pg.infer_many(
            program, observations[:3], client=client, seed=8, progress=False, **options
        )
    finally:
        done.set()
        killer.join(timeout=10)
    assert len(killed) == 1, "no worker was killed mid-run: the test proved nothing"
    assert result.failures == {}
    expected = sequential(MarkedProgram(tmp_path), observations[:3], 8, **options)
    for name, posterior in zip(result.names, expected):
        assert_identical(result[name], posterior)
    # The killed process had run inference, and other processes finished the work.
    ran = {int(path.name) for path in markers.iterdir()}
    assert killed[0] in ran and ran - {killed[0]}


def test_without_a_seed_one_is_drawn_and_recorded(client, toy):
    program, observations = toy
    result = pg.infer_many(program, observations[:2], client=client, progress=False, **TOY_OPTIONS)
    assert 0 <= result.seed < 2**62
    assert result.seeds == tuple(pg.image_seeds(result.seed, 2))
    assert [result[name].settings["seed"] for name in result.names] == list(result.seeds)


def test_image_seeds_depend_on_the_seed_and_the_index_only():
    seeds = pg.image_seeds(7, 10)
    assert pg.image_seeds(7, 3) == seeds[:3]
    assert len(set(seeds)) == 10 and all(0 <= s < 2**62 for s in seeds)
    assert pg.image_seeds(8, 3) != seeds[:3]
    with pytest.raises(TypeError, match="seed must be a non-negative int"):
        pg.image_seeds(-1, 3)


class Unpicklable:
    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __call__(self):
        return None


@pytest.mark.parametrize(
    ("images", "options", "error", "match"),
    [
        ([], {}, ValueError, "images is empty"),
        ("image.png", {}, TypeError, "images must be a tensor"),
        ({"a/b": torch.zeros(3)}, {}, ValueError, "cannot name a file"),
        ({"a": torch.zeros(3), ".hidden": torch.zeros(3)}, {}, ValueError, "cannot name a file"),
        ([torch.zeros(3)], {"method": "mcmc"}, ValueError, "unknown method 'mcmc'"),
        ([torch.zeros(3)], {"chain": 4}, TypeError, r"unknown option\(s\) \['chain'\]"),
        ([torch.zeros(3)], {"checkpoint": "c.pt"}, ValueError, "cannot share"),
        ([torch.zeros(3)], {"chunk_size": 0}, ValueError, "chunk_size must be >= 1"),
        ([torch.zeros(3)], {"workers": 0}, ValueError, "workers must be >= 1"),
        ([torch.zeros(3)], {"client": "tcp://x:1"}, TypeError, "dask.distributed.Client"),
        ([torch.zeros(3)], {"seed": 1.5}, TypeError, "seed must be a non-negative int"),
        ([torch.zeros(3)], {"keep": False}, ValueError, "keep=False .* needs out=FOLDER"),
    ],
)
def test_bad_calls_fail_before_any_cluster_starts(images, options, error, match):
    program = pg.programs.linear_gaussian(dim=3)
    with pytest.raises(error, match=match):
        pg.infer_many(program, images, progress=False, **options)


def test_an_unpicklable_program_and_an_out_file_are_refused(tmp_path):
    with pytest.raises(TypeError, match="must pickle to travel to Dask workers"):
        pg.infer_many(Unpicklable(), [torch.zeros(1, 4, 4)], progress=False)
    not_a_folder = tmp_path / "file.nc"
    not_a_folder.write_text("")
    with pytest.raises(NotADirectoryError, match="give a folder path"):
        pg.infer_many(Unpicklable(), [torch.zeros(1, 4, 4)], out=not_a_folder)
