"""Checkpoints: round trips, clear errors, atomic writes."""

from __future__ import annotations

import os

import pytest
import torch

import probgraphics.nets.checkpoint as checkpoint_module
from probgraphics.nets import (
    DCIGN,
    CheckpointError,
    CodeLayout,
    DCIGNConfig,
    DCIGNEncoder,
    MuVAE,
    MuVAEConfig,
    TwinConfig,
    TwinTailed,
    architectures,
    load_checkpoint,
    register_architecture,
    save_checkpoint,
)

DCIGN_CONFIG = DCIGNConfig(
    image_size=16,
    channels=(4,),
    decoder_channels=(4,),
    padding=2,
    code_size=6,
    decoder_kernel=3,
    layout=CodeLayout(6, {"azimuth": [0], "intrinsic": [1, 2, 3, 4, 5]}),
)
MUVAE_CONFIG = MuVAEConfig(
    encoder_channels=(4,),
    shape_code_size=3,
    decoder_channels=(4, 2),
    azimuth_latent_size=2,
    azimuth_hidden=4,
    texturizer_hidden=8,
)
TWIN_CONFIG = TwinConfig(
    image_size=8,
    in_channels=1,
    encoder_channels=(2, 2, 2),
    localisation_channels=2,
    encoder_hidden=0,
    shape_code_size=3,
    transformation_code_size=2,
    volume_size=4,
    volume_channels=(2,),
    image_channels=(2, 2, 2),
)


def _trained_a_little(module: torch.nn.Module) -> torch.nn.Module:
    # Perturb the weights and batch-norm statistics so a fresh module would differ.
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
        for name, buffer in module.named_buffers():
            if name.endswith("running_mean"):
                buffer.add_(torch.rand_like(buffer))
    return module.eval()


def test_dcign_round_trip_gives_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    net = _trained_a_little(DCIGN(DCIGN_CONFIG))
    extra = {"steps": 12, "lr": 5e-4, "note": "test", "history": [1.0, 0.5], "mask": torch.ones(2)}
    path = save_checkpoint(
        tmp_path / "sub" / "dcign.pt", net, DCIGN_CONFIG, kind="dcign", extra=extra
    )
    assert path.is_file()
    loaded, config, loaded_extra = load_checkpoint(path, expected_kind="dcign")
    assert isinstance(loaded, DCIGN) and not loaded.training
    assert config == DCIGN_CONFIG and config.layout["intrinsic"] == (1, 2, 3, 4, 5)
    assert loaded_extra["steps"] == 12 and loaded_extra["history"] == [1.0, 0.5]
    assert torch.equal(loaded_extra["mask"], torch.ones(2))
    images = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(
            loaded(images, sample=False).reconstruction, net(images, sample=False).reconstruction
        )
    # Plain content only: torch's safe loader reads it without our code.
    raw = torch.load(path, weights_only=True)
    assert raw["kind"] == "dcign" and raw["config_class"] == "DCIGNConfig"
    assert raw["probgraphics_version"] and raw["torch_version"] == torch.__version__


def test_muvae_and_twin_round_trips(tmp_path):
    torch.manual_seed(1)
    for kind, module, config, inputs in (
        ("muvae-decoder", MuVAE(MUVAE_CONFIG).decoder, MUVAE_CONFIG, torch.randn(2, 3)),
        ("twin", TwinTailed(TWIN_CONFIG), TWIN_CONFIG, torch.rand(2, 1, 8, 8)),
    ):
        module = _trained_a_little(module)
        path = save_checkpoint(tmp_path / f"{kind}.pt", module, config, kind=kind)
        loaded, loaded_config, extra = load_checkpoint(path)
        assert loaded_config == config and extra is None
        with torch.no_grad():
            expected, got = module(inputs), loaded(inputs)
        if kind == "twin":
            expected, got = expected.volume, got.volume
        assert torch.equal(got, expected)


def test_loading_another_architecture_is_a_clear_error(tmp_path):
    torch.manual_seed(2)
    path = save_checkpoint(tmp_path / "dcign.pt", DCIGN(DCIGN_CONFIG), DCIGN_CONFIG, kind="dcign")
    with pytest.raises(CheckpointError, match="holds a 'dcign' network, but a 'muvae'"):
        load_checkpoint(path, expected_kind="muvae")
    # Same kind, but weights of a different size: the message names the mismatching tensors.
    payload = torch.load(path, weights_only=True)
    payload["config"]["code_size"] = 7
    payload["config"]["layout"] = {"code_size": 7, "groups": {"azimuth": [0]}}
    torch.save(payload, tmp_path / "resized.pt")
    with pytest.raises(
        CheckpointError, match=r"shape mismatches: decoder\.fully_connected\.weight"
    ):
        load_checkpoint(tmp_path / "resized.pt")
    # A full DC-IGN's weights labelled as an encoder: unexpected decoder keys.
    payload = torch.load(path, weights_only=True)
    payload["kind"] = "dcign-encoder"
    torch.save(payload, tmp_path / "relabelled.pt")
    with pytest.raises(CheckpointError, match="missing keys: features.0.bias.*unexpected keys"):
        load_checkpoint(tmp_path / "relabelled.pt")
    # Kind and config class disagree.
    payload = torch.load(path, weights_only=True)
    payload["kind"] = "twin"
    torch.save(payload, tmp_path / "inconsistent.pt")
    with pytest.raises(CheckpointError, match="inconsistent"):
        load_checkpoint(tmp_path / "inconsistent.pt")


def test_unknown_config_class_and_unknown_fields(tmp_path):
    path = save_checkpoint(tmp_path / "a.pt", DCIGN(DCIGN_CONFIG), DCIGN_CONFIG, kind="dcign")
    payload = torch.load(path, weights_only=True)
    payload["config_class"] = "NeRFConfig"
    torch.save(payload, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match="unknown config class 'NeRFConfig'"):
        load_checkpoint(tmp_path / "unknown.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["attention_heads"] = 8
    torch.save(payload, tmp_path / "newer.pt")
    with pytest.raises(CheckpointError, match="unknown fields.*attention_heads"):
        load_checkpoint(tmp_path / "newer.pt")
    payload = torch.load(path, weights_only=True)
    payload["kind"] = "nerf"
    torch.save(payload, tmp_path / "kind.pt")
    with pytest.raises(CheckpointError, match="unknown architecture kind 'nerf'"):
        load_checkpoint(tmp_path / "kind.pt")


def test_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "noise.pt").write_bytes(os.urandom(256))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "noise.pt")
    good = save_checkpoint(tmp_path / "good.pt", DCIGN(DCIGN_CONFIG), DCIGN_CONFIG, kind="dcign")
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_checkpoint(tmp_path / "truncated.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a probgraphics checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_write_is_atomic_when_saving_fails(tmp_path, monkeypatch):
    path = tmp_path / "net.pt"
    net = DCIGN(DCIGN_CONFIG)
    save_checkpoint(path, net, DCIGN_CONFIG, kind="dcign", extra={"version": "old"})
    before = path.read_bytes()

    def failing_save(obj, handle):
        handle.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, net, DCIGN_CONFIG, kind="dcign", extra={"version": "new"})
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "fresh.pt", net, DCIGN_CONFIG, kind="dcign")
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old checkpoint is untouched
    assert not (tmp_path / "fresh.pt").exists()  # no partial new file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.pt"]  # no temporary left over
    assert load_checkpoint(path).extra == {"version": "old"}


def test_save_validates_its_arguments(tmp_path):
    net = DCIGN(DCIGN_CONFIG)
    with pytest.raises(CheckpointError, match="unknown architecture kind"):
        save_checkpoint(tmp_path / "x.pt", net, DCIGN_CONFIG, kind="dc-ign")
    with pytest.raises(CheckpointError, match="is a DCIGNEncoder, but the module is a DCIGN"):
        save_checkpoint(tmp_path / "x.pt", net, DCIGN_CONFIG, kind="dcign-encoder")
    with pytest.raises(CheckpointError, match="differs from module.config"):
        other = DCIGNConfig(**{**DCIGN_CONFIG.__dict__, "decoder_kernel": 5})
        save_checkpoint(tmp_path / "x.pt", net, other, kind="dcign")
    with pytest.raises(CheckpointError, match="built from a DCIGNConfig"):
        save_checkpoint(tmp_path / "x.pt", net, MUVAE_CONFIG, kind="dcign")
    with pytest.raises(TypeError, match=r"extra\['layout'\] is a CodeLayout.*to_dict"):
        save_checkpoint(
            tmp_path / "x.pt",
            net,
            DCIGN_CONFIG,
            kind="dcign",
            extra={"layout": DCIGN_CONFIG.layout},
        )
    with pytest.raises(TypeError, match="non-str key"):
        save_checkpoint(tmp_path / "x.pt", net, DCIGN_CONFIG, kind="dcign", extra={1: "a"})
    assert not any(tmp_path.iterdir())


def test_registry_lists_builtins_and_refuses_silent_overrides():
    kinds = architectures()
    assert kinds["dcign"] == (DCIGNConfig, DCIGN)
    assert kinds["dcign-encoder"] == (DCIGNConfig, DCIGNEncoder)
    assert {"muvae", "twin"} <= set(kinds)
    register_architecture("dcign", DCIGNConfig, DCIGN)  # the same triple again is fine
    with pytest.raises(ValueError, match="already registered"):
        register_architecture("dcign", DCIGNConfig, DCIGNEncoder)
    with pytest.raises(TypeError, match="NetConfig"):
        register_architecture("plain", dict, DCIGN)
