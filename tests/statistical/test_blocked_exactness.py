"""Exactness of abc_mcmc's blocked moves and the guide's independence proposals.

On the two-site conjugate program of ``tests/blocked_toy.py`` the Gaussian ABC kernel's target is
known in closed form. The chains' means, variances and the cross-site covariance must match it
within Monte Carlo standard error (from ArviZ's effective sample size), with one block per site,
with both sites in one block, and with a deliberately biased and over-confident guide proposing
every cycle: the guide may only change the speed, never the answer. Seeds are fixed and were not
tuned; tolerances come from the MCSE.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import probgraphics as pg
from probgraphics.programs.toy import linear_gaussian
from tests.blocked_toy import OBSERVATION, BiasedGuide, analytic_posterior, program
from tests.statistical.moments import assert_moments

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)

EPSILON = 0.3
MCSE_TOLERANCE = 4.0
RUN = {
    "chains": 32,
    "draws": 1500,
    "warmup": 400,
    "epsilon": EPSILON,
    "abc_kernel": "gaussian",
    "summary": "identity",
    "distance": "l2",
    "progress": False,
    "seed": 7,
}


def check_against_target(posterior, epsilon: float = EPSILON) -> None:
    a = posterior.samples["a"].double().numpy()  # (chains, draws, 2)
    b = posterior.samples["b"].double().numpy()[..., None]
    z = np.concatenate([a, b], axis=-1)
    mean, covariance = (t.numpy() for t in analytic_posterior(epsilon))
    # The a[0]-b cross moment against the exact covariance across sites.
    assert_moments(z, mean, covariance, ((0, 2),), MCSE_TOLERANCE)


@pytest.mark.parametrize(
    "options",
    [
        {"blocks": "sites"},  # a, b and the whitened noise of x: three blocks
        {"blocks": [["a", "b"]]},  # one named block of both sites, and the noise's
        {"guide": BiasedGuide(EPSILON), "init": "prior"},  # blocks + the biased guide's moves
    ],
    ids=["sites", "one-block", "biased-guide"],
)
def test_blocked_abc_mcmc_matches_the_exact_abc_target(options):
    posterior = pg.infer(program, {"x": OBSERVATION}, method="abc_mcmc", **{**RUN, **options})
    check_against_target(posterior)
    if "guide" in options:
        assert posterior.settings["guide_proposals"] is True
        # The guide's moves are taken (the last move of each cycle): the test exercises them.
        moves = 4  # a, b, the noise of x, the guide
        steps = RUN["warmup"] + np.arange(RUN["draws"])
        accepted = posterior.sample_stats["accepted"].numpy()[:, steps % moves == moves - 1]
        assert accepted.mean() > 0.05


@pytest.mark.parametrize("epsilon", [EPSILON, 0.0])
def test_integrated_noise_targets_the_same_abc_posterior(epsilon):
    # observation_noise="marginal" simulates the noise-free x and widens the kernel's bandwidth to
    # sqrt(eps^2 + noise^2): the ABC target of fresh noise (noise variance noise^2 + eps^2), with
    # no Monte Carlo noise in the kernel. A bandwidth of eps alone would give variance eps^2
    # (0.09 or 0 against 0.34 or 0.25). At eps = 0 it is the exact posterior.
    options = {**RUN, "epsilon": epsilon, "observation_noise": "marginal"}
    posterior = pg.infer(program, {"x": OBSERVATION}, method="abc_mcmc", **options)
    assert posterior.settings["observation_noise"] == "marginal"
    assert posterior.settings["noise_scale"] == pytest.approx(0.5)
    check_against_target(posterior, epsilon)


class LinearGaussianGuide:
    """A guide for ``linear_gaussian`` that is wrong on purpose: the exact ABC target shifted by
    one posterior standard deviation and twice as wide."""

    observed = "x"

    def __init__(self, program, x):
        mean, covariance = program.analytic_posterior(x, abc_epsilon=EPSILON)
        self.observed_shape = tuple(x.shape)
        self.site_shapes = {"z": tuple(mean.shape)}
        self.mean = (mean + covariance.diagonal().sqrt()).float()
        self.scale_tril = (2.0 * torch.linalg.cholesky(covariance)).float()

    def posterior(self, images, num_samples, *, generator=None):
        noise = torch.randn(num_samples, images.shape[0], self.mean.shape[0], generator=generator)
        return {"z": self.mean + noise @ self.scale_tril.T}


def test_guide_proposals_keep_linear_gaussian_exact():
    # One latent site: the cycle is the preconditioned joint move and the biased guide's
    # independence move.
    program = linear_gaussian(dim=4, noise=0.5, seed=0)
    x = pg.programs.simulate(program, seed=1)["x"]
    posterior = pg.infer(program, {"x": x}, guide=LinearGaussianGuide(program, x), **RUN)
    z = posterior.samples["z"].double().numpy()
    mean, covariance = (t.numpy() for t in program.analytic_posterior(x, abc_epsilon=EPSILON))
    assert_moments(z, mean, covariance, (), MCSE_TOLERANCE)
