"""ABC-SMC against ABC-MCMC and ABC rejection at one budget on the linear-Gaussian program.

Every method gets the same hard budget of simulations (pilot included) on ``linear_gaussian``
(dim 10) and default options otherwise (``abc_mcmc`` sized by ``abc_accuracy.mcmc_sizes``); the
metrics are those of ``benchmarks/abc_accuracy.py`` against the true posterior (eps = 0):
``mean_error`` (RMS over dimensions of the mean's error in posterior sds), ``variance_ratio``
(mean over dimensions of sample variance / posterior variance) and ``c2st``; each averaged over
``--seeds`` runs (and its standard error).

    python benchmarks/abc_smc.py                # 1e4 simulations, 5 seeds
    python benchmarks/abc_smc.py --budget 20000 --seeds 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import probgraphics as pg
from probgraphics.config import set_num_threads
from probgraphics.programs.toy import linear_gaussian

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, write_json_atomically  # noqa: E402
from abc_accuracy import C2ST_SAMPLES, DIM, c2st, mcmc_sizes  # noqa: E402

SMC_VARIANTS = {
    "abc_smc": {},
    "abc_smc (512 particles)": {"particles": 512},
    "abc_smc (adaptive steps)": {"mcmc_steps": "adaptive"},
}


def run(name: str, program, x, budget: int, seed: int):
    observation = {"x": x}
    if name == "abc_rejection":
        options = {"simulations": budget}
    elif name == "abc_mcmc":
        options = mcmc_sizes(budget)
    else:
        options = {"simulations": budget, **SMC_VARIANTS[name]}
    method = name.split(" ")[0]
    return pg.infer(program, observation, method=method, seed=seed, progress=False, **options)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "abc_smc.json")
    args = parser.parse_args(argv)
    set_num_threads(args.threads)
    program = linear_gaussian(dim=DIM)
    x = pg.programs.simulate(program, seed=1)["x"]
    mean, covariance = program.analytic_posterior(x)
    torch.manual_seed(0)
    exact = torch.distributions.MultivariateNormal(mean, covariance).sample((C2ST_SAMPLES,))
    sd = covariance.diag().sqrt()
    rows = {}
    for name in ["abc_rejection", "abc_mcmc", *SMC_VARIANTS]:
        results = []
        for seed in range(args.seeds):
            posterior = run(name, program, x, args.budget, seed)
            z = posterior.samples["z"].double().reshape(-1, DIM)
            results.append(
                {
                    "mean_error": float((((z.mean(0) - mean) / sd) ** 2).mean().sqrt()),
                    "variance_ratio": float((z.var(0) / sd.square()).mean()),
                    "c2st": c2st(z, exact, seed=seed),
                    "n_simulations": posterior.n_simulations,
                    "n_samples": int(z.shape[0]),
                    "wall_time": posterior.wall_time,
                }
            )
        summary = {}
        for key in results[0]:
            values = torch.tensor([float(r[key]) for r in results], dtype=torch.float64)
            spread = float(values.std() / len(results) ** 0.5) if len(results) > 1 else 0.0
            summary[key] = {"mean": float(values.mean()), "standard_error": spread}
        rows[name] = {"runs": results, "summary": summary}
        cells = "  ".join(
            f"{key} {summary[key]['mean']:.3g} ± {summary[key]['standard_error']:.2g}"
            for key in ("mean_error", "variance_ratio", "c2st")
        )
        print(
            f"{name:26s} {cells}  sims {summary['n_simulations']['mean']:.0f}  "
            f"samples {summary['n_samples']['mean']:.0f}  {summary['wall_time']['mean']:.2f}s",
            flush=True,
        )
    result = {"budget": args.budget, "seeds": args.seeds, "dim": DIM, "methods": rows}
    write_json_atomically(args.out, result)
    return result


if __name__ == "__main__":
    main()
