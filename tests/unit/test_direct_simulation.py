"""The simulator's direct path for prior-plus-function programs (no Pyro tracing) against the
Pyro path, and the budget's chains for cheap programs."""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import MultivariateNormal

import probgraphics as pg
from probgraphics.api import prepare_abc
from probgraphics.inference import runner
from probgraphics.inference.simulator import Simulator
from probgraphics.programs.sbibm_tasks import gaussian_linear, two_moons

COVARIANCE = torch.tensor([[1.0, 0.6, 0.0], [0.6, 2.0, -0.3], [0.0, -0.3, 0.5]])


def torch_program():
    prior = dist.MultivariateNormal(torch.tensor([0.5, -1.0, 0.0]), COVARIANCE)

    def simulate(theta):
        return torch.stack([theta.sum(-1), theta[:, 0] * theta[:, 1]], -1) + torch.randn(
            theta.shape[0], 2
        )

    return pg.programs.simulator(prior, simulate)


def numpy_program():
    prior = dist.Uniform(-torch.ones(2), torch.ones(2)).to_event(1)

    def simulate(theta, rng):
        return theta**2 + 0.1 * rng.standard_normal(theta.shape)

    return pg.programs.simulator(prior, simulate, numpy=True)


def simulators(program, observation):
    run = prepare_abc(program, observation, chains=4, draws=2, warmup=2, progress=False, seed=0)
    make = {
        "layout": run.layout,
        "observation": observation,
        "summary": run.simulator.summary,
        "device": torch.device("cpu"),
        "seed": 11,
    }
    direct = Simulator(program, **make)
    traced = Simulator(program, **make, direct=False)
    direct.set_distance(run.simulator.distance)
    traced.set_distance(run.simulator.distance)
    return direct, traced


@pytest.mark.parametrize("make", [torch_program, numpy_program, gaussian_linear, two_moons])
def test_direct_simulation_equals_running_the_program(make):
    program = make()
    observation = {"x": pg.programs.simulate(program, seed=3)["x"]}
    direct, traced = simulators(program, observation)
    assert direct.direct is not None and traced.direct is None
    u = torch.randn(257, direct.layout.dim, generator=torch.Generator().manual_seed(5))
    for _ in range(3):  # the seed stream advances alike
        fast, slow = direct(u), traced(u)
        torch.testing.assert_close(fast.values, slow.values, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(fast.summaries, slow.summaries, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fast.distance, slow.distance, rtol=1e-5, atol=1e-5)
    assert direct.n_simulations == traced.n_simulations == 3 * 257


def test_given_values_and_other_programs_take_the_pyro_path():
    program = torch_program()
    observation = {"x": pg.programs.simulate(program, seed=3)["x"]}
    direct, _ = simulators(program, observation)
    given = {"theta": torch.zeros(2, 3)}
    u, simulation = direct.simulate_given(torch.zeros(2, 3), given)
    torch.testing.assert_close(simulation.values, torch.zeros(2, 3))
    # A plain Pyro program offers no direct path.
    toy = pg.programs.linear_gaussian(dim=2)
    run = prepare_abc(toy, {"x": torch.zeros(2)}, chains=4, draws=2, warmup=2, progress=False)
    assert run.simulator.direct is None


def test_gaussian_linear_draws_sbibms_multivariate_normal_exactly():
    task = gaussian_linear()
    theta = torch.randn(300, 10, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(4)
    ours = task._simulate(theta)
    torch.manual_seed(4)
    reference = MultivariateNormal(theta, precision_matrix=task._noise_precision).sample()
    assert torch.equal(ours, reference)


@pytest.mark.parametrize(
    "budget, size, chains",
    [
        (100_000, 10, 1000),  # a cheap simulator: many chains a step
        (10_000_000, 10, 1024),
        (1_000, 10, 10),
        (200, 2, 8),
        (100_000, 4096, 64),  # an image: long chains
        (20_000, 4096, 25),
    ],
)
def test_budget_chains_follow_the_observation_size(budget, size, chains):
    options = {
        "simulations": budget,
        "chains": 64,
        "pilot_size": None,
        "init": "pilot",
        "thin": 1,
        "warmup": 500,
        "draws": 500,
    }
    pg.api._apply_budget("abc_mcmc", options, frozenset(), size)
    assert options["chains"] == chains
    spent = options["pilot_size"] + chains * (options["warmup"] + options["draws"])
    assert spent <= budget


def test_epsilon_adaptation_scales_with_the_chains():
    assert runner.epsilon_adaptation(8) == (runner.EPSILON_GAIN, runner.EPSILON_TARGET_ACCEPTANCE)
    assert runner.epsilon_adaptation(64) == (runner.EPSILON_GAIN, runner.EPSILON_TARGET_ACCEPTANCE)
    gain, target = runner.epsilon_adaptation(1024)
    assert gain == pytest.approx(16 * runner.EPSILON_GAIN)
    assert target == pytest.approx(runner.EPSILON_TARGET_ACCEPTANCE / 4)
    assert math.isfinite(gain) and 0 < target < 1


def test_a_budgeted_cheap_run_stays_within_its_budget():
    task = gaussian_linear()
    x = task.observation(1)
    posterior = pg.infer(task, {"x": x}, simulations=30_000, seed=0, progress=False)
    assert posterior.num_chains == 300
    assert 30_000 - 300 < posterior.n_simulations <= 30_000
    mean, covariance = task.analytic_posterior(x)
    theta = posterior.samples["theta"].reshape(-1, 10).double()
    # Not exactness (that is tests/statistical): the run lands on the posterior, within 1.5
    # posterior standard deviations in every coordinate.
    error = (theta.mean(0) - mean).abs() / covariance.diagonal().sqrt()
    assert float(error.max()) < 1.5, error
    assert np.isfinite(theta.numpy()).all()
