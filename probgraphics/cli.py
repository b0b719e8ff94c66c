"""The command line: ``probgraphics demo``.

Exit codes: 0 success, 2 bad usage or bad input (argparse's convention), 1 other failures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    """Sample a face scene, infer it with ABC-MCMC, report and draw the posterior."""
    import torch

    from probgraphics import programs
    from probgraphics.api import infer
    from probgraphics.config import set_num_threads
    from probgraphics.plots import image_grid, save_figure, trace_figure

    set_num_threads(args.threads)
    out = Path(args.out)
    program = programs.face(resolution=args.resolution)

    prior = programs.simulate(program, n=16, seed=args.seed + 1)
    save_figure(
        image_grid(prior["render"], suptitle="face program: scenes from the prior"),
        out / "prior_scenes.png",
    )

    truth = programs.simulate(program, seed=args.seed)
    print(f"inferring a {args.resolution}px face scene with abc_mcmc, pixel summary, "
          f"{args.chains} chains x {args.draws} draws ({args.warmup} warm-up steps)")
    posterior = infer(
        program,
        truth["image"],
        method="abc_mcmc",
        summary="pixel",
        chains=args.chains,
        draws=args.draws,
        warmup=args.warmup,
        seed=args.seed,
        progress=not args.quiet,
    )
    sites = ["azimuth", "elevation", "light"]
    table = posterior.summary(var_names=sites)
    table.insert(0, "true", [float(truth[s]) for s in sites])
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    accepted = posterior.sample_stats["accepted"].float().mean()
    print(
        f"{posterior.n_simulations} simulations in {posterior.wall_time:.1f}s "
        f"({posterior.simulations_per_second:.0f}/s), acceptance {accepted:.2f}"
    )

    save_figure(
        trace_figure(posterior, sites, truth={s: float(truth[s]) for s in sites}),
        out / "trace.png",
    )
    # Posterior renders: the final state of a few chains, beside the observation.
    n_show = min(7, posterior.num_chains)
    final = {site: value[:n_show, -1] for site, value in posterior.samples.items()}
    with torch.no_grad():
        renders = program.render(**{s: final[s] for s in program.latent_sites})
    panels = torch.cat([truth["image"].clamp(0, 1)[None], renders])
    titles = ["observed"] + [
        f"chain {i}\naz {a:+.0f} el {e:+.0f}"
        for i, (a, e) in enumerate(zip(final["azimuth"].tolist(), final["elevation"].tolist()))
    ]
    save_figure(
        image_grid(panels, ncols=n_show + 1, titles=titles,
                   suptitle="observed image and posterior renders (abc_mcmc, pixel summary)"),
        out / "posterior_renders.png",
    )
    path = posterior.save(out / "posterior.nc")
    print(f"wrote {out}/prior_scenes.png, trace.png, posterior_renders.png and {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="probgraphics",
        description="Probabilistic inverse graphics: scene programs, ABC-MCMC, encoder guides.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="infer a simulated face scene with ABC-MCMC and write figures"
    )
    demo.add_argument("--out", default="demo-output", help="output folder (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--resolution", type=int, default=64, help="pixels (default: %(default)s)")
    demo.add_argument("--chains", type=int, default=64, help="chains (default: %(default)s)")
    demo.add_argument("--draws", type=int, default=300, help="draws (default: %(default)s)")
    demo.add_argument("--warmup", type=int, default=500, help="warm-up (default: %(default)s)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
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
