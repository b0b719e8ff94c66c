"""EncoderGuide: sites, supports, shapes, batching, Pyro integration and bad input."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch import nn

from probgraphics.nets import DCIGN, CodeLayout, DCIGNConfig, TwinEncoder
from probgraphics.nets.guides import EncoderGuide, discover_sites
from probgraphics.programs.dcign import dcign
from tests.tiny_nets import TINY_TWIN_CONFIG

# --------------------------------------------------------------------------------------------
# Small programs and encoders
# --------------------------------------------------------------------------------------------

PIXELS = 8


class ToyScene:
    """A batch-polymorphic scene with bounded, positive and real latents and an 8x8 image."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.weights = torch.randn(9, PIXELS * PIXELS, generator=generator)

    def __call__(self):
        angle = pyro.sample("angle", dist.Uniform(-90.0, 90.0))
        camera = pyro.sample("camera", dist.Uniform(0.0, 1.0).expand([3]).to_event(1))
        code = pyro.sample("code", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
        size = pyro.sample("size", dist.LogNormal(0.0, 0.5))
        features = torch.cat([angle[..., None] / 90.0, camera, code, size[..., None]], dim=-1)
        render = torch.sigmoid(features @ self.weights).reshape(*features.shape[:-1], 1, 8, 8)
        render = pyro.deterministic("render", render, event_dim=3)
        return pyro.sample("image", dist.Normal(render, 0.05).to_event(3))


class LinearEncoder(nn.Module):
    """Images (B, 1, 8, 8) -> (mean, log_var), each (B, code_size)."""

    def __init__(self, code_size: int = 9) -> None:
        super().__init__()
        self.linear = nn.Linear(PIXELS * PIXELS, 2 * code_size)

    def forward(self, images):
        return self.linear(images.flatten(1)).chunk(2, dim=-1)


def tiny_dcign() -> DCIGN:
    torch.manual_seed(0)
    return DCIGN(
        DCIGNConfig(
            image_size=32, channels=(8, 8), decoder_channels=(8, 8), padding=2, code_size=16
        )
    )


SUPPORT_BOUNDS = {"angle": (-90.0, 90.0), "camera": (0.0, 1.0), "size": (0.0, math.inf)}


# --------------------------------------------------------------------------------------------
# Sites and layout
# --------------------------------------------------------------------------------------------


def test_discover_sites_lists_latents_in_program_order_without_observed_or_deterministic():
    sites, observed, nesting = discover_sites(ToyScene())
    assert [s.name for s in sites] == ["angle", "camera", "code", "size"]
    assert [s.event_shape for s in sites] == [(), (3,), (4,), ()]
    assert [s.real for s in sites] == [False, False, True, False]
    assert tuple(observed.shape) == (1, 8, 8)
    assert nesting == 0


def test_default_layout_follows_program_order_when_sizes_add_up():
    guide = EncoderGuide(LinearEncoder(9), ToyScene())
    assert guide.sites == ("angle", "camera", "code", "size")
    assert guide.site_layout == {
        "angle": (0,),
        "camera": (1, 2, 3),
        "code": (4, 5, 6, 7),
        "size": (8,),
    }
    assert guide.code_size == 9


def test_default_layout_uses_the_dcign_code_layout_for_the_dcign_program():
    net = tiny_dcign()
    guide = EncoderGuide(net, dcign(net))
    layout = net.layout
    assert guide.site_layout == {name: layout[name] for name in layout.names}
    assert guide.site_shapes == {
        "azimuth": (1,),
        "elevation": (1,),
        "light": (1,),
        "intrinsic": (13,),
    }
    # The guide holds the encoder only (the decoder is the model's).
    assert guide.encoder is net.encoder
    assert not any(name.startswith("decoder") for name, _ in guide.named_parameters())


def test_explicit_site_layout_may_cover_a_subset_and_reorder_units():
    guide = EncoderGuide(LinearEncoder(9), ToyScene(), site_layout={"code": [8, 7, 6, 5]})
    assert guide.sites == ("code",)
    images = torch.rand(3, 1, 8, 8)
    mean, _ = guide.encoder(images)
    point = guide.point_estimate(images)
    torch.testing.assert_close(point["code"], mean[:, [8, 7, 6, 5]].detach())


def test_a_code_layout_object_is_accepted_as_site_layout():
    layout = CodeLayout(9, {"angle": (8,), "other": (0,)})
    guide = EncoderGuide(LinearEncoder(9), ToyScene(), site_layout=layout)
    assert guide.site_layout == {"angle": (8,)}


@pytest.mark.parametrize(
    ("site_layout", "match"),
    [
        ({"code": [0, 1, 2]}, "needs 4 code units"),
        ({"nope": [0]}, "not latent sites"),
        ({"angle": [9]}, "outside the encoder's code"),
        ({"angle": [0], "size": [0]}, "assigned to both"),
        ({}, "empty"),
    ],
)
def test_bad_site_layouts_are_explained(site_layout, match):
    with pytest.raises(ValueError, match=match):
        EncoderGuide(LinearEncoder(9), ToyScene(), site_layout=site_layout)


def test_code_size_that_does_not_fit_the_sites_asks_for_a_site_layout():
    with pytest.raises(ValueError, match="site_layout"):
        EncoderGuide(LinearEncoder(5), ToyScene())


def test_discrete_latent_site_is_rejected_with_its_name():
    def program():
        pyro.sample("count", dist.Poisson(3.0))
        pyro.sample("image", dist.Normal(torch.zeros(1, 8, 8), 1.0).to_event(3))

    with pytest.raises(ValueError, match="'count' is discrete"):
        EncoderGuide(LinearEncoder(1), program)


def test_missing_observed_site_and_unbatched_latent_are_rejected():
    with pytest.raises(ValueError, match="no sample site named 'photo'"):
        EncoderGuide(LinearEncoder(9), ToyScene(), observed="photo")

    def no_event():
        pyro.sample("z", dist.Normal(torch.zeros(4), 1.0))  # batch shape (4,), no .to_event
        pyro.sample("image", dist.Normal(torch.zeros(1, 8, 8), 1.0).to_event(3))

    with pytest.raises(ValueError, match="outside any plate"):
        EncoderGuide(LinearEncoder(4), no_event)


def test_deterministic_encoder_cannot_be_a_guide():
    encoder = TwinEncoder(TINY_TWIN_CONFIG)
    with pytest.raises(TypeError, match="deterministic"):
        EncoderGuide(encoder, ToyScene())


def test_encoder_that_rejects_the_programs_images_fails_at_construction():
    net = tiny_dcign()  # takes 32x32 images; the toy program makes 8x8
    with pytest.raises(ValueError, match="cannot encode"):
        EncoderGuide(net, ToyScene(), site_layout={"code": [0, 1, 2, 3]})


# --------------------------------------------------------------------------------------------
# Sampling: supports, shapes, batching
# --------------------------------------------------------------------------------------------


def _check_supports(values, leading):
    for name, (low, high) in SUPPORT_BOUNDS.items():
        value = values[name]
        assert bool(torch.isfinite(value).all())
        assert bool((value > low).all()) and bool((value < high).all()), name
    assert values["angle"].shape == leading
    assert values["camera"].shape == (*leading, 3)
    assert values["code"].shape == (*leading, 4)


def test_batched_call_samples_every_site_in_its_support_under_the_batch_plate():
    torch.manual_seed(1)
    guide = EncoderGuide(LinearEncoder(9), ToyScene())
    with torch.no_grad():  # large means push values to the interval ends
        guide.encoder.linear.bias[:9].fill_(6.0)
    images = torch.rand(5, 1, 8, 8)
    trace = poutine.trace(guide).get_trace(images)
    values = {name: trace.nodes[name]["value"] for name in guide.sites}
    _check_supports(values, (5,))
    for name in guide.sites:
        frames = trace.nodes[name]["cond_indep_stack"]
        assert [f.name for f in frames] == ["batch"] and frames[0].size == 5
    log_prob = trace.log_prob_sum()
    assert bool(torch.isfinite(log_prob))
    log_prob.backward()
    assert guide.encoder.linear.weight.grad is not None


def test_unbatched_observation_gives_unbatched_values():
    guide = EncoderGuide(LinearEncoder(9), ToyScene())
    values = guide(torch.rand(1, 8, 8))
    _check_supports(values, ())


def test_log_prob_of_the_guides_distributions_is_finite_at_interval_ends():
    guide = EncoderGuide(LinearEncoder(9), ToyScene())
    distributions = guide.distributions(torch.rand(4, 1, 8, 8))
    assert distributions["camera"].event_shape == (3,)
    assert distributions["camera"].batch_shape == (4,)
    # Simulated Uniform draws can hit the lower end exactly; the log density must stay finite.
    ends = {
        "angle": torch.full((4,), -90.0),
        "camera": torch.zeros(4, 3),
        "size": torch.full((4,), 1e-30),
        "code": torch.zeros(4, 4),
    }
    for name, value in ends.items():
        assert bool(torch.isfinite(distributions[name].log_prob(value)).all()), name


def test_posterior_and_point_estimate_shapes_and_supports():
    guide = EncoderGuide(LinearEncoder(9), ToyScene())
    images = torch.rand(3, 1, 8, 8)
    draws = guide.posterior(images, num_samples=7, generator=torch.Generator().manual_seed(0))
    _check_supports(draws, (7, 3))
    assert all(not value.requires_grad for value in draws.values())
    again = guide.posterior(images, num_samples=7, generator=torch.Generator().manual_seed(0))
    for name in draws:
        torch.testing.assert_close(draws[name], again[name], rtol=0, atol=0)
    point = guide.point_estimate(images)
    _check_supports(point, (3,))
    # For interval sites the point estimate is the transformed mean (the median).
    mean, _ = guide.encoder(images)
    expected = -90.0 + 180.0 * torch.sigmoid(mean[:, 0])
    torch.testing.assert_close(point["angle"], expected.detach())


def test_posterior_draws_match_the_encoders_gaussian():
    """Monte Carlo check of the sampler: draws of a real site have the encoder's mean and
    standard deviation (tolerance: 5 standard errors of 4000 draws)."""
    guide = EncoderGuide(LinearEncoder(9), ToyScene())
    image = torch.rand(1, 1, 8, 8)
    n = 4000
    draws = guide.posterior(image, n, generator=torch.Generator().manual_seed(3))["code"][:, 0]
    mean, log_var = guide.encoder(image)
    mu = mean[0, 4:8].detach()
    sigma = (0.5 * log_var[0, 4:8]).exp().detach()
    assert torch.all((draws.mean(0) - mu).abs() < 5 * sigma / math.sqrt(n))
    # The standard error of a sample std is about sigma / sqrt(2 n).
    assert torch.all((draws.std(0) - sigma).abs() < 5 * sigma / math.sqrt(2 * n))


def test_posterior_runs_encoder_in_eval_mode_and_restores_its_mode():
    class ModeEncoder(LinearEncoder):
        def forward(self, images):
            mean, log_var = super().forward(images)
            return mean + (100.0 if self.training else 0.0), log_var

    guide = EncoderGuide(ModeEncoder(9), ToyScene())
    guide.train()
    point = guide.point_estimate(torch.rand(2, 1, 8, 8))
    assert bool((point["code"].abs() < 50).all())
    assert guide.encoder.training


def test_initial_values_give_one_value_per_chain():
    guide = EncoderGuide(LinearEncoder(9), ToyScene())
    init = guide.initial_values(torch.rand(1, 8, 8), chains=6)
    assert {k: tuple(v.shape) for k, v in init.items()} == {
        "angle": (6,),
        "camera": (6, 3),
        "code": (6, 4),
        "size": (6,),
    }
    with pytest.raises(ValueError, match="one image"):
        guide.initial_values(torch.rand(2, 1, 8, 8), chains=6)


def test_observing_context_lets_pyro_utilities_call_the_guide_without_arguments():
    guide = EncoderGuide(LinearEncoder(9), ToyScene())
    with pytest.raises(ValueError, match="needs the observation"):
        guide()
    image = torch.rand(1, 8, 8)
    with guide.observing(image):
        predictive = pyro.infer.Predictive(
            ToyScene(), guide=guide, num_samples=4, return_sites=["angle", "render"]
        )
        samples = predictive()
    assert samples["angle"].shape == (4,)
    assert samples["render"].shape == (4, 1, 8, 8)
    assert guide._observation is None


@pytest.mark.parametrize(
    ("observation", "error", "match"),
    [
        (torch.rand(2, 8, 8), ValueError, r"shaped \(1, 8, 8\)"),
        (torch.full((1, 8, 8), float("nan")), ValueError, "NaN"),
        (torch.ones(1, 8, 8, dtype=torch.long), TypeError, "floating"),
        ([[0.0]], TypeError, "tensor"),
    ],
)
def test_bad_observations_are_explained(observation, error, match):
    guide = EncoderGuide(LinearEncoder(9), ToyScene())
    with pytest.raises(error, match=match):
        guide(observation)


def test_elbo_with_the_guide_matches_the_model_without_warnings():
    program = ToyScene()
    guide = EncoderGuide(LinearEncoder(9), program)
    images = torch.rand(4, 1, 8, 8)

    def model(observation):
        with pyro.plate("batch", observation.shape[0], dim=-1):
            poutine.condition(program, data={"image": observation})()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, images)
    assert bool(torch.isfinite(loss))


def test_the_face_program_sites_get_their_supports():
    from probgraphics.programs import face

    program = face(resolution=16)
    encoder = LinearEncoderFor(16 * 16, 406)
    guide = EncoderGuide(encoder, program)
    assert guide.site_shapes == {
        "shape": (200,),
        "texture": (200,),
        "azimuth": (),
        "elevation": (),
        "light": (),
        "camera": (3,),
    }
    draws = guide.posterior(torch.rand(2, 1, 16, 16), 50)
    for name in ("azimuth", "elevation", "light"):
        assert bool((draws[name].abs() < 90).all())
    assert bool(((draws["camera"] > 0) & (draws["camera"] < 1)).all())


class LinearEncoderFor(nn.Module):
    def __init__(self, pixels: int, code_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(pixels, 2 * code_size)

    def forward(self, images):
        return self.linear(images.flatten(1)).chunk(2, dim=-1)


@pytest.mark.gpu
def test_guide_on_cuda_samples_inside_cpu_declared_bounds():
    guide = EncoderGuide(LinearEncoder(9), ToyScene()).to("cuda")
    draws = guide.posterior(torch.rand(3, 1, 8, 8, device="cuda"), 5)
    assert all(value.device.type == "cuda" for value in draws.values())
    _check_supports({k: v.cpu() for k, v in draws.items()}, (5, 3))
