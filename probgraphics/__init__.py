"""probgraphics: probabilistic-programming inference for vision as inverse graphics.

Scenes are Pyro programs; ABC-MCMC with elliptical proposals samples their posteriors without a
likelihood, using encoders as summary statistics; results are ArviZ data.

>>> import probgraphics as pg
>>> program = pg.programs.face(resolution=64)
>>> image = pg.programs.simulate(program, seed=0)["image"]
>>> posterior = pg.infer(program, image, method="abc_mcmc", chains=64, draws=200)  # doctest: +SKIP
>>> idata = posterior.to_arviz()                                                    # doctest: +SKIP
"""

import os

# torch's and numba's OpenMP pools spin after each parallel region by default, and on a machine
# with few cores the two pools starve each other (measured: 32 s instead of 3.9 s for one ABC run).
# The OpenMP runtime reads this when torch loads it, so it must be set before torch is imported;
# a user who imports torch first can export it in the shell instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from probgraphics import programs  # noqa: E402
from probgraphics.api import infer  # noqa: E402
from probgraphics.config import set_num_threads  # noqa: E402
from probgraphics.inference.learned_summaries import semi_automatic_summary  # noqa: E402
from probgraphics.inference.posterior import Posterior  # noqa: E402
from probgraphics.inference.svi import TrainResult, train_guide  # noqa: E402
from probgraphics.scale import ImagePosteriors, image_seeds, infer_many  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ImagePosteriors",
    "Posterior",
    "TrainResult",
    "__version__",
    "image_seeds",
    "infer",
    "infer_many",
    "programs",
    "semi_automatic_summary",
    "set_num_threads",
    "train_guide",
]
