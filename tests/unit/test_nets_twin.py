"""Twin-tailed network (seed 002): shapes, spatial-transformer down-sampling, gradient blocking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from probgraphics.nets import (
    ImageDecoder,
    SpatialTransformerDownsample,
    TwinConfig,
    TwinEncoder,
    TwinTailed,
    VolumeDecoder,
)


def small_config(**overrides) -> TwinConfig:
    base = dict(
        image_size=16,
        in_channels=3,
        encoder_channels=(4, 6, 8),
        localisation_channels=4,
        encoder_hidden=12,
        shape_code_size=5,
        transformation_code_size=3,
        volume_size=8,
        volume_channels=(6, 4),
        image_channels=(8, 6, 4),
    )
    return TwinConfig(**{**base, **overrides})


def test_paper_defaults_and_validation():
    config = TwinConfig()
    assert (config.image_size, config.volume_size) == (80, 80)
    assert (config.shape_code_size, config.transformation_code_size, config.code_size) == (
        185,
        15,
        200,
    )
    assert config.encoder_hidden == 3000 and config.block_shape_gradient
    with pytest.raises(ValueError, match="multiple of 8"):
        small_config(image_size=20)
    with pytest.raises(ValueError, match="divisible"):
        small_config(volume_size=10)
    with pytest.raises(ValueError, match="3 entries"):
        small_config(encoder_channels=(4, 4))
    with pytest.raises(ValueError, match="odd"):
        small_config(kernel_size=4)
    assert TwinConfig.from_dict(small_config().to_dict()) == small_config()


def test_output_shapes_and_switches():
    torch.manual_seed(0)
    net = TwinTailed(small_config())
    out = net(torch.rand(4, 3, 16, 16))
    assert out.shape_code.shape == (4, 5) and out.transformation_code.shape == (4, 3)
    assert out.volume.shape == (4, 8, 8, 8) and out.image.shape == (4, 3, 16, 16)
    volume_only = net(torch.rand(2, 3, 16, 16), image=False)
    assert volume_only.image is None and volume_only.volume.shape == (2, 8, 8, 8)
    image_only = net(torch.rand(2, 3, 16, 16), volume=False)
    assert image_only.volume is None and image_only.image.shape == (2, 3, 16, 16)
    net.eval()
    with torch.no_grad():
        stacked = net(torch.rand(2, 3, 3, 16, 16))
    assert stacked.volume.shape == (2, 3, 8, 8, 8) and stacked.image.shape == (2, 3, 3, 16, 16)
    no_hidden = TwinEncoder(small_config(encoder_hidden=0))
    assert isinstance(no_hidden.hidden, torch.nn.Identity)


def test_image_decoder_sends_exactly_zero_gradient_into_the_shape_code():
    torch.manual_seed(1)
    config = small_config()
    decoder = ImageDecoder(config)
    shape_code = torch.randn(3, 5, requires_grad=True)
    transformation_code = torch.randn(3, 3, requires_grad=True)
    image = decoder(shape_code, transformation_code)
    shape_grad, transformation_grad = torch.autograd.grad(
        image.square().sum(), [shape_code, transformation_code], allow_unused=True
    )
    assert shape_grad is None or torch.equal(shape_grad, torch.zeros(3, 5))
    assert float(transformation_grad.abs().sum()) > 0
    # The shape code still shapes the image in the forward pass.
    with torch.no_grad():
        decoder.eval()
        changed = decoder(shape_code + 1.0, transformation_code)
        assert not torch.allclose(changed, decoder(shape_code, transformation_code))
    # Ablation: without blocking the gradient does reach the shape code.
    open_decoder = ImageDecoder(small_config(block_shape_gradient=False))
    open_decoder.load_state_dict(decoder.state_dict())
    (open_grad,) = torch.autograd.grad(
        open_decoder(shape_code, transformation_code).square().sum(), [shape_code]
    )
    assert float(open_grad.abs().sum()) > 0


def test_image_loss_trains_only_the_encoder_transformation_units():
    torch.manual_seed(2)
    net = TwinTailed(small_config())
    out = net(torch.rand(4, 3, 16, 16), volume=False)
    out.image.square().sum().backward()
    code_weight = net.encoder.code.weight.grad  # rows: 5 shape units, then 3 transformation units
    assert torch.equal(code_weight[:5], torch.zeros_like(code_weight[:5]))
    assert float(code_weight[5:].abs().sum()) > 0
    net.zero_grad()
    out = net(torch.rand(4, 3, 16, 16), image=False)
    out.volume.square().sum().backward()
    code_weight = net.encoder.code.weight.grad
    assert float(code_weight[:5].abs().sum()) > 0
    assert torch.equal(code_weight[5:], torch.zeros_like(code_weight[5:]))


def test_spatial_transformer_starts_as_2x2_average_pooling():
    torch.manual_seed(3)
    for variant, size in (("first", 16), ("second", 8)):
        transformer = SpatialTransformerDownsample(4, size, 4, variant)
        features = torch.randn(2, 4, size, size)
        torch.testing.assert_close(transformer(features), F.avg_pool2d(features, 2))
        torch.testing.assert_close(
            transformer.last_theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3)
        )


def test_spatial_transformer_zoom_samples_the_centre_crop():
    # theta = diag(1/2): the half-size output samples the central half at the input's pixel
    # pitch, exactly on pixel centres 2..5 of an 8x8 map.
    transformer = SpatialTransformerDownsample(1, 8, 2, "first").eval()
    with torch.no_grad():
        transformer.regressor.bias.copy_(torch.tensor([0.5, 0.0, 0.0, 0.0, 0.5, 0.0]))
    features = torch.arange(64.0).reshape(1, 1, 8, 8)
    torch.testing.assert_close(transformer(features), features[..., 2:6, 2:6])


def test_decoders_accept_leading_batch_shapes_and_check_inputs():
    config = small_config()
    volume = VolumeDecoder(config).eval()
    image = ImageDecoder(config).eval()
    with torch.no_grad():
        assert volume(torch.randn(2, 3, 5)).shape == (2, 3, 8, 8, 8)
        assert image(torch.randn(2, 3, 5), torch.randn(2, 3, 3)).shape == (2, 3, 3, 16, 16)
    with pytest.raises(ValueError, match="same batch shape"):
        image(torch.randn(2, 5), torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"\(\*batch, 3, 16, 16\)"):
        TwinEncoder(config)(torch.rand(2, 1, 16, 16))
