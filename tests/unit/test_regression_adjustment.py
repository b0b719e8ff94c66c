"""Linear regression adjustment of ABC rejection draws: exact where theta is linear in the
summary, the linear-Gaussian posterior recovered within Monte Carlo error, support kept."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch

import probgraphics as pg
from probgraphics.inference.adjustment import linear_regression_adjustment


def test_theta_exactly_linear_in_the_summary_adjusts_to_one_point():
    # theta = c + s B exactly: every draw moves to the theta whose summary is the observed one.
    generator = torch.Generator().manual_seed(0)
    summaries = torch.randn(50, 3, generator=generator, dtype=torch.float64)
    slope = torch.randn(3, 2, generator=generator, dtype=torch.float64)
    theta = torch.tensor([1.0, -2.0], dtype=torch.float64) + summaries @ slope
    observed = torch.tensor([0.3, 0.1, -0.2], dtype=torch.float64)
    distance = (summaries - observed).norm(dim=-1)
    adjusted = linear_regression_adjustment(theta, summaries, observed, distance)
    expected = torch.tensor([1.0, -2.0], dtype=torch.float64) + observed @ slope
    torch.testing.assert_close(adjusted, expected.expand(50, 2), atol=1e-9, rtol=0)


def test_bounded_parameters_stay_inside_their_bounds():
    generator = torch.Generator().manual_seed(1)
    theta = torch.rand(200, 2, generator=generator) * 2 - 1
    summaries = theta + 0.5 * torch.randn(200, 2, generator=generator)
    observed = torch.tensor([0.95, -0.95])  # pushes the adjustment toward the bounds
    distance = (summaries - observed).norm(dim=-1)
    bounds = torch.full((2,), -1.0), torch.full((2,), 1.0)
    adjusted = linear_regression_adjustment(
        theta, summaries, observed, distance, lower=bounds[0], upper=bounds[1]
    )
    assert bool(((adjusted > -1) & (adjusted < 1)).all())
    unbounded = linear_regression_adjustment(theta, summaries, observed, distance)
    assert bool(((unbounded <= -1) | (unbounded >= 1)).any())  # the bounds did something


def test_bad_input_is_rejected():
    theta, summaries = torch.zeros(5, 1), torch.randn(5, 4)
    distance = torch.arange(5.0)
    with pytest.raises(ValueError, match="positive weight; keep more draws"):
        linear_regression_adjustment(theta, summaries, torch.zeros(4), distance)
    with pytest.raises(ValueError, match="same N"):
        linear_regression_adjustment(torch.zeros(4, 1), summaries, torch.zeros(4), distance)
    with pytest.raises(ValueError, match="finite"):
        linear_regression_adjustment(
            theta, summaries, torch.zeros(4), torch.tensor([0.0, 1, 2, math.nan, 3])
        )
    program = pg.programs.linear_gaussian(dim=2)
    observation = pg.programs.simulate(program, seed=0)["x"]
    with pytest.raises(ValueError, match="adjust must be one of"):
        pg.infer(program, {"x": observation}, method="abc_rejection", adjust="loess")


def test_rejection_with_adjustment_recovers_the_linear_gaussian_posterior():
    # Keeping 10% of 40,000 draws leaves a tolerance wide enough to inflate the unadjusted
    # posterior; the adjustment removes that spread. Rejection draws are independent, so the
    # Monte Carlo standard errors are sd / sqrt(n) (mean) and sqrt(2 / n) (variance ratio).
    program = pg.programs.linear_gaussian(dim=3, noise=0.5)
    observation = pg.programs.simulate(program, seed=3)["x"]
    mean, covariance = program.analytic_posterior(observation)
    sd = covariance.diagonal().sqrt()
    results = {}
    for adjust in (None, "linear"):
        posterior = pg.infer(
            program,
            {"x": observation},
            method="abc_rejection",
            simulations=40_000,
            keep_fraction=0.1,
            adjust=adjust,
            seed=11,
            progress=False,
        )
        draws = posterior.samples["z"].reshape(-1, 3).double()
        assert posterior.settings["adjust"] == adjust
        results[adjust] = draws
    n = results["linear"].shape[0]
    assert n == 4_000
    adjusted = results["linear"]
    standard_error = sd / math.sqrt(n)
    assert bool(((adjusted.mean(0) - mean).abs() < 4 * standard_error).all())
    ratio = adjusted.var(0) / covariance.diagonal()
    assert bool(((ratio - 1).abs() < 4 * math.sqrt(2 / n)).all()), ratio
    # Without the adjustment the same draws are visibly too wide.
    raw_ratio = results[None].var(0) / covariance.diagonal()
    assert bool((raw_ratio > 1 + 4 * math.sqrt(2 / n)).all()), raw_ratio


def test_rejection_adjustment_respects_a_uniform_prior():
    prior = dist.Uniform(-torch.ones(2), torch.ones(2)).to_event(1)

    def simulate(theta):
        return theta + 0.3 * torch.randn_like(theta)

    program = pg.programs.simulator(prior, simulate)
    posterior = pg.infer(
        program,
        {"x": torch.tensor([0.9, -0.9])},
        method="abc_rejection",
        simulations=5_000,
        keep_fraction=0.2,
        adjust="linear",
        seed=0,
        progress=False,
    )
    theta = posterior.samples["theta"]
    assert bool(((theta > -1) & (theta < 1)).all())
    assert torch.unique(theta.reshape(-1, 2), dim=0).shape[0] == theta.reshape(-1, 2).shape[0]


def test_posterior_modes_finds_separated_modes_and_ignores_gaps_and_bridges():
    from probgraphics.inference.adjustment import posterior_modes

    generator = torch.Generator().manual_seed(2)
    left = torch.randn(3_000, 2, generator=generator, dtype=torch.float64) - 6
    right = torch.randn(2_000, 2, generator=generator, dtype=torch.float64) + 6
    # Three stray draws strung between the modes: single linkage alone would join them.
    bridge = torch.tensor([[-2.0, -2.0], [0.0, 0.0], [2.0, 2.0]], dtype=torch.float64)
    labels = posterior_modes(torch.cat([left, bridge, right]))
    assert labels[:3_000].unique().tolist() == [0]
    assert labels[3_003:].unique().tolist() == [1]
    # One Gaussian, heavy-tailed in one coordinate (gaps in its tails): one mode.
    one = torch.randn(5_000, 3, generator=generator, dtype=torch.float64)
    one[:, 0] = one[:, 0] ** 3
    assert posterior_modes(one).unique().tolist() == [0]
    # Too few draws for a mode of the asked size: one mode.
    assert posterior_modes(left[:50], min_size=100).unique().tolist() == [0]
    with pytest.raises(ValueError, match="finite draws"):
        posterior_modes(torch.tensor([[0.0], [math.nan]]))


def test_per_mode_adjustment_keeps_draws_it_would_move_outside_the_support():
    # theta exactly linear in the summary, one mode: every draw moves onto one point unless that
    # point is outside [lower, upper], where the draws keep their simulated values.
    generator = torch.Generator().manual_seed(3)
    summaries = torch.randn(400, 1, generator=generator, dtype=torch.float64)
    theta = 0.5 + 0.2 * summaries
    distance = summaries.abs().reshape(-1)
    inside = linear_regression_adjustment(
        theta,
        summaries,
        torch.tensor([1.0]),
        distance,
        modes=True,
        lower=torch.tensor([0.0]),
        upper=torch.tensor([1.0]),
    )
    torch.testing.assert_close(inside, torch.full_like(theta, 0.7), atol=1e-9, rtol=0)
    outside = linear_regression_adjustment(
        theta,
        summaries,
        torch.tensor([3.0]),
        distance,
        modes=True,
        lower=torch.tensor([0.0]),
        upper=torch.tensor([1.0]),
    )
    torch.testing.assert_close(outside, theta)  # 1.1 is outside [0, 1]: kept as simulated
