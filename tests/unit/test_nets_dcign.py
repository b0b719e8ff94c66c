"""DC-IGN modules: config validation, shapes (64 and the paper's 150), code layout, training."""

from __future__ import annotations

import math

import pytest
import torch

from probgraphics.nets import (
    DCIGN,
    CodeLayout,
    DCIGNConfig,
    DCIGNDecoder,
    DCIGNEncoder,
    reparameterize,
)


def tiny_config(**overrides) -> DCIGNConfig:
    base = dict(
        image_size=32,
        channels=(4, 8),
        decoder_channels=(8, 4),
        padding=2,
        code_size=8,
        decoder_kernel=3,
    )
    return DCIGNConfig(**{**base, **overrides})


# --- config ----------------------------------------------------------------------------------


def test_paper_config_has_7200_flatten_and_figure_1_sizes():
    config = DCIGNConfig.paper()
    assert config.image_size == 150
    assert config.channels == (96, 64, 32)
    assert config.feature_sizes == (150, 73, 34, 15)
    assert config.flatten_size == 7200
    assert config.code_size == 200
    assert config.layout == CodeLayout.dcign(200)


def test_config_rejects_bad_fields_with_guidance():
    with pytest.raises(ValueError, match="too small"):
        DCIGNConfig(image_size=32)  # three unpadded 5x5 conv+pool stages do not fit in 32 px
    with pytest.raises(ValueError, match="odd"):
        tiny_config(decoder_kernel=4)
    with pytest.raises(ValueError, match="one decoder stage per encoder stage"):
        tiny_config(decoder_channels=(8,))
    with pytest.raises(ValueError, match="image_size must be an int >= 1"):
        tiny_config(image_size=0)
    with pytest.raises(ValueError, match="channels"):
        tiny_config(channels=(4, "8"))
    with pytest.raises(ValueError, match="code_size"):
        tiny_config(layout=CodeLayout.dcign(10))
    with pytest.raises(ValueError, match="layout"):
        tiny_config(code_size=3)  # no room for the default azimuth/elevation/light/intrinsic


def test_config_round_trips_through_a_plain_dict():
    layout = CodeLayout(8, {"azimuth": [0], "rest": range(1, 8)})
    config = tiny_config(layout=layout)
    plain = config.to_dict()
    assert plain["channels"] == [4, 8]
    assert plain["layout"] == {
        "code_size": 8,
        "groups": {"azimuth": [0], "rest": list(range(1, 8))},
    }
    assert DCIGNConfig.from_dict(plain) == config
    with pytest.raises(ValueError, match="unknown fields"):
        DCIGNConfig.from_dict({**plain, "dropout": 0.5})


# --- shapes ----------------------------------------------------------------------------------


def test_encoder_and_decoder_shapes_at_64():
    torch.manual_seed(0)
    config = DCIGNConfig(channels=(4, 4, 8), decoder_channels=(4, 4, 4), code_size=12)
    assert config.image_size == 64 and config.feature_sizes == (64, 30, 13, 4)
    encoder, decoder = DCIGNEncoder(config), DCIGNDecoder(config)
    mean, log_var = encoder(torch.rand(3, 1, 64, 64))
    assert mean.shape == log_var.shape == (3, 12)
    with torch.no_grad():
        images = decoder(mean)
    assert images.shape == (3, 1, 64, 64) and images.dtype == torch.float32
    assert float(images.min()) > 0.0 and float(images.max()) < 1.0


def test_paper_architecture_shapes_at_150():
    config = DCIGNConfig.paper()
    encoder = DCIGNEncoder(config)
    assert encoder.mean_head.in_features == 7200
    assert encoder.log_var_head.in_features == 7200
    mean, log_var = encoder(torch.rand(1, 1, 150, 150))
    assert mean.shape == log_var.shape == (1, 200)
    # The decoder's output shape only: build and run it on the meta device (no arithmetic).
    with torch.device("meta"):
        decoder = DCIGNDecoder(config)
        images = decoder(torch.zeros(2, 200))
    assert images.shape == (2, 1, 150, 150)
    assert [conv.out_channels for conv in decoder.stages] == [32, 64, 96]
    assert all(conv.kernel_size == (7, 7) for conv in decoder.stages)
    assert decoder.fully_connected.out_features == 7200


def test_any_leading_batch_shape_matches_the_flat_batch():
    torch.manual_seed(1)
    net = DCIGN(tiny_config()).eval()
    code = torch.randn(2, 3, 8)
    images = net.decode(code)
    assert images.shape == (2, 3, 1, 32, 32)
    torch.testing.assert_close(images.reshape(6, 1, 32, 32), net.decode(code.reshape(6, 8)))
    mean, _ = net.encode(images)
    assert mean.shape == (2, 3, 8)
    empty = net.decode(torch.zeros(0, 8))
    assert empty.shape == (0, 1, 32, 32)


def test_bad_inputs_say_what_was_expected():
    net = DCIGN(tiny_config())
    with pytest.raises(ValueError, match=r"\(\*batch, 1, 32, 32\).*\(2, 1, 30, 30\)"):
        net.encode(torch.rand(2, 1, 30, 30))
    with pytest.raises(TypeError, match="float64"):
        net.encode(torch.rand(2, 1, 32, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(\*batch, 8\)"):
        net.decode(torch.zeros(2, 7))
    with pytest.raises(TypeError, match="DCIGNConfig"):
        DCIGNEncoder({"image_size": 32})


# --- code layout -----------------------------------------------------------------------------


def test_dcign_layout_groups():
    layout = CodeLayout.dcign(code_size=200)
    assert layout.names == ("azimuth", "elevation", "light", "intrinsic")
    assert layout["azimuth"] == (0,) and layout["elevation"] == (1,) and layout["light"] == (2,)
    assert layout["intrinsic"] == tuple(range(3, 200))
    assert "light" in layout and "shape" not in layout and len(layout) == 4
    torch.testing.assert_close(layout.indices(["azimuth", "light"]), torch.tensor([0, 2]))
    mask = layout.mask("intrinsic")
    assert mask.dtype == torch.bool and int(mask.sum()) == 197 and not bool(mask[:3].any())
    with pytest.raises(KeyError, match="azimuth"):
        layout["shape"]


def test_layout_validation():
    with pytest.raises(ValueError, match="disjoint.*unit 1"):
        CodeLayout(4, {"a": [0, 1], "b": [1, 2]})
    with pytest.raises(ValueError, match="outside the code"):
        CodeLayout(4, {"a": [4]})
    with pytest.raises(ValueError, match="outside the code"):
        CodeLayout(4, {"a": [-1]})
    with pytest.raises(ValueError, match="empty"):
        CodeLayout(4, {"a": []})
    with pytest.raises(ValueError, match="non-int"):
        CodeLayout(4, {"a": [0.0]})
    with pytest.raises(ValueError, match="code_size >= 4"):
        CodeLayout.dcign(3)


def test_layout_serializes_and_compares_by_value():
    layout = CodeLayout(6, {"pose": torch.tensor([0, 1]), "rest": (2, 3, 4, 5)})
    plain = layout.to_dict()
    assert plain == {"code_size": 6, "groups": {"pose": [0, 1], "rest": [2, 3, 4, 5]}}
    again = CodeLayout.from_dict(plain)
    assert again == layout and hash(again) == hash(layout)
    assert CodeLayout(6, {"rest": (2, 3, 4, 5), "pose": [0, 1]}) != layout  # order is kept
    with pytest.raises(ValueError, match="from_dict expects"):
        CodeLayout.from_dict({"groups": {}})


# --- forward with clamping -------------------------------------------------------------------


def test_forward_clamps_inactive_groups_to_the_batch_mean():
    torch.manual_seed(2)
    net = DCIGN(tiny_config())
    images = torch.rand(5, 1, 32, 32)
    out = net(images, active="azimuth", sample=False)
    torch.testing.assert_close(out.mean, net.encode(images)[0])
    assert torch.equal(out.code[:, 0], out.mean[:, 0])
    torch.testing.assert_close(out.code[:, 1:], out.mean[:, 1:].mean(0, keepdim=True).expand(5, 7))
    unclamped = net(images, sample=False)
    torch.testing.assert_close(unclamped.code, unclamped.mean)
    two_groups = net(images, active=["azimuth", "light"], sample=False)
    assert torch.equal(two_groups.code[:, [0, 2]], two_groups.mean[:, [0, 2]])


def test_reparameterized_sample_moments_and_reproducibility():
    mean = torch.tensor([[1.0, -2.0]]).expand(20000, 2)
    log_var = torch.tensor([[0.0, math.log(0.25)]]).expand(20000, 2)
    sample = reparameterize(mean, log_var, torch.Generator().manual_seed(3))
    std = torch.tensor([1.0, 0.5])
    # Sample mean within 5 Monte Carlo standard errors; sample std within 5 of its own SE.
    standard_error = std / math.sqrt(20000)
    assert torch.all((sample.mean(0) - mean[0]).abs() < 5 * standard_error)
    assert torch.all((sample.std(0) - std).abs() < 5 * std / math.sqrt(2 * 20000))
    again = reparameterize(mean, log_var, torch.Generator().manual_seed(3))
    assert torch.equal(sample, again)
    with pytest.raises(ValueError, match="one shape"):
        reparameterize(torch.zeros(2, 3), torch.zeros(2, 4))


# --- training smoke test ---------------------------------------------------------------------


def test_a_few_optimizer_steps_reduce_the_reconstruction_loss():
    torch.manual_seed(4)
    net = DCIGN(
        DCIGNConfig(
            image_size=32,
            channels=(8, 16),
            decoder_channels=(16, 8),
            code_size=16,
            decoder_kernel=5,
        )
    )
    # Binary 2x2 block patterns: the decoder can only beat the best constant image (the batch's
    # per-pixel mean) if the code carries which pattern each image shows.
    coarse = (torch.rand(16, 1, 2, 2) > 0.5).float()
    images = torch.nn.functional.interpolate(coarse, size=(32, 32), mode="nearest")
    best_constant = float((images - images.mean(0)).square().mean())

    def reconstruction_loss() -> float:
        with torch.no_grad():
            return float((net(images, sample=False).reconstruction - images).square().mean())

    before = reconstruction_loss()
    optimizer = torch.optim.RMSprop(net.parameters(), lr=5e-4)  # the paper's optimizer and rate
    for _ in range(40):
        optimizer.zero_grad()
        out = net(images)
        loss = (out.reconstruction - images).square().sum((1, 2, 3)).mean()
        kl = 0.5 * (out.mean.square() + out.log_var.exp() - out.log_var - 1).sum(1).mean()
        (loss + kl).backward()
        optimizer.step()
    after = reconstruction_loss()
    assert before > 0.9 * best_constant  # an untrained net is no better than a constant image
    assert after < 0.5 * best_constant, (before, after, best_constant)
