"""train_guide data-parallel (DistributedDataParallel): two processes under torchrun equal one
process at the same global batch; rank 0 alone writes checkpoints; resuming replays each rank's
random stream; a one-process group equals the plain run; bad set-ups are refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed as torch_dist
from torch import nn

from probgraphics.inference import svi
from tests import ddp_training as toy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> dict[str, object]:
    """Run tests/ddp_training.py under ``torchrun --nproc_per_node 2`` (gloo on CPU) once; the
    tests below read its reports."""
    out = tmp_path_factory.mktemp("ddp")
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    environment.pop("WORLD_SIZE", None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / "tests" / "ddp_training.py"),
        str(out),
    ]
    completed = subprocess.run(
        command, env=environment, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    reports = {rank: torch.load(out / f"rank{rank}.pt") for rank in (0, 1)}
    return {"out": out, "reports": reports}


def assert_same_weights(got: dict, expected: dict, **tolerance) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], **tolerance, msg=name)


def test_two_processes_equal_one_process_at_the_same_global_batch(two_process_run):
    """The sleep loss on given (z, x) pairs is deterministic, so the two-process run (each rank
    4 of the 8 rows, gradients averaged) must follow the one-process run on all 8 rows step for
    step, up to float rounding. Rank 1 built its guide from another seed: DDP starts it from
    rank 0's weights."""
    single = toy.train("sleep", distributed=False)
    assert single["world_size"] == 1
    for rank, report in two_process_run["reports"].items():
        run = report["sleep"]
        assert (run["world_size"], run["rank"], run["steps"]) == (2, rank, toy.STEPS)
        torch.testing.assert_close(
            torch.tensor(run["losses"]), torch.tensor(single["losses"]), rtol=1e-5, atol=1e-6
        )
        assert_same_weights(run["weights"], single["weights"], rtol=1e-5, atol=1e-6)
    # The weights moved: equal runs that did nothing would pass the comparison above.
    untrained = toy.weights(toy.make_guide(0))
    moved = max(
        float((single["weights"][name] - untrained[name]).abs().max()) for name in untrained
    )
    assert moved > 0.1


def test_ranks_agree_under_a_stochastic_loss_and_resume_replays_each_ranks_stream(
    two_process_run,
):
    """Under the ELBO each rank draws its own noise, yet the averaged gradients keep the ranks'
    weights identical; a run stopped at step 6 and resumed from its checkpoint ends exactly
    where the uninterrupted run ends, because the checkpoint holds both ranks' random states."""
    first, second = (two_process_run["reports"][rank] for rank in (0, 1))
    assert first["elbo"]["losses"] == second["elbo"]["losses"]
    assert_same_weights(first["elbo"]["weights"], second["elbo"]["weights"], rtol=0, atol=0)
    for report in (first, second):
        assert report["elbo_first_half"]["steps"] == toy.STEPS // 2
        assert report["elbo_resumed"]["losses"] == report["elbo"]["losses"]
        assert_same_weights(
            report["elbo_resumed"]["weights"], report["elbo"]["weights"], rtol=0, atol=0
        )


def test_only_rank_zero_writes_checkpoints(two_process_run):
    out = two_process_run["out"]
    first, second = (two_process_run["reports"][rank] for rank in (0, 1))
    # Steps 5, 10 and the last (12) of the sleep run, and the end of the first ELBO half.
    assert first["saves"] == [str(out / "sleep.pt")] * 3 + [str(out / "elbo_half.pt")]
    assert second["saves"] == []
    assert second["sleep"]["checkpoint"] == str(out / "sleep.pt")
    saved = svi.load_training_checkpoint(out / "sleep.pt")
    assert (saved["step"], saved["world_size"], len(saved["rng_by_rank"])) == (toy.STEPS, 2, 2)
    assert saved["settings"]["world_size"] == 2
    assert not torch.equal(saved["rng_by_rank"][0]["torch"], saved["rng_by_rank"][1]["torch"])
    assert_same_weights(
        {key[len("encoder.") :]: value for key, value in saved["modules"]["guide"].items()},
        {key[len("encoder.") :]: value for key, value in first["sleep"]["weights"].items()},
        rtol=0,
        atol=0,
    )


def test_a_global_batch_the_processes_cannot_share_equally_is_refused_on_every_rank(
    two_process_run,
):
    for report in two_process_run["reports"].values():
        message = report["uneven_batch_error"]
        assert message is not None and "7 rows" in message and "divisible by 2" in message


def test_resuming_a_two_process_checkpoint_in_one_process_is_refused(two_process_run):
    with pytest.raises(ValueError, match="torchrun --nproc_per_node 2"):
        toy.train("elbo", resume=two_process_run["out"] / "elbo_half.pt", distributed=False)


# --------------------------------------------------------------------------------------------
# A one-process group in this process
# --------------------------------------------------------------------------------------------


@pytest.fixture
def one_process_group(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    torch_dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        torch_dist.destroy_process_group()


@pytest.mark.parametrize("loss", ["sleep", "elbo"])
def test_the_data_parallel_step_equals_svi_step_in_a_one_process_group(one_process_group, loss):
    """With one process the DDP path (loss in DDP's forward, backward outside, Pyro's optimizer)
    must reproduce SVI.step's weights exactly, the random draws of the ELBO included. The ELBO's
    reported value comes from ``differentiable_loss`` (loss + surrogate - its value) instead of
    ``loss_and_grads``, which rounds differently in the last float32 digit."""
    parallel = toy.train(loss)
    assert parallel["world_size"] == 1
    plain = toy.train(loss, distributed=False)
    torch.testing.assert_close(
        torch.tensor(parallel["losses"]), torch.tensor(plain["losses"]), rtol=1e-6, atol=0
    )
    assert_same_weights(parallel["weights"], plain["weights"], rtol=0, atol=0)


class LooseParameterGuide(nn.Module):
    """A guide whose scale is a Pyro parameter that belongs to no module."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.plate_name = "batch"

    def forward(self, observation):
        pyro.module("loose_guide", self)
        scale = pyro.param("loose_scale", torch.ones(3), constraint=dist.constraints.positive)
        with pyro.plate("batch", observation.shape[0]):
            pyro.sample("z", dist.Normal(self.linear(observation), scale).to_event(1))


def test_pyro_parameters_outside_modules_are_refused(one_process_group):
    with pytest.raises(ValueError, match=r"\['loose_scale'\] belong to no module"):
        svi.train_guide(
            toy.Conjugate(),
            LooseParameterGuide(),
            toy.elbo_batches,
            steps=2,
            progress=False,
            seed=0,
        )


def test_distributed_true_without_a_group_or_torchrun_says_how_to_launch(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(RuntimeError, match="torchrun --nproc_per_node N"):
        toy.train("sleep", steps=1, distributed=True)
    with pytest.raises(TypeError, match="distributed must be None"):
        toy.train("sleep", steps=1, distributed="yes")


def test_shard_extras_splits_batch_tensors_and_leaves_the_rest():
    extras = {
        "latents": {"z": torch.arange(8.0).reshape(8, 1)},
        "factor": torch.arange(8),
        "ratio": torch.ones(3),
        "name": "azimuth",
    }
    shard = svi._shard_extras(extras, 8, 4, 8)
    assert torch.equal(shard["latents"]["z"], torch.arange(4.0, 8.0).reshape(4, 1))
    assert torch.equal(shard["factor"], torch.arange(4, 8))
    assert torch.equal(shard["ratio"], torch.ones(3))
    assert shard["name"] == "azimuth"


def test_rank_seeds_keep_rank_zero_and_differ_between_ranks():
    assert svi._rank_seed(7, 0) == 7
    seeds = {svi._rank_seed(7, rank) for rank in range(1, 5)}
    assert len(seeds) == 4 and 7 not in seeds and all(0 <= s < 2**32 for s in seeds)
