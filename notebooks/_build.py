"""Write the example notebooks from the cell sources in this file.

    python notebooks/_build.py            # rewrite notebooks/*.ipynb
    python notebooks/_build.py --check    # exit 1 if a notebook differs from its source here

Edit the cells here, not the ``.ipynb`` files: the notebooks are written stripped (no outputs,
``execution_count`` null, no widget state), which ``tests/integration/test_notebooks.py`` checks,
and every notebook runs top to bottom in a small configuration when ``PROBGRAPHICS_FAST=1``.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent


def md(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(textwrap.dedent(text).strip())


# The first code cell of every notebook: FAST (the test suite's toy sizes) and the imports.
FAST_LINE = 'FAST = os.environ.get("PROBGRAPHICS_FAST") == "1"  # the test suite sets it'


# ------------------------------------------------------------------------------------ 01 quickstart

QUICKSTART = [
    md(
        """
        # Quickstart: inverting a face scene

        probgraphics treats an image as the output of a **scene program**: a Pyro model that
        samples scene latents (a face's shape and texture, its pose, the light, the camera) and
        renders them. Inference runs the program backwards: which scenes could have produced
        this image?

        This notebook simulates a face scene, infers its latents with **ABC-MCMC with elliptical
        proposals**, reads the result with **ArviZ**, and renders posterior draws.

        Sizes: with `PROBGRAPHICS_FAST=1` (what the test suite sets) every step runs at toy
        sizes in seconds and the numbers mean little; without it the run takes a minute or
        two on a CPU.
        """
    ),
    code(
        f"""
        %matplotlib inline
        import os

        {FAST_LINE}

        import arviz as az
        import torch

        import probgraphics as pg
        from probgraphics.plots import image_grid, trace_figure

        pg.set_num_threads()  # OMP_NUM_THREADS if set, else one thread per core
        CHAINS, WARMUP, DRAWS = (16, 40, 40) if FAST else (64, 500, 500)
        PILOT = 200 if FAST else None  # None: infer's default pilot of prior simulations
        ANGLES = ["azimuth", "elevation", "light"]
        print(f"FAST={{FAST}}: {{CHAINS}} chains, {{WARMUP}} warm-up steps, {{DRAWS}} draws")
        """
    ),
    md(
        """
        ## 1. The scene program

        `pg.programs.face(resolution=64)` returns a Pyro model (a callable with no arguments).
        Its latent sites and priors (seed 000, section 4.1):

        | site | prior | shape |
        |---|---|---|
        | `shape`, `texture` | N(0, I): coefficients of a synthetic 3D morphable model | (200,) |
        | `azimuth`, `elevation` | Uniform(-90, 90) degrees | () |
        | `light` | Uniform(-90, 90) degrees (direction of the light) | () |
        | `camera` | Uniform(0, 1): x offset, y offset, scale | (3,) |

        The noise-free render is the deterministic site `render`; the observation is
        `image ~ Normal(render, noise)`. Programs are batch-polymorphic: `simulate(program,
        n=8)` draws eight scenes in one call to the batched rasterizer.
        """
    ),
    code(
        """
        program = pg.programs.face(resolution=64)
        print(program)
        prior = pg.programs.simulate(program, n=8, seed=1)
        titles = [
            f"az {a:+.0f}°, el {e:+.0f}°\\nlight {l:+.0f}°"
            for a, e, l in zip(*(prior[name].tolist() for name in ANGLES))
        ]
        image_grid(prior["render"], ncols=8, titles=titles, suptitle="eight draws from the prior")
        """
    ),
    md(
        """
        The scene to invert is one more draw (seed 0). We keep its latents as the truth to
        check the posterior against; inference sees only the noisy `image`.
        """
    ),
    code(
        """
        scene = pg.programs.simulate(program, seed=0)
        truth = {name: float(scene[name]) for name in ANGLES}
        print("true angles (degrees):", {name: round(value, 1) for name, value in truth.items()})
        image_grid(
            torch.stack([scene["render"], scene["image"]]),
            titles=["noise-free render", "observed image"],
            cell_inches=2.0,
        )
        """
    ),
    md(
        """
        ## 2. ABC-MCMC with elliptical proposals

        ABC needs no likelihood, only the ability to simulate: a candidate scene is rendered,
        mapped through a **summary statistic** (here the pixels themselves), and compared with
        the observation by a distance; a Gaussian ABC kernel of width epsilon turns the distance
        into a weight. Every latent is whitened to a standard normal `u`, and each chain
        proposes `u' = sqrt(1 - a²) u + a ν` with `ν ~ N(0, I)`: a move that leaves the prior
        invariant, so only the ABC kernels enter the acceptance. By default the move cycles over
        blocks, one latent site at a time (`blocks="joint"` moves them all at once, as the
        paper does), each with its own adapted step. Epsilon is annealed during warm-up,
        starting from a pilot of prior simulations. All chains are one tensor: each step
        renders `chains` scenes in one batched call.
        """
    ),
    code(
        """
        posterior = pg.infer(
            program,
            scene["image"],
            method="abc_mcmc",
            summary="pixel",
            chains=CHAINS,
            warmup=WARMUP,
            draws=DRAWS,
            pilot_size=PILOT,
            seed=0,
            progress=False,
        )
        print(posterior)
        print(
            f"{posterior.n_simulations} simulations in {posterior.wall_time:.1f} s "
            f"({posterior.simulations_per_second:.0f} per second)"
        )
        """
    ),
    md(
        """
        ## 3. The result is ArviZ data

        `posterior.to_arviz()` returns ArviZ data with the groups `posterior` (every latent,
        dims `(chain, draw, ...)`), `sample_stats` (`distance`, `accepted`, `epsilon`, ArviZ's
        `acceptance_rate`), `observed_data` and `prior` (the pilot). Everything ArviZ offers
        works on it directly: the summary below is `az.summary` with the true values added as
        a column.
        """
    ),
    code(
        """
        idata = posterior.to_arviz()
        print(idata)
        table = az.summary(idata, var_names=ANGLES)
        table.insert(0, "truth", [round(truth[name], 2) for name in ANGLES])
        print(table.to_string())
        """
    ),
    md(
        """
        How to read it: `mean` and `sd` are the posterior's, `hdi_3%`/`hdi_97%` its 94% highest
        density interval (does it hold the truth?); `ess_bulk` is the effective sample size,
        and `r_hat` compares the chains: values near 1 say they agree, values well above 1 that
        they have not mixed, and then the pooled numbers are not yet a posterior. The trace
        plot below shows how: chains that sit at different values for long stretches. (At the
        real sizes we measured r_hat of about 2 for this scene with the pixel summary: a few
        chains find the observed pose, others stay in poorer fits; the pooled density still
        peaks near the true azimuth and elevation.) The acceptance rate and the final epsilon
        are in `sample_stats`:
        """
    ),
    code(
        """
        stats = idata.sample_stats
        print("mean acceptance rate:", round(float(stats["acceptance_rate"].mean()), 3))
        print("epsilon during sampling:", round(float(stats["epsilon"][:, -1].mean()), 3))
        figure = trace_figure(posterior, ANGLES, truth=truth)  # az.plot_trace, truth as lines
        """
    ),
    md(
        """
        ## 4. Posterior renders

        The program's `render` is batch-polymorphic, so the last draw of every chain renders in
        one call. Compare them with the observation: where they agree, the posterior explains
        the image.
        """
    ),
    code(
        """
        with torch.no_grad():
            last = {name: posterior[name][:, -1] for name in program.latent_sites}
            renders = program.render(**last)  # (chains, 1, 64, 64)
        shown = min(7, CHAINS)
        image_grid(
            torch.cat([scene["image"][None], renders[:shown]]),
            ncols=shown + 1,
            titles=["observed"]
            + [f"chain {i}\\naz {float(last['azimuth'][i]):+.0f}°" for i in range(shown)],
        )
        """
    ),
    md(
        """
        Next: `02_abc_faces` uses a trained encoder as the summary and starts the chains from
        a trained guide; `03_training_dcign` trains a DC-IGN; `04_voxel_muvae` learns 3D shapes
        from images; `05_real_photo` runs all this on a photograph.
        """
    ),
]


# ------------------------------------------------------------------------------------ 02 ABC faces

ABC_FACES = [
    md(
        """
        # ABC on faces with an encoder summary, started from a trained guide

        Seed 000 (section 4.1) inverts face scenes with ABC-MCMC whose summary statistic is a
        **trained encoder** (a DC-IGN's), arguing that the distance between the codes of the
        rendered and the observed image is more about pose and light than the distance between
        their pixels. It also
        proposes **coarse to fine**: a feed-forward network gives a first guess in one pass,
        and MCMC refines it.

        Here: the bundled DC-IGN encoder `dcign-face-64` as the summary (the pixel summary if
        those weights are not installed), the bundled amortized guide `face-guide-64` as the
        start (`init="guide"`), then pose and light posteriors, ArviZ trace and rank plots, and
        posterior renders.
        """
    ),
    code(
        f"""
        %matplotlib inline
        import os

        {FAST_LINE}

        import arviz as az
        import matplotlib.pyplot as plt
        import torch

        import probgraphics as pg
        from probgraphics.nets import CheckpointError, model_card, pretrained
        from probgraphics.nets.guides import load_guide
        from probgraphics.plots import image_grid

        pg.set_num_threads()
        CHAINS, WARMUP, DRAWS = (16, 30, 40) if FAST else (64, 400, 500)
        PILOT = 200 if FAST else None
        GUIDE_DRAWS = 100 if FAST else 1000
        ANGLES = ["azimuth", "elevation", "light"]

        program = pg.programs.face(resolution=64)
        scene = pg.programs.simulate(program, seed=3)
        truth = {{name: float(scene[name]) for name in ANGLES}}
        print("true angles (degrees):", {{name: round(value, 1) for name, value in truth.items()}})
        """
    ),
    md(
        """
        ## The summary statistic: a DC-IGN encoder

        `pretrained("dcign-face-64")` loads the bundled DC-IGN's encoder as an
        `EncoderSummary`: a batched callable `images (B, 1, 64, 64) -> features (B, 200)`, the
        encoder's posterior mean. Its model card records how it was trained and how well its
        azimuth / elevation / light units track the true values.
        """
    ),
    code(
        """
        try:
            summary = pretrained("dcign-face-64")
            card = model_card("dcign-face-64").get("evaluation") or {}
            print(summary)
            print("held-out correlation of its pose/light units:", card.get("correlation_random"))
            print("features of the observation:", tuple(summary(scene["image"][None]).shape))
        except (KeyError, CheckpointError) as error:
            summary = "pixel"
            print(f"note: dcign-face-64 is not available ({error}); using the pixel summary.")
        """
    ),
    md(
        """
        ## The guide: a coarse answer in one forward pass

        `face-guide-64` is an encoder trained with the sleep loss on scenes the face program
        simulates (see its model card): it maps an image to a Gaussian per latent, `q(z |
        image)`. `infer(..., method="guide")` draws from it directly; no simulation, no MCMC.
        """
    ),
    code(
        """
        guide = load_guide("face-guide-64", program)
        coarse = pg.infer(
            program, scene["image"], method="guide", guide=guide, chains=4, draws=GUIDE_DRAWS,
            seed=0,
        )
        table = coarse.summary(var_names=ANGLES)
        table.insert(0, "truth", [round(truth[name], 2) for name in ANGLES])
        print(table[["truth", "mean", "sd", "hdi_3%", "hdi_97%"]].to_string())
        """
    ),
    md(
        """
        ## Coarse to fine: ABC-MCMC started from the guide

        `guide=guide` starts each chain at an independent draw of `q(z | image)` (latents the
        guide leaves out start from the prior) and adds the guide's **data-driven proposal** to
        the cycle: an independence Metropolis-Hastings move that draws a whole scene from
        `q(z | image)` and accepts it by the ABC kernel ratio times the prior ratio times the
        proposal ratio, so a wrong guide slows the chains but cannot bias them. The pilot still
        runs, to give the standardized distance its per-feature scale. The recommended call is
        `pg.infer(program, image, guide=guide, simulations=20_000)`: pixels, a hard budget.
        """
    ),
    code(
        """
        posterior = pg.infer(
            program,
            scene["image"],
            method="abc_mcmc",
            summary=summary,
            init="guide",
            guide=guide,
            chains=CHAINS,
            warmup=WARMUP,
            draws=DRAWS,
            pilot_size=PILOT,
            seed=0,
            progress=False,
        )
        idata = posterior.to_arviz()
        print(posterior)
        table = az.summary(idata, var_names=ANGLES)
        table.insert(0, "truth", [round(truth[name], 2) for name in ANGLES])
        print(table.to_string())
        """
    ),
    md(
        """
        ## Pose and light posteriors

        The guide's draws and the ABC posterior's, pooled over chains, with the true value as a
        line. The guide is calibrated on average over scenes (its model card reports 90%
        intervals holding the truth about 90% of the time); ABC conditions on this image's own
        simulations. Where the ABC histogram is wider than the guide's, the summary does not
        pin that factor down: a code unit that does not track its factor (see the correlations
        printed above) leaves it to the rest of the code, and a warm-up that anneals epsilon
        from the starting chains' largest distance lets the chains wander from the guide's
        start before it tightens.
        """
    ),
    code(
        """
        fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
        for axis, name in zip(axes, ANGLES):
            bins = torch.linspace(-90, 90, 37).numpy()
            axis.hist(coarse[name].reshape(-1).numpy(), bins=bins, density=True, alpha=0.5,
                      label="guide q(z | image)")
            axis.hist(posterior[name].reshape(-1).numpy(), bins=bins, density=True, alpha=0.6,
                      label="ABC-MCMC")
            axis.axvline(truth[name], color="black", linestyle="--", label="truth")
            axis.set_title(f"{name} (degrees)")
            axis.set_yticks([])
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        """
    ),
    md(
        """
        ## ArviZ diagnostics

        Trace plots show each chain's draws (right) and the pooled density (left). Rank plots
        histogram each chain's ranks among all draws: when the chains sample one distribution
        every histogram is flat; a chain stuck somewhere shows as a tilted or spiky one. (Eight
        chains are shown; a rank plot of 64 is unreadable.)
        """
    ),
    code(
        """
        axes = az.plot_trace(
            idata, var_names=ANGLES, combined=True,
            lines=[(name, {}, [truth[name]]) for name in ANGLES],
        )
        axes[0, 0].figure.tight_layout()
        """
    ),
    code(
        """
        axes = az.plot_rank(idata.sel(chain=slice(0, 8)), var_names=ANGLES)
        """
    ),
    md(
        """
        ## Posterior renders beside the observation

        The last draw of a few chains, rendered; the row below is the absolute difference to the
        observation (black: explained).
        """
    ),
    code(
        """
        with torch.no_grad():
            last = {name: posterior[name][:, -1] for name in program.latent_sites}
            renders = program.render(**last)
        shown = min(6, CHAINS)
        residuals = (renders[:shown] - scene["image"]).abs()
        image_grid(
            torch.cat([scene["image"][None], renders[:shown], scene["render"][None], residuals]),
            ncols=shown + 1,
            titles=["observed"]
            + [f"chain {i}" for i in range(shown)]
            + ["true render"]
            + [f"|residual| {float(r.mean()):.3f}" for r in residuals],
        )
        """
    ),
]


# ------------------------------------------------------------------------------- 03 DC-IGN training

TRAINING_DCIGN = [
    md(
        """
        # Training a DC-IGN with the clamped procedure

        The Deep Convolutional Inverse Graphics Network (seed 001) is a VAE whose code has
        named groups: azimuth (z1), elevation (z2), light (z3) and intrinsic properties (the
        rest). It learns that meaning from **one-factor-varies minibatches**: in each batch only
        one scene factor changes; the code units of every other group are **clamped** to their
        batch mean in the forward pass, so the decoder must explain the batch's variation with
        the active group alone, and in the backward pass their gradient is replaced by an
        **invariance target** that pulls them toward the batch mean.

        Here: the batches, the clamp, a short training run through `train_guide` (Pyro SVI with
        the procedure as a plug-in loss), its loss curve, and latent traversals.
        """
    ),
    code(
        f"""
        %matplotlib inline
        import os
        import tempfile
        from pathlib import Path

        {FAST_LINE}

        import matplotlib.pyplot as plt
        import torch

        import probgraphics as pg
        from probgraphics import training
        from probgraphics.data import one_factor_batches
        from probgraphics.evaluation import factor_correlations
        from probgraphics.nets import CheckpointError, clamp_inactive, load_checkpoint, pretrained
        from probgraphics.plots import image_grid

        pg.set_num_threads()
        STEPS, BATCH = (12, 20) if FAST else (800, 20)
        RANGE_SCENES = 40 if FAST else 400  # scenes that set the traversal ranges
        face = pg.programs.face(resolution=64)
        """
    ),
    md(
        """
        ## One-factor-varies batches

        `one_factor_batches(face, B, seed=...)` picks a factor per batch (azimuth : elevation :
        light : intrinsic = 1 : 1 : 1 : 10, as the paper) and draws the batch in one traced run
        of the program, the other latents shared by the whole batch. One row per factor:
        """
    ),
    code(
        """
        batches = one_factor_batches(face, 8, seed=0)
        rows = [batches.draw(factor, seed=2) for factor in batches.names]
        titles = []
        for batch in rows:
            if batch.factor in batch.latents:
                values = batch.latents[batch.factor].tolist()
                titles += [f"{batch.factor} {v:+.0f}°" for v in values]
            else:
                titles += [batch.factor] * 8
        image_grid(torch.cat([batch.images for batch in rows]), ncols=8, titles=titles)
        """
    ),
    md(
        """
        ## The clamp

        `clamp_inactive(code, active, invariance_scale)` on a toy batch of 4 codes with 3 units,
        unit 0 active: in the forward pass units 1 and 2 become their batch mean; in the
        backward pass unit 0 receives the incoming gradient (here all ones) and units 1 and 2
        receive `invariance_scale * (z - batch mean)` instead.
        """
    ),
    code(
        """
        code = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
        clamped = clamp_inactive(code, [0], invariance_scale=0.01)
        clamped.sum().backward()
        print("code:\\n", code.detach().numpy().round(3))
        print("clamped (forward):\\n", clamped.detach().numpy().round(3))
        print("gradient reaching the code:\\n", code.grad.numpy().round(4))
        """
    ),
    md(
        """
        ## Training through `train_guide`

        The recipe `training.dcign_face_64` wires the pieces:

        * the **model** is the `dcign` scene program of the network: its decoder is the
          renderer, trained too (`train_guide(..., modules={"decoder": net.decoder})`);
        * the **guide** is an `EncoderGuide` of the network's encoder, one Gaussian per code
          group;
        * the **batches** are `StepwiseFactorBatches(one_factor_batches(face, B, ...))`, a
          batch as a function of the step (a resumed run need not replay the earlier ones);
        * the **loss** is `DCIGNClampedLoss(net.layout, invariance_scale=0.01)`: SGVB on the
          clamped code, with the batch's `factor` passed to it by `train_guide`.

        It writes the network and a model card to the given path. The bundled network was
        trained the same way for thousands of steps (its model card,
        `pg.nets.model_card("dcign-face-64")`, records the command, steps and time); here we
        run a few hundred (a dozen with `PROBGRAPHICS_FAST=1`).
        """
    ),
    code(
        """
        workdir = Path(tempfile.mkdtemp(prefix="dcign-"))
        result = training.dcign_face_64(
            workdir / "dcign-small.pt", steps=STEPS, batch_size=BATCH, evaluate=False,
            progress=False,
        )
        trained, config, extra = load_checkpoint(workdir / "dcign-small.pt")
        print(f"{result.steps} steps in {result.wall_time:.1f} s")
        print("wrote", sorted(path.name for path in workdir.iterdir()))
        print(trained.layout)
        """
    ),
    code(
        """
        losses = torch.tensor(result.losses)
        window = max(1, len(losses) // 20)
        smooth = losses.unfold(0, window, 1).mean(1) if len(losses) >= window else losses
        fig, axis = plt.subplots(figsize=(6, 3))
        axis.plot(losses.numpy(), color="0.75", label="per step")
        axis.plot(range(window - 1, len(losses)), smooth.numpy(), label=f"mean of {window}")
        axis.set_xlabel("step")
        axis.set_ylabel("loss (nats per image)")
        axis.legend()
        fig.tight_layout()
        """
    ),
    md(
        """
        ## Latent traversals

        Encode a scene, then decode while sweeping one unit of the code, the others fixed. For a
        disentangled code, sweeping the azimuth unit turns the head and nothing else. Each unit
        is swept across the range the encoder uses for it (5% to 95% of its values over random
        scenes); a unit the encoder keeps in a narrow range has not learned its factor. We use
        the bundled `dcign-face-64` when it is installed; the network trained above, after so
        few steps, has not learned much yet.
        """
    ),
    code(
        """
        try:
            net = pretrained("dcign-face-64", kind="model")
            source = "the bundled dcign-face-64"
        except (KeyError, CheckpointError) as error:
            net = trained
            source = f"the {STEPS}-step network trained above (dcign-face-64: {error})"
        print("traversals of", source)

        scenes = pg.programs.simulate(face, n=RANGE_SCENES, seed=5)
        with torch.no_grad():
            means, _ = net.encode(scenes["render"])
            base, _ = net.encode(scenes["render"][:1])  # the code of the first scene
            rows, titles = [], []
            for group in ["azimuth", "elevation", "light"]:
                unit = net.layout[group][0]
                low, high = torch.quantile(means[:, unit], torch.tensor([0.05, 0.95]))
                values = torch.linspace(float(low), float(high), 7)
                codes = base.repeat(7, 1)
                codes[:, unit] = values
                rows.append(net.decode(codes))
                titles += [f"{group} z{unit + 1}={v:+.2f}" for v in values.tolist()]
        image_grid(torch.cat(rows), ncols=7, titles=titles)
        """
    ),
    md(
        """
        How well does each unit track its factor? `factor_correlations` correlates the unit with
        the true value over random scenes (seed 001's criterion is |r| near 1; the sign is
        arbitrary).
        """
    ),
    code(
        """
        with torch.no_grad():
            r = factor_correlations(net, face, n=RANGE_SCENES, seed=10_000, mode="random")
        print({name: round(value, 3) for name, value in r.items()})
        """
    ),
]


# ------------------------------------------------------------------------------- 04 voxel mu-VAE

VOXEL_MUVAE = [
    md(
        """
        # 3D shapes from 2D images: the mu-VAE

        Seed 004's mu-VAE learns a 3D voxel decoder **from images alone**: an image is encoded
        to a shape code, decoded to a 28³ occupancy grid, rotated about the vertical axis by an
        azimuth (a per-image latent, never given), projected as `1 - exp(-sum along rays)`, and
        compared with the image. Nothing 3D is supervised; the grid is what makes every view
        consistent.

        Here: the procedural shapes it trains on, their voxel grids and projections, a short
        training run, 3D reconstructions and novel views.
        """
    ),
    code(
        f"""
        %matplotlib inline
        import math
        import os
        import tempfile
        from pathlib import Path

        {FAST_LINE}

        import matplotlib.pyplot as plt
        import torch

        import probgraphics as pg
        from probgraphics import training
        from probgraphics.data import procedural_shapes
        from probgraphics.evaluation import evaluate_muvae
        from probgraphics.nets import CheckpointError, load_checkpoint, pretrained
        from probgraphics.plots import image_grid
        from probgraphics.render.voxel import project, rotate_about_vertical

        pg.set_num_threads()
        N_SHAPES, STEPS, BATCH = (64, 10, 16) if FAST else (2000, 600, 32)
        HELD_OUT = 16 if FAST else 200
        VIEWS = torch.linspace(-math.pi, math.pi, 9)[:-1]  # eight azimuths, 45 degrees apart


        def show_voxels(grids, titles):
            \"\"\"3D scatter plots of the occupied voxels (> 0.5) of grids (N, D, D, D) with
            axes (y top->bottom, z far->near, x left->right).\"\"\"
            fig = plt.figure(figsize=(2.2 * len(grids), 2.4))
            for i, (grid, title) in enumerate(zip(grids, titles)):
                axis = fig.add_subplot(1, len(grids), i + 1, projection="3d")
                y, z, x = (grid > 0.5).nonzero(as_tuple=True)  # row 0 is the top
                axis.scatter(x, z, -y, c=-y, s=4, marker="s", cmap="viridis")
                if len(x):  # zoom on the occupied voxels, equal scales on the three axes
                    points = torch.stack([x, z, -y]).float()
                    centre = (points.amin(1) + points.amax(1)) / 2
                    half = float((points.amax(1) - points.amin(1)).max()) / 2 + 1
                    axis.set(xlim=(centre[0] - half, centre[0] + half),
                             ylim=(centre[1] - half, centre[1] + half),
                             zlim=(centre[2] - half, centre[2] + half))
                axis.set_title(title, fontsize=8)
                axis.set_axis_off()
            fig.tight_layout()


        def orthographic(grids):
            \"\"\"Max projections of grids (N, D, D, D) seen from the front (along z), the side
            (along x) and the top (along y): (N, 3, D, D).\"\"\"
            return torch.stack([grids.amax(dim=2), grids.amax(dim=3), grids.amax(dim=1)], dim=1)
        """
    ),
    md(
        """
        ## Procedural shapes

        `procedural_shapes(n, seed=...)` composes chairs, tables, cups and lamps from
        primitives with random proportions and rasterizes them into 28³ grids (axes: y top to
        bottom, z far to near, x left to right), each with its projection at a random azimuth.
        """
    ),
    code(
        """
        shapes = procedural_shapes(N_SHAPES, seed=0)
        print(f"{len(shapes.grids)} shapes, grids {tuple(shapes.grids.shape[1:])}, "
              f"images {tuple(shapes.images.shape[1:])}, classes {shapes.classes}")
        examples = [int((shapes.labels == k).nonzero()[0]) for k in range(len(shapes.classes))]
        show_voxels(shapes.grids[examples], [shapes.classes[shapes.labels[i]] for i in examples])
        """
    ),
    md(
        """
        Seen from eight azimuths with `rotate_about_vertical` and `project` (the renderer the
        mu-VAE trains through):
        """
    ),
    code(
        """
        grids = shapes.grids[examples]  # (4, 28, 28, 28)
        every_view = grids[:, None].expand(-1, len(VIEWS), -1, -1, -1)  # (4, 8, 28, 28, 28)
        views = project(rotate_about_vertical(every_view, VIEWS))  # (4, 8, 1, 28, 28)
        image_grid(
            views.reshape(-1, 1, 28, 28),
            ncols=len(VIEWS),
            titles=[f"{math.degrees(a):+.0f}°" for a in VIEWS.tolist()] * len(examples),
            cell_inches=1.1,
        )
        """
    ),
    md(
        """
        ## Training from images alone

        The recipe `training.muvae_shapes` trains on the shapes' images only: the model is the
        `voxel` scene program of the network, the batches `ShuffledBatches` of the images, all
        through `train_guide`. The loss is `MuVAEObjective`: seed 004's mu-VAE objective at
        each image's azimuth, found by rendering the decoded grid at 12 angles and keeping the
        best, plus a discriminator term that asks renders at random new azimuths to look like
        training images. Without that term the grids come out as slabs that explain the one
        view they were fitted to (`docs/results.md`, section 7). A few hundred steps here (ten
        with `PROBGRAPHICS_FAST=1`): too few, since the discriminator wins for the first
        thousand or so. The bundled network's model card records how long it was trained.
        """
    ),
    code(
        """
        workdir = Path(tempfile.mkdtemp(prefix="muvae-"))
        result = training.muvae_shapes(
            workdir / "muvae-small.pt",
            steps=STEPS,
            batch_size=BATCH,
            n_shapes=N_SHAPES,
            evaluate=False,
            progress=False,
        )
        trained, config, extra = load_checkpoint(workdir / "muvae-small.pt")
        print(f"{result.steps} steps in {result.wall_time:.1f} s")

        fig, axis = plt.subplots(figsize=(6, 3))
        axis.plot(result.losses)
        axis.set_xlabel("step")
        axis.set_ylabel("mu-VAE loss")
        fig.tight_layout()
        """
    ),
    md(
        """
        ## 3D reconstructions

        Encode held-out images (shapes the network never saw), decode the shape code's mean
        into a grid. The network picks its own canonical frame (nothing told it where "front"
        is), so `evaluate_muvae` reports the voxel IoU both as is and after the one global
        rotation that best aligns its frame with the data's. With `azimuth_candidates=12` it
        also finds each image's azimuth by the training's search and scores it against the
        truth (after fitting one global offset and mirror). We use the bundled `muvae-shapes`
        when it is installed, else the network trained above.
        """
    ),
    code(
        """
        try:
            net = pretrained("muvae-shapes", kind="model")
            source = "the bundled muvae-shapes"
        except (KeyError, CheckpointError) as error:
            net = trained
            source = f"the {STEPS}-step network trained above (muvae-shapes: {error})"
        print("reconstructions by", source)

        held_out = procedural_shapes(HELD_OUT, seed=10_000)
        with torch.no_grad():
            mean, _ = net.encode(held_out.images)
            reconstructed = net.decode(mean)  # (HELD_OUT, 28, 28, 28), occupancy in (0, 1)
            evaluation = evaluate_muvae(net, held_out, azimuth_candidates=12)
        print({key: round(evaluation[key], 3)
               for key in ("iou", "iou_global_rotation", "global_rotation_deg")})
        print("IoU per class:", {k: round(v, 3) for k, v in evaluation["iou_per_class"].items()})
        print("azimuth error (deg), mean and median:",
              round(evaluation["azimuth"]["mean_abs_deg"], 1),
              round(evaluation["azimuth"]["median_abs_deg"], 1))
        """
    ),
    code(
        """
        picks = [int((held_out.labels == k).nonzero()[0]) for k in range(len(held_out.classes))
                 if bool((held_out.labels == k).any())]
        image_grid(held_out.images[picks], ncols=len(picks), titles=["input image"] * len(picks))
        """
    ),
    code(
        """
        names = [held_out.classes[held_out.labels[i]] for i in picks]
        show_voxels(held_out.grids[picks], [f"true {name}" for name in names])
        show_voxels(reconstructed[picks], ["reconstruction"] * len(picks))
        # Front, side and top max projections: the truth (left three), the reconstruction (right).
        pairs = torch.cat(
            [orthographic(held_out.grids[picks]), orthographic(reconstructed[picks])], dim=1
        )
        image_grid(pairs.reshape(-1, 1, 28, 28), ncols=6, cell_inches=1.1,
                   titles=["true front", "true side", "true top",
                           "recon. front", "recon. side", "recon. top"] * len(picks))
        """
    ),
    md(
        """
        ## Novel views

        A reconstruction is a full 3D grid, so it can be rendered from any azimuth: rotate with
        `rotate_about_vertical`, then `project`. Top row of each pair: the true shape; bottom
        row: the reconstruction, from the same eight azimuths (in the network's own frame, which
        may be turned by the global rotation above).
        """
    ),
    code(
        """
        rows = []
        for i in picks[:2]:
            for grid in (held_out.grids[i], reconstructed[i]):
                turned = rotate_about_vertical(grid.expand(len(VIEWS), -1, -1, -1), VIEWS)
                rows.append(project(turned))
        image_grid(torch.cat(rows), ncols=len(VIEWS), cell_inches=1.1,
                   titles=([f"true {math.degrees(a):+.0f}°" for a in VIEWS.tolist()]
                           + [f"recon. {math.degrees(a):+.0f}°" for a in VIEWS.tolist()]) * 2)
        """
    ),
]


# ------------------------------------------------------------------------------- 05 a real photo

REAL_PHOTO = [
    md(
        """
        # A real photograph

        The face program was built for synthetic scenes. What happens on a photograph? This
        notebook takes the face photo that ships with matplotlib (Grace Hopper; the same image
        `probgraphics infer sample-photo` uses), crops and resizes it exactly as the command
        line does, and infers pose and light with the amortized guide and with ABC-MCMC started
        from it.
        """
    ),
    code(
        f"""
        %matplotlib inline
        import os

        {FAST_LINE}

        import arviz as az
        import matplotlib.pyplot as plt
        import torch
        from matplotlib.patches import Rectangle

        import probgraphics as pg
        from probgraphics.imageio import (
            SAMPLE_PHOTO_FACE_BOX,
            load_image,
            read_image_array,
            sample_face_photo,
        )
        from probgraphics.nets.guides import load_guide
        from probgraphics.plots import image_grid

        pg.set_num_threads()
        CHAINS, WARMUP, DRAWS = (16, 30, 40) if FAST else (64, 400, 500)
        PILOT = 200 if FAST else None
        GUIDE_DRAWS = 100 if FAST else 1000
        ANGLES = ["azimuth", "elevation", "light"]
        program = pg.programs.face(resolution=64)
        """
    ),
    md(
        """
        ## The photo as an observation

        `load_image` converts to the program's channels (grayscale by BT.601 luma), crops the
        box `SAMPLE_PHOTO_FACE_BOX` around the head (chosen so the head fills the square about as
        the program's renders do), and resizes to 64 px with antialiasing; its report says
        what it did.
        """
    ),
    code(
        """
        path = sample_face_photo()
        loaded = load_image(path, resolution=program.resolution, channels=program.channels,
                            face_box=SAMPLE_PHOTO_FACE_BOX)
        print(loaded.describe())
        photo, _ = read_image_array(path)
        top, left, height, width = loaded.report["crop_box"]
        fig, (left_axis, right_axis) = plt.subplots(1, 2, figsize=(6, 3.2))
        left_axis.imshow(photo)
        left_axis.add_patch(Rectangle((left, top), width, height, fill=False, color="red"))
        left_axis.set_title("photo and crop box")
        right_axis.imshow(loaded.image[0], cmap="gray", vmin=0, vmax=1)
        right_axis.set_title("observation (64 px)")
        for axis in (left_axis, right_axis):
            axis.set_axis_off()
        fig.tight_layout()
        image = loaded.image
        """
    ),
    md(
        """
        ## The guide's answer

        The bundled guide `face-guide-64` maps the image to `q(z | image)` in one forward pass.
        It was trained on synthetic scenes only: a photo is outside its training distribution,
        so treat its spread as optimistic.
        """
    ),
    code(
        """
        guide = load_guide("face-guide-64", program)
        coarse = pg.infer(
            program, image, method="guide", guide=guide, chains=4, draws=GUIDE_DRAWS, seed=0
        )
        print(coarse.summary(var_names=ANGLES)[["mean", "sd", "hdi_3%", "hdi_97%"]].to_string())
        """
    ),
    md(
        """
        ## ABC-MCMC from the guide

        `init="guide"` starts every chain at a draw of the guide, and ABC refines it against
        the photo with the pixel summary (the distance between the rendered and the observed
        pixels). No setting of the program's latents reproduces the photo, so the chains settle
        on the scenes that are least wrong.
        """
    ),
    code(
        """
        posterior = pg.infer(
            program,
            image,
            method="abc_mcmc",
            summary="pixel",
            init="guide",
            guide=guide,
            chains=CHAINS,
            warmup=WARMUP,
            draws=DRAWS,
            pilot_size=PILOT,
            seed=0,
            progress=False,
        )
        idata = posterior.to_arviz()
        print(posterior)
        print(az.summary(idata, var_names=ANGLES).to_string())
        acceptance = float(posterior.sample_stats["accepted"].float().mean())
        print(f"acceptance rate {acceptance:.2f}")
        """
    ),
    md(
        """
        ## Pose and light posteriors
        """
    ),
    code(
        """
        fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
        bins = torch.linspace(-90, 90, 37).numpy()
        for axis, name in zip(axes, ANGLES):
            axis.hist(coarse[name].reshape(-1).numpy(), bins=bins, density=True, alpha=0.5,
                      label="guide q(z | image)")
            axis.hist(posterior[name].reshape(-1).numpy(), bins=bins, density=True, alpha=0.6,
                      label="ABC-MCMC from the guide")
            axis.set_title(f"{name} (degrees)")
            axis.set_yticks([])
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        """
    ),
    md(
        """
        ## Posterior renders beside the photo

        Top: the observation, three draws of the guide, and the last draws of four ABC chains.
        Bottom: the absolute difference of each render to the observation.
        """
    ),
    code(
        """
        with torch.no_grad():
            guide_draws = {name: coarse[name][0, :3] for name in program.latent_sites}
            guide_renders = program.render(**guide_draws)
            last = {name: posterior[name][:4, -1] for name in program.latent_sites}
            abc_renders = program.render(**last)
        renders = torch.cat([guide_renders, abc_renders])
        residuals = (renders - image).abs()
        image_grid(
            torch.cat([image[None], renders, image[None], residuals]),
            ncols=len(renders) + 1,
            titles=["observed"] + ["guide"] * len(guide_renders) + ["ABC"] * len(abc_renders)
            + ["observed"] + [f"|residual| {float(r.mean()):.3f}" for r in residuals],
        )
        """
    ),
    md(
        """
        ## What the synthetic 3DMM can and cannot explain

        Be honest about what this posterior means:

        * **It explains a head, not a photo.** The program renders a lone face mask on a black
          background. The photo's background, hair, cap, uniform and the shoulders are not in
          the model, so no latent setting reproduces them: the residual maps above stay bright
          over most of the crop, whichever scene is drawn.
        * **No real texture, no glasses, no expression.** The synthetic morphable model has
          smooth albedo modes and smooth localized shape modes; it cannot draw spectacles, skin
          detail or a photograph's lighting (one directional light plus ambient, Lambertian).
        * **Shape and texture are not identified.** Even on synthetic scenes the guide recovers
          shape and texture coefficients no better than the prior (mean R² about 0 in the
          `face-guide-64` model card); on a photo they only soak up whatever reduces the pixel
          distance.
        * **Check the answers against the photo.** The head faces the camera almost square-on,
          eyes level. Where the posteriors above put their mass elsewhere, that is the model's
          misfit, not knowledge about the head: at the real sizes we saw the guide centred
          near -30° azimuth and +50° elevation (looking up: wrong), and ABC spread back over
          most of the prior (azimuth 12 ± 64°, R-hat above 2): no setting of the synthetic
          head explains the crop's pixels much better than another.
        * **At best: the head's pose and the light's direction.** Read the azimuth, elevation
          and light posteriors as "the synthetic head that best matches this crop would be
          turned and lit like this". That is sensitive to the crop box and the camera latents,
          and the posterior's spread describes the model's fit, not the real head's pose
          uncertainty.

        A real face model (a Basel Face Model file, `MorphableModel.from_bfm`) and a background
        model would be needed to say more.
        """
    ),
]


NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_abc_faces.ipynb": ABC_FACES,
    "03_training_dcign.ipynb": TRAINING_DCIGN,
    "04_voxel_muvae.ipynb": VOXEL_MUVAE,
    "05_real_photo.ipynb": REAL_PHOTO,
}


def build(cells: list[nbformat.NotebookNode]) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for index, cell in enumerate(notebook.cells):
        cell["id"] = f"cell-{index:02d}"  # stable ids: rebuilding changes nothing
    nbformat.validate(notebook)
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    args = parser.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        text = nbformat.writes(build(cells)) + "\n"
        path = HERE / name
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"out of date with notebooks/_build.py: {stale}; run python notebooks/_build.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
