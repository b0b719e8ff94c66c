"""EncoderSummary (shape, no grad, eval mode, chunking, layout, subset) and pretrained()."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from probgraphics.nets import (
    DCIGN,
    CheckpointError,
    CodeLayout,
    DCIGNConfig,
    MuVAE,
    MuVAEConfig,
    TwinTailed,
    save_checkpoint,
)
from probgraphics.nets.pretrained import available, model_card, pretrained, pretrained_summary
from probgraphics.nets.summaries import EncoderSummary
from tests.tiny_nets import TINY_TWIN_CONFIG

CONFIG = DCIGNConfig(
    image_size=32, channels=(8, 8), decoder_channels=(8, 8), padding=2, code_size=16
)


def tiny_dcign() -> DCIGN:
    torch.manual_seed(0)
    return DCIGN(CONFIG)


def tiny_muvae() -> MuVAE:
    torch.manual_seed(0)
    return MuVAE(
        MuVAEConfig(
            voxel_size=16,
            encoder_channels=(4, 8),
            shape_code_size=5,
            decoder_channels=(8, 4),
            texturizer=False,
        )
    )


# --------------------------------------------------------------------------------------------
# EncoderSummary
# --------------------------------------------------------------------------------------------


def test_summary_is_the_encoder_mean_as_float32_without_gradient():
    net = tiny_dcign()
    summary = EncoderSummary(net)
    images = torch.rand(5, 1, 32, 32, requires_grad=True)
    features = summary(images)
    assert features.shape == (5, 16) and features.dtype == torch.float32
    assert not features.requires_grad
    mean, _ = net.encode(images)
    torch.testing.assert_close(features, mean.detach())


def test_summary_is_chunked_without_changing_the_result():
    net = tiny_dcign()
    images = torch.rand(11, 1, 32, 32)
    whole = EncoderSummary(net, chunk_size=64)(images)
    chunked = EncoderSummary(net, chunk_size=3)(images)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    assert EncoderSummary(net)(images[:0]).shape == (0, 16)


def test_summary_uses_eval_mode_and_restores_the_module_mode():
    """A batch-norm encoder in eval mode encodes each image independently of its batch."""
    net = tiny_muvae()
    net.train()
    summary = EncoderSummary(net)
    images = torch.rand(6, 1, 16, 16)
    together = summary(images)
    alone = torch.cat([summary(images[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    assert net.training and net.encoder.training
    assert summary.layout == CodeLayout(5, {"shape": tuple(range(5))})


def test_layout_and_subset_select_and_reindex_columns():
    net = tiny_dcign()
    summary = EncoderSummary(net)
    assert summary.layout["azimuth"] == (0,) and summary.layout["intrinsic"] == tuple(range(3, 16))
    images = torch.rand(4, 1, 32, 32)
    full = summary(images)
    pose = summary.subset("light", "azimuth")
    assert pose.groups == ("light", "azimuth")
    assert pose.layout == CodeLayout(2, {"light": (0,), "azimuth": (1,)})
    torch.testing.assert_close(pose(images), full[:, [2, 0]])
    assert summary.groups is None and summary(images).shape == (4, 16)  # the original unchanged
    via_groups = EncoderSummary(net, groups=["elevation", "intrinsic"])
    torch.testing.assert_close(via_groups(images), full[:, [1, *range(3, 16)]])
    assert via_groups.layout["intrinsic"] == tuple(range(1, 14))


@pytest.mark.parametrize(
    ("groups", "match"),
    [(("pose",), "unknown"), (("azimuth", "azimuth"), "distinct"), ((), "at least one")],
)
def test_bad_subsets_are_explained(groups, match):
    with pytest.raises(ValueError, match=match):
        EncoderSummary(tiny_dcign()).subset(*groups)


def test_bad_images_are_explained():
    summary = EncoderSummary(tiny_dcign())
    with pytest.raises(ValueError, match=r"image\[None\]"):
        summary(torch.rand(1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        summary(torch.rand(2, 1, 16, 16))
    with pytest.raises(TypeError, match="floating"):
        summary(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))


def test_twin_encoder_summary_concatenates_shape_and_transformation_codes():
    torch.manual_seed(0)
    net = TwinTailed(TINY_TWIN_CONFIG)
    net.eval()
    summary = EncoderSummary(net)
    images = torch.rand(3, 1, 16, 16)
    shape_code, transformation_code = net.encoder(images)
    torch.testing.assert_close(
        summary(images), torch.cat([shape_code, transformation_code], -1).detach()
    )
    torch.testing.assert_close(
        summary.subset("transformation")(images), transformation_code.detach()
    )


def test_user_encoder_callable_with_an_explicit_layout():
    linear = nn.Linear(4, 3)
    layout = CodeLayout(3, {"a": (0, 1), "b": (2,)})
    summary = EncoderSummary(lambda x: (linear(x.flatten(1)), None), layout=layout)
    images = torch.rand(2, 1, 2, 2)
    torch.testing.assert_close(
        summary.subset("b")(images), linear(images.flatten(1))[:, 2:].detach()
    )
    with pytest.raises(TypeError, match="CodeLayout"):
        EncoderSummary(linear, layout={"a": [0]})
    with pytest.raises(ValueError, match="no code layout"):
        EncoderSummary(lambda x: x.flatten(1)).subset("a")


def test_summary_works_as_the_abc_summary_of_infer():
    import probgraphics as pg
    from probgraphics.programs.dcign import dcign

    net = tiny_dcign()
    program = dcign(net)
    image = pg.programs.simulate(program, seed=0)["image"].clamp(0, 1)
    summary = EncoderSummary(net).subset("azimuth", "elevation", "light")
    posterior = pg.infer(
        program,
        image,
        method="abc_rejection",
        summary=summary,
        simulations=64,
        keep_fraction=0.25,
        seed=0,
        progress=False,
    )
    assert posterior.samples["azimuth"].shape[-1] == 1


@pytest.mark.gpu
def test_summary_follows_images_to_cuda():
    summary = EncoderSummary(tiny_dcign())
    images = torch.rand(3, 1, 32, 32)
    on_cpu = summary(images)
    on_gpu = summary(images.cuda())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# pretrained
# --------------------------------------------------------------------------------------------


def test_pretrained_loads_a_named_checkpoint_as_summary_encoder_or_model(tmp_path):
    net = tiny_dcign()
    save_checkpoint(tmp_path / "mine.pt", net, net.config, kind="dcign")
    (tmp_path / "mine.json").write_text('{"steps": 3}')
    assert available(tmp_path) == ["mine"]
    assert model_card("mine", tmp_path) == {"steps": 3}
    summary = pretrained("mine", directory=tmp_path)
    images = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(summary(images), EncoderSummary(net)(images))
    assert summary.layout == net.layout
    encoder = pretrained("mine", kind="encoder", directory=tmp_path)
    assert type(encoder).__name__ == "DCIGNEncoder" and not encoder.training
    model = pretrained("mine", kind="model", directory=tmp_path)
    assert isinstance(model, DCIGN)


def test_pretrained_unknown_name_lists_what_is_available(tmp_path):
    net = tiny_dcign()
    save_checkpoint(tmp_path / "mine.pt", net, net.config, kind="dcign")
    with pytest.raises(KeyError, match=r"'nope'.*\['mine'\]"):
        pretrained("nope", directory=tmp_path)
    with pytest.raises(KeyError, match="probgraphics train dcign-face-64"):
        pretrained("dcign-face-64", directory=tmp_path / "empty")
    with pytest.raises(ValueError, match="kind must be one of"):
        pretrained("mine", kind="decoder", directory=tmp_path)


def test_pretrained_rejects_a_checkpoint_of_another_architecture(tmp_path):
    muvae = tiny_muvae()
    save_checkpoint(tmp_path / "dcign-face-64.pt", muvae, muvae.config, kind="muvae")
    with pytest.raises(CheckpointError, match=r"'muvae' network, but a 'dcign' was expected"):
        pretrained("dcign-face-64", directory=tmp_path)


def test_pretrained_decoder_only_checkpoint_has_no_summary(tmp_path):
    net = tiny_dcign()
    save_checkpoint(tmp_path / "decoder.pt", net.decoder, net.config, kind="dcign-decoder")
    with pytest.raises(CheckpointError, match="no encoder"):
        pretrained("decoder", directory=tmp_path)
    assert pretrained("decoder", kind="model", directory=tmp_path) is not None


def test_pretrained_corrupt_file_is_a_checkpoint_error(tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="broken"):
        pretrained("broken", directory=tmp_path)


def test_pretrained_is_reachable_from_the_nets_package():
    import probgraphics.nets as nets

    assert nets.pretrained is pretrained
    assert nets.pretrained.available() == available()


def test_pretrained_summary_spec_keeps_the_named_groups(tmp_path):
    net = tiny_dcign()
    save_checkpoint(tmp_path / "mine.pt", net, net.config, kind="dcign")
    images = torch.rand(2, 1, 32, 32)
    whole = pretrained_summary("mine", directory=tmp_path)
    torch.testing.assert_close(whole(images), EncoderSummary(net)(images))
    part = pretrained_summary("mine: light , azimuth", directory=tmp_path)
    expected = EncoderSummary(net).subset("light", "azimuth")(images)
    torch.testing.assert_close(part(images), expected)
    assert part(images).shape == (2, 2)
    with pytest.raises(KeyError, match="'nope'"):
        pretrained_summary("nope:azimuth", directory=tmp_path)
    with pytest.raises(TypeError, match="NAME:group,group"):
        pretrained_summary(None, directory=tmp_path)
