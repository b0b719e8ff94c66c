"""Scenes per second of the face program's whole render: basis product, shading, rasterization.

numba path vs torch path at 64, 128 and 150 px on 1 and 2 threads, all 200 shape and 200
texture components, measured side by side in one run. A second table measures the whole
simulate at 64 px, numba path, batches of 64 and 512: the face program run as a Pyro program
under a plate, as ``programs.simulate(program, n=batch, seed=k)`` runs it (prior sampling, basis
products, render, observation noise, the trace), beside ``program.render`` alone on the same
batch. Prints markdown tables and writes benchmarks/results/render.json (render_cuda.json with
``--device cuda``).

    python benchmarks/render.py                  # full
    python benchmarks/render.py --quick          # a few seconds
    python benchmarks/render.py --device cuda    # torch path on the GPU, batches 64 to 4096
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import format_table, write_json  # noqa: E402

from probgraphics import programs  # noqa: E402
from probgraphics.config import set_num_threads  # noqa: E402
from probgraphics.programs import simulate  # noqa: E402

#: Batches of the whole-simulate table (64 px, numba path).
SIMULATE_BATCHES = (64, 512)


def latents(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "shape": torch.randn(n, 200, generator=g),
        "texture": torch.randn(n, 200, generator=g),
        "azimuth": torch.rand(n, generator=g) * 180 - 90,
        "elevation": torch.rand(n, generator=g) * 180 - 90,
        "light": torch.rand(n, generator=g) * 180 - 90,
        "camera": torch.rand(n, 3, generator=g),
    }


def scenes_per_second(program, batch: int, min_seconds: float, device: str = "cpu") -> float:
    inputs = {name: value.to(device) for name, value in latents(batch).items()}
    # CUDA launches are asynchronous: wait for the queued work before reading the clock.
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():
        program.render(**inputs)  # warm-up: numba compile / cache load, allocator
        sync()
        done, start = 0, time.perf_counter()
        while True:
            program.render(**inputs)
            sync()
            done += batch
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                return done / elapsed


def simulated_scenes_per_second(program, batch: int, min_seconds: float) -> float:
    """Scenes per second of ``simulate(program, n=batch, seed=k)``, a new seed each call."""
    simulate(program, n=batch, seed=0)  # warm-up: numba compile / cache load, basis cache
    done, calls, start = 0, 0, time.perf_counter()
    while True:
        calls += 1
        simulate(program, n=batch, seed=calls)
        done += batch
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed


def simulate_rows(threads: int, seconds: float) -> list[dict]:
    """The whole simulate and the render alone, 64 px, numba path, at each of SIMULATE_BATCHES."""
    program = programs.face(resolution=64, backend="numba")
    rows = []
    for batch in SIMULATE_BATCHES:
        whole = simulated_scenes_per_second(program, batch, seconds)
        render = scenes_per_second(program, batch, seconds)
        rows.append(
            {
                "threads": threads,
                "resolution": 64,
                "backend": "numba",
                "batch": batch,
                "simulate_scenes_per_s": whole,
                "simulate_scenes_per_s_per_core": whole / threads,
                "render_scenes_per_s": render,
                "simulate_over_render": whole / render,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short timings, 64 px only")
    parser.add_argument("--seconds", type=float, default=None, help="minimum seconds per cell")
    parser.add_argument("--device", default="cpu", help="cpu (numba vs torch) or cuda (torch)")
    args = parser.parse_args(argv)
    seconds = args.seconds or (0.5 if args.quick else 3.0)
    if args.device != "cpu":
        return main_cuda(args.device, seconds, quick=args.quick)
    resolutions = (64,) if args.quick else (64, 128, 150)
    batches = {"numba": 512, "torch": 64}
    model_info = programs.face().model
    rows, simulate_table = [], []
    for threads in (1, 2):
        set_num_threads(threads)
        simulate_table += simulate_rows(threads, seconds)
        for resolution in resolutions:
            rates = {}
            for backend in ("numba", "torch"):
                program = programs.face(resolution=resolution, backend=backend)
                rates[backend] = scenes_per_second(program, batches[backend], seconds)
            for backend, rate in rates.items():
                rows.append(
                    {
                        "threads": threads,
                        "resolution": resolution,
                        "backend": backend,
                        "scenes_per_s": rate,
                        "scenes_per_s_per_core": rate / threads,
                        "numba_over_torch": rates["numba"] / rates["torch"],
                    }
                )
    columns = [
        "threads", "resolution", "backend", "scenes_per_s", "scenes_per_s_per_core",
        "numba_over_torch",
    ]
    print(
        f"face program render, {model_info.n_triangles} triangles, "
        f"{model_info.n_vertices} vertices, 200 shape + 200 texture components"
    )
    print(format_table(rows, columns))
    simulate_columns = [
        "threads", "resolution", "batch", "simulate_scenes_per_s",
        "simulate_scenes_per_s_per_core", "render_scenes_per_s", "simulate_over_render",
    ]
    print()
    print(
        "face program simulate, 64 px, numba path: programs.simulate(program, n=batch, seed=k) "
        "(prior, basis products, render, noise, trace) beside program.render alone"
    )
    print(format_table(simulate_table, simulate_columns))
    path = write_json(
        "render",
        {
            "benchmark": "render",
            "triangles": model_info.n_triangles,
            "vertices": model_info.n_vertices,
            "batch": batches,
            "seconds_per_cell": seconds,
            "rows": rows,
            "simulate": {
                "what": "programs.simulate(face(resolution=64, backend='numba'), n=batch, "
                "seed=k): prior sampling, basis products, render, observation noise, trace",
                "batches": list(SIMULATE_BATCHES),
                "rows": simulate_table,
            },
        },
    )
    print(f"wrote {path}")
    return 0


def main_cuda(device: str, seconds: float, *, quick: bool) -> int:
    """The torch path on a GPU (the numba kernel is CPU-only): scenes per second by batch."""
    if not torch.cuda.is_available():
        raise SystemExit(f"--device {device} needs CUDA, and torch sees none; use --device cpu")
    resolutions = (64,) if quick else (64, 128, 150)
    batch_sizes = (64, 1024) if quick else (64, 256, 1024, 4096)
    model_info = programs.face().model
    rows = []
    for resolution in resolutions:
        program = programs.face(resolution=resolution, backend="torch")
        for batch in batch_sizes:
            rate = scenes_per_second(program, batch, seconds, device)
            rows.append({"resolution": resolution, "batch": batch, "scenes_per_s": rate})
    name = torch.cuda.get_device_name(torch.device(device))
    print(f"face program render on {name}, torch path, {model_info.n_triangles} triangles")
    print(format_table(rows, ["resolution", "batch", "scenes_per_s"]))
    path = write_json(
        "render_cuda",
        {
            "benchmark": "render",
            "device": name,
            "backend": "torch",
            "triangles": model_info.n_triangles,
            "seconds_per_cell": seconds,
            "rows": rows,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
