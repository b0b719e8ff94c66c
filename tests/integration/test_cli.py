"""The command line, run in-process."""

from __future__ import annotations

import pytest

from probgraphics.cli import main


def test_demo_infers_a_scene_and_writes_its_figures(tmp_path, capsys):
    argv = ["demo", "--out", str(tmp_path), "--resolution", "32", "--chains", "8",
            "--draws", "10", "--warmup", "10", "--quiet"]
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


def test_bad_usage_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_bad_value_is_reported_with_exit_2(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--resolution", "0"]) == 2
    assert "resolution must be" in capsys.readouterr().err
