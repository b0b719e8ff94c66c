"""mu-VAE networks (seed 004): shapes and ranges, latent clipping, the table 1 losses."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from probgraphics.nets import (
    AzimuthNet,
    MuVAE,
    MuVAEConfig,
    ShapeEncoder,
    Texturizer,
    ViewDiscriminator,
    VoxelDecoder,
    beta_vae_loss,
    elbo_loss,
    gaussian_kl,
    mu_vae_loss,
    reconstruction_error,
    search_azimuth,
)


def small_config(**overrides) -> MuVAEConfig:
    base = dict(
        encoder_channels=(4, 8),
        shape_code_size=6,
        decoder_channels=(8, 4),
        azimuth_latent_size=3,
        azimuth_hidden=8,
        texturizer_hidden=16,
    )
    return MuVAEConfig(**{**base, **overrides})


def test_config_validation():
    config = MuVAEConfig()
    assert config.voxel_size == 28 and config.decoder_base_size == 7
    assert config.encoder_sizes == (28, 14, 7, 4)
    with pytest.raises(ValueError, match="divisible by"):
        MuVAEConfig(voxel_size=30)
    with pytest.raises(ValueError, match="mean_bound"):
        MuVAEConfig(mean_bound=0.0)
    with pytest.raises(ValueError, match="texturizer must be True or False"):
        MuVAEConfig(texturizer=1)
    assert MuVAEConfig.from_dict(small_config(mean_bound=None).to_dict()) == small_config(
        mean_bound=None
    )


def test_voxel_decoder_outputs_28_cubed_occupancy_in_the_open_unit_interval():
    torch.manual_seed(0)
    decoder = VoxelDecoder(small_config())
    with torch.no_grad():
        grid = decoder(torch.randn(5, 6) * 3)
    assert grid.shape == (5, 28, 28, 28) and grid.dtype == torch.float32
    assert float(grid.min()) > 0.0 and float(grid.max()) < 1.0
    decoder.eval()
    with torch.no_grad():
        stacked = decoder(torch.randn(2, 3, 6))
    assert stacked.shape == (2, 3, 28, 28, 28)
    deconvolutions = [m for m in decoder.modules() if isinstance(m, torch.nn.ConvTranspose3d)]
    assert all(m.kernel_size == (3, 3, 3) and m.stride == (2, 2, 2) for m in deconvolutions)


def test_shape_encoder_latent_clipping():
    torch.manual_seed(1)
    images = torch.rand(4, 1, 28, 28)
    clipped = ShapeEncoder(small_config(mean_bound=0.5))
    # Blow up the heads so the bounds are reached.
    with torch.no_grad():
        clipped.mean_head.weight.mul_(1e3)
        clipped.scale_head.weight.mul_(1e3)
        mean, log_var = clipped(images)
    assert mean.shape == log_var.shape == (4, 6)
    assert float(mean.abs().max()) <= 0.5
    assert float(log_var.max()) <= 0.0  # sigma = sigmoid(raw) <= 1
    assert torch.isfinite(log_var).all()
    free = ShapeEncoder(small_config(mean_bound=None, bounded_std=False))
    free.load_state_dict(clipped.state_dict())
    with torch.no_grad():
        raw_mean, raw_log_var = free(images)
        torch.testing.assert_close(mean, 0.5 * torch.tanh(raw_mean / 0.5))
        torch.testing.assert_close(log_var, 2 * torch.nn.functional.logsigmoid(raw_log_var))
    convolutions = [m for m in clipped.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.kernel_size == (3, 3) and m.stride == (2, 2) for m in convolutions)


def test_azimuth_net_maps_any_latent_into_minus_pi_to_pi():
    torch.manual_seed(2)
    net = AzimuthNet(small_config())
    with torch.no_grad():
        net.hidden.weight.mul_(100.0)
        net.output.weight.mul_(100.0)
        latent = torch.randn(1000, 3) * 1e4
        azimuth = net(latent)
    assert azimuth.shape == (1000,)
    pi32 = torch.tensor(math.pi)  # pi rounded to float32 (a hair above math.pi) bounds tanh * pi
    assert bool(azimuth.min() >= -pi32) and bool(azimuth.max() <= pi32)
    # Saturated inputs reach both ends of the range.
    assert float(azimuth.max()) > 3.0 and float(azimuth.min()) < -3.0
    assert net(torch.zeros(2, 4, 3)).shape == (2, 4)


def test_texturizer_shapes_and_range():
    texturizer = Texturizer(small_config())
    with torch.no_grad():
        out = texturizer(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 1, 28, 28) and float(out.min()) > 0 and float(out.max()) < 1
    linear = [m for m in texturizer.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linear) == 2  # "a two layer fully connected neural network"


def test_mu_vae_forward_renders_the_decoded_grid_at_the_azimuth():
    voxel = pytest.importorskip(
        "probgraphics.render.voxel", reason="render.voxel (rotate/project) is not written yet"
    )
    torch.manual_seed(3)
    model = MuVAE(small_config()).eval()
    images = torch.rand(4, 1, 28, 28)
    latent = torch.randn(4, 3)
    with torch.no_grad():
        out = model(images, azimuth_latent=latent, sample=False)
        assert out.grid.shape == (4, 28, 28, 28)
        assert out.projection.shape == out.texture.shape == (4, 1, 28, 28)
        torch.testing.assert_close(out.shape_code, out.shape_mean)
        torch.testing.assert_close(out.azimuth, model.azimuth_net(latent))
        expected = voxel.project(voxel.rotate_about_vertical(out.grid, out.azimuth))
        torch.testing.assert_close(out.projection, expected)
        torch.testing.assert_close(out.texture, model.texturizer(out.projection))
        fixed = model(images, sample=False)
        torch.testing.assert_close(fixed.projection, voxel.project(fixed.grid))
        assert torch.equal(fixed.azimuth, torch.zeros(4))
    without = MuVAE(small_config(texturizer=False))
    assert without.texturizer is None
    with pytest.raises(ValueError, match="not both"):
        model(images, azimuth=torch.zeros(4), azimuth_latent=latent)


def test_azimuth_latent_receives_gradient_through_the_renderer():
    pytest.importorskip("probgraphics.render.voxel", reason="render.voxel is not written yet")
    torch.manual_seed(4)
    model = MuVAE(small_config())
    latent = torch.randn(2, 3, requires_grad=True)
    out = model(torch.rand(2, 1, 28, 28), azimuth_latent=latent)
    loss = mu_vae_loss(
        torch.rand(2, 1, 28, 28), (out.projection, out.texture), out.shape_mean, out.shape_log_var
    ).loss
    loss.backward()
    assert latent.grad is not None and float(latent.grad.abs().sum()) > 0


# --- losses (seed 004 table 1), hand-computed ------------------------------------------------

IMAGES = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]], [[[0.0, 0.0], [1.0, 1.0]]]])
PROJECTION = torch.tensor([[[[0.5, 0.0], [0.5, 0.0]]], [[[0.0, 1.0], [1.0, 1.0]]]])
TEXTURE = torch.tensor([[[[1.0, 1.0], [0.5, 0.5]]], [[[0.0, 0.0], [0.0, 1.0]]]])
MEAN = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
LOG_VAR = torch.tensor([[0.0, math.log(0.5)], [math.log(2.0), 0.0]])


def test_reconstruction_error_is_the_per_item_sum_of_squares_over_outputs():
    # Item 0: projection errors (0.5, 0, 0, 0.5) -> 0.25 + 0.25 = 0.5; texture (0, 1, 0, 0) -> 1.
    # Item 1: projection (0, 1, 0, 0) -> 1; texture (0, 0, 1, 0) -> 1.
    torch.testing.assert_close(reconstruction_error(IMAGES, PROJECTION), torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(
        reconstruction_error(IMAGES, (PROJECTION, TEXTURE)), torch.tensor([1.5, 2.0])
    )


def test_gaussian_kl_matches_hand_values_and_torch():
    # 0.5 * (mu^2 + sigma^2 - log sigma^2 - 1) per unit.
    item0 = 0.5 * (1 + 1 - 0 - 1) + 0.5 * (1 + 0.5 - math.log(0.5) - 1)
    item1 = 0.5 * (0.25 + 2 - math.log(2.0) - 1) + 0.5 * (4 + 1 - 0 - 1)
    torch.testing.assert_close(gaussian_kl(MEAN, LOG_VAR), torch.tensor([item0, item1]))
    reference = kl_divergence(Normal(MEAN, (0.5 * LOG_VAR).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(gaussian_kl(MEAN, LOG_VAR), reference)


def test_elbo_and_beta_vae_losses():
    kl = gaussian_kl(MEAN, LOG_VAR)
    reconstruction = (1.5 + 2.0) / 2
    terms = elbo_loss(IMAGES, (PROJECTION, TEXTURE), MEAN, LOG_VAR)
    torch.testing.assert_close(terms.reconstruction, torch.tensor(reconstruction))
    torch.testing.assert_close(terms.regularization, kl.mean())
    torch.testing.assert_close(terms.loss, reconstruction + kl.mean())
    beta = beta_vae_loss(IMAGES, (PROJECTION, TEXTURE), MEAN, LOG_VAR, beta=30.0)
    torch.testing.assert_close(beta.regularization, 30.0 * kl.mean())
    torch.testing.assert_close(beta.loss, reconstruction + 30.0 * kl.mean())


def test_mu_vae_loss_matches_table_1():
    # (1/B) |sum mu_S| = |1 - 1 + 0.5 + 2| / 2 = 1.25;
    # -(1/B) sum log sigma_S^2 = -(log 0.5 + log 2) / 2 = 0.
    terms = mu_vae_loss(IMAGES, PROJECTION, MEAN, LOG_VAR)
    torch.testing.assert_close(terms.reconstruction, torch.tensor(0.75))
    torch.testing.assert_close(terms.regularization, torch.tensor(1.25))
    torch.testing.assert_close(terms.loss, torch.tensor(2.0))
    azimuth_mean = torch.tensor([[-3.0], [1.0]])
    azimuth_log_var = torch.tensor([[math.log(0.25)], [math.log(0.5)]])
    with_azimuth = mu_vae_loss(IMAGES, PROJECTION, MEAN, LOG_VAR, azimuth_mean, azimuth_log_var)
    # + |(-3 + 1)| / 2 = 1 and - (log 0.25 + log 0.5) / 2 = 1.5 * log 2.
    expected = 1.25 + 1.0 + 1.5 * math.log(2.0)
    torch.testing.assert_close(with_azimuth.regularization, torch.tensor(expected))
    # The aggregate mean, not each code, is pulled to zero: opposite codes cost nothing.
    balanced = mu_vae_loss(IMAGES, PROJECTION, torch.tensor([[5.0], [-5.0]]), torch.zeros(2, 1))
    torch.testing.assert_close(balanced.regularization, torch.tensor(0.0))


def test_loss_inputs_are_validated():
    with pytest.raises(ValueError, match="images' shape"):
        elbo_loss(IMAGES, PROJECTION[:, :, :1], MEAN, LOG_VAR)
    with pytest.raises(ValueError, match="B = 2"):
        mu_vae_loss(IMAGES, PROJECTION, MEAN[:1], LOG_VAR[:1])
    with pytest.raises(ValueError, match="both azimuth_mean and azimuth_log_var"):
        mu_vae_loss(IMAGES, PROJECTION, MEAN, LOG_VAR, azimuth_mean=MEAN)
    with pytest.raises(ValueError, match="at least one reconstruction"):
        reconstruction_error(IMAGES, [])
    with pytest.raises(ValueError, match="beta"):
        beta_vae_loss(IMAGES, PROJECTION, MEAN, LOG_VAR, beta=float("inf"))


# --------------------------------------------------------------------------------------------
# Azimuth search and the novel-view discriminator
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("texturize", [False, True])
def test_search_azimuth_matches_a_brute_force_loop(texturize):
    torch.manual_seed(0)
    net = MuVAE(small_config(voxel_size=16, texturizer=True)).eval()
    grids = torch.rand(5, 16, 16, 16)
    images = torch.rand(5, 1, 16, 16)
    # One image is an exact render of its grid at candidate 3 of 8 (-pi + 3 * 2 pi / 8).
    images[2] = net.render(grids[2:3], torch.tensor([-math.pi + 0.75 * math.pi]))[0].detach()
    found = search_azimuth(net, grids, images, 8, texturize=texturize)
    for i in range(5):
        errors, shown = [], []
        for k in range(8):
            angle = torch.tensor([-math.pi + 2 * math.pi * k / 8])
            with torch.no_grad():
                projection = net.render(grids[i : i + 1], angle)
                image = net.texturizer(projection) if texturize else projection
            error = float((image - images[i]).square().mean())
            if texturize:
                error += float((projection - images[i]).square().mean())
            errors.append(error)
            shown.append(image[0])
        best = min(range(8), key=errors.__getitem__)
        assert float(found.angle[i]) == pytest.approx(-math.pi + 2 * math.pi * best / 8)
        torch.testing.assert_close(found.image[i], shown[best])
        expected = float((shown[best] - images[i]).square().mean())
        assert float(found.error[i]) == pytest.approx(expected, rel=1e-5)
    if not texturize:
        assert float(found.angle[2]) == pytest.approx(-math.pi + 0.75 * math.pi)
        assert float(found.error[2]) == pytest.approx(0.0, abs=1e-10)
    assert not found.angle.requires_grad


def test_search_azimuth_checks_its_input():
    net = MuVAE(small_config(voxel_size=16))
    with pytest.raises(ValueError, match="candidates"):
        search_azimuth(net, torch.rand(2, 16, 16, 16), torch.rand(2, 1, 16, 16), 0)
    with pytest.raises(ValueError, match=r"grids must be \(n, 16, 16, 16\)"):
        search_azimuth(net, torch.rand(2, 8, 8, 8), torch.rand(2, 1, 16, 16), 4)
    with pytest.raises(ValueError, match="to match the grids"):
        search_azimuth(net, torch.rand(2, 16, 16, 16), torch.rand(3, 1, 16, 16), 4)


def test_view_discriminator_gives_one_logit_per_image_and_validates():
    discriminator = ViewDiscriminator(16, channels=(4, 8))
    assert discriminator(torch.rand(3, 1, 16, 16)).shape == (3,)
    assert discriminator(torch.rand(2, 3, 1, 16, 16)).shape == (2, 3)
    with pytest.raises(ValueError, match=r"\(\*batch, 1, 16, 16\)"):
        discriminator(torch.rand(3, 1, 28, 28))
    with pytest.raises(ValueError, match="channels"):
        ViewDiscriminator(16, channels=(4, 0))
    with pytest.raises(ValueError, match="voxel_size"):
        ViewDiscriminator(2)
