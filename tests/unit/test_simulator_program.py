"""pg.programs.simulator: a prior and a simulator function as a program for infer.

Batched and non-batched, torch and numpy simulators run under the chains plate; bad priors and
bad outputs fail with errors that say what came and what to do; failed (NaN/inf) simulations are
rejected or raised, and never enter a chain's draws."""

from __future__ import annotations

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import probgraphics as pg
from probgraphics.programs.simulator import (
    SimulationFailureWarning,
    SimulatorError,
    SimulatorProgram,
    SimulatorSpeedWarning,
    simulator,
)

UNIFORM_2D = dist.Uniform(-torch.ones(2), torch.ones(2)).to_event(1)


def shift_and_sum(theta: torch.Tensor) -> torch.Tensor:
    """(B, 2) -> (B, 3): theta, their sum, plus N(0, 0.1^2) noise."""
    mean = torch.stack([theta[:, 0], theta[:, 1], theta.sum(-1)], dim=-1)
    return mean + 0.1 * torch.randn(theta.shape[0], 3)


def run_plated(program: SimulatorProgram, chains: int, seed: int = 0) -> pyro.poutine.Trace:
    torch.manual_seed(seed)
    with pyro.plate("chains", chains, dim=-1):
        return pyro.poutine.trace(program).get_trace()


def test_batched_program_calls_the_simulator_once_per_plate():
    program = simulator(UNIFORM_2D, shift_and_sum)
    trace = run_plated(program, chains=7)
    assert tuple(trace.nodes["theta"]["value"].shape) == (7, 2)
    x = trace.nodes["x"]["value"]
    assert tuple(x.shape) == (7, 3) and x.dtype == torch.float32
    theta = trace.nodes["theta"]["value"]
    # x[:, 2] - x[:, 0] - x[:, 1] is noise of sd 0.1 * sqrt(3): within 6 sd of 0.
    assert float((x[:, 2] - x[:, 0] - x[:, 1]).abs().max()) < 6 * 0.1 * 3**0.5
    assert float((x[:, :2] - theta).abs().max()) < 0.6
    assert program.calls == 1 and program.simulations == 7 and program.output_dim == 3


def test_unbatched_run_gives_event_shapes():
    scene = pg.programs.simulate(simulator(UNIFORM_2D, shift_and_sum), seed=3)
    assert tuple(scene["theta"].shape) == (2,) and tuple(scene["x"].shape) == (3,)


def test_infer_recovers_a_well_identified_parameter():
    program = simulator(UNIFORM_2D, shift_and_sum)
    x_obs = torch.tensor([0.5, -0.3, 0.2])
    posterior = pg.infer(
        program, {"x": x_obs}, method="abc_rejection", simulations=4000, seed=0, progress=False
    )
    theta = posterior.samples["theta"].reshape(-1, 2)
    # Noise 0.1 per coordinate: the kept draws (the closest 5%) sit within a few tenths.
    assert float((theta.mean(0) - torch.tensor([0.5, -0.3])).abs().max()) < 0.15


def test_non_batched_simulator_is_looped_with_a_speed_warning():
    def one(theta: torch.Tensor) -> torch.Tensor:
        assert tuple(theta.shape) == (2,)
        return torch.stack([theta[0], theta[1], theta.sum()])

    with pytest.warns(SimulatorSpeedWarning, match="batched=False"):
        program = simulator(UNIFORM_2D, one, batched=False)
    theta = torch.rand(5, 2)
    out = program.run(theta)
    assert torch.equal(out, torch.stack([theta[:, 0], theta[:, 1], theta.sum(-1)], dim=-1))
    assert program.calls == 5


def numpy_simulator(theta, rng):
    assert isinstance(theta, np.ndarray) and theta.dtype == np.float64
    return theta * 2.0 + rng.normal(size=theta.shape)


def test_numpy_simulator_gets_arrays_and_a_seeded_rng():
    program = simulator(UNIFORM_2D, numpy_simulator, numpy=True)
    x_obs = torch.tensor([0.2, 0.4])
    runs = [
        pg.infer(
            program, {"x": x_obs}, method="abc_rejection", simulations=600, seed=5, progress=False
        ).samples["theta"]
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    other = pg.infer(
        program, {"x": x_obs}, method="abc_rejection", simulations=600, seed=6, progress=False
    ).samples["theta"]
    assert not torch.equal(runs[0], other)
    out = program.run(torch.zeros(4, 2))
    assert out.dtype == torch.float32 and tuple(out.shape) == (4, 2)


def test_torch_independent_prior_is_converted():
    # A plain torch Independent(Uniform) (e.g. sbi's BoxUniform) works like Pyro's to_event.
    prior = torch.distributions.Independent(
        torch.distributions.Uniform(-torch.ones(3), torch.ones(3)), 1
    )
    program = simulator(prior, lambda theta: theta.clone())
    trace = run_plated(program, chains=4)
    assert tuple(trace.nodes["theta"]["value"].shape) == (4, 3)


@pytest.mark.parametrize(
    ("prior", "match"),
    [
        ("not a distribution", "must be a torch/Pyro distribution"),
        (dist.Categorical(torch.ones(3)), "discrete"),
        (dist.Bernoulli(0.5 * torch.ones(2)).to_event(1), "discrete"),
        (dist.Uniform(-torch.ones(2), torch.ones(2)), r"\.to_event\(1\)"),
        (dist.Normal(torch.zeros(2, 2), 1.0).to_event(2), r"flat parameter vector"),
        (dist.Normal(0.0, 1.0), r"flat parameter vector"),
        (dist.Dirichlet(torch.ones(3)), "cannot be used for ABC"),
    ],
)
def test_bad_priors_are_rejected(prior, match):
    with pytest.raises(SimulatorError, match=match):
        simulator(prior, lambda theta: theta)


@pytest.mark.parametrize(
    ("simulate", "match"),
    [
        (lambda theta: theta[:, 0], r"return shape \(B, 1\)"),
        (lambda theta: torch.zeros(3), "batched=False"),
        (lambda theta: torch.zeros(theta.shape[0] + 1, 2), r"one row per parameter set"),
        (lambda theta: torch.zeros(theta.shape[0], 2, 2), r"one row per parameter set"),
        (lambda theta: "x", "must return numbers"),
        (lambda theta: [[object()]] * theta.shape[0], "must return numbers"),
        (lambda theta: torch.zeros(theta.shape[0], 2, dtype=torch.complex64), "complex"),
    ],
)
def test_bad_outputs_are_rejected(simulate, match):
    program = simulator(UNIFORM_2D, simulate)
    with pytest.raises(SimulatorError, match=match):
        program.run(torch.zeros(4, 2))


def test_output_width_must_not_change():
    widths = iter([3, 4])
    program = simulator(UNIFORM_2D, lambda theta: torch.zeros(theta.shape[0], next(widths)))
    program.run(torch.zeros(2, 2))
    with pytest.raises(SimulatorError, match="every call must return the same K"):
        program.run(torch.zeros(2, 2))


def test_declared_output_dim_is_checked():
    program = simulator(UNIFORM_2D, lambda theta: theta.clone(), output_dim=5)
    with pytest.raises(SimulatorError, match="as output_dim"):
        program.run(torch.zeros(2, 2))


def test_bad_arguments_are_rejected():
    with pytest.raises(SimulatorError, match="must be a function"):
        simulator(UNIFORM_2D, "simulate")
    with pytest.raises(ValueError, match="nan must be one of"):
        simulator(UNIFORM_2D, shift_and_sum, nan="ignore")
    with pytest.raises(ValueError, match="different site names"):
        simulator(UNIFORM_2D, shift_and_sum, parameters="x", observed="x")


def failing_right_half(theta: torch.Tensor) -> torch.Tensor:
    """theta + N(0, 0.3^2); NaN where theta_0 > 0, inf in one coordinate where theta_1 > 0.9."""
    x = theta + 0.3 * torch.randn_like(theta)
    x = torch.where(theta[:, :1] > 0, torch.nan, x)
    x[:, 1] = torch.where(theta[:, 1] > 0.9, torch.inf, x[:, 1])
    return x


def test_failed_simulations_raise_with_nan_raise():
    program = simulator(UNIFORM_2D, failing_right_half, nan="raise")
    theta = torch.tensor([[-0.5, 0.0], [0.5, 0.0]])
    with pytest.raises(SimulatorError, match=r"1 of 2 parameter sets \(the first: theta = \[0.5"):
        program.run(theta)
    assert program.failed == 1


def test_failed_simulations_become_nan_rows_with_a_warning():
    program = simulator(UNIFORM_2D, failing_right_half)
    theta = torch.tensor([[-0.5, 0.0], [0.5, 0.0], [-0.5, 0.95]])
    with pytest.warns(SimulationFailureWarning, match="2 of 3 parameter sets"):
        out = program.run(theta)
    assert bool(torch.isfinite(out[0]).all())
    assert bool(torch.isnan(out[1:]).all())  # the inf row is marked failed as a whole
    assert program.failed == 2


def _failing_program() -> SimulatorProgram:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulationFailureWarning)
        return simulator(UNIFORM_2D, failing_right_half)


ENGINES = [
    ("abc_mcmc", {"simulations": 12_000}),
    ("abc_slice", {"chains": 16, "warmup": 60, "draws": 60, "pilot_size": 500}),
    ("abc_smc", {"simulations": 12_000}),
    ("abc_rejection", {"simulations": 4000, "keep_fraction": 0.3}),
]


@pytest.mark.parametrize(("method", "options"), ENGINES)
def test_failed_simulations_never_enter_a_chain(method, options):
    # Half the prior (theta_0 > 0) fails; the observation sits on the boundary, so the
    # failing half is where a careless engine would put mass.
    program = _failing_program()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulationFailureWarning)
        posterior = pg.infer(
            program,
            {"x": torch.tensor([0.0, 0.0])},
            method=method,
            seed=0,
            progress=False,
            **options,
        )
    theta = posterior.samples["theta"]
    assert program.failed > 0  # the failing region was simulated ...
    assert int((theta[..., 0] > 0).sum()) == 0  # ... and never kept
    assert not bool(torch.isnan(posterior.sample_stats["distance"]).any())


def test_rejection_keeps_only_successes_when_asked_for_more():
    # Half the prior fails: keeping 70% would need failures; it keeps the successes and says so.
    program = _failing_program()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SimulationFailureWarning)
        with pytest.warns(UserWarning, match=r"abc_rejection keeps \d+ simulations, not 2800"):
            posterior = pg.infer(
                program, {"x": torch.zeros(2)}, method="abc_rejection", simulations=4000,
                keep_fraction=0.7, seed=0, progress=False,
            )  # fmt: skip
    kept = posterior.samples["theta"].shape[1]
    assert 1000 < kept < 2800
    assert int((posterior.samples["theta"][..., 0] > 0).sum()) == 0
    assert bool(torch.isfinite(posterior.sample_stats["distance"]).all())


def test_torch_normal_and_multivariate_normal_priors_are_converted():
    mvn = torch.distributions.MultivariateNormal(torch.ones(2), 0.5 * torch.eye(2))
    program = simulator(mvn, lambda theta: theta.clone())
    assert torch.allclose(program.prior.covariance_matrix, 0.5 * torch.eye(2))
    log_normal = torch.distributions.Independent(
        torch.distributions.LogNormal(torch.zeros(2), torch.ones(2)), 1
    )
    program = simulator(log_normal, lambda theta: theta.clone())
    trace = run_plated(program, chains=5)
    assert bool((trace.nodes["theta"]["value"] > 0).all())
