"""Torch modules for vision as inverse graphics, and their checkpoints.

* :mod:`.dcign`: the DC-IGN encoder/decoder VAE (seeds 000/001) and :class:`CodeLayout`.
* :mod:`.clamped`: the DC-IGN clamped forward / invariance-target backward (seed 001 sec. 3).
* :mod:`.muvae`: the mu-VAE 2D encoder, 3D voxel decoder, azimuth net, texturizer and the
  VAE / beta-VAE / mu-VAE losses (seed 004).
* :mod:`.twin`: the twin-tailed encoder with volume and image decoders (seed 002).
* :mod:`.checkpoint`: atomic checkpoints of weights plus the config that built them.

All modules are float32, device-agnostic, and accept any batch size.
"""

from __future__ import annotations

from probgraphics.nets.checkpoint import (
    CheckpointError,
    LoadedCheckpoint,
    NetConfig,
    architectures,
    load_checkpoint,
    register_architecture,
    save_checkpoint,
)
from probgraphics.nets.clamped import active_mask, clamp_inactive
from probgraphics.nets.dcign import (
    DCIGN,
    CodeLayout,
    DCIGNConfig,
    DCIGNDecoder,
    DCIGNEncoder,
    DCIGNOutput,
    reparameterize,
)
from probgraphics.nets.muvae import (
    AzimuthNet,
    AzimuthSearch,
    LossTerms,
    MuVAE,
    MuVAEConfig,
    MuVAEOutput,
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
from probgraphics.nets.twin import (
    ImageDecoder,
    SpatialTransformerDownsample,
    TwinConfig,
    TwinEncoder,
    TwinOutput,
    TwinTailed,
    VolumeDecoder,
)

__all__ = [
    "AzimuthNet",
    "AzimuthSearch",
    "CheckpointError",
    "CodeLayout",
    "DCIGN",
    "DCIGNConfig",
    "DCIGNDecoder",
    "DCIGNEncoder",
    "DCIGNOutput",
    "ImageDecoder",
    "LoadedCheckpoint",
    "LossTerms",
    "MuVAE",
    "MuVAEConfig",
    "MuVAEOutput",
    "NetConfig",
    "ShapeEncoder",
    "SpatialTransformerDownsample",
    "Texturizer",
    "TwinConfig",
    "TwinEncoder",
    "TwinOutput",
    "TwinTailed",
    "ViewDiscriminator",
    "VolumeDecoder",
    "VoxelDecoder",
    "active_mask",
    "architectures",
    "beta_vae_loss",
    "clamp_inactive",
    "elbo_loss",
    "gaussian_kl",
    "load_checkpoint",
    "mu_vae_loss",
    "reconstruction_error",
    "register_architecture",
    "reparameterize",
    "save_checkpoint",
    "search_azimuth",
]

# Encoders as guides and summaries, and bundled weights (issue 4).
from probgraphics.nets.guides import EncoderGuide, GuideSite  # noqa: E402
from probgraphics.nets.pretrained import model_card, pretrained, pretrained_summary  # noqa: E402
from probgraphics.nets.summaries import EncoderSummary  # noqa: E402

__all__ += [
    "EncoderGuide",
    "EncoderSummary",
    "GuideSite",
    "model_card",
    "pretrained",
    "pretrained_summary",
]
