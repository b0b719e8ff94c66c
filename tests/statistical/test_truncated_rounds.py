"""abc_rejection in rounds samples the same ABC target as one round.

Each round after the first simulates from the prior truncated to a region around the draws kept
so far (probgraphics.inference.truncation). If the regions hold the ABC posterior's support, the
kept draws are that posterior at the final tolerance, as one round of prior simulations would
give at the same tolerance, with fewer simulations. Rejection draws are independent: two-sample
standard errors ``sqrt(var_a / n_a + var_b / n_b)`` for means and ``sqrt(2 / n_a + 2 / n_b)``
for variance ratios (Gaussian-like marginals).
"""

from __future__ import annotations

import math

import torch

import probgraphics as pg


def test_two_rounds_match_one_round_at_the_same_tolerance():
    program = pg.programs.linear_gaussian(dim=2, noise=0.5)
    observation = {"x": pg.programs.simulate(program, seed=7)["x"]}
    common = {"method": "abc_rejection", "distance": "l2", "progress": False}
    rounds = pg.infer(
        program, observation, simulations=20_000, keep_fraction=0.05, rounds=2, seed=1, **common
    )
    tolerance = rounds.settings["epsilon_target"]
    one = pg.infer(program, observation, simulations=200_000, keep_fraction=0.1, seed=2, **common)
    within = one.sample_stats["distance"].reshape(-1) <= tolerance
    assert not bool(within.all())  # one round kept every draw within the tolerance
    a = rounds.samples["z"].reshape(-1, 2).double()
    b = one.samples["z"].reshape(-1, 2)[within].double()
    assert a.shape[0] == 1_000 and b.shape[0] > 1_000  # the rounds need far fewer simulations
    error = (a.mean(0) - b.mean(0)).abs()
    standard_error = (a.var(0) / a.shape[0] + b.var(0) / b.shape[0]).sqrt()
    assert bool((error < 4 * standard_error).all()), (error, standard_error)
    ratio = a.var(0) / b.var(0)
    bound = 4 * math.sqrt(2 / a.shape[0] + 2 / b.shape[0])
    assert bool(((ratio - 1).abs() < bound).all()), ratio
    # The target is not the prior's: the check above can fail.
    prior = torch.randn(20_000, 2, dtype=torch.float64)
    assert bool(((prior.var(0) / b.var(0)) - 1 > bound).any())


def test_two_rounds_with_adjustment_recover_the_linear_gaussian_posterior():
    program = pg.programs.linear_gaussian(dim=3, noise=0.5)
    observation = pg.programs.simulate(program, seed=3)["x"]
    mean, covariance = program.analytic_posterior(observation)
    posterior = pg.infer(
        program,
        {"x": observation},
        method="abc_rejection",
        simulations=40_000,
        keep_fraction=0.1,
        adjust="linear",
        rounds=2,
        seed=11,
        progress=False,
    )
    draws = posterior.samples["z"].reshape(-1, 3).double()
    n = draws.shape[0]
    assert n == 4_000
    standard_error = covariance.diagonal().sqrt() / math.sqrt(n)
    assert bool(((draws.mean(0) - mean).abs() < 4 * standard_error).all())
    ratio = draws.var(0) / covariance.diagonal()
    assert bool(((ratio - 1).abs() < 4 * math.sqrt(2 / n)).all()), ratio
