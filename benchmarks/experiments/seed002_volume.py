"""Seed 002: volumes from single face images, and face recognition by the shape code.

Trains the twin-tailed network (:mod:`probgraphics.nets.twin`) on image-volume pairs of the face
program (:func:`probgraphics.data.image_volume_pairs`: a face under random pose, light and camera,
with the voxelized mesh of the same face in canonical pose) and measures, on held-out faces:

* **volume prediction error** (seed 002 sec. 4.3): per held-out pair, the mean over voxels of the
  squared difference between the predicted and the true occupancy. The paper says "mean
  voxel-wise Euclidean distance", which for one voxel's scalar is ``|p - t|``; for the binary
  volumes of the nearest-neighbour baseline squared and absolute differences coincide, so both
  are reported (``mse`` and ``mae``). Baselines: the **nearest neighbour** (the training volume
  whose *image* is nearest the test image in pixel space, Euclidean) and the training set's mean
  volume. Paired t-tests (``scipy.stats.ttest_rel``) compare the net with each over the test
  items (paper, against the nearest neighbour only: 0.0096 vs 0.017, t(199) = -21.59);
* **face recognition by shape code** (seed 002 sec. 4.6): a probe face and the same face under
  another azimuth (or, separately, another light direction; everything else kept) are encoded;
  the target sits in a gallery with ``gallery - 1`` random other faces (150 in all in the
  paper), ranked by Euclidean distance of shape codes to the probe's; rank 1 is a hit. As in
  the paper's images, recognition images all have elevation 0 and a centred camera (training
  images vary in both), so only azimuth and light tell images of one face apart. Mean rank
  over ``trials`` probes (paper: 11.08 under pose change and 1.02 under light change with the
  shape code; 26.86 and 1.14 with the whole code). The whole code and raw pixels are ranked the
  same way for comparison.

Training (seed 002 sec. 4.1 and 4.5): Adam (lr 1e-3, as the paper), minibatches of shuffled
training pairs; every step runs both decoders and minimizes volume MSE + image MSE, the image
decoder reading the shape code detached (:class:`~probgraphics.nets.ImageDecoder`), so the shape
code learns from the volume loss alone. The paper instead alternates the two decoders every
three batches; summing both losses each step gives the encoder the same two signals without
halving the volume decoder's updates on a CPU budget.

Differences from the paper (kept in the output): the synthetic 3DMM instead of the Basel Face
Model; continuous random azimuth, elevation, light and camera (the paper: five azimuths, three
lightings); grayscale images at 32 px and 32^3 volumes in ``quick`` (80 px RGB and 80^3 in the
paper; ``full`` uses 80 px RGB and 40^3). The error's scale depends on the volume resolution and
how much of it the face fills, so compare the ratio net / nearest neighbour, not the absolute
numbers.

    python benchmarks/experiments/seed002_volume.py --size tiny     # < 20 s, numbers meaningless
    python benchmarks/experiments/seed002_volume.py                 # quick: a few minutes
    python benchmarks/experiments/seed002_volume.py --size full     # the experiment (~1 h CPU)

Writes ``seed002_volume.md`` (tables, the command at the top), ``seed002_volume.png`` (test
images with true, predicted and nearest-neighbour volumes as max-projections; rank histograms)
and ``seed002_volume.json`` into ``--out-dir``.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch  # noqa: E402

# This folder (_shared.py) and benchmarks/ (_common.py): the scripts are run as files.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import _shared  # noqa: E402
from _common import format_table  # noqa: E402

import probgraphics as pg  # noqa: E402
from probgraphics.config import set_num_threads  # noqa: E402
from probgraphics.data import image_volume_pairs, random_scenes  # noqa: E402
from probgraphics.evaluation import voxel_iou  # noqa: E402
from probgraphics.nets.summaries import evaluation_mode  # noqa: E402
from probgraphics.nets.twin import TwinConfig, TwinTailed  # noqa: E402
from probgraphics.training import ShuffledBatches  # noqa: E402

NAME = "seed002_volume"

#: Held-out data is drawn with these seed offsets (plus ``--seed``); training pairs use seeds
#: ``--seed * 1000 + chunk``, far below them.
TEST_SEED = 2_000_000
RECOGNITION_SEED = 3_000_000

#: Seed 002's numbers (sec. 4.3 and 4.6).
PAPER = {
    "net_error": 0.0096,
    "net_error_sd": 0.0013,
    "nearest_error": 0.017,
    "nearest_error_sd": 0.0038,
    "t": -21.5945,
    "rank": {
        ("pose", "shape code"): 11.08,
        ("light", "shape code"): 1.02,
        ("pose", "whole code"): 26.86,
        ("light", "whole code"): 1.14,
    },
    "gallery": 150,
    "trials": 100,
    "test_pairs": 200,
}

#: What varies between probe and target in each recognition condition (everything else kept).
CONDITIONS = {"pose": ("azimuth",), "light": ("light",)}

#: Per size: data, training and evaluation sizes, and the network's widths.
SIZES: dict[str, dict] = {
    "tiny": {
        "image_size": 16,
        "color": "gray",
        "volume_size": 8,
        "pairs": 48,
        "steps": 4,
        "batch_size": 8,
        "test_pairs": 12,
        "trials": 6,
        "gallery": 8,
        "pool": 24,
        "net": {
            "encoder_channels": (4, 6, 8),
            "localisation_channels": 4,
            "encoder_hidden": 16,
            "shape_code_size": 10,
            "transformation_code_size": 3,
            "volume_channels": (6, 4),
            "image_channels": (8, 6, 4),
        },
    },
    "quick": {
        "image_size": 32,
        "color": "gray",
        "volume_size": 32,
        "pairs": 4800,
        "steps": 300,
        "batch_size": 16,
        "test_pairs": 200,
        "trials": 100,
        "gallery": 150,
        "pool": 1000,
        "net": {
            "encoder_channels": (16, 32, 32),
            "localisation_channels": 8,
            "encoder_hidden": 256,
            "volume_channels": (16, 8, 4),
            "image_channels": (32, 16, 8),
        },
    },
    "full": {
        "image_size": 80,
        "color": "rgb",
        "volume_size": 40,
        "pairs": 16000,
        "steps": 1600,
        "batch_size": 10,
        "test_pairs": 200,
        "trials": 100,
        "gallery": 150,
        "pool": 2000,
        "net": {"encoder_hidden": 3000, "volume_channels": (64, 32, 16)},
    },
}

#: Model-space cube voxelized into the volumes (the synthetic head fits in about [-1.1, 1.1]^3).
BOUNDS = (-1.2, 1.2)
CHUNK = 1000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _shared.add_common_arguments(
        parser,
        seed_help="training data, init and batches",
        device_help="where the network trains (cpu, cuda)",
    )
    parser.add_argument("--pairs", type=int, default=None, help="training pairs")
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--batch-size", type=int, default=None, help="pairs per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (paper 1e-3)")
    parser.add_argument("--test-pairs", type=int, default=None, help="held-out pairs")
    parser.add_argument("--trials", type=int, default=None, help="recognition probes")
    parser.add_argument("--gallery", type=int, default=None, help="faces ranked per probe")
    args = parser.parse_args(argv)
    preset = SIZES[args.size]
    minimums = {"pairs": 2, "steps": 1, "batch_size": 2, "test_pairs": 2, "trials": 1, "gallery": 2}
    problems = _shared.fill_from_preset(args, preset, minimums)
    if args.batch_size > args.pairs:
        problems.append(f"--batch-size {args.batch_size} exceeds --pairs {args.pairs}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        problems.append(f"--lr must be positive, got {args.lr}")
    if problems:
        parser.error("; ".join(problems))
    # The distractor pool must hold a whole gallery's distractors.
    args.pool = max(preset["pool"], args.gallery - 1)
    return args


def make_pairs(program, n: int, resolution: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` image-volume pairs drawn in chunks (seeds ``seed + chunk``): images ``(n, C, S, S)``
    float32 and volumes ``(n, R, R, R)`` bool (an eighth of float32's memory)."""
    images, volumes = [], []
    for index, start in enumerate(range(0, n, CHUNK)):
        pairs = image_volume_pairs(
            program, min(CHUNK, n - start), resolution=resolution, seed=seed + index, bounds=BOUNDS
        )
        images.append(pairs.images.float())
        volumes.append(pairs.volumes > 0.5)
    return torch.cat(images), torch.cat(volumes)


def train(net: TwinTailed, images, volumes, args, device) -> dict:
    """Adam on volume MSE + image MSE (shape code detached in the image decoder); returns the
    per-step losses."""
    batches = ShuffledBatches(images, args.batch_size, seed=args.seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=args.lr)
    net.train()
    volume_losses, image_losses = [], []
    for step in range(args.steps):
        batch = batches(step)
        x = batch["images"].to(device)
        target = volumes[batch["indices"]].to(device=device, dtype=torch.float32)
        out = net(x)
        volume_loss = (out.volume - target).square().mean()
        image_loss = (out.image - x).square().mean()
        optimizer.zero_grad(set_to_none=True)
        (volume_loss + image_loss).backward()
        optimizer.step()
        volume_losses.append(float(volume_loss.detach()))
        image_losses.append(float(image_loss.detach()))
    net.eval()
    return {"volume": volume_losses, "image": image_losses}


def encode(net: TwinTailed, images: torch.Tensor, device, *, volumes: bool = False):
    """Eval-mode codes ``(n, K_shape)``, ``(n, K_transformation)`` and, with ``volumes``, the
    predicted volumes ``(n, R, R, R)``, all on the CPU."""
    shape_codes, transformation_codes, predicted = [], [], []
    with torch.no_grad(), evaluation_mode(net):
        for chunk in images.split(256):
            out = net(chunk.to(device), volume=volumes, image=False)
            shape_codes.append(out.shape_code.cpu())
            transformation_codes.append(out.transformation_code.cpu())
            if volumes:
                predicted.append(out.volume.cpu())
    return (
        torch.cat(shape_codes),
        torch.cat(transformation_codes),
        torch.cat(predicted) if volumes else None,
    )


def nearest_indices(query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Index ``(n,)`` into ``reference`` of each query's nearest item, Euclidean over pixels."""
    reference = reference.flatten(1)
    found = []
    for chunk in query.flatten(1).split(64):
        distances = torch.cat([torch.cdist(chunk, part) for part in reference.split(4096)], dim=1)
        found.append(distances.argmin(dim=1))
    return torch.cat(found)


def volume_errors(predicted: torch.Tensor, true: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-item errors ``(n,)``: mean squared and mean absolute difference over voxels, and
    IoU of the occupancy thresholded at 0.5."""
    difference = (predicted.float() - true.float()).flatten(1)
    return {
        "mse": difference.square().mean(1),
        "mae": difference.abs().mean(1),
        "iou": voxel_iou(predicted.float(), true.float()),
    }


def describe(errors: dict[str, torch.Tensor]) -> dict[str, float]:
    return {
        "mse": float(errors["mse"].mean()),
        "mse_sd": float(errors["mse"].std()),
        "mae": float(errors["mae"].mean()),
        "iou": float(errors["iou"].mean()),
    }


def recognition_latents(program, n: int, seed: int) -> dict[str, torch.Tensor]:
    """Latents of ``n`` prior faces for the recognition test, with the elevation at 0 and the
    camera centred (its scale at the middle of the range) for every face, as in seed 002's
    images (frontal camera; only azimuth and light vary across images)."""
    scenes = random_scenes(program, n, seed=seed)
    latents = {name: scenes[name] for name in program.latent_sites}
    latents["elevation"] = torch.zeros_like(latents["elevation"])
    latents["camera"] = torch.full_like(latents["camera"], 0.5)
    return latents


def render(program, latents: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return program.render(**latents)


def identity_views(program, n: int, sites: tuple[str, ...], seed: int):
    """``n`` faces seen twice: ``(probe, target)`` renders ``(n, C, S, S)`` that differ only in
    ``sites`` (drawn afresh from the prior for the target); see :func:`recognition_latents`."""
    latents = recognition_latents(program, n, seed)
    changed = recognition_latents(program, n, seed + 1)
    target = {**latents, **{name: changed[name] for name in sites}}
    return render(program, latents), render(program, target)


def identity_ranks(
    probe: torch.Tensor,
    target: torch.Tensor,
    pool: torch.Tensor,
    gallery: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Rank ``(T,)`` int64 of each target among ``gallery`` items (itself plus ``gallery - 1``
    items drawn from ``pool`` without replacement, fresh per probe), by Euclidean distance of
    the features ``(T, K)`` / ``(P, K)`` to the probe's. Rank 1: the target is nearest; a tie
    counts in the target's favour."""
    ranks = []
    for index in range(probe.shape[0]):
        distractors = pool[torch.randperm(pool.shape[0], generator=generator)[: gallery - 1]]
        to_target = (probe[index] - target[index]).norm()
        to_distractors = (distractors - probe[index]).norm(dim=1)
        ranks.append(1 + int((to_distractors < to_target).sum()))
    return torch.tensor(ranks, dtype=torch.int64)


def max_projections(volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Front (max over depth) and side (max over x) views ``(R, R)`` of a volume (y, z, x),
    clipped to [0, 1]."""
    volume = volume.float().clamp(0.0, 1.0)
    return volume.amax(dim=1), volume.amax(dim=2)


def figure(test_images, true, predicted, nearest_images, nearest_volumes, ranks, errors, args):
    from matplotlib.figure import Figure

    shown = min(4, test_images.shape[0])
    columns = ["input", "true front", "true side", "net front", "net side"]
    columns += ["NN image", "NN front", "NN side"]
    fig = Figure(figsize=(1.3 * len(columns), 1.4 * shown + 2.6))
    grid = fig.add_gridspec(shown + 2, len(columns), height_ratios=[1] * shown + [0.25, 1.8])

    def show(ax, image: torch.Tensor, title: str | None) -> None:
        image = image.clamp(0.0, 1.0)
        if image.dim() == 3:
            image = image.permute(1, 2, 0)
            image = image[..., 0] if image.shape[-1] == 1 else image
        ax.imshow(image.numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_axis_off()
        if title:
            ax.set_title(title, fontsize=7)

    for row in range(shown):
        panels = [test_images[row], *max_projections(true[row])]
        panels += [*max_projections(predicted[row]), nearest_images[row]]
        panels += [*max_projections(nearest_volumes[row])]
        for column, panel in enumerate(panels):
            ax = fig.add_subplot(grid[row, column])
            show(ax, panel, columns[column] if row == 0 else None)
            if column == 0:
                ax.text(
                    -0.08,
                    0.5,
                    f"MSE\nnet {errors['net'][row]:.3g}\nNN {errors['nearest'][row]:.3g}",
                    transform=ax.transAxes,
                    ha="right",
                    va="center",
                    fontsize=6,
                )
    halves = [grid[shown + 1, : len(columns) // 2], grid[shown + 1, len(columns) // 2 :]]
    bins = torch.arange(0.5, args.gallery + 1.5).tolist()
    for cell, condition in zip(halves, CONDITIONS, strict=True):
        ax = fig.add_subplot(cell)
        for representation, colour in (("shape code", "C0"), ("pixels", "C2")):
            values = ranks[condition][representation].tolist()
            ax.hist(values, bins=bins, color=colour, alpha=0.6, label=representation)
        ax.set_title(f"rank of the same face, {condition} changed", fontsize=8)
        ax.set_xlabel(f"rank among {args.gallery}", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    fig.suptitle(
        f"seed 002 ({args.size}): volumes as max-projections (front: over depth; side: over x)",
        fontsize=9,
    )
    return fig


def markdown(result: dict) -> str:
    args = result["settings"]
    volume_rows = []
    paper_cells = {
        "twin net": f"{PAPER['net_error']} (SD {PAPER['net_error_sd']})",
        "nearest neighbour (pixels)": f"{PAPER['nearest_error']} (SD {PAPER['nearest_error_sd']})",
        "training mean volume": "-",
    }
    for label, key in (
        ("twin net", "net"),
        ("nearest neighbour (pixels)", "nearest"),
        ("training mean volume", "mean_volume"),
    ):
        stats = result["volume"][key]
        volume_rows.append(
            {
                "predictor": label,
                "error (MSE/voxel)": stats["mse"],
                "SD": stats["mse_sd"],
                "mean abs/voxel": stats["mae"],
                "IoU@0.5": stats["iou"],
                "paper error": paper_cells[label],
            }
        )
    test = result["volume"]["t_test"]
    against_mean = result["volume"]["t_test_mean_volume"]
    rank_rows = []
    for row in result["recognition"]["rows"]:
        rank_rows.append(
            {
                **row,
                "paper mean rank": PAPER["rank"].get(
                    (row["condition"], row["representation"]), "-"
                ),
            }
        )
    data = result["data"]
    lines = [
        "# Seed 002: volumes from single face images, face recognition by shape code",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Twin-tailed net trained {args['steps']} steps (batch {args['batch_size']}, Adam lr "
        f"{args['lr']}, volume MSE + image MSE, shape code detached in the image decoder) on "
        f"{args['pairs']} pairs of {data['program']} images ({data['image']}) and "
        f"{data['volume']} volumes; evaluated on {args['test_pairs']} held-out pairs. Paper: "
        f"Basel Face Model, 16,000 pairs of 80 px RGB images and 80^3 volumes, 200 test pairs.",
        "",
        "## Volume prediction error (seed 002 sec. 4.3)",
        "",
        format_table(
            volume_rows,
            ["predictor", "error (MSE/voxel)", "SD", "mean abs/voxel", "IoU@0.5", "paper error"],
        ),
        "",
        f"Paired t-test, net vs nearest neighbour (MSE per item): t({test['df']}) = "
        f"{test['t']:.4g}, p = {test['p']:.3g} (paper: t(199) = {PAPER['t']}, p = 4.7e-54). "
        f"Net / nearest-neighbour error ratio: {result['volume']['ratio_net_to_nearest']:.3g} "
        f"(paper {PAPER['net_error'] / PAPER['nearest_error']:.3g}). The paper's "
        "'voxel-wise Euclidean distance' is |p - t| per voxel; for the binary nearest-neighbour "
        "volumes it equals the squared difference. Net vs the training mean volume (a "
        f"predictor that ignores the image; not in the paper): t({against_mean['df']}) = "
        f"{against_mean['t']:.4g}, p = {against_mean['p']:.3g} (negative: the net is better).",
        "",
        "## Recognition by code (seed 002 sec. 4.6)",
        "",
        f"Mean rank of the same face among a gallery of {args['gallery']} (the target plus "
        f"{args['gallery'] - 1} random faces drawn per probe from a pool of {args['pool']}), "
        f"{args['trials']} probes per condition, Euclidean distance; chance is "
        f"{(args['gallery'] + 1) / 2:.4g}. Paper: gallery of {PAPER['gallery']}, "
        f"{PAPER['trials']} probes. Pose: the azimuth is redrawn (uniform over the program's "
        "range); light: the light direction is redrawn; everything else is kept. As in the "
        "paper's images, every recognition image has elevation 0 and the camera centred; "
        "training images vary in both.",
        "",
        format_table(
            rank_rows,
            [
                "condition",
                "representation",
                "mean rank",
                "median rank",
                "top-1",
                "paper mean rank",
            ],
        ),
        "",
        f"Wall time: {result['seconds']['total']:.1f} s ({result['settings']['threads']} "
        "thread(s)).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    command = _shared.command_line(NAME, argv)
    threads = set_num_threads(args.threads)
    device = torch.device(args.device)
    preset = SIZES[args.size]
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    program = pg.programs.face(resolution=preset["image_size"], color=preset["color"])
    clock = time.perf_counter()
    train_images, train_volumes = make_pairs(
        program, args.pairs, preset["volume_size"], seed=args.seed * 1000
    )
    test_images, test_volumes = make_pairs(
        program, args.test_pairs, preset["volume_size"], seed=TEST_SEED + args.seed
    )
    seconds["data"] = time.perf_counter() - clock

    config = TwinConfig(
        image_size=preset["image_size"],
        in_channels=program.channels,
        volume_size=preset["volume_size"],
        **preset["net"],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        net = TwinTailed(config).to(device)
        clock = time.perf_counter()
        losses = train(net, train_images, train_volumes, args, device)
    seconds["training"] = time.perf_counter() - clock

    # Volume prediction on held-out pairs, against the nearest neighbour and the mean volume.
    clock = time.perf_counter()
    test_shape, test_transformation, predicted = encode(net, test_images, device, volumes=True)
    nearest = nearest_indices(test_images, train_images)
    nearest_volumes = train_volumes[nearest]
    # Summed in chunks: the whole training set as float32 would be 32 bits a voxel.
    total = sum(chunk.sum(0, dtype=torch.float32) for chunk in train_volumes.split(CHUNK))
    mean_volume = (total / args.pairs).expand_as(test_volumes)
    errors = {
        "net": volume_errors(predicted, test_volumes),
        "nearest": volume_errors(nearest_volumes, test_volumes),
        "mean_volume": volume_errors(mean_volume, test_volumes),
    }
    from scipy.stats import ttest_rel

    volume = {key: describe(value) for key, value in errors.items()}
    for name, other in (("t_test", "nearest"), ("t_test_mean_volume", "mean_volume")):
        test = ttest_rel(errors["net"]["mse"].double().numpy(), errors[other]["mse"].numpy())
        volume[name] = {
            "against": other,
            "t": float(test.statistic),
            "p": float(test.pvalue),
            "df": args.test_pairs - 1,
            "measure": "mse",
        }
    volume["ratio_net_to_nearest"] = volume["net"]["mse"] / max(volume["nearest"]["mse"], 1e-12)
    volume["per_item"] = {key: value["mse"].tolist() for key, value in errors.items()}
    seconds["volume_evaluation"] = time.perf_counter() - clock

    # Recognition: rank of the same face under a changed pose or light.
    clock = time.perf_counter()
    pool_images = render(
        program, recognition_latents(program, args.pool, seed=RECOGNITION_SEED + args.seed)
    )
    pool_shape, pool_transformation, _ = encode(net, pool_images, device)
    pools = {
        "shape code": pool_shape,
        "whole code": torch.cat([pool_shape, pool_transformation], dim=1),
        "pixels": pool_images.flatten(1),
    }
    ranks: dict[str, dict[str, torch.Tensor]] = {}
    rows = []
    for offset, (condition, sites) in enumerate(CONDITIONS.items(), start=1):
        probe, target = identity_views(
            program, args.trials, sites, seed=RECOGNITION_SEED + args.seed + 10 * offset
        )
        features = {}
        for role, images in (("probe", probe), ("target", target)):
            shape_code, transformation_code, _ = encode(net, images, device)
            features[role] = {
                "shape code": shape_code,
                "whole code": torch.cat([shape_code, transformation_code], dim=1),
                "pixels": images.flatten(1),
            }
        ranks[condition] = {}
        for representation, pool in pools.items():
            # One generator per condition and representation: the same galleries for each.
            generator = torch.Generator().manual_seed(args.seed + offset)
            found = identity_ranks(
                features["probe"][representation],
                features["target"][representation],
                pool,
                args.gallery,
                generator,
            )
            ranks[condition][representation] = found
            rows.append(
                {
                    "condition": condition,
                    "representation": representation,
                    "mean rank": float(found.double().mean()),
                    "median rank": float(found.double().median()),
                    "top-1": float((found == 1).double().mean()),
                }
            )
    seconds["recognition"] = time.perf_counter() - clock
    seconds["total"] = time.perf_counter() - started

    settings = {
        key: getattr(args, key)
        for key in (
            "size",
            "seed",
            "pairs",
            "steps",
            "batch_size",
            "lr",
            "test_pairs",
            "trials",
            "gallery",
            "pool",
            "device",
        )
    }
    settings["threads"] = threads
    result = {
        "experiment": NAME,
        "command": command,
        "settings": settings,
        "data": {
            "program": repr(program),
            "image": f"{program.channels}x{preset['image_size']}x{preset['image_size']}",
            "volume": f"{preset['volume_size']}^3 over {BOUNDS}^3",
            "occupancy": float(test_volumes.float().mean()),
            "train_seeds": f"{args.seed * 1000} + chunk",
            "test_seed": TEST_SEED + args.seed,
            "recognition_seed": RECOGNITION_SEED + args.seed,
        },
        "net": config.to_dict(),
        "training": {
            "final_volume_loss": statistics.fmean(losses["volume"][-20:]),
            "final_image_loss": statistics.fmean(losses["image"][-20:]),
            "volume_loss": losses["volume"],
            "image_loss": losses["image"],
            "optimizer": f"Adam(lr={args.lr})",
            "loss": "volume MSE + image MSE, shape code detached in the image decoder",
        },
        "volume": volume,
        "recognition": {
            "rows": rows,
            "ranks": {c: {r: v.tolist() for r, v in by.items()} for c, by in ranks.items()},
            "distance": "euclidean",
            "chance_mean_rank": (args.gallery + 1) / 2,
        },
        "paper": {
            **{k: v for k, v in PAPER.items() if k != "rank"},
            "rank": [
                {"condition": c, "representation": r, "mean rank": v}
                for (c, r), v in PAPER["rank"].items()
            ],
        },
        "seconds": seconds,
    }

    fig = figure(
        test_images,
        test_volumes,
        predicted,
        train_images[nearest],
        nearest_volumes,
        ranks,
        {key: value["mse"].tolist() for key, value in errors.items()},
        args,
    )
    report = markdown(result)
    print(report)
    _shared.write_outputs(args.out_dir, NAME, markdown=report, figure=fig, payload=result)
    return result


if __name__ == "__main__":
    main()
