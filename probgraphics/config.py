"""Process-wide settings: thread counts for torch and numba.

These machines have few cores; oversubscribed OpenMP threads (torch's intra-op pool plus numba's
pool, each defaulting to every core) make rendering 10-30x slower. Everything in probgraphics that
sets threads goes through :func:`set_num_threads`.
"""

from __future__ import annotations

import os

__all__ = ["set_num_threads", "default_num_threads"]


def default_num_threads() -> int:
    """Threads to use when the user has not said: ``OMP_NUM_THREADS`` if set, else all cores."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, os.cpu_count() or 1)


def set_num_threads(n: int | None = None) -> int:
    """Set torch's and numba's thread counts to ``n`` (default: :func:`default_num_threads`).

    Returns the number set. numba's count cannot exceed ``NUMBA_NUM_THREADS`` (fixed when numba is
    first imported), so it is clipped to that.
    """
    if n is None:
        n = default_num_threads()
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads expects a positive int, got {n!r}; pass e.g. 1 or 2.")
    import torch

    torch.set_num_threads(n)
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # numba is a dependency, but the torch paths work without it
        pass
    return n
