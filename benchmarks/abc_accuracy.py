"""ABC accuracy against the analytic posterior of the linear-Gaussian program, per budget.

For each simulation budget (1e3, 1e4, 1e5; ``--quick``: 1e3, 1e4) and each method -- our
``abc_mcmc``, ``abc_slice`` and ``abc_rejection`` with their default options (only the sizes are
set from the budget), and, when importable, pyabc's ABC-SMC and sbi's SMC-ABC with theirs -- it
measures how far the samples are from the true posterior (``analytic_posterior(x)``, eps = 0):

* ``mean_error``: RMS over dimensions of (sample mean - posterior mean) / posterior sd;
* ``sd_error``: RMS over dimensions of sample sd / posterior sd - 1;
* ``c2st``: cross-validated accuracy of a classifier telling the samples from exact posterior
  draws (logistic regression on linear and quadratic features, which contains the optimal
  classifier between two Gaussians); 0.5 = indistinguishable.

Prints a table and writes ``benchmarks/results/abc_accuracy.json`` atomically.

    python benchmarks/abc_accuracy.py            # all budgets (pyabc at 1e5 takes minutes)
    python benchmarks/abc_accuracy.py --quick    # 1e3 and 1e4 only
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import probgraphics as pg
from probgraphics.config import set_num_threads
from probgraphics.programs.toy import linear_gaussian

# The script's folder is on sys.path when it runs as a script, not when it is imported.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, write_json_atomically  # noqa: E402

DIM = 10
C2ST_SAMPLES = 1000  # the same for every method at 1e5 (rejection keeps 1000)


# ---------------------------------------------------------------------------- metrics


def quadratic_features(samples: torch.Tensor) -> torch.Tensor:
    rows, cols = torch.triu_indices(samples.shape[1], samples.shape[1])
    return torch.cat([samples, samples[:, rows] * samples[:, cols]], dim=1)


def c2st(samples: torch.Tensor, reference: torch.Tensor, seed: int = 0, folds: int = 5) -> float:
    """Cross-validated accuracy of an L2-regularized quadratic logistic regression."""
    n = min(samples.shape[0], reference.shape[0], C2ST_SAMPLES)
    generator = torch.Generator().manual_seed(seed)
    first = samples[torch.randperm(samples.shape[0], generator=generator)[:n]]
    second = reference[torch.randperm(reference.shape[0], generator=generator)[:n]]
    features = quadratic_features(torch.cat([first, second]).double())
    labels = torch.cat([torch.zeros(n), torch.ones(n)]).double()
    order = torch.randperm(2 * n, generator=generator)
    features, labels = features[order], labels[order]
    fold = torch.arange(2 * n) % folds
    correct = 0
    for k in range(folds):
        train, test = fold != k, fold == k
        mean, std = features[train].mean(0), features[train].std(0).clamp(min=1e-12)
        x_train, x_test = (features[train] - mean) / std, (features[test] - mean) / std
        weights = torch.zeros(features.shape[1] + 1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([weights], max_iter=200, line_search_fn="strong_wolfe")

        def closure(x=x_train, y=labels[train], w=weights, o=optimizer):
            o.zero_grad()
            logits = x @ w[:-1] + w[-1]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
            loss = loss + 1e-3 * w[:-1].square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            predicted = (x_test @ weights[:-1] + weights[-1]) > 0
        correct += int((predicted.double() == labels[test]).sum())
    return correct / (2 * n)


def metrics(samples: torch.Tensor, mean: torch.Tensor, covariance: torch.Tensor, exact) -> dict:
    samples = samples.double().reshape(-1, DIM)
    sd = covariance.diag().sqrt()
    mean_error = float((((samples.mean(0) - mean) / sd) ** 2).mean().sqrt())
    spread = samples.std(0) if samples.shape[0] > 1 else torch.zeros(DIM, dtype=torch.float64)
    sd_error = float(((spread / sd - 1.0) ** 2).mean().sqrt())
    return {
        "mean_error": mean_error,
        "sd_error": sd_error,
        "c2st": c2st(samples, exact),
        "n_samples": int(samples.shape[0]),
    }


# ---------------------------------------------------------------------------- methods


def mcmc_sizes(budget: int, sims_per_step: float = 1.0) -> dict:
    """Chains, pilot, warm-up and draws spending about ``budget`` simulations."""
    chains = 16 if budget < 50_000 else 64
    pilot = max(chains, min(1000, budget // 10))
    steps = max(4, int((budget - pilot) / (chains * sims_per_step)))
    warmup = steps // 2
    return {"chains": chains, "pilot_size": pilot, "warmup": warmup, "draws": steps - warmup}


def run_ours(method: str, program, x, budget: int, seed: int) -> tuple[torch.Tensor, int, float]:
    observation = {"x": x}
    if method == "abc_rejection":
        posterior = pg.infer(
            program, observation, method=method, simulations=budget, seed=seed, progress=False
        )
    else:
        # The slice sampler spends a few simulations a step; size it from a short probe run.
        sims_per_step = 1.0
        if method == "abc_slice":
            probe = pg.infer(
                program,
                observation,
                method=method,
                seed=seed + 1,
                progress=False,
                **mcmc_sizes(budget // 10),
            )
            probe_steps = probe.settings["chains"] * (probe.settings["warmup"] + probe.num_draws)
            sims_per_step = (probe.n_simulations - probe.settings["pilot_size"]) / probe_steps
        sizes = mcmc_sizes(budget, sims_per_step)
        posterior = pg.infer(
            program, observation, method=method, seed=seed, progress=False, **sizes
        )
    return posterior.samples["z"].reshape(-1, DIM), posterior.n_simulations, posterior.wall_time


def run_pyabc(program, x, budget: int, seed: int) -> tuple[torch.Tensor, int, float]:
    import logging

    import pyabc

    logging.getLogger("ABC").setLevel(logging.WARNING)
    for name in ("ABC.Sampler", "ABC.History", "ABC.Epsilon", "ABC.Distance", "ABC.Adaptation"):
        logging.getLogger(name).setLevel(logging.WARNING)
    mean0 = program.prior_mean.double().numpy()
    tril = program.prior_scale_tril.double().numpy()
    matrix = program.matrix.double().numpy()
    rng = np.random.default_rng(seed)

    # The prior is a correlated Gaussian; pyabc takes independent parameters, so the model gets
    # the whitened u ~ N(0, I) and maps it (an equivalent problem).
    def model(parameters):
        u = np.array([parameters[f"u{i}"] for i in range(DIM)])
        z = mean0 + tril @ u
        return {"x": matrix @ z + program.noise * rng.standard_normal(matrix.shape[0])}

    prior = pyabc.Distribution(**{f"u{i}": pyabc.RV("norm", 0.0, 1.0) for i in range(DIM)})
    population = {1000: 100, 10_000: 500}.get(budget, 1000)
    abc = pyabc.ABCSMC(
        model,
        prior,
        pyabc.PNormDistance(p=2),
        population_size=population,
        sampler=pyabc.sampler.SingleCoreSampler(),
    )
    np.random.seed(seed)  # pyabc's own proposals use numpy's global RNG
    with tempfile.TemporaryDirectory() as folder:
        abc.new(f"sqlite:///{folder}/pyabc.db", {"x": x.double().numpy()})
        start = time.perf_counter()
        history = abc.run(max_total_nr_simulations=budget, max_nr_populations=1000)
        wall = time.perf_counter() - start
        frame, weights = history.get_distribution()
        spent = int(history.total_nr_simulations)
    u = frame[[f"u{i}" for i in range(DIM)]].to_numpy()
    index = rng.choice(len(u), size=len(u), p=weights / weights.sum())
    z = mean0 + u[index] @ tril.T
    return torch.as_tensor(z), spent, wall


def run_sbi(program, x, budget: int, seed: int) -> tuple[torch.Tensor, int, float]:
    from sbi.inference import SMCABC

    torch.manual_seed(seed)
    # sbi works in float32.
    matrix = program.matrix.float()
    prior = torch.distributions.MultivariateNormal(
        program.prior_mean.float(), scale_tril=program.prior_scale_tril.float()
    )

    def simulator(theta):
        theta = theta.float()
        return theta @ matrix.T + program.noise * torch.randn(theta.shape[0], matrix.shape[0])

    particles = {1000: 100, 10_000: 500}.get(budget, 1000)
    inference = SMCABC(simulator, prior, simulation_batch_size=1000, show_progress_bars=False)
    start = time.perf_counter()
    samples, summary = inference(
        x.float().unsqueeze(0),
        num_particles=particles,
        num_initial_pop=min(5 * particles, budget // 4),
        num_simulations=budget,
        epsilon_decay=0.5,
        return_summary=True,
    )
    wall = time.perf_counter() - start
    return samples, budget, wall


def peers() -> dict:
    available = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pyabc  # noqa: F401

            available["pyabc_smc"] = run_pyabc
        except Exception as error:  # an optional peer; say why it is missing
            print(f"pyabc not available ({type(error).__name__}: {error})", file=sys.stderr)
        try:
            from sbi.inference import SMCABC  # noqa: F401

            available["sbi_smcabc"] = run_sbi
        except Exception as error:
            print(f"sbi not available ({type(error).__name__}: {error})", file=sys.stderr)
    return available


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="budgets 1e3 and 1e4 only")
    parser.add_argument("--budgets", type=float, nargs="*", help="override the budgets")
    parser.add_argument("--methods", nargs="*", help="run only these methods")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "abc_accuracy.json")
    args = parser.parse_args(argv)
    set_num_threads(args.threads)
    budgets = [int(b) for b in (args.budgets or ([1e3, 1e4] if args.quick else [1e3, 1e4, 1e5]))]

    program = linear_gaussian(dim=DIM)
    x = pg.programs.simulate(program, seed=1)["x"]
    mean, covariance = program.analytic_posterior(x)
    torch.manual_seed(args.seed)
    exact = torch.distributions.MultivariateNormal(mean, covariance).sample((C2ST_SAMPLES,))

    methods = {
        name: functools.partial(run_ours, name)
        for name in ("abc_mcmc", "abc_slice", "abc_rejection")
    }
    methods.update(peers())
    if args.methods:
        methods = {name: run for name, run in methods.items() if name in args.methods}

    rows = []
    header = (
        f"{'budget':>8} {'method':<14} {'sims':>8} {'samples':>8} {'mean_err':>9} "
        f"{'sd_err':>8} {'c2st':>6} {'wall_s':>8}"
    )
    print(header)
    print("-" * len(header))
    for budget in budgets:
        for name, run in methods.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                samples, spent, wall = run(program, x, budget, args.seed)
            row = {"budget": budget, "method": name, "n_simulations": spent, "wall_time": wall}
            row.update(metrics(samples, mean, covariance, exact))
            rows.append(row)
            print(
                f"{budget:>8} {name:<14} {spent:>8} {row['n_samples']:>8} "
                f"{row['mean_error']:>9.3f} {row['sd_error']:>8.3f} {row['c2st']:>6.3f} "
                f"{wall:>8.2f}",
                flush=True,
            )
    payload = {
        "benchmark": "abc_accuracy",
        "problem": {"program": "linear_gaussian", "dim": DIM, "noise": program.noise},
        "metrics": {
            "mean_error": "RMS over dims of (mean - posterior mean) / posterior sd",
            "sd_error": "RMS over dims of sd / posterior sd - 1",
            "c2st": "quadratic logistic regression two-sample accuracy (0.5 = same)",
        },
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "rows": rows,
    }
    at_largest = {row["method"]: row for row in rows if row["budget"] == max(budgets)}
    if "abc_mcmc" in at_largest:
        ours = at_largest["abc_mcmc"]
        payload["abc_mcmc_beats_at_largest_budget"] = {
            name: ours["c2st"] < row["c2st"] and ours["mean_error"] < row["mean_error"]
            for name, row in at_largest.items()
            if name != "abc_mcmc" and name != "abc_slice"
        }
        print(
            "abc_mcmc closer than (c2st and mean error):",
            payload["abc_mcmc_beats_at_largest_budget"],
        )
    write_json_atomically(args.out, payload)
    print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
