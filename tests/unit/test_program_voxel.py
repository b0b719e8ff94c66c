"""The voxel (mu-VAE) scene program: sites, batch polymorphism, the render pipeline, validation."""

from __future__ import annotations

import importlib
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F

from probgraphics.nets import MuVAE, MuVAEConfig
from probgraphics.programs import simulate
from probgraphics.programs.registry import available, get
from probgraphics.programs.voxel import VoxelProgram, voxel
from probgraphics.render.voxel import project, rotate_about_vertical

K, M, D = 6, 3, 28


@pytest.fixture(scope="module")
def net() -> MuVAE:
    torch.manual_seed(0)
    model = MuVAE(
        MuVAEConfig(
            encoder_channels=(4,),
            shape_code_size=K,
            decoder_channels=(8, 4),
            azimuth_latent_size=M,
            azimuth_hidden=8,
            texturizer_hidden=16,
        )
    )
    # A fresh decoder fills the grid with ~0.5 everywhere, which projects to a flat white image;
    # a negative output bias makes occupancy sparse so rotation and shape change the image.
    with torch.no_grad():
        model.decoder.deconvolutions[-1].bias.fill_(-3.0)
    return model.eval()


def _latents(n: int, seed: int, azimuth: str = "latent") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    values = {"shape": torch.randn(n, K, generator=g)}
    if azimuth == "latent":
        values["azimuth"] = torch.randn(n, M, generator=g)
    elif azimuth == "uniform":
        values["azimuth"] = (torch.rand(n, generator=g) * 2 - 1) * math.pi
    return values


def _sites(trace) -> dict:
    return {k: v for k, v in trace.nodes.items() if v["type"] == "sample"}


def test_sites_and_event_shapes(net):
    program = voxel(net)
    sites = _sites(poutine.trace(program).get_trace())
    assert list(sites) == ["shape", "azimuth", "angle", "render", "image"]
    assert tuple(sites["shape"]["fn"].event_shape) == (K,)
    assert tuple(sites["azimuth"]["fn"].event_shape) == (M,)
    assert tuple(sites["image"]["fn"].event_shape) == (1, D, D)
    assert sites["angle"]["value"].shape == ()
    assert sites["render"]["value"].shape == (1, D, D)
    assert float(sites["image"]["fn"].base_dist.scale.max()) == pytest.approx(0.02)
    # Standard-normal latents (the azimuth site is the unconstrained latent).
    for name in ("shape", "azimuth"):
        base = sites[name]["fn"].base_dist
        assert torch.all(base.loc == 0) and torch.all(base.scale == 1)


def test_uniform_and_fixed_azimuth_sites(net):
    uniform = _sites(poutine.trace(voxel(net, azimuth="uniform")).get_trace())
    fn = uniform["azimuth"]["fn"]
    assert isinstance(fn, pyro.distributions.Uniform) and tuple(fn.event_shape) == ()
    assert float(fn.low) == pytest.approx(-math.pi) and float(fn.high) == pytest.approx(math.pi)
    assert uniform["angle"]["value"] == uniform["azimuth"]["value"]
    fixed = _sites(poutine.trace(voxel(net, azimuth="fixed")).get_trace())
    assert "azimuth" not in fixed and float(fixed["angle"]["value"]) == 0.0


@pytest.mark.parametrize("azimuth", ["latent", "uniform", "fixed"])
@pytest.mark.parametrize("texturizer", [False, True])
def test_plate_of_eight_equals_eight_single_calls(net, azimuth, texturizer):
    program = voxel(net, azimuth=azimuth, texturizer=texturizer)
    latents = _latents(8, seed=1, azimuth=azimuth)
    net.train()  # the program must switch batch norm to eval itself, and restore the mode
    try:
        with pyro.plate("chains", 8):
            trace = poutine.trace(poutine.condition(program, data=latents)).get_trace()
        assert net.training
        batched = trace.nodes["render"]["value"]
        assert batched.shape == (8, 1, D, D)
        assert trace.nodes["image"]["value"].shape == (8, 1, D, D)
        assert trace.nodes["angle"]["value"].shape == (8,)
        for i in range(8):
            single = {k: v[i] for k, v in latents.items()}
            tr = poutine.trace(poutine.condition(program, data=single)).get_trace()
            assert tr.nodes["render"]["value"].shape == (1, D, D)
            torch.testing.assert_close(tr.nodes["render"]["value"], batched[i], atol=1e-5, rtol=0)
    finally:
        net.eval()


def test_render_is_decoder_rotation_projection(net):
    program = voxel(net)
    latents = _latents(5, seed=2)
    trace = poutine.trace(poutine.condition(program, data=latents)).get_trace()
    with torch.no_grad():
        angle = math.pi * torch.tanh(
            net.azimuth_net.output(torch.tanh(net.azimuth_net.hidden(latents["azimuth"])))
        ).squeeze(-1)
        expected = project(rotate_about_vertical(net.decoder(latents["shape"]), angle))
    torch.testing.assert_close(trace.nodes["angle"]["value"], angle)
    torch.testing.assert_close(trace.nodes["render"]["value"], expected)
    # The angle matters: the same shapes at another angle give other images.
    other = program.render(shape=latents["shape"], angle=angle + 1.0)
    assert (other - expected).abs().max() > 0.05


def test_texturizer_and_tau_change_the_render(net):
    latents = _latents(3, seed=3, azimuth="uniform")
    plain = voxel(net, azimuth="uniform").render(shape=latents["shape"], angle=latents["azimuth"])
    with torch.no_grad():
        grids = rotate_about_vertical(net.decoder(latents["shape"]), latents["azimuth"])
        torch.testing.assert_close(
            voxel(net, azimuth="uniform", tau=0.3).render(
                shape=latents["shape"], angle=latents["azimuth"]
            ),
            project(grids, tau=0.3),
        )
        shaded = voxel(net, azimuth="uniform", texturizer=True).render(
            shape=latents["shape"], angle=latents["azimuth"]
        )
        torch.testing.assert_close(shaded, net.texturizer(plain))


def test_render_accepts_any_leading_batch_shape(net):
    program = voxel(net)
    latents = _latents(6, seed=4)
    angle = program.azimuth_angle(latents["azimuth"])
    flat = program.render(shape=latents["shape"], angle=angle)
    nested = program.render(shape=latents["shape"].reshape(2, 3, K), angle=angle.reshape(2, 3))
    assert nested.shape == (2, 3, 1, D, D)
    torch.testing.assert_close(nested.reshape(6, 1, D, D), flat, atol=1e-6, rtol=0)
    # One shape code broadcast against several angles.
    spun = program.render(shape=latents["shape"][0], angle=angle)
    assert spun.shape == (6, 1, D, D)
    torch.testing.assert_close(spun[0], flat[0], atol=1e-6, rtol=0)
    one = program.render(shape=latents["shape"][0], angle=angle[2])
    torch.testing.assert_close(spun[2], one, atol=1e-6, rtol=0)


@pytest.mark.parametrize("resolution", [None, 16, 40])
def test_outputs_in_unit_interval_and_resolution(net, resolution):
    program = voxel(net, texturizer=True, resolution=resolution)
    size = D if resolution is None else resolution
    scenes = simulate(program, 16, seed=5)
    assert scenes["render"].shape == scenes["image"].shape == (16, 1, size, size)
    assert scenes["render"].min() >= 0 and scenes["render"].max() <= 1
    assert torch.all(scenes["angle"].abs() <= math.pi)
    if resolution is not None:
        native = voxel(net, texturizer=True).render(shape=scenes["shape"], angle=scenes["angle"])
        expected = F.interpolate(
            native, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        torch.testing.assert_close(scenes["render"], expected)


def test_image_log_prob_is_differentiable_in_the_latents(net):
    program = voxel(net)
    latents = {k: v.requires_grad_() for k, v in _latents(4, seed=6).items()}
    observed = simulate(program, 4, seed=7)["image"]
    with pyro.plate("chains", 4):
        trace = poutine.trace(
            poutine.condition(program, data={**latents, "image": observed})
        ).get_trace()
    trace.nodes["image"]["fn"].log_prob(observed).sum().backward()
    assert latents["shape"].grad.abs().sum() > 0
    assert latents["azimuth"].grad.abs().sum() > 0


def test_registered_by_name(net):
    assert "voxel" in available()
    program = get("voxel", model=net, noise=0.05)
    assert isinstance(program, VoxelProgram) and program.noise == 0.05


def test_validation(net):
    with pytest.raises(TypeError, match="MuVAE"):
        voxel(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="noise"):
        voxel(net, noise=0.0)
    with pytest.raises(ValueError, match="tau"):
        voxel(net, tau=-1.0)
    with pytest.raises(ValueError, match="azimuth"):
        voxel(net, azimuth="random")
    with pytest.raises(ValueError, match="rotation_mode"):
        voxel(net, rotation_mode="cubic")
    with pytest.raises(ValueError, match="resolution"):
        voxel(net, resolution=0)
    without = MuVAE(MuVAEConfig(encoder_channels=(4,), decoder_channels=(4, 4), texturizer=False))
    with pytest.raises(ValueError, match="texturizer"):
        voxel(without, texturizer=True)
    program = voxel(net)
    with pytest.raises(ValueError, match=r"\(\.\.\., 6\)"):
        program.render(shape=torch.zeros(2, 5), angle=torch.zeros(2))
    with pytest.raises(ValueError, match="broadcast"):
        program.render(shape=torch.zeros(2, K), angle=torch.zeros(3))


def test_named_model_without_bundled_weights_is_a_clear_error():
    with pytest.raises(KeyError, match="no-such-network"):
        voxel("no-such-network")


def test_named_model_is_loaded_as_a_whole_network(net, monkeypatch):
    asked = []

    def pretrained(name, *, kind):
        asked.append((name, kind))
        return net

    # nets.pretrained is the function; the module that defines it is patched.
    module = importlib.import_module("probgraphics.nets.pretrained")
    monkeypatch.setattr(module, "pretrained", pretrained)
    assert voxel("my-muvae").model is net
    assert voxel().model is net
    assert asked == [("my-muvae", "model"), ("muvae-shapes", "model")]


@pytest.mark.gpu
def test_runs_on_the_network_device(net):
    import copy

    gpu = copy.deepcopy(net).cuda()
    scenes = simulate(voxel(gpu, texturizer=True), 4, seed=0)
    assert all(value.device.type == "cuda" for value in scenes.values())
    cpu = voxel(net, texturizer=True).render(
        shape=scenes["shape"].cpu(), angle=scenes["angle"].cpu()
    )
    torch.testing.assert_close(scenes["render"].cpu(), cpu, atol=1e-4, rtol=0)
