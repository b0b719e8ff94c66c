"""How well the face image pins each angle: the profile of the exact posterior along one angle.

For each of azimuth, elevation and light, the angle is held at the demo scene's true value plus
an offset, and every other latent (200 shape, 200 texture, the other two angles, the camera) is
moved to the best fit of the image by damped Gauss-Newton (central finite-difference Jacobians of
the noise-free render, in the engine's whitened coordinates, with backtracking). The density is the
one abc_mcmc samples at ``epsilon = 0`` with the noise integrated out,
``log N(u; 0, I) - |render(u) - image|^2 / (2 noise^2)``, less the held angle's own prior term
(its prior is uniform in degrees, so in degrees the angle's density is flat a priori).

Per offset the table gives:

* ``shift only``: the density with only the angle moved, every other latent at the truth;
* ``profile``: after re-fitting the other 405 latents (the best scene with that angle);
* ``laplace``: ``profile - 0.5 log det P``, ``P = I + J^T J / noise^2`` the Gauss-Newton
  precision of the other latents there: the log of the angle's marginal density by Laplace's
  approximation (Gauss-Newton's, so only as good as the posterior is Gaussian given the angle).

All are relative to the offset-0 row (the true angle, the rest re-fitted), except ``shift only``,
which is relative to the true scene itself. Offsets of one sign are fitted in order of size, each
starting from the previous one's fit (continuation along the ridge). Then the angle's marginal
standard deviation by the ``laplace`` column (trapezoid over the offsets, so only as wide as they
reach), beside the standard deviation of the chains of ``face_mixing.py``.

Prints a table and writes ``benchmarks/results/face_profile.json`` (``--out``)::

    python benchmarks/face_profile.py --silhouette-blur 0.5
    python benchmarks/face_profile.py --sites azimuth --offsets -5 -2 0 2 5 --supersample 3
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

import probgraphics as pg
from probgraphics.api import prepare_abc
from probgraphics.config import set_num_threads
from probgraphics.inference.kernels import ridge
from probgraphics.inference.simulator import Simulation

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine, write_json  # noqa: E402

RENDER_CHUNK = 64


def whitened_render(program, image: torch.Tensor, values: dict) -> tuple:
    """The noise-free render as a function of the whitened coordinates, prepared at the scene
    ``values`` (site -> unbatched tensor): returns ``(render, u, observed, noise, layout)`` with
    ``render: u (M, D) float64 -> (M, P) float64``, ``u`` ``(D,)`` float64 the scene's whitened
    coordinates and ``observed`` ``(P,)`` float64 the image."""
    run = prepare_abc(
        program,
        image,
        chains=1,
        draws=1,
        warmup=1,
        observation_noise="marginal",
        epsilon=0.0,
        init={site: value[None] for site, value in values.items()},
        seed=0,
        progress=False,
    )
    simulate = run.simulator

    def render(u: torch.Tensor) -> torch.Tensor:
        u = u.to(run.state.u.dtype)
        chunks = [
            simulate(u[i : i + RENDER_CHUNK]).summaries.flatten(1)
            for i in range(0, len(u), RENDER_CHUNK)
        ]
        return torch.cat(chunks).double()

    observed = simulate.observed_summary.flatten().double()
    return render, run.state.u[0].double(), observed, run.config.noise_scale, run.layout


def central_jacobian(
    render: Callable[[torch.Tensor], torch.Tensor],
    u: torch.Tensor,
    coordinates: torch.Tensor,
    step: float,
) -> torch.Tensor:
    """``(P, k)`` central-difference Jacobian of ``render`` at ``u`` ``(D,)`` along the ``k``
    whitened ``coordinates`` (long indices), with step ``step``: ``2 k`` renders (the engine's
    :func:`~probgraphics.inference.kernels.ridge.central_jacobian`, on the render alone)."""

    def simulate(points: torch.Tensor) -> Simulation:
        return Simulation(points, render(points), points.new_zeros(len(points)))

    return ridge.central_jacobian(simulate, u, coordinates, step, batch_size=2 * len(coordinates))


def fit_others(
    render: Callable[[torch.Tensor], torch.Tensor],
    u: torch.Tensor,
    observed: torch.Tensor,
    noise: float,
    free: torch.Tensor,
    *,
    iterations: int,
    step: float = 0.003,
) -> tuple[torch.Tensor, float, float]:
    """Damped Gauss-Newton on the ``free`` coordinates (``(D,)`` bool) of the density
    ``-|u_free|^2 / 2 - |render(u) - observed|^2 / (2 noise^2)``; the others stay.

    Returns ``(u, log density, log det P)`` at the end, ``P`` the Gauss-Newton precision of the
    free coordinates there. A step is tried at full length, then shortened; the fit stops when
    no length improves the density by 0.05 nats.
    """
    coordinates = free.nonzero().squeeze(1)

    def log_density(v: torch.Tensor) -> torch.Tensor:
        residual = render(v) - observed
        return -0.5 * v[:, free].square().sum(1) - residual.square().sum(1) / (2 * noise**2)

    current = float(log_density(u[None])[0])
    identity = torch.eye(len(coordinates), dtype=u.dtype)
    for _ in range(iterations):
        jacobian = central_jacobian(render, u, coordinates, step)
        residual = observed - render(u[None])[0]
        precision = identity + jacobian.T @ jacobian / noise**2
        gradient = jacobian.T @ residual / noise**2 - u[coordinates]
        direction = torch.linalg.solve(precision, gradient)
        candidates = u.expand(5, -1).clone()
        lengths = torch.tensor([1.0, 0.5, 0.25, 0.1, 0.03], dtype=u.dtype)
        candidates[:, coordinates] += lengths[:, None] * direction
        values = log_density(candidates)
        best = int(values.argmax())
        if not float(values[best]) > current + 0.05:
            break
        u, current = candidates[best], float(values[best])
    jacobian = central_jacobian(render, u, coordinates, step)
    log_det = torch.linalg.slogdet(identity + jacobian.T @ jacobian / noise**2)[1]
    return u, current, float(log_det)


def profile_site(program, truth: dict, site: str, offsets: list[float], iterations: int):
    """Rows for one angle ``site`` at ``offsets`` (degrees from the truth)."""
    image = truth["image"]
    values = {name: truth[name] for name in program.latent_sites}
    render, u_truth, observed, noise, layout = whitened_render(program, image, values)
    held = layout.site(site)
    free = torch.ones(u_truth.numel(), dtype=torch.bool)
    free[held.offset : held.offset + held.size] = False

    def density(u: torch.Tensor) -> float:
        residual = render(u[None])[0] - observed
        return float(-0.5 * u[free].square().sum() - residual.square().sum() / (2 * noise**2))

    truth_density = density(u_truth)
    fits: dict[float, tuple[torch.Tensor, float, float, float]] = {}
    for sign in (1.0, -1.0):
        previous = None
        for offset in sorted((o for o in offsets if o * sign > 0 or o == 0), key=abs):
            if offset in fits:
                previous = fits[offset][0]
                continue
            moved = dict(values, **{site: truth[site] + offset})
            u_shift = whitened_render(program, image, moved)[1]
            start = u_shift.clone()
            if previous is not None:  # continue along the ridge from the last fit
                start[free] = previous[free]
            fitted, log_density, log_det = fit_others(
                render, start, observed, noise, free, iterations=iterations
            )
            fits[offset] = (fitted, log_density, log_det, density(u_shift))
            previous = fitted
    base_density, base_log_det = fits[0.0][1], fits[0.0][2]
    rows = []
    for offset in sorted(fits):
        _, log_density, log_det, shifted = fits[offset]
        rows.append(
            {
                "site": site,
                "offset": offset,
                "shift only": shifted - truth_density,
                "profile": log_density - base_density,
                "laplace": (log_density - 0.5 * log_det) - (base_density - 0.5 * base_log_det),
            }
        )
    return rows


def marginal_sd(rows: list[dict]) -> float:
    """Standard deviation (degrees) of the density ``exp(laplace)`` over the offsets (trapezoid)."""
    x = torch.tensor([row["offset"] for row in rows], dtype=torch.float64)
    log_p = torch.tensor([row["laplace"] for row in rows], dtype=torch.float64)
    p = (log_p - log_p.max()).exp()
    mass = torch.trapezoid(p, x)
    mean = torch.trapezoid(p * x, x) / mass
    return float(torch.trapezoid(p * (x - mean) ** 2, x) / mass) ** 0.5


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", nargs="+", default=["azimuth", "elevation", "light"])
    parser.add_argument(
        "--offsets",
        nargs="+",
        type=float,
        default=[-10.0, -5.0, -2.0, -1.0, 0.0, 1.0, 2.0, 5.0, 10.0],
        help="degrees from the true angle (0 is added when missing)",
    )
    parser.add_argument("--iterations", type=int, default=12, help="Gauss-Newton iterations")
    parser.add_argument("--supersample", type=int, default=1)
    parser.add_argument("--silhouette-blur", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="face_profile", help="results/<out>.json")
    args = parser.parse_args(argv)
    set_num_threads(args.threads)
    angles = ("azimuth", "elevation", "light")
    unknown = sorted(set(args.sites) - set(angles))
    if unknown:
        parser.error(f"--sites names {unknown}; profiles are for the angles {angles}")
    offsets = sorted(set(args.offsets) | {0.0})
    program = pg.programs.face(
        resolution=64, supersample=args.supersample, silhouette_blur=args.silhouette_blur
    )
    truth = pg.programs.simulate(program, seed=0)
    rows, spreads = [], {}
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for site in args.sites:
            site_rows = profile_site(program, truth, site, offsets, args.iterations)
            spreads[site] = marginal_sd(site_rows)
            rows += site_rows
            for row in site_rows:
                print(row, flush=True)
    columns = ["site", "offset", "shift only", "profile", "laplace"]
    print(format_table(rows, columns))
    for site, spread in spreads.items():
        print(f"{site}: marginal sd by the laplace column {spread:.2f} degrees")
    payload = {
        "machine": machine(),
        "settings": vars(args),
        "rows": rows,
        "marginal_sd_degrees": spreads,
        "seconds": time.perf_counter() - start,
    }
    print(f"wrote {write_json(args.out, payload)}")
    return payload


if __name__ == "__main__":
    main()
