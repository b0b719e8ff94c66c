"""Exactness of ABC-SMC (``method="abc_smc"``) against closed forms.

With the Gaussian ABC kernel on the identity summary and the L2 distance, the ABC target of a
linear-Gaussian model is itself Gaussian, with noise variance ``noise^2 + eps^2``. ABC-SMC run to a
fixed final ``epsilon`` (the schedule stops there and the rest of the budget moves the population
at exactly that tolerance) must give equal-weight particles whose mean and variance match that
target within Monte Carlo standard error. For a population the MCSE uses a deflated sample size:
the effective sample size before the last resampling of the run (at most half the particles),
not the particle count, since resampling duplicates particles that the moves only partly
decorrelate (over 8 seeds on linear_gaussian the errors' z-scores so computed had a standard
deviation of 0.8-0.95, so the tolerance is conservative). Seeds are fixed and were not tuned.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import probgraphics as pg
from probgraphics.programs.toy import linear_gaussian
from tests.blocked_toy import gaussian_posterior

MCSE_TOLERANCE = 4.0


def check_moments(values: np.ndarray, mean: np.ndarray, covariance: np.ndarray, n: float) -> None:
    """Per coordinate: mean and variance of ``values`` ``(draws, K)`` within MCSE of the target,
    with ``n`` the effective sample size."""
    for k in range(values.shape[1]):
        column = values[:, k]
        error = column.mean() - mean[k]
        assert abs(error) < MCSE_TOLERANCE * column.std() / math.sqrt(n), ("mean", k, error)
        squares = (column - column.mean()) ** 2
        error = column.var() - covariance[k, k]
        assert abs(error) < MCSE_TOLERANCE * squares.std() / math.sqrt(n), ("variance", k, error)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"precondition": False, "resampling": "multinomial"},
        {"mcmc_steps": "adaptive", "observation_noise": "fresh"},
    ],
    ids=["default", "plain-multinomial", "adaptive-fresh"],
)
def test_linear_gaussian_matches_the_exact_abc_target(options):
    epsilon = 1.0
    program = linear_gaussian(dim=10, noise=0.5, seed=0)
    x = pg.programs.simulate(program, seed=1)["x"]
    posterior = pg.infer(
        program,
        {"x": x},
        method="abc_smc",
        simulations=20_000,
        particles=1024,
        epsilon=epsilon,
        abc_kernel="gaussian",
        distance="l2",
        summary="identity",
        seed=2024,
        progress=False,
        **options,
    )
    settings = posterior.settings
    assert settings["epsilon_reached"] and settings["epsilon_sequence"][-1] == epsilon
    assert posterior.n_simulations <= 20_000
    z = posterior.samples["z"][0].double().numpy()  # (1024, 10)
    mean, covariance = program.analytic_posterior(x, abc_epsilon=epsilon)
    n = settings["last_resampling_effective_sample_size"]
    assert n <= 0.5 * 1024 + 1e-6  # it did resample
    check_moments(z, mean.numpy(), covariance.numpy(), n)


PRIOR_MEAN = torch.tensor([0.5, -1.0, 2.0])
PRIOR_COVARIANCE = torch.tensor([[1.0, 0.8, 0.3], [0.8, 1.5, -0.4], [0.3, -0.4, 0.7]])
NOISE = 0.4


def correlated_program():
    z = pyro.sample("z", dist.MultivariateNormal(PRIOR_MEAN, PRIOR_COVARIANCE))
    pyro.sample("x", dist.Normal(z, NOISE).to_event(1))


def correlated_target(x: torch.Tensor, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """The Gaussian-kernel ABC target: the posterior with noise variance NOISE^2 + eps^2."""
    mean, covariance = gaussian_posterior(
        PRIOR_MEAN, PRIOR_COVARIANCE, torch.eye(3), NOISE**2 + epsilon**2, x
    )
    return mean.numpy(), covariance.numpy()


@pytest.mark.parametrize("observation_noise", ["whitened", "fresh"])
def test_correlated_normal_matches_the_exact_abc_target(observation_noise):
    epsilon = 0.3
    x = torch.tensor([1.2, 0.1, 1.4])
    posterior = pg.infer(
        correlated_program,
        {"x": x},
        method="abc_smc",
        simulations=15_000,
        particles=1024,
        epsilon=epsilon,
        abc_kernel="gaussian",
        distance="l2",
        summary="identity",
        observation_noise=observation_noise,
        seed=7,
        progress=False,
    )
    settings = posterior.settings
    assert settings["epsilon_reached"]
    z = posterior.samples["z"][0].double().numpy()
    mean, covariance = correlated_target(x, epsilon)
    n = settings["last_resampling_effective_sample_size"]
    check_moments(z, mean, covariance, n)
    # The correlation between the coordinates: each product's mean within MCSE.
    centred = z - mean
    for i, j in ((0, 1), (0, 2), (1, 2)):
        products = centred[:, i] * centred[:, j]
        error = products.mean() - covariance[i, j]
        assert abs(error) < MCSE_TOLERANCE * products.std() / math.sqrt(n), (i, j, error)


def prior_program():
    pyro.sample("location", dist.Normal(1.0, 2.0))
    pyro.sample("offset", dist.Uniform(-2.0, 3.0))
    pyro.sample("scale", dist.LogNormal(0.0, 0.5))
    pyro.sample("y", dist.Normal(0.0, 1.0).expand([2]).to_event(1))


PRIOR_MOMENTS = {
    "location": (1.0, 2.0),
    "offset": (0.5, 5.0 / math.sqrt(12.0)),
    "scale": (math.exp(0.125), math.sqrt((math.exp(0.25) - 1.0) * math.exp(0.25))),
}


@pytest.mark.parametrize("abc_kernel", ["indicator", "gaussian"])
def test_infinite_epsilon_reproduces_the_prior(abc_kernel):
    posterior = pg.infer(
        prior_program,
        {"y": torch.zeros(2)},
        method="abc_smc",
        simulations=6000,
        particles=1000,
        epsilon=math.inf,
        abc_kernel=abc_kernel,
        seed=99,
        progress=False,
    )
    # Nothing is ever reweighted at eps = inf, so the population is never resampled.
    assert posterior.settings["last_resampling_effective_sample_size"] == 1000
    for site, (mean, sd) in PRIOR_MOMENTS.items():
        values = posterior.samples[site][0].double().numpy().reshape(-1, 1)
        check_moments(values, np.array([mean]), np.array([[sd**2]]), n=1000)
