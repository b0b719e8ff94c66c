"""A user's own Pyro programs run under ``infer`` exactly as the bundled ones do."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

import probgraphics as pg
from probgraphics.inference.whitening import WhiteningError

_GENERATOR = torch.Generator().manual_seed(0)
MIXING = torch.randn(8, 3, generator=_GENERATOR)
PAIR_MIXING = torch.randn(8, 2, generator=_GENERATOR)


def scene():
    """Four kinds of latent, one depending on another, and a nonlinear observation."""
    location = pyro.sample("location", dist.Normal(0.0, 1.0))
    width = pyro.sample("width", dist.Uniform(0.5, 2.0))
    brightness = pyro.sample("brightness", dist.LogNormal(location, 0.3))  # depends on location
    pair = pyro.sample(
        "pair",
        dist.MultivariateNormal(torch.zeros(2), torch.tensor([[1.0, 0.4], [0.4, 0.5]])),
    )
    features = torch.stack([location, width, brightness.log()], dim=-1)
    pair_features = torch.stack([pair[..., 0], pair[..., 1] * width], dim=-1)
    signal = torch.tanh(features) @ MIXING.T + pair_features @ PAIR_MIXING.T
    return pyro.sample("y", dist.Normal(signal, 0.1).to_event(1))


TRUTH = {
    "location": torch.tensor(0.4),
    "width": torch.tensor(1.2),
    "brightness": torch.tensor(1.6),
    "pair": torch.tensor([0.3, -0.2]),
}


def observed_y() -> torch.Tensor:
    return pg.programs.simulate(scene, seed=3, conditions=TRUTH)["y"]


@pytest.mark.parametrize("method", ["abc_mcmc", "abc_slice", "abc_rejection"])
def test_a_program_written_here_runs_under_infer(method):
    if method == "abc_rejection":
        options = {"simulations": 2000, "keep_fraction": 0.02}
    else:
        options = {"chains": 16, "draws": 40, "warmup": 40, "pilot_size": 200}
    posterior = pg.infer(
        scene, {"y": observed_y()}, method=method, seed=0, progress=False, **options
    )
    chains, draws = (1, 40) if method == "abc_rejection" else (16, 40)
    assert posterior.samples["location"].shape == (chains, draws)
    assert posterior.samples["pair"].shape == (chains, draws, 2)
    for name, value in posterior.samples.items():
        assert bool(torch.isfinite(value).all()), name
    width = posterior.samples["width"]
    assert bool(((width >= 0.5) & (width <= 2.0)).all())
    assert bool((posterior.samples["brightness"] > 0).all())
    assert posterior.settings["epsilon_target"] > 0
    idata = posterior.to_arviz()
    assert "posterior" in idata.groups() and "sample_stats" in idata.groups()


def test_inference_concentrates_near_the_truth():
    posterior = pg.infer(
        scene,
        {"y": observed_y()},
        chains=16,
        draws=100,
        warmup=200,
        pilot_size=400,
        seed=1,
        progress=False,
    )
    prior = posterior.prior

    def mean_error(draws, name):
        return float((draws[name] - TRUTH[name]).abs().mean())

    # location is pinned down by the data; width only loosely (its posterior sd is about half
    # the prior's), so each gets the bound its posterior allows.
    assert mean_error(posterior.samples, "location") < 0.3 * mean_error(prior, "location")
    assert mean_error(posterior.samples, "width") < mean_error(prior, "width")


def image_scene():
    """A tiny image program: a blob whose position is latent."""
    position = pyro.sample("position", dist.Uniform(-1.0, 1.0))
    grid = torch.linspace(-1.0, 1.0, 6)
    blob = torch.exp(-((grid - position.unsqueeze(-1)) ** 2) / 0.1)  # (..., 6)
    render = (blob.unsqueeze(-2) * torch.ones(5, 1)).unsqueeze(-3)  # (..., 1, 5, 6)
    render = pyro.deterministic("render", render, event_dim=3)
    return pyro.sample("image", dist.Normal(render, 0.05).to_event(3))


def test_an_image_program_takes_a_bare_tensor_and_the_pixel_summary():
    image = pg.programs.simulate(image_scene, seed=0, conditions={"position": torch.tensor(0.3)})
    observation = image["image"].clamp(0.0, 1.0)
    posterior = pg.infer(
        image_scene, observation, chains=8, draws=30, warmup=60, seed=0, progress=False
    )
    assert posterior.settings["summary"] is None  # default: pixels for an "image" site
    assert posterior.samples["position"].shape == (8, 30)
    assert abs(float(posterior.samples["position"].mean()) - 0.3) < 0.3


def test_a_bernoulli_latent_is_a_clear_error():
    def coin_program():
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        coin = pyro.sample("coin", dist.Bernoulli(0.5))
        pyro.sample("y", dist.Normal(loc + coin, 1.0))

    with pytest.raises(WhiteningError) as error:
        pg.infer(coin_program, {"y": torch.tensor(0.5)}, progress=False)
    message = str(error.value)
    assert "'coin'" in message and "Bernoulli" in message
    assert "continuous" in message  # says what to do
