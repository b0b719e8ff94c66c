"""Draw scenes from a program: every sample and deterministic site, ``n`` scenes in one call."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch

__all__ = ["simulate"]


def _accelerators() -> bool:
    """Whether torch sees a device other than the CPU whose generators ``torch.manual_seed``
    seeds (CUDA, MPS, XPU)."""
    xpu = getattr(torch, "xpu", None)
    return (
        torch.cuda.is_available()
        or torch.backends.mps.is_available()
        or (xpu is not None and xpu.is_available())
    )


def _manual_seed(seed: int) -> None:
    """``torch.manual_seed(seed)``, without its cost where torch sees no accelerator.

    On a CPU-only machine ``torch.manual_seed`` still queues lazy seeding calls for CUDA, XPU
    and MTIA, each formatting a stack trace: about 0.45 ms a call, 2% of a 64-scene
    ``simulate`` at 64 px. There it seeds the CPU generator alone, which is all the others
    would have seeded; with an accelerator it is ``torch.manual_seed``.
    """
    if _accelerators():
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(seed)


def simulate(
    program: Callable[[], object],
    n: int | None = None,
    *,
    seed: int | None = None,
    conditions: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Simulate ``n`` scenes from ``program`` in one batched call.

    Args:
        program: a scene program (a Pyro model taking no arguments).
        n: number of scenes. ``None`` draws one unbatched scene (``image`` shaped ``(C, H, W)``);
            an int wraps the program in ``pyro.plate("scenes", n)`` so every site gains a leading
            ``n`` (``image`` shaped ``(n, C, H, W)``).
        seed: makes the draw reproducible without touching the caller's global RNG state.
        conditions: optional site name -> value to fix (e.g. ``{"azimuth": torch.zeros(n)}``);
            values carry the leading ``n`` when ``n`` is given.

    Returns:
        dict of site name -> value for every sample site (latents and the observation) and every
        ``pyro.deterministic`` site (e.g. ``"render"``), in program order.
    """
    if not callable(program):
        raise TypeError(f"program must be a callable Pyro model, got {type(program).__name__}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be None (one scene) or an int >= 1, got {n!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {seed!r}")
    model = program
    if conditions:
        if not isinstance(conditions, dict):
            raise TypeError(f"conditions must be a dict of site name -> tensor, got {conditions!r}")
        model = poutine.condition(program, data=conditions)
    rng = torch.random.fork_rng() if seed is not None else contextlib.nullcontext()
    with rng, torch.no_grad():
        if seed is not None:
            _manual_seed(seed)
        plate = pyro.plate("scenes", n, dim=-1) if n is not None else contextlib.nullcontext()
        with plate:
            trace = poutine.trace(model).get_trace()
    values = {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
    }
    if conditions:
        unknown = set(conditions) - set(values)
        if unknown:
            raise KeyError(
                f"conditions name sites the program does not have: {sorted(unknown)}; "
                f"its sites are {sorted(values)}"
            )
    return values
