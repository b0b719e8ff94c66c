"""Seed 000 section 4.2: same / different face verification with the DC-IGN identity code.

The paper follows Yildirim et al.: 96 pairs of face images that vary in pose, lighting, shape
and texture; for each pair, is it the same face? Each image's representation is standardized
(mean 0, standard deviation 1), the two representations' Pearson correlation is the pair's score,
and a pair is called "same" when its correlation is at or above a threshold; "we searched for a
threshold correlation in [-1, 1] such that [the] model's performance will be highest with
respect to ground truth ... We report results based upon the threshold that gives the highest
performance for each baseline model separately" (seed 000 sec. 4.2). That is, the threshold is
chosen on the test pairs themselves.

Here the pairs come from the face program: 48 "same" pairs share shape and texture (the identity)
and 48 "different" pairs do not; in every image azimuth, elevation and light are independent
draws from the prior (so pose and light never tell a pair apart), and every face is framed alike,
centred at the middle scale (``--camera fixed``; Yildirim et al.'s stimuli vary pose, lighting,
shape and texture only; ``--camera random`` redraws the framing for every image, which the
DC-IGN's intrinsic units also encode, since its "intrinsic" batches vary the camera). Noise-free
renders at the network's resolution, drawn with seeds the training never used. Representations:

* ``DC-IGN identity code``: the encoder's posterior mean over its ``intrinsic`` units (seed 000's
  ``z_identity = z[4, n]``), from ``--weights PATH`` or the bundled ``dcign-face-64``;
* ``DC-IGN whole code``: all code units (pose and light included), for comparison;
* ``raw pixels``: the image's pixels.

Columns: the paper's protocol (best threshold on the 96 pairs: optimistic, since the threshold
is fitted to the very pairs it is scored on), leave-one-out (each pair judged with the best
threshold of the other 95: an honest estimate), and, with ``--sets`` > 1, the mean and standard
deviation over independent 96-pair test sets (one set's accuracy has a standard error of about 5
points). ``labels shuffled``: the paper's protocol on the same correlations with the same/different
labels permuted (the accuracy a score unrelated to identity gets by the in-sample threshold
alone; it depends only on ranks, so it is one row for all representations).

The paper: humans 78% (text); the DC-IGN (unsupervised) and the supervised CNN baselines are
shown in its figure 7, whose values are not in the text ("DC-IGN performs competitively with
other baseline models"), so no number of theirs is quoted for them here.

    python benchmarks/experiments/seed000_verification.py                  # bundled weights
    python benchmarks/experiments/seed000_verification.py --weights net.pt # any DC-IGN checkpoint

Sizes: ``tiny`` (an untrained 32 px toy net, one set; numbers mean nothing), ``quick`` (5 sets),
``full`` (50 sets); every set is 96 pairs.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch  # noqa: E402

# This folder (_shared.py) and benchmarks/ (_common.py): the scripts are run as files.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import _shared  # noqa: E402
from _common import format_table  # noqa: E402

from probgraphics.config import set_num_threads  # noqa: E402
from probgraphics.inference.summaries import pixel_summary  # noqa: E402
from probgraphics.nets import DCIGN, EncoderSummary  # noqa: E402

NAME = "seed000_verification"
#: Test set ``k`` is drawn with seed HELD_OUT_SEED + 1000 * k + --seed.
HELD_OUT_SEED = 4_000_000
SAME_PAIRS = 48
DIFFERENT_PAIRS = 48
#: Seed 000 sec. 4.2: "humans perform at 78 percent".
PAPER_HUMANS = 0.78
SIZES = {"tiny": {"sets": 1}, "quick": {"sets": 5}, "full": {"sets": 50}}
SHUFFLES = 1000
#: ``--camera fixed``: the face centred at the middle of the program's scale range.
CENTRED_CAMERA = torch.tensor([0.5, 0.5, 0.5])


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------


def pair_correlations(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of ``first[i]`` with ``second[i]`` for representations ``(n, K)``.

    Each representation is standardized on its own (seed 000: "scaled each test image
    representation independently to be centered at 0 and to have a standard deviation of 1"),
    then the correlation is the mean product. A constant representation correlates 0 with
    anything. Returns ``(n,)`` float64 in [-1, 1].
    """
    if first.shape != second.shape or first.dim() != 2 or first.shape[1] < 2:
        raise ValueError(
            f"pair_correlations needs two (n, K >= 2) representations of one shape, got "
            f"{tuple(first.shape)} and {tuple(second.shape)}."
        )

    def standardize(x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        centered = x - x.mean(1, keepdim=True)
        scale = centered.square().mean(1, keepdim=True).sqrt()
        return torch.where(scale > 0, centered / scale.clamp_min(1e-300), 0.0)

    return (standardize(first) * standardize(second)).mean(1).clamp(-1.0, 1.0)


def candidate_thresholds(correlations: torch.Tensor) -> torch.Tensor:
    """Every threshold in [-1, 1] that splits the pairs differently: -1 (all "same"), the
    midpoints between consecutive distinct correlations, and 1 (only a perfect correlation is
    "same"); sorted, float64."""
    values = torch.unique(correlations.double().clamp(-1.0, 1.0))
    middles = (values[1:] + values[:-1]) / 2
    ends = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    return torch.unique(torch.cat([ends, middles]))


def threshold_accuracies(
    correlations: torch.Tensor, same: torch.Tensor, thresholds: torch.Tensor
) -> torch.Tensor:
    """Accuracy ``(T,)`` of calling a pair "same" iff its correlation is >= each threshold."""
    called_same = correlations.double()[None, :] >= thresholds[:, None]
    return (called_same == same.bool()[None, :]).double().mean(1)


def best_threshold(correlations: torch.Tensor, same: torch.Tensor) -> tuple[float, float]:
    """The paper's search: the threshold in [-1, 1] with the highest accuracy on these pairs.

    Ties are broken by the middle one of the best thresholds (in sorted order). Returns
    ``(threshold, accuracy)``.
    """
    if correlations.shape != same.shape or correlations.dim() != 1 or correlations.numel() < 1:
        raise ValueError(
            f"best_threshold needs correlations and labels of one shape (n,), got "
            f"{tuple(correlations.shape)} and {tuple(same.shape)}."
        )
    thresholds = candidate_thresholds(correlations)
    accuracies = threshold_accuracies(correlations, same, thresholds)
    best = torch.nonzero(accuracies == accuracies.max()).reshape(-1)
    chosen = int(best[len(best) // 2])
    return float(thresholds[chosen]), float(accuracies[chosen])


def leave_one_out_accuracy(correlations: torch.Tensor, same: torch.Tensor) -> float:
    """Accuracy when each pair is judged with :func:`best_threshold` of all the other pairs."""
    n = correlations.numel()
    if n < 2:
        raise ValueError(f"leave-one-out needs at least 2 pairs, got {n}.")
    correct = 0
    for i in range(n):
        keep = torch.arange(n) != i
        threshold, _ = best_threshold(correlations[keep], same[keep])
        correct += int(bool(correlations[i] >= threshold) == bool(same[i]))
    return correct / n


def shuffled_label_accuracy(
    correlations: torch.Tensor, same: torch.Tensor, *, shuffles: int, seed: int
) -> tuple[float, float]:
    """Mean and standard deviation of :func:`best_threshold`'s accuracy with the labels
    permuted ``shuffles`` times (the protocol's own optimism, with no signal)."""
    generator = torch.Generator().manual_seed(seed)
    thresholds = candidate_thresholds(correlations)
    scores = []
    for _ in range(shuffles):
        permuted = same[torch.randperm(same.numel(), generator=generator)]
        scores.append(float(threshold_accuracies(correlations, permuted, thresholds).max()))
    return statistics.fmean(scores), statistics.stdev(scores) if len(scores) > 1 else 0.0


# --------------------------------------------------------------------------------------------
# The pairs
# --------------------------------------------------------------------------------------------


def verification_pairs(
    program, *, same: int, different: int, seed: int, camera: torch.Tensor | None = None
) -> dict[str, Any]:
    """``same`` pairs of one identity and ``different`` pairs of two, from the face program.

    In a same pair the second image has the first's shape and texture; every image's azimuth,
    elevation and light are its own prior draws. ``camera`` ``(3,)`` fixes the framing of every
    image (``None``: each image draws its own).

    Returns ``{"first": (n, C, H, W), "second": (n, C, H, W), "same": (n,) bool,
    "identity_first" / "identity_second": {"shape", "texture"} -> (n, 200)}`` with the ``same``
    pairs first; noise-free renders.
    """
    from probgraphics.programs.simulate import simulate

    def framing(count: int) -> dict[str, torch.Tensor]:
        return {} if camera is None else {"camera": camera.expand(count, 3)}

    n = same + different
    first = simulate(program, n, seed=seed, conditions=framing(n))
    identity = {"shape": first["shape"][:same], "texture": first["texture"][:same]}
    second_same = simulate(program, same, seed=seed + 1, conditions={**identity, **framing(same)})
    second_different = simulate(program, different, seed=seed + 2, conditions=framing(different))
    labels = torch.cat(
        [torch.ones(same, dtype=torch.bool), torch.zeros(different, dtype=torch.bool)]
    )
    return {
        "first": first["render"],
        "second": torch.cat([second_same["render"], second_different["render"]]),
        "same": labels,
        "identity_first": {name: first[name] for name in ("shape", "texture")},
        "identity_second": {
            name: torch.cat([second_same[name], second_different[name]])
            for name in ("shape", "texture")
        },
    }


# --------------------------------------------------------------------------------------------
# The script
# --------------------------------------------------------------------------------------------


def load_network(weights: Path | None, size: str, seed: int) -> tuple[DCIGN, str]:
    """The DC-IGN to test and where it came from: ``weights``, else (tiny) an untrained toy,
    else the bundled ``dcign-face-64``."""
    if weights is None and size == "tiny":
        net = _shared.untrained_dcign(_shared.TINY_DCIGN, seed)
        return net, "untrained toy DC-IGN (TINY_DCIGN, initialize_dcign)"
    return _shared.load_dcign(weights, NAME)


def figure(correlations: dict[str, dict[str, list[float]]], title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.0 * len(correlations), 3.4))
    axes = fig.subplots(1, len(correlations), squeeze=False)[0]
    values = [
        v for by_kind in correlations.values() for v in by_kind["same"] + by_kind["different"]
    ]
    # From the lowest correlation seen (to a tenth) up to 1: the detail is where the pairs are.
    low = max(-1.0, math.floor(10 * min(values, default=-1.0)) / 10)
    bins = torch.linspace(low, 1.0, 41).tolist()
    for ax, (label, by_kind) in zip(axes, correlations.items(), strict=True):
        ax.hist(by_kind["same"], bins=bins, alpha=0.6, label="same face")
        ax.hist(by_kind["different"], bins=bins, alpha=0.6, label="different faces")
        ax.axvline(by_kind["threshold"], color="k", linestyle="--", linewidth=1)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("Pearson correlation of the pair")
    axes[0].set_ylabel("pairs")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _shared.add_common_arguments(parser)
    _shared.add_dcign_weights_argument(parser)
    parser.add_argument("--sets", type=int, default=None, help="independent 96-pair test sets")
    parser.add_argument(
        "--camera",
        choices=("fixed", "random"),
        default="fixed",
        help="fixed (default): every face centred at the middle scale (camera 0.5, 0.5, 0.5), "
        "like Yildirim et al.'s stimuli; random: each image draws its own framing",
    )
    args = parser.parse_args(argv)
    problems = _shared.fill_from_preset(args, SIZES[args.size], {"sets": 1})
    if problems:
        parser.error("; ".join(problems))
    sets = args.sets
    threads = set_num_threads(args.threads)
    command = _shared.command_line(NAME, argv)

    from probgraphics.programs.face import face

    net, source = load_network(args.weights, args.size, args.seed)
    program = face(resolution=net.config.image_size)
    identity = _shared.identity_summary_of(net, args.device, NAME)
    representations = {
        "DC-IGN identity code": identity,
        "DC-IGN whole code": EncoderSummary(net),
        "raw pixels": pixel_summary,
    }
    per_set: dict[str, list[dict[str, float]]] = {label: [] for label in representations}
    pooled: dict[str, dict[str, list[float]]] = {
        label: {"same": [], "different": []} for label in representations
    }
    first_set: dict[str, torch.Tensor] = {}
    labels_first = None
    for k in range(sets):
        pairs = verification_pairs(
            program,
            same=SAME_PAIRS,
            different=DIFFERENT_PAIRS,
            seed=HELD_OUT_SEED + 1000 * k + args.seed,
            camera=CENTRED_CAMERA if args.camera == "fixed" else None,
        )
        same = pairs["same"]
        for label, represent in representations.items():
            a = represent(pairs["first"].to(args.device)).cpu()
            b = represent(pairs["second"].to(args.device)).cpu()
            correlations = pair_correlations(a, b)
            threshold, accuracy = best_threshold(correlations, same)
            per_set[label].append(
                {
                    "accuracy_best_threshold": accuracy,
                    "threshold": threshold,
                    "accuracy_leave_one_out": leave_one_out_accuracy(correlations, same),
                    "mean_correlation_same": float(correlations[same].mean()),
                    "mean_correlation_different": float(correlations[~same].mean()),
                }
            )
            pooled[label]["same"] += correlations[same].tolist()
            pooled[label]["different"] += correlations[~same].tolist()
            if k == 0:
                first_set[label] = correlations
        if k == 0:
            labels_first = same
    chance_mean, chance_sd = shuffled_label_accuracy(
        first_set["DC-IGN identity code"], labels_first, shuffles=SHUFFLES, seed=args.seed
    )

    rows = []
    for label, records in per_set.items():
        best = [r["accuracy_best_threshold"] for r in records]
        held_out = [r["accuracy_leave_one_out"] for r in records]
        row = {
            "representation": label,
            "accuracy (paper's protocol)": f"{best[0]:.3f}",
            "threshold": f"{records[0]['threshold']:.3f}",
            "accuracy (leave-one-out)": f"{held_out[0]:.3f}",
            "paper": "figure 7 (not in text)" if label.startswith("DC-IGN identity") else "",
        }
        if sets > 1:
            row[f"protocol, {sets} sets"] = (
                f"{statistics.fmean(best):.3f} ± {statistics.stdev(best):.3f}"
            )
            row[f"leave-one-out, {sets} sets"] = (
                f"{statistics.fmean(held_out):.3f} ± {statistics.stdev(held_out):.3f}"
            )
        rows.append(row)
    rows.append(
        {
            "representation": "labels shuffled (chance under the protocol)",
            "accuracy (paper's protocol)": f"{chance_mean:.3f} ± {chance_sd:.3f}",
            "accuracy (leave-one-out)": "0.5 (expected)",
        }
    )
    rows.append(
        {
            "representation": "humans (Yildirim et al., in seed 000)",
            "paper": f"{PAPER_HUMANS:.2f}",
        }
    )
    columns = [
        "representation",
        "accuracy (paper's protocol)",
        "threshold",
        "accuracy (leave-one-out)",
    ]
    if sets > 1:
        columns += [f"protocol, {sets} sets", f"leave-one-out, {sets} sets"]
    columns.append("paper")
    markdown = "\n".join(
        [
            "# Seed 000 section 4.2: same / different face verification",
            "",
            f"`{command}`",
            "",
            f"Network: {source} ({net.config.image_size} px; identity code = its "
            f"{len(identity.layout[_shared.IDENTITY_GROUP])} `{_shared.IDENTITY_GROUP}` units). "
            f"{SAME_PAIRS} same + {DIFFERENT_PAIRS} different pairs a set from the face "
            f"program (pose and light independent in every image; camera {args.camera}). "
            "Pearson correlation "
            "of the standardized representations; a pair is 'same' when it is at or above the "
            "threshold. Paper's protocol: the best threshold in [-1, 1] on the pairs themselves "
            "(first set); leave-one-out: each pair judged by the best threshold of the other "
            f"{SAME_PAIRS + DIFFERENT_PAIRS - 1}."
            + (f" Over {sets} sets: mean ± standard deviation." if sets > 1 else ""),
            "",
            format_table(rows, columns),
            "",
        ]
    )
    print(markdown)
    histogram_data = {
        label: {**pooled[label], "threshold": per_set[label][0]["threshold"]}
        for label in representations
    }
    title = (
        f"Pair correlations, {sets} set(s) of {SAME_PAIRS}+{DIFFERENT_PAIRS} pairs; dashed: the "
        "first set's best threshold"
    )
    fig = figure(histogram_data, title)
    payload = {
        "experiment": NAME,
        "source": "seed 000 section 4.2 (Yildirim et al.'s same/different protocol)",
        "command": command,
        "settings": {
            "size": args.size,
            "seed": args.seed,
            "sets": sets,
            "same_pairs": SAME_PAIRS,
            "different_pairs": DIFFERENT_PAIRS,
            "held_out_seeds": [HELD_OUT_SEED + 1000 * k + args.seed for k in range(sets)],
            "network": source,
            "image_size": net.config.image_size,
            "threads": threads,
            "device": args.device,
            "camera": args.camera,
            "threshold_selection": "best threshold in [-1, 1] on the test pairs themselves "
            "(seed 000's protocol); leave-one-out alongside",
        },
        "per_set": per_set,
        "chance_under_protocol": {"mean": chance_mean, "sd": chance_sd, "shuffles": SHUFFLES},
        "paper": {"humans": PAPER_HUMANS, "dcign": "figure 7; value not in the text"},
        "table": rows,
        "correlations_first_set": {label: values.tolist() for label, values in first_set.items()},
        "same_first_set": labels_first.tolist(),
    }
    _shared.write_outputs(args.out_dir, NAME, markdown=markdown, figure=fig, payload=payload)
    return payload


if __name__ == "__main__":
    main()
