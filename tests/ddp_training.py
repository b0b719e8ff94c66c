"""Data-parallel train_guide on a conjugate toy: the runs the distributed tests compare.

Run under ``torchrun --nproc_per_node 2 tests/ddp_training.py OUT`` it trains on every rank and
writes ``OUT/rank{r}.pt``: each run's final weights and losses, the checkpoints this rank wrote,
and its ``TrainResult`` fields. ``tests/unit/test_svi_distributed.py`` runs the same functions in
one process and compares.

The program: ``z ~ N(0, I_3)``, ``image ~ N(slopes * z, 0.5^2 I)``; the guide: an
``EncoderGuide`` over a linear encoder. Two losses:

* ``sleep`` on fixed ``(z, x)`` pairs (the batches carry the latents): deterministic, so a
  data-parallel step must equal a one-process step on the global batch up to float rounding;
* ``elbo``: stochastic (each rank draws its own noise), so it is checked for agreement between
  the ranks and for exact resumption, not against one process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from probgraphics.inference import svi
from probgraphics.nets.guides import EncoderGuide
from probgraphics.programs.simulate import simulate

SLOPES = torch.tensor([2.0, 1.0, 0.5])
#: The global batch: every process gets it and keeps its share.
GLOBAL_BATCH = 8
STEPS = 12
POOL_BATCHES = 6


class Conjugate:
    def __call__(self):
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        return pyro.sample("image", dist.Normal(SLOPES * z, 0.5).to_event(1))


class LinearEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 6)

    def forward(self, x):
        return self.linear(x).chunk(2, dim=-1)


_SCENES = simulate(Conjugate(), n=GLOBAL_BATCH * POOL_BATCHES, seed=123)
_IMAGES = _SCENES["image"].reshape(POOL_BATCHES, GLOBAL_BATCH, 3)
_LATENTS = _SCENES["z"].reshape(POOL_BATCHES, GLOBAL_BATCH, 3)


def sleep_batches(step: int) -> dict:
    """Global batch ``step``: observations and their true latents (the sleep loss then needs no
    simulation and is deterministic)."""
    index = step % POOL_BATCHES
    return {"image": _IMAGES[index], "latents": {"z": _LATENTS[index]}}


def elbo_batches(step: int) -> torch.Tensor:
    return _IMAGES[step % POOL_BATCHES]


def make_guide(init_seed: int = 0) -> EncoderGuide:
    torch.manual_seed(init_seed)
    return EncoderGuide(LinearEncoder(), Conjugate())


def weights(guide: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in guide.state_dict().items()}


def train(loss: str, *, init_seed: int = 0, steps: int = STEPS, **options) -> dict:
    """Train a fresh guide; returns its final weights and the TrainResult's fields."""
    guide = make_guide(init_seed)
    batches = sleep_batches if loss == "sleep" else elbo_batches
    result = svi.train_guide(
        Conjugate(),
        guide,
        batches,
        steps=steps,
        loss=loss,
        lr=0.05,
        seed=0,
        progress=False,
        **options,
    )
    return {
        "weights": weights(guide),
        "losses": list(result.losses),
        "steps": result.steps,
        "world_size": result.world_size,
        "rank": result.rank,
        "checkpoint": None if result.checkpoint is None else str(result.checkpoint),
    }


def main(out: Path) -> None:
    """Each train_guide call below finds torchrun's environment and opens (and closes) the
    process group itself."""
    import os

    saves: list[str] = []
    original_save = svi.atomic_torch_save

    def recording_save(path, payload, **kwargs):
        saves.append(str(path))
        return original_save(path, payload, **kwargs)

    svi.atomic_torch_save = recording_save
    rank = int(os.environ["RANK"])
    report = {
        # Rank 1 builds its guide from another seed: DDP must start every rank from rank 0's.
        "sleep": train(
            "sleep",
            init_seed=rank,
            checkpoint=out / "sleep.pt",
            checkpoint_every=5,
        ),
        "elbo": train("elbo", init_seed=rank),
        "elbo_first_half": train("elbo", steps=STEPS // 2, checkpoint=out / "elbo_half.pt"),
    }
    report["elbo_resumed"] = train("elbo", init_seed=rank, resume=out / "elbo_half.pt")
    try:  # 7 rows cannot be shared by 2 processes: every rank must refuse the same way
        svi.train_guide(Conjugate(), make_guide(), _IMAGES[0, :7], steps=2, progress=False, seed=0)
        report["uneven_batch_error"] = None
    except ValueError as error:
        report["uneven_batch_error"] = str(error)
    report["saves"] = saves
    torch.save(report, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
