"""Shared by the experiment scripts of ``benchmarks/experiments/``: the common command-line
options, the command line recorded in each report, the atomic NAME.md / NAME.png / NAME.json
writer, and loading the DC-IGN the seed 000 / 001 experiments measure.

Scripts are run as files, not as a package, so each puts this folder and ``benchmarks/`` on
``sys.path`` before importing this module and ``_common`` (this module adds ``benchmarks/``
itself too, for callers that only add this folder):

    sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: ``benchmarks/``: where ``_common.py`` and the older benchmark scripts live.
BENCHMARKS = Path(__file__).resolve().parent.parent
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from _common import RESULTS, write_json  # noqa: E402

from probgraphics.nets import DCIGNConfig  # noqa: E402

#: The ``--size`` choices every experiment script offers.
SIZE_NAMES = ("tiny", "quick", "full")
#: The bundled DC-IGN the face experiments measure by default.
BUNDLED_DCIGN = "dcign-face-64"
#: The identity code (seed 000's ``z[4, n]``) is this group of the DC-IGN code layout.
IDENTITY_GROUP = "intrinsic"


#: A toy DC-IGN for ``--size tiny`` (32 px, two narrow stages, 16-unit code): exercises every
#: code path in seconds; its numbers mean nothing.
TINY_DCIGN = DCIGNConfig(
    image_size=32, channels=(8, 8), decoder_channels=(8, 8), padding=2, code_size=16
)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_common_arguments(
    parser: argparse.ArgumentParser,
    *,
    seed_help: str = "the experiment's seed (default 0)",
    device_help: str = "device for the networks (cpu, cuda)",
) -> None:
    """Add the options every experiment script takes: ``--size`` (tiny / quick / full, default
    quick), ``--seed`` (int, default 0), ``--threads`` (int, default ``None``: the library's
    default), ``--out-dir`` (default ``benchmarks/results/``) and ``--device`` (default cpu)."""
    parser.add_argument(
        "--size",
        choices=SIZE_NAMES,
        default="quick",
        help="tiny: toy sizes for the test suite (seconds; numbers mean nothing); quick "
        "(default): a few minutes on a CPU; full: the real experiment",
    )
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--threads", type=int, default=None, help="torch and numba threads")
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=RESULTS,
        help=f"where NAME.md, NAME.png and NAME.json go (default {RESULTS})",
    )
    parser.add_argument("--device", default="cpu", help=device_help)


def add_dcign_weights_argument(parser: argparse.ArgumentParser) -> None:
    """``--weights PATH``: the DC-IGN checkpoint to measure (default ``None``: the bundled
    ``dcign-face-64``, or at ``--size tiny`` an untrained toy); see :func:`load_dcign`."""
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help=f"a DC-IGN checkpoint (default: the bundled {BUNDLED_DCIGN}; tiny: an untrained toy)",
    )


def fill_from_preset(
    args: argparse.Namespace, preset: Mapping[str, Any], minimums: Mapping[str, int]
) -> list[str]:
    """Set each option of ``minimums`` (attribute names, e.g. ``"batch_size"``) that was not
    given (``None``) to ``preset``'s value; return what is wrong, one message an option below
    its minimum (e.g. ``"--batch-size must be >= 2, got 1"``), for ``parser.error``."""
    problems = []
    for key, minimum in minimums.items():
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
        value = getattr(args, key)
        if value < minimum:
            problems.append(f"--{key.replace('_', '-')} must be >= {minimum}, got {value}")
    return problems


def command_line(name: str, argv: Sequence[str] | None = None) -> str:
    """The shell command that reproduces this run of ``benchmarks/experiments/<name>.py`` with
    arguments ``argv`` (``None``: this process's own, ``sys.argv[1:]``)."""
    argv = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", f"benchmarks/experiments/{name}.py", *argv])


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


def write_outputs(
    out_dir: Path, name: str, *, markdown: str, figure, payload: dict[str, Any]
) -> dict[str, Path]:
    """Write ``name``.md (``markdown``), .png (``figure``, a matplotlib Figure, closed after) and
    .json (``payload`` plus ``_common.machine()`` under ``"machine"``; values JSON cannot hold
    are written as ``str``) into ``out_dir`` (created), each atomically, and print where; returns
    the three paths under ``"md"``, ``"png"`` and ``"json"``."""
    from probgraphics.atomic import atomic_write_text
    from probgraphics.plots import save_figure

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "md": atomic_write_text(out_dir / f"{name}.md", markdown, fsync=False),
        "png": save_figure(figure, out_dir / f"{name}.png"),
    }
    paths["json"] = write_json(name, payload, directory=out_dir)
    print("wrote " + ", ".join(str(path) for path in paths.values()))
    return paths


# --------------------------------------------------------------------------------------------
# DC-IGNs
# --------------------------------------------------------------------------------------------


def bundled_dcign():
    """The bundled ``dcign-face-64`` DC-IGN (CPU, eval mode), or ``None`` when it is not
    installed."""
    import probgraphics as pg

    try:
        return pg.nets.pretrained(BUNDLED_DCIGN, kind="model")
    except KeyError:
        return None


def load_dcign(weights: Path | None, who: str):
    """``(DCIGN, description)``: the network in checkpoint ``weights`` (kind ``"dcign"``) or,
    with ``weights=None``, the bundled ``dcign-face-64`` (description ``"bundled
    dcign-face-64"``).

    Exits with a message saying what to do when neither is usable (``who`` names the script).
    """
    from probgraphics.nets import CheckpointError, load_checkpoint

    if weights is not None:
        try:
            module = load_checkpoint(weights, expected_kind="dcign").module
        except (FileNotFoundError, CheckpointError) as error:
            raise SystemExit(
                f"{who}: cannot use --weights {weights} as a DC-IGN: {error} (DC-IGN checkpoints "
                f"are written by `probgraphics train {BUNDLED_DCIGN}`)"
            ) from None
        return module, str(weights)
    net = bundled_dcign()
    if net is None:
        raise SystemExit(
            f"{who}: no DC-IGN weights: the bundled {BUNDLED_DCIGN!r} is not installed and no "
            f"--weights PATH was given. Run `probgraphics train {BUNDLED_DCIGN}` (then place the "
            ".pt in probgraphics/nets/weights/ or pass it with --weights PATH)."
        )
    return net, f"bundled {BUNDLED_DCIGN}"


def untrained_dcign(config, seed: int):
    """A DC-IGN of ``config`` (a ``DCIGNConfig``) initialized by
    ``training.initialize_dcign`` under ``torch.manual_seed(seed)`` (the global RNG state is
    restored after), never trained; CPU, eval mode."""
    import torch

    from probgraphics.nets import DCIGN
    from probgraphics.training import initialize_dcign

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return initialize_dcign(DCIGN(config)).eval()


def identity_summary_of(net, device: str, who: str):
    """The encoder's posterior mean restricted to the identity group (``IDENTITY_GROUP``), an
    ``EncoderSummary`` on ``device``; exits saying why when the layout has no such group."""
    from probgraphics.nets import EncoderSummary

    summary = EncoderSummary(net.to(device))
    if summary.layout is None or IDENTITY_GROUP not in summary.layout:
        groups = list(summary.layout) if summary.layout is not None else []
        raise SystemExit(
            f"{who}: the network's code layout has no {IDENTITY_GROUP!r} group (it has "
            f"{groups}); the identity code is seed 000's z[4, n], the layout's "
            f"{IDENTITY_GROUP!r} units."
        )
    return summary.subset(IDENTITY_GROUP)
