"""How fast ABC-MCMC mixes on the face posterior once the search is taken out of the picture.

Chains start at the true scene of the demo (seed 0, 64 px, noise 0.02). The pixel noise is
integrated out of the kernel (``observation_noise="marginal"``), and the tolerance is held fixed
(``anneal_fraction=0``), so every step samples one known target: the exact posterior at ``eps = 0``
and wider ABC posteriors above it. The moves are the default cycle: one elliptical block per site
plus the joint move on the fitted reference Gaussian. One row also anneals from the pilot's
tolerance, as the recommended call does (``anneal_fraction=0.5``).

Each row gives the posterior standard deviation of azimuth, elevation and light in degrees, the
largest R-hat, the smallest bulk ESS, and the noise-free distance of the chains' final states
against the true scene's. Then one Gauss-Newton step from the truth, with a finite-difference
Jacobian of the render, tests whether the posterior is close to Gaussian at its own scale: if it
were, the step would land on the mode and lower the distance.

``--collapse none texture`` runs each row without and with the texture drawn from its Gaussian
conditional at every move (``infer(..., collapse="texture")``), side by side. ``--ridge none
angles`` likewise without and with ridge moves of azimuth, elevation and light, the other 403
latents following (``infer(..., ridge=["azimuth", "elevation", "light"])``).

``--fixed`` conditions the named sites on their true values (``pyro.poutine.condition``), so the
chains move only the others: which latents hold the mixing back, and whether a low-dimensional
scene mixes at all (the Gauss-Newton check is then left out).

``--supersample`` and ``--silhouette-blur`` pick the renderer (``pg.programs.face(supersample=s,
silhouette_blur=b)``), ``--components K`` how many shape and texture components are latent
(``n_shape=n_texture=K``, 200 by default): the observation and every simulation use it.

Prints a table and writes ``benchmarks/results/face_mixing.json`` (``--out``)::

    python benchmarks/face_mixing.py --chains 8 --simulations 40000 --epsilons 0 0.1 0.3
    python benchmarks/face_mixing.py --fixed shape texture --out face_mixing_fixed
    python benchmarks/face_mixing.py --fixed shape texture --silhouette-blur 0.5 --out blur
"""

from __future__ import annotations

import argparse
import itertools
import sys
import warnings
from pathlib import Path

import pyro
import torch

import probgraphics as pg
from probgraphics.api import prepare_abc
from probgraphics.config import set_num_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine, write_json  # noqa: E402

SITES = ("azimuth", "elevation", "light")


def noise_free_distance(program, latents: dict, image: torch.Tensor) -> torch.Tensor:
    """L2 distance ``(C,)`` of each noise-free render of ``latents`` (site -> ``(C, *event)``)
    from ``image``."""
    with torch.no_grad():
        renders = program.render(**{site: latents[site] for site in program.latent_sites})
    return (renders - image).flatten(1).norm(dim=1)


def from_truth(
    program,
    truth: dict,
    chains: int,
    simulations: int,
    epsilon: float,
    anneal: float,
    fixed: tuple[str, ...] = (),
    collapse: str | None = None,
    ridge: tuple[str, ...] | None = None,
):
    """One row: ``chains`` chains started at the truth, ``simulations`` in all; the ``fixed``
    sites held at their true values; ``collapse``: the site drawn from its conditional;
    ``ridge``: the ridge moves' focus sites."""
    free = [site for site in program.latent_sites if site not in fixed]
    init = {s: truth[s].expand(chains, *truth[s].shape).clone() for s in free}
    if fixed and collapse is not None:
        raise ValueError("--fixed and --collapse do not combine (conditioning hides the map)")
    model = pyro.poutine.condition(program, data={s: truth[s] for s in fixed}) if fixed else program
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior = pg.infer(
            model,
            truth["image"],
            init=init,
            chains=chains,
            simulations=simulations,
            observation_noise="marginal",
            epsilon=epsilon,
            anneal_fraction=anneal,
            collapse=collapse,
            ridge=None if ridge is None else list(ridge),
            seed=0,
            progress=False,
        )
    table = posterior.summary(var_names=list(SITES))
    final = {site: value[:, -1] for site, value in posterior.samples.items()}
    final.update({s: truth[s].expand(chains, *truth[s].shape) for s in fixed})
    distance = noise_free_distance(program, final, truth["image"])
    row = {"fixed": " ".join(fixed) or "-", "collapse": collapse or "-", "epsilon": epsilon}
    row["ridge"] = " ".join(ridge) if ridge else "-"
    row["anneal_fraction"] = anneal
    row["chains"] = chains
    row["draws"] = posterior.num_draws
    row["simulations"] = posterior.n_simulations
    for site in SITES:
        row[f"sd_{site}"] = float(table.loc[site, "sd"])
    row["largest_rhat"] = float(table["r_hat"].max())
    row["smallest_ess_bulk"] = float(table["ess_bulk"].min())
    row["acceptance"] = float(posterior.sample_stats["accepted"].float().mean())
    row["final_distance_mean"] = float(distance.mean())
    row["seconds"] = posterior.wall_time
    return row


def gauss_newton_step(program, truth: dict, step: float = 0.01) -> dict:
    """Distances at the truth and after one Gauss-Newton step from it, in the whitened space
    (finite-difference Jacobian of the noise-free render, central differences of ``step``)."""
    run = prepare_abc(
        program,
        truth["image"],
        chains=1,
        draws=1,
        warmup=1,
        observation_noise="marginal",
        epsilon=0.0,
        init={s: truth[s][None] for s in program.latent_sites},
        seed=0,
        progress=False,
    )
    simulate, u0 = run.simulator, run.state.u[0].clone()
    dim = u0.shape[0]

    def renders(u: torch.Tensor) -> torch.Tensor:
        chunks = [simulate(u[i : i + 64]).summaries.flatten(1) for i in range(0, len(u), 64)]
        return torch.cat(chunks)

    with torch.no_grad():
        eye = torch.eye(dim, dtype=u0.dtype)
        jacobian = ((renders(u0 + step * eye) - renders(u0 - step * eye)) / (2 * step)).T
        observed = simulate.observed_summary.flatten()
        residual = observed - renders(u0[None])[0]
        sigma = run.config.noise_scale
        precision = torch.eye(dim, dtype=u0.dtype) + jacobian.T @ jacobian / sigma**2
        gradient = jacobian.T @ residual / sigma**2 - u0
        moved = u0 + torch.linalg.solve(precision, gradient)
        eigenvalues = torch.linalg.eigvalsh(precision)
    return {
        "distance_at_truth": float(residual.norm()),
        "distance_after_step": float((observed - renders(moved[None])[0]).norm()),
        "directions_precision_above_10": int((eigenvalues > 10).sum()),
        "largest_precision": float(eigenvalues.max()),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--simulations", type=int, default=40_000)
    parser.add_argument("--epsilons", nargs="+", type=float, default=[0.0, 0.1, 0.3])
    parser.add_argument("--supersample", type=int, default=1)
    parser.add_argument(
        "--silhouette-blur", type=float, default=0.0, help="face(silhouette_blur=...), pixels"
    )
    parser.add_argument(
        "--components",
        type=int,
        default=200,
        help="face(n_shape=K, n_texture=K): how many shape and texture components are latent",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--fixed", nargs="+", default=[], help="latent sites held at their true values"
    )
    parser.add_argument(
        "--collapse",
        nargs="+",
        default=["none"],
        help="rows without ('none') and/or with a collapsed site (e.g. 'texture'), side by side",
    )
    parser.add_argument(
        "--ridge",
        nargs="+",
        choices=["none", "angles"],
        default=["none"],
        help="rows without ('none') and/or with ridge moves of the three angles, side by side",
    )
    parser.add_argument(
        "--no-gauss-newton", action="store_true", help="skip the Gauss-Newton check at the end"
    )
    parser.add_argument("--out", default="face_mixing", help="results/<out>.json")
    args = parser.parse_args(argv)
    set_num_threads(args.threads)
    program = pg.programs.face(
        resolution=64,
        supersample=args.supersample,
        silhouette_blur=args.silhouette_blur,
        n_shape=args.components,
        n_texture=args.components,
    )
    truth = pg.programs.simulate(program, seed=0)
    settings = [(epsilon, 0.0) for epsilon in args.epsilons] + [(0.0, 0.5)]
    unknown = sorted(set(args.fixed) - set(program.latent_sites))
    if unknown:
        parser.error(f"--fixed names {unknown}; the latent sites are {program.latent_sites}")
    fixed = tuple(args.fixed)
    rows = []
    for epsilon, anneal in settings:
        for collapse, ridge in itertools.product(args.collapse, args.ridge):
            site = None if collapse == "none" else collapse
            focus = SITES if ridge == "angles" else None
            rows.append(
                from_truth(
                    program,
                    truth,
                    args.chains,
                    args.simulations,
                    epsilon,
                    anneal,
                    fixed,
                    site,
                    focus,
                )
            )
            print(rows[-1], flush=True)
    newton = None if fixed or args.no_gauss_newton else gauss_newton_step(program, truth)
    print(format_table(rows, list(rows[0])))
    if newton is not None:
        print("one Gauss-Newton step from the truth:", newton)
    payload = {"machine": machine(), "settings": vars(args), "rows": rows, "gauss_newton": newton}
    print(f"wrote {write_json(args.out, payload)}")
    return payload


if __name__ == "__main__":
    main()
