"""The shared ABC run loop: composability, exact resume, atomic checkpoints, bookkeeping."""

from __future__ import annotations

import math
import os

import pytest
import torch

import probgraphics as pg
from probgraphics.api import prepare_abc
from probgraphics.inference import checkpoint as checkpoint_io
from probgraphics.inference import runner
from probgraphics.programs.toy import linear_gaussian

PROGRAM = linear_gaussian(dim=3, noise=0.5, seed=2)
OBSERVATION = {"x": pg.programs.simulate(PROGRAM, seed=7)["x"]}
FAST = {"chains": 6, "draws": 9, "warmup": 16, "pilot_size": 40, "progress": False, "seed": 11}
METHODS = ["abc_mcmc", "abc_slice"]


def assert_same_posterior(first, second):
    assert first.samples.keys() == second.samples.keys()
    for name in first.samples:
        assert torch.equal(first.samples[name], second.samples[name]), name
    assert first.sample_stats.keys() == second.sample_stats.keys()
    for name in first.sample_stats:
        assert torch.equal(first.sample_stats[name], second.sample_stats[name]), name
    assert first.n_simulations == second.n_simulations


@pytest.mark.parametrize("method", METHODS)
def test_warmup_then_sample_in_pieces_equals_one_run(method):
    whole = pg.infer(PROGRAM, OBSERVATION, method=method, **FAST)
    run = prepare_abc(PROGRAM, OBSERVATION, method=method, **FAST)
    runner.warmup(run, 5)
    runner.warmup(run, 0)
    runner.warmup(run)  # the remaining 11 steps
    runner.sample(run, 4)
    runner.sample(run)
    assert_same_posterior(whole, runner.finish(run))


def test_same_seed_same_chains_other_seed_other_chains():
    first = pg.infer(PROGRAM, OBSERVATION, **FAST)
    second = pg.infer(PROGRAM, OBSERVATION, **FAST)
    assert_same_posterior(first, second)
    other = pg.infer(PROGRAM, OBSERVATION, **{**FAST, "seed": 12})
    assert not torch.equal(first.samples["z"], other.samples["z"])


def test_the_callers_global_rng_is_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    pg.infer(PROGRAM, OBSERVATION, **FAST)
    assert torch.equal(torch.rand(3), expected)


def test_pieces_validate_their_step_counts():
    run = prepare_abc(PROGRAM, OBSERVATION, **FAST)
    with pytest.raises(ValueError, match="warm-up has 16 steps left"):
        runner.sample(run)
    with pytest.raises(ValueError, match="16 remain"):
        runner.warmup(run, 17)
    runner.warmup(run)
    with pytest.raises(ValueError, match="draws remain"):
        runner.finish(run)


class CrashingProgram:
    """The toy program, raising on its ``crash_at``-th call (simulating a killed run)."""

    def __init__(self, program, crash_at):
        self.program, self.crash_at, self.calls = program, crash_at, 0

    def __call__(self):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt("simulated interruption")
        return self.program()


def crash_then_resume(program, crashing, observation, options, path, **infer):
    """The run of ``options``: uninterrupted; interrupted (``crashing``, the program raising
    mid-run, checkpointing to ``path``); and resumed from ``path`` alone. ``infer``: further
    keywords of every call (e.g. ``method``). Returns ``(uninterrupted, the checkpoint's payload
    at the interruption, resumed)``."""
    uninterrupted = pg.infer(program, observation, **infer, **options)
    with pytest.raises(KeyboardInterrupt):
        pg.infer(crashing, observation, checkpoint=path, **infer, **options)
    saved = checkpoint_io.load_checkpoint(path)
    resumed = pg.infer(program, observation, resume=path, progress=False, **infer)
    return uninterrupted, saved, resumed


@pytest.mark.parametrize(
    "method,crash_at,phase",
    [
        ("abc_mcmc", 12, "warmup"),
        ("abc_mcmc", 24, "sampling"),
        ("abc_slice", 30, "warmup"),
        ("abc_slice", 75, "sampling"),
    ],
)
def test_resumed_run_equals_the_uninterrupted_run_bit_for_bit(tmp_path, method, crash_at, phase):
    path = tmp_path / "run.ckpt"
    options = {**FAST, "checkpoint_every": 3}
    crashing = CrashingProgram(PROGRAM, crash_at)
    # resume=path alone: every other option comes from the checkpoint.
    uninterrupted, saved, resumed = crash_then_resume(
        PROGRAM, crashing, OBSERVATION, options, path, method=method
    )
    print("CKPT", method, crash_at, saved["warmup_done"], saved["sampling_steps_done"])
    assert (
        0
        < saved["warmup_done"] + saved["sampling_steps_done"]
        < runner.RunConfig(method=method, chains=6, draws=9, warmup=16, seed=0).total_steps
    )
    assert_same_posterior(uninterrupted, resumed)
    # The finished run's checkpoint gives the same posterior again.
    again = pg.infer(PROGRAM, OBSERVATION, method=method, resume=path, progress=False)
    assert_same_posterior(uninterrupted, again)


def test_resume_with_other_settings_is_refused(tmp_path):
    path = tmp_path / "run.ckpt"
    pg.infer(PROGRAM, OBSERVATION, checkpoint=path, **FAST)
    with pytest.raises(ValueError, match=r"other settings \(chains: checkpoint 6 vs now 7"):
        pg.infer(PROGRAM, OBSERVATION, resume=path, **{**FAST, "chains": 7})
    other_observation = {"x": OBSERVATION["x"] + 1.0}
    with pytest.raises(ValueError, match="another observation at site 'x'"):
        pg.infer(PROGRAM, other_observation, resume=path, progress=False)
    other_program = linear_gaussian(dim=4, seed=2)
    with pytest.raises(ValueError, match="observation\\['x'\\] has shape"):
        pg.infer(other_program, OBSERVATION, resume=path, progress=False)


def test_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "state.ckpt"
    checkpoint_io.save_checkpoint(path, {"value": torch.arange(3)})
    before = path.read_bytes()

    def failing_save(payload, handle):
        handle.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_io.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint_io.save_checkpoint(path, {"value": torch.arange(5)})
    assert path.read_bytes() == before  # the previous checkpoint is intact
    assert sorted(os.listdir(tmp_path)) == ["state.ckpt"]  # no temporary file left
    fresh = tmp_path / "fresh.ckpt"
    with pytest.raises(OSError):
        checkpoint_io.save_checkpoint(fresh, {"value": torch.arange(5)})
    assert not fresh.exists()


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        pg.infer(PROGRAM, OBSERVATION, resume=tmp_path / "missing.ckpt", progress=False)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        pg.infer(PROGRAM, OBSERVATION, resume=corrupt, progress=False)
    other = tmp_path / "other.ckpt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a probgraphics ABC checkpoint"):
        checkpoint_io.load_checkpoint(other)


def test_thinning_keeps_every_thin_th_state_of_the_same_chain():
    dense = pg.infer(PROGRAM, OBSERVATION, **{**FAST, "draws": 12})
    thinned = pg.infer(PROGRAM, OBSERVATION, **{**FAST, "draws": 4, "thin": 3})
    assert torch.equal(thinned.samples["z"], dense.samples["z"][:, 2::3])
    assert torch.equal(thinned.sample_stats["distance"], dense.sample_stats["distance"][:, 2::3])
    assert bool((thinned.sample_stats["n_simulations"] == 3).all())


@pytest.mark.parametrize("method", METHODS)
def test_posterior_contents_and_simulation_accounting(method):
    posterior = pg.infer(PROGRAM, OBSERVATION, method=method, **FAST)
    assert posterior.samples["z"].shape == (6, 9, 3)
    stats = posterior.sample_stats
    for name in ("distance", "accepted", "epsilon", "n_simulations"):
        assert stats[name].shape == (6, 9), name
    assert stats["accepted"].dtype == torch.bool
    assert posterior.prior["z"].shape == (1, 40, 3)
    steps = FAST["warmup"] + FAST["draws"]
    if method == "abc_mcmc":
        assert bool(((stats["beta"] > 0) & (stats["beta"] <= 1)).all())
        assert posterior.n_simulations == FAST["pilot_size"] + FAST["chains"] * steps
    else:
        assert "cap_hits" in stats
        assert posterior.n_simulations >= FAST["pilot_size"] + FAST["chains"] * steps
        assert int(stats["n_simulations"].sum()) >= FAST["chains"] * FAST["draws"]
    # epsilon is held at its target while sampling, and the settings say what it was.
    target = posterior.settings["epsilon_target"]
    assert bool((stats["epsilon"] == torch.tensor(target, dtype=stats["epsilon"].dtype)).all())
    timings = posterior.timings
    for name in ("pilot", "warmup", "sampling", "simulate", "total", "overhead_fraction"):
        assert name in timings
    assert 0.0 <= timings["overhead_fraction"] <= 1.0
    assert posterior.simulations_per_second > 0


def test_epsilon_is_the_pilot_quantile_when_not_given():
    run = prepare_abc(PROGRAM, OBSERVATION, **{**FAST, "quantile": 0.1, "pilot_size": 40})
    expected = torch.quantile(run.pilot_distance.double(), 0.1)
    assert run.epsilon_target == pytest.approx(float(expected))
    assert run.epsilon_start >= run.epsilon_target  # 6 chains of 40 = the best 15%
    # init="pilot": the chains are the best pilot particles, so their distances are the smallest.
    assert float(run.state.distance.max()) == pytest.approx(run.epsilon_start)


def test_epsilon_schedule_is_geometric_then_held():
    values = [runner.epsilon_schedule(step, 20, 8.0, 0.5, 0.5) for step in range(20)]
    assert values[9] == pytest.approx(0.5) and values[10:] == [0.5] * 10
    ratios = [values[i + 1] / values[i] for i in range(9)]
    assert ratios == pytest.approx([ratios[0]] * 9)
    assert values[0] == pytest.approx(8.0 * (0.5 / 8.0) ** 0.1)
    assert runner.epsilon_schedule(0, 20, 0.1, 0.5, 0.5) == 0.5  # already inside: no annealing
    assert runner.epsilon_schedule(3, 20, 8.0, math.inf, 0.5) == math.inf


def test_reference_fit_is_the_shrunk_pooled_covariance():
    generator = torch.Generator().manual_seed(0)
    samples = (
        torch.randn(500, 4, generator=generator, dtype=torch.float64)
        * torch.tensor([0.1, 0.5, 1.0, 2.0], dtype=torch.float64)
        + 3.0
    )
    reference = runner.fit_reference(
        torch.tensor(500.0, dtype=torch.float64),
        samples.sum(0),
        samples.T @ samples,
        torch.float64,
    )
    covariance = torch.cov(samples.T, correction=0)
    expected = (500 * covariance + 4 * torch.eye(4, dtype=torch.float64)) / 504
    rebuilt = reference.basis @ torch.diag(reference.scale.square()) @ reference.basis.T
    torch.testing.assert_close(rebuilt, expected)
    torch.testing.assert_close(reference.mean, samples.mean(0))


def test_refit_steps_are_spread_over_warmup():
    assert runner.reference_fit_steps(16) == [2, 4, 6, 8, 10, 12, 14]
    assert runner.reference_fit_steps(3) == [1, 2, 3]
    assert runner.reference_fit_steps(0) == []


def test_init_from_given_values_starts_there():
    given = torch.tensor([[0.5, -0.5, 1.0]]).repeat(6, 1)
    run = prepare_abc(PROGRAM, OBSERVATION, **{**FAST, "init": {"z": given}})
    torch.testing.assert_close(run.state.values, given)
    # u is the inverse whitening transform of the values (site z: MultivariateNormal).
    scale_tril = PROGRAM.prior_scale_tril
    expected_u = torch.linalg.solve_triangular(
        scale_tril, (given - PROGRAM.prior_mean).T, upper=False
    ).T
    torch.testing.assert_close(run.state.u[:, :3], expected_u, rtol=1e-5, atol=1e-5)


def test_init_prior_and_no_preconditioning_run():
    posterior = pg.infer(
        PROGRAM, OBSERVATION, **{**FAST, "init": "prior", "precondition": False, "thin": 2}
    )
    assert posterior.samples["z"].shape == (6, 9, 3)
    assert posterior.settings["precondition"] is False


def test_progress_bar_shows_epsilon_acceptance_and_speed(capsys):
    posterior = pg.infer(PROGRAM, OBSERVATION, **{**FAST, "progress": True})
    assert posterior.samples["z"].shape == (6, 9, 3)
    error = capsys.readouterr().err
    assert "abc_mcmc" in error and "25/25" in error  # 16 warm-up + 9 sampling steps
    assert "eps=" in error and "acc=" in error and "sims_per_s=" in error


def test_a_run_without_pilot():
    posterior = pg.infer(
        PROGRAM, OBSERVATION, **{**FAST, "pilot_size": 0, "init": "prior", "distance": "l2"}
    )
    assert posterior.prior is None
    assert posterior.n_simulations == FAST["chains"] * (1 + FAST["warmup"] + FAST["draws"])
