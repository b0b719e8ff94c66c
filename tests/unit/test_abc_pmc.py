"""abc_pmc (probgraphics/inference/pmc.py): the hard budget, option validation, reproducibility,
finite weights, the mixture density the weights divide by, and failed simulations."""

from __future__ import annotations

import math
import warnings

import pyro.distributions as dist
import pytest
import torch

import probgraphics as pg
from probgraphics.inference import pmc
from probgraphics.inference.tempering import resample_indices
from probgraphics.programs.toy import linear_gaussian


def _observation(program, seed: int = 1) -> dict[str, torch.Tensor]:
    return {"x": pg.programs.simulate(program, seed=seed)["x"]}


@pytest.fixture(scope="module")
def toy():
    program = linear_gaussian(dim=3, noise=0.5, seed=0)
    return program, _observation(program)


def _run(program, observation, **options):
    options = {"seed": 0, "progress": False, **options}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an epsilon not reached
        return pg.infer(program, observation, method="abc_pmc", **options)


@pytest.mark.parametrize("simulations", [1_500, 2_001, 7_777, 20_000])
@pytest.mark.parametrize("kernel", pmc.KERNELS)
def test_the_budget_is_never_exceeded(toy, simulations, kernel):
    program, observation = toy
    posterior = _run(
        program, observation, simulations=simulations, particles=500, kernel=kernel, batch_size=700
    )
    assert posterior.n_simulations <= simulations
    settings = posterior.settings
    # Every generation but a cut-short last one has exactly `particles` particles, and the
    # record adds up to what was spent.
    spent = sum(settings["simulations_per_generation"])
    last = settings["last_generation"]
    spent += 0 if last is None else last["simulations"]
    assert spent == posterior.n_simulations
    if settings["stop_reason"] == "budget":
        assert posterior.n_simulations == simulations  # nothing left unspent
    assert tuple(posterior.samples["z"].shape) == (1, 500, 3)


def test_a_fixed_epsilon_ends_every_generation_at_it(toy):
    program, observation = toy
    posterior = _run(program, observation, simulations=15_000, particles=400, epsilon=1.5)
    settings = posterior.settings
    assert settings["epsilon_reached"] and settings["epsilon_target"] == 1.5
    assert all(value >= 1.5 for value in settings["epsilon_sequence"][1:])  # 0: the pilot's
    assert settings["epsilon_sequence"][-1] == 1.5
    assert bool((posterior.sample_stats["distance"] <= 1.5).all())


@pytest.mark.parametrize(
    ("options", "error", "words"),
    [
        ({"quantile": 1.0}, ValueError, "quantile must be in (0, 1)"),
        ({"quantile": 0.0}, ValueError, "quantile must be in (0, 1]"),
        ({"quantile": "median"}, TypeError, "quantile must be a number"),
        ({"kernel": "gaussian"}, ValueError, "kernel must be one of ['knn', 'olcm'"),
        ({"particles": 1}, ValueError, "particles must be >= 2"),
        ({"particles": 100.0}, TypeError, "particles must be an int"),
        ({"draws": 0}, ValueError, "draws must be >= 1"),
        ({"epsilon": -1.0}, ValueError, "epsilon must be > 0"),
        ({"pilot_size": 100, "particles": 200}, ValueError, "pilot_size=100 is smaller than"),
        ({"simulations": 2_999, "particles": 1000}, ValueError, "pilot_size + particles = 3000"),
        ({"distance": "cosine"}, ValueError, "unknown distance 'cosine'"),
        ({"chains": 8}, TypeError, "unknown option(s) ['chains'] for method 'abc_pmc'"),
        ({"seed": -3}, TypeError, "seed must be a non-negative int"),
    ],
)
def test_bad_options_are_rejected_with_what_to_do(toy, options, error, words):
    program, observation = toy
    with pytest.raises(error) as caught:
        pg.infer(program, observation, method="abc_pmc", progress=False, **options)
    assert words in str(caught.value)


def test_the_options_are_listed():
    options = pg.api.method_options("abc_pmc")
    assert options["kernel"] == "knn" and options["quantile"] == 0.5
    assert "abc_pmc" in pg.api.available_methods()


def test_a_seed_reproduces_the_run_and_another_seed_does_not(toy):
    program, observation = toy
    first = _run(program, observation, simulations=6_000, particles=300, seed=11)
    second = _run(program, observation, simulations=6_000, particles=300, seed=11)
    other = _run(program, observation, simulations=6_000, particles=300, seed=12)
    assert torch.equal(first.samples["z"], second.samples["z"])
    assert first.settings["epsilon_sequence"] == second.settings["epsilon_sequence"]
    assert not torch.equal(first.samples["z"], other.samples["z"])


@pytest.mark.parametrize("kernel", pmc.KERNELS)
def test_weights_are_finite_and_the_population_is_not_degenerate(toy, kernel):
    program, observation = toy
    posterior = _run(program, observation, simulations=20_000, particles=500, kernel=kernel)
    settings = posterior.settings
    sizes = settings["effective_sample_sizes"]
    assert all(math.isfinite(size) and 1.0 <= size <= 500.0 + 1e-6 for size in sizes)
    # The last generation keeps every acceptance of the budget's rest: maybe more than 500.
    last = settings["last_generation"]
    final = settings["final_effective_sample_size"]
    assert math.isfinite(final) and 1.0 <= final <= max(500, last["accepted"]) + 1e-6
    # Importance weights of a sensible kernel keep most of the population.
    assert settings["final_effective_sample_size"] > 0.3 * 500
    assert bool(torch.isfinite(posterior.samples["z"]).all())
    epsilons = settings["epsilon_sequence"]
    assert all(b < a for a, b in zip(epsilons, epsilons[1:], strict=False))


def _state(count: int = 64, dim: int = 3, seed: int = 0) -> pmc.PMCState:
    generator = torch.Generator().manual_seed(seed)
    u = torch.randn(count, dim, generator=generator)
    distance = torch.rand(count, generator=generator)
    log_weight = torch.randn(count, generator=generator, dtype=torch.float64)
    return pmc.PMCState(u, u.clone(), distance, log_weight, torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("kernel", pmc.KERNELS)
def test_the_mixture_density_is_the_mixture_of_gaussians(kernel):
    state = _state()
    proposal = pmc.fit_proposal(state, kernel, torch.tensor(0.5, dtype=torch.float64))
    points = torch.randn(10, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    covariances = proposal.scale_tril @ proposal.scale_tril.transpose(-1, -2)
    count = proposal.centre.shape[0]  # 64, or 128 with knn's defensive components
    components = dist.MultivariateNormal(
        proposal.centre, covariance_matrix=covariances.expand(count, 3, 3)
    )
    log_components = components.log_prob(points.unsqueeze(1))  # (10, count)
    expected = torch.logsumexp(proposal.log_weight + log_components, dim=-1)
    expected = expected + 1.5 * math.log(2 * math.pi)  # log_proposal_density drops it
    assert torch.allclose(pmc.log_proposal_density(proposal, points), expected, atol=1e-9)


def test_olcm_covariances_are_the_local_second_moments():
    state = _state()
    epsilon = torch.tensor(0.5, dtype=torch.float64)
    proposal = pmc.fit_proposal(state, "olcm", epsilon)
    inside = state.distance <= 0.5
    weights = torch.softmax(state.log_weight, 0) * inside
    weights = weights / weights.sum()
    u = state.u.double()
    j = 7
    offset = u - u[j]
    expected = (offset * weights.unsqueeze(-1)).T @ offset
    covariance = proposal.scale_tril[j] @ proposal.scale_tril[j].T
    assert torch.allclose(covariance, expected, rtol=1e-6, atol=1e-8)


def test_knn_covariances_are_the_nearest_neighbours_second_moments():
    state = _state(count=40, dim=2)
    proposal = pmc.fit_proposal(state, "knn", torch.tensor(0.5, dtype=torch.float64))
    u = state.u.double()
    k = round(pmc.KNN_FRACTION * 40)
    j = 3
    distances = (u - u[j]).norm(dim=-1)
    distances[j] = math.inf
    nearest = torch.argsort(distances)[:k]
    offset = u[nearest] - u[j]
    expected = offset.T @ offset / k
    covariance = proposal.scale_tril[j] @ proposal.scale_tril[j].T
    assert torch.allclose(covariance, expected, rtol=1e-6, atol=1e-8)


def test_proposals_follow_the_mixture():
    state = _state(count=4, dim=2)
    proposal = pmc.fit_proposal(state, "beaumont", torch.tensor(1.0, dtype=torch.float64))
    draws = pmc.propose(
        torch.Generator().manual_seed(3), proposal, 200_000, torch.float64
    )  # (M, 2)
    weights = proposal.log_weight.exp()
    mean = weights @ proposal.centre
    covariance = proposal.scale_tril[0] @ proposal.scale_tril[0].T
    centred = proposal.centre - mean
    covariance = covariance + (centred * weights.unsqueeze(-1)).T @ centred
    assert torch.allclose(draws.mean(0), mean, atol=0.02)
    assert torch.allclose(torch.cov(draws.T), covariance, rtol=0.03, atol=0.02)


def test_resample_false_returns_the_weighted_population(toy):
    program, observation = toy
    posterior = _run(program, observation, simulations=8_000, particles=300, resample=False)
    log_weight = posterior.sample_stats["log_weight"][0].double()
    assert bool(torch.isfinite(log_weight).all())
    assert abs(float(torch.logsumexp(log_weight, 0))) < 1e-9
    last = posterior.settings["last_generation"]
    expected = last["accepted"] if last["used"] else 300
    assert tuple(posterior.samples["z"].shape) == (1, expected, 3)
    with pytest.raises(ValueError, match="resample=False returns the weighted population"):
        _run(program, observation, simulations=8_000, particles=300, resample=False, draws=10)


def test_systematic_resampling_into_more_draws_follows_the_weights():
    # The final population (4 particles here) resampled into 800 equal-weight draws.
    log_weight = torch.log(torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    index = resample_indices(generator, log_weight, "systematic", 800)
    counts = torch.bincount(index, minlength=4)
    assert counts.tolist() == [400, 200, 100, 100]


def test_a_collapsed_population_is_reported():
    # sbibm's gaussian_linear (10 dimensions): the weights of the final population collapse.
    task = pg.programs.sbibm_task("gaussian_linear")
    observation = {"x": task.observation(1)}
    with pytest.warns(RuntimeWarning, match="importance weights collapsed") as caught:
        posterior = pg.infer(
            task, observation, method="abc_pmc", simulations=100_000, seed=0, progress=False
        )
    settings = posterior.settings
    population = settings["last_generation"]["accepted"]
    assert settings["final_effective_sample_size"] < pmc.MIN_ESS_FRACTION * population
    assert "has 10)" in str(caught[0].message)
    # two_moons' population keeps its weights spread: no warning.
    task = pg.programs.sbibm_task("two_moons")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        posterior = pg.infer(
            task,
            {"x": task.observation(1)},
            method="abc_pmc",
            simulations=30_000,
            seed=0,
            progress=False,
        )
    assert posterior.settings["final_effective_sample_size"] > 0.3 * 1000


def test_failed_simulations_are_never_accepted():
    prior = dist.Uniform(-torch.ones(2), torch.ones(2)).to_event(1)

    def simulate(theta: torch.Tensor) -> torch.Tensor:
        x = theta + 0.1 * torch.randn_like(theta)
        return torch.where(theta[:, :1] > 0, torch.nan, x)  # half the prior fails

    program = pg.programs.simulator(prior, simulate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior = _run(
            program, {"x": torch.tensor([0.05, 0.3])}, simulations=10_000, particles=300
        )
    theta = posterior.samples["theta"][0]
    assert bool((theta[:, 0] <= 0).all())
    assert bool(torch.isfinite(posterior.sample_stats["distance"]).all())
