"""ABC-MCMC throughput on the face program: simulations per second against the number of chains,
and the engine's overhead (the share of a step not spent in simulate + summary + distance).

For 1, 16, 256 and 1024 chains it runs ``abc_mcmc`` on ``programs.face(resolution=64)`` with the
pixel summary and its default options, with only the sizes set, and reports, over the warm-up and
sampling steps (the pilot excluded): simulations per second, and the overhead fraction from the
run's timings. The speed-up of each row is against 1 chain in the same run (these machines are
noisy, so ratios measured side by side are what count).

What counts as what (the run's own timings, ``Posterior.timings``):

* simulation (``simulate_in_steps``): what the ``Simulator`` clocks per call: the Pyro program
  run for all chains under the whitening messenger and the chains plate (Pyro's messenger
  stack, the transforms from ``u`` to the latents, the face renderer, the image's noise draw),
  flattening the latent values, the pixel summary and the standardized distance. The per-call
  seed draw and ``fork_rng`` that make the program's own randomness reproducible are inside
  this clock too: about 5 us a call (under 0.1% of a 256-chain step), so they do not move the
  fraction.
* overhead: everything else inside warm-up and sampling steps: the kernel's random numbers
  (``a``, ``nu``, ``log U``), its proposal arithmetic and the reference Gaussian's matmuls, the
  reference log weights and the accept test, the state update, epsilon and beta adaptation,
  the reference's moments and its fits (the ``fits`` column: the share of step time spent
  fitting the reference, almost all of it the ``D x D`` eigendecomposition, ``D = 406`` here;
  seven fits a run), the kept draws, the progress bar and checkpoints (both off here). The
  pilot, the start and ``finish`` are in neither.

At these sizes the engine runs its own arithmetic on one thread while each simulation runs on
``--threads`` (the run loop switches torch's thread count around each simulate call, outside
the clock); the simulate time measured the same with and without that switch, within noise.

Prints a table and writes ``benchmarks/results/abc_throughput.json`` atomically.

    python benchmarks/abc_throughput.py           # about a minute on 2 cores
    python benchmarks/abc_throughput.py --quick   # fewer steps
    python benchmarks/abc_throughput.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

# numba's and torch's OpenMP threads otherwise spin after each parallel region and starve each
# other on a small machine (measured: 8x slower steps on 2 busy cores). Must be set before the
# OpenMP runtime starts, i.e. before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import probgraphics as pg  # noqa: E402
from probgraphics.config import set_num_threads  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CHAINS = (1, 16, 256, 1024)


def write_json_atomically(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(payload, indent=2))
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def steps_for(chains: int, quick: bool) -> int:
    """About 8000 simulations a row (2000 with --quick), and at least 20 (10) steps, so the
    warm-up's few reference fits do not dominate the large rows."""
    budget, least = (2000, 10) if quick else (8000, 20)
    return max(least, budget // chains)


def measure(program, image, chains: int, steps: int, device: str) -> dict:
    warmup = steps // 2
    posterior = pg.infer(
        program,
        image,
        chains=chains,
        warmup=warmup,
        draws=steps - warmup,
        summary="pixel",
        pilot_size=max(chains, 256),
        device=device,
        seed=0,
        progress=False,
    )
    timings = posterior.timings
    step_seconds = timings["warmup"] + timings["sampling"]
    simulations = chains * steps
    return {
        "chains": chains,
        "steps": steps,
        "simulations": simulations,
        "step_seconds": step_seconds,
        "simulations_per_second": simulations / step_seconds,
        "overhead_fraction": timings["overhead_fraction"],
        "simulate_seconds": timings["simulate_in_steps"],
        "reference_fit_seconds": timings["reference_fit"],
        "reference_fit_fraction": timings["reference_fit"] / step_seconds,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps per row")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--chains", type=int, nargs="*", default=list(CHAINS))
    parser.add_argument("--out", type=Path, default=RESULTS / "abc_throughput.json")
    args = parser.parse_args(argv)
    threads = set_num_threads(args.threads)
    try:
        program = pg.programs.face(resolution=args.resolution)
    except (AttributeError, ImportError) as error:
        print(f"the face program is not importable yet ({error}); nothing to measure")
        return {}
    image = pg.programs.simulate(program, seed=0)["image"]
    # Warm the renderer's compiled kernels so the first row does not pay for compilation.
    pg.programs.simulate(program, 4, seed=1)

    header = (
        f"{'chains':>7} {'steps':>6} {'sims/s':>10} {'speed-up':>9} {'overhead':>9} {'fits':>6}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for chains in args.chains:
        row = measure(program, image, chains, steps_for(chains, args.quick), args.device)
        rows.append(row)
        base = rows[0]["simulations_per_second"]
        row["speed_up_vs_first"] = row["simulations_per_second"] / base
        print(
            f"{chains:>7} {row['steps']:>6} {row['simulations_per_second']:>10.1f} "
            f"{row['speed_up_vs_first']:>8.1f}x {100 * row['overhead_fraction']:>8.1f}% "
            f"{100 * row['reference_fit_fraction']:>5.1f}%",
            flush=True,
        )
    by_chains = {row["chains"]: row for row in rows}
    checks = {}
    if 1 in by_chains and 256 in by_chains:
        ratio = by_chains[256]["simulations_per_second"] / by_chains[1]["simulations_per_second"]
        checks["speed_up_256_vs_1"] = ratio
        checks["speed_up_256_at_least_10x"] = ratio >= 10.0
    if 256 in by_chains:
        checks["overhead_256"] = by_chains[256]["overhead_fraction"]
        checks["overhead_256_at_most_15_percent"] = by_chains[256]["overhead_fraction"] <= 0.15
    print("checks:", checks)
    payload = {
        "benchmark": "abc_throughput",
        "program": f"face(resolution={args.resolution})",
        "summary": "pixel",
        "device": args.device,
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "quick": args.quick,
        "rows": rows,
        "checks": checks,
    }
    if args.device.startswith("cuda"):
        payload["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    write_json_atomically(args.out, payload)
    print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
