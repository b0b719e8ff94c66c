"""observation_noise="marginal": the noise scale read off the program, noise-free simulations,
the bandwidth the kernels see, tempering's floor, the choice "auto" makes, and bad input."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import probgraphics as pg
from probgraphics.api import prepare_abc
from probgraphics.inference import marginal_noise, runner
from probgraphics.inference.whitening import trace_program
from tests.blocked_toy import MATRIX, NOISE, OBSERVATION, program

DATA = {"x": OBSERVATION}
SMALL = {"chains": 4, "draws": 3, "warmup": 4, "pilot_size": 20, "progress": False, "seed": 1}


def test_noise_scale_reads_one_sigma_and_refuses_anything_else():
    assert marginal_noise.noise_scale(trace_program(program), ["x"]) == pytest.approx(NOISE)

    def laplace():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Laplace(z, 1.0).expand([3]).to_event(1))

    def varying():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, torch.tensor([0.1, 0.2])).to_event(1))

    def two_sigmas():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 0.1))
        pyro.sample("y", dist.Normal(z, 0.3))

    with pytest.raises(marginal_noise.MarginalNoiseError, match="Laplace"):
        marginal_noise.noise_scale(trace_program(laplace), ["x"])
    with pytest.raises(marginal_noise.MarginalNoiseError, match="varies between elements"):
        marginal_noise.noise_scale(trace_program(varying), ["x"])
    with pytest.raises(marginal_noise.MarginalNoiseError, match="different noise scales"):
        marginal_noise.noise_scale(trace_program(two_sigmas), ["x", "y"])


def test_bandwidth_and_tolerance_invert_each_other():
    assert marginal_noise.bandwidth(0.3, 0.4) == pytest.approx(0.5)
    assert marginal_noise.tolerance(0.5, 0.4) == pytest.approx(0.3)
    assert marginal_noise.tolerance(0.2, 0.4) == 0.0  # below the noise: the exact posterior
    assert marginal_noise.bandwidth(math.inf, 0.4) == math.inf
    assert marginal_noise.tolerance(0.7, 0.0) == 0.7  # no noise integrated: unchanged


def test_marginal_simulations_are_the_noise_free_mean():
    run = prepare_abc(program, DATA, observation_noise="marginal", **SMALL)
    assert run.config.observation_noise == "marginal"
    assert run.config.distance == "l2"
    u = torch.randn(5, run.layout.dim, generator=torch.Generator().manual_seed(0))
    simulation = run.simulator(u)
    # No noise coordinates in u: only a (2) and b (1).
    assert run.layout.dim == 3
    mean = simulation.values.double() @ MATRIX.T
    torch.testing.assert_close(simulation.summaries.double(), mean, rtol=1e-6, atol=1e-6)
    distance = (mean - OBSERVATION.double()).norm(dim=-1)
    torch.testing.assert_close(simulation.distance.double(), distance, rtol=1e-5, atol=1e-6)


def test_kernel_steps_see_the_widened_bandwidth(monkeypatch):
    run = prepare_abc(program, DATA, observation_noise="marginal", epsilon=0.3, **SMALL)
    seen = []
    original = runner.elliptical.step

    def spy(generator, state, simulate, epsilon, *args, **kwargs):
        seen.append(epsilon)
        return original(generator, state, simulate, epsilon, *args, **kwargs)

    monkeypatch.setattr(runner.elliptical, "step", spy)
    runner._kernel_step(run, 0.3)
    runner._kernel_step(run, 0.0)
    assert seen == [pytest.approx(math.hypot(0.3, NOISE)), pytest.approx(NOISE)]


def test_tempering_stops_at_the_exact_posterior():
    # Every chain at distance ~0: the ESS rule alone would lower the bandwidth without end;
    # with the noise integrated out it stops at sigma (tolerance 0).
    run = prepare_abc(program, DATA, observation_noise="marginal", **SMALL)
    run.epsilon_current = 1e-3
    run.state = run.state._replace(distance=torch.full_like(run.state.distance, 1e-6))
    runner._temper(run)
    assert run.epsilon_current == 0.0
    runner._temper(run)
    assert run.epsilon_current == 0.0


def test_the_face_program_integrates_its_pixel_noise_when_asked():
    face = pg.programs.face(resolution=32)
    image = pg.programs.simulate(face, seed=0)["image"]
    run = prepare_abc(face, image, observation_noise="marginal", **SMALL)
    assert run.config.observation_noise == "marginal"
    assert run.config.noise_scale == pytest.approx(face.noise)
    assert run.config.distance == "l2"
    # Latent coordinates only: no block of 1,024 pixel-noise values.
    assert run.layout.dim == run.layout.latent_dim
    # "auto" keeps the whitened noise block (the measured default, see api._build_layout).
    assert prepare_abc(face, image, **SMALL).config.observation_noise == "whitened"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"abc_kernel": "indicator"}, "needs abc_kernel='gaussian'"),
        ({"distance": "standardized_l2"}, "needs the plain L2 distance"),
        ({"summary": lambda x: x[:, :2]}, "needs the observation itself as the summary"),
        ({"method": "abc_rejection"}, "unexpected|observation_noise"),
        ({"method": "abc_smc"}, "observation_noise must be one of"),
    ],
)
def test_marginal_bad_input(options, message):
    options = {**SMALL, "observation_noise": "marginal", **options}
    method = options.pop("method", "abc_mcmc")
    if method != "abc_mcmc":
        options = {"observation_noise": "marginal", "progress": False}
    with pytest.raises((ValueError, TypeError), match=message):
        pg.infer(program, DATA, method=method, **options)


def test_epsilon_zero_needs_the_noise_integrated_out():
    with pytest.raises(ValueError, match="needs observation_noise='marginal'"):
        pg.infer(program, DATA, epsilon=0.0, observation_noise="whitened", **SMALL)
    posterior = pg.infer(program, DATA, epsilon=0.0, observation_noise="marginal", **SMALL)
    assert float(posterior.sample_stats["epsilon"].max()) == 0.0


def test_non_gaussian_noise_cannot_be_integrated_out():
    def laplace():
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        pyro.sample("x", dist.Laplace(z.sum(-1, keepdim=True), 1.0).to_event(1))

    with pytest.raises(ValueError, match="integrates Gaussian noise out"):
        pg.infer(laplace, {"x": torch.zeros(1)}, observation_noise="marginal", **SMALL)
