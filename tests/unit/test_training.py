"""Paper procedures as SVI losses (DC-IGN clamped, mu-VAE), minibatches, recipes, evaluation."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

import probgraphics.training as training
from probgraphics.evaluation import (
    average_grid_iou,
    azimuth_error,
    evaluate_muvae,
    pearson,
    voxel_iou,
)
from probgraphics.inference.svi import _BatchedGuide, _BatchedModel, train_guide
from probgraphics.nets import DCIGN, DCIGNConfig, MuVAE, MuVAEConfig, gaussian_kl
from probgraphics.nets.guides import EncoderGuide
from probgraphics.nets.pretrained import model_card, pretrained
from probgraphics.programs.dcign import dcign
from probgraphics.training import DCIGNClampedLoss, MuVAEObjective, ShuffledBatches

TINY_DCIGN = DCIGNConfig(
    image_size=16, channels=(4,), decoder_channels=(4,), padding=2, code_size=8, decoder_kernel=3
)
TINY_MUVAE = MuVAEConfig(
    voxel_size=16,
    encoder_channels=(4, 8),
    shape_code_size=4,
    decoder_channels=(8, 4),
    azimuth_latent_size=2,
    azimuth_hidden=8,
    texturizer=True,
    texturizer_hidden=16,
)


def dcign_setup(noise: float = 0.7):
    torch.manual_seed(0)
    net = DCIGN(TINY_DCIGN)
    program = dcign(net, noise=noise)
    guide = EncoderGuide(net, program)
    model = _BatchedModel(program, "image", "batch", {"decoder": net.decoder})
    return net, program, guide, model, _BatchedGuide(guide)


# --------------------------------------------------------------------------------------------
# DC-IGN clamped procedure
# --------------------------------------------------------------------------------------------


def test_clamped_loss_gives_inactive_units_the_invariance_target_gradient(monkeypatch):
    net, _, _, model, guide = dcign_setup()
    captured = {}
    original = training.clamp_inactive

    def spy(code, active, scale, **kwargs):
        code.retain_grad()
        captured["code"] = code
        return original(code, active, scale, **kwargs)

    monkeypatch.setattr(training, "clamp_inactive", spy)
    scale = 0.25
    loss = DCIGNClampedLoss(net.layout, invariance_scale=scale)
    images = torch.rand(6, 1, 16, 16)
    loss(model, guide, images, factor="light").backward()
    code = captured["code"]
    inactive = torch.ones(8, dtype=torch.bool)
    inactive[list(net.layout["light"])] = False
    target = scale * (code - code.mean(0, keepdim=True))
    torch.testing.assert_close(code.grad[:, inactive], target[:, inactive].detach())
    # The active unit gets the decoder's (reconstruction) gradient, not the target.
    assert not torch.allclose(code.grad[:, ~inactive], target[:, ~inactive].detach())


def test_clamped_loss_equals_sgvb_on_the_clamped_code_with_closed_form_kl():
    """Reference: recon on the code with inactive units replaced by their (detached) batch mean,
    closed-form KL on the encoder's Gaussian, and the invariance penalty
    scale/2 * sum (z - mean)^2 over inactive units, whose gradient is the invariance target."""
    net, _, _, model, guide = dcign_setup()
    scale, noise, batch = 0.1, 0.7, 6
    loss_fn = DCIGNClampedLoss(net.layout, invariance_scale=scale)
    images = torch.rand(batch, 1, 16, 16)

    torch.manual_seed(5)
    value = loss_fn(model, guide, images, factor="intrinsic")
    value.backward()
    grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    net.zero_grad()

    torch.manual_seed(5)
    trace = poutine.trace(guide).get_trace(images)
    code = torch.cat([trace.nodes[name]["value"] for name in net.layout.names], dim=-1)
    active = net.layout.mask("intrinsic")
    decoder_input = torch.where(active, code, code.mean(0, keepdim=True).detach())
    log_likelihood = dist.Normal(net.decode(decoder_input), noise).log_prob(images).sum() / batch
    mean, log_var = net.encode(images)
    kl = gaussian_kl(mean, log_var).sum() / batch
    penalty = 0.5 * scale * (code - code.mean(0, keepdim=True))[:, ~active].square().sum()
    reference = kl - log_likelihood
    torch.testing.assert_close(value, reference, rtol=1e-5, atol=1e-3)
    (reference + penalty).backward()
    for name, p in net.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_clamped_loss_rejects_unknown_factors_and_maps_aliases():
    net = DCIGN(TINY_DCIGN)
    with pytest.raises(ValueError, match="not a code group"):
        DCIGNClampedLoss(net.layout).active_positions("identity")
    loss = DCIGNClampedLoss(net.layout, factor_groups={"pose": ["azimuth", "elevation"]})
    assert loss.active_positions("pose") == [0, 1]
    assert loss.active_positions("intrinsic") == list(range(3, 8))
    with pytest.raises(ValueError, match="not groups of the layout"):
        DCIGNClampedLoss(net.layout, factor_groups={"pose": ["yaw"]})
    with pytest.raises(ValueError, match="invariance_scale"):
        DCIGNClampedLoss(net.layout, invariance_scale=-1.0)


def test_dcign_procedure_trains_on_one_factor_batches_and_decreases_the_loss():
    from probgraphics.data import one_factor_batches
    from probgraphics.programs import face

    net, program, guide, _, _ = dcign_setup()
    source = one_factor_batches(face(resolution=16), 8, seed=0)
    pool = [next(source) for _ in range(4)]
    result = train_guide(
        program,
        guide,
        lambda step: pool[step % 4],
        steps=40,
        loss=DCIGNClampedLoss(net.layout),
        optimizer="rmsprop",
        lr=2e-3,
        modules={"decoder": net.decoder},
        seed=0,
        progress=False,
    )
    assert sum(result.losses[-8:]) < sum(result.losses[:8])


def test_dcign_procedure_resumes_exactly(tmp_path):
    from probgraphics.data import one_factor_batches
    from probgraphics.programs import face

    source = one_factor_batches(face(resolution=16), 4, seed=0)
    pool = [next(source) for _ in range(3)]

    def run(steps, path, resume=None, init_seed=0):
        torch.manual_seed(init_seed)
        net = DCIGN(TINY_DCIGN)
        program = dcign(net, noise=0.7)
        result = train_guide(
            program,
            EncoderGuide(net, program),
            lambda step: pool[step % 3],
            steps=steps,
            loss=DCIGNClampedLoss(net.layout),
            modules={"decoder": net.decoder},
            seed=2,
            checkpoint=path,
            resume=resume,
            progress=False,
        )
        return result, net

    whole, whole_net = run(6, tmp_path / "a.pt")
    run(3, tmp_path / "b.pt")
    resumed, resumed_net = run(6, tmp_path / "b.pt", resume=tmp_path / "b.pt", init_seed=1)
    assert resumed.losses == whole.losses
    for (name, a), (_, b) in zip(
        whole_net.state_dict().items(), resumed_net.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


# --------------------------------------------------------------------------------------------
# mu-VAE objectives
# --------------------------------------------------------------------------------------------


def muvae_setup(n: int = 32):
    from probgraphics.data import procedural_shapes
    from probgraphics.programs.voxel import voxel

    torch.manual_seed(0)
    net = MuVAE(TINY_MUVAE)
    program = voxel(net, texturizer=True)
    guide = EncoderGuide(net, program, site_layout={"shape": range(4)})
    shapes = procedural_shapes(n, resolution=16, seed=0)
    return net, program, guide, shapes


@pytest.mark.parametrize("objective", ["mu", "beta", "elbo"])
def test_muvae_objectives_train_and_decrease(objective):
    net, program, guide, shapes = muvae_setup()
    loss = MuVAEObjective(net, 32, objective=objective, beta=2.0)
    batches = ShuffledBatches(shapes.images, 16, seed=0)
    result = train_guide(
        program, guide, batches, steps=30, loss=loss, lr=3e-3, seed=0, progress=False
    )
    assert sum(result.losses[-6:]) < sum(result.losses[:6])
    assert result.params["azimuth_latent_mean"].shape == (32, 2)
    std = result.params["azimuth_latent_std"]
    assert bool((std > 0).all())
    if objective == "mu":
        assert bool((std < 1).all())


@pytest.mark.parametrize("azimuth", ["uniform", "fixed"])
def test_muvae_objective_without_per_image_latents_runs(azimuth):
    net, program, guide, shapes = muvae_setup()
    loss = MuVAEObjective(net, 32, azimuth=azimuth)
    result = train_guide(program, guide, shapes.images[:8], steps=2, loss=loss, progress=False)
    assert len(result.losses) == 2 and result.params == {}


def test_muvae_objective_checks_its_input():
    net, program, guide, shapes = muvae_setup()
    with pytest.raises(ValueError, match="needs each batch's `indices`"):
        train_guide(
            program, guide, shapes.images[:8], steps=1, loss=MuVAEObjective(net, 32), progress=False
        )
    unbounded = MuVAE(
        MuVAEConfig(
            voxel_size=16,
            encoder_channels=(4,),
            shape_code_size=4,
            decoder_channels=(4, 4),
            texturizer=False,
            bounded_std=False,
        )
    )
    with pytest.raises(ValueError, match="bounded_std=True"):
        MuVAEObjective(unbounded, 8, objective="mu")
    with pytest.raises(ValueError, match="objective must be one of"):
        MuVAEObjective(net, 8, objective="aae")
    with pytest.raises(ValueError, match="azimuth must be one of"):
        MuVAEObjective(net, 8, azimuth="random")
    with pytest.raises(ValueError, match="candidates must be an int >= 2"):
        MuVAEObjective(net, 8, azimuth="search", candidates=1)
    with pytest.raises(ValueError, match="novel_views must be a finite number >= 0"):
        MuVAEObjective(net, 8, novel_views=-1.0)
    with pytest.raises(ValueError, match="discriminator_lr must be a finite number > 0"):
        MuVAEObjective(net, 8, novel_views=1.0, discriminator_lr=0.0)
    with pytest.raises(ValueError, match="only with novel_views > 0"):
        MuVAEObjective(net, 8, discriminator=torch.nn.Linear(1, 1))
    with pytest.raises(TypeError, match="discriminator must be an nn.Module"):
        MuVAEObjective(net, 8, novel_views=1.0, discriminator="D")


def test_search_objective_renders_each_image_at_its_searched_angle(monkeypatch):
    net, program, guide, shapes = muvae_setup()
    seen = {}
    original = training.search_azimuth

    def spy(net_, grids, images, candidates, **kwargs):
        found = original(net_, grids, images, candidates, **kwargs)
        seen.update(grids=grids, images=images, candidates=candidates, angle=found.angle)
        return found

    monkeypatch.setattr(training, "search_azimuth", spy)
    rendered = []
    original_render = net.render
    monkeypatch.setattr(
        net,
        "render",
        lambda grid, azimuth=None: rendered.append(azimuth) or original_render(grid, azimuth),
    )
    loss = MuVAEObjective(net, 32, azimuth="search", candidates=6)
    value = loss(None, None, shapes.images[:8])
    assert seen["candidates"] == 6 and not seen["grids"].requires_grad
    # The search's own renders (6) come first, then the one the loss uses, at the found angles.
    assert len(rendered) == 7
    torch.testing.assert_close(rendered[-1], seen["angle"])
    assert value.requires_grad and set(loss.last_terms) == {"objective"}


def test_novel_view_term_and_discriminator_step_match_a_hand_written_reference():
    import copy

    net, _, _, shapes = muvae_setup()
    x = shapes.images[:8]
    loss = MuVAEObjective(net, 32, azimuth="search", candidates=4, novel_views=3.0)
    before = copy.deepcopy(loss.discriminator)
    reference_net = copy.deepcopy(net)
    torch.manual_seed(5)
    value = loss(None, None, x)

    # The reference: the same draws in the same order, the loss written out.
    torch.manual_seed(5)
    mean, log_var = reference_net.encode(x)
    grid = reference_net.decode(mean + (0.5 * log_var).exp() * torch.randn_like(mean))
    angle = training.search_azimuth(reference_net, grid.detach(), x, 4).angle
    projection = reference_net.render(grid, angle)
    objective = training.mu_vae_loss(
        x, [projection, reference_net.texturizer(projection)], mean, log_var
    ).loss
    novel = reference_net.render(grid, (torch.rand(8) * 2 - 1) * math.pi)
    fooling = torch.nn.functional.softplus(-before(novel)).mean()
    expected = objective + 3.0 * fooling
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(loss.last_terms["novel_view"], fooling.detach())

    # The network's gradient is that of the written-out loss; none of it reaches D.
    d_grads = [p.grad.clone() for p in loss.discriminator.parameters()]
    value.backward()
    for p, g in zip(loss.discriminator.parameters(), d_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
    before_grads = torch.autograd.grad(
        expected, list(reference_net.parameters()), allow_unused=True
    )
    for (name, p), g in zip(net.named_parameters(), before_grads, strict=True):
        if g is None:
            assert p.grad is None or not bool(p.grad.any()), name
        else:
            torch.testing.assert_close(p.grad, g, msg=name)

    # D took one Adam step on L_D of the same renders, which sent no gradient to the network.
    optimizer = torch.optim.Adam(before.parameters(), lr=2e-4, betas=(0.5, 0.999))
    softplus = torch.nn.functional.softplus
    d_loss = softplus(-before(x)).mean() + softplus(before(novel.detach())).mean()
    optimizer.zero_grad()
    d_loss.backward()
    optimizer.step()
    torch.testing.assert_close(loss.last_terms["discriminator"], d_loss.detach())
    for (name, a), b in zip(
        loss.discriminator.named_parameters(), before.parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)


def test_novel_view_objective_trains_and_resumes_with_its_discriminator(tmp_path):
    _, _, _, shapes = muvae_setup()
    batches = ShuffledBatches(shapes.images, 16, seed=0)

    def run(steps, path, resume=None):
        net, program, guide, _ = muvae_setup()
        loss = MuVAEObjective(net, 32, azimuth="search", candidates=4, novel_views=1.0)
        result = train_guide(
            program,
            guide,
            batches,
            steps=steps,
            loss=loss,
            lr=3e-3,
            # As the recipe does, so the checkpoint keeps the batch-norm statistics too.
            modules={"muvae": net},
            seed=0,
            checkpoint=path,
            resume=resume,
            progress=False,
        )
        return result, net, loss

    whole, whole_net, whole_loss = run(30, tmp_path / "a.pt")
    assert sum(whole.losses[-6:]) < sum(whole.losses[:6])
    run(12, tmp_path / "b.pt")
    resumed, resumed_net, resumed_loss = run(30, tmp_path / "b.pt", resume=tmp_path / "b.pt")
    assert resumed.losses == whole.losses
    for module_a, module_b in (
        (whole_net, resumed_net),
        (whole_loss.discriminator, resumed_loss.discriminator),
    ):
        for (name, a), b in zip(
            module_a.state_dict().items(), module_b.state_dict().values(), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)

    # A checkpoint without a discriminator cannot resume a run that trains one.
    net, program, guide, _ = muvae_setup()
    train_guide(
        program,
        guide,
        batches,
        steps=2,
        loss=MuVAEObjective(net, 32, azimuth="search"),
        checkpoint=tmp_path / "c.pt",
        progress=False,
    )
    with pytest.raises(ValueError, match="loss state does not fit"):
        train_guide(
            program,
            guide,
            batches,
            steps=4,
            loss=MuVAEObjective(net, 32, azimuth="search", novel_views=1.0),
            resume=tmp_path / "c.pt",
            progress=False,
        )


def test_uniform_azimuth_fit_makes_the_latent_prior_uniform():
    net = MuVAE(TINY_MUVAE)
    fit = training.fit_uniform_azimuth_net(net.azimuth_net, seed=0)
    generator = torch.Generator().manual_seed(123)
    n = 20_000
    with torch.no_grad():
        angles = net.azimuth_net(torch.randn(n, 2, generator=generator)).double()
    ordered = ((angles.sort().values + math.pi) / (2 * math.pi)).numpy()
    ks = float(np.max(np.maximum(np.arange(1, n + 1) / n - ordered, ordered - np.arange(n) / n)))
    # Kolmogorov-Smirnov critical value at level 0.001 is 1.95 / sqrt(n); we allow 0.01 more for
    # the least-squares fit's own error (a tanh net approximating pi * erf).
    assert ks < 1.95 / math.sqrt(n) + 0.01
    assert fit["max_quantile_gap"] < 1.95 / math.sqrt(10_000) + 0.01
    assert fit["rmse_rad"] < 0.1


# --------------------------------------------------------------------------------------------
# Minibatches of a fixed set
# --------------------------------------------------------------------------------------------


def test_shuffled_batches_cover_each_epoch_once_and_are_a_function_of_the_step():
    images = torch.arange(10.0).reshape(10, 1, 1, 1)
    batches = ShuffledBatches(images, 3, seed=4)
    assert len(batches) == 3
    for epoch in range(2):
        seen = torch.cat([batches(epoch * 3 + k)["indices"] for k in range(3)])
        assert len(set(seen.tolist())) == 9  # 9 distinct images; one dropped per epoch
    fresh = ShuffledBatches(images, 3, seed=4)
    for step in (5, 0, 7):
        torch.testing.assert_close(fresh(step)["indices"], batches(step)["indices"])
        torch.testing.assert_close(
            fresh(step)["images"].reshape(-1), fresh(step)["indices"].float()
        )
    assert not torch.equal(batches(0)["indices"], batches(3)["indices"])
    with pytest.raises(ValueError, match="batch_size"):
        ShuffledBatches(images, 11, seed=0)


def test_stepwise_factor_batches_follow_the_ratio_and_replay_by_step():
    from probgraphics.data import one_factor_batches
    from probgraphics.programs import face

    source = one_factor_batches(face(resolution=16), 4, seed=0)
    batches = training.StepwiseFactorBatches(source, seed=3)
    fresh = training.StepwiseFactorBatches(source, seed=3)
    late = fresh(7)  # reached without rendering steps 0..6
    torch.testing.assert_close(late.images, batches(7).images, rtol=0, atol=0)
    assert late.factor == batches.plan(7)[0]
    n = 1300
    factors = [batches.plan(step)[0] for step in range(n)]
    share = factors.count("intrinsic") / n
    # Ratio 1:1:1:10 -> p = 10/13; tolerance 5 binomial standard errors.
    p = 10 / 13
    assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n)
    assert set(factors) == {"azimuth", "elevation", "light", "intrinsic"}


# --------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------


def test_dcign_recipe_writes_weights_and_model_card_loadable_by_name(tmp_path):
    out = tmp_path / "dcign-face-64.pt"
    result = training.RECIPES["dcign-face-64"](
        out,
        steps=3,
        seed=1,
        batch_size=4,
        progress=False,
        config=DCIGNConfig(
            image_size=16,
            channels=(4,),
            decoder_channels=(4,),
            padding=2,
            code_size=8,
            decoder_kernel=3,
        ),
        evaluation_scenes=8,
        evaluation_random_scenes=6,
        command="probgraphics train dcign-face-64 --steps 3",
    )
    assert result.steps == 3 and len(result.losses) == 3
    card = json.loads((tmp_path / "dcign-face-64.json").read_text())
    assert card["command"] == "probgraphics train dcign-face-64 --steps 3"
    assert card["steps"] == 3 and card["config"]["channels"] == [4]
    evaluation = card["evaluation"]
    assert (evaluation["scenes"], evaluation["random_scenes"]) == (8, 6)
    for mode in ("one_factor", "within_batch", "random", "random_image"):
        correlations = evaluation[f"correlation_{mode}"]
        assert set(correlations) == {"azimuth", "elevation", "light"}
        assert all(-1 <= r <= 1 for r in correlations.values() if not isinstance(r, str))
    assert card["evaluation"]["reconstruction_mse"] > 0
    assert (tmp_path / "dcign-face-64.md").read_text().startswith("# dcign-face-64")
    assert model_card("dcign-face-64", tmp_path)["steps"] == 3
    summary = pretrained("dcign-face-64", directory=tmp_path)
    assert summary(torch.rand(2, 1, 16, 16)).shape == (2, 8)


def test_dcign_recipe_starts_from_given_weights_and_trains_on_noisy_images(tmp_path):
    from probgraphics.nets import load_checkpoint

    tiny = dict(steps=1, seed=1, batch_size=4, progress=False, config=TINY_DCIGN, evaluate=False)
    first = tmp_path / "first.pt"
    training.dcign_face_64(first, **tiny)
    start = load_checkpoint(first)[0].state_dict()
    # One Adam step moves each weight by about lr: with lr 1e-9 the run ends where it started.
    second = tmp_path / "second.pt"
    training.dcign_face_64(second, **{**tiny, "seed": 2}, init=first, images="image", lr=1e-9)
    for name, value in load_checkpoint(second)[0].state_dict().items():
        torch.testing.assert_close(value, start[name], rtol=0, atol=1e-7, msg=name)
    card = json.loads((tmp_path / "second.json").read_text())["training"]
    assert str(first) in card["initialization"] and "images='image'" in card["data"]
    # A fresh network is far from the first run's weights.
    third = tmp_path / "third.pt"
    training.dcign_face_64(third, **{**tiny, "seed": 2}, lr=1e-9)
    moved = load_checkpoint(third)[0].state_dict()
    assert any((moved[name] - start[name]).abs().max() > 1e-3 for name in start)
    other = dataclasses.replace(TINY_DCIGN, code_size=9, layout=None)
    with pytest.raises(ValueError, match="same network"):
        training.dcign_face_64(tmp_path / "x.pt", **{**tiny, "config": other}, init=first)
    with pytest.raises(ValueError, match="images must be"):
        training.dcign_face_64(tmp_path / "x.pt", **tiny, images="noisy")


def test_noisy_training_batches_are_the_renders_plus_the_programs_noise():
    from probgraphics.data import one_factor_batches
    from probgraphics.programs import face

    program = face(resolution=16)
    clean = one_factor_batches(program, 6, seed=3, images="render").draw("azimuth", 11)
    noisy = one_factor_batches(program, 6, seed=3, images="image").draw("azimuth", 11)
    torch.testing.assert_close(noisy.latents["azimuth"], clean.latents["azimuth"])
    residual = noisy.images - clean.images
    assert abs(float(residual.std()) - program.noise) < 0.1 * program.noise


def train_tiny_muvae(out, **options):
    """The registered muvae-shapes recipe, 2 steps on 16 tiny shapes, seed 0."""
    training.RECIPES["muvae-shapes"](
        out,
        steps=2,
        seed=0,
        batch_size=8,
        progress=False,
        n_shapes=16,
        config=TINY_MUVAE,
        **options,
    )


def test_muvae_recipe_writes_weights_with_the_azimuth_parameters(tmp_path):
    from probgraphics.nets import load_checkpoint

    out = tmp_path / "muvae-shapes.pt"
    train_tiny_muvae(out, evaluation_shapes=8, azimuth="latent", novel_views=0.0)
    module, _, extra = load_checkpoint(out, expected_kind="muvae")
    assert isinstance(module, MuVAE)
    assert extra["azimuth_latent_mean"].shape == (16, 2)
    card = json.loads((tmp_path / "muvae-shapes.json").read_text())
    assert 0 <= card["evaluation"]["held_out"]["iou_global_rotation"] <= 1
    assert card["evaluation"]["training"]["azimuth_source"] == "latent"
    assert "azimuth" not in card["evaluation"]["held_out"]


def test_muvae_recipe_defaults_search_angles_with_novel_views(tmp_path):
    from probgraphics.nets import load_checkpoint

    out = tmp_path / "muvae-shapes.pt"
    train_tiny_muvae(out, evaluation_shapes=8)
    module, _, extra = load_checkpoint(out, expected_kind="muvae")
    assert (extra["azimuth"], extra["novel_views"]) == ("search", 10.0)
    assert "azimuth_latent_mean" not in extra
    card = json.loads((tmp_path / "muvae-shapes.json").read_text())
    evaluation = card["evaluation"]
    for split in ("held_out", "training"):
        assert evaluation[split]["azimuth_source"] == "search"
        assert 0 <= evaluation[split]["azimuth"]["mean_abs_deg"] <= 180
    assert evaluation["azimuth_net_uniform_fit"]["rmse_rad"] < 0.2
    assert "novel_views=10.0" in card["training"]["loss"]


def test_muvae_recipe_depends_on_its_seed_not_on_the_callers_random_state(tmp_path):
    from probgraphics.nets import load_checkpoint

    weights = []
    for caller_seed in (1, 2):
        torch.manual_seed(caller_seed)
        out = tmp_path / f"run{caller_seed}.pt"
        train_tiny_muvae(out, evaluate=False)
        weights.append(load_checkpoint(out)[0].state_dict())
    for name, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][name], rtol=0, atol=0, msg=name)


def test_recipes_validate_their_arguments(tmp_path):
    with pytest.raises(ValueError, match="steps"):
        training.dcign_face_64(tmp_path / "x.pt", steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        training.dcign_face_64(tmp_path / "x.pt", steps=1, batch_size=1)
    with pytest.raises(ValueError, match="n_shapes"):
        training.muvae_shapes(tmp_path / "x.pt", steps=1, batch_size=8, n_shapes=4)
    with pytest.raises(ValueError, match="azimuth must be 'latent' or 'search'"):
        training.muvae_shapes(tmp_path / "x.pt", steps=1, batch_size=8, azimuth="fixed")


# --------------------------------------------------------------------------------------------
# Evaluation helpers
# --------------------------------------------------------------------------------------------


def test_pearson_matches_numpy():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, generator=generator)
    y = 0.5 * x + torch.randn(50, generator=generator)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x.numpy(), y.numpy())[0, 1], abs=1e-12)
    assert math.isnan(pearson(torch.ones(5), torch.arange(5.0)))


def test_factor_correlations_show_the_encoder_renders_or_noisy_images():
    from probgraphics.data import random_scenes
    from probgraphics.evaluation import factor_correlations
    from probgraphics.nets.summaries import EncoderSummary
    from probgraphics.programs import face

    torch.manual_seed(0)
    net = DCIGN(TINY_DCIGN)  # units 0, 1, 2: azimuth, elevation, light
    summary = EncoderSummary(net)
    program = face(resolution=16)
    scenes = random_scenes(program, 30, seed=5)
    measured = {}
    for images in ("render", "image"):
        measured[images] = factor_correlations(
            summary, program, n=30, seed=5, mode="random", images=images
        )
        features = summary(scenes[images])
        for k, factor in enumerate(("azimuth", "elevation", "light")):
            expected = pearson(features[:, k], scenes[factor])
            assert measured[images][factor] == pytest.approx(expected, abs=1e-12)
    assert measured["render"] != measured["image"]
    one_factor = factor_correlations(summary, program, n=8, seed=5, batch_size=4, images="image")
    assert set(one_factor) == {"azimuth", "elevation", "light"}
    with pytest.raises(ValueError, match="images must be"):
        factor_correlations(summary, program, n=8, mode="random", images="noisy")


def test_azimuth_error_fits_a_global_offset_and_mirror():
    true = torch.linspace(-3.0, 3.0, 40)
    shifted = torch.remainder(true + 1.0 + math.pi, 2 * math.pi) - math.pi
    fit = azimuth_error(shifted, true)
    assert fit["mean_abs_deg"] < 1e-3 and fit["offset_deg"] == pytest.approx(57.2958, abs=1e-2)
    assert not fit["mirrored"]
    assert azimuth_error(-true + 0.3, true)["mirrored"]
    assert azimuth_error(-true + 0.3, true)["mean_abs_deg"] < 1e-3


def test_voxel_iou_counts_occupied_voxels():
    a = torch.zeros(2, 4, 4, 4)
    b = torch.zeros(2, 4, 4, 4)
    a[0, :2] = 1.0  # 32 voxels
    b[0, 1:3] = 1.0  # 32 voxels, 16 shared
    torch.testing.assert_close(voxel_iou(a, b), torch.tensor([16 / 48, 1.0]))


def test_evaluate_muvae_reports_iou_and_azimuth_error():
    net, _, _, shapes = muvae_setup(8)
    result = evaluate_muvae(net, shapes, azimuth_latent_mean=torch.zeros(8, 2), rotations=4)
    assert 0 <= result["iou"] <= result["iou_global_rotation"] <= 1
    assert set(result["iou_per_class"]) <= set(shapes.classes)
    assert result["azimuth"]["mean_abs_deg"] >= 0
    # One latent for every image: one angle, the collapsed case.
    assert result["learned_angle_resultant"] == pytest.approx(1.0, abs=1e-9)
    # Latents spread so that the azimuth net's angles are too: the resultant is well below 1.
    spread = torch.linspace(-3, 3, 8)[:, None].expand(8, 2)
    with torch.no_grad():
        angles = net.azimuth_net(spread)
    values = [float(a) for a in angles]
    expected = math.hypot(
        sum(math.cos(a) for a in values) / 8, sum(math.sin(a) for a in values) / 8
    )
    assert expected < 0.99
    result = evaluate_muvae(net, shapes, azimuth_latent_mean=spread, rotations=4)
    assert result["learned_angle_resultant"] == pytest.approx(expected, abs=1e-9)


# --------------------------------------------------------------------------------------------
# The face program's amortized guide (sleep loss)
# --------------------------------------------------------------------------------------------

TINY_FACE_GUIDE = DCIGNConfig(
    image_size=16,
    channels=(4,),
    decoder_channels=(4,),
    padding=2,
    code_size=406,
    decoder_kernel=3,
)


def test_face_site_layout_is_the_face_programs_latents_in_order():
    from probgraphics.programs import face

    layout = training.site_code_layout(face(resolution=16))
    assert layout == training.FACE_SITE_LAYOUT
    assert training.FACE_GUIDE_64.layout == layout and training.FACE_GUIDE_64.code_size == 406


def test_face_guide_recipe_round_trips_through_load_guide_and_infer(tmp_path):
    import probgraphics as pg
    from probgraphics.nets import load_checkpoint
    from probgraphics.nets.dcign import DCIGNEncoder
    from probgraphics.nets.guides import load_guide
    from probgraphics.programs import face

    out = tmp_path / "face-guide-64.pt"
    result = training.RECIPES["face-guide-64"](
        out,
        steps=3,
        seed=1,
        batch_size=4,
        progress=False,
        config=TINY_FACE_GUIDE,
        evaluation_scenes=8,
        command="probgraphics train face-guide-64 --steps 3",
    )
    assert result.steps == 3 and all(math.isfinite(v) for v in result.losses)
    module, config, extra = load_checkpoint(out, expected_kind="dcign-encoder")
    program = face(resolution=16)
    expected = training.site_code_layout(program)
    assert isinstance(module, DCIGNEncoder) and config.layout == expected
    assert extra["site_layout"] == {name: list(units) for name, units in expected.groups.items()}
    # Trained: the weights moved from the recipe's seeded initialization.
    torch.manual_seed(1)
    initial = training.initialize_encoder(DCIGNEncoder(config))
    assert not torch.equal(initial.mean_head.weight, module.mean_head.weight)

    # By path and by name (a folder of bundled weights), mapped to the program's sites.
    for source, directory in ((out, None), ("face-guide-64", tmp_path)):
        guide = load_guide(source, program, directory=directory)
        assert guide.sites == ("shape", "texture", "azimuth", "elevation", "light", "camera")
        assert guide.site_layout == dict(expected.groups)
    image = pg.programs.simulate(program, seed=3)["image"]
    with torch.no_grad():
        torch.testing.assert_close(
            guide.point_estimate(image[None])["shape"][0], module(image[None])[0][0, :200]
        )
    posterior = pg.infer(program, image, method="guide", guide=guide, chains=2, draws=5, seed=0)
    assert posterior.samples["azimuth"].shape == (2, 5)
    assert bool((posterior.samples["azimuth"].abs() < 90).all())

    card = json.loads((tmp_path / "face-guide-64.json").read_text())
    assert card["recipe"] == "face-guide-64" and card["steps"] == 3
    assert card["command"] == "probgraphics train face-guide-64 --steps 3"
    for angle in ("azimuth", "elevation", "light"):
        measured = card["evaluation"][angle]
        assert -1 <= measured["correlation"] <= 1
        assert 0 <= measured["rmse_deg"] <= 180 and 0 <= measured["coverage_90"] <= 1
    markdown = (tmp_path / "face-guide-64.md").read_text()
    assert markdown.startswith("# face-guide-64")
    # The card's sections, written compactly (scalar lists on one line), read back as JSON.
    blocks = [block.split("\n```")[0] for block in markdown.split("```json\n")[1:]]
    assert [json.loads(block) for block in blocks] == [
        card["evaluation"],
        card["training"],
        card["config"],
    ]
    assert max(len(block.splitlines()) for block in blocks) < 60


def test_face_guide_sleep_training_decreases_the_loss(tmp_path):
    """40 steps of 16 scenes: the per-step loss has a standard deviation of about 3 nats (the
    400 shape and texture units), so the mean of 10 steps about 1; the guide learning the
    angles' and camera's marginals and more removes 6-10 nats (measured with seeds 0-2)."""
    result = training.face_guide_64(
        tmp_path / "guide.pt",
        steps=40,
        seed=0,
        batch_size=16,
        lr=1e-2,
        progress=False,
        config=TINY_FACE_GUIDE,
        evaluate=False,
    )
    losses = torch.tensor(result.losses)
    assert bool(torch.isfinite(losses).all())
    assert float(losses[-10:].mean()) < float(losses[:10].mean()) - 3.0


def test_face_guide_recipe_validates_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="code_size=406"):
        training.face_guide_64(tmp_path / "x.pt", steps=1, config=TINY_DCIGN)
    with pytest.raises(ValueError, match="lr"):
        training.face_guide_64(tmp_path / "x.pt", steps=1, lr=0.0)
    with pytest.raises(ValueError, match="steps"):
        training.face_guide_64(tmp_path / "x.pt", steps=0)


class _ConstantEncoder(torch.nn.Module):
    """Images -> the same (mean, log_var) for every image, except that ``slope`` times the
    image's mean intensity is added to every mean unit."""

    def __init__(self, log_var: float, slope: float = 0.0) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(float(slope)))
        self.log_var = float(log_var)

    def forward(self, images):
        level = self.weight * images.mean(dim=(1, 2, 3))
        mean = level[:, None].expand(images.shape[0], 406)
        return mean, torch.full_like(mean, self.log_var)


def test_evaluate_face_guide_matches_a_direct_computation():
    """A guide with (almost) no spread: its posterior mean is its point estimate, so the
    correlations and RMSEs must be those of the point estimate against the simulated truth."""
    from probgraphics.programs import face
    from probgraphics.programs.simulate import simulate

    program = face(resolution=16)
    guide = EncoderGuide(_ConstantEncoder(log_var=-18.0, slope=20.0), program)
    result = training.evaluate_face_guide(guide, program, n=40, seed=5, num_samples=8)
    scenes = simulate(program, 40, seed=5)
    estimate = guide.point_estimate(scenes["image"])
    for angle in ("azimuth", "elevation", "light"):
        truth, mean = scenes[angle].double(), estimate[angle].double()
        assert result[angle]["correlation"] == pytest.approx(pearson(mean, truth), abs=1e-4)
        rmse = float((mean - truth).square().mean().sqrt())
        assert result[angle]["rmse_deg"] == pytest.approx(rmse, rel=1e-4)
        assert result[angle]["rmse_deg_predicting_the_mean"] == pytest.approx(
            float(truth.std(unbiased=False)), rel=1e-9
        )
        assert result[angle]["mean_posterior_std_deg"] < 0.05
    shape_r2 = 1 - (estimate["shape"] - scenes["shape"]).square().mean(0) / scenes["shape"].var(
        0, unbiased=False
    )
    assert result["shape"]["mean_r2"] == pytest.approx(float(shape_r2.mean()), rel=1e-4)
    with pytest.raises(ValueError, match="num_samples"):
        training.evaluate_face_guide(guide, program, n=4, num_samples=1)


def test_evaluate_face_guide_coverage_of_a_prior_like_guide():
    """q = N(0, 1) pushed through the sigmoid onto (-90, 90) for every image: its central 90%
    interval is +-(180 sigmoid(1.645) - 90) = +-60.8 degrees, which holds a uniform true angle
    with probability 60.8 / 90 = 0.676; pooled over the three angles of 300 scenes (900
    Bernoulli draws, standard error 0.016), within 5 standard errors. Its standard deviation is
    that of 180 sigmoid(u) - 90, u ~ N(0, 1) (a 2e5-draw reference)."""
    from probgraphics.programs import face

    program = face(resolution=16)
    guide = EncoderGuide(_ConstantEncoder(log_var=0.0), program)
    result = training.evaluate_face_guide(guide, program, n=300, seed=7, num_samples=400)
    half_width = 180 * torch.sigmoid(torch.tensor(1.6449)).item() - 90
    p = half_width / 90
    pooled = sum(result[a]["coverage_90"] for a in ("azimuth", "elevation", "light")) / 3
    assert abs(pooled - p) < 5 * math.sqrt(p * (1 - p) / 900)
    reference = (
        180 * torch.sigmoid(torch.randn(200_000, generator=torch.Generator().manual_seed(0))) - 90
    ).std()
    for angle in ("azimuth", "elevation", "light"):
        assert result[angle]["mean_posterior_std_deg"] == pytest.approx(float(reference), rel=0.03)


def test_average_grid_iou_thresholds_the_reference_mean_at_its_best_level():
    from types import SimpleNamespace

    small = torch.zeros(8, 8, 8)
    small[2:4, 2:4, 2:4] = 1  # 8 voxels
    large = torch.zeros(8, 8, 8)
    large[1:5, 1:5, 1:5] = 1  # 64 voxels, containing the small cube
    # Mean of {small, small, large}: 1 on the small cube, 1/3 on the rest of the large one.
    # Levels below 1/3 predict the large cube (mean IoU (2/8 + 1)/3 on the reference), levels
    # from 0.35 the small one ((2 + 1/8)/3), which wins.
    reference = SimpleNamespace(grids=torch.stack([small, small, large]))
    shapes = SimpleNamespace(grids=torch.stack([large, small]))
    per_item, threshold = average_grid_iou(reference, shapes)
    assert threshold == 0.35
    torch.testing.assert_close(per_item, torch.tensor([8 / 64, 1.0]))
