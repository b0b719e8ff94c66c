"""Exactness of ABC-MCMC against closed forms.

On the linear-Gaussian program, ABC with the Gaussian kernel on the identity summary and the L2
distance targets exactly the posterior with noise variance ``noise^2 + eps^2``
(``LinearGaussian.analytic_posterior(x, abc_epsilon=eps)``), so the chains' means must match it
within Monte Carlo standard error (MCSE from ArviZ's effective sample size); with a small eps
the variances must be within 15% of the true posterior's; and R-hat over 64 chains must be below
1.01. With ``eps = inf`` the chains must reproduce the prior (Normal, Uniform, LogNormal and
MultivariateNormal sites). Seeds are fixed and were not tuned; tolerances come from the MCSE.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import probgraphics as pg
from probgraphics.programs.toy import linear_gaussian

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # ArviZ 0.23 announces its 1.0 on import
    import arviz as az

CHAINS = 64
EPSILON = 0.1  # noise 0.5: the ABC target's noise variance is 0.26 instead of 0.25
MCSE_TOLERANCE = 4.0
RUNS = {
    # abc_mcmc's accepted moves keep ~sqrt(1 - a^2) of the state, so it needs more draws than
    # the elliptical slice sampler (whose draws are nearly independent) for the same R-hat.
    "abc_mcmc": {"draws": 3000, "warmup": 500},
    "abc_slice": {"draws": 800, "warmup": 400},
}


def ess_mean(values: np.ndarray) -> float:
    """ArviZ's effective sample size for the mean of ``values`` ``(chains, draws)``."""
    return float(az.ess(values, method="mean"))


def mcse_of_mean(values: np.ndarray) -> float:
    return float(values.std()) / math.sqrt(ess_mean(values))


def mcse_of_variance(values: np.ndarray) -> float:
    """The variance estimate is the mean of the centred squares: its MCSE is theirs."""
    squares = (values - values.mean()) ** 2
    return float(squares.std()) / math.sqrt(ess_mean(squares))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("method", sorted(RUNS))
def test_linear_gaussian_matches_the_exact_abc_target(method, device):
    program = linear_gaussian(dim=10, noise=0.5, seed=0)
    x = pg.programs.simulate(program, seed=1)["x"]
    posterior = pg.infer(
        program,
        {"x": x},
        method=method,
        chains=CHAINS,
        epsilon=EPSILON,
        abc_kernel="gaussian",
        distance="l2",
        summary="identity",
        seed=2024,
        device=device,
        progress=False,
        **RUNS[method],
    )
    z = posterior.samples["z"].double().numpy()  # (chains, draws, 10)
    abc_mean, abc_covariance = program.analytic_posterior(x, abc_epsilon=EPSILON)
    _, true_covariance = program.analytic_posterior(x)
    for k in range(10):
        values = z[:, :, k]
        # Means: the exact ABC target's, within MCSE.
        error = values.mean() - float(abc_mean[k])
        assert abs(error) < MCSE_TOLERANCE * mcse_of_mean(values), (k, error)
        # Variances: within 15% of the true posterior's (eps is small) ...
        variance = values.var()
        assert abs(variance / float(true_covariance[k, k]) - 1.0) < 0.15, (k, variance)
        # ... and the exact ABC target's within MCSE.
        error = variance - float(abc_covariance[k, k])
        assert abs(error) < MCSE_TOLERANCE * mcse_of_variance(values), (k, error)
        assert float(az.rhat(values)) < 1.01, k


def prior_program():
    pyro.sample("location", dist.Normal(1.0, 2.0))
    pyro.sample("offset", dist.Uniform(-2.0, 3.0))
    pyro.sample("scale", dist.LogNormal(0.0, 0.5))
    covariance = torch.tensor([[1.0, 0.5], [0.5, 2.0]])
    pyro.sample("pair", dist.MultivariateNormal(torch.tensor([0.0, 1.0]), covariance))
    pyro.sample("y", dist.Normal(0.0, 1.0).expand([2]).to_event(1))


PRIOR_MOMENTS = {
    # site -> (mean, standard deviation) per coordinate
    "location": ([1.0], [2.0]),
    "offset": ([0.5], [5.0 / math.sqrt(12.0)]),
    "scale": ([math.exp(0.125)], [math.sqrt((math.exp(0.25) - 1.0) * math.exp(0.25))]),
    "pair": ([0.0, 1.0], [1.0, math.sqrt(2.0)]),
}


@pytest.mark.parametrize("method", sorted(RUNS))
@pytest.mark.parametrize("abc_kernel", ["indicator", "gaussian"])
@pytest.mark.parametrize("precondition", [True, False])
def test_infinite_epsilon_reproduces_the_prior(method, abc_kernel, precondition):
    posterior = pg.infer(
        prior_program,
        {"y": torch.zeros(2)},
        method=method,
        chains=32,
        draws=300,
        warmup=100,
        epsilon=math.inf,
        abc_kernel=abc_kernel,
        precondition=precondition,
        seed=99,
        progress=False,
    )
    if not precondition:
        # The plain moves leave the prior invariant: at eps = inf nothing is rejected.
        assert bool(posterior.sample_stats["accepted"].all())
    for site, (means, sds) in PRIOR_MOMENTS.items():
        draws = posterior.samples[site].double().numpy()
        draws = draws.reshape(draws.shape[0], draws.shape[1], -1)
        for k, (mean, sd) in enumerate(zip(means, sds, strict=True)):
            values = draws[:, :, k]
            error = values.mean() - mean
            assert abs(error) < MCSE_TOLERANCE * mcse_of_mean(values), (site, k, error)
            error = values.var() - sd**2
            assert abs(error) < MCSE_TOLERANCE * mcse_of_variance(values), (site, k, error)
