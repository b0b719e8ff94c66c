"""train_guide: convergence on a conjugate program, losses, checkpoints, exact resume, bad input."""

from __future__ import annotations

import math
import random

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn
from torch.distributions import constraints

from probgraphics.inference.svi import (
    TrainResult,
    load_training_checkpoint,
    sleep_loss,
    train_guide,
)
from probgraphics.nets.guides import EncoderGuide
from probgraphics.programs.simulate import simulate

SLOPES = torch.tensor([2.0, 1.0, 0.5])
NOISE = 0.5


class Conjugate:
    """``z ~ N(0, I_3)``, ``image ~ N(slopes * z, NOISE^2 I)``: the exact posterior is a
    diagonal Gaussian whose mean is linear in the observation, so a linear Gaussian encoder
    can represent it exactly."""

    def __call__(self):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        return pyro.sample("image", dist.Normal(SLOPES * z, NOISE).to_event(1))

    @staticmethod
    def posterior(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        precision = SLOPES**2 + NOISE**2
        return SLOPES * x / precision, (NOISE**2 / precision).sqrt().expand_as(x)


class LinearEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 6)

    def forward(self, x):
        return self.linear(x).chunk(2, dim=-1)


def make_guide(seed: int = 0) -> EncoderGuide:
    torch.manual_seed(seed)
    return EncoderGuide(LinearEncoder(), Conjugate())


_POOL = simulate(Conjugate(), n=64 * 40, seed=10_000)["image"].reshape(40, 64, 3)


def simulated_batches(step: int) -> torch.Tensor:
    """Batch ``step`` of 64 observations from a fixed pool of 40 batches."""
    return _POOL[step % 40]


def weights(guide: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in guide.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Convergence
# --------------------------------------------------------------------------------------------


def test_elbo_guide_converges_to_the_exact_posterior_of_a_conjugate_program():
    """The ELBO is maximized, for every observation, by the exact posterior, which the guide
    family contains (linear mean, constant variance).

    A fast phase then a slow phase (lr / 10) leave stochastic-gradient noise in the
    parameters; over several seeds the largest error was below 0.03 on posterior means of
    size ~1 and 2.5% on the standard deviations, so 0.05 and 5% bound the noise, and are far
    below an untrained guide's error (~1)."""
    program, guide = Conjugate(), make_guide()
    first = train_guide(
        program, guide, simulated_batches, steps=400, lr=0.03, seed=0, progress=False
    )
    train_guide(program, guide, simulated_batches, steps=200, lr=0.003, seed=1, progress=False)
    assert sum(first.losses[-20:]) < sum(first.losses[:20])
    x = torch.tensor([[1.0, -0.5, 0.5], [-2.0, 1.0, -0.7]])
    mean, std = Conjugate.posterior(x)
    with torch.no_grad():
        got_mean, got_log_var = guide.encoder(x)
    assert torch.allclose(got_mean, mean, atol=0.05), (got_mean, mean)
    assert torch.allclose((0.5 * got_log_var).exp(), std, rtol=0.05)


class HomoscedasticEncoder(nn.Module):
    """Mean linear in the observation, log-variance one free parameter per unit."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.log_var = nn.Parameter(torch.zeros(3))

    def forward(self, x):
        return self.linear(x), self.log_var.expand(x.shape[0], 3)


def test_sleep_loss_optimum_is_the_least_squares_fit_and_near_the_exact_posterior():
    """On a fixed set of (z, x) pairs the sleep loss is deterministic and its minimizer over
    this family is known in closed form: the mean is the least-squares regression of z on
    (x, 1) and the variance is the mean squared residual. Training must reach it (up to
    optimizer convergence, 2e-3); the fit must match the exact posterior within 5 standard
    errors of a regression on N pairs."""
    n = 4096
    scenes = simulate(Conjugate(), n=n, seed=7)
    x, z = scenes["image"], scenes["z"]
    torch.manual_seed(0)
    guide = EncoderGuide(HomoscedasticEncoder(), Conjugate())
    batch = {"image": x, "latents": {"z": z}}
    train_guide(Conjugate(), guide, batch, steps=300, loss="sleep", lr=0.05, seed=0, progress=False)
    train_guide(
        Conjugate(), guide, batch, steps=300, loss="sleep", lr=0.005, seed=0, progress=False
    )

    design = torch.cat([x, torch.ones(n, 1)], dim=1).double()
    solution = torch.linalg.lstsq(design, z.double()).solution  # (4, 3)
    residual_variance = (z.double() - design @ solution).square().mean(0)
    linear = guide.encoder.linear
    torch.testing.assert_close(linear.weight.detach().double(), solution[:3].T, atol=2e-3, rtol=0)
    torch.testing.assert_close(linear.bias.detach().double(), solution[3], atol=2e-3, rtol=0)
    torch.testing.assert_close(
        guide.encoder.log_var.detach().double(), residual_variance.log(), atol=2e-3, rtol=0
    )

    exact_slope = SLOPES / (SLOPES**2 + NOISE**2)
    posterior_variance = NOISE**2 / (SLOPES**2 + NOISE**2)
    standard_error = (posterior_variance / (n * (SLOPES**2 + NOISE**2))).sqrt()
    assert torch.all((solution[:3].diagonal().float() - exact_slope).abs() < 5 * standard_error)
    # The variance estimate's relative standard error is sqrt(2 / n).
    assert torch.all(
        (residual_variance.float() / posterior_variance - 1).abs() < 5 * math.sqrt(2 / n)
    )


def test_a_few_steps_decrease_the_loss_of_a_tiny_dcign_vae():
    from probgraphics.nets import DCIGN, DCIGNConfig
    from probgraphics.programs.dcign import dcign

    torch.manual_seed(0)
    net = DCIGN(
        DCIGNConfig(
            image_size=16,
            channels=(4,),
            decoder_channels=(4,),
            padding=2,
            code_size=6,
            decoder_kernel=3,
        )
    )
    program = dcign(net, noise=0.3)
    images = torch.rand(8, 1, 16, 16)
    result = train_guide(
        program,
        EncoderGuide(net, program),
        images,
        steps=25,
        lr=0.01,
        modules={"decoder": net.decoder},
        seed=0,
        progress=False,
    )
    assert sum(result.losses[-5:]) < sum(result.losses[:5])


def test_sleep_loss_is_minus_the_guides_log_density_per_scene():
    program, guide = Conjugate(), make_guide()
    x = torch.randn(5, 3)
    z = torch.randn(5, 3)
    from probgraphics.inference.svi import _BatchedGuide, _BatchedModel

    model = _BatchedModel(program, "image", "batch", {})
    value = sleep_loss(model, _BatchedGuide(guide), x, latents={"z": z})
    expected = -guide.distributions(x)["z"].log_prob(z).sum() / 5
    torch.testing.assert_close(value, expected)


# --------------------------------------------------------------------------------------------
# Checkpoints and exact resume
# --------------------------------------------------------------------------------------------


def positive_param_loss(model, guide, observation, **_):
    """ELBO plus a penalty on a constrained raw Pyro parameter (not a module's)."""
    shift = pyro.param("shift", lambda: torch.ones(3), constraint=constraints.positive)
    elbo = Trace_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, observation)
    return elbo + (shift - 2.0).square().sum()


def seeded_iterator(seed: int):
    """A deterministic iterable of batches with its own generator (replayable on resume)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        z = torch.randn(16, 3, generator=generator)
        yield {"image": SLOPES * z + NOISE * torch.randn(16, 3, generator=generator)}


@pytest.mark.parametrize(
    ("loss", "batches", "optimizer"),
    [
        ("elbo", "callable", "adam"),
        ("sleep", "count", "rmsprop"),
        ("custom", "iterator", "adam"),
    ],
)
def test_resumed_training_equals_uninterrupted_training(tmp_path, loss, batches, optimizer):
    def make_batches():
        if batches == "callable":
            return simulated_batches
        if batches == "count":
            return 16
        return seeded_iterator(5)

    loss_fn = positive_param_loss if loss == "custom" else loss
    program = Conjugate()
    options = dict(
        loss=loss_fn, optimizer=optimizer, lr=0.01, seed=3, progress=False, checkpoint_every=4
    )

    whole_guide = make_guide(0)
    whole = train_guide(
        program, whole_guide, make_batches(), steps=12, checkpoint=tmp_path / "whole.pt", **options
    )

    part_guide = make_guide(0)
    train_guide(
        program, part_guide, make_batches(), steps=6, checkpoint=tmp_path / "part.pt", **options
    )
    resumed_guide = make_guide(99)  # other initial weights: the checkpoint must restore them
    resumed = train_guide(
        program,
        resumed_guide,
        make_batches(),
        steps=12,
        checkpoint=tmp_path / "part.pt",
        resume=tmp_path / "part.pt",
        **options,
    )

    assert resumed.start_step == 6 and resumed.steps == 12
    assert resumed.losses == whole.losses
    for name, value in weights(whole_guide).items():
        torch.testing.assert_close(weights(resumed_guide)[name], value, rtol=0, atol=0)
    assert set(resumed.params) == set(whole.params)
    for name, value in whole.params.items():
        torch.testing.assert_close(resumed.params[name], value, rtol=0, atol=0)
    if loss == "custom":
        assert set(whole.params) == {"shift"} and bool((whole.params["shift"] > 0).all())
    saved = load_training_checkpoint(tmp_path / "part.pt")
    assert saved["step"] == 12 and len(saved["losses"]) == 12
    assert resumed.wall_time >= resumed.run_time > 0


def test_resumed_training_continues_at_the_calls_learning_rate(tmp_path):
    # torch's load_state_dict would bring back the saved lr; a resumed phase at a lower rate
    # (fine-tuning) must actually use it.
    options = dict(optimizer="adam", seed=3, progress=False, checkpoint_every=4)
    program = Conjugate()
    train_guide(
        program,
        make_guide(0),
        simulated_batches,
        steps=6,
        lr=0.01,
        checkpoint=tmp_path / "part.pt",
        **options,
    )
    resumed = {}  # checkpoint name -> guide resumed from part.pt at that rate
    for name, rate in (("same.pt", 0.01), ("slow.pt", 0.001)):
        resumed[name] = make_guide(0)
        train_guide(
            program,
            resumed[name],
            simulated_batches,
            steps=8,
            lr=rate,
            resume=tmp_path / "part.pt",
            checkpoint=tmp_path / name,
            **options,
        )
    rates = {
        name: {
            group["lr"]
            for state in load_training_checkpoint(tmp_path / name)["optimizer"].values()
            for group in state["param_groups"]
        }
        for name in ("part.pt", "same.pt", "slow.pt")
    }
    assert rates == {"part.pt": {0.01}, "same.pt": {0.01}, "slow.pt": {0.001}}
    part = load_training_checkpoint(tmp_path / "part.pt")
    # Two steps at a tenth of the rate move the weights about a tenth as far (Adam's steps are
    # about lr each, the moment estimates being shared).
    start = part["modules"]["guide"]
    moved = {
        name: sum((v - start[k]).abs().sum() for k, v in weights(guide).items())
        for name, guide in resumed.items()
    }
    assert 0.05 < float(moved["slow.pt"] / moved["same.pt"]) < 0.2


def test_checkpoint_is_written_every_k_steps_atomically(tmp_path):
    steps_seen = []

    def callback(step, loss):
        if (tmp_path / "run.pt").exists():
            steps_seen.append((step, load_training_checkpoint(tmp_path / "run.pt")["step"]))

    train_guide(
        Conjugate(),
        make_guide(),
        simulated_batches,
        steps=7,
        checkpoint_every=3,
        checkpoint=tmp_path / "run.pt",
        callback=callback,
        progress=False,
    )
    # The callback runs before the step's checkpoint: it sees the previous multiple of 3.
    assert steps_seen == [(4, 3), (5, 3), (6, 3), (7, 6)]
    assert load_training_checkpoint(tmp_path / "run.pt")["step"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]  # no temporary files left


def test_callback_can_stop_training_and_a_checkpoint_is_written(tmp_path):
    result = train_guide(
        Conjugate(),
        make_guide(),
        simulated_batches,
        steps=50,
        checkpoint=tmp_path / "c.pt",
        checkpoint_every=100,
        callback=lambda step, loss: step == 4,
        progress=False,
    )
    assert result.steps == 4 and len(result.losses) == 4
    assert result.checkpoint == tmp_path / "c.pt"
    assert load_training_checkpoint(tmp_path / "c.pt")["step"] == 4


def test_exhausted_batches_stop_with_a_warning():
    data = [simulated_batches(i) for i in range(3)]
    with pytest.warns(UserWarning, match="ran out after 3 steps"):
        result = train_guide(Conjugate(), make_guide(), data, steps=10, progress=False)
    assert result.steps == 3


def test_resume_checks_the_file_and_the_modules(tmp_path):
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        train_guide(
            Conjugate(),
            make_guide(),
            simulated_batches,
            steps=2,
            resume=tmp_path / "missing.pt",
            progress=False,
        )
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        train_guide(
            Conjugate(),
            make_guide(),
            simulated_batches,
            steps=2,
            resume=tmp_path / "bad.pt",
            progress=False,
        )
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a probgraphics training checkpoint"):
        load_training_checkpoint(tmp_path / "other.pt")
    train_guide(
        Conjugate(),
        make_guide(),
        simulated_batches,
        steps=2,
        checkpoint=tmp_path / "ok.pt",
        progress=False,
    )
    extra = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="same program, guide and modules"):
        train_guide(
            Conjugate(),
            make_guide(),
            simulated_batches,
            steps=4,
            resume=tmp_path / "ok.pt",
            modules={"extra": extra},
            progress=False,
        )


# --------------------------------------------------------------------------------------------
# Isolation and bad input
# --------------------------------------------------------------------------------------------


def test_training_with_a_seed_leaves_the_callers_random_state_and_param_store_alone():
    pyro.clear_param_store()
    pyro.param("users_own", torch.tensor(7.0))
    guide = make_guide()
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    result = train_guide(Conjugate(), guide, simulated_batches, steps=3, seed=0, progress=False)
    got = (torch.rand(3), random.random(), np.random.rand())
    torch.testing.assert_close(got[0], expected[0])
    assert got[1:] == expected[1:]
    store = pyro.get_param_store()
    assert list(store.keys()) == ["users_own"] and float(store["users_own"].detach()) == 7.0
    assert isinstance(result, TrainResult) and result.params == {}
    pyro.clear_param_store()


def test_training_updates_the_guides_own_module_in_place():
    guide = make_guide()
    before = weights(guide)
    parameter = guide.encoder.linear.weight
    train_guide(Conjugate(), guide, simulated_batches, steps=3, progress=False)
    assert guide.encoder.linear.weight is parameter
    assert not torch.equal(before["encoder.linear.weight"], parameter.detach())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"loss": "wake"}, ValueError, "unknown loss 'wake'"),
        ({"optimizer": "adagrad"}, ValueError, "optimizer must be one of"),
        ({"lr": -1.0}, ValueError, "lr must be"),
        ({"steps": 0}, ValueError, "steps must be an int >= 1"),
        ({"observed": "photo"}, ValueError, "no sample site named 'photo'"),
        ({"modules": {"x": 3}}, TypeError, "must be an nn.Module"),
    ],
)
def test_bad_arguments_are_explained(kwargs, error, match):
    options = {"steps": 2, "progress": False, **kwargs}
    with pytest.raises(error, match=match):
        train_guide(Conjugate(), make_guide(), simulated_batches, **options)


def test_elbo_needs_observations_not_a_batch_size():
    with pytest.raises(ValueError, match="loss='sleep'"):
        train_guide(Conjugate(), make_guide(), 16, steps=2, progress=False)


@pytest.mark.parametrize(
    ("batch", "error", "match"),
    [
        (torch.zeros(4, 2), ValueError, r"shaped \(B, 3\)"),
        (torch.full((4, 3), math.nan), ValueError, "NaN"),
        ({"pixels": torch.zeros(4, 3)}, KeyError, "'image' or 'images'"),
        ("text", TypeError, "each batch must be"),
    ],
)
def test_bad_batches_are_explained(batch, error, match):
    with pytest.raises(error, match=match):
        train_guide(Conjugate(), make_guide(), [batch], steps=1, progress=False)


def test_a_diverging_loss_stops_with_advice():
    def nan_loss(model, guide, observation, **_):
        guide(observation)  # registers the encoder
        return torch.tensor(float("nan"), requires_grad=True)

    with pytest.raises(FloatingPointError, match="Lower the learning rate"):
        train_guide(
            Conjugate(), make_guide(), simulated_batches, steps=2, loss=nan_loss, progress=False
        )


def test_batch_fields_reach_callable_losses_as_keywords():
    seen = []

    def loss(model, guide, observation, *, tag, **_):
        seen.append(tag)
        return Trace_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, observation)

    batches = [{"images": simulated_batches(i), "tag": i} for i in range(3)]
    train_guide(Conjugate(), make_guide(), batches, steps=3, loss=loss, progress=False)
    assert seen == [0, 1, 2]
