"""Semi-automatic ABC summaries (Fearnhead & Prangle 2012): a fitted E[theta | x] as the summary.

It must be able to fail: on a program whose output is a noisy 50-dimensional linear embedding of a
2-d parameter, ABC with the learned summary must be closer to the analytic posterior than ABC with
the raw (identity) summary at the same total budget, by more than Monte Carlo error. And fitting is
deterministic given the seed."""

from __future__ import annotations

import math
import warnings

import pyro.distributions as dist
import pytest
import torch

import probgraphics as pg
from probgraphics.inference.learned_summaries import SemiAutomaticSummary, semi_automatic_summary
from probgraphics.programs.simulator import SimulationFailureWarning


def gaussian_kl(draws: torch.Tensor, mean: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """KL(N(draws' mean, draws' covariance) || N(mean, covariance)), float64 scalar."""
    m = draws.mean(0)
    c = torch.cov(draws.T)
    precision = torch.linalg.inv(covariance)
    d = mean.shape[0]
    return 0.5 * (
        torch.trace(precision @ c)
        - d
        + (m - mean) @ precision @ (m - mean)
        + torch.logdet(covariance)
        - torch.logdet(c)
    )


def bootstrap_se(draws, mean, covariance, generator, replicates=200) -> float:
    """Standard error of :func:`gaussian_kl` over resamples of the (independent) draws."""
    n = draws.shape[0]
    values = [
        gaussian_kl(draws[torch.randint(0, n, (n,), generator=generator)], mean, covariance)
        for _ in range(replicates)
    ]
    return float(torch.stack(values).std())


@pytest.fixture(scope="module")
def embedding_program():
    # z ~ N(mu0, Sigma0) in 2-d; x = A z + N(0, 2^2 I_50): most of x's 50 numbers are noise.
    return pg.programs.linear_gaussian(dim=2, obs_dim=50, noise=2.0, seed=0)


@pytest.fixture(scope="module")
def fitted(embedding_program):
    return semi_automatic_summary(embedding_program, observed="x", simulations=4000, seed=0)


def test_learned_summary_beats_the_raw_output_at_the_same_budget(embedding_program, fitted):
    program = embedding_program
    x_obs = pg.programs.simulate(program, seed=100)["x"]
    mean, covariance = program.analytic_posterior(x_obs)
    budget = 40_000
    pilot = fitted.report.simulations
    kl, se = {}, {}
    generator = torch.Generator().manual_seed(0)
    for name, summary, simulations in (
        ("identity", None, budget),
        ("learned", fitted, budget - pilot),
    ):
        # Rejection keeps independent draws (the closest 1%), so a bootstrap gives their MCSE.
        posterior = pg.infer(
            program,
            {"x": x_obs},
            method="abc_rejection",
            summary=summary,
            simulations=simulations,
            keep_fraction=0.01,
            seed=0,
            progress=False,
        )
        draws = posterior.samples["z"].reshape(-1, 2).double()
        kl[name] = float(gaussian_kl(draws, mean, covariance))
        se[name] = bootstrap_se(draws, mean, covariance, generator)
    margin = 3.0 * math.hypot(se["identity"], se["learned"])
    assert kl["learned"] + margin < kl["identity"], (kl, se)


def test_fit_is_deterministic_given_the_seed(embedding_program):
    def fit(seed):
        return semi_automatic_summary(
            embedding_program, observed="x", simulations=500, seed=seed, steps=120
        )

    first, again, other = fit(0), fit(0), fit(1)
    x = pg.programs.simulate(embedding_program, 64, seed=5)["x"]
    assert torch.equal(first(x), again(x))
    assert again.report == first.report
    assert not torch.equal(first(x), other(x))


def test_summary_shapes_units_and_nan(embedding_program, fitted):
    scenes = pg.programs.simulate(embedding_program, 2000, seed=7)
    features = fitted(scenes["x"])
    assert tuple(features.shape) == (2000, 2) and features.dtype == torch.float32
    assert fitted.sites == {"z": (2,)} and fitted.features == 2
    # It estimates z: the residual variance is below the prior's (held-out data).
    residual = (features - scenes["z"]).var(0)
    assert bool((residual < scenes["z"].var(0)).all())
    x = scenes["x"][:3].clone()
    x[1, 4] = math.nan
    out = fitted(x)
    assert bool(torch.isnan(out[1]).all()) and bool(torch.isfinite(out[[0, 2]]).all())
    with pytest.raises(ValueError, match="fitted to observations of 50 values"):
        fitted(torch.zeros(3, 10))
    report = fitted.report
    assert report.train_size + report.validation_size == 4000 and report.failed == 0
    assert 0 < report.validation_mse < 1.0 and 1 <= report.best_step <= report.steps


def test_failed_pilot_simulations_are_left_out():
    def half_fail(theta):
        x = theta + 0.1 * torch.randn_like(theta)
        return torch.where(theta[:, :1] > 0.5, torch.nan, x)

    prior = dist.Uniform(-torch.ones(2), torch.ones(2)).to_event(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulationFailureWarning)
        program = pg.programs.simulator(prior, half_fail)
        summary = semi_automatic_summary(program, simulations=400, seed=0, steps=50)
    assert isinstance(summary, SemiAutomaticSummary)
    # A quarter of the uniform prior has theta_0 > 0.5; binomial sd sqrt(400 * 3/16) ~ 8.7.
    assert abs(summary.report.failed - 100) < 5 * math.sqrt(400 * 3 / 16)
    assert summary.report.train_size + summary.report.validation_size == 400 - summary.report.failed


def test_bad_arguments_are_rejected(embedding_program):
    with pytest.raises(ValueError, match="no site 'image'"):
        semi_automatic_summary(embedding_program, simulations=100)
    with pytest.raises(ValueError, match="simulations must be an int >= 20"):
        semi_automatic_summary(embedding_program, observed="x", simulations=10)
    with pytest.raises(ValueError, match="hidden must be"):
        semi_automatic_summary(embedding_program, observed="x", hidden=(0,))
    with pytest.raises(TypeError, match="seed must be an int"):
        semi_automatic_summary(embedding_program, observed="x", seed="0")


def test_moment_targets_measure_a_parameter_whose_sign_is_unidentified():
    # x = |theta| + noise: E[theta | x] = 0 for every x (a constant, useless summary), while
    # E[theta^2 | x] tracks theta^2. The moments summary must carry that; the mean one cannot.
    prior = dist.Normal(torch.zeros(1), 1.0).to_event(1)

    def simulate(theta):
        return theta.abs() + 0.05 * torch.randn_like(theta)

    program = pg.programs.simulator(prior, simulate)
    kwargs = {"simulations": 3000, "seed": 0, "steps": 600}
    mean_only = semi_automatic_summary(program, **kwargs)
    moments = semi_automatic_summary(program, targets="moments", **kwargs)
    assert mean_only.features == 1 and moments.features == 2
    assert list(moments.sites) == ["theta", "theta_squared"]
    theta = torch.randn(2000, 1, generator=torch.Generator().manual_seed(5))
    x = theta.abs() + 0.05 * torch.randn(theta.shape, generator=torch.Generator().manual_seed(6))
    squared = moments(x)[:, 1]
    correlation = torch.corrcoef(torch.stack([squared, theta[:, 0].square()]))[0, 1]
    assert correlation > 0.9, correlation
    # The mean summary barely varies: its spread is a small fraction of theta's.
    assert mean_only(x)[:, 0].std() < 0.25, mean_only(x)[:, 0].std()
    with pytest.raises(ValueError, match="targets must be one of"):
        semi_automatic_summary(program, targets="quantiles", **kwargs)
