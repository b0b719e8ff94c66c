"""The bundled networks still do what their model cards say, on scenes their cards did not use.

These load the weights shipped in ``probgraphics/nets/weights`` (a broken or swapped file fails
here) and measure them afresh on held-out scenes drawn with a seed of their own.
"""

import pytest

from probgraphics.evaluation import factor_correlations
from probgraphics.nets import model_card, pretrained
from probgraphics.programs import face

FACTORS = ("azimuth", "elevation", "light")


@pytest.fixture(scope="module")
def dcign_summary():
    return pretrained("dcign-face-64")


@pytest.mark.parametrize("mode", ["one_factor", "within_batch"])
def test_dcign_face_64_units_follow_their_factors_on_fresh_scenes(dcign_summary, mode):
    # 200 scenes per factor in 10 one-factor batches. The card's pooled |r| (400 scenes) is
    # 0.94 to 0.95 (about 0.90 for the 52,000-step weights this bound was set for); batches are
    # clustered, so the standard error here is about 0.03, and 0.8 is more than three below.
    # Within a batch the card says >= 0.97.
    r = factor_correlations(dcign_summary, face(resolution=64), n=200, seed=77_000, mode=mode)
    bound = 0.8 if mode == "one_factor" else 0.9
    assert all(abs(r[f]) >= bound for f in FACTORS), r
    card = model_card("dcign-face-64")["evaluation"]["correlation_one_factor"]
    # The sign of each unit is the card's (a unit does not flip between draws of scenes).
    assert all((r[f] > 0) == (card[f] > 0) for f in FACTORS), (r, card)
