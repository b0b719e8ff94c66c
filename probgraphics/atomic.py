"""Atomic file writes: a file appears at its path whole, or not at all.

Every writer here writes to a fresh temporary file in the destination's own folder (the same file
system, so the final rename is atomic), optionally flushes it to disk with ``fsync``, and then
``os.replace``-s it onto the destination. If writing fails the temporary file is removed and the
error re-raised: an existing file at the destination keeps its old content and no partial file is
left behind.

Permissions: the temporary file is created with ``mode`` and the process umask applies, as with
:func:`open` (so the default :data:`PUBLIC` gives ``0o644`` under the usual umask ``022``).
Checkpoints pass :data:`PRIVATE` (``0o600``, what :func:`tempfile.mkstemp` gives).

The destination's folder must exist; callers create it (or refuse) as their contract says.
This module imports nothing from probgraphics (every subpackage may use it) and imports torch
only inside :func:`atomic_torch_save`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "PRIVATE",
    "PUBLIC",
    "atomic_open",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
]

#: Readable and writable by the owner only (checkpoints).
PRIVATE = 0o600
#: Readable by everyone, writable by the owner (figures, posteriors, model cards, results), less
#: what the umask removes.
PUBLIC = 0o644

# The flags tempfile.mkstemp uses: create exclusively, never through a symbolic link.
_CREATE_FLAGS = (
    os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
)
_ATTEMPTS = 100


def _create_temporary(path: Path, mode: int) -> tuple[int, Path]:
    """Create an empty, uniquely named file next to ``path``; return its descriptor and path.

    ``os.open`` applies the umask to ``mode`` itself, so the process umask is honoured without
    reading it (reading it means setting it, which races with other threads).
    """
    for _ in range(_ATTEMPTS):
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(temporary, _CREATE_FLAGS, mode), temporary
        except FileExistsError:
            continue
    raise FileExistsError(
        f"could not create a temporary file next to {str(path)!r} after {_ATTEMPTS} tries; "
        "clear the stale .*.tmp files in that folder."
    )


@contextlib.contextmanager
def _replace_on_success(temporary: Path, path: Path) -> Iterator[None]:
    """Rename ``temporary`` onto ``path`` when the block succeeds; delete it when it raises."""
    try:
        yield
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _check_mode(mode: int) -> None:
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ValueError(
            f"mode must be permission bits between 0 and 0o777 (e.g. 0o644), got {mode!r}."
        )


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike[str], *, mode: int = PUBLIC, fsync: bool = True
) -> Iterator[Path]:
    """A temporary path to write by name; renamed onto ``path`` when the block ends cleanly.

    For writers that take a file name (``Figure.savefig``, NetCDF writers). The temporary file
    exists (empty, with ``mode`` less the umask) when the block starts; the writer overwrites it.
    With ``fsync`` it is flushed to disk before the rename. If the block raises, the temporary
    file is removed and the error propagates; ``path`` is untouched.

    >>> with atomic_path("figure.png") as temporary:   # doctest: +SKIP
    ...     fig.savefig(temporary, format="png")
    """
    _check_mode(mode)
    path = Path(os.fspath(path))
    descriptor, temporary = _create_temporary(path, mode)
    os.close(descriptor)
    with _replace_on_success(temporary, path):
        yield temporary
        if fsync:
            # Opened for writing: some platforms refuse fsync on a read-only descriptor.
            with open(temporary, "rb+") as handle:
                os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str],
    *,
    text: bool = False,
    encoding: str = "utf-8",
    mode: int = PUBLIC,
    fsync: bool = True,
) -> Iterator[IO[Any]]:
    """An open file (binary, or text with ``text=True``) that replaces ``path`` when closed.

    The handle writes to a temporary file next to ``path``; when the block ends cleanly it is
    flushed (and, with ``fsync``, synced to disk), closed and renamed onto ``path``. If the block
    raises, the temporary file is removed and the error propagates; ``path`` is untouched.
    """
    _check_mode(mode)
    path = Path(os.fspath(path))
    descriptor, temporary = _create_temporary(path, mode)
    with _replace_on_success(temporary, path):
        try:
            if text:
                handle = os.fdopen(descriptor, "w", encoding=encoding)
            else:
                handle = os.fdopen(descriptor, "wb")
        except BaseException:
            os.close(descriptor)
            raise
        with handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, *, mode: int = PUBLIC, fsync: bool = True
) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`); returns the path."""
    with atomic_open(path, mode=mode, fsync=fsync) as handle:
        handle.write(data)
    return Path(os.fspath(path))


def atomic_write_text(
    path: str | os.PathLike[str],
    text: str,
    *,
    encoding: str = "utf-8",
    mode: int = PUBLIC,
    fsync: bool = True,
) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`); returns the path."""
    with atomic_open(path, text=True, encoding=encoding, mode=mode, fsync=fsync) as handle:
        handle.write(text)
    return Path(os.fspath(path))


def atomic_torch_save(
    path: str | os.PathLike[str], payload: Any, *, mode: int = PUBLIC, fsync: bool = True
) -> Path:
    """``torch.save(payload, ...)`` to ``path`` atomically (see :func:`atomic_open`).

    ``torch.save`` is looked up when called, so a patched ``torch.save`` (tests simulating a
    full disk) is the one used. Returns the path.
    """
    import torch

    with atomic_open(path, mode=mode, fsync=fsync) as handle:
        torch.save(payload, handle)
    return Path(os.fspath(path))
