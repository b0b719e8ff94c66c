"""ABC-SMC's pieces (weights, quantiles, resampling, reweighting) and ``infer(method="abc_smc")``:
the hard budget, reproducibility, the recorded schedule, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

import probgraphics as pg
from probgraphics.inference import smc
from probgraphics.programs.toy import linear_gaussian


def state_with(distance: torch.Tensor, log_weight: torch.Tensor | None = None) -> smc.SMCState:
    count = distance.shape[0]
    state = smc.init(torch.zeros(count, 2), torch.zeros(count, 2), distance)
    return state if log_weight is None else state._replace(log_weight=log_weight)


def test_effective_sample_size():
    assert float(smc.effective_sample_size(torch.zeros(8))) == pytest.approx(8.0)
    one_hot = torch.tensor([0.0, -math.inf, -math.inf])
    assert float(smc.effective_sample_size(one_hot)) == pytest.approx(1.0)
    weights = torch.tensor([1.0, 2.0, 3.0])
    expected = float(weights.sum() ** 2 / weights.square().sum())
    assert float(smc.effective_sample_size(weights.log())) == pytest.approx(expected)


def test_weighted_quantile_matches_the_sorted_values_and_skips_dead_particles():
    values = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, float("nan")])
    equal = torch.tensor([0.0] * 5 + [-math.inf])
    assert float(smc.weighted_quantile(values, equal, 0.4)) == 2.0
    assert float(smc.weighted_quantile(values, equal, 0.5)) == 3.0
    dead = torch.tensor([0.0, -math.inf, 0.0, -math.inf, 0.0, -math.inf])  # alive: 5, 4, 3
    assert float(smc.weighted_quantile(values, dead, 0.5)) == 4.0


def test_indicator_reweighting_keeps_alpha_of_the_particles():
    distance = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    state = state_with(distance)
    epsilon = smc.next_epsilon(state, 0.3, "indicator")
    state = smc.reweight(state, epsilon, "indicator")
    alive = torch.isfinite(state.log_weight)
    assert int(alive.sum()) == 300
    assert bool((distance[alive] <= epsilon).all()) and bool((distance[~alive] > epsilon).all())
    # Dead particles stay dead at a larger tolerance; a floor holds epsilon up.
    assert int(torch.isfinite(smc.reweight(state, 0.9, "indicator").log_weight).sum()) == 300
    assert float(smc.next_epsilon(state, 0.3, "indicator", floor=0.5)) == 0.5


def test_gaussian_reweighting_halves_the_effective_sample_size():
    distance = torch.rand(1000, generator=torch.Generator().manual_seed(1)) + 0.5
    state = state_with(distance)
    for _ in range(3):
        before = float(smc.effective_sample_size(state.log_weight))
        epsilon = smc.next_epsilon(state, 0.5, "gaussian")
        assert float(epsilon) < float(state.epsilon)
        previous = state.epsilon
        new = smc.reweight(state, epsilon, "gaussian")
        after = float(smc.effective_sample_size(new.log_weight))
        assert after == pytest.approx(0.5 * before, rel=1e-6)
        # The weight ratio is K_eps / K_prev.
        change = new.log_weight - state.log_weight
        expected = -0.5 * distance.double().square() * (epsilon**-2 - previous.double() ** -2)
        assert torch.allclose(change - change[0], expected - expected[0], atol=1e-9)
        state = new


@pytest.mark.parametrize("scheme", ["systematic", "multinomial"])
def test_resampling_follows_the_weights(scheme):
    weights = torch.tensor([0.5, 0.25, 0.125, 0.125, 0.0], dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    counts = torch.zeros(5)
    for _ in range(200):
        index = smc.resample_indices(generator, weights.log(), scheme)
        counts += torch.bincount(index, minlength=5)
    assert counts[4] == 0
    frequencies = counts / counts.sum()
    assert torch.allclose(frequencies.double(), weights, atol=0.03)
    if scheme == "systematic":  # each particle's count is floor or ceil of P * w
        index = smc.resample_indices(generator, weights.log(), scheme)
        assert (torch.bincount(index, minlength=5) - 5 * weights).abs().max() < 1
        equal = smc.resample_indices(generator, torch.zeros(7), scheme)
        assert equal.tolist() == list(range(7))


def test_adaptive_steps():
    assert smc.adaptive_steps(1.0) == 1
    assert smc.adaptive_steps(0.0) == smc.MAX_ADAPTIVE_STEPS
    assert smc.adaptive_steps(0.5) == math.ceil(math.log(0.01) / math.log(0.5))


@pytest.fixture(scope="module")
def problem():
    program = linear_gaussian(dim=3, noise=0.5, seed=0)
    return program, {"x": pg.programs.simulate(program, seed=1)["x"]}


@pytest.mark.parametrize(
    "options",
    [
        {"simulations": 5000, "particles": 256},
        {"simulations": 3001, "particles": 300, "pilot_size": 500, "mcmc_steps": "adaptive"},
        {"simulations": 4000, "particles": 200, "batch_size": 64, "abc_kernel": "gaussian"},
        {"simulations": 4000, "particles": 200, "epsilon": 0.5, "abc_kernel": "gaussian"},
    ],
)
def test_budget_is_a_hard_cap_and_the_schedule_is_recorded(problem, options):
    program, observation = problem
    posterior = pg.infer(program, observation, method="abc_smc", seed=0, progress=False, **options)
    particles = options["particles"]
    settings = posterior.settings
    assert posterior.n_simulations <= options["simulations"]
    assert posterior.samples["z"].shape == (1, particles, 3)
    assert posterior.sample_stats["distance"].shape == (1, particles)
    rounds = settings["rounds"]
    assert rounds >= 1
    for key in ("epsilon_sequence", "acceptance_rates", "effective_sample_sizes", "betas"):
        assert len(settings[key]) == rounds
    epsilons = settings["epsilon_sequence"]
    assert all(b <= a for a, b in zip(epsilons, epsilons[1:], strict=False))
    final = float(posterior.sample_stats["epsilon"][0, 0])
    assert final == pytest.approx(epsilons[-1], rel=1e-6)
    if options.get("epsilon") is None:
        assert settings["stop_reason"] in ("budget", "epsilon_stalled", "acceptance_collapsed")
        # The budget left over cannot pay for one more move of every particle.
        if settings["stop_reason"] == "budget":
            assert options["simulations"] - posterior.n_simulations < particles
    else:
        assert epsilons[-1] == options["epsilon"] and settings["epsilon_reached"]
    posterior.to_arviz()


def test_same_seed_gives_bit_identical_results(problem):
    program, observation = problem
    options = {"simulations": 3000, "particles": 256, "seed": 11, "progress": False}
    first = pg.infer(program, observation, method="abc_smc", **options)
    second = pg.infer(program, observation, method="abc_smc", **options)
    assert torch.equal(first.samples["z"], second.samples["z"])
    assert torch.equal(first.sample_stats["distance"], second.sample_stats["distance"])
    assert first.settings["epsilon_sequence"] == second.settings["epsilon_sequence"]
    third = pg.infer(program, observation, method="abc_smc", **{**options, "seed": 12})
    assert not torch.equal(first.samples["z"], third.samples["z"])


def test_an_unreachable_epsilon_warns(problem):
    program, observation = problem
    with pytest.warns(RuntimeWarning, match="before reaching epsilon"):
        posterior = pg.infer(
            program,
            observation,
            method="abc_smc",
            simulations=1200,
            particles=100,
            pilot_size=100,
            epsilon=1e-6,
            seed=0,
            progress=False,
        )
    assert not posterior.settings["epsilon_reached"]


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"simulations": 2000}, ValueError, "pilot_size \\+ 2 \\* particles = 3048"),
        ({"simulations": 500, "particles": 200, "pilot_size": 200}, ValueError, ">= pilot_size"),
        ({"particles": 1}, ValueError, "particles must be >= 2"),
        ({"alpha": 1.0}, ValueError, "alpha must be in \\(0, 1\\)"),
        ({"alpha": 0.0}, ValueError, "alpha must be in"),
        ({"mcmc_steps": 0}, ValueError, "mcmc_steps must be >= 1"),
        ({"mcmc_steps": "often"}, ValueError, "'adaptive'"),
        ({"abc_kernel": "box"}, ValueError, "abc_kernel must be one of"),
        ({"resampling": "stratified"}, ValueError, "resampling must be one of"),
        ({"epsilon": 0.0}, ValueError, "epsilon must be > 0"),
        ({"epsilon": "small"}, TypeError, "epsilon must be a positive number"),
        ({"simulations": 1.5e4}, TypeError, "simulations must be an int"),
        ({"pilot_size": 1}, ValueError, "pilot_size must be >= 2"),
        ({"distance": "cosine"}, ValueError, "unknown distance"),
        ({"chains": 4}, TypeError, "unknown option"),
        ({"progress": "no"}, TypeError, "progress must be True or False"),
    ],
)
def test_bad_input_is_a_clear_error(problem, options, error, match):
    program, observation = problem
    with pytest.raises(error, match=match):
        pg.infer(
            program, observation, method="abc_smc", **{"seed": 0, "progress": False, **options}
        )


def test_abc_smc_is_registered():
    assert "abc_smc" in pg.api.available_methods()
