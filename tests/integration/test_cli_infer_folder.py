"""`probgraphics infer FOLDER/ --out FOLDER/`: every image of a folder through infer_many on a
local Dask cluster the command starts itself; an unreadable file fails alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import probgraphics as pg
from probgraphics.cli import main
from probgraphics.imageio import load_image
from probgraphics.inference.posterior import Posterior

RESOLUTION = 16
SIZES = ["--chains", "4", "--draws", "10", "--warmup", "10", "--pilot-size", "64"]
COMMON = [
    "--program",
    "face",
    "--program-option",
    f"resolution={RESOLUTION}",
    "--summary",
    "pixel",
    "--init",
    "pilot",
    *SIZES,
    "--seed",
    "3",
    "--quiet",
]


def write_png(path, image: torch.Tensor) -> None:
    pixels = (image[0].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(path)


def test_a_folder_is_inferred_image_by_image_and_a_broken_file_fails_alone(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    scenes = pg.programs.simulate(pg.programs.face(resolution=RESOLUTION), n=2, seed=1)
    write_png(photos / "a.png", scenes["image"][0])
    (photos / "b_broken.png").write_bytes(b"not a png at all")
    write_png(photos / "c.png", scenes["image"][1])
    (photos / "notes.txt").write_text("not an image")
    out = tmp_path / "posteriors"

    code = main(["infer", str(photos), "--out", str(out), "--workers", "1", *COMMON])
    captured = capsys.readouterr()
    assert code == 1, captured.err  # one image failed
    assert sorted(p.name for p in out.iterdir()) == ["a.nc", "c.nc", "infer_many.json"]
    assert "b_broken: failed: ValueError:" in captured.err
    assert "1 of 3 images failed" in captured.out and "on 1 worker(s)" in captured.out

    manifest = json.loads((out / "infer_many.json").read_text())
    assert [record["status"] for record in manifest["images"]] == ["ok", "failed", "ok"]
    # Seeds follow the files' order, the broken file included: each image equals infer on it.
    seeds = pg.image_seeds(3, 3)
    program = pg.programs.face(resolution=RESOLUTION)
    for position, name in ((0, "a"), (2, "c")):
        image = load_image(photos / f"{name}.png", resolution=RESOLUTION).image
        expected = pg.infer(
            program,
            image,
            seed=seeds[position],
            summary="pixel",
            init="pilot",
            chains=4,
            draws=10,
            warmup=10,
            pilot_size=64,
            progress=False,
        )
        got = Posterior.load(out / f"{name}.nc")
        for site, value in expected.samples.items():
            assert torch.equal(got.samples[site], value), (name, site)


def test_scheduler_runs_the_folder_on_an_existing_cluster(tmp_path, capsys, monkeypatch):
    from probgraphics import cli
    from probgraphics.scale import local_client

    photos = tmp_path / "photos"
    photos.mkdir()
    scenes = pg.programs.simulate(pg.programs.face(resolution=RESOLUTION), n=2, seed=2)
    for index in range(2):
        write_png(photos / f"face{index}.png", scenes["image"][index])
    out = tmp_path / "out"
    with local_client(1) as client:
        address = client.scheduler.address
        code = main(["infer", str(photos), "--out", str(out), "--scheduler", address, *COMMON])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"on the Dask scheduler at {address}" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["face0.nc", "face1.nc", "infer_many.json"]
    monkeypatch.setattr(cli, "SCHEDULER_TIMEOUT_S", 1)
    assert main(["infer", str(photos), "--out", str(out), "--scheduler", "tcp://127.0.0.1:9"]) == 2
    assert "cannot reach the Dask scheduler" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "needs --out FOLDER"),
        (["--out", "FILE"], "is a file"),
        (["--out", "OUT", "--figure", "f.png"], "--figure is for one image"),
        (["--out", "OUT", "--workers", "0"], "--workers must be >= 1"),
        (["--out", "OUT", "--workers", "2", "--scheduler", "tcp://x:1"], "give one of them"),
    ],
)
def test_folder_usage_errors_exit_2(tmp_path, capsys, extra, message):
    photos = tmp_path / "photos"
    photos.mkdir()
    write_png(photos / "a.png", torch.zeros(1, RESOLUTION, RESOLUTION))
    (tmp_path / "FILE").write_text("")
    extra = [str(tmp_path / value) if value in ("FILE", "OUT") else value for value in extra]
    assert main(["infer", str(photos), *extra, *COMMON]) == 2
    assert message in capsys.readouterr().err


def test_an_empty_folder_and_folder_flags_on_one_image_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["infer", str(empty), "--out", str(tmp_path / "out"), *COMMON]) == 2
    assert "holds no .png/.jpg/.jpeg images" in capsys.readouterr().err
    image = tmp_path / "a.png"
    write_png(image, torch.zeros(1, RESOLUTION, RESOLUTION))
    assert main(["infer", str(image), "--workers", "2", *COMMON]) == 2
    assert "--workers apply to a folder of images" in capsys.readouterr().err
