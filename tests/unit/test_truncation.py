"""Truncated prior regions of abc_rejection's rounds: membership against a brute-force
reference, nesting, the truncated prior's draws, and the rounds' budget and errors."""

from __future__ import annotations

import pytest
import torch

import probgraphics as pg
from probgraphics.inference import truncation


def _inside_by_brute_force(region, u):
    inside = torch.ones(u.shape[0], dtype=torch.bool)
    while region is not None:
        gaps = torch.cdist(u.double() / region.scale, region.anchors).min(dim=1).values
        inside &= gaps <= region.radius
        region = region.parent
    return inside


def test_membership_matches_brute_force_and_regions_nest():
    generator = torch.Generator().manual_seed(0)
    anchors = torch.randn(300, 3, generator=generator, dtype=torch.float64) * 0.3 + 1.0
    outer = truncation.region_around(anchors)
    inner = truncation.region_around(anchors[:100] + 0.2, outer)
    u = torch.randn(4_000, 3, generator=generator, dtype=torch.float64) + 1.0
    for region in (outer, inner):
        expected = _inside_by_brute_force(region, u)
        assert torch.equal(truncation.contains(region, u), expected)
        assert 0 < int(expected.sum()) < u.shape[0]  # the check can fail both ways
    # Nested: inside the inner region implies inside the outer one.
    assert bool((truncation.contains(outer, u) | ~truncation.contains(inner, u)).all())
    assert bool(truncation.contains(outer, anchors).all())
    assert bool(truncation.contains(None, u).all())


def test_prior_draws_in_a_region_are_the_truncated_standard_normal():
    # A region far in one tail: the truncated prior differs from N(0, I) there, and rejection by
    # hand from N(0, I) gives the same distribution (means within 4 standard errors).
    generator = torch.Generator().manual_seed(1)
    anchors = torch.randn(400, 2, generator=generator, dtype=torch.float64) * 0.5 + 1.5
    region = truncation.region_around(anchors)
    draws, drawn = truncation.sample_prior_in(
        region, generator, 5_000, 2, dtype=torch.float64, device=torch.device("cpu")
    )
    assert draws.shape == (5_000, 2) and drawn >= 5_000
    assert bool(truncation.contains(region, draws).all())
    reference = torch.randn(400_000, 2, generator=generator, dtype=torch.float64)
    reference = reference[truncation.contains(region, reference)]
    error = (draws.mean(0) - reference.mean(0)).abs()
    standard_error = (draws.var(0) / draws.shape[0] + reference.var(0) / reference.shape[0]).sqrt()
    assert bool((error < 4 * standard_error).all()), (error, standard_error)


def test_a_region_holding_almost_no_prior_mass_stops_short():
    anchors = torch.full((20, 1), 9.0, dtype=torch.float64) + torch.linspace(0, 0.01, 20)[:, None]
    region = truncation.region_around(anchors)
    draws, drawn = truncation.sample_prior_in(
        region,
        torch.Generator().manual_seed(2),
        5,
        1,
        dtype=torch.float64,
        device=torch.device("cpu"),
    )
    assert draws.shape[0] < 5 and drawn == truncation.MAX_PRIOR_DRAWS_PER_SIMULATION * 5


def test_rounds_keep_the_budget_and_shrink_the_tolerance():
    program = pg.programs.linear_gaussian(dim=2)
    observation = {"x": pg.programs.simulate(program, seed=0)["x"]}
    settings = {}
    for rounds in (1, 3):
        posterior = pg.infer(
            program,
            observation,
            method="abc_rejection",
            simulations=6_000,
            keep_fraction=0.05,
            rounds=rounds,
            seed=0,
            progress=False,
        )
        assert posterior.n_simulations == 6_000
        assert posterior.samples["z"].shape == (1, 300, 2)
        settings[rounds] = posterior.settings
    assert settings[3]["round_simulations"] == [2_000, 2_000, 2_000]
    epsilons = settings[3]["round_epsilon"]
    assert epsilons[0] > epsilons[1] > epsilons[2]
    assert settings[3]["epsilon_target"] < settings[1]["epsilon_target"]


def test_bad_rounds_are_rejected():
    program = pg.programs.linear_gaussian(dim=2)
    observation = {"x": pg.programs.simulate(program, seed=0)["x"]}
    with pytest.raises(ValueError, match="rounds"):
        pg.infer(program, observation, method="abc_rejection", rounds=0, progress=False)
    with pytest.raises(ValueError, match="2 kept draws"):
        pg.infer(
            program,
            observation,
            method="abc_rejection",
            simulations=100,
            keep_fraction=0.01,
            rounds=2,
            progress=False,
        )
