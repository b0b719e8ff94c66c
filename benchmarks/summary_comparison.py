"""Pixel summary against the DC-IGN encoder summary for ABC-MCMC on held-out face scenes.

Seed 000 section 4.1 claims that an encoder trained as a DC-IGN, used as the summary statistic
of ABC, recovers a face's pose and light better than raw pixels. For each of ``--images`` face
scenes simulated with seeds the training never used (``HELD_OUT_SEED + i``; the
``dcign-face-64`` recipe draws its batch seeds as random 62-bit numbers from its seed 0 and
evaluates on seeds 10_000 and 10_001), this runs ``abc_mcmc`` at the *same* simulation budget
(same chains, pilot, warm-up and draws, same ABC seed per image) with

* ``pixel``: the pixel summary;
* ``encoder``: the encoder's posterior mean over its whole code (``pretrained("dcign-face-64")``
  or ``--weights PATH``);
* ``encoder[az,el,light]``: the encoder restricted to its azimuth / elevation / light units
  (``summary.subset(...)``), when its layout names them (``--no-subset`` skips it);

and, for scale, ``prior`` (no data: the prior mean, renders of prior draws). Per row:

* azimuth / elevation / light error of the posterior mean against the truth, in degrees: the
  RMS over images and the median of ``|error|``;
* ``render_mse``: mean squared pixel error of renders of ``--renders`` posterior draws against
  the scene's noise-free render, averaged over draws and images.

Prints a markdown table and writes ``benchmarks/results/summary_comparison.json`` atomically.

    python benchmarks/summary_comparison.py                     # needs dcign-face-64 weights
    python benchmarks/summary_comparison.py --weights net.pt    # any DC-IGN checkpoint
    python benchmarks/summary_comparison.py --quick             # 2 images, 2000 simulations
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, format_table, write_json  # noqa: E402

import probgraphics as pg  # noqa: E402
from probgraphics.config import set_num_threads  # noqa: E402

#: Held-out scenes are simulated with seeds HELD_OUT_SEED + i.
HELD_OUT_SEED = 2_000_000
ANGLES = ("azimuth", "elevation", "light")
LATENTS = ("shape", "texture", "azimuth", "elevation", "light", "camera")
ENCODER_NAME = "dcign-face-64"


def load_encoder_summary(weights: Path | None):
    """``(summary, description)``: the encoder of ``weights`` or of the bundled network."""
    from probgraphics.nets import CheckpointError, EncoderSummary, load_checkpoint, pretrained

    if weights is not None:
        try:
            module = load_checkpoint(weights).module
            return EncoderSummary(module), str(weights)
        except (FileNotFoundError, CheckpointError, TypeError, ValueError) as error:
            raise SystemExit(
                f"summary_comparison: cannot use --weights {weights}: {error}"
            ) from None
    try:
        return pretrained(ENCODER_NAME), ENCODER_NAME
    except KeyError as error:
        raise SystemExit(
            f"summary_comparison: no trained weights for the encoder summary ({error.args[0]}) "
            f"Train them with `probgraphics train {ENCODER_NAME}`, or pass --weights PATH (any "
            "DC-IGN checkpoint written by probgraphics.nets.save_checkpoint)."
        ) from None


def encoder_resolution(summary) -> int | None:
    config = getattr(summary.encoder, "config", None)
    return getattr(config, "image_size", None)


def run_sizes(budget: int, chains: int) -> dict[str, int]:
    """Pilot, warm-up and draws that spend at most ``budget`` simulations with ``chains``
    chains under abc_mcmc (one simulation a chain a step, plus the pilot and the start)."""
    pilot = max(chains, budget // 5)
    steps = (budget - pilot - chains) // chains
    if steps < 2:
        raise SystemExit(
            f"summary_comparison: a budget of {budget} simulations leaves {steps} steps for "
            f"{chains} chains; raise --budget or lower --chains."
        )
    warmup = steps // 2
    return {"pilot_size": pilot, "warmup": warmup, "draws": steps - warmup}


def render_mse(program, draws: dict[str, torch.Tensor], truth_render: torch.Tensor) -> float:
    """Mean squared pixel error of the renders of ``draws`` (site -> (K, *event)) against the
    noise-free ``truth_render`` (C, H, W), over draws and pixels."""
    with torch.no_grad():
        renders = program.render(**{name: draws[name] for name in LATENTS})
    return float((renders - truth_render).square().mean())


def pick(samples: dict[str, torch.Tensor], k: int, seed: int) -> dict[str, torch.Tensor]:
    """``k`` draws (without replacement, fixed seed) of ``(chains, draws, *event)`` samples."""
    flat = {name: value.reshape(-1, *value.shape[2:]) for name, value in samples.items()}
    total = next(iter(flat.values())).shape[0]
    index = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:k]
    return {name: value[index] for name, value in flat.items()}


def aggregate(label: str, per_image: list[dict]) -> dict:
    row: dict = {"summary": label, "images": len(per_image)}
    for name in ANGLES:
        errors = [image[f"{name}_error"] for image in per_image]
        row[f"{name}_rmse"] = math.sqrt(sum(e * e for e in errors) / len(errors))
        row[f"{name}_median_abs"] = statistics.median(abs(e) for e in errors)
    row["angle_rmse"] = math.sqrt(sum(row[f"{name}_rmse"] ** 2 for name in ANGLES) / 3)
    row["render_mse"] = statistics.fmean(image["render_mse"] for image in per_image)
    for key in ("n_simulations", "seconds", "acceptance"):
        values = [image[key] for image in per_image if key in image]
        if values:
            row[key] = statistics.fmean(values)
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 images, 2000 simulations")
    parser.add_argument("--images", type=int, default=None, help="held-out scenes (default 8)")
    parser.add_argument("--budget", type=int, default=None, help="simulations per run (10000)")
    parser.add_argument("--chains", type=int, default=None, help="chains per run (32; quick 16)")
    parser.add_argument("--renders", type=int, default=32, help="posterior draws rendered")
    parser.add_argument("--weights", type=Path, default=None, help="a DC-IGN checkpoint")
    parser.add_argument("--resolution", type=int, default=None, help="default: the encoder's")
    parser.add_argument("--no-subset", action="store_true", help="skip the pose/light row")
    parser.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME[:GROUPS]",
        help="another pretrained encoder as a summary row, optionally part of its code "
        "(e.g. face-guide-64:azimuth,elevation,light,camera); repeatable",
    )
    parser.add_argument(
        "--guide",
        default=None,
        help="a bundled guide (e.g. face-guide-64): adds its amortized posterior (no "
        "simulations) and the encoder summary started from it (init='guide')",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "summary_comparison.json", help="the JSON file"
    )
    args = parser.parse_args(argv)
    n_images = args.images or (2 if args.quick else 8)
    budget = args.budget or (2000 if args.quick else 10_000)
    chains = args.chains or (16 if args.quick else 32)
    threads = set_num_threads(args.threads)

    encoder, encoder_source = load_encoder_summary(args.weights)
    resolution = args.resolution or encoder_resolution(encoder) or 64
    program = pg.programs.face(resolution=resolution)
    summaries = {"pixel": "pixel", "encoder": encoder}
    layout = encoder.layout
    if not args.no_subset and layout is not None and all(name in layout for name in ANGLES):
        summaries["encoder[az,el,light]"] = encoder.subset(*ANGLES)
    from probgraphics.nets import pretrained_summary
    from probgraphics.nets.guides import load_guide

    for spec in args.extra:
        try:
            summaries[spec] = pretrained_summary(spec)
        except KeyError as error:
            raise SystemExit(f"summary_comparison: --extra {spec!r}: {error.args[0]}") from None
    starts = {label: {} for label in summaries}
    guide = None
    if args.guide is not None:
        guide = load_guide(args.guide, program)
        starts["encoder, guide start"] = {"init": "guide", "guide": guide}
        summaries["encoder, guide start"] = encoder
    sizes = run_sizes(budget, chains)
    pg.programs.simulate(program, 4, seed=1)  # compile the renderer before timing anything

    labels = ["prior", *([f"guide {args.guide} (amortized)"] if guide else []), *summaries]
    results: dict[str, list[dict]] = {label: [] for label in labels}
    for i in range(n_images):
        seed = HELD_OUT_SEED + i
        scene = pg.programs.simulate(program, seed=seed)
        truth = {name: float(scene[name]) for name in ANGLES}
        prior = pg.programs.simulate(program, args.renders, seed=seed + 1_000_000)
        results["prior"].append(
            {
                "seed": seed,
                **{f"{name}_error": -truth[name] for name in ANGLES},  # the prior mean is 0
                "render_mse": render_mse(program, prior, scene["render"]),
            }
        )
        if guide is not None:
            amortized = pg.infer(
                program, scene["image"], method="guide", guide=guide, draws=args.renders, seed=i
            )
            draws = amortized.samples
            results[f"guide {args.guide} (amortized)"].append(
                {
                    "seed": seed,
                    **{f"{name}_error": float(draws[name].mean()) - truth[name] for name in ANGLES},
                    "render_mse": render_mse(
                        program, pick(draws, args.renders, seed=i), scene["render"]
                    ),
                    "n_simulations": 0,
                }
            )
        for label, summary in summaries.items():
            start = time.perf_counter()
            posterior = pg.infer(
                program,
                scene["image"],
                method="abc_mcmc",
                summary=summary,
                chains=chains,
                seed=i,
                device=args.device,
                progress=False,
                **sizes,
                **starts[label],
            )
            seconds = time.perf_counter() - start
            samples = posterior.samples
            record = {
                "seed": seed,
                **{f"{name}_error": float(samples[name].mean()) - truth[name] for name in ANGLES},
                "render_mse": render_mse(
                    program, pick(samples, args.renders, seed=i), scene["render"]
                ),
                "n_simulations": posterior.n_simulations,
                "seconds": seconds,
                "acceptance": float(posterior.sample_stats["accepted"].float().mean()),
                "epsilon": posterior.settings.get("epsilon_target"),
            }
            results[label].append(record)
            errors = ", ".join(f"{name} {record[f'{name}_error']:+.1f}" for name in ANGLES)
            print(
                f"image {i} ({label}): {errors} deg; render mse {record['render_mse']:.4g}; "
                f"{posterior.n_simulations} sims in {seconds:.1f} s",
                flush=True,
            )

    rows = [aggregate(label, per_image) for label, per_image in results.items()]
    columns = [
        "summary",
        "azimuth_rmse",
        "azimuth_median_abs",
        "elevation_rmse",
        "elevation_median_abs",
        "light_rmse",
        "light_median_abs",
        "angle_rmse",
        "render_mse",
        "n_simulations",
        "seconds",
    ]
    print()
    print(
        f"face(resolution={resolution}), {n_images} held-out scenes, abc_mcmc with {chains} "
        f"chains and {budget} simulations a run ({sizes}); encoder: {encoder_source}; angle "
        "errors of the posterior mean in degrees"
    )
    print(format_table(rows, columns))
    by_label = {row["summary"]: row for row in rows}
    checks = {
        "encoder_angle_rmse_below_pixel": by_label["encoder"]["angle_rmse"]
        < by_label["pixel"]["angle_rmse"],
        "encoder_render_mse_below_pixel": by_label["encoder"]["render_mse"]
        < by_label["pixel"]["render_mse"],
        # The guide start simulates its starting chains instead of taking pilot particles.
        "same_budget": len(
            {
                row.get("n_simulations")
                for row in rows
                if row["summary"] in summaries and not starts[row["summary"]]
            }
        )
        == 1,
    }
    print("checks:", checks)
    payload = {
        "benchmark": "summary_comparison",
        "program": f"face(resolution={resolution})",
        "encoder": encoder_source,
        "images": n_images,
        "held_out_seeds": [HELD_OUT_SEED, HELD_OUT_SEED + n_images - 1],
        "budget": budget,
        "chains": chains,
        "run_sizes": sizes,
        "renders": args.renders,
        "device": args.device,
        "threads": threads,
        "quick": args.quick,
        "rows": rows,
        "per_image": results,
        "checks": checks,
    }
    path = write_json(args.out.stem, payload, directory=args.out.parent)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
