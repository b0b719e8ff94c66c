"""Small network configurations shared by several test files (fast to build and run)."""

from __future__ import annotations

from probgraphics.nets import TwinConfig

#: A twin-tailed net on 16 px gray images: shape code 4, transformation code 2, 8^3 volumes.
TINY_TWIN_CONFIG = TwinConfig(
    image_size=16,
    in_channels=1,
    encoder_channels=(4, 4, 4),
    encoder_hidden=0,
    localisation_channels=4,
    shape_code_size=4,
    transformation_code_size=2,
    volume_size=8,
    volume_channels=(4,),
    image_channels=(4, 4, 4),
)
