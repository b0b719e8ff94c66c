"""Simulations ABC-MCMC needs to get close to a face scene when its chains start from a trained
guide (``init="guide"``, seed 000's coarse-to-fine) against starting from the best pilot
particles (``init="pilot"``).

For each of ``--images`` face scenes simulated with held-out seeds (``HELD_OUT_SEED + i``), both
runs use the same summary, distance, chains, pilot and ABC seed, so their pilots are the same
simulations and their distances share one scale. The target distance is ``--threshold-factor``
times the median distance of simulations *at the true scene* (the chains set to the truth, fresh
observation noise: what a perfect sampler would see), unless ``--threshold`` gives it. Each run
takes warm-up steps one at a time (up to ``--max-steps``) and records the simulations spent
(pilot and start included, the simulator's own count) when the median over chains of the
current distance first falls to the target. ``init="guide"`` starts the chains at draws of the
guide's q(z | image), so its start row also says how close the guide alone gets.

The guide is ``--guide NAME`` (a bundled network, default ``face-guide-64``) or ``--weights
PATH`` (any checkpoint; :func:`probgraphics.nets.guides.load_guide` maps its code to the face
program's sites, falling back to a DC-IGN's azimuth / elevation / light units).

Prints a markdown table and writes ``benchmarks/results/guide_init.json`` atomically.

    python benchmarks/guide_init.py                       # needs face-guide-64 weights
    python benchmarks/guide_init.py --weights guide.pt    # any checkpoint
    python benchmarks/guide_init.py --quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, format_table, write_json  # noqa: E402

import probgraphics as pg  # noqa: E402
from probgraphics import api  # noqa: E402
from probgraphics.config import set_num_threads  # noqa: E402
from probgraphics.inference import runner  # noqa: E402

#: Held-out scenes are simulated with seeds HELD_OUT_SEED + i (training recipes draw random
#: 62-bit batch seeds, so these are as good as unseen).
HELD_OUT_SEED = 3_000_000
LATENTS = ("shape", "texture", "azimuth", "elevation", "light", "camera")
INITS = ("pilot", "guide")


def checkpoint_of(source: str | Path) -> Path:
    """The checkpoint file of a path or a bundled name (SystemExit with a hint when missing)."""
    from probgraphics.nets.pretrained import weights_path

    path = Path(source)
    if path.is_file():
        return path
    if isinstance(source, Path) or os.sep in str(source):
        raise SystemExit(f"guide_init: no checkpoint at {str(source)!r}.")
    try:
        return weights_path(str(source))
    except KeyError as error:
        raise SystemExit(
            f"guide_init: no trained weights for {source!r} ({error.args[0]}) Train that network "
            "first, or pass --weights PATH (a checkpoint written by "
            "probgraphics.nets.save_checkpoint)."
        ) from None


def checkpoint_resolution(path: Path) -> int | None:
    from probgraphics.nets import load_checkpoint

    return getattr(load_checkpoint(path).config, "image_size", None)


def load_summary(spec: str):
    """``"pixel"``, a bundled network name (``NAME:group,group`` for part of its code), or a
    checkpoint path -> ``(summary, description)``."""
    from probgraphics.nets import EncoderSummary, load_checkpoint, pretrained_summary

    if spec == "pixel":
        return "pixel", "pixel"
    if Path(spec).is_file():
        return EncoderSummary(load_checkpoint(spec).module), spec
    try:
        return pretrained_summary(spec), spec
    except KeyError as error:
        raise SystemExit(
            f"guide_init: no summary network {spec!r} ({error.args[0]}) Use --summary pixel or a "
            "checkpoint path."
        ) from None


def reference_distance(program, image, truth, options: dict) -> float:
    """Median distance of ``chains`` simulations at the true scene (same pilot and scale)."""
    chains = options["chains"]
    init = {name: truth[name].expand(chains, *truth[name].shape).clone() for name in LATENTS}
    run = api.prepare_abc(program, image, **{**options, "init": init, "warmup": 0})
    return float(run.state.distance.median())


def race(program, image, options: dict, threshold: float, max_steps: int) -> dict:
    """Warm-up steps one at a time until the chains' median distance is <= ``threshold``."""
    start_time = time.perf_counter()
    run = api.prepare_abc(program, image, **options)
    start_median = float(run.state.distance.median())
    start_simulations = run.simulator.n_simulations
    reached_at = start_simulations if start_median <= threshold else None
    steps = 0
    while reached_at is None and steps < max_steps:
        runner.warmup(run, 1)
        steps += 1
        if float(run.state.distance.median()) <= threshold:
            reached_at = run.simulator.n_simulations
    return {
        "start_median_distance": start_median,
        "final_median_distance": float(run.state.distance.median()),
        "start_simulations": start_simulations,
        "simulations_to_threshold": reached_at,
        "steps": steps,
        "simulations": run.simulator.n_simulations,
        "seconds": time.perf_counter() - start_time,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 images, 100 steps at most")
    parser.add_argument("--guide", default="face-guide-64", help="a bundled guide network")
    parser.add_argument("--weights", type=Path, default=None, help="a checkpoint instead")
    parser.add_argument("--summary", default="pixel", help="pixel, a network name or a path")
    parser.add_argument("--method", default="abc_mcmc", choices=("abc_mcmc", "abc_slice"))
    parser.add_argument("--images", type=int, default=None, help="held-out scenes (default 8)")
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--pilot-size", type=int, default=None, help="default 500; quick 200")
    parser.add_argument("--max-steps", type=int, default=None, help="default 400; quick 100")
    parser.add_argument("--threshold-factor", type=float, default=1.2)
    parser.add_argument("--threshold", type=float, default=None, help="an absolute distance")
    parser.add_argument("--resolution", type=int, default=None, help="default: the guide's")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "guide_init.json")
    args = parser.parse_args(argv)
    n_images = args.images or (2 if args.quick else 8)
    pilot_size = args.pilot_size or (200 if args.quick else 500)
    max_steps = args.max_steps or (100 if args.quick else 400)
    threads = set_num_threads(args.threads)

    from probgraphics.nets.guides import load_guide

    source = args.weights if args.weights is not None else args.guide
    path = checkpoint_of(source)
    resolution = args.resolution or checkpoint_resolution(path) or 64
    program = pg.programs.face(resolution=resolution)
    try:
        guide = load_guide(path, program, device=args.device)
    except ValueError as error:
        raise SystemExit(
            f"guide_init: {path} is not a guide for the face program: {error}"
        ) from None
    summary, summary_source = load_summary(args.summary)
    pg.programs.simulate(program, 4, seed=1)  # compile the renderer before timing anything
    print(f"guide {source} (sites {list(guide.sites)}), summary {summary_source}")

    per_image = []
    for i in range(n_images):
        seed = HELD_OUT_SEED + i
        scene = pg.programs.simulate(program, seed=seed)
        options = {
            "method": args.method,
            "chains": args.chains,
            "draws": 1,
            "warmup": max_steps,
            "pilot_size": pilot_size,
            "summary": summary,
            "seed": i,
            "device": args.device,
            "progress": False,
        }
        reference = reference_distance(program, scene["image"], scene, options)
        threshold = args.threshold or args.threshold_factor * reference
        record = {"seed": seed, "reference_distance": reference, "threshold": threshold}
        for init in INITS:
            extra = {"init": init, "guide": guide} if init == "guide" else {"init": init}
            record[init] = race(program, scene["image"], {**options, **extra}, threshold, max_steps)
        per_image.append(record)
        line = "; ".join(
            f"{init}: start {record[init]['start_median_distance']:.3g}, "
            + (
                f"reached after {record[init]['simulations_to_threshold']} sims"
                if record[init]["simulations_to_threshold"] is not None
                else f"not reached in {record[init]['simulations']} sims"
            )
            for init in INITS
        )
        print(f"image {i}: target {threshold:.3g} (truth {reference:.3g}); {line}", flush=True)

    def spent(record: dict) -> int:
        # Not reached counts as everything the run spent: the figures are then lower bounds.
        reached = record["simulations_to_threshold"]
        return reached if reached is not None else record["simulations"]

    rows = []
    for init in INITS:
        reached = [r[init]["simulations_to_threshold"] for r in per_image]
        hit = [s for s in reached if s is not None]
        capped = [spent(r[init]) for r in per_image]
        rows.append(
            {
                "init": init,
                "reached": f"{len(hit)}/{len(reached)}",
                "median_simulations_to_threshold": statistics.median(capped),
                "mean_start_median_distance": statistics.fmean(
                    r[init]["start_median_distance"] for r in per_image
                ),
                "mean_final_median_distance": statistics.fmean(
                    r[init]["final_median_distance"] for r in per_image
                ),
                "mean_seconds": statistics.fmean(r[init]["seconds"] for r in per_image),
            }
        )
    ratios = [spent(r["pilot"]) / spent(r["guide"]) for r in per_image]
    print()
    print(
        f"face(resolution={resolution}), {n_images} held-out scenes, {args.method} with "
        f"{args.chains} chains, pilot {pilot_size}, at most {max_steps} warm-up steps; summary "
        f"{summary_source}; target: median distance over chains <= "
        + (f"{args.threshold}" if args.threshold else f"{args.threshold_factor} x the truth's")
    )
    print(
        format_table(
            rows,
            [
                "init",
                "reached",
                "median_simulations_to_threshold",
                "mean_start_median_distance",
                "mean_final_median_distance",
                "mean_seconds",
            ],
        )
    )
    speed_up = statistics.median(ratios)
    print(
        "median per-image ratio of simulations (pilot / guide; unreached = all spent): "
        f"{speed_up:.3g}"
    )
    payload = {
        "benchmark": "guide_init",
        "program": f"face(resolution={resolution})",
        "guide": str(source),
        "guide_sites": list(guide.sites),
        "summary": summary_source,
        "method": args.method,
        "images": n_images,
        "held_out_seeds": [HELD_OUT_SEED, HELD_OUT_SEED + n_images - 1],
        "chains": args.chains,
        "pilot_size": pilot_size,
        "max_steps": max_steps,
        "threshold_factor": None if args.threshold else args.threshold_factor,
        "threshold": args.threshold,
        "device": args.device,
        "threads": threads,
        "quick": args.quick,
        "rows": rows,
        "median_ratio_pilot_over_guide": speed_up,
        "per_image": per_image,
    }
    out = write_json(args.out.stem, payload, directory=args.out.parent)
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
