"""Our ABC methods against the ABC peers on sbibm's tasks, by C2ST at equal simulation budgets.

Tasks ``gaussian_linear``, ``two_moons``, ``slcp`` (``pg.programs.sbibm_task``); budgets 1e3 / 1e4
/ 1e5 simulations; observations 1-3. Every method gets the same hard budget: every simulator call
counts, pilots and learned-summary training included.

* Ours: ``abc_rejection`` (keeps the closest ``max(100, N / 100)``); ``abc_rejection+adj``
  (keeps the closest ``max(100, N / 10)`` and adjusts them by linear regression on their
  summaries, ``adjust="linear"``); ``abc_smc``, ``abc_pmc`` (:data:`PMC_OPTIONS`, population
  ``N / 10`` up to 1,000 as pyabc's, its final weighted population resampled into 10,000 draws
  as pyabc's is) and ``abc_mcmc`` (all ``simulations=N``), each with the default summary (the
  raw output, standardized L2) and with a learned summary (``pg.semi_automatic_summary``
  fitted on ``N / 5`` of the budget, the other ``4N / 5`` spent by the method): rows
  ``... +sa``.
* Peers (the ``bench`` extra): sbi's MCABC (REJ-ABC) and SMCABC and pyabc's ABC-SMC, each run
  through sbibm's own runner with sbibm's defaults (``sbibm.algorithms``); ELFI's rejection
  sampler (``elfi.Rejection``, keeping the closest 100, Euclidean distance), as sbibm has no
  ELFI ABC runner. A peer that is not installed is left out with a message.
* C2ST: ``sbibm.metrics.c2st`` (sbibm's protocol: z-scored by the reference, an sklearn
  ``MLPClassifier`` with two hidden layers of ``10 * dim`` units, 5-fold cross-validated
  accuracy; 0.5 = indistinguishable) between sbibm's 10,000 reference posterior samples and
  10,000 of the method's. A method returning fewer than 10,000 distinct draws (rejection's kept
  draws; MCMC chains repeat states) gets sbibm's REJ-ABC treatment: a Gaussian KDE of its draws
  with cross-validated bandwidth (sbi's ``get_kde``, as sbibm's MCABC runner uses) is sampled
  10,000 times. With 10,000 or more distinct draws, 10,000 are taken at random.

Prints a table (C2ST, wall seconds and simulations per second beside each row) and writes
``benchmarks/results/sbibm.json`` (``--out``). Needs the bench environment (sbibm for the
references)::

    python3 -m venv .venv-bench && .venv-bench/bin/pip install torch==2.13.0
    .venv-bench/bin/pip install -e '.[bench]'
    .venv-bench/bin/python benchmarks/sbibm_c2st.py --budgets 1000 10000 --observations 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import probgraphics as pg
from probgraphics.config import set_num_threads
from probgraphics.programs.sbibm_tasks import SBIBM_TASKS, sbibm_task

# Named sbibm_c2st, not sbibm: the benchmarks folder is on the import path of the scripts (and of
# tests that load them), where a file named sbibm.py would hide the sbibm package.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, write_json  # noqa: E402

NUM_SAMPLES = 10_000
#: Fraction of a learned-summary row's budget spent fitting the summary.
SUMMARY_FRACTION = 0.2
OURS = ("abc_rejection", "abc_smc", "abc_pmc", "abc_mcmc")
#: abc_rejection keeping a tenth of the budget, with linear regression adjustment: one regression
#: (``+adj``), or one per posterior mode after two rounds, the second from the prior truncated
#: around the first's kept draws (``+modes``).
ADJUSTED = "abc_rejection+adj"
ADJUSTED_MODES = "abc_rejection+modes"
#: A row's suffix -> the options it adds to abc_rejection keeping a tenth.
ADJUSTMENTS = {
    "+adj": {"adjust": "linear"},
    "+modes": {"adjust": "linear_modes", "rounds": 2},
}
PEERS = ("sbi_mcabc", "sbi_smcabc", "pyabc_smcabc", "elfi_rejection")
#: abc_pmc's options in its rows (chosen on two_moons at 1e5, observation 1: docs/sbibm.md).
PMC_OPTIONS = {"particles": 1_000, "kernel": "knn"}
#: The bar issue 15 sets at 1e5 simulations, observation 1: the best ABC peer's C2ST.
PEER_BAR = {"gaussian_linear": 0.71, "two_moons": 0.53, "slcp": 0.94}


# ------------------------------------------------------------------------------------- samples


def to_c2st_samples(draws: torch.Tensor, seed: int) -> tuple[torch.Tensor, int, str]:
    """10,000 samples ``(10000, D)`` float32 from a method's draws ``(n, D)``; also the number
    of distinct draws and how the samples were made (``"subsample"`` or ``"kde"``)."""
    draws = draws.reshape(-1, draws.shape[-1]).to(torch.float32)
    draws = draws[torch.isfinite(draws).all(-1)]
    distinct = int(torch.unique(draws, dim=0).shape[0])
    generator = torch.Generator().manual_seed(seed)
    if distinct >= NUM_SAMPLES:
        index = torch.randperm(draws.shape[0], generator=generator)[:NUM_SAMPLES]
        return draws[index], distinct, "subsample"
    from sbi.utils.kde import get_kde

    np.random.seed(seed)
    kde = get_kde(torch.unique(draws, dim=0), bandwidth="cv")
    return kde.sample(NUM_SAMPLES).to(torch.float32), distinct, "kde"


# ------------------------------------------------------------------------------------ our rows


def base_method(method: str) -> str:
    """A row's method without its suffixes (``abc_rejection+modes`` -> ``abc_rejection``)."""
    for suffix in ("+sa", *ADJUSTMENTS):
        method = method.removesuffix(suffix)
    return method


def run_ours(
    task,
    number: int,
    method: str,
    budget: int,
    learned: bool,
    seed: int,
    adjust: dict | None = None,
):
    """Draws ``(n, D)`` of our ``method`` within ``budget`` simulations (summary fit included);
    ``adjust`` (a value of :data:`ADJUSTMENTS`): abc_rejection keeping a tenth, with those
    options."""
    observation = {"x": task.observation(number)}
    summary = None
    spend = budget
    if learned:
        pilot = int(SUMMARY_FRACTION * budget)
        summary = pg.semi_automatic_summary(task, simulations=pilot, seed=seed)
        spend = budget - pilot
    options: dict = {"simulations": spend}
    if method == "abc_rejection" and adjust is not None:
        options.update(keep_fraction=max(100, spend // 10) / spend, **adjust)
    elif method == "abc_rejection":
        options["keep_fraction"] = max(100, spend // 100) / spend
    elif method == "abc_smc":
        # Its defaults (a 1,000-draw pilot, 1,024 particles) need >= 3,048 simulations.
        options["pilot_size"] = min(1_000, spend // 10)
        options["particles"] = min(1_024, spend // 10)
    elif method == "abc_pmc":
        # pyabc's population rule (budget / 10, at most 1,000); the final weighted population
        # resampled into 10,000 draws, as pyabc's row resamples its weighted population.
        options.update(PMC_OPTIONS)
        options["particles"] = min(PMC_OPTIONS["particles"], max(10, spend // 10))
        options["draws"] = NUM_SAMPLES
    posterior = pg.infer(
        task, observation, method=method, summary=summary, seed=seed, progress=False, **options
    )
    used = posterior.n_simulations + (budget - spend)
    return posterior.samples["theta"].reshape(-1, task.dim), used


# ---------------------------------------------------------------------------------- peer rows


def _quiet() -> contextlib.ExitStack:
    """Silence the peers' progress bars and logging (they print per batch)."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)
    stack.callback(logging.disable, logging.NOTSET)
    return stack


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def run_sbi_mcabc(name: str, number: int, budget: int, seed: int):
    from sbibm.algorithms.sbi.mcabc import run

    _seed_everything(seed)
    samples, used, _ = run(
        task=_sbibm(name), num_samples=NUM_SAMPLES, num_simulations=budget, num_observation=number
    )
    return samples, used


def run_sbi_smcabc(name: str, number: int, budget: int, seed: int):
    from sbibm.algorithms.sbi.smcabc import run

    _seed_everything(seed)
    samples, used, _ = run(
        task=_sbibm(name), num_samples=NUM_SAMPLES, num_simulations=budget, num_observation=number
    )
    return samples, used


def run_pyabc_smcabc(name: str, number: int, budget: int, seed: int):
    """pyabc's ABC-SMC (adaptive epsilon, Euclidean distance on the raw output, one core)
    stopped at ``budget`` simulations, with sbibm's population size rule (budget / 10, at most
    1,000). (sbibm 1.1's own pyabc runner calls an sbi API that sbi 0.21 lacks.) Returns the
    last population resampled by its weights."""
    import pyabc

    task = sbibm_task(name)
    prior = task.prior
    names = [f"p{i}" for i in range(task.dim)]
    if name == "gaussian_linear":
        scale = float(prior.covariance_matrix[0, 0].sqrt())
        variables = {key: pyabc.RV("norm", 0.0, scale) for key in names}
    else:
        low = prior.base_dist.low.tolist()
        high = prior.base_dist.high.tolist()
        variables = {key: pyabc.RV("uniform", lo, hi - lo) for key, lo, hi in zip(names, low, high)}

    def model(parameters):
        theta = torch.tensor([[parameters[key] for key in names]], dtype=torch.float32)
        return {"x": task.run(theta)[0].numpy().astype(np.float64)}

    _seed_everything(seed)
    population = min(1_000, max(10, budget // 10))
    abc = pyabc.ABCSMC(
        model,
        pyabc.Distribution(**variables),
        pyabc.PNormDistance(p=2),
        population_size=population,
        sampler=pyabc.sampler.SingleCoreSampler(),
    )
    with tempfile.TemporaryDirectory() as folder:
        abc.new(f"sqlite:///{folder}/pyabc.db", {"x": task.observation(number).numpy()})
        history = abc.run(max_total_nr_simulations=budget)
        frame, weights = history.get_distribution()
        used = int(history.total_nr_simulations)
    values = torch.as_tensor(frame[names].to_numpy(), dtype=torch.float32)
    weights = torch.as_tensor(np.asarray(weights), dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    index = torch.multinomial(weights, NUM_SAMPLES, replacement=True, generator=generator)
    return values[index], used


def run_elfi_rejection(name: str, number: int, budget: int, seed: int):
    """ELFI's rejection sampler on our task's prior and simulator: keep the closest 100 of
    ``budget`` simulations (Euclidean distance on the raw output)."""
    import elfi
    import scipy.stats

    task = sbibm_task(name)
    observed = task.observation(number).numpy()[None].astype(np.float64)
    model = elfi.ElfiModel(name=f"{name}_{number}_{budget}_{seed}")
    prior = task.prior
    if name == "gaussian_linear":
        prior_node = elfi.Prior(
            scipy.stats.multivariate_normal,
            prior.loc.numpy(),
            prior.covariance_matrix.numpy(),
            model=model,
            name="theta",
        )
    else:
        low = prior.base_dist.low.numpy().astype(np.float64)
        high = prior.base_dist.high.numpy().astype(np.float64)
        prior_node = elfi.Prior(_BoxUniform(low, high), model=model, name="theta")

    def simulate(theta, batch_size=1, random_state=None):
        seed_value = int(random_state.randint(0, 2**31 - 1)) if random_state is not None else 0
        torch.manual_seed(seed_value)
        parameters = torch.as_tensor(np.asarray(theta), dtype=torch.float32)
        parameters = parameters.reshape(batch_size, task.dim)
        return task.run(parameters).numpy().astype(np.float64)

    simulator = elfi.Simulator(simulate, prior_node, observed=observed, name="x")
    distance = elfi.Distance("euclidean", simulator, name="distance")
    kept = 100
    sampler = elfi.Rejection(distance, batch_size=1000, seed=seed)
    result = sampler.sample(kept, quantile=kept / budget)
    samples = torch.as_tensor(np.asarray(result.samples["theta"]), dtype=torch.float32)
    return samples.reshape(-1, task.dim), int(result.n_sim)


class _BoxUniform:
    """A vector uniform prior for ELFI (its ``Prior`` takes an object with ``rvs``/``pdf``)."""

    def __init__(self, low: np.ndarray, high: np.ndarray) -> None:
        self.low, self.high = low, high

    def rvs(self, size=None, random_state=None):
        size = 1 if size is None else size
        size = size[0] if isinstance(size, tuple) else size
        random_state = random_state or np.random
        return random_state.uniform(self.low, self.high, size=(size, self.low.shape[0]))

    def pdf(self, x):
        x = np.atleast_2d(x)
        inside = np.all((x >= self.low) & (x <= self.high), axis=-1)
        return inside / np.prod(self.high - self.low)


PEER_RUNNERS: dict[str, Callable] = {
    "sbi_mcabc": run_sbi_mcabc,
    "sbi_smcabc": run_sbi_smcabc,
    "pyabc_smcabc": run_pyabc_smcabc,
    "elfi_rejection": run_elfi_rejection,
}
PEER_PACKAGES = {
    "sbi_mcabc": "sbi",
    "sbi_smcabc": "sbi",
    "pyabc_smcabc": "pyabc",
    "elfi_rejection": "elfi",
}


def _sbibm(name: str):
    import sbibm

    return sbibm.get_task(name)


def _missing(package: str) -> str | None:
    try:
        __import__(package)
    except Exception as error:  # a peer may fail to import on this Python: say why
        return f"{type(error).__name__}: {error}"
    return None


# ----------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=sorted(SBIBM_TASKS))
    parser.add_argument("--budgets", nargs="+", type=int, default=[1_000, 10_000, 100_000])
    parser.add_argument("--observations", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=[*OURS, ADJUSTED, ADJUSTED_MODES, *(f"{m}+sa" for m in OURS), *PEERS],
        help="ours (abc_rejection, abc_smc, abc_pmc, abc_mcmc, each optionally +sa; "
        "abc_rejection+adj, abc_rejection+modes) and peers "
        f"({', '.join(PEERS)})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="sbibm", help="results/<out>.json")
    args = parser.parse_args(argv)
    set_num_threads(args.threads)

    missing_sbibm = _missing("sbibm")
    if missing_sbibm is not None:
        raise SystemExit(
            f"benchmarks/sbibm_c2st.py needs the sbibm package for reference posteriors and C2ST "
            f"({missing_sbibm}); install the bench extra into its own environment (see this "
            "script's docstring)."
        )
    from sbibm.metrics import c2st

    skipped = {}
    methods = []
    for method in args.methods:
        base = base_method(method)
        if base in PEER_RUNNERS:
            why = _missing(PEER_PACKAGES[base])
            if why is not None:
                skipped[method] = why
                print(f"left out {method}: {PEER_PACKAGES[base]} is not importable ({why})")
                continue
        elif base not in OURS:
            raise SystemExit(f"unknown method {method!r}")
        methods.append(method)

    rows: list[dict] = []
    payload = {
        "settings": vars(args),
        "left_out": skipped,
        "peer_bar_1e5_observation_1": PEER_BAR,
        "rows": rows,
    }
    for name in args.tasks:
        task = sbibm_task(name)
        for number in args.observations:
            reference = task.reference_samples(number)
            for budget in args.budgets:
                for method in methods:
                    base = base_method(method)
                    row = {"task": name, "observation": number, "budget": budget, "method": method}
                    start = time.perf_counter()
                    try:
                        if base in OURS:
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore")
                                draws, used = run_ours(
                                    task,
                                    number,
                                    base,
                                    budget,
                                    method.endswith("+sa"),
                                    args.seed,
                                    adjust=next(
                                        (a for x, a in ADJUSTMENTS.items() if x in method), None
                                    ),
                                )
                        else:
                            with _quiet():
                                draws, used = PEER_RUNNERS[base](name, number, budget, args.seed)
                        seconds = time.perf_counter() - start
                        with _quiet():
                            samples, distinct, how = to_c2st_samples(draws, args.seed)
                            score = float(c2st(reference, samples, seed=1)[0])
                    except Exception as error:  # one failing peer must not sink the run
                        row.update(error=f"{type(error).__name__}: {error}")
                        traceback.print_exc()
                        print(f"{name} obs {number} N={budget} {method}: FAILED {error}")
                        rows.append(row)
                        continue
                    row.update(
                        c2st=score,
                        simulations=int(used),
                        seconds=seconds,
                        sims_per_s=used / seconds if seconds > 0 else math.nan,
                        distinct_draws=distinct,
                        samples=how,
                    )
                    rows.append(row)
                    # Written after every row: a long run stopped midway keeps what it measured.
                    write_json(args.out, {**payload, "rows": rows})
                    print(
                        f"{name:>15} obs {number} N={budget:>6} {method:>15}: c2st {score:.3f} "
                        f"sims {used} in {seconds:.1f}s ({row['sims_per_s']:.0f}/s) "
                        f"[{distinct} distinct, {how}]",
                        flush=True,
                    )
    columns = [
        "task",
        "observation",
        "budget",
        "method",
        "c2st",
        "simulations",
        "seconds",
        "sims_per_s",
        "distinct_draws",
        "samples",
        "error",
    ]
    print()
    print(format_table(rows, columns))
    path = write_json(args.out, payload)
    print(f"\nwrote {path}")
    return payload


if __name__ == "__main__":
    main()
