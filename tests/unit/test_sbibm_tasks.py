"""The sbibm tasks gaussian_linear, two_moons and slcp as programs: priors, simulator formulas
(against slow, obvious reference code on the same noise), noise distributions, determinism, and
(when the optional sbibm package is installed) agreement with sbibm's own simulator and files."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch

import probgraphics as pg
from probgraphics.programs.sbibm_tasks import SLCPTask, TwoMoonsTask, sbibm_task

SHAPES = {"gaussian_linear": (10, 10), "two_moons": (2, 2), "slcp": (5, 8)}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_task_runs_batched_under_the_chains_plate(name):
    task = sbibm_task(name)
    dim, dim_data = SHAPES[name]
    torch.manual_seed(0)
    with pyro.plate("chains", 6, dim=-1):
        trace = pyro.poutine.trace(task).get_trace()
    assert tuple(trace.nodes["theta"]["value"].shape) == (6, dim)
    assert tuple(trace.nodes["x"]["value"].shape) == (6, dim_data)
    assert trace.nodes["x"]["value"].dtype == torch.float32
    assert pg.programs.get(f"sbibm_{name}").dim == dim


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_simulator_is_deterministic_given_the_torch_seed(name):
    task = sbibm_task(name)
    theta = task.prior.sample((50,))
    torch.manual_seed(11)
    first = task.run(theta)
    torch.manual_seed(11)
    second = task.run(theta)
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_observations_are_fixed_and_leave_the_global_rng_alone(name):
    task = sbibm_task(name)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    numpy_state = np.random.get_state()[1].copy()
    first = task.observation(1)
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    assert torch.equal(first, sbibm_task(name).observation(1))
    assert not torch.equal(first, task.observation(2))
    assert tuple(first.shape) == (SHAPES[name][1],)
    assert tuple(task.true_parameters(1).shape) == (SHAPES[name][0],)


def test_observation_numbers_are_checked():
    task = sbibm_task("two_moons")
    for bad in (0, 11):
        with pytest.raises(ValueError, match="observations 1..10"):
            task.observation(bad)
    with pytest.raises(TypeError, match="an int in 1..10"):
        task.observation(True)
    with pytest.raises(ValueError, match="source must be"):
        task.observation(1, source="disk")
    with pytest.raises(KeyError, match="unknown sbibm task"):
        sbibm_task("lotka_volterra")


def test_priors_match_the_task_definitions():
    gaussian = sbibm_task("gaussian_linear")
    assert torch.allclose(gaussian.prior.loc, torch.zeros(10))
    assert torch.allclose(gaussian.prior.covariance_matrix, 0.1 * torch.eye(10), atol=1e-7)
    two_moons = sbibm_task("two_moons")
    assert torch.equal(two_moons.prior.base_dist.low, -torch.ones(2))
    assert torch.equal(two_moons.prior.base_dist.high, torch.ones(2))
    slcp = sbibm_task("slcp")
    assert torch.equal(slcp.prior.base_dist.low, torch.full((5,), -3.0))
    assert torch.equal(slcp.prior.base_dist.high, torch.full((5,), 3.0))


def test_gaussian_linear_noise_has_variance_one_tenth():
    task = sbibm_task("gaussian_linear")
    n = 20_000
    theta = task.prior.sample((n,))
    torch.manual_seed(1)
    noise = (task.run(theta) - theta).double()
    # Per coordinate: mean 0 (standard error sqrt(0.1 / n)), variance 0.1 (standard error
    # 0.1 sqrt(2 / n)); 5 standard errors; correlations between coordinates ~ 1 / sqrt(n).
    assert float(noise.mean(0).abs().max()) < 5 * math.sqrt(0.1 / n)
    assert float((noise.var(0) - 0.1).abs().max()) < 5 * 0.1 * math.sqrt(2 / n)
    correlation = torch.corrcoef(noise.T) - torch.eye(10, dtype=torch.float64)
    assert float(correlation.abs().max()) < 5 / math.sqrt(n)


def test_gaussian_linear_analytic_posterior_is_the_conjugate_update():
    task = sbibm_task("gaussian_linear")
    x = task.observation(1).double()
    mean, covariance = task.analytic_posterior(x)
    prior_precision = torch.eye(10, dtype=torch.float64) / 0.1
    noise_precision = torch.eye(10, dtype=torch.float64) / 0.1
    expected_cov = torch.linalg.inv(prior_precision + noise_precision)
    assert torch.allclose(covariance, expected_cov)
    assert torch.allclose(mean, expected_cov @ noise_precision @ x)


def two_moons_reference(theta, a, r):
    """sbibm's two_moons formula written out per item."""
    out = []
    for (t0, t1), angle, radius in zip(theta.tolist(), a.tolist(), r.tolist()):
        p0 = math.cos(angle) * radius + 0.25
        p1 = math.sin(angle) * radius
        rotation = -math.pi / 4
        z0 = math.cos(rotation) * t0 - math.sin(rotation) * t1
        z1 = math.sin(rotation) * t0 + math.cos(rotation) * t1
        out.append([p0 - abs(z0), p1 + z1])
    return torch.tensor(out, dtype=torch.float64)


def test_two_moons_formula_matches_reference_code():
    generator = torch.Generator().manual_seed(0)
    theta = 2 * torch.rand(200, 2, generator=generator, dtype=torch.float64) - 1
    a = (torch.rand(200, generator=generator, dtype=torch.float64) - 0.5) * math.pi
    r = 0.1 + 0.01 * torch.randn(200, generator=generator, dtype=torch.float64)
    ours = TwoMoonsTask.simulate_with_noise(theta, a, r)
    assert torch.allclose(ours, two_moons_reference(theta, a, r), atol=1e-12)


def test_two_moons_noise_is_a_uniform_angle_and_a_normal_radius():
    # At theta = 0 the output is p = (r cos a + 0.25, r sin a) itself.
    task = sbibm_task("two_moons")
    n = 20_000
    torch.manual_seed(2)
    p = task.run(torch.zeros(n, 2)).double()
    radius = torch.hypot(p[:, 0] - 0.25, p[:, 1])
    angle = torch.atan2(p[:, 1], p[:, 0] - 0.25)
    assert abs(float(radius.mean()) - 0.1) < 5 * 0.01 / math.sqrt(n)
    assert abs(float(radius.std()) - 0.01) < 5 * 0.01 / math.sqrt(2 * n)
    assert float(angle.min()) >= -math.pi / 2 and float(angle.max()) <= math.pi / 2
    # Uniform on (-pi/2, pi/2): mean 0, sd pi / sqrt(12).
    assert abs(float(angle.mean())) < 5 * (math.pi / math.sqrt(12)) / math.sqrt(n)


def slcp_reference(theta, noise):
    """sbibm's slcp written out per item: the covariance entry by entry, numpy's Cholesky."""
    out = []
    for t, z in zip(theta.tolist(), noise.tolist()):
        s1, s2, rho = t[2] ** 2, t[3] ** 2, math.tanh(t[4])
        covariance = np.array(
            [[s1**2 + 1e-6, rho * s1 * s2], [rho * s1 * s2, s2**2 + 1e-6]], dtype=np.float64
        )
        factor = np.linalg.cholesky(covariance)
        draws = [np.array(t[:2]) + factor @ np.array(z_n) for z_n in z]
        out.append(np.concatenate(draws))
    return torch.tensor(np.array(out), dtype=torch.float64)


def test_slcp_formula_matches_reference_code():
    generator = torch.Generator().manual_seed(0)
    theta = 6 * torch.rand(200, 5, generator=generator, dtype=torch.float64) - 3
    noise = torch.randn(200, 4, 2, generator=generator, dtype=torch.float64)
    ours = SLCPTask.simulate_with_noise(theta, noise)
    assert torch.allclose(ours, slcp_reference(theta, noise), rtol=1e-9, atol=1e-9)


def test_slcp_draws_have_the_task_covariance():
    task = sbibm_task("slcp")
    theta = torch.tensor([0.5, -1.0, 1.2, -0.9, 0.7])
    n = 20_000
    torch.manual_seed(4)
    draws = task.run(theta.expand(n, 5)).double().reshape(n * 4, 2)
    expected = SLCPTask.covariance(theta.double().unsqueeze(0))[0]
    empirical = torch.cov(draws.T)
    # Standard error of a covariance entry: sqrt((S_ii S_jj + S_ij^2) / N), N = 4n draws.
    se = ((expected.diag().outer(expected.diag()) + expected.square()) / (4 * n)).sqrt()
    assert bool(((empirical - expected).abs() < 5 * se).all())
    assert torch.allclose(draws.mean(0), theta[:2].double(), atol=5 * 1.44 / math.sqrt(4 * n))


# ---------------------------------------------------------------------- with sbibm installed


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_matches_sbibm_simulator_observations_and_references(name):
    sbibm = pytest.importorskip("sbibm")
    theirs = sbibm.get_task(name)
    ours = sbibm_task(name)
    theta = theirs.get_prior()(num_samples=500)
    torch.manual_seed(9)
    expected = theirs.get_simulator()(theta)
    torch.manual_seed(9)
    assert torch.allclose(ours.run(theta), expected, rtol=1e-5, atol=1e-4)
    for number in (1, 2, 3):
        stored = ours.observation(number, source="sbibm")
        assert torch.allclose(ours.observation(number), stored, rtol=1e-5, atol=1e-5)
        assert torch.allclose(
            ours.true_parameters(number), ours.true_parameters(number, source="sbibm"), atol=1e-6
        )
    assert tuple(ours.reference_samples(1).shape) == (10_000, SHAPES[name][0])
