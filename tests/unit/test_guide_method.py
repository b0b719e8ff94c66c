"""``infer(method="guide")`` (a trained guide's amortized posterior) and ``init="guide"`` (ABC
chains started from the guide's draws), with tiny encoders on a 32 px face program."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn
from torch.distributions import biject_to

import probgraphics as pg
from probgraphics import api
from probgraphics.inference.posterior import Posterior
from probgraphics.nets import DCIGN, DCIGNConfig, save_checkpoint
from probgraphics.nets.guides import EncoderGuide, discover_sites, load_guide

RESOLUTION = 32
PROGRAM = pg.programs.face(resolution=RESOLUTION)
SCENE = pg.programs.simulate(PROGRAM, seed=11)
IMAGE = SCENE["image"]
FACE_SHAPES = {
    "shape": (200,),
    "texture": (200,),
    "azimuth": (),
    "elevation": (),
    "light": (),
    "camera": (3,),
}
ANGLES = ("azimuth", "elevation", "light")
CODE_SIZE = sum(math.prod(shape) for shape in FACE_SHAPES.values())  # 406
QUICK_ABC = {"chains": 4, "draws": 2, "warmup": 2, "pilot_size": 32, "progress": False}


class LinearEncoder(nn.Module):
    """Images (B, 1, H, W) -> (mean, log_var), each (B, code_size)."""

    def __init__(self, pixels: int = RESOLUTION * RESOLUTION, code_size: int = CODE_SIZE) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.linear = nn.Linear(pixels, 2 * code_size)
        with torch.no_grad():
            self.linear.weight.copy_(
                0.01 * torch.randn(self.linear.weight.shape, generator=generator)
            )
            self.linear.bias.copy_(torch.randn(self.linear.bias.shape, generator=generator))

    def forward(self, images):
        return self.linear(images.flatten(1)).chunk(2, dim=-1)


class FixedEncoder(nn.Module):
    """Ignores the image: the code is ``mean`` with log-variance ``log_var`` (a guide that is
    sure of one scene)."""

    def __init__(self, mean: torch.Tensor, log_var: float = -18.0) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.log_var = log_var

    def forward(self, images):
        mean = self.mean.expand(images.shape[0], -1)
        return mean, torch.full_like(mean, self.log_var)


def sure_guide(values: dict[str, torch.Tensor], log_var: float = -18.0) -> EncoderGuide:
    """A guide whose q(z | x) is (almost) a point mass at the constrained ``values``."""
    sites, _, _ = discover_sites(PROGRAM)
    parts = [biject_to(site.support).inv(values[site.name]).reshape(-1) for site in sites]
    return EncoderGuide(FixedEncoder(torch.cat(parts), log_var), PROGRAM)


def linear_guide() -> EncoderGuide:
    return EncoderGuide(LinearEncoder(), PROGRAM)


def check_face_supports(samples: dict[str, torch.Tensor]) -> None:
    for name in ANGLES:
        assert bool((samples[name].abs() <= 90.0).all()), name
    assert bool(((samples["camera"] >= 0.0) & (samples["camera"] <= 1.0)).all())


# --------------------------------------------------------------------------------------------
# method="guide"
# --------------------------------------------------------------------------------------------


def test_guide_method_returns_a_posterior_of_every_site_in_its_support():
    posterior = pg.infer(
        PROGRAM, IMAGE, method="guide", guide=linear_guide(), chains=3, draws=40, seed=0
    )
    assert isinstance(posterior, Posterior) and posterior.method == "guide"
    assert (posterior.num_chains, posterior.num_draws) == (3, 40)
    assert {name: tuple(value.shape[2:]) for name, value in posterior.samples.items()} == (
        FACE_SHAPES
    )
    check_face_supports(posterior.samples)
    stats = posterior.sample_stats
    assert bool(stats["distance"].isnan().all())  # nothing simulated without a summary
    assert bool(stats["epsilon"].isnan().all())
    assert stats["accepted"].dtype == torch.bool and bool(stats["accepted"].all())
    assert posterior.n_simulations == 0 and posterior.prior is None
    assert posterior.settings["guide"] == "EncoderGuide" and posterior.settings["seed"] == 0


def test_guide_posterior_converts_to_arviz_with_chain_and_draw_dims():
    posterior = pg.infer(
        PROGRAM, IMAGE, method="guide", guide=linear_guide(), chains=2, draws=5, seed=1
    )
    idata = posterior.to_arviz()
    azimuth = idata.posterior["azimuth"]
    assert azimuth.dims == ("chain", "draw") and azimuth.shape == (2, 5)
    assert idata.posterior["camera"].shape == (2, 5, 3)
    assert float(idata.sample_stats["acceptance_rate"].mean()) == 1.0
    assert "image" in idata.observed_data


def test_chains_are_a_reshaping_of_independent_draws_of_the_guide():
    guide = linear_guide()
    posterior = pg.infer(PROGRAM, IMAGE, method="guide", guide=guide, chains=4, draws=25, seed=7)
    generator = torch.Generator().manual_seed(api._guide_seed(7))
    expected = guide.posterior(IMAGE[None], 100, generator=generator)
    for name, value in posterior.samples.items():
        assert torch.equal(value.reshape(100, *value.shape[2:]), expected[name][:, 0]), name
    again = pg.infer(PROGRAM, IMAGE, method="guide", guide=guide, chains=4, draws=25, seed=7)
    other = pg.infer(PROGRAM, IMAGE, method="guide", guide=guide, chains=4, draws=25, seed=8)
    assert torch.equal(again["shape"], posterior["shape"])
    assert not torch.equal(other["shape"], posterior["shape"])


def test_guide_draws_have_the_encoders_gaussian_moments():
    guide = linear_guide()
    n = 4000
    posterior = pg.infer(
        PROGRAM, IMAGE, method="guide", guide=guide, chains=4, draws=n // 4, seed=3
    )
    mean, log_var = guide.encoder(IMAGE[None])
    units = guide.site_layout["shape"][:20]
    loc, scale = mean[0, list(units)].detach(), (0.5 * log_var[0, list(units)]).exp().detach()
    draws = posterior["shape"].reshape(n, 200)[:, :20]
    # 5 Monte Carlo standard errors: the mean's is scale/sqrt(n); the sd's about scale/sqrt(2n).
    assert bool(((draws.mean(0) - loc).abs() < 5 * scale / math.sqrt(n)).all())
    assert bool(((draws.std(0) - scale).abs() < 5 * scale / math.sqrt(2 * n)).all())


def test_with_a_summary_every_draw_is_simulated_and_its_distance_recorded():
    truth = {name: SCENE[name] for name in FACE_SHAPES}
    right = sure_guide(truth)
    wrong_values = dict(truth, azimuth=torch.tensor(60.0 if float(truth["azimuth"]) < 0 else -60.0))
    wrong = sure_guide(wrong_values)
    options = {"chains": 2, "draws": 8, "seed": 0, "summary": "pixel", "pilot_size": 64}
    options["progress"] = False
    near = pg.infer(PROGRAM, IMAGE, method="guide", guide=right, **options)
    far = pg.infer(PROGRAM, IMAGE, method="guide", guide=wrong, **options)
    for posterior in (near, far):
        assert posterior.n_simulations == 64 + 16
        assert bool(torch.isfinite(posterior.sample_stats["distance"]).all())
        assert posterior.prior is not None and posterior.prior["azimuth"].shape == (1, 64)
        assert posterior.settings["distance"] == "standardized_l2"
    assert float(near.sample_stats["distance"].max()) < float(far.sample_stats["distance"].min())
    # The samples are the guide's draws, exactly as without a summary.
    plain = pg.infer(PROGRAM, IMAGE, method="guide", guide=right, chains=2, draws=8, seed=0)
    for name in FACE_SHAPES:
        assert torch.equal(near[name], plain[name]), name


def test_a_guide_of_some_sites_gives_those_alone_unless_the_draws_are_simulated():
    guide = EncoderGuide(
        LinearEncoder(code_size=3),
        PROGRAM,
        site_layout={"azimuth": [0], "elevation": [1], "light": [2]},
    )
    plain = pg.infer(PROGRAM, IMAGE, method="guide", guide=guide, chains=2, draws=4, seed=0)
    assert set(plain.samples) == set(ANGLES)
    simulated = pg.infer(
        PROGRAM,
        IMAGE,
        method="guide",
        guide=guide,
        chains=2,
        draws=4,
        seed=0,
        summary="pixel",
        distance="l2",
        pilot_size=0,
        progress=False,
    )
    assert set(simulated.samples) == set(FACE_SHAPES)
    assert simulated.n_simulations == 8
    for name in ANGLES:
        assert torch.equal(simulated[name], plain[name])
    # The unguided latents come from their prior: they differ between draws.
    assert float(simulated["shape"].reshape(8, 200).std(0).mean()) > 0.5


def test_any_object_with_a_posterior_method_is_a_guide():
    class PointGuide:
        observed = "image"

        def posterior(self, images, num_samples, *, generator=None):
            value = torch.full((num_samples, images.shape[0]), 12.5)
            return {"azimuth": value}

    posterior = pg.infer(PROGRAM, IMAGE, method="guide", guide=PointGuide(), chains=2, draws=3)
    assert set(posterior.samples) == {"azimuth"}
    assert bool((posterior["azimuth"] == 12.5).all())
    assert posterior.settings["guide"] == "PointGuide"


# --------------------------------------------------------------------------------------------
# init="guide"
# --------------------------------------------------------------------------------------------


def test_init_guide_starts_the_chains_at_the_guides_draws():
    truth = {name: SCENE[name] for name in FACE_SHAPES}
    guide = sure_guide(truth)
    run = api.prepare_abc(PROGRAM, IMAGE, init="guide", guide=guide, seed=0, **QUICK_ABC)
    start = run.layout.split_values(run.state.values.cpu())
    for name in ANGLES:
        assert torch.allclose(start[name], truth[name].expand(4), atol=0.05), name
    assert torch.allclose(start["shape"], truth["shape"].expand(4, 200), atol=1e-3)
    # The pilot still runs (it scales the standardized distance), then one simulation a chain.
    assert run.simulator.n_simulations == QUICK_ABC["pilot_size"] + QUICK_ABC["chains"]
    # Started at the truth, the chains are closer than every pilot simulation.
    assert float(run.state.distance.max()) < float(run.pilot_distance.min())


def test_init_guide_leaves_unguided_sites_to_the_prior_and_is_reproducible():
    guide = EncoderGuide(
        FixedEncoder(torch.tensor([0.0, 0.0, 0.0]), log_var=0.0),
        PROGRAM,
        site_layout={"azimuth": [0], "elevation": [1], "light": [2]},
    )
    runs = [
        api.prepare_abc(PROGRAM, IMAGE, init="guide", guide=guide, seed=seed, **QUICK_ABC)
        for seed in (0, 0, 1)
    ]
    starts = [run.layout.split_values(run.state.values.cpu()) for run in runs]
    generator = torch.Generator().manual_seed(api._guide_seed(0))
    expected = guide.initial_values(IMAGE, 4, generator=generator)
    for name in ANGLES:
        assert torch.equal(starts[0][name], expected[name]), name
    assert float(starts[0]["shape"].std(0).mean()) > 0.5  # prior draws, one per chain
    assert torch.equal(starts[0]["azimuth"], starts[1]["azimuth"])
    assert not torch.equal(starts[0]["azimuth"], starts[2]["azimuth"])


@pytest.mark.parametrize("method", ["abc_mcmc", "abc_slice"])
def test_infer_with_init_guide_records_it(method):
    guide = sure_guide({name: SCENE[name] for name in FACE_SHAPES})
    posterior = pg.infer(
        PROGRAM, IMAGE, method=method, init="guide", guide=guide, seed=0, **QUICK_ABC
    )
    assert posterior.settings["init"] == "guide"
    assert posterior.settings["guide"] == "EncoderGuide"
    assert posterior["shape"].shape == (4, 2, 200)
    check_face_supports(posterior.samples)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


class ToyScene:
    """Another program: sites the face guide does not have."""

    def __call__(self):
        angle = pyro.sample("angle", dist.Uniform(-90.0, 90.0))
        render = (angle / 180.0 + 0.5).reshape(angle.shape + (1, 1, 1))
        render = render.expand(angle.shape + (1, RESOLUTION, RESOLUTION))
        return pyro.sample("image", dist.Normal(render, 0.05).to_event(3))


@pytest.mark.parametrize(
    "options,error,match",
    [
        ({"init": "guide"}, ValueError, r"init='guide' needs a trained guide.*EncoderGuide"),
        # A guide alone starts the chains and proposes (the recommended call), so it is checked.
        ({"guide": "x"}, TypeError, r"\.posterior method, got str"),
        (
            {"guide": "x", "init": "pilot", "guide_proposals": False},
            ValueError,
            r"guide=\.\.\. is used only with init='guide'.*'pilot'",
        ),
        ({"guide_proposals": True}, ValueError, r"guide_proposals=True.*no guide was given"),
        ({"init": "guide", "guide": object()}, TypeError, r"\.posterior method, got object"),
        ({"init": "guids"}, ValueError, r"init must be one of \['pilot', 'prior', 'guide'\]"),
    ],
)
def test_init_guide_errors(options, error, match):
    with pytest.raises(error, match=match):
        pg.infer(PROGRAM, IMAGE, seed=0, **{**QUICK_ABC, **options})


def test_method_guide_errors():
    with pytest.raises(ValueError, match=r"method='guide' needs a trained guide"):
        pg.infer(PROGRAM, IMAGE, method="guide")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['warmup'\] for method 'guide'"):
        pg.infer(PROGRAM, IMAGE, method="guide", guide=linear_guide(), warmup=3)
    with pytest.raises(ValueError, match=r"chains must be >= 1"):
        pg.infer(PROGRAM, IMAGE, method="guide", guide=linear_guide(), chains=0)
    with pytest.raises(ValueError, match=r"pilot_size=1 is too small"):
        pg.infer(
            PROGRAM, IMAGE, method="guide", guide=linear_guide(), summary="pixel", pilot_size=1
        )


def test_a_guide_for_another_program_is_rejected_naming_the_sites():
    toy_guide = EncoderGuide(LinearEncoder(code_size=1), ToyScene())
    pattern = r"built for a program with other latent sites.*\['angle'\].*EncoderGuide\("
    with pytest.raises(ValueError, match=pattern):
        pg.infer(PROGRAM, IMAGE, method="guide", guide=toy_guide)
    with pytest.raises(ValueError, match=pattern):
        pg.infer(PROGRAM, IMAGE, init="guide", guide=toy_guide, seed=0, **QUICK_ABC)
    face_guide = linear_guide()
    with pytest.raises(ValueError, match=r"other latent sites.*\['shape', 'texture'"):
        pg.infer(ToyScene(), IMAGE, method="guide", guide=face_guide)


def test_a_guide_for_another_resolution_is_rejected():
    small = pg.programs.face(resolution=16)
    guide = EncoderGuide(LinearEncoder(pixels=16 * 16), small)
    with pytest.raises(ValueError, match=r"shaped \(1, 16, 16\).*shaped \(1, 32, 32\)"):
        pg.infer(PROGRAM, IMAGE, method="guide", guide=guide)


def test_draws_outside_the_support_or_of_the_wrong_shape_are_rejected():
    class BadGuide:
        def __init__(self, value):
            self.value = value

        def posterior(self, images, num_samples, *, generator=None):
            return {"azimuth": self.value(num_samples)}

    outside = BadGuide(lambda n: torch.full((n, 1), 120.0))
    with pytest.raises(ValueError, match=r"site 'azimuth' outside its support"):
        pg.infer(PROGRAM, IMAGE, method="guide", guide=outside, chains=1, draws=2)
    flat = BadGuide(lambda n: torch.zeros(n))
    with pytest.raises(TypeError, match=r"\(num_samples, B, \*event\)"):
        pg.infer(PROGRAM, IMAGE, method="guide", guide=flat, chains=1, draws=2)
    wide = BadGuide(lambda n: torch.zeros(n, 2))
    with pytest.raises(ValueError, match=r"shape \(2, 2\) for site 'azimuth'.*expected \(2, 1\)"):
        pg.infer(PROGRAM, IMAGE, method="guide", guide=wide, chains=1, draws=2)


# --------------------------------------------------------------------------------------------
# load_guide
# --------------------------------------------------------------------------------------------


def tiny_dcign() -> DCIGN:
    torch.manual_seed(0)
    config = DCIGNConfig(
        image_size=RESOLUTION, channels=(4, 4), decoder_channels=(4, 4), padding=2, code_size=8
    )
    return DCIGN(config)


def test_load_guide_from_a_checkpoint_uses_the_named_code_groups(tmp_path):
    net = tiny_dcign()
    path = save_checkpoint(tmp_path / "tiny.pt", net, net.config, kind="dcign")
    guide = load_guide(path, PROGRAM)
    # 8 code units cannot cover the 406 face units; the DC-IGN's pose and light groups can.
    assert guide.site_layout == {"azimuth": (0,), "elevation": (1,), "light": (2,)}
    posterior = pg.infer(PROGRAM, IMAGE, method="guide", guide=guide, chains=2, draws=3, seed=0)
    assert set(posterior.samples) == set(ANGLES)


def test_load_guide_prefers_the_checkpoints_site_layout_and_explains_bad_sources(tmp_path):
    net = tiny_dcign()
    extra = {"site_layout": {"light": [5]}}
    path = save_checkpoint(tmp_path / "tiny.pt", net, net.config, kind="dcign", extra=extra)
    assert load_guide(path, PROGRAM).site_layout == {"light": (5,)}
    with pytest.raises(KeyError, match=r"no pretrained network named 'no-such-guide'"):
        load_guide("no-such-guide", PROGRAM, directory=tmp_path)
    with pytest.raises(TypeError, match=r"network name or a checkpoint path"):
        load_guide(3, PROGRAM)


@pytest.mark.gpu
def test_a_guide_on_cuda_serves_both_the_guide_method_and_init_guide_on_cuda():
    guide = linear_guide().to("cuda")
    posterior = pg.infer(
        PROGRAM,
        IMAGE,
        method="guide",
        guide=guide,
        chains=2,
        draws=4,
        seed=0,
        summary="pixel",
        pilot_size=16,
        device="cuda",
        progress=False,
    )
    assert all(value.device.type == "cpu" for value in posterior.samples.values())
    assert bool(torch.isfinite(posterior.sample_stats["distance"]).all())
    check_face_supports(posterior.samples)
    run = api.prepare_abc(
        PROGRAM, IMAGE, init="guide", guide=guide, seed=0, device="cuda", **QUICK_ABC
    )
    assert run.state.values.device.type == "cuda"
    check_face_supports(run.layout.split_values(run.state.values.cpu()))
