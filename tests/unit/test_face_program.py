"""The face program: batch polymorphism, simulate, registry, validation."""

from __future__ import annotations

import pyro
import pyro.poutine as poutine
import pytest
import torch

from probgraphics import programs


@pytest.fixture(scope="module")
def program():
    return programs.face(resolution=64)


def _latents(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "shape": torch.randn(n, 200, generator=g),
        "texture": torch.randn(n, 200, generator=g),
        "azimuth": torch.rand(n, generator=g) * 180 - 90,
        "elevation": torch.rand(n, generator=g) * 120 - 60,
        "light": torch.rand(n, generator=g) * 180 - 90,
        "camera": torch.rand(n, 3, generator=g),
    }


def test_sites_and_event_shapes(program):
    trace = poutine.trace(program).get_trace()
    sites = {k: v for k, v in trace.nodes.items() if v["type"] == "sample"}
    assert list(sites) == [
        "shape", "texture", "azimuth", "elevation", "light", "camera", "render", "image",
    ]
    event = {k: tuple(v["fn"].event_shape) for k, v in sites.items()}
    assert event["shape"] == (200,) and event["texture"] == (200,)
    assert event["azimuth"] == event["elevation"] == event["light"] == ()
    assert event["camera"] == (3,)
    assert event["image"] == (1, 64, 64)
    assert isinstance(sites["azimuth"]["fn"], pyro.distributions.Uniform)
    assert float(sites["azimuth"]["fn"].low) == -90 and float(sites["azimuth"]["fn"].high) == 90


def test_plate_of_eight_equals_eight_single_calls(program):
    latents = _latents(8, seed=1)
    with pyro.plate("chains", 8):
        trace = poutine.trace(poutine.condition(program, data=latents)).get_trace()
    batched = trace.nodes["render"]["value"]
    assert batched.shape == (8, 1, 64, 64)
    assert trace.nodes["image"]["value"].shape == (8, 1, 64, 64)
    for i in range(8):
        single = {k: v[i] for k, v in latents.items()}
        tr = poutine.trace(poutine.condition(program, data=single)).get_trace()
        assert tr.nodes["render"]["value"].shape == (1, 64, 64)
        torch.testing.assert_close(tr.nodes["render"]["value"], batched[i], atol=1e-5, rtol=0)


def test_render_accepts_any_leading_batch_shape(program):
    latents = _latents(6, seed=2)
    flat = program.render(**latents)
    nested = program.render(**{k: v.reshape(2, 3, *v.shape[1:]) for k, v in latents.items()})
    assert nested.shape == (2, 3, 1, 64, 64)
    torch.testing.assert_close(nested.reshape(6, 1, 64, 64), flat)


def test_renders_are_faces_not_blank(program):
    scenes = programs.simulate(program, n=16, seed=0)
    render = scenes["render"]
    assert render.shape == (16, 1, 64, 64)
    assert torch.isfinite(render).all() and render.min() >= 0 and render.max() <= 1
    covered = (render > 0).float().mean(dim=(1, 2, 3))
    # A head fills a good part of the frame under every pose and camera of the prior.
    assert (covered > 0.15).all() and (covered < 0.95).all(), covered
    # Different scenes differ.
    assert (render[0] - render[1]).abs().mean() > 1e-3


# The torch path on CUDA is checked against the same CPU references (the gpu mark skips it
# without a device).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
def test_numba_and_torch_backends_agree(device):
    latents = _latents(4, seed=3)
    fast = programs.face(resolution=32, backend="numba").render(**latents)
    on_device = {name: value.to(device) for name, value in latents.items()}
    slow = programs.face(resolution=32, backend="torch").render(**on_device)
    assert slow.device.type == device
    mismatch = ((fast - slow.cpu()).abs() > 1e-3).float().mean()
    assert mismatch < 0.01, mismatch  # only edge-tie pixels may differ


@pytest.mark.parametrize("device", DEVICES)
def test_torch_backend_gives_gradients_wrt_latents(device):
    program = programs.face(resolution=32, backend="torch")
    latents = {name: value.to(device) for name, value in _latents(2, seed=4).items()}
    latents["texture"].requires_grad_(True)
    latents["light"].requires_grad_(True)
    program.render(**latents).sum().backward()
    assert latents["texture"].grad.abs().sum() > 0
    assert latents["light"].grad.abs().sum() > 0


def test_simulate_is_reproducible_and_leaves_global_rng_alone(program):
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = programs.simulate(program, n=3, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = programs.simulate(program, n=3, seed=7)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    single = programs.simulate(program, seed=7)
    assert single["image"].shape == (1, 64, 64)


def test_simulate_draws_what_torch_manual_seed_draws(program, monkeypatch):
    # The reference: the program traced under a plate after torch.manual_seed(seed).
    def reference(seed):
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(seed)
            with pyro.plate("scenes", 4, dim=-1):
                trace = poutine.trace(program).get_trace()
        return {n: s["value"] for n, s in trace.nodes.items() if s["type"] == "sample"}

    for seed in (0, 11):
        fast = programs.simulate(program, n=4, seed=seed)
        expected = reference(seed)
        assert list(fast) == list(expected)
        for name in expected:
            assert torch.equal(fast[name], expected[name]), name
    # With an accelerator in sight, every device's generator is seeded, as torch.manual_seed does.
    import importlib

    simulate_module = importlib.import_module("probgraphics.programs.simulate")
    calls = []
    monkeypatch.setattr(simulate_module, "_accelerators", lambda: True)
    monkeypatch.setattr(simulate_module.torch, "manual_seed", calls.append)
    simulate_module._manual_seed(5)
    assert calls == [5]


def test_simulate_conditions(program):
    scenes = programs.simulate(program, n=2, seed=0, conditions={"azimuth": torch.zeros(2)})
    assert torch.equal(scenes["azimuth"], torch.zeros(2))
    with pytest.raises(KeyError, match="sites"):
        programs.simulate(program, n=2, conditions={"nope": torch.zeros(2)})


def test_rgb_option():
    scenes = programs.simulate(programs.face(resolution=24, color="rgb"), n=2, seed=0)
    assert scenes["image"].shape == (2, 3, 24, 24)


def test_supersampled_pixel_is_the_mean_of_its_point_samples():
    # Reference: render at 3x the resolution and average each 3 x 3 block by explicit loops.
    latents = _latents(2, seed=5)
    fine = programs.face(resolution=48).render(**latents)
    coarse = programs.face(resolution=16, supersample=3).render(**latents)
    assert coarse.shape == (2, 1, 16, 16)
    expected = torch.empty_like(coarse)
    for row in range(16):
        for col in range(16):
            block = fine[..., 3 * row : 3 * row + 3, 3 * col : 3 * col + 3]
            expected[..., row, col] = block.mean(dim=(-1, -2))
    torch.testing.assert_close(coarse, expected, atol=1e-6, rtol=0)
    # supersample=1 is the point-sampled render of before, bit for bit.
    point = programs.face(resolution=16).render(**latents)
    assert not torch.equal(point, coarse)
    assert programs.face(resolution=16, supersample=1).render(**latents).equal(point)


def test_registry():
    assert "face" in programs.available()
    program = programs.get("face", resolution=16)
    assert program.resolution == 16
    with pytest.raises(KeyError, match="registered programs"):
        programs.get("no-such-program")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"resolution": 0}, "resolution must be an int >= 8"),
        ({"resolution": 64.0}, "resolution must be an int"),
        ({"color": "cmyk"}, "color must be"),
        ({"noise": 0.0}, "noise must be"),
        ({"noise": True}, "noise must be"),
        ({"n_shape": 500}, "n_shape must be an int in"),
        ({"backend": "opengl"}, "backend must be"),
        ({"pose_range": (10, -10)}, "pose_range"),
        ({"supersample": 0}, "supersample must be an int >= 1"),
        ({"supersample": 2.0}, "supersample must be an int"),
    ],
)
def test_bad_configuration_is_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        programs.face(**kwargs)


def test_simulate_rejects_bad_input(program):
    with pytest.raises(ValueError, match="n must be"):
        programs.simulate(program, n=0)
    with pytest.raises(TypeError, match="program must be"):
        programs.simulate("face")
