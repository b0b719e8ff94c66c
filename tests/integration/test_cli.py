"""The command line, run in-process."""

from __future__ import annotations

import pytest

from probgraphics.cli import main


def test_demo_writes_a_png(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--n", "4", "--resolution", "32"]) == 0
    png = tmp_path / "faces.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "rendered 4 face scenes" in capsys.readouterr().out


def test_bad_usage_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2


def test_bad_value_is_reported_with_exit_2(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--resolution", "0"]) == 2
    assert "resolution must be" in capsys.readouterr().err
