"""Images per second of infer_many on 1 and 2 Dask workers, beside a plain in-process loop.

The workload is one face scene inference per image (the face program at 32 px by default,
abc_mcmc on the pixel summary, 16 chains x 100 draws after 100 warm-up steps, a pilot of 256:
about 4,000 simulations an image), the same images and seeds for every row. Each worker count
gets its own LocalCluster of single-threaded worker processes; the cluster start and a warm-up
round (one image per worker: imports, numba compilation, the program's transfer) are timed
apart from the steady rounds, whose best images/s is the figure. The in-process loop runs on one
thread with no Dask at all. The rounds interleave the runners (loop, 1 worker, 2 workers, loop,
...) so the machine's load, which other work shares, hits them alike; the load average is
recorded. Every row's posteriors are checked to be identical (bit for bit) to the loop's.

A second table measures data-parallel guide training (train_guide under torchrun, gloo): the
face-guide-64 recipe's step (the sleep loss: the face program at 64 px simulates the global batch
of 32 scenes, 16 on each of 2 processes, and the DC-IGN encoder is fit to them) as steps/s in one
plain process, under torchrun with 1 process, and under torchrun with 2, each process on one
thread; the first steps (allocation, numba compilation) are left out of the timing.

Prints markdown tables and writes benchmarks/results/scale.json.

    python benchmarks/scale.py                   # both tables
    python benchmarks/scale.py --part images     # or --part training
    python benchmarks/scale.py --quick           # 4 images at 16 px, 6 training steps
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import format_table, write_json  # noqa: E402

import probgraphics as pg  # noqa: E402
from probgraphics.config import set_num_threads  # noqa: E402
from probgraphics.scale import local_client  # noqa: E402


def identical(a: pg.Posterior, b: pg.Posterior) -> bool:
    return all(torch.equal(a.samples[k], b.samples[k]) for k in b.samples) and all(
        torch.equal(a.sample_stats[k], b.sample_stats[k]) for k in b.sample_stats
    )


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def run_loop(program, images, seeds, options) -> tuple[list[pg.Posterior], float]:
    set_num_threads(1)
    start = time.perf_counter()
    posteriors = [
        pg.infer(program, image, seed=seed, progress=False, **options)
        for image, seed in zip(images, seeds)
    ]
    return posteriors, time.perf_counter() - start


def start_cluster(stack, workers: int, program, images, seed, options) -> dict:
    """:func:`probgraphics.scale.local_client` of ``workers`` single-threaded processes, warmed
    up: one image per worker (imports, numba compilation and the program's transfer) so the
    timed rounds are steady."""
    started = time.perf_counter()
    client = stack.enter_context(local_client(workers))
    cluster_seconds = time.perf_counter() - started
    started = time.perf_counter()
    pg.infer_many(
        program, images[:workers], client=client, seed=seed + 1, progress=False, **options
    )
    return {
        "client": client,
        "cluster_start_s": cluster_seconds,
        "warmup_s": time.perf_counter() - started,
    }


#: Training table: the global batch (scenes a step, shared by the processes) and the steps.
TRAINING_BATCH = 32
TRAINING_STEPS = 30
#: Steps left out of the timing (allocation, numba compilation, DDP's first buckets).
TRAINING_WARMUP_STEPS = 3


def train_face_guide(steps: int, batch: int, distributed: bool) -> tuple[list[float], int]:
    """The face-guide-64 recipe's training step (sleep loss, global batch ``batch``) for
    ``steps`` steps; returns each step's end time (perf_counter) and the world size."""
    from probgraphics.inference.svi import train_guide
    from probgraphics.nets.dcign import DCIGNEncoder
    from probgraphics.nets.guides import EncoderGuide
    from probgraphics.training import FACE_GUIDE_64, initialize_encoder, site_code_layout

    set_num_threads(1)
    program = pg.programs.face(resolution=64)
    layout = site_code_layout(program)
    torch.manual_seed(0)
    encoder = initialize_encoder(DCIGNEncoder(FACE_GUIDE_64))
    guide = EncoderGuide(encoder, program, site_layout=dict(layout.groups))
    ends: list[float] = []
    result = train_guide(
        program,
        guide,
        batch,
        steps=steps,
        loss="sleep",
        lr=1e-3,
        seed=0,
        progress=False,
        distributed=distributed,
        callback=lambda step, loss: ends.append(time.perf_counter()),
    )
    return ends, result.world_size


def ddp_worker(out: Path, steps: int, batch: int) -> int:
    """Run under torchrun: train, and rank 0 writes its step times to ``out``."""
    ends, world_size = train_face_guide(steps, batch, distributed=True)
    if int(os.environ.get("RANK", "0")) == 0:
        out.write_text(json.dumps({"ends": ends, "world_size": world_size}))
    return 0


def steps_per_second(ends: list[float]) -> float:
    timed = ends[TRAINING_WARMUP_STEPS - 1 :]
    return (len(timed) - 1) / (timed[-1] - timed[0])


def training_table(steps: int, batch: int) -> list[dict]:
    rows = []
    ends, _ = train_face_guide(steps, batch, distributed=False)
    plain = steps_per_second(ends)
    rows.append({"runner": "train_guide, one plain process", "processes": 1, "steps_per_s": plain})
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    root = str(Path(__file__).resolve().parent.parent)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    for processes in (1, 2):
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "times.json"
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc_per_node",
                str(processes),
                str(Path(__file__).resolve()),
                "--ddp-worker",
                str(out),
                "--steps",
                str(steps),
                "--batch",
                str(batch),
            ]
            subprocess.run(command, env=environment, check=True, capture_output=True)
            report = json.loads(out.read_text())
        rows.append(
            {
                "runner": f"train_guide under torchrun, {processes} process(es) (gloo)",
                "processes": report["world_size"],
                "steps_per_s": steps_per_second(report["ends"]),
            }
        )
    for row in rows:
        row["global_batch"] = batch
        row["scenes_per_s"] = row["steps_per_s"] * batch
        row["vs_plain"] = row["steps_per_s"] / plain
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 images at 16 px, one round")
    parser.add_argument("--part", choices=("all", "images", "training"), default="all")
    parser.add_argument("--images", type=int, default=None, help="images per round (default 8)")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default 32)")
    parser.add_argument("--workers", default="1,2", help="worker counts (default: 1,2)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ddp-worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 30)")
    parser.add_argument("--batch", type=int, default=TRAINING_BATCH, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = args.steps or (6 if args.quick else TRAINING_STEPS)
    if args.ddp_worker is not None:
        return ddp_worker(args.ddp_worker, steps, args.batch)
    training = None
    if args.part in ("all", "training"):
        training = training_table(steps, args.batch)
        print(
            f"guide training: face-guide-64 step (sleep loss, face 64 px), global batch "
            f"{args.batch}, {steps} steps, the first {TRAINING_WARMUP_STEPS} untimed"
        )
        columns = ["runner", "global_batch", "steps_per_s", "scenes_per_s", "vs_plain"]
        print(format_table(training, columns))
    if args.part == "training":
        path = write_json("scale_training", {"training": training})
        print(f"wrote {path}")
        return 0
    count = args.images or (4 if args.quick else 8)
    resolution = args.resolution or (16 if args.quick else 32)
    rounds = args.rounds or (1 if args.quick else 3)
    worker_counts = [int(text) for text in args.workers.split(",")]
    options = {
        "method": "abc_mcmc",
        "summary": "pixel",
        "init": "pilot",
        "chains": 16,
        "draws": 50 if args.quick else 100,
        "warmup": 50 if args.quick else 100,
        "pilot_size": 256,
    }
    program = pg.programs.face(resolution=resolution)
    images = list(pg.programs.simulate(program, n=count, seed=args.seed + 1000)["image"])
    seeds = pg.image_seeds(args.seed, count)

    load_before = load_average()
    times: dict[str, list[float]] = {"loop": [], **{w: [] for w in worker_counts}}
    same = {w: True for w in worker_counts}
    with contextlib.ExitStack() as stack:
        clusters = {
            w: start_cluster(stack, w, program, images, args.seed, options) for w in worker_counts
        }
        # Rounds interleave the runners, so a change in the machine's load hits them alike.
        for _ in range(rounds):
            loop, seconds = run_loop(program, images, seeds, options)
            times["loop"].append(seconds)
            for workers in worker_counts:
                started = time.perf_counter()
                result = pg.infer_many(
                    program,
                    images,
                    client=clusters[workers]["client"],
                    seed=args.seed,
                    progress=False,
                    **options,
                )
                times[workers].append(time.perf_counter() - started)
                same[workers] &= not result.failures and all(
                    identical(result[name], expected) for name, expected in zip(result.names, loop)
                )
    load_after = load_average()
    simulations = sum(p.n_simulations for p in loop)

    def row(runner: str, key, workers: int) -> dict:
        best = min(times[key])
        return {
            "runner": runner,
            "workers": workers,
            "images": count,
            "best_s": best,
            "median_s": statistics.median(times[key]),
            "images_per_s": count / best,
            "sims_per_s": simulations / best,
            "cluster_start_s": clusters[key]["cluster_start_s"] if key in clusters else 0.0,
            "warmup_s": clusters[key]["warmup_s"] if key in clusters else 0.0,
            "identical_to_loop": same.get(key, True),
            "seconds_by_round": times[key],
        }

    rows = [row("in-process loop (1 thread, no Dask)", "loop", 1)]
    rows += [row(f"infer_many, LocalCluster of {w}", w, w) for w in worker_counts]
    base = next((r["images_per_s"] for r in rows if r["runner"].endswith("of 1")), None)
    for r in rows:
        r["vs_1_worker"] = r["images_per_s"] / base if base else float("nan")
    columns = [
        "runner",
        "images",
        "best_s",
        "median_s",
        "images_per_s",
        "sims_per_s",
        "vs_1_worker",
        "cluster_start_s",
        "warmup_s",
        "identical_to_loop",
    ]
    print(
        f"face program {resolution} px, abc_mcmc {options['chains']} chains x "
        f"{options['draws']} draws + {options['warmup']} warm-up, pilot {options['pilot_size']}, "
        f"{simulations // count} simulations an image; best of {rounds} round(s); load average "
        f"{load_before} -> {load_after} on {os.cpu_count()} cores"
    )
    print(format_table(rows, columns))
    path = write_json(
        "scale",
        {
            "workload": {
                "program": repr(program),
                "images": count,
                "rounds": rounds,
                "seed": args.seed,
                "simulations_per_image": simulations / count,
                **options,
            },
            "load_average": {"before": load_before, "after": load_after},
            "rows": rows,
            "training": training,
        },
    )
    print(f"wrote {path}")
    return 0 if all(r["identical_to_loop"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
