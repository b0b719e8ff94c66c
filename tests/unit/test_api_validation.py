"""``infer`` validates everything up front, with messages saying what was expected, what came,
and what to do."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import probgraphics as pg
from probgraphics import api
from probgraphics.inference.posterior import Posterior
from probgraphics.inference.whitening import WhiteningError
from probgraphics.programs.toy import linear_gaussian

PROGRAM = linear_gaussian(dim=2, seed=0)
X = {"x": torch.tensor([0.3, -0.2])}
QUICK = {"chains": 2, "draws": 2, "warmup": 2, "pilot_size": 8, "progress": False, "seed": 0}


def image_program():
    brightness = pyro.sample("brightness", dist.Uniform(0.0, 1.0))
    render = brightness.reshape(brightness.shape + (1, 1, 1)).expand(brightness.shape + (1, 4, 4))
    return pyro.sample("image", dist.Normal(render, 0.05).to_event(3))


IMAGE = torch.full((1, 4, 4), 0.5)


@pytest.mark.parametrize(
    "observation,error,pattern",
    [
        (torch.zeros(4, 4), ValueError, r"shaped \(C, H, W\), got \(4, 4\).*image\[None\]"),
        (torch.zeros(2, 1, 4, 4), ValueError, r"shaped \(C, H, W\), got \(2, 1, 4, 4\)"),
        (torch.full((1, 4, 4), 255.0), ValueError, r"in \[0, 1\], got values in \[255, 255\]"),
        (torch.full((1, 4, 4), -0.5), ValueError, r"in \[0, 1\].*rescale"),
        (torch.full((1, 4, 4), 1.3), ValueError, r"in \[0, 1\], got values in \[1.3, 1.3\]"),
        (torch.zeros(1, 4, 4, dtype=torch.uint8), TypeError, r"float in \[0, 1\].*/ 255"),
        (IMAGE.clone().index_fill_(1, torch.tensor([0]), math.nan), ValueError, r"4 NaN/inf"),
        (IMAGE.clone().index_fill_(2, torch.tensor([1]), math.inf), ValueError, r"NaN/inf"),
        ([[0.5]], TypeError, r"must be a tensor.*or a dict.*got list"),
        ({"image": [[0.5]]}, TypeError, r"observation\['image'\] must be a torch.Tensor"),
        ({}, ValueError, r"empty dict"),
    ],
)
def test_bad_observations(observation, error, pattern):
    with pytest.raises(error, match=pattern):
        pg.infer(image_program, observation, **QUICK)


def test_pixel_noise_slightly_outside_the_unit_range_is_accepted():
    noisy = IMAGE.clone()
    noisy[0, 0, 0], noisy[0, 0, 1] = -0.07, 1.05  # what a simulated noisy image looks like
    posterior = pg.infer(image_program, noisy, **QUICK)
    assert posterior.samples["brightness"].shape == (2, 2)


def test_observed_site_the_program_does_not_have_lists_its_sites():
    with pytest.raises(ValueError) as info:
        pg.infer(PROGRAM, {"y": torch.zeros(2)}, **QUICK)
    message = str(info.value)
    assert "no sample site 'y'" in message
    assert "'z' (MultivariateNormal, shape (2,))" in message and "'x'" in message


def test_observation_of_the_wrong_shape_for_its_site():
    with pytest.raises(ValueError, match=r"observation\['x'\] has shape \(3,\).*shape \(2,\)"):
        pg.infer(PROGRAM, {"x": torch.zeros(3)}, **QUICK)


def test_observing_a_deterministic_or_already_conditioned_site():
    with pytest.raises(ValueError, match="deterministic site"):
        pg.infer(image_program_with_render, {"render": IMAGE}, **QUICK)
    conditioned = pyro.condition(PROGRAM, data={"x": torch.zeros(2)})
    with pytest.raises(ValueError, match="already conditioned inside the program"):
        pg.infer(conditioned, X, **QUICK)


def image_program_with_render():
    brightness = pyro.sample("brightness", dist.Uniform(0.0, 1.0))
    render = brightness.reshape(brightness.shape + (1, 1, 1)).expand(brightness.shape + (1, 4, 4))
    pyro.deterministic("render", render, event_dim=3)
    return pyro.sample("image", dist.Normal(render, 0.05).to_event(3))


def test_observing_every_site_leaves_nothing_to_infer():
    def only_observed():
        pyro.sample("y", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="no latents to infer"):
        pg.infer(only_observed, {"y": torch.tensor(0.0)}, **QUICK)


def test_a_discrete_latent_is_refused_naming_it():
    def program():
        count = pyro.sample("count", dist.Poisson(3.0))
        pyro.sample("y", dist.Normal(count, 1.0))

    with pytest.raises(WhiteningError, match=r"site 'count' has distribution Poisson"):
        pg.infer(program, {"y": torch.tensor(1.0)}, **QUICK)
    assert issubclass(WhiteningError, ValueError)


def test_unknown_method_lists_the_methods():
    with pytest.raises(ValueError) as info:
        pg.infer(PROGRAM, X, method="hmc", **QUICK)
    message = str(info.value)
    assert "unknown method 'hmc'" in message
    for name in ("abc_mcmc", "abc_slice", "abc_rejection"):
        assert name in message


def test_unknown_option_names_say_which_options_exist():
    with pytest.raises(TypeError) as info:
        pg.infer(PROGRAM, X, chain=4, **QUICK)
    message = str(info.value)
    assert "unknown option(s) ['chain']" in message and "'chains'" in message
    with pytest.raises(TypeError, match=r"\['chains'\] for method 'abc_rejection'"):
        pg.infer(PROGRAM, X, method="abc_rejection", chains=4)


@pytest.mark.parametrize(
    "options,error,pattern",
    [
        ({"epsilon": 0.0}, ValueError, r"epsilon must be > 0.*got 0.0"),
        ({"epsilon": -1.0}, ValueError, r"epsilon must be > 0"),
        ({"epsilon": math.nan}, ValueError, r"epsilon must be > 0"),
        ({"epsilon": "small"}, TypeError, r"epsilon must be a positive number"),
        ({"epsilon": 1.0, "quantile": 0.1}, ValueError, r"either epsilon.*or quantile"),
        ({"quantile": 0.0}, ValueError, r"quantile must be in \(0, 1\]"),
        ({"chains": 0}, ValueError, r"chains must be >= 1, got 0"),
        ({"draws": 0}, ValueError, r"draws must be >= 1, got 0"),
        ({"chains": 2.5}, TypeError, r"chains must be an int"),
        ({"chains": True}, TypeError, r"chains must be an int"),
        ({"warmup": -1}, ValueError, r"warmup must be >= 0"),
        ({"thin": 0}, ValueError, r"thin must be >= 1"),
        ({"abc_kernel": "box"}, ValueError, r"abc_kernel must be one of \['indicator', 'gaussian'"),
        ({"distance": "cosine"}, ValueError, r"unknown distance 'cosine'.*'l1'"),
        ({"summary": "edges"}, ValueError, r"unknown summary 'edges'.*'identity'"),
        ({"summary": 3}, TypeError, r"summary must be None, a summary name or a callable"),
        ({"init": "guids"}, ValueError, r"init must be one of \['pilot', 'prior', 'guide'\]"),
        ({"init": {"w": torch.zeros(2, 2)}}, ValueError, r"site 'w'.*latents are \['z'\]"),
        ({"init": {"z": torch.zeros(3, 2)}}, ValueError, r"shaped \(chains, \*event\) = \(2, 2\)"),
        ({"init": {"z": torch.full((2, 2), math.nan)}}, ValueError, r"NaN/inf"),
        ({"pilot_size": 1, "init": "prior"}, ValueError, r"pilot_size=1 is too small"),
        ({"pilot_size": 1}, ValueError, r"pilot_size \(1\) must be >= chains \(2\)"),
        ({"target_acceptance": 1.0}, ValueError, r"target_acceptance must be < 1"),
        ({"device": "meta"}, ValueError, r"device must be 'cpu' or a CUDA device"),
        ({"device": "not a device"}, ValueError, r"not a device name"),
        ({"device": 3}, TypeError, r"device must be a str or torch.device"),
        ({"observation_noise": "some"}, ValueError, r"observation_noise must be one of"),
        ({"precondition": "yes"}, TypeError, r"precondition must be True or False"),
        ({"seed": -1}, TypeError, r"seed must be a non-negative int"),
        ({"checkpoint_every": 0}, ValueError, r"checkpoint_every must be >= 1"),
        ({"checkpoint": "/nonexistent/folder/run.ckpt"}, FileNotFoundError, r"does not exist"),
    ],
)
def test_bad_abc_options(options, error, pattern):
    with pytest.raises(error, match=pattern):
        pg.infer(PROGRAM, X, **{**QUICK, **options})


def test_slice_and_mcmc_options_are_method_specific():
    with pytest.raises(TypeError, match="'max_shrinks'"):
        pg.infer(PROGRAM, X, max_shrinks=3, **QUICK)
    with pytest.raises(ValueError, match="max_shrinks must be >= 1"):
        pg.infer(PROGRAM, X, method="abc_slice", max_shrinks=0, **QUICK)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"'cuda' was requested but CUDA is not available.*cpu"):
        pg.infer(PROGRAM, X, device="cuda", **QUICK)


def test_rejection_options():
    with pytest.raises(ValueError, match=r"keep_fraction must be in \(0, 1\]"):
        pg.infer(PROGRAM, X, method="abc_rejection", keep_fraction=0.0, progress=False)
    with pytest.raises(ValueError, match="simulations must be >= 1"):
        pg.infer(PROGRAM, X, method="abc_rejection", simulations=0, progress=False)
    posterior = pg.infer(
        PROGRAM, X, method="abc_rejection", simulations=300, keep_fraction=0.1, progress=False
    )
    assert posterior.samples["z"].shape == (1, 30, 2)
    distance = posterior.sample_stats["distance"]
    assert bool((distance <= posterior.sample_stats["epsilon"]).all())


def test_program_must_be_callable():
    with pytest.raises(TypeError, match="program must be a callable Pyro model"):
        pg.infer("face", IMAGE)


def test_a_summary_of_the_wrong_shape_is_reported():
    with pytest.raises(ValueError, match=r"summary must return features shaped \(B, K\)"):
        pg.infer(PROGRAM, X, summary=lambda x: x.sum(-1), **QUICK)


def test_registered_methods_are_dispatched_with_validated_input():
    calls = []

    def fake_method(program, observation, options, explicit):
        calls.append((observation, options, explicit))
        return "result"

    api.register_method("fake_for_test", fake_method, options={"strength": 1})
    try:
        assert pg.infer(PROGRAM, X, method="fake_for_test", strength=3) == "result"
        observation, options, explicit = calls[0]
        assert set(observation) == {"x"} and options == {"strength": 3}
        assert explicit == {"strength"}
        with pytest.raises(ValueError, match="already registered"):
            api.register_method("fake_for_test", fake_method, options={})
        assert "fake_for_test" in api.available_methods()
    finally:
        api._METHODS.pop("fake_for_test")


def test_infer_returns_a_posterior_with_json_settings():
    posterior = pg.infer(PROGRAM, X, **QUICK)
    assert isinstance(posterior, Posterior)
    assert posterior.method == "abc_mcmc"
    assert posterior.settings["chains"] == 2 and posterior.settings["seed"] == 0
    assert posterior.settings["observation_noise"] == "whitened"  # small, whitenable site


def test_method_options_lists_each_methods_defaults():
    from probgraphics.api import available_methods, method_options

    assert method_options("abc_rejection")["keep_fraction"] == 0.01
    assert method_options("abc_mcmc")["simulations"] is None
    for method in available_methods():
        options = method_options(method)
        options["seed"] = "changed"  # a copy: the registry keeps its defaults
        assert method_options(method).get("seed") != "changed"
    with pytest.raises(ValueError, match=r"unknown method 'abc'; the methods are \["):
        method_options("abc")
