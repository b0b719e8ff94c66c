"""The command line: ``probgraphics demo``.

Exit codes: 0 success, 2 bad usage or bad input (argparse's convention), 1 other failures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from probgraphics import programs
    from probgraphics.config import set_num_threads
    from probgraphics.plots import image_grid, save_figure

    set_num_threads(args.threads)
    out = Path(args.out)
    program = programs.face(resolution=args.resolution)
    start = time.perf_counter()
    scenes = programs.simulate(program, n=args.n, seed=args.seed)
    elapsed = time.perf_counter() - start
    titles = [
        f"az {a:+.0f} el {e:+.0f}\nlight {li:+.0f}"
        for a, e, li in zip(
            scenes["azimuth"].tolist(), scenes["elevation"].tolist(), scenes["light"].tolist()
        )
    ]
    fig = image_grid(scenes["render"], titles=titles, suptitle="face program: prior scenes")
    path = save_figure(fig, out / "faces.png")
    print(f"rendered {args.n} face scenes at {args.resolution}px in {elapsed:.2f}s -> {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="probgraphics",
        description="Probabilistic inverse graphics: scene programs, ABC-MCMC, encoder guides.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="sample face scenes and write a figure")
    demo.add_argument("--out", default="demo-output", help="output folder (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--n", type=int, default=16, help="scenes to draw (default: %(default)s)")
    demo.add_argument("--resolution", type=int, default=64, help="pixels (default: %(default)s)")
    demo.add_argument("--threads", type=int, default=None, help="torch/numba threads")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, KeyError, FileNotFoundError) as error:
        print(f"probgraphics {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
