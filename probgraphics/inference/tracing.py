"""Looking inside a Pyro program by running it once: its sample sites and its plate depth.

Shared by SVI training (:mod:`probgraphics.inference.svi`) and the encoder guides
(:mod:`probgraphics.nets.guides`), which both need the observed site's shape and the program's
plate nesting before they run anything. Works on any Pyro program (no ``probgraphics.programs``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro.poutine as poutine
import torch

__all__ = ["sample_sites"]


def sample_sites(
    program: Callable[[], Any], observed: str, *, hint: str = "its observed site"
) -> tuple[dict[str, dict[str, Any]], int]:
    """Trace ``program()`` once and return its sample sites and its deepest plate nesting.

    The trace runs under ``torch.no_grad()`` and does not touch the caller's random state.

    Args:
        program: a Pyro model taking no arguments.
        observed: the name of the site that must be among its sample sites.
        hint: what ``observed=`` should be, for the error message (``Pass observed=<hint>.``).

    Returns:
        ``(sites, plate_nesting)``: ``sites`` maps each sample site's name to its trace node,
        in program order (the subsample sites ``pyro.plate`` records are left out; observed and
        ``pyro.deterministic`` sites are in); ``plate_nesting`` is the largest number of plates
        any of them is under (0 without plates).

    Raises:
        ValueError: ``program`` has no sample site named ``observed``.
    """
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        trace = poutine.trace(program).get_trace()
    sites = {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and type(site["fn"]).__name__ != "_Subsample"
    }
    if observed not in sites:
        raise ValueError(
            f"the program has no sample site named {observed!r}; its sample sites are "
            f"{list(sites)}. Pass observed=<{hint}>."
        )
    nesting = max((len(site["cond_indep_stack"]) for site in sites.values()), default=0)
    return sites, nesting
