"""Per-mode regression adjustment against a folded simulator's analytic posterior.

``theta ~ N(0, 3^2)``, ``x = |theta| + N(0, 0.5^2)``: given ``x_obs = 3`` the posterior is an equal
mixture of two Gaussians at ``+-m``, ``m = 9 x_obs / (9 + 0.25)``, variance
``v = 9 * 0.25 / (9 + 0.25)`` (the mass the fold moves across zero is below 1e-8). Within each
mode theta is linear-Gaussian in x, where Beaumont's adjustment is exact; across both, ``E[theta |
x] = 0`` and the one regression of ``adjust="linear"`` leaves the tolerance's spread in place.
Rejection draws are independent: standard errors ``sqrt(v / n)`` (mean), ``sqrt(2 / n)``
(variance ratio), ``sqrt(1 / (4 n))`` (the fraction in the positive mode).
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch

import probgraphics as pg

PRIOR_SD, NOISE_SD, OBSERVED = 3.0, 0.5, 3.0


def _folded_program():
    prior = dist.Normal(torch.zeros(1), PRIOR_SD).to_event(1)

    def simulate(theta):
        return theta.abs() + NOISE_SD * torch.randn_like(theta)

    return pg.programs.simulator(prior, simulate)


def test_per_mode_adjustment_recovers_both_modes_of_a_folded_posterior():
    prior_var, noise_var = PRIOR_SD**2, NOISE_SD**2
    mode_mean = prior_var * OBSERVED / (prior_var + noise_var)
    mode_var = prior_var * noise_var / (prior_var + noise_var)
    draws = {}
    for adjust in ("linear_modes", "linear"):
        posterior = pg.infer(
            _folded_program(),
            {"x": torch.tensor([OBSERVED])},
            method="abc_rejection",
            simulations=50_000,
            keep_fraction=0.2,
            adjust=adjust,
            seed=5,
            progress=False,
        )
        draws[adjust] = posterior.samples["theta"].reshape(-1).double()
    theta = draws["linear_modes"]
    n = theta.shape[0]
    assert n == 10_000
    positive = float((theta > 0).double().mean())
    assert abs(positive - 0.5) < 4 * math.sqrt(1 / (4 * n)), positive
    folded = theta.abs()
    assert abs(float(folded.mean()) - mode_mean) < 4 * math.sqrt(mode_var / n)
    ratio = float(folded.var()) / mode_var
    assert abs(ratio - 1) < 4 * math.sqrt(2 / n), ratio
    # One regression across both modes fits a slope of about zero: the draws stay as wide as the
    # tolerance made them.
    one_regression = float(draws["linear"].abs().var()) / mode_var
    assert one_regression > 1 + 4 * math.sqrt(2 / n), one_regression
