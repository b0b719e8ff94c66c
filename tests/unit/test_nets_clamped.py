"""The DC-IGN clamped forward pass and invariance-targeted backward pass (seed 001 sec. 3)."""

from __future__ import annotations

import pytest
import torch

from probgraphics.nets import DCIGN, DCIGNConfig, active_mask, clamp_inactive

CODE = torch.tensor(
    [
        [1.0, 2.0, 3.0, 4.0],
        [3.0, 0.0, 5.0, 8.0],
        [2.0, 7.0, -2.0, 0.0],
    ]
)


def test_forward_replaces_inactive_units_by_their_batch_mean():
    out = clamp_inactive(CODE, [1])
    # Column means: [2, 3, 2, 4]; unit 1 is active and passes through.
    expected = torch.tensor(
        [
            [2.0, 2.0, 2.0, 4.0],
            [2.0, 0.0, 2.0, 4.0],
            [2.0, 7.0, 2.0, 4.0],
        ]
    )
    assert torch.equal(out, expected)


def test_backward_replaces_inactive_gradient_by_the_scaled_invariance_target():
    code = CODE.clone().requires_grad_(True)
    upstream = torch.tensor(
        [
            [0.5, -1.0, 2.0, 3.0],
            [1.5, 4.0, -2.0, 1.0],
            [-0.5, 0.25, 7.0, 2.0],
        ]
    )
    clamp_inactive(code, [1], invariance_scale=0.1).backward(upstream)
    # Inactive units 0, 2, 3: 0.1 * (z - column mean), whatever the decoder sent; active unit 1:
    # the upstream gradient unchanged.
    expected = torch.tensor(
        [
            [0.1 * (1 - 2), -1.0, 0.1 * (3 - 2), 0.1 * (4 - 4)],
            [0.1 * (3 - 2), 4.0, 0.1 * (5 - 2), 0.1 * (8 - 4)],
            [0.1 * (2 - 2), 0.25, 0.1 * (-2 - 2), 0.1 * (0 - 4)],
        ]
    )
    torch.testing.assert_close(code.grad, expected)


def test_invariance_gradient_equals_the_gradient_of_the_l2_penalty():
    # Reference: autograd of (scale / 2) * sum_k ||z_k - mean z||^2 over the inactive units.
    torch.manual_seed(0)
    code = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    active = [2, 3, 7]
    inactive = [i for i in range(10) if i not in active]
    scale = 0.01
    clamp_inactive(code, active, scale).sum().backward()
    reference_code = code.detach().clone().requires_grad_(True)
    part = reference_code[:, inactive]
    (0.5 * scale * (part - part.mean(0)).square().sum()).backward()
    torch.testing.assert_close(code.grad[:, inactive], reference_code.grad[:, inactive])
    torch.testing.assert_close(code.grad[:, active], torch.ones(6, 3, dtype=torch.float64))
    # A gradient-descent step moves every inactive unit toward its batch mean.
    stepped = code.detach() - 10.0 * code.grad
    spread_before = (code.detach() - code.detach().mean(0))[:, inactive].abs()
    spread_after = (stepped - stepped.mean(0))[:, inactive].abs()
    assert torch.all(spread_after <= spread_before)


def test_gradient_flows_to_the_encoder_through_the_modified_code_gradient():
    # Full chain, hand-computed: with sample=False the code is mean_head(h), so the gradient of a
    # decoder loss with respect to mean_head's weight rows of inactive units is
    # sum_k target[k, i] * h[k] with target = scale * (z - batch mean).
    torch.manual_seed(1)
    config = DCIGNConfig(
        image_size=16,
        channels=(4,),
        decoder_channels=(4,),
        padding=2,
        code_size=6,
        decoder_kernel=3,
    )
    net = DCIGN(config)
    images = torch.rand(5, 1, 16, 16)
    out = net(images, active="azimuth", invariance_scale=0.02, sample=False)
    (out.reconstruction - images).square().sum().backward()
    with torch.no_grad():
        features = net.encoder.features(images).flatten(1)
        code = net.encoder.mean_head(features)
        target = 0.02 * (code - code.mean(0))
    expected_rows = target[:, 1:].T @ features
    torch.testing.assert_close(net.encoder.mean_head.weight.grad[1:], expected_rows)
    assert float(net.encoder.mean_head.weight.grad[0].abs().sum()) > 0.0  # the active unit learns
    # The log-variance head gets no gradient at all when the code is the mean.
    assert net.encoder.log_var_head.weight.grad is None


def test_clamp_to_first_and_zero_scale_is_the_seed_000_variant():
    code = CODE.clone().requires_grad_(True)
    out = clamp_inactive(code, [0], invariance_scale=0.0, clamp_to="first")
    expected = torch.tensor(
        [
            [1.0, 2.0, 3.0, 4.0],
            [3.0, 2.0, 3.0, 4.0],
            [2.0, 2.0, 3.0, 4.0],
        ]
    )
    assert torch.equal(out, expected)
    out.sum().backward()
    assert torch.equal(code.grad[:, 1:], torch.zeros(3, 3))
    assert torch.equal(code.grad[:, 0], torch.ones(3))


def test_index_forms_agree():
    mask = torch.tensor([False, True, False, True])
    by_list = clamp_inactive(CODE, [1, 3])
    assert torch.equal(clamp_inactive(CODE, torch.tensor([1, 3])), by_list)
    assert torch.equal(clamp_inactive(CODE, mask), by_list)
    assert torch.equal(clamp_inactive(CODE, (3, 1, 1)), by_list)
    assert torch.equal(active_mask([1, 3], 4, "cpu"), mask)


def test_single_item_batch_is_unchanged_and_gets_zero_invariance_gradient():
    code = torch.tensor([[1.0, -2.0, 3.0]], requires_grad=True)
    out = clamp_inactive(code, [0])
    assert torch.equal(out, code.detach())
    out.sum().backward()
    assert torch.equal(code.grad, torch.tensor([[1.0, 0.0, 0.0]]))


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="no code unit is active"):
        clamp_inactive(CODE, [])
    with pytest.raises(ValueError, match="no code unit is active"):
        clamp_inactive(CODE, torch.zeros(4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        clamp_inactive(CODE, [4])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        clamp_inactive(CODE, torch.tensor([-1]))
    with pytest.raises(ValueError, match="shape \\(4,\\)"):
        clamp_inactive(CODE, torch.tensor([True, False]))
    with pytest.raises(ValueError, match="Group names"):
        clamp_inactive(CODE, "azimuth")
    with pytest.raises(ValueError, match="invariance_scale"):
        clamp_inactive(CODE, [0], invariance_scale=-0.1)
    with pytest.raises(ValueError, match="invariance_scale"):
        clamp_inactive(CODE, [0], invariance_scale=float("nan"))
    with pytest.raises(ValueError, match="clamp_to"):
        clamp_inactive(CODE, [0], clamp_to="median")
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        clamp_inactive(CODE[0], [0])
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        clamp_inactive(CODE.long(), [0])
