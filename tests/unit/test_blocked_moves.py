"""abc_mcmc's blocked moves, guide proposals, adaptive tempering and the simulations= budget:
the pieces against slow references, composability, exact resume and bad input."""

from __future__ import annotations

import math

import pytest
import torch

import probgraphics as pg
from probgraphics.api import prepare_abc
from probgraphics.inference import runner, tempering
from probgraphics.inference.kernels import elliptical
from probgraphics.inference.kernels.elliptical import GaussianReference
from probgraphics.inference.simulator import Simulation
from probgraphics.inference.whitening import build_layout, trace_program, whiten_values
from tests.blocked_toy import OBSERVATION, BiasedGuide, program
from tests.unit.test_runner import CrashingProgram, assert_same_posterior, crash_then_resume

DATA = {"x": OBSERVATION}
# Adaptive epsilon (tempering and resampling on), a guide proposing, three blocks + joint + guide.
FAST = {
    "chains": 6,
    "draws": 9,
    "warmup": 20,
    "pilot_size": 40,
    "progress": False,
    "seed": 3,
    "guide": BiasedGuide(0.3),
}


def layout(whiten_observed: bool = True):
    return build_layout(trace_program(program), DATA, whiten_observed=whiten_observed)


# --------------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------------


def test_block_masks_cover_every_coordinate_once():
    masks = runner.block_masks(layout(), ())
    # a (2), b (1), the noise of x (4): one block each, disjoint, covering all 7 coordinates.
    assert masks.shape == (3, 7)
    assert masks.sum(1).tolist() == [2, 1, 4]
    assert bool((masks.sum(0) == 1).all())
    grouped = runner.block_masks(layout(whiten_observed=False), (("b", "a"),))
    assert grouped.shape == (1, 3) and bool(grouped.all())
    with pytest.raises(ValueError, match=r"blocks name \['c'\], which are not latent sites"):
        runner.block_masks(layout(), (("a", "c"),))
    with pytest.raises(ValueError, match=r"blocks name \['a'\] more than once"):
        runner.block_masks(layout(), (("a",), ("a", "b")))


def test_masked_move_changes_only_its_block():
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(5, 7, generator=generator)
    state = elliptical.init(u, u.clone(), torch.ones(5))
    mask = torch.tensor([False, False, True, True, False, False, False])

    def simulate(proposal):
        return Simulation(proposal, proposal, torch.zeros(proposal.shape[0]))

    new, info = elliptical.step(
        generator, state, simulate, 1.0, torch.ones(5), "gaussian", None, mask
    )
    assert bool(info.accepted.all())  # distance 0 < 1: always accepted
    assert torch.equal(new.u[:, ~mask], u[:, ~mask])
    assert not torch.equal(new.u[:, mask], u[:, mask])


def test_independence_move_draws_from_the_proposal_and_weighs_it():
    # Prior N(0, I); proposal N(m, diag(s^2)) on coordinates 0-1 only. With a flat ABC kernel the
    # log acceptance ratio must be log N(u') + log q(u) - log N(u) - log q(u').
    generator = torch.Generator().manual_seed(1)
    chains, dim = 4000, 3
    mean = torch.tensor([0.5, -1.0, 0.0])
    scale = torch.tensor([0.7, 1.3])
    basis = torch.eye(dim)[:, :2]
    proposal = GaussianReference(mean, basis, scale)
    mask = torch.tensor([True, True, False])
    u = torch.randn(chains, dim, generator=generator)
    state = elliptical.init(u, u.clone(), torch.zeros(chains))
    seen = {}

    def simulate(candidate):
        seen["u"] = candidate
        return Simulation(candidate, candidate, torch.zeros(chains))

    _, info = elliptical.independence_step(
        generator, state, simulate, 1.0, proposal, "gaussian", mask
    )
    drawn = seen["u"]
    assert torch.equal(drawn[:, 2], u[:, 2])  # the kept coordinate
    # The draws are the proposal's: means and standard deviations within 4 standard errors.
    for k in range(2):
        assert abs(float(drawn[:, k].mean()) - float(mean[k])) < 4 * float(scale[k]) / chains**0.5
        assert abs(float(drawn[:, k].std()) / float(scale[k]) - 1.0) < 4 / (2 * chains) ** 0.5

    def log_prior(x):
        return -0.5 * x[:, :2].square().sum(1)

    def log_q(x):
        return -0.5 * ((x[:, :2] - mean[:2]) / scale).square().sum(1)

    expected = (log_prior(drawn) + log_q(u)) - (log_prior(u) + log_q(drawn))
    assert torch.allclose(
        info.acceptance_probability, expected.clamp(max=0.0).exp(), rtol=1e-4, atol=1e-6
    )


def test_tempering_keeps_the_asked_effective_sample_size():
    # Two chains near, six far: at the floor (7) the far ones would weigh almost nothing.
    distance = torch.tensor([1.0, 1.5, 28.0, 29.0, 30.0, 31.0, 32.0, 33.0])
    equal = torch.zeros(8, dtype=torch.float64)
    floor = runner.TEMPERING_MIN_RATIO * 10.0
    epsilon = float(tempering.next_epsilon(distance, equal, 10.0, 0.5, "gaussian", floor))
    log_weights = tempering.incremental_log_weights(distance, epsilon, 10.0, "gaussian")
    assert float(tempering.effective_sample_size(log_weights)) / 8 == pytest.approx(0.5, abs=1e-6)
    assert floor <= epsilon < 10.0
    # The weights are the Gaussian kernel's ratio at the new and old epsilon.
    change = 1 / epsilon**2 - 1 / 10.0**2
    reference = torch.softmax(-0.5 * change * distance.double().square(), 0)
    assert torch.allclose(tempering.normalized_weights(log_weights), reference)
    # Identical distances (resampled copies) cannot fall below the floor in one cycle.
    same = tempering.next_epsilon(torch.full((8,), 2.0), equal, 10.0, 0.5, "gaussian", floor)
    assert float(same) == pytest.approx(floor)


def test_warmup_tempering_lowers_epsilon_and_resamples_by_the_kernel_ratio():
    run = prepare_abc(program, DATA, **FAST)
    # Three chains near, three far: the far ones must give their places to copies of near ones.
    run.state = run.state._replace(distance=torch.tensor([1.0, 50.0, 1.2, 48.0, 0.9, 52.0]))
    run.epsilon_current = start = 10.0
    state = run.generator.get_state()
    before = run.state
    runner._temper(run)
    assert run.epsilon_current < start
    # The chains are the systematic resampling of the incremental weights, drawn from the run's
    # generator.
    run.generator.set_state(state)
    log_weights = tempering.incremental_log_weights(
        before.distance, run.epsilon_current, start, "gaussian"
    )
    index = tempering.resample_indices(run.generator, log_weights)
    assert torch.equal(run.state.u, before.u[index])
    assert set(index.tolist()) <= {0, 2, 4}


def test_whiten_values_inverts_the_whitening_without_simulating():
    lay = layout()
    u = torch.randn(5, lay.dim)
    values = pg.programs.simulate(program, n=5, seed=0)
    mapped = whiten_values(program, lay, {"a": values["a"], "b": values["b"]})
    assert torch.allclose(mapped[:, :2], values["a"])
    assert torch.allclose(mapped[:, 2], (values["b"] - 1.0) / 2.0)
    assert bool((mapped[:, 3:] == 0).all()) and u.shape == mapped.shape


# --------------------------------------------------------------------------------------------
# the run loop
# --------------------------------------------------------------------------------------------


def test_warmup_and_sampling_in_pieces_equal_one_run():
    whole = pg.infer(program, DATA, **FAST)
    run = prepare_abc(program, DATA, **FAST)
    assert run.n_moves == 5  # a, b, noise of x, the joint move, the guide
    runner.warmup(run, 7)
    runner.warmup(run)
    runner.sample(run, 4)
    runner.sample(run)
    assert_same_posterior(whole, runner.finish(run))


@pytest.mark.parametrize("crash_at", [15, 30])  # in warm-up (mid-tempering), in sampling
def test_resumed_blocked_run_equals_the_uninterrupted_run(tmp_path, crash_at):
    path = tmp_path / "run.ckpt"
    options = {**FAST, "checkpoint_every": 4}
    # resume=path alone: the checkpoint holds the guide's proposal and every setting.
    uninterrupted, saved, resumed = crash_then_resume(
        program, CrashingProgram(program, crash_at), DATA, options, path
    )
    assert 0 < saved["warmup_done"] + saved["sampling_steps_done"] < 29
    assert_same_posterior(uninterrupted, resumed)


def test_a_budgeted_run_resumes_from_its_checkpoint_alone(tmp_path):
    path = tmp_path / "run.ckpt"
    options = {
        "simulations": 1200,
        "chains": 6,
        "seed": 5,
        "progress": False,
        "checkpoint_every": 5,
    }
    uninterrupted, _, resumed = crash_then_resume(
        program, CrashingProgram(program, 40), DATA, options, path
    )
    assert_same_posterior(uninterrupted, resumed)


# --------------------------------------------------------------------------------------------
# simulations= and bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [300, 1001, 2500])
def test_simulations_is_a_hard_budget(budget):
    posterior = pg.infer(program, DATA, simulations=budget, seed=0, progress=False)
    assert posterior.n_simulations <= budget
    # The budget is spent, not wasted: less than one step of the chains is left over.
    assert budget - posterior.n_simulations < posterior.num_chains
    settings = posterior.settings
    assert settings["simulations"] == budget
    assert settings["pilot_size"] == min(max(1000, 4 * settings["chains"]), budget // 10)


def test_simulations_bad_input():
    with pytest.raises(ValueError, match=r"simulations=50 cannot pay for the pilot"):
        pg.infer(program, DATA, simulations=50, pilot_size=100, progress=False)
    with pytest.raises(ValueError, match=r"need at least \d+ simulations .* than simulations=2000"):
        pg.infer(program, DATA, simulations=2000, warmup=500, draws=500, progress=False)
    with pytest.raises(ValueError, match=r"simulations must be >= 1"):
        pg.infer(program, DATA, simulations=0, progress=False)


@pytest.mark.parametrize("budget", [700, 3000])
def test_abc_slice_honours_the_hard_budget(budget):
    # Its steps cost a varying number of simulations: the shrinking rounds stop where the
    # budget ends, so the cap holds whatever the planned steps turn out to cost.
    posterior = pg.infer(
        program, DATA, method="abc_slice", simulations=budget, seed=0, progress=False
    )
    assert posterior.n_simulations <= budget
    assert posterior.n_simulations > budget // 2  # planned on typical costs: mostly spent
    # Half the planned cost a step: the budget runs out, and the last steps keep their state.
    tight = pg.infer(
        program, DATA, method="abc_slice", simulations=budget, seed=0, progress=False,
        max_shrinks=20, epsilon=0.05,
    )  # fmt: skip
    assert budget - tight.num_chains < tight.n_simulations <= budget
    assert int(tight.sample_stats["cap_hits"].sum()) > 0


def test_blocks_bad_input():
    with pytest.raises(ValueError, match=r"blocks name \['shape'\], which are not latent sites"):
        pg.infer(program, DATA, blocks=[["shape"]], progress=False)
    with pytest.raises(ValueError, match=r"blocks must be one of \['sites', 'joint'\]"):
        pg.infer(program, DATA, blocks="site", progress=False)
    with pytest.raises(TypeError, match=r"blocks must be 'sites'.*got \['a', 'b'\]"):
        pg.infer(program, DATA, blocks=["a", "b"], progress=False)


def test_a_guide_for_another_program_is_refused():
    class OtherGuide(BiasedGuide):
        site_shapes = {"a": (3,), "b": ()}

    with pytest.raises(ValueError, match=r"guide was built for a program with other latent"):
        pg.infer(program, DATA, guide=OtherGuide(0.3), progress=False, **{"chains": 4})


def test_joint_blocks_with_a_guide_cycle_the_joint_move_and_the_guide():
    run = prepare_abc(program, DATA, **{**FAST, "blocks": "joint"})
    assert run.n_moves == 2 and run.masks.shape == (1, run.layout.dim)
    assert bool(run.masks.all()) and run.joint_mask is not None
    runner.warmup(run)
    assert run.reference is not None  # the joint move is preconditioned


def test_joint_blocks_are_the_papers_move():
    # blocks='joint' is the old single move: no guide, nothing cycled.
    run = prepare_abc(program, DATA, blocks="joint", chains=4, warmup=2, draws=2, progress=False)
    assert run.masks is None and run.n_moves == 1 and not run.config.multi_move
    assert math.isinf(run.epsilon_target) or run.epsilon_target > 0
