"""Inference engines: prior whitening, ABC kernels, the shared ABC run loop, summaries and
distances, and the Posterior result.

``inference`` works on any Pyro program and any summary callable; it never imports
``probgraphics.programs``, ``render`` or ``nets``.
"""

from __future__ import annotations

from probgraphics.inference.distances import DISTANCES, StandardizedL2, l1, l2
from probgraphics.inference.learned_summaries import SemiAutomaticSummary, semi_automatic_summary
from probgraphics.inference.posterior import Posterior
from probgraphics.inference.simulator import Simulation, Simulator
from probgraphics.inference.summaries import identity_summary, pixel_summary
from probgraphics.inference.whitening import (
    WhiteningError,
    WhiteningLayout,
    WhiteningMessenger,
    build_layout,
    unwhiten,
    whiten,
)

__all__ = [
    "DISTANCES",
    "Posterior",
    "SemiAutomaticSummary",
    "Simulation",
    "Simulator",
    "StandardizedL2",
    "WhiteningError",
    "WhiteningLayout",
    "WhiteningMessenger",
    "build_layout",
    "identity_summary",
    "l1",
    "l2",
    "pixel_summary",
    "semi_automatic_summary",
    "unwhiten",
    "whiten",
]
