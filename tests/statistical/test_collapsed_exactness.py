"""Exactness of abc_mcmc's collapsed moves (``collapse=site``).

On the program of ``tests/collapsed_toy.py`` (``t`` enters the observation linearly given a
nonlinear ``theta``) the ABC target with the noise integrated out is known by quadrature. The
chains' means, variances, the ``theta``-``t`` cross moment and ``theta``'s 10% and 90% quantiles
must match it within Monte Carlo standard error (ArviZ's effective sample size), at ``eps = 0``
(the exact posterior) and above it, with the program's true affine map, with a deliberately wrong
one (it is only a proposal: the acceptance ratio corrects it), and with a biased guide proposing
``theta``. Seeds are fixed and were not tuned; tolerances come from the MCSE.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch

import probgraphics as pg
from probgraphics.programs.toy import linear_gaussian
from tests.collapsed_toy import OBSERVATION, CollapsedToy, posterior_moments
from tests.statistical.moments import assert_moments, mcse

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)

MCSE_TOLERANCE = 4.0
RUN = {
    "chains": 16,
    "draws": 1500,
    "warmup": 300,
    "collapse": "t",
    "progress": False,
    "seed": 11,
}


def check_against_quadrature(posterior, epsilon: float) -> None:
    theta = posterior.samples["theta"].double().numpy()[..., None]  # (chains, draws, 1)
    t = posterior.samples["t"].double().numpy()
    z = np.concatenate([theta, t], axis=-1)
    exact = posterior_moments(epsilon)
    mean, covariance = exact["mean"].numpy(), exact["covariance"].numpy()
    # theta's cross moments with t: the conditional must follow theta.
    assert_moments(z, mean, covariance, ((0, 1), (0, 2)), MCSE_TOLERANCE)
    # theta's posterior is skewed and flat-topped: its tails must be right too.
    for level, key in ((0.1, "theta_q10"), (0.9, "theta_q90")):
        below = (theta[..., 0] <= exact[key]).mean()
        tolerance = MCSE_TOLERANCE * mcse((theta[..., 0] <= exact[key]).astype(np.float64))
        assert abs(below - level) < tolerance, level


@functools.cache
def collapsed_run(epsilon: float, wrong_map: bool = False):
    """One run of the toy program (shared by the tests that need the same one)."""
    program = CollapsedToy(wrong_map=wrong_map)
    return pg.infer(program, {"x": OBSERVATION}, method="abc_mcmc", epsilon=epsilon, **RUN)


@pytest.mark.parametrize("epsilon", [0.0, 0.3])
def test_collapsed_moves_match_the_quadrature_posterior(epsilon):
    posterior = collapsed_run(epsilon)
    assert posterior.settings["collapse"] == "t"
    assert posterior.settings["observation_noise"] == "marginal"
    check_against_quadrature(posterior, epsilon)
    # Two simulations a chain a step: the other latents' values, then the whole proposal.
    steps = RUN["warmup"] + RUN["draws"]
    pilot = posterior.settings["pilot_size"]
    assert posterior.n_simulations == pilot + 2 * RUN["chains"] * steps


def test_a_wrong_affine_map_only_slows_the_chains():
    # The map's conditional is 0.5-1.5 of its standard deviations off and 1.2 times too wide: a
    # sampler that trusted it would be biased. The acceptance ratio corrects it ...
    posterior = collapsed_run(0.0, wrong_map=True)
    check_against_quadrature(posterior, 0.0)
    # ... at the price of rejections: the true map's moves are accepted more often.
    exact = collapsed_run(0.0)
    wrong_rate = posterior.sample_stats["accepted"].float().mean()
    exact_rate = exact.sample_stats["accepted"].float().mean()
    assert wrong_rate < exact_rate - 0.1


class BiasedThetaGuide:
    """A guide for ``CollapsedToy`` that is wrong on purpose: ``theta`` shifted by one posterior
    standard deviation and too narrow; ``t`` far off (the collapsed move ignores it)."""

    observed = "x"
    observed_shape = (3,)
    site_shapes = {"theta": (), "t": (2,)}

    def posterior(self, images, num_samples, *, generator=None):
        batch = images.shape[0]
        theta = 1.1 + 0.3 * torch.randn(num_samples, batch, generator=generator)
        t = 3.0 + 0.1 * torch.randn(num_samples, batch, 2, generator=generator)
        return {"theta": theta, "t": t}


def test_a_biased_guide_proposing_theta_keeps_the_collapsed_moves_exact():
    posterior = pg.infer(
        CollapsedToy(),
        {"x": OBSERVATION},
        method="abc_mcmc",
        epsilon=0.0,
        guide=BiasedThetaGuide(),
        init="prior",
        **RUN,
    )
    assert posterior.settings["guide_proposals"] is True
    check_against_quadrature(posterior, 0.0)
    # The guide's moves (last of each cycle: theta's block, the joint move, the guide) are
    # taken, so the test exercises them.
    moves = 3
    steps = RUN["warmup"] + np.arange(RUN["draws"])
    accepted = posterior.sample_stats["accepted"].numpy()[:, steps % moves == moves - 1]
    assert accepted.mean() > 0.05


class StandardLinearGaussian:
    """``z ~ N(0, I_4)``, ``x ~ N(W z, 0.5^2 I_6)``: every latent collapsed, so each step is an
    independent draw of the exact conditional (and every move is accepted)."""

    def __init__(self):
        self.matrix = linear_gaussian(dim=4, obs_dim=6, seed=3).matrix.float()

    def __call__(self):
        import pyro
        import pyro.distributions as dist

        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
        return pyro.sample("x", dist.Normal(z @ self.matrix.T, 0.5).to_event(1))

    def affine_observation(self, site, latents):
        batch = latents["z"].shape[0]
        return torch.zeros(batch, 6), self.matrix.expand(batch, 6, 4)


def test_collapsing_every_latent_draws_the_conjugate_posterior():
    program = StandardLinearGaussian()
    x = torch.tensor([0.5, -1.0, 0.3, 1.2, -0.4, 0.8])
    options = {**RUN, "collapse": "z"}
    posterior = pg.infer(program, {"x": x}, method="abc_mcmc", epsilon=0.0, **options)
    # Exactly linear: the ratio is 1 up to float32 rounding of the simulated distance.
    assert float(posterior.sample_stats["accepted"].float().mean()) > 0.999
    w = program.matrix.double()
    precision = torch.eye(4, dtype=torch.float64) + w.T @ w / 0.25
    covariance = torch.linalg.inv(precision)
    mean = covariance @ w.T @ x.double() / 0.25
    z = posterior.samples["z"].double().numpy()
    assert_moments(z, mean.numpy(), covariance.numpy(), (), MCSE_TOLERANCE)
