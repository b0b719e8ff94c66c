"""abc_mcmc's collapsed moves (``collapse=site``): the kernel step against a slow per-chain
reference, the cycle's blocks, composability, exact resume, the budget and bad input."""

from __future__ import annotations

import dataclasses
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import probgraphics as pg
from probgraphics.api import prepare_abc
from probgraphics.inference import runner
from probgraphics.inference.collapse import affine_statistics
from probgraphics.inference.kernels import collapsed, elliptical
from probgraphics.inference.simulator import Simulation
from tests.collapsed_toy import OBSERVATION, CollapsedToy, matrix, offset
from tests.unit.test_runner import assert_same_posterior, crash_then_resume

DATA = {"x": OBSERVATION}
FAST = {
    "chains": 5,
    "draws": 8,
    "warmup": 16,
    "pilot_size": 40,
    "collapse": "t",
    "progress": False,
    "seed": 4,
}


class CrashingToy(CollapsedToy):
    """The toy program, raising on its ``crash_at``-th call (a killed run)."""

    def __init__(self, crash_at):
        super().__init__()
        self.crash_at, self.calls = crash_at, 0

    def __call__(self):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt("simulated interruption")
        return super().__call__()


# --------------------------------------------------------------------------------------------
# the kernel against a slow reference
# --------------------------------------------------------------------------------------------


def toy_simulate(u: torch.Tensor) -> Simulation:
    """``u = (theta, t1, t2)`` float64 -> the noise-free toy observation's L2 distance."""
    mean = offset(u[:, 0]) + (matrix(u[:, 0]) @ u[:, 1:].unsqueeze(-1)).squeeze(-1)
    distance = (mean - OBSERVATION.double()).norm(dim=-1)
    return Simulation(u.clone(), mean, distance)


def toy_statistics(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return affine_statistics(offset(values[:, 0]), matrix(values[:, 0]), OBSERVATION.double())


LINEAR = collapsed.LinearSite(torch.tensor([False, True, True]), toy_statistics)


def reference_step(u, noise, z, bandwidth, mask):
    """One collapsed step, chain by chain, with every density written out: the pCN move of the
    masked coordinates, t' from the Gaussian conditional, and the joint Metropolis-Hastings ratio
    ``K(rho') N(t') q(t | theta) / (K(rho) N(t) q(t' | theta'))``."""
    h2 = bandwidth**2
    y = OBSERVATION.double()
    out = []
    for c in range(u.shape[0]):
        theta, t = u[c, 0], u[c, 1:]
        a = noise.a[c]
        theta_new = math.sqrt(1.0 - a * a) * theta + a * noise.nu[c, 0] if mask[0] else theta

        def conditional(th):
            g = matrix(th)
            precision = torch.eye(2, dtype=torch.float64) + g.T @ g / h2
            covariance = torch.linalg.inv(precision)
            mean = covariance @ g.T @ (y - offset(th)) / h2
            return torch.distributions.MultivariateNormal(mean, covariance)

        q_new = conditional(theta_new)
        # The draw mu + L^-T z, L L^T the precision (the kernel's parametrization).
        precision_root = torch.linalg.cholesky(torch.linalg.inv(q_new.covariance_matrix))
        t_new = q_new.mean + torch.linalg.solve(precision_root.T, z[c])
        prior = torch.distributions.Normal(0.0, 1.0)

        def log_kernel(th, tt):
            mean = offset(th) + matrix(th) @ tt
            return -((mean - y).square().sum()) / (2 * h2)

        log_ratio = (
            log_kernel(theta_new, t_new)
            + prior.log_prob(t_new).sum()
            + conditional(theta).log_prob(t)
            - log_kernel(theta, t)
            - prior.log_prob(t).sum()
            - q_new.log_prob(t_new)
        )
        accept = bool(noise.log_uniform[c] < log_ratio)
        new = torch.cat([theta_new.reshape(1), t_new]) if accept else u[c]
        out.append((new, accept, float(log_ratio)))
    return out


@pytest.mark.parametrize("mask", [[True, False, False], [False, False, False]])
def test_step_matches_the_slow_reference(mask):
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(64, 3, generator=generator, dtype=torch.float64)
    first = toy_simulate(u)
    state = collapsed.init(u, first.values, first.distance, LINEAR)
    bandwidth = 0.5
    noise = elliptical.draw_noise(generator, state, torch.full((64,), 0.7, dtype=torch.float64))
    z = torch.randn(64, 2, generator=generator, dtype=torch.float64)
    block = torch.tensor(mask)
    new, info = collapsed.step_with_noise(
        state, toy_simulate, LINEAR, bandwidth, noise, z, mask=block
    )
    expected = reference_step(u, noise, z, bandwidth, mask)
    accepted = torch.tensor([accept for _, accept, _ in expected])
    assert torch.equal(info.accepted, accepted)
    if mask[0]:
        assert 5 < int(accepted.sum()) < 59  # both outcomes are exercised
    else:
        assert bool(accepted.all())  # theta held, the map exact: a Gibbs draw of t
    assert torch.allclose(new.u, torch.stack([row for row, _, _ in expected]), atol=1e-10)
    probability = torch.tensor([min(1.0, math.exp(r)) for _, _, r in expected])
    assert torch.allclose(info.acceptance_probability, probability.to(torch.float64), atol=1e-9)
    # The state's statistics follow the accepted theta.
    gram, projection = toy_statistics(new.values)
    assert torch.allclose(new.gram, gram) and torch.allclose(new.projection, projection)


def test_exactly_affine_moves_of_the_site_alone_are_always_accepted():
    # With theta held (an empty block) the ratio is Z(theta) / Z(theta) = 1: a Gibbs draw.
    generator = torch.Generator().manual_seed(1)
    u = torch.randn(32, 3, generator=generator, dtype=torch.float64)
    first = toy_simulate(u)
    state = collapsed.init(u, first.values, first.distance, LINEAR)
    new, info = collapsed.step(
        generator, state, toy_simulate, LINEAR, 0.4, torch.ones(32), mask=torch.zeros(3, dtype=bool)
    )
    assert bool(info.accepted.all())
    assert torch.equal(new.u[:, 0], u[:, 0]) and not torch.equal(new.u[:, 1:], u[:, 1:])


def test_a_failed_conditional_rejects_only_that_chain():
    def broken(values):
        gram, projection = toy_statistics(values)
        gram[0] = math.nan
        return gram, projection

    generator = torch.Generator().manual_seed(2)
    u = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    first = toy_simulate(u)
    state = collapsed.init(u, first.values, first.distance, LINEAR)
    site = collapsed.LinearSite(LINEAR.mask, broken)
    new, info = collapsed.step(
        generator, state, toy_simulate, site, 0.4, torch.ones(8), mask=torch.zeros(3, dtype=bool)
    )
    assert not bool(info.accepted[0]) and bool(info.accepted[1:].all())
    assert torch.equal(new.u[0], u[0])


def test_affine_statistics_skip_unreached_rows_exactly():
    generator = torch.Generator().manual_seed(3)
    matrix_ = torch.randn(3, 10, 4, generator=generator)
    matrix_[:, ::2] = 0.0  # rows the site does not reach
    offset_ = torch.randn(3, 10, generator=generator)
    target = torch.randn(10, generator=generator)
    gram, projection = affine_statistics(offset_, matrix_, target)
    dense = matrix_.double()
    assert torch.allclose(gram, dense.mT @ dense, atol=1e-5)
    expected = (dense.mT @ (target.double() - offset_.double()).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(projection, expected, atol=1e-10)


# --------------------------------------------------------------------------------------------
# the run loop
# --------------------------------------------------------------------------------------------


def test_the_cycle_leaves_the_collapsed_site_out_of_every_block():
    run = prepare_abc(CollapsedToy(), DATA, **FAST)
    site = run.linear.mask
    assert site.tolist() == [False, True, True]
    assert run.masks.shape[0] == 2  # theta's block and the joint move (of theta alone)
    assert not bool((run.masks & site).any()) and not bool((run.joint_mask & site).any())
    assert isinstance(run.state, collapsed.CollapsedState)
    assert run.state.gram.shape == (5, 2, 2)


def test_warmup_and_sampling_in_pieces_equal_one_run():
    whole = pg.infer(CollapsedToy(), DATA, **FAST)
    run = prepare_abc(CollapsedToy(), DATA, **FAST)
    runner.warmup(run, 7)
    runner.warmup(run)
    runner.sample(run, 3)
    runner.sample(run)
    assert_same_posterior(whole, runner.finish(run))


@pytest.mark.parametrize("crash_at", [20, 40])  # program calls (two a step): warm-up, sampling
def test_resumed_collapsed_run_equals_the_uninterrupted_run(tmp_path, crash_at):
    path = tmp_path / "run.ckpt"
    options = {**FAST, "checkpoint_every": 4}
    uninterrupted, saved, resumed = crash_then_resume(
        CollapsedToy(), CrashingToy(crash_at), DATA, options, path
    )
    assert 0 < saved["warmup_done"] + saved["sampling_steps_done"] < 24
    assert "gram" in saved["state"]
    assert_same_posterior(uninterrupted, resumed)


@pytest.mark.parametrize("budget", [500, 2001])
def test_a_collapsed_run_keeps_the_hard_budget(budget):
    posterior = pg.infer(
        CollapsedToy(), DATA, simulations=budget, collapse="t", seed=0, progress=False
    )
    assert posterior.n_simulations <= budget
    # Two simulations a chain a step: less than one step of the chains is left over.
    assert budget - posterior.n_simulations < 2 * posterior.num_chains


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def plain_program():
    t = pyro.sample("t", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    return pyro.sample(
        "x", dist.Normal(t.sum(-1, keepdim=True).expand(t.shape[:-1] + (3,)), 0.4).to_event(1)
    )


class WideToy(CollapsedToy):
    def __call__(self):
        theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
        t = pyro.sample("t", dist.Normal(0.0, 2.0).expand([2]).to_event(1))
        mean = offset(theta) + (matrix(theta) @ t.unsqueeze(-1)).squeeze(-1)
        return pyro.sample("x", dist.Normal(mean, 0.4).to_event(1))


def test_collapse_bad_input():
    run = {"chains": 4, "draws": 2, "warmup": 2, "progress": False}
    with pytest.raises(ValueError, match=r"collapse='z' is not a latent site .*\['t', 'theta'\]"):
        pg.infer(CollapsedToy(), DATA, collapse="z", **run)
    with pytest.raises(TypeError, match=r"collapse must be the name of one latent site"):
        pg.infer(CollapsedToy(), DATA, collapse=["t"], **run)
    with pytest.raises(ValueError, match=r"needs the program to offer affine_observation"):
        pg.infer(plain_program, DATA, collapse="t", **run)
    with pytest.raises(ValueError, match=r"prior to be the standard normal"):
        pg.infer(WideToy(), DATA, collapse="t", **run)
    with pytest.raises(ValueError, match=r"needs observation_noise='marginal' \(or 'auto'\)"):
        pg.infer(CollapsedToy(), DATA, collapse="t", observation_noise="whitened", **run)
    with pytest.raises(ValueError, match=r"abc_kernel='gaussian'"):
        pg.infer(CollapsedToy(), DATA, collapse="t", abc_kernel="indicator", **run)
    with pytest.raises(
        TypeError, match=r"unknown option\(s\) \[.collapse.\] for method .abc_slice."
    ):
        pg.infer(CollapsedToy(), DATA, method="abc_slice", collapse="t", **run)


def test_a_malformed_affine_map_is_reported_with_its_shapes():
    class Malformed(CollapsedToy):
        def affine_observation(self, site, latents):
            theta = latents["theta"]
            return offset(theta), matrix(theta)[..., :1]

    with pytest.raises(ValueError, match=r"returned offset \(\d+, 3\) and matrix \(\d+, 3, 1\)"):
        pg.infer(Malformed(), DATA, **{**FAST, "pilot_size": 10})


def test_a_guide_proposal_on_the_collapsed_site_is_refused():
    # The api fits the guide's proposal without the site; a hand-built one must do the same.
    run = prepare_abc(CollapsedToy(), DATA, **FAST)
    run.config = dataclasses.replace(run.config, guide_proposals=True)
    touching = elliptical.GaussianReference(
        torch.tensor([0.5, 0.2, 0.0]), torch.eye(3), torch.ones(3)
    )
    with pytest.raises(ValueError, match=r"must be N\(0, I\) on the collapsed site 't'"):
        runner._set_moves(run, touching)
    fine = elliptical.GaussianReference(
        torch.tensor([0.5, 0.0, 0.0]), torch.eye(3)[:, :1], torch.full((1,), 0.3)
    )
    runner._set_moves(run, fine)
    assert run.n_moves == 3
