"""abc_mcmc's ridge moves (``ridge=[sites]``): the fitted directions against the exact
linear-Gaussian conditional, the step against a slow per-chain reference, the Jacobian,
composability, exact resume, the budget and bad input."""

from __future__ import annotations

import math

import pytest
import torch

import probgraphics as pg
from probgraphics.api import prepare_abc
from probgraphics.inference import runner
from probgraphics.inference.kernels import elliptical, ridge
from probgraphics.inference.simulator import Simulation
from tests.blocked_toy import OBSERVATION, program
from tests.unit.test_runner import CrashingProgram, assert_same_posterior, crash_then_resume

DATA = {"x": OBSERVATION}
FAST = {
    "chains": 5,
    "draws": 10,
    "warmup": 24,
    "pilot_size": 40,
    "ridge": ["b"],
    "summary": "identity",
    "distance": "l2",
    "progress": False,
    "seed": 3,
}


def test_directions_follow_the_exact_conditional_mean_of_a_linear_gaussian():
    generator = torch.Generator().manual_seed(0)
    jacobian = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    coordinates = torch.tensor([0, 2, 3, 5, 6])
    focus = torch.tensor([False, True, False, True, False])
    bandwidth = 0.7
    directions = ridge.fit_directions(
        jacobian, coordinates, focus, bandwidth, dim=8, dtype=torch.float64
    )
    # Slow reference: the posterior covariance written out, its regression of the followers on
    # the focus (the conditional mean's slope) and the focus' marginal covariance.
    covariance = torch.linalg.inv(torch.eye(5, dtype=torch.float64) + jacobian.T @ jacobian / 0.49)
    f, x = focus, ~focus
    marginal = covariance[f][:, f]
    slope = covariance[x][:, f] @ torch.linalg.inv(marginal)
    basis = directions.basis
    assert basis.shape == (8, 2)
    assert torch.count_nonzero(basis[[1, 4, 7]]) == 0  # coordinates not moved
    moved = basis[coordinates]
    # The columns span the focus by the marginal's Cholesky factor ...
    torch.testing.assert_close(moved[f] @ moved[f].T, marginal)
    # ... and the followers shift by the conditional mean's slope per unit of focus.
    torch.testing.assert_close(moved[x], slope @ moved[f])


def test_central_jacobian_of_an_affine_simulation_is_its_matrix():
    matrix = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]], dtype=torch.float64)

    def simulate(u):
        summaries = u @ matrix.T
        return Simulation(u, summaries, summaries.norm(dim=-1))

    u = torch.tensor([0.3, -0.1, 0.8], dtype=torch.float64)
    jacobian = ridge.central_jacobian(simulate, u, torch.tensor([0, 2]), 1e-3, batch_size=3)
    torch.testing.assert_close(jacobian, matrix[:, [0, 2]])


def test_step_matches_a_slow_per_chain_reference():
    generator = torch.Generator().manual_seed(2)
    chains, dim = 6, 4
    target = torch.tensor([0.5, -0.2, 0.1, 0.9])

    def simulate(u):
        summaries = u.sin()
        return Simulation(u * 2.0, summaries, (summaries - target).norm(dim=-1))

    u = torch.randn(chains, dim, generator=generator)
    simulation = simulate(u)
    state = elliptical.init(u, simulation.values, simulation.distance)
    directions = ridge.RidgeDirections(torch.randn(dim, 2, generator=generator))
    step_size = torch.linspace(0.1, 1.5, chains)
    noise = ridge.draw_noise(torch.Generator().manual_seed(5), state, step_size, 2)
    new_state, info = ridge.step_with_noise(state, simulate, 0.4, "gaussian", directions, noise)
    for c in range(chains):
        proposal = u[c] + directions.basis @ noise.delta[c]
        distance = (proposal.sin() - target).norm()
        log_ratio = (state.distance[c] ** 2 - distance**2) / (2 * 0.4**2)
        log_ratio += 0.5 * (u[c].square().sum() - proposal.square().sum())
        accept = bool(noise.log_uniform[c] < log_ratio)
        assert bool(info.accepted[c]) == accept
        torch.testing.assert_close(
            info.acceptance_probability[c], torch.exp(log_ratio.clamp(max=0.0))
        )
        torch.testing.assert_close(new_state.u[c], proposal if accept else u[c])
        torch.testing.assert_close(new_state.values[c], 2.0 * new_state.u[c])
    assert 0 < int(info.accepted.sum()) < chains  # both branches exercised


def test_the_cycle_ends_with_the_ridge_move_and_fits_during_warmup():
    run = prepare_abc(program, DATA, **FAST)
    assert run.n_moves == run.masks.shape[0] + 1 and run.is_ridge_move(run.n_moves - 1)
    b = run.layout.site("b")
    focus = torch.zeros(run.layout.dim, dtype=torch.bool)
    focus[b.offset] = True
    assert torch.equal(run.ridge_focus, focus)
    first = run.ridge_directions.basis.clone()
    # Only latent coordinates move (x's whitened noise is a block of its own, not a follower).
    latent = torch.zeros(run.layout.dim, dtype=torch.bool)
    for site in run.layout.latent_sites:
        latent[site.offset : site.offset + site.size] = True
    assert torch.count_nonzero(first[~latent]) == 0
    runner.warmup(run)
    assert not torch.equal(run.ridge_directions.basis, first)  # refitted at the refit steps
    assert not torch.equal(run.ridge_log_step, torch.full_like(run.ridge_log_step, math.log(0.5)))


def test_warmup_and_sampling_in_pieces_equal_one_run():
    whole = pg.infer(program, DATA, **FAST)
    run = prepare_abc(program, DATA, **FAST)
    runner.warmup(run, 9)
    runner.warmup(run)
    runner.sample(run, 4)
    runner.sample(run)
    assert_same_posterior(whole, runner.finish(run))


@pytest.mark.parametrize("crash_at", [25, 40])  # program calls: in warm-up, in sampling
def test_resumed_ridge_run_equals_the_uninterrupted_run(tmp_path, crash_at):
    path = tmp_path / "run.ckpt"
    options = {**FAST, "checkpoint_every": 4}
    uninterrupted, saved, resumed = crash_then_resume(
        program, CrashingProgram(program, crash_at), DATA, options, path
    )
    assert 0 < saved["warmup_done"] + saved["sampling_steps_done"] < 34
    assert saved["ridge"]["basis"].shape[1] == 1
    assert_same_posterior(uninterrupted, resumed)


@pytest.mark.parametrize("budget", [1500, 4000])
def test_the_ridge_fits_are_paid_from_the_hard_budget(budget):
    posterior = pg.infer(
        program, DATA, simulations=budget, ridge=["a"], summary="identity", seed=0, progress=False
    )
    assert posterior.n_simulations <= budget
    settings = posterior.settings
    fits = runner.ridge_fits(settings["warmup"]) * 2 * 3  # a and b: 3 latent coordinates
    steps = settings["warmup"] + settings["draws"]
    assert posterior.n_simulations == settings["pilot_size"] + fits + steps * settings["chains"]


def test_ridge_bad_input():
    run = {"chains": 4, "draws": 2, "warmup": 2, "progress": False}
    with pytest.raises(ValueError, match=r"ridge names \['z'\], which are not latent sites"):
        pg.infer(program, DATA, ridge=["z"], **run)
    with pytest.raises(ValueError, match=r"ridge names every latent site"):
        pg.infer(program, DATA, ridge=["a", "b"], **run)
    with pytest.raises(ValueError, match=r"ridge names \['a'\] more than once"):
        pg.infer(program, DATA, ridge=["a", "a"], **run)
    with pytest.raises(TypeError, match=r"ridge must be None or a list of latent site names"):
        pg.infer(program, DATA, ridge=[1], **run)
    with pytest.raises(ValueError, match=r"do not combine yet"):
        pg.infer(program, DATA, ridge=["a"], collapse="b", **run)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['ridge'\] for method 'abc_slice'"):
        pg.infer(program, DATA, method="abc_slice", ridge=["a"], **run)
    focus = torch.tensor([True, True])
    with pytest.raises(ValueError, match=r"leave at least one to follow"):
        ridge.fit_directions(torch.ones(3, 2), torch.tensor([0, 1]), focus, 1.0, dim=2)
    with pytest.raises(ValueError, match=r"bandwidth must be > 0"):
        one = torch.tensor([True, False])
        ridge.fit_directions(torch.ones(3, 2), torch.tensor([0, 1]), one, 0.0, dim=2)
    with pytest.raises(ValueError, match=r"jacobian must be \(K, m\)"):
        ridge.fit_directions(torch.ones(3, 3), torch.tensor([0, 1]), focus, 1.0, dim=2)
