"""Seed 000 figure 9 (d-f): invariance of the DC-IGN identity code to pose and light.

Seed 000 section 4.3: for each of 100 faces, images in which one of azimuth, elevation or light
sweeps its range while everything else stays put; the cosine distance between the identity code
``z_identity = z[4, n]`` (the ``intrinsic`` group) of each image and that of the face's frontal
image (azimuth = elevation = light = 0), averaged over faces, against the angle. The paper
compares three networks and finds that the one trained "with shape bias" is the most invariant,
and that invariance targeting beats training without it (figure 9 caption).

The networks, each trained here by the library (``--nets`` picks them, ``--weights NAME=PATH``
loads one instead of training it):

* ``shape-bias``: the clamped one-factor-varies procedure (seed 000 sec. 3.2) with intrinsic
  batches favoured, azimuth : elevation : light : intrinsic = 1:1:1:10 (seed 001's ratio); the
  "shape bias" is the probability of an intrinsic batch. Clamped units get zero gradient
  (``invariance_scale=0``): sec. 3.2's procedure, before sec. 3.2.1 adds invariance targeting.
* ``no-shape-bias``: the same procedure with no bias towards intrinsic batches, ratio 1:1:1:1.
* ``invariance-targeting``: ``no-shape-bias`` plus invariance targeting (sec. 3.2.1): the clamped
  units' gradient is ``1/100 * (z - batch mean)``. That is the paper's third network "without
  shape bias but with targeted invariance".
* ``plain-vae``: SGVB on random scenes (every factor varies in every batch), no clamping: every
  code group is active (``DCIGNClampedLoss(factor_groups={"scene": all groups})``). Not one of
  the paper's three; the baseline of a VAE that was never told which units are identity.

The clamped networks are trained with ``probgraphics.training.dcign_face_64`` (its ``ratio`` and
``invariance_scale``; the bundled ``dcign-face-64`` is that recipe with ratio 1:1:1:10 and
invariance scale 0.01, and can be added with ``--weights bundled=PATH``); all share the seed,
batch size, optimizer (Adam, lr 5e-4) and steps. Training runs on the CPU; ``--device`` moves the
networks for the measurement only.

Measurement: ``faces`` held-out identities (shape, texture and camera framing drawn from the
prior with seed ``HELD_OUT_SEED + seed``, never used by the training, whose batch seeds are
62-bit draws from its own seed); for each factor, the angle sweeps ``-90..90`` degrees (the
program's whole prior range) in steps of ``angle_step`` with the other two angles at 0; noise-free
renders; the encoder's posterior mean. The band in the figure is the 95% interval of the mean
over faces (1.96 standard errors).

    python benchmarks/experiments/seed000_invariance.py --size quick
    python benchmarks/experiments/seed000_invariance.py --weights shape-bias=sb.pt --nets shape-bias
    python benchmarks/experiments/seed000_invariance.py --size full --keep-weights nets/

Sizes: ``tiny`` (a 32 px toy net, 5 training steps a network, 2 faces, 7 angles: exercises the
code, numbers mean nothing; seconds), ``quick`` (64 px ``DCIGN_FACE_64`` networks, 200 steps
each, 20 faces, 15 degree steps: about 5 minutes on one loaded core, nearly all of it training),
``full`` (the recipe's 8000 steps each, 100 faces as the paper, 3 degree steps as the paper's
0.05 rad; about 3 hours on one loaded core, 4 networks at about 0.3 s a step; train once with
``--keep-weights DIR`` and re-measure with ``--weights``).

Clamped units are set to their batch mean (seed 001; ``dcign_face_64`` has no ``clamp_to``
option), where seed 000 sec. 3.2 holds them at the first example's value.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch  # noqa: E402

# This folder (_shared.py) and benchmarks/ (_common.py): the scripts are run as files.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import _shared  # noqa: E402
from _common import format_table  # noqa: E402

from probgraphics.config import set_num_threads  # noqa: E402
from probgraphics.nets import DCIGN, DCIGNConfig, EncoderSummary, save_checkpoint  # noqa: E402

NAME = "seed000_invariance"
#: Held-out faces are drawn with seed HELD_OUT_SEED + --seed.
HELD_OUT_SEED = 3_000_000
FACTORS = ("azimuth", "elevation", "light")
#: The |angle|s (degrees) of the table.
TABLE_ANGLES = (15, 45, 90)


@dataclasses.dataclass(frozen=True)
class Variant:
    """How one of the compared networks is trained.

    Attributes:
        label: the name in the table and figure.
        clamped: the clamped one-factor-varies procedure (``training.dcign_face_64``); ``False``
            is the plain VAE on random scenes.
        ratio: azimuth : elevation : light : intrinsic batch ratio (clamped only).
        invariance_scale: the invariance-targeting factor (0: clamped units get no gradient).
    """

    label: str
    clamped: bool
    ratio: tuple[float, ...] = (1, 1, 1, 1)
    invariance_scale: float = 0.0


VARIANTS: dict[str, Variant] = {
    "shape-bias": Variant("with shape bias (1:1:1:10)", True, (1, 1, 1, 10), 0.0),
    "no-shape-bias": Variant("without shape bias (1:1:1:1)", True, (1, 1, 1, 1), 0.0),
    "invariance-targeting": Variant(
        "without shape bias, invariance targeting", True, (1, 1, 1, 1), 0.01
    ),
    "plain-vae": Variant("plain VAE (no clamping)", False),
}
#: Seed 000's finding, most invariant first (figure 9 caption).
PAPER_ORDER = ("shape-bias", "invariance-targeting", "no-shape-bias")


def _sizes() -> dict[str, dict[str, Any]]:
    from probgraphics.training import DCIGN_FACE_64

    return {
        "tiny": {
            "config": _shared.TINY_DCIGN,
            "steps": 5,
            "batch_size": 4,
            "faces": 2,
            "angles": (-90.0, -45.0, -15.0, 0.0, 15.0, 45.0, 90.0),
        },
        "quick": {
            "config": DCIGN_FACE_64,
            "steps": 200,
            "batch_size": 20,
            "faces": 20,
            "angle_step": 15.0,
        },
        "full": {
            "config": DCIGN_FACE_64,
            "steps": 8000,
            "batch_size": 20,
            "faces": 100,
            "angle_step": 3.0,
        },
    }


# --------------------------------------------------------------------------------------------
# Training the compared networks
# --------------------------------------------------------------------------------------------


def train_plain_vae(
    out_path: Path,
    *,
    steps: int,
    seed: int,
    batch_size: int,
    config: DCIGNConfig,
    lr: float = 5e-4,
) -> DCIGN:
    """A DC-IGN trained as a plain VAE: SGVB on random face scenes, every code group active.

    Built from the clamped procedure's own pieces with one batch factor, ``"scene"``, that varies
    every latent of the face program (so a batch is ``batch_size`` independent scenes) and drives
    every code group (so nothing is clamped). Initialization, model, guide, noise, optimizer and
    learning rate are ``dcign_face_64``'s. Writes the checkpoint (kind ``"dcign"``) to
    ``out_path`` and returns the network in eval mode.
    """
    from probgraphics.data import one_factor_batches
    from probgraphics.inference.svi import train_guide
    from probgraphics.nets import EncoderGuide
    from probgraphics.programs.dcign import dcign
    from probgraphics.programs.face import FaceProgram, face
    from probgraphics.training import (
        DCIGN_TRAINING_NOISE,
        DCIGNClampedLoss,
        StepwiseFactorBatches,
        initialize_dcign,
    )

    program = face(resolution=config.image_size)
    every_latent = {"scene": FaceProgram.latent_sites}
    batches = one_factor_batches(program, batch_size, seed=seed, ratio=(1,), factors=every_latent)
    # The mean intensity of a few batches sets the initial output bias, as the recipe does.
    mean_pixel = float(torch.cat([batches.draw("scene", seed + k).images for k in range(4)]).mean())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = initialize_dcign(DCIGN(config), min(max(mean_pixel, 0.01), 0.99))
    net.train()
    model = dcign(net, noise=DCIGN_TRAINING_NOISE)
    loss = DCIGNClampedLoss(net.layout, factor_groups={"scene": net.layout.names})
    train_guide(
        model,
        EncoderGuide(net, model),
        StepwiseFactorBatches(batches, seed=seed),
        steps=steps,
        loss=loss,
        optimizer="adam",
        lr=lr,
        modules={"decoder": net.decoder},
        progress=False,
        seed=seed,
    )
    net.eval()
    save_checkpoint(
        out_path,
        net,
        net.config,
        kind="dcign",
        extra={"recipe": "plain-vae (seed000_invariance.py)", "steps": steps, "seed": seed},
    )
    return net


def train_variant(
    key: str,
    out_path: Path,
    *,
    steps: int,
    seed: int,
    batch_size: int,
    config: DCIGNConfig,
    command: str,
) -> DCIGN:
    """Train the network of ``VARIANTS[key]``; its checkpoint goes to ``out_path``."""
    from probgraphics.training import dcign_face_64

    variant = VARIANTS[key]
    if not variant.clamped:
        return train_plain_vae(
            out_path, steps=steps, seed=seed, batch_size=batch_size, config=config
        )
    dcign_face_64(
        out_path,
        steps=steps,
        seed=seed,
        batch_size=batch_size,
        progress=False,
        ratio=variant.ratio,
        invariance_scale=variant.invariance_scale,
        config=config,
        evaluate=False,
        command=command,
    )
    return _shared.load_dcign(out_path, NAME)[0]


# --------------------------------------------------------------------------------------------
# The measurement
# --------------------------------------------------------------------------------------------


def angle_grid(step: float) -> tuple[float, ...]:
    """``-90..90`` degrees in steps of ``step`` (which must divide 90 into whole steps)."""
    count = 90.0 / step
    if not step > 0 or abs(count - round(count)) > 1e-9:
        raise SystemExit(f"--angle-step must divide 90 into whole steps, got {step}.")
    half = round(count)
    return tuple(step * k for k in range(-half, half + 1))


def sweep_renders(
    program, faces: int, angles: Sequence[float], *, seed: int
) -> dict[str, torch.Tensor]:
    """Noise-free renders of ``faces`` identities as each factor sweeps ``angles``.

    Shape, texture and camera of each face are one draw from the prior (``seed``); for each
    factor the other two angles are 0. Returns factor -> ``(faces, len(angles), C, H, W)``.
    """
    from probgraphics.programs.simulate import simulate

    identities = simulate(program, faces, seed=seed)
    count = len(angles)
    sweep = torch.tensor(angles, dtype=torch.float32).repeat(faces)
    zeros = torch.zeros(faces * count)
    renders = {}
    for factor in FACTORS:
        conditions = {
            name: identities[name].repeat_interleave(count, dim=0)
            for name in ("shape", "texture", "camera")
        }
        conditions.update({other: zeros for other in FACTORS})
        conditions[factor] = sweep
        scenes = simulate(program, faces * count, seed=seed + 1, conditions=conditions)
        renders[factor] = scenes["render"].reshape(faces, count, *scenes["render"].shape[1:])
    return renders


def cosine_distance_to_reference(codes: torch.Tensor, reference: int) -> torch.Tensor:
    """``1 - cos(codes[f, a], codes[f, reference])`` for codes ``(faces, angles, K)``; returns
    ``(faces, angles)`` float64 (0 at ``reference``; 1 for a zero vector)."""
    if codes.dim() != 3:
        raise ValueError(f"codes must be (faces, angles, K), got {tuple(codes.shape)}.")
    codes = codes.double()
    frontal = codes[:, reference : reference + 1].expand_as(codes)
    similarity = torch.nn.functional.cosine_similarity(codes, frontal, dim=-1, eps=1e-12)
    # Rounding can put the similarity of two parallel codes a few ulps above 1 (a distance of
    # -5.6e-17 failed the [0, 2] check on a fresh install); clamp to cosine's range.
    return 1.0 - similarity.clamp(-1.0, 1.0)


def invariance_distances(
    summary: EncoderSummary,
    renders: dict[str, torch.Tensor],
    angles: Sequence[float],
    device: str,
) -> tuple[dict[str, torch.Tensor], float]:
    """factor -> ``(faces, angles)`` cosine distance of the identity code to the same face's
    frontal code; and the mean cosine distance between the frontal codes of *different* faces
    (what a change of identity costs, the scale the invariance distances are small against;
    ``nan`` for one face)."""
    frontal = list(angles).index(0.0)
    out = {}
    for factor, images in renders.items():
        faces, count = images.shape[:2]
        codes = summary(images.reshape(faces * count, *images.shape[2:]).to(device)).cpu()
        codes = codes.reshape(faces, count, -1)
        out[factor] = cosine_distance_to_reference(codes, frontal)
    return out, between_face_distance(codes[:, frontal])


def between_face_distance(codes: torch.Tensor) -> float:
    """Mean of ``1 - cos(codes[i], codes[j])`` over ordered pairs ``i != j`` of codes ``(n, K)``
    (``nan`` when ``n < 2``)."""
    n = codes.shape[0]
    if n < 2:
        return float("nan")
    unit = torch.nn.functional.normalize(codes.double(), dim=-1, eps=1e-12)
    similarity = unit @ unit.T
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    return float((1.0 - similarity[off_diagonal]).mean())


def summarize(distances: torch.Tensor, angles: Sequence[float]) -> dict[str, Any]:
    """Mean, standard deviation and standard error over faces at each angle, and the table's
    values at ``|angle|`` (``-a`` and ``+a`` pooled)."""
    faces = distances.shape[0]
    mean = distances.mean(0)
    sd = distances.std(0, unbiased=True) if faces > 1 else torch.zeros_like(mean)
    at = {}
    for magnitude in TABLE_ANGLES:
        columns = [i for i, a in enumerate(angles) if abs(abs(a) - magnitude) < 1e-9]
        if not columns:
            continue
        pooled = distances[:, columns].reshape(-1)
        spread = pooled.std(unbiased=True) if pooled.numel() > 1 else torch.tensor(0.0)
        at[str(magnitude)] = {
            "mean": float(pooled.mean()),
            "sem": float(spread / math.sqrt(pooled.numel())),
        }
    return {
        "mean": mean.tolist(),
        "sd": sd.tolist(),
        "sem": (sd / math.sqrt(faces)).tolist(),
        "mean_over_angles": float(mean.mean()),
        "at_abs_angle": at,
        "per_face": [[round(v, 6) for v in row] for row in distances.tolist()],
    }


def figure(results: dict[str, dict[str, Any]], labels: dict[str, str], angles, title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.8))
    axes = fig.subplots(1, len(FACTORS), sharey=True)
    x = torch.tensor(angles)
    for panel, (ax, factor) in enumerate(zip(axes, FACTORS, strict=True)):
        for key, per_factor in results.items():
            stats = per_factor[factor]
            mean = torch.tensor(stats["mean"])
            half = 1.96 * torch.tensor(stats["sem"])
            (line,) = ax.plot(x, mean, marker=".", label=labels[key])
            ax.fill_between(x, mean - half, mean + half, alpha=0.2, color=line.get_color())
            if per_factor["between_faces"] is not None:
                ax.axhline(per_factor["between_faces"], color=line.get_color(), linestyle=":", lw=1)
        ax.set_title(f"({'def'[panel]}) {factor} varies")
        ax.set_xlabel(f"{factor} (degrees)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cosine distance of identity code to frontal")
    axes[-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _ranking(results: dict[str, dict[str, Any]], factor: str, measure: str) -> list[str]:
    """The networks sorted by ``measure`` of ``factor``'s sweep, most invariant first (a
    missing value last)."""

    def value(key: str) -> float:
        number = results[key][factor][measure]
        return math.inf if number is None else number

    return sorted(results, key=value)


def markdown_report(
    command: str, rows: list[dict], orders: list[dict], settings: dict, nets: dict
) -> str:
    angle_columns = [f"±{magnitude}°" for magnitude in TABLE_ANGLES]
    group = _shared.IDENTITY_GROUP
    lines = [
        "# Seed 000 figure 9 (d-f): invariance of the identity code",
        "",
        f"`{command}`",
        "",
        f"Cosine distance between the identity code (`{group}` units, encoder posterior "
        "mean) of each image and that of the same face's frontal image (azimuth = elevation = "
        f"light = 0), mean ± standard error over {settings['faces']} held-out faces (+a and -a "
        "pooled). Lower is more invariant. The paper gives figure 9 (d-f) as plots only (no "
        "numbers in the text); its finding is the ordering below. `other faces (frontal)`: the "
        "mean distance between the frontal codes of different faces, the scale a change of "
        "identity gives (a code that ignores the image is perfectly invariant; invariance "
        "means something only when the sweep's distances are small against this); "
        "`sweep ÷ other faces`: the mean over the sweep divided by it.",
        "",
        format_table(
            rows,
            [
                "network",
                "factor",
                *angle_columns,
                "mean over sweep",
                "other faces (frontal)",
                "sweep ÷ other faces",
            ],
        ),
        "",
        "Most invariant first, by the mean distance over the sweep (the paper's measure) and by "
        "that divided by the distance between faces:",
        "",
        format_table(orders, list(orders[0])),
        "",
        "Networks:",
        "",
    ]
    for key, info in nets.items():
        lines.append(f"* `{key}`: {info['label']}; {info['source']}")
    lines.append("")
    return "\n".join(lines)


def _format_value(stats: dict[str, float] | None) -> str:
    if stats is None:
        return "n/a"
    return f"{stats['mean']:.4f} ± {stats['sem']:.4f}"


def parse_weights(values: Sequence[str]) -> dict[str, Path]:
    weights: dict[str, Path] = {}
    for value in values:
        name, separator, path = value.partition("=")
        if not separator or not name or not path:
            raise SystemExit(f"--weights takes NAME=PATH, got {value!r}.")
        weights[name] = Path(path)
    return weights


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Networks: " + "; ".join(f"{k}: {v.label}" for k, v in VARIANTS.items()),
    )
    _shared.add_common_arguments(parser)
    parser.add_argument(
        "--nets",
        nargs="+",
        choices=tuple(VARIANTS),
        default=list(VARIANTS),
        help="the networks to compare (default: all four)",
    )
    parser.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a DC-IGN checkpoint for network NAME instead of training it; a NAME that is not "
        "one of --nets adds that network (e.g. bundled=dcign-face-64.pt). Repeatable.",
    )
    parser.add_argument("--steps", type=int, default=None, help="training steps per network")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size")
    parser.add_argument("--faces", type=int, default=None, help="held-out faces")
    parser.add_argument("--angle-step", type=float, default=None, help="sweep step in degrees")
    parser.add_argument(
        "--keep-weights",
        type=Path,
        default=None,
        help="keep the trained networks' checkpoints (and model cards) in this folder",
    )
    args = parser.parse_args(argv)
    size = _sizes()[args.size]
    problems = _shared.fill_from_preset(args, size, {"steps": 1, "batch_size": 2, "faces": 1})
    if problems:
        parser.error("; ".join(problems))
    steps, batch_size, faces = args.steps, args.batch_size, args.faces
    if args.angle_step is not None:
        angles = angle_grid(args.angle_step)
    else:
        angles = size.get("angles") or angle_grid(size["angle_step"])
    threads = set_num_threads(args.threads)
    weights = parse_weights(args.weights)
    command = _shared.command_line(NAME, argv)

    from probgraphics.programs.face import face

    keep = args.keep_weights
    scratch = tempfile.TemporaryDirectory(prefix="seed000-invariance-")
    folder = Path(keep) if keep is not None else Path(scratch.name)
    folder.mkdir(parents=True, exist_ok=True)
    networks: dict[str, DCIGN] = {}
    nets_info: dict[str, dict[str, Any]] = {}
    try:
        for key in dict.fromkeys([*args.nets, *weights]):
            variant = VARIANTS.get(key)
            label = variant.label if variant is not None else key
            if key in weights:
                networks[key] = _shared.load_dcign(weights[key], NAME)[0]
                nets_info[key] = {"label": label, "source": f"loaded from {weights[key]}"}
                continue
            out_path = folder / f"{key}.pt"
            print(f"training {key} ({label}): {steps} steps, batch {batch_size}", flush=True)
            start = time.perf_counter()
            networks[key] = train_variant(
                key,
                out_path,
                steps=steps,
                seed=args.seed,
                batch_size=batch_size,
                config=size["config"],
                command=command,
            )
            seconds = time.perf_counter() - start
            nets_info[key] = {
                "label": label,
                "source": f"trained here, {steps} steps, batch {batch_size}, seed {args.seed}, "
                f"ratio {list(variant.ratio) if variant.clamped else 'n/a (random scenes)'}, "
                f"invariance scale {variant.invariance_scale}, {seconds:.0f} s"
                + (f", kept at {out_path}" if keep is not None else ""),
                "steps": steps,
                "batch_size": batch_size,
                "ratio": list(variant.ratio) if variant.clamped else None,
                "clamped": variant.clamped,
                "invariance_scale": variant.invariance_scale,
                "training_seconds": seconds,
            }
            print(f"  {seconds:.1f} s", flush=True)
    finally:
        scratch.cleanup()

    renders_by_resolution: dict[int, dict[str, torch.Tensor]] = {}
    results: dict[str, dict[str, Any]] = {}
    for key, net in networks.items():
        resolution = net.config.image_size
        if resolution not in renders_by_resolution:
            renders_by_resolution[resolution] = sweep_renders(
                face(resolution=resolution), faces, angles, seed=HELD_OUT_SEED + args.seed
            )
        summary = _shared.identity_summary_of(net, args.device, NAME)
        distances, between = invariance_distances(
            summary, renders_by_resolution[resolution], angles, args.device
        )
        results[key] = {factor: summarize(d, angles) for factor, d in distances.items()}
        between = between if math.isfinite(between) and between > 0 else None
        results[key]["between_faces"] = between
        for factor in FACTORS:
            stats = results[key][factor]
            stats["relative_to_other_faces"] = (
                None if between is None else stats["mean_over_angles"] / between
            )

    rows = []
    for key, per_factor in results.items():
        for factor in FACTORS:
            stats = per_factor[factor]
            row = {"network": key, "factor": factor}
            for magnitude in TABLE_ANGLES:
                row[f"±{magnitude}°"] = _format_value(stats["at_abs_angle"].get(str(magnitude)))
            row["mean over sweep"] = f"{stats['mean_over_angles']:.4f}"
            between = per_factor["between_faces"]
            row["other faces (frontal)"] = "n/a" if between is None else f"{between:.4f}"
            relative = stats["relative_to_other_faces"]
            row["sweep ÷ other faces"] = "n/a" if relative is None else f"{relative:.3f}"
            rows.append(row)
    orders = []
    compared = [key for key in PAPER_ORDER if key in results]
    for factor in FACTORS:
        order = {"factor": factor}
        for measure, column in (
            ("mean_over_angles", "ours"),
            ("relative_to_other_faces", "ours, ÷ other faces"),
        ):
            ranking = _ranking(results, factor, measure)
            ours = [key for key in ranking if key in compared]
            order[column] = " < ".join(ranking)
            order[f"{column}: agrees"] = (
                ("yes" if ours == list(PAPER_ORDER) else "no")
                if len(compared) == len(PAPER_ORDER)
                else "n/a"
            )
        order["paper"] = " < ".join(PAPER_ORDER)
        orders.append(order)
    settings = {
        "size": args.size,
        "seed": args.seed,
        "faces": faces,
        "angles_deg": list(angles),
        "held_out_seed": HELD_OUT_SEED + args.seed,
        "threads": threads,
        "device": args.device,
        "training_steps": steps,
        "batch_size": batch_size,
    }
    markdown = markdown_report(command, rows, orders, settings, nets_info)
    print(markdown)
    title = (
        f"Identity-code invariance, {faces} faces; band: 95% interval of the mean; dotted: mean "
        f"distance between different faces' frontal codes ({args.size}; {steps} training steps "
        "a network)"
    )
    fig = figure(results, {key: info["label"] for key, info in nets_info.items()}, angles, title)
    payload = {
        "experiment": NAME,
        "paper": "seed 000 section 4.3, figure 9 (d-f)",
        "command": command,
        "settings": settings,
        "networks": nets_info,
        "results": results,
        "table": rows,
        "ordering": orders,
        "paper_ordering": list(PAPER_ORDER),
    }
    _shared.write_outputs(args.out_dir, NAME, markdown=markdown, figure=fig, payload=payload)
    return payload


if __name__ == "__main__":
    main()
