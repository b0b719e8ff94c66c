"""The DC-IGN scene program: one site per code group, code assembly, batch polymorphism."""

from __future__ import annotations

import pyro
import pyro.poutine as poutine
import pytest
import torch

from probgraphics.nets import DCIGN, CodeLayout, DCIGNConfig
from probgraphics.programs import simulate
from probgraphics.programs.dcign import DCIGNProgram, dcign
from probgraphics.programs.registry import available, get

S, CODE = 16, 8


def small_config(**overrides) -> DCIGNConfig:
    base = dict(
        image_size=S,
        channels=(4, 4),
        decoder_channels=(4, 4),
        padding=2,
        code_size=CODE,
        decoder_kernel=3,
    )
    return DCIGNConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def net() -> DCIGN:
    torch.manual_seed(0)
    return DCIGN(small_config())


def _groups(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "azimuth": torch.randn(n, 1, generator=g),
        "elevation": torch.randn(n, 1, generator=g),
        "light": torch.randn(n, 1, generator=g),
        "intrinsic": torch.randn(n, CODE - 3, generator=g),
    }


def test_sites_and_event_shapes(net):
    trace = poutine.trace(dcign(net)).get_trace()
    sites = {k: v for k, v in trace.nodes.items() if v["type"] == "sample"}
    assert list(sites) == ["azimuth", "elevation", "light", "intrinsic", "render", "image"]
    event = {k: tuple(v["fn"].event_shape) for k, v in sites.items() if k != "render"}
    assert event == {
        "azimuth": (1,),
        "elevation": (1,),
        "light": (1,),
        "intrinsic": (CODE - 3,),
        "image": (1, S, S),
    }
    for name in ("azimuth", "elevation", "light", "intrinsic"):
        base = sites[name]["fn"].base_dist
        assert torch.all(base.loc == 0) and torch.all(base.scale == 1)
    assert sites["render"]["value"].shape == (1, S, S)


def test_render_is_the_decoder_of_the_code_in_code_order(net):
    groups = _groups(5, seed=1)
    program = dcign(net)
    code = torch.cat(
        [groups["azimuth"], groups["elevation"], groups["light"], groups["intrinsic"]], dim=-1
    )
    torch.testing.assert_close(program.code(**groups), code)
    with torch.no_grad():
        torch.testing.assert_close(program.render(**groups), net.decode(code))


def test_code_places_groups_at_their_units_and_zeros_the_rest():
    layout = CodeLayout(6, {"pose": (4, 1), "identity": (0, 5)})
    torch.manual_seed(1)
    program = dcign(DCIGN(small_config(code_size=6, layout=layout)))
    assert program.latent_sites == ("pose", "identity")
    pose = torch.tensor([[10.0, 11.0]])
    identity = torch.tensor([[20.0, 21.0]])
    code = program.code(pose=pose, identity=identity)
    torch.testing.assert_close(code, torch.tensor([[20.0, 11.0, 0.0, 0.0, 10.0, 21.0]]))
    # Gradients reach every group through the assembly.
    pose.requires_grad_()
    program.code(pose=pose, identity=identity)[..., 4].sum().backward()
    torch.testing.assert_close(pose.grad, torch.tensor([[1.0, 0.0]]))


def test_plate_of_eight_equals_eight_single_calls(net):
    program = dcign(net)
    groups = _groups(8, seed=2)
    with pyro.plate("chains", 8):
        trace = poutine.trace(poutine.condition(program, data=groups)).get_trace()
    batched = trace.nodes["render"]["value"]
    assert batched.shape == trace.nodes["image"]["value"].shape == (8, 1, S, S)
    for i in range(8):
        single = {k: v[i] for k, v in groups.items()}
        tr = poutine.trace(poutine.condition(program, data=single)).get_trace()
        assert tr.nodes["render"]["value"].shape == (1, S, S)
        torch.testing.assert_close(tr.nodes["render"]["value"], batched[i], atol=1e-5, rtol=0)


def test_render_broadcasts_groups_and_nested_batches(net):
    program = dcign(net)
    groups = _groups(6, seed=3)
    flat = program.render(**groups)
    nested = program.render(**{k: v.reshape(2, 3, -1) for k, v in groups.items()})
    assert nested.shape == (2, 3, 1, S, S)
    torch.testing.assert_close(nested.reshape(6, 1, S, S), flat, atol=1e-6, rtol=0)
    # One extrinsic setting shared by six identities.
    shared = {**groups, "azimuth": groups["azimuth"][0], "light": groups["light"][0]}
    mixed = program.render(**shared)
    assert mixed.shape == (6, 1, S, S)
    torch.testing.assert_close(mixed[0], flat[0], atol=1e-6, rtol=0)


def test_outputs_in_unit_interval_and_rgb(net):
    scenes = simulate(dcign(net), 32, seed=4)
    assert scenes["render"].min() >= 0 and scenes["render"].max() <= 1
    torch.manual_seed(2)
    rgb = dcign(DCIGN(small_config(in_channels=3)))
    assert simulate(rgb, 2, seed=0)["image"].shape == (2, 3, S, S)


def test_registered_by_name(net):
    assert "dcign" in available()
    program = get("dcign", model=net, noise=0.1)
    assert isinstance(program, DCIGNProgram) and program.noise == 0.1


def test_validation(net, monkeypatch):
    with pytest.raises(TypeError, match="DCIGN"):
        dcign(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="noise"):
        dcign(net, noise=float("nan"))
    clash = CodeLayout(4, {"image": (0,), "rest": (1, 2, 3)})
    with pytest.raises(ValueError, match="clash"):
        dcign(DCIGN(small_config(code_size=4, layout=clash)))
    program = dcign(net)
    groups = _groups(2, seed=5)
    with pytest.raises(ValueError, match="missing \\['light'\\]"):
        program.render(**{k: v for k, v in groups.items() if k != "light"})
    with pytest.raises(ValueError, match="intrinsic"):
        program.render(**{**groups, "intrinsic": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="broadcast"):
        program.render(**{**groups, "azimuth": torch.zeros(3, 1)})
    # A name with no bundled weights: the error lists what is bundled.
    with pytest.raises(KeyError, match="no-such-network"):
        dcign("no-such-network")


@pytest.mark.gpu
def test_runs_on_the_network_device(net):
    import copy

    gpu = copy.deepcopy(net).cuda()
    scenes = simulate(dcign(gpu), 4, seed=0)
    assert all(value.device.type == "cuda" for value in scenes.values())
    groups = {name: scenes[name].cpu() for name in ("azimuth", "elevation", "light", "intrinsic")}
    cpu = dcign(net).render(**groups)
    torch.testing.assert_close(scenes["render"].cpu(), cpu, atol=1e-4, rtol=0)
