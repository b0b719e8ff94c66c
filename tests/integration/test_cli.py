"""The command line, run in-process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from probgraphics.cli import main


def test_demo_infers_a_scene_and_writes_its_figures(tmp_path, capsys):
    argv = [
        "demo",
        "--out",
        str(tmp_path),
        "--resolution",
        "32",
        "--chains",
        "8",
        "--draws",
        "10",
        "--warmup",
        "10",
        "--summary",
        "pixel",
        "--init",
        "pilot",
        "--guide",
        "none",
        "--quiet",
    ]
    assert main(argv) == 0
    for name in ("prior_scenes.png", "trace.png", "posterior_renders.png"):
        png = tmp_path / name
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (tmp_path / "posterior.nc").exists()
    out = capsys.readouterr().out
    # The summary table compares each pose/light site with its true value.
    for site in ("azimuth", "elevation", "light"):
        assert site in out
    assert "true" in out and "simulations in" in out


def test_demo_defaults_are_the_recommended_call(tmp_path, capsys):
    # The bundled defaults (pixels, face-guide-64 starting and proposing) under a small budget.
    argv = ["demo", "--out", str(tmp_path), "--simulations", "1500"]
    assert main([*argv, "--quiet"]) == 0
    assert (tmp_path / "posterior.nc").exists()
    out = capsys.readouterr().out
    assert "pixel summary, guide face-guide-64 (start and proposals)" in out
    assert "at most 1500 simulations" in out and "largest R-hat of" in out
    simulations = int(out.split(" simulations in ")[0].split()[-1])
    assert simulations <= 1500


def test_demo_collapses_the_texture_when_asked(tmp_path, capsys):
    argv = ["demo", "--out", str(tmp_path), "--simulations", "1500", "--collapse", "texture"]
    assert main([*argv, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "texture collapsed" in out
    simulations = int(out.split(" simulations in ")[0].split()[-1])
    assert simulations <= 1500
    assert main(["demo", "--out", str(tmp_path), "--collapse", "light", "--quiet"]) == 2
    assert "standard normal" in capsys.readouterr().err


def test_demo_summary_for_another_size_exits_2(capsys):
    argv = ["demo", "--resolution", "32", "--chains", "2", "--draws", "2", "--init", "pilot"]
    assert main([*argv, "--guide", "none", "--summary", "dcign-face-64", "--quiet"]) == 2
    assert "--resolution 64" in capsys.readouterr().err
    # The bundled guide fits 64 px only, and says so.
    assert main([*argv, "--quiet"]) == 2
    assert "face program at resolution 64" in capsys.readouterr().err


def test_bad_usage_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_bad_value_is_reported_with_exit_2(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--resolution", "0"]) == 2
    assert "resolution must be" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- infer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def face_png(tmp_path_factory):
    """A simulated 32 px face scene saved as an 8-bit grayscale PNG; returns (path, pixels)."""
    from probgraphics import programs

    scene = programs.simulate(programs.face(resolution=32), seed=3)
    pixels = (scene["image"][0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    path = tmp_path_factory.mktemp("images") / "face.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


def test_infer_writes_the_posterior_and_figure(face_png, tmp_path, capsys):
    from probgraphics.inference.posterior import Posterior

    path, pixels = face_png
    out = tmp_path / "results" / "posterior.nc"  # the folder is created
    figure = tmp_path / "figure.png"
    argv = [
        "infer",
        str(path),
        "--program",
        "face",
        "--program-option",
        "resolution=32",
        "--method",
        "abc_mcmc",
        "--summary",
        "pixel",
        "--chains",
        "4",
        "--draws",
        "5",
        "--warmup",
        "5",
        "--pilot-size",
        "200",
        "--seed",
        "1",
        "--out",
        str(out),
        "--figure",
        str(figure),
        "--quiet",
    ]
    assert main(argv) == 0
    assert figure.read_bytes()[:8] == PNG_MAGIC
    posterior = Posterior.load(out)
    assert (posterior.num_chains, posterior.num_draws) == (4, 5)
    assert posterior.settings["seed"] == 1
    # The observation is the PNG's pixels: already 32 px and gray, so neither resized nor
    # converted.
    observed = posterior.observation["image"]
    assert observed.shape == (1, 32, 32)
    torch.testing.assert_close(
        observed[0], torch.from_numpy(pixels / 255.0).float(), atol=1e-6, rtol=0
    )
    printed = capsys.readouterr().out
    for fragment in (
        "face.png",
        "PNG",
        "mode L, 32x32 px",
        "conversions: none",
        "crop: centre square",
        "resize: none (already at the resolution)",
        "abc_mcmc",
        "pixel summary",
        "azimuth",
        "elevation",
        "light",
        "r_hat",
        "simulations in",
        "wrote",
    ):
        assert fragment in printed, fragment


def test_infer_collapses_the_texture_when_asked(face_png, tmp_path, capsys):
    from probgraphics.inference.posterior import Posterior

    path, _ = face_png
    out = tmp_path / "posterior.nc"
    argv = ["infer", str(path), "--program-option", "resolution=32", "--summary", "pixel"]
    argv += ["--chains", "4", "--draws", "5", "--warmup", "5", "--pilot-size", "200"]
    argv += ["--collapse", "texture", "--out", str(out), "--no-figure", "--quiet"]
    assert main(argv) == 0
    posterior = Posterior.load(out)
    assert posterior.settings["collapse"] == "texture"
    assert posterior.settings["observation_noise"] == "marginal"


def test_infer_figure_defaults_next_to_the_posterior(face_png, tmp_path):
    path, _ = face_png
    out = tmp_path / "run.nc"
    argv = [
        "infer",
        str(path),
        "--program-option",
        "resolution=32",
        "--method",
        "abc_rejection",
        "--simulations",
        "400",
        "--pilot-size",
        "50",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    assert out.exists() and (tmp_path / "run.png").read_bytes()[:8] == PNG_MAGIC


def test_infer_bad_path_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "no-such-face.png"
    assert main(["infer", str(missing), "--out", str(tmp_path / "p.nc")]) == 2
    err = capsys.readouterr().err
    assert "no such image file" in err and "no-such-face.png" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p.nc").exists()


def test_infer_unreadable_file_exits_2(tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("this is not a picture")
    assert main(["infer", str(text), "--out", str(tmp_path / "p.nc")]) == 2
    err = capsys.readouterr().err
    assert "expected a PNG or JPEG" in err and len(err.strip().splitlines()) == 1


def test_infer_wrong_size_exits_2(tmp_path, capsys):
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(tiny)
    assert main(["infer", str(tiny), "--out", str(tmp_path / "p.nc")]) == 2
    assert "too small" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--crop-box", "1,2,3"], "TOP,LEFT,HEIGHT,WIDTH"),
        (["--crop-box", "0,0,99,99"], "reaches outside the image"),
        (["--program-option", "resolution"], "KEY=VALUE"),
        (["--program-option", "no_such_option=1"], "does not take the options"),
        (["--program", "no-such-program"], "unknown program"),
        (["--program", "linear_gaussian"], "no image resolution"),
        (["--summary", "no-such-summary"], "unknown --summary"),
        (["--device", "cuda:99"], "--device cpu"),
        (["--method", "guide", "--guide", "nope"], "no pretrained network named 'nope'"),
        # face-guide-64 encodes 64 px images; this program observes 32 px ones.
        (["--init", "guide", "--program-option", "resolution=32"], "cannot guide this program"),
        (["--collapse", "light", "--program-option", "resolution=32"], "standard normal"),
        (["--method", "abc_slice", "--collapse", "texture"], "unknown option(s) ['collapse']"),
    ],
)
def test_infer_bad_options_exit_2(face_png, tmp_path, capsys, extra, message):
    path, _ = face_png
    argv = ["infer", str(path), "--out", str(tmp_path / "p.nc"), "--quiet", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_program_options_are_python_literals_or_strings():
    from probgraphics.cli import UsageError, _parse_program_options

    parsed = _parse_program_options(
        ["resolution=32", "color=rgb", "pose_range=(-30, 30)", "noise=0.05", "model=dcign-face-64"]
    )
    assert parsed == {
        "resolution": 32,
        "color": "rgb",
        "pose_range": (-30, 30),
        "noise": 0.05,
        "model": "dcign-face-64",
    }
    for bad in (["resolution"], ["=3"], ["a=1", "a=2"]):
        with pytest.raises(UsageError):
            _parse_program_options(bad)


# -------------------------------------------------------------------------------- help, train


@pytest.mark.parametrize("command", [[], ["demo"], ["infer"], ["train"], ["bench"]])
def test_help_exits_0(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage: probgraphics" in capsys.readouterr().out


def test_help_lists_recipes_and_benchmarks(capsys):
    training = pytest.importorskip("probgraphics.training")
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for name in training.RECIPES:
        assert name in out
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "render" in capsys.readouterr().out


def test_train_runs_a_recipe_with_the_options(monkeypatch, tmp_path, capsys):
    training = pytest.importorskip("probgraphics.training")
    calls = []

    def tiny_recipe(
        out_path, *, steps=10, seed=0, batch_size=4, progress=True, command=None, ratio=(1, 1)
    ):
        calls.append(
            dict(
                out_path=out_path,
                steps=steps,
                seed=seed,
                batch_size=batch_size,
                progress=progress,
                command=command,
                ratio=ratio,
            )
        )
        out_path.write_bytes(b"weights")
        return training.TrainResult(losses=(3.0, 1.0), wall_time=0.5, steps=steps)

    monkeypatch.setitem(training.RECIPES, "tiny", tiny_recipe)
    out = tmp_path / "nets" / "tiny.pt"
    argv = [
        "train",
        "tiny",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--seed",
        "5",
        "--out",
        str(out),
        "--option",
        "ratio=(1, 3)",
        "--quiet",
    ]
    assert main(argv) == 0
    assert calls == [
        dict(
            out_path=out,
            steps=2,
            seed=5,
            batch_size=8,
            progress=False,
            command="probgraphics " + " ".join(argv),
            ratio=(1, 3),
        )
    ]
    assert out.read_bytes() == b"weights"
    assert "trained tiny: 2 steps" in capsys.readouterr().out
    # An option the recipe does not take is bad usage.
    assert main(["train", "tiny", "--checkpoint", str(tmp_path / "c.pt"), "--out", str(out)]) == 2
    assert "does not take --checkpoint" in capsys.readouterr().err
    # --option names a recipe keyword; one the recipe lacks, or one a flag sets, is bad usage.
    assert main(["train", "tiny", "--out", str(out), "--option", "lr=0.1"]) == 2
    assert "does not take --lr" in capsys.readouterr().err
    assert main(["train", "tiny", "--out", str(out), "--option", "steps=3"]) == 2
    assert "--option steps is set by the command itself" in capsys.readouterr().err


def test_train_unknown_recipe_exits_2(capsys):
    pytest.importorskip("probgraphics.training")
    assert main(["train", "no-such-recipe"]) == 2
    assert "unknown recipe 'no-such-recipe'" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------- bench


def test_bench_unknown_name_exits_2(capsys):
    assert main(["bench", "no-such-benchmark"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'no-such-benchmark'" in err and "render" in err


def test_bench_runs_the_script_with_its_arguments(monkeypatch, tmp_path):
    import probgraphics.cli as cli

    folder = tmp_path / "benchmarks"
    folder.mkdir()
    (folder / "echo.py").write_text(
        '"""Write the arguments."""\n'
        "import sys, pathlib\n"
        "pathlib.Path(sys.argv[1]).write_text(' '.join(sys.argv[2:]))\n"
        "sys.exit(3)\n"
    )
    (folder / "_helper.py").write_text("")  # helpers are not benchmarks
    monkeypatch.setattr(cli, "_benchmarks_dir", lambda: folder)
    record = tmp_path / "argv.txt"
    # The script's exit code passes through; its options pass on untouched.
    assert main(["bench", "echo", str(record), "--quick", "--seed", "2"]) == 3
    assert record.read_text() == "--quick --seed 2"
    assert main(["bench", "_helper"]) == 2


def test_bench_without_a_source_checkout_exits_2(monkeypatch, capsys):
    import probgraphics.cli as cli

    monkeypatch.setattr(cli, "_benchmarks_dir", lambda: None)
    assert main(["bench", "render"]) == 2
    assert "source checkout" in capsys.readouterr().err


def test_infer_with_a_pretrained_encoder_summary(face_png, monkeypatch, tmp_path, capsys):
    """``--summary NAME[:groups]`` loads a network from the pretrained folder; one built for
    another image size is refused before the run, with the fix."""
    pretrained = pytest.importorskip("probgraphics.nets.pretrained")
    from probgraphics.nets import DCIGN, DCIGNConfig, save_checkpoint

    torch.manual_seed(0)
    net = DCIGN(
        DCIGNConfig(
            image_size=32, channels=(8, 8), decoder_channels=(8, 8), padding=2, code_size=16
        )
    )
    save_checkpoint(tmp_path / "tiny-dcign.pt", net, net.config, kind="dcign")
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    path, _ = face_png
    out = tmp_path / "p.nc"
    argv = [
        "infer",
        str(path),
        "--summary",
        "tiny-dcign:azimuth,light",
        "--chains",
        "4",
        "--draws",
        "3",
        "--warmup",
        "3",
        "--pilot-size",
        "50",
        "--out",
        str(out),
        "--no-figure",
        "--quiet",
    ]
    assert main([*argv, "--program-option", "resolution=32"]) == 0
    assert out.exists() and not (tmp_path / "p.png").exists()
    assert "pretrained encoder 'tiny-dcign', groups azimuth,light" in capsys.readouterr().out
    assert main([*argv, "--program-option", "resolution=64"]) == 2
    assert "--program-option resolution=" in capsys.readouterr().err


def test_infer_method_guide_writes_the_amortized_posterior(tmp_path, capsys):
    from probgraphics.inference.posterior import Posterior

    out = tmp_path / "photo.nc"
    argv = ["infer", "sample-photo", "--method", "guide", "--draws", "50", "--out", str(out)]
    assert main([*argv, "--seed", "4", "--quiet"]) == 0
    posterior = Posterior.load(out)
    assert posterior.n_simulations == 0 and posterior.num_draws == 50
    azimuth = posterior.samples["azimuth"]
    # Draws of q(z | photo) lie in the site's support and are not all the same.
    assert bool(((azimuth > -90) & (azimuth < 90)).all()) and float(azimuth.std()) > 0
    printed = capsys.readouterr().out
    assert "guide face-guide-64" in printed and "no simulations" in printed
    assert (tmp_path / "photo.png").read_bytes()[:8] == PNG_MAGIC
