"""Scene inference on held-out face scenes: the guide alone, today's abc_mcmc and the
recommended call, at equal simulation budgets, side by side in one run.

For each of ``--images`` face scenes (64 px, seeds ``HELD_OUT_SEED + i``, which no training
used) and each budget in ``--budgets``:

* ``guide alone``: ``--renders`` independent draws of the bundled amortized guide
  ``face-guide-64`` (no simulations; the same at every budget);
* ``old abc_mcmc``: the call the demo made before blocked moves (the ``dcign-face-64``
  azimuth/elevation/light units as the summary, chains started from the guide, the paper's single
  joint move: ``blocks="joint"``, ``guide_proposals=False``), under the same budget;
* ``recommended``: ``pg.infer(program, image, guide=guide, simulations=N)`` (pixel summary,
  blocked moves, the guide proposing, adaptive tempering, the pixel noise whitened and moved as
  one more block);
* ``integrated noise``: the recommended call with ``observation_noise="marginal"``: the pixel
  noise integrated out of the Gaussian kernel (no noise block; tempering may reach the exact
  posterior).
* ``collapsed texture``: the recommended call with ``collapse="texture"``: the texture drawn from
  its Gaussian conditional at every move (noise integrated out; two simulations a step).
* ``ridge``: the recommended call with ``ridge=["azimuth", "elevation", "light"]``: ridge moves of
  the three angles, the other latents following (``inference/kernels/ridge.py``).

Per row: the RMS over images of the posterior mean's error in azimuth, elevation and light
(degrees) and over the three angles (``angle_rmse``); the mean squared pixel error of renders
of ``--renders`` posterior draws against the scene's noise-free render (``render_mse``); the
median over images of the largest R-hat of the three angles; simulations spent and per second.

Prints a markdown table, writes ``benchmarks/results/scene_inference.json`` and a figure of
render error against simulations (seed 000 figure 6(a)) to
``benchmarks/results/scene_inference.png``.

    python benchmarks/scene_inference.py                 # 12 images, budgets 5k, 20k, 100k
    python benchmarks/scene_inference.py --quick         # 3 images, budgets 5k, 20k
    python benchmarks/scene_inference.py --device cuda --budgets 20000
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, format_table, write_json  # noqa: E402

import probgraphics as pg  # noqa: E402
from probgraphics.config import set_num_threads  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import arviz as az  # noqa: E402

#: The held-out scenes of benchmarks/summary_comparison.py.
HELD_OUT_SEED = 2_000_000
ANGLES = ("azimuth", "elevation", "light")
LATENTS = ("shape", "texture", "azimuth", "elevation", "light", "camera")
METHODS = (
    "guide alone",
    "old abc_mcmc",
    "recommended",
    "integrated noise",
    "ridge",
    "collapsed texture",
)
#: Without --methods: all but the ridge and the collapsed calls (options, not defaults; the
#: collapsed call's 100,000-simulation row alone takes over an hour on one thread): ask for them
#: by name.
DEFAULT_METHODS = METHODS[:4]


def render_mse(program, draws: dict[str, torch.Tensor], truth: torch.Tensor) -> float:
    """Mean squared pixel error of renders of ``draws`` (site -> (K, *event)) against the
    noise-free render ``truth`` (C, H, W)."""
    with torch.no_grad():
        renders = program.render(**{name: draws[name].cpu() for name in LATENTS})
    return float((renders - truth).square().mean())


def pick(samples: dict[str, torch.Tensor], k: int, seed: int) -> dict[str, torch.Tensor]:
    """``k`` draws without replacement (fixed seed) of ``(chains, draws, *event)`` samples."""
    flat = {name: value.reshape(-1, *value.shape[2:]) for name, value in samples.items()}
    total = next(iter(flat.values())).shape[0]
    index = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:k]
    return {name: value[index] for name, value in flat.items()}


def largest_rhat(samples: dict[str, torch.Tensor]) -> float:
    return max(float(az.rhat(samples[name].double().numpy())) for name in ANGLES)


def score(program, scene, samples, renders: int, seed: int) -> dict:
    out = {f"{name}_error": float(samples[name].mean()) - float(scene[name]) for name in ANGLES}
    out["render_mse"] = render_mse(program, pick(samples, renders, seed), scene["render"])
    return out


def run_one(method: str, program, guide, units, scene, budget: int, seed: int, device: str):
    image = scene["image"].to(device)
    start = time.perf_counter()
    if method in ("recommended", "integrated noise", "ridge", "collapsed texture"):
        noise = {
            "recommended": {},
            "integrated noise": {"observation_noise": "marginal"},
            "ridge": {"ridge": list(ANGLES)},
            "collapsed texture": {"collapse": "texture"},
        }[method]
        posterior = pg.infer(
            program, image, guide=guide, simulations=budget, seed=seed, device=device,
            progress=False, **noise,
        )  # fmt: skip
    else:
        posterior = pg.infer(
            program, image, summary=units, init="guide", guide=guide, blocks="joint",
            guide_proposals=False, simulations=budget, seed=seed, device=device, progress=False,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    samples = {name: value.cpu() for name, value in posterior.samples.items()}
    return samples, posterior, seconds


def aggregate(method: str, budget, per_image: list[dict]) -> dict:
    row: dict = {"method": method, "budget": budget, "images": len(per_image)}
    for name in ANGLES:
        errors = [image[f"{name}_error"] for image in per_image]
        row[f"{name}_rmse"] = math.sqrt(sum(e * e for e in errors) / len(errors))
    row["angle_rmse"] = math.sqrt(sum(row[f"{name}_rmse"] ** 2 for name in ANGLES) / 3)
    row["render_mse"] = statistics.fmean(image["render_mse"] for image in per_image)
    for key in ("rhat", "n_simulations", "sims_per_s", "seconds"):
        values = [image[key] for image in per_image if key in image]
        if values:
            row[key] = statistics.median(values) if key == "rhat" else statistics.fmean(values)
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method, style in (("old abc_mcmc", "s--"), ("recommended", "o-")):
        points = sorted((r["budget"], r["render_mse"]) for r in rows if r["method"] == method)
        if points:
            ax.plot(*zip(*points), style, label=method)
    guide = [r["render_mse"] for r in rows if r["method"] == "guide alone"]
    if guide:
        ax.axhline(guide[0], color="gray", linestyle=":", label="guide alone")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("simulations")
    ax.set_ylabel("render MSE of posterior draws")
    ax.set_title("held-out face scenes (64 px)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 images, budgets 5000 and 20000")
    parser.add_argument("--images", type=int, default=None, help="held-out scenes (12)")
    parser.add_argument("--budgets", default=None, help="comma-separated (5000,20000,100000)")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated, of {', '.join(METHODS)} (default: the first four)",
    )
    parser.add_argument("--renders", type=int, default=32, help="posterior draws rendered")
    parser.add_argument("--threads", type=int, default=None, help="torch/numba threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--old-max-budget", type=int, default=20_000,
        help="run the old path only up to this budget (its encoder summary costs ~5x a pixel "
        "simulation: 100k is 5 minutes an image on one thread)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS / "scene_inference.json")
    args = parser.parse_args(argv)
    images = args.images or (3 if args.quick else 12)
    default_budgets = "5000,20000" if args.quick else "5000,20000,100000"
    budgets = [int(b) for b in (args.budgets or default_budgets).split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or images < 1 or any(b < 1 for b in budgets):
        raise SystemExit(f"scene_inference: bad --methods {unknown}, --images or --budgets.")
    set_num_threads(args.threads)

    from probgraphics.nets.guides import load_guide

    program = pg.programs.face(resolution=64)
    guide = load_guide("face-guide-64", program)
    units = pg.nets.pretrained("dcign-face-64").subset(["azimuth", "elevation", "light"])
    scenes = [pg.programs.simulate(program, seed=HELD_OUT_SEED + i) for i in range(images)]
    per: dict[tuple[str, int | str], list[dict]] = {}
    for i, scene in enumerate(scenes):
        if "guide alone" in methods:
            draws = pg.infer(program, scene["image"], method="guide", guide=guide,
                             chains=4, draws=args.renders // 4, seed=i, progress=False)  # fmt: skip
            per.setdefault(("guide alone", 0), []).append(
                score(program, scene, draws.samples, args.renders, i)
            )
        for budget in budgets:
            for method in methods:
                if method == "guide alone":
                    continue
                if method == "old abc_mcmc" and budget > args.old_max_budget:
                    continue
                samples, posterior, seconds = run_one(
                    method, program, guide, units, scene, budget, i, args.device
                )
                result = score(program, scene, samples, args.renders, i)
                result.update(
                    rhat=largest_rhat(samples),
                    n_simulations=posterior.n_simulations,
                    seconds=seconds,
                    sims_per_s=posterior.n_simulations / seconds,
                )
                per.setdefault((method, budget), []).append(result)
                print(
                    f"image {i} {method} @ {budget}: angles "
                    + " ".join(f"{result[f'{n}_error']:+.1f}" for n in ANGLES)
                    + f", render MSE {result['render_mse']:.4f}, R-hat {result['rhat']:.2f}, "
                    f"{seconds:.1f} s",
                    flush=True,
                )
    rows = [aggregate(method, budget, values) for (method, budget), values in per.items()]
    for row in rows:
        if row["method"] == "guide alone":
            row["budget"] = 0
    rows.sort(key=lambda r: (r["budget"], METHODS.index(r["method"])))
    columns = ["method", "budget", "azimuth_rmse", "elevation_rmse", "light_rmse", "angle_rmse",
               "render_mse", "rhat", "n_simulations", "sims_per_s", "seconds"]  # fmt: skip
    table = format_table(rows, columns)
    print(table)
    figure = args.out.with_suffix(".png")
    plot(rows, figure)
    payload = {
        "command": "python benchmarks/scene_inference.py " + " ".join(argv or sys.argv[1:]),
        "images": images,
        "budgets": budgets,
        "device": args.device,
        "threads": args.threads,
        "old_max_budget": args.old_max_budget,
        "rows": rows,
        "per_image": {f"{m} @ {b}": values for (m, b), values in per.items()},
        "table": table,
    }
    path = write_json(args.out.stem, payload, directory=args.out.parent)
    print(f"wrote {path} and {figure}")
    return payload


if __name__ == "__main__":
    main()
