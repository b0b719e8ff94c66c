"""How rugged the face program's likelihood is over pose, and what anti-aliasing does to it.

For each ``supersample`` and ``silhouette_blur`` (``pg.programs.face(supersample=s,
silhouette_blur=b)``), on the demo scene (seed 0, 64 px, noise 0.02):

* ``largest slope jump``: the Gaussian log-likelihood of the noise-free render against the
  observation along azimuth = truth +- 1 degree in 0.05-degree steps (every other latent at the
  truth); the largest absolute second difference, in nats. A silhouette pixel flipping between
  face and background makes a cliff here.
* ``render ms``: one batch of 64 renders, best of 5, one thread.
* with ``--rhat-budgets``: the demo's call (``infer(program, image, guide=face-guide-64,
  simulations=N)``, seed 0) under ``observation_noise`` ``"auto"`` and ``"marginal"``, and the
  largest R-hat of azimuth, elevation and light.

Prints a table and writes ``benchmarks/results/face_smoothness.json``::

    python benchmarks/face_smoothness.py --supersample 1 2 3 4 --rhat-budgets 20000
    python benchmarks/face_smoothness.py --supersample 1 3 --silhouette-blur 0 0.5
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

import probgraphics as pg
from probgraphics.config import set_num_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine, write_json  # noqa: E402

SITES = ("azimuth", "elevation", "light")


def azimuth_batch(program, truth: dict, offsets: torch.Tensor) -> dict:
    """The true latents repeated ``len(offsets)`` times, azimuth moved by ``offsets`` degrees."""
    batch = {
        site: truth[site].expand(len(offsets), *truth[site].shape)
        for site in program.latent_sites
    }
    batch["azimuth"] = truth["azimuth"] + offsets
    return batch


def slope_jump(program, truth: dict) -> float:
    """Largest |second difference| of the log-likelihood over azimuth +- 1 degree (nats)."""
    batch = azimuth_batch(program, truth, torch.linspace(-1.0, 1.0, 41))
    with torch.no_grad():
        renders = program.render(**batch)
    log_likelihood = -(renders - truth["image"]).square().sum((-1, -2, -3)) / (
        2 * program.noise**2
    )
    return float(log_likelihood.diff().diff().abs().max())


def render_ms(program, truth: dict) -> float:
    generator = torch.Generator().manual_seed(1)
    batch = azimuth_batch(program, truth, torch.randn(64, generator=generator))
    with torch.no_grad():
        program.render(**batch)
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            program.render(**batch)
            best = min(best, time.perf_counter() - start)
    return 1000 * best


def largest_rhat(program, image, budget: int, noise: str) -> tuple[float, float]:
    from probgraphics.nets.guides import load_guide

    guide = load_guide("face-guide-64", program, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior = pg.infer(
            program,
            image,
            guide=guide,
            simulations=budget,
            observation_noise=noise,
            seed=0,
            progress=False,
        )
    table = posterior.summary(var_names=list(SITES))
    return float(table["r_hat"].max()), posterior.wall_time


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--supersample", nargs="+", type=int, default=[1, 2, 3, 4])
    parser.add_argument("--silhouette-blur", nargs="+", type=float, default=[0.0])
    parser.add_argument("--rhat-budgets", nargs="*", type=int, default=[])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    set_num_threads(args.threads)
    rows = []
    for s, blur in [(s, b) for s in args.supersample for b in args.silhouette_blur]:
        program = pg.programs.face(resolution=64, supersample=s, silhouette_blur=blur)
        truth = pg.programs.simulate(program, seed=0)
        row = {
            "supersample": s,
            "silhouette_blur": blur,
            "largest_slope_jump_nats": slope_jump(program, truth),
            "render_ms_batch_64": render_ms(program, truth),
        }
        for budget in args.rhat_budgets:
            for noise in ("auto", "marginal"):
                rhat, seconds = largest_rhat(program, truth["image"], budget, noise)
                row[f"rhat_{noise}_{budget}"] = rhat
                row[f"seconds_{noise}_{budget}"] = seconds
        rows.append(row)
        print(row, flush=True)
    columns = list(rows[0]) if rows else []
    print(format_table(rows, columns))
    payload = {"machine": machine(), "settings": vars(args), "rows": rows}
    path = write_json("face_smoothness", payload)
    print(f"wrote {path}")
    return {"rows": rows}


if __name__ == "__main__":
    main()
