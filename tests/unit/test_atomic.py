"""probgraphics.atomic: whole files or none, permissions from the mode and the umask."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from probgraphics import atomic
from probgraphics.atomic import (
    PRIVATE,
    atomic_open,
    atomic_path,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
)


def permissions(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda value: os.umask(value)
    os.umask(previous)


def test_writers_round_trip_and_return_the_path(tmp_path):
    assert atomic_write_text(tmp_path / "a.txt", "héllo\n") == tmp_path / "a.txt"
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "héllo\n"
    assert atomic_write_bytes(str(tmp_path / "b.bin"), b"\x00\x01") == tmp_path / "b.bin"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    payload = {"weights": torch.arange(4.0), "step": 3}
    atomic_torch_save(tmp_path / "c.pt", payload, fsync=False)
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)
    assert loaded["step"] == 3 and torch.equal(loaded["weights"], payload["weights"])
    with atomic_path(tmp_path / "d.txt") as temporary:
        assert temporary.parent == tmp_path and temporary.name.startswith(".d.txt.")
        temporary.write_text("by name")
    assert (tmp_path / "d.txt").read_text() == "by name"
    atomic_write_text(tmp_path / "a.txt", "replaced")
    assert (tmp_path / "a.txt").read_text() == "replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.pt", "d.txt"]


def test_permissions_follow_the_mode_less_the_umask(tmp_path, umask):
    umask(0o022)
    assert permissions(atomic_write_text(tmp_path / "public.md", "x")) == 0o644
    assert permissions(atomic_write_text(tmp_path / "private.pt", "x", mode=PRIVATE)) == 0o600
    with atomic_path(tmp_path / "figure.png") as temporary:
        temporary.write_bytes(b"png")
    assert permissions(tmp_path / "figure.png") == 0o644
    umask(0o077)
    assert permissions(atomic_write_text(tmp_path / "strict.md", "x")) == 0o600
    umask(0o002)
    assert permissions(atomic_write_text(tmp_path / "group.md", "x", mode=0o664)) == 0o664


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    old = atomic_write_text(tmp_path / "card.md", "old")
    with pytest.raises(OSError, match="disk full"), atomic_open(old, text=True) as handle:
        handle.write("partial")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"), atomic_path(old) as temporary:
        temporary.write_text("partial")
        raise OSError("disk full")
    with pytest.raises(KeyboardInterrupt), atomic_open(tmp_path / "fresh.bin") as handle:
        handle.write(b"partial")
        raise KeyboardInterrupt
    assert old.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.md"]


def test_a_writer_that_removes_its_temporary_file_still_fails_cleanly(tmp_path):
    with pytest.raises(ValueError, match="bad figure"), atomic_path(tmp_path / "f.png") as temp:
        temp.unlink()
        raise ValueError("bad figure")
    assert list(tmp_path.iterdir()) == []


def test_failing_torch_save_leaves_nothing(tmp_path, monkeypatch):
    def failing_save(payload, handle):
        handle.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save(tmp_path / "run.pt", {"step": 1})
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="permission bits"):
        atomic_write_text(tmp_path / "x", "x", mode=0o1777)
    with pytest.raises(ValueError, match="permission bits"):
        atomic_write_text(tmp_path / "x", "x", mode=True)
    with pytest.raises(FileNotFoundError):
        atomic_write_text(tmp_path / "missing" / "x", "x")
    assert list(tmp_path.iterdir()) == []


def test_name_collisions_are_retried_then_reported(tmp_path, monkeypatch):
    tokens = iter(["aaaaaaaaaaaa", "aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: next(tokens))
    atomic_write_text(tmp_path / "x", "first")  # takes .x.aaaa...tmp, renamed away
    (tmp_path / ".x.aaaaaaaaaaaa.tmp").write_text("someone else's")
    atomic_write_text(tmp_path / "x", "second")  # aaaa... is taken: retried with bbbb...
    assert (tmp_path / "x").read_text() == "second"
    assert (tmp_path / ".x.aaaaaaaaaaaa.tmp").read_text() == "someone else's"
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: "aaaaaaaaaaaa")
    with pytest.raises(FileExistsError, match="stale"):
        atomic_write_text(tmp_path / "x", "third")
    assert (tmp_path / "x").read_text() == "second"
