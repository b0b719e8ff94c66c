"""The command line: ``probgraphics demo | infer | train | bench``.

* ``probgraphics demo``: infer a simulated face scene with ABC-MCMC; write figures.
* ``probgraphics infer IMAGE``: infer a scene program's latents from a PNG/JPEG image (``IMAGE``
  may be the word ``sample-photo``: a face photograph that ships with matplotlib); write the
  posterior (NetCDF) and a figure of the image beside posterior renders.
* ``probgraphics train NAME``: run a training recipe (``probgraphics.training.RECIPES``).
* ``probgraphics bench NAME [ARGS...]``: run ``benchmarks/NAME.py`` of the source checkout.

Every subcommand has ``--help``. Exit codes: 0 success; 2 bad usage or bad input (argparse's
convention: a missing or unreadable image, a wrong size, an unknown name, a bad option); 1 a
failure while running; 130 interrupted. Errors are one line on stderr; set the environment
variable ``PROBGRAPHICS_TRACEBACK=1`` to get the traceback of a failure instead.
"""

from __future__ import annotations

import argparse
import ast
import functools
import inspect
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "UsageError", "SAMPLE_PHOTO_ARGUMENT"]

#: The ``IMAGE`` argument of ``probgraphics infer`` that means :func:`sample_face_photo`.
SAMPLE_PHOTO_ARGUMENT = "sample-photo"

#: Environment variable: when set to 1, failures raise with their traceback.
_TRACEBACK_VARIABLE = "PROBGRAPHICS_TRACEBACK"


class UsageError(Exception):
    """Bad usage or bad input, reported as one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be computed when help is shown (``lazy_epilog``), so
    listing e.g. the training recipes does not import torch for every command."""

    def __init__(self, *args: Any, lazy_epilog: Callable[[], str] | None = None, **kwargs: Any):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        for key in ("description", "epilog"):
            if kwargs.get(key):
                kwargs[key] = _fill(kwargs[key])
        super().__init__(*args, **kwargs)
        self._lazy_epilog = lazy_epilog

    def format_help(self) -> str:
        if self._lazy_epilog is not None:
            self.epilog = _fill(self._lazy_epilog())
        return super().format_help()


def _fill(text: str, width: int = 88) -> str:
    """Wrap each paragraph of ``text``, leaving indented ones (examples, listings) as they are."""
    paragraphs = text.split("\n\n")
    return "\n\n".join(
        paragraph
        if any(line.startswith(" ") for line in paragraph.splitlines())
        else textwrap.fill(paragraph, width)
        for paragraph in paragraphs
    )


# ------------------------------------------------------------------------------------------ demo


#: The demo's budget: on two cores about a minute (the guide's start and proposals, pixels).
DEMO_SIMULATIONS = 100_000


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

    summary, summary_text = _resolve_summary(args.summary)
    # The recommended call: infer(program, image, guide=guide, simulations=N).
    options: dict[str, Any] = {"init": args.init}
    if args.guide != "none":
        options["guide"] = _resolve_guide(args.guide, program, "cpu")
        summary_text += f", guide {args.guide} (start and proposals)"
    sizes = {"chains": args.chains, "draws": args.draws, "warmup": args.warmup}
    options.update({key: value for key, value in sizes.items() if value is not None})
    if args.simulations is not None:
        options["simulations"] = args.simulations
    if args.collapse is not None:
        options["collapse"] = args.collapse
        summary_text += f", {args.collapse} collapsed"
    truth = programs.simulate(program, seed=args.seed)
    if callable(summary):
        _check_summary_fits(summary, truth["image"], args.summary, "--resolution 64")
    budget = "" if args.simulations is None else f", at most {args.simulations} simulations"
    print(f"inferring a {args.resolution}px face scene with abc_mcmc, {summary_text}{budget}")
    posterior = infer(
        program,
        truth["image"],
        method="abc_mcmc",
        summary=summary,
        seed=args.seed,
        progress=not args.quiet,
        **options,
    )
    sites = ["azimuth", "elevation", "light"]
    table = posterior.summary(var_names=sites)
    table.insert(0, "true", [float(truth[s]) for s in sites])
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    accepted = posterior.sample_stats["accepted"].float().mean()
    print(
        f"{posterior.num_chains} chains x {posterior.num_draws} draws: "
        f"{posterior.n_simulations} simulations in {posterior.wall_time:.1f}s "
        f"({posterior.simulations_per_second:.0f}/s), acceptance {accepted:.2f}, "
        f"largest R-hat of {', '.join(sites)} {table['r_hat'].max():.2f}"
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
        image_grid(
            panels,
            ncols=n_show + 1,
            titles=titles,
            suptitle=f"observed image and posterior renders (abc_mcmc, {summary_text})",
        ),
        out / "posterior_renders.png",
    )
    path = posterior.save(out / "posterior.nc")
    print(f"wrote {out}/prior_scenes.png, trace.png, posterior_renders.png and {path}")
    return 0


# ----------------------------------------------------------------------------------------- infer


#: ``probgraphics infer`` on the face program with abc_mcmc and no sizes: this budget.
RECOMMENDED_SIMULATIONS = 20_000


def _recommended_guide(args: argparse.Namespace, program: Any, device: Any) -> Any:
    """abc_mcmc on the face program with no --init: --guide, to start the chains and propose
    (the recommended call); None where it does not fit (e.g. another resolution than the
    bundled guide's 64 px), so the plain call runs."""
    if args.method != "abc_mcmc" or args.init is not None or args.program != "face":
        return None
    try:
        return _resolve_guide(args.guide, program, device)
    except (UsageError, KeyError):  # KeyError: no such bundled network where weights are looked
        return None


def _parse_program_options(
    items: list[str] | None, *, flag: str = "--program-option"
) -> dict[str, Any]:
    """``["resolution=32", "color=rgb"]`` -> ``{"resolution": 32, "color": "rgb"}``: each value
    read as a Python literal (numbers, tuples, True/False/None), else kept as a string."""
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UsageError(f"{flag} expects KEY=VALUE (e.g. resolution=32), got {item!r}.")
        if key in options:
            raise UsageError(f"{flag} {key} is given twice; give it once.")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
        options[key] = value
    return options


def _parse_crop_box(text: str | None) -> tuple[int, int, int, int] | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise UsageError(
            f"--crop-box expects four integers TOP,LEFT,HEIGHT,WIDTH in pixels (e.g. "
            f"40,92,340,340), got {text!r}."
        )
    return values  # type: ignore[return-value]


def _resolve_summary(spec: str) -> tuple[Any, str]:
    """``--summary`` -> (what ``infer`` takes, a description). Named summaries stay names;
    anything else is a pretrained network, optionally ``NAME:group,group`` for a subset of its
    code."""
    from probgraphics.inference.summaries import SUMMARIES

    if spec in SUMMARIES:
        return spec, f"{spec} summary"
    name, _, groups = spec.partition(":")
    try:
        from probgraphics.nets.pretrained import available, pretrained_summary
    except ImportError as error:
        raise UsageError(
            f"--summary {spec!r} is not a named summary ({sorted(SUMMARIES)}), and pretrained "
            f"networks cannot be loaded in this installation ({error})."
        ) from None
    if name not in available():
        raise UsageError(
            f"unknown --summary {spec!r}; the named summaries are {sorted(SUMMARIES)} and the "
            f"pretrained networks are {available() or 'none installed'} (train one with "
            "`probgraphics train NAME`)."
        )
    return pretrained_summary(spec), f"pretrained encoder {name!r}" + (
        f", groups {groups}" if groups else ""
    )


def _check_summary_fits(summary: Any, image: Any, spec: str, fix: str) -> None:
    """Run the summary on the observation ``(C, H, W)`` once, so a network built for another
    image size fails now, with the fix, rather than after the pilot run."""
    try:
        summary(image[None])
    except (ValueError, TypeError, RuntimeError) as error:
        shape = "x".join(str(n) for n in image.shape)
        raise UsageError(
            f"--summary {spec!r} cannot take this program's {shape} images ({error}); pick the "
            f"resolution to match, e.g. {fix}."
        ) from None


def _resolve_guide(spec: str, program: Any, device: Any) -> Any:
    """``--guide``: a bundled guide network's name or a checkpoint path, as an ``EncoderGuide``
    of ``program``; anything that does not load or fit the program is a usage error."""
    from probgraphics.nets import CheckpointError
    from probgraphics.nets.guides import load_guide

    try:
        return load_guide(spec, program, device=device)
    except (CheckpointError, FileNotFoundError, ValueError, TypeError) as error:
        raise UsageError(
            f"--guide {spec!r} cannot guide this program: {error} (bundled guides: "
            "face-guide-64 for the face program at resolution 64)"
        ) from None


def _image_argument(text: str) -> Path:
    from probgraphics.imageio import sample_face_photo

    if text == SAMPLE_PHOTO_ARGUMENT:
        return sample_face_photo()
    path = Path(text)
    if not path.exists():
        raise UsageError(f"no such image file: {text!r}; check the path.")
    return path


def _output_file(text: str, option: str) -> Path:
    """Check an output path before the (long) run, creating its folder."""
    path = Path(text)
    if path.is_dir():
        raise UsageError(f"{option} {text!r} is a folder; give a file name (e.g. posterior.nc).")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the folder of {option} {text!r}: {error}") from None
    return path


def _scalar_sites(samples: dict) -> list[str]:
    return [name for name, value in samples.items() if math.prod(value.shape[2:]) == 1]


def _resolve_cli_device(text: str) -> Any:
    from probgraphics.api import resolve_device

    try:
        return resolve_device(text)
    except RuntimeError as error:  # CUDA asked for but absent: the user's choice, not a failure
        raise UsageError(f"{error} (use --device cpu)") from None


def _image_program(args: argparse.Namespace) -> tuple[Any, int, int]:
    """``--program`` with its ``--program-option``s: ``(program, resolution, channels)``."""
    from probgraphics import programs

    program_options = _parse_program_options(args.program_option)
    try:
        program = programs.get(args.program, **program_options)
    except TypeError as error:
        raise UsageError(
            f"program {args.program!r} does not take the options {sorted(program_options)}: {error}"
        ) from None
    resolution = getattr(program, "resolution", None)
    if not isinstance(resolution, int):
        raise UsageError(
            f"program {args.program!r} has no image resolution; `probgraphics infer` observes "
            "images, so use an image program (face, voxel, dcign)."
        )
    return program, resolution, getattr(program, "channels", 1)


def _inference_options(
    args: argparse.Namespace, program: Any, device: Any, image: Any
) -> tuple[dict[str, Any], str]:
    """The ``infer`` options the flags give (``seed`` and ``progress`` included), and a
    description of the summary and guide; ``image`` ``(C, H, W)`` checks the summary fits."""
    summary, summary_text = _resolve_summary(args.summary)
    if callable(summary):
        _check_summary_fits(summary, image, args.summary, "--program-option resolution=64")

    options: dict[str, Any] = {
        "chains": args.chains,
        "draws": args.draws,
        "warmup": args.warmup,
        "epsilon": args.epsilon,
        "quantile": args.quantile,
        "init": args.init,
        "pilot_size": args.pilot_size,
        "simulations": args.simulations,
        "collapse": args.collapse,
    }
    options = {key: value for key, value in options.items() if value is not None}
    options.update(seed=args.seed, device=str(device))
    if args.method != "guide":
        options.update(summary=summary, progress=not args.quiet)
    else:
        summary_text = "amortized (no simulations)"
    if args.method == "guide" or args.init == "guide":
        options["guide"] = _resolve_guide(args.guide, program, device)
        summary_text += f", guide {args.guide}"
    elif (guide := _recommended_guide(args, program, device)) is not None:
        # The face program's default: infer(program, image, guide=guide, simulations=N).
        options["guide"] = guide
        summary_text += f", guide {args.guide} (start and proposals)"
        if not any(key in options for key in ("chains", "draws", "warmup", "simulations")):
            options["simulations"] = RECOMMENDED_SIMULATIONS
    return options, summary_text


def _describe_sizes(options: dict[str, Any]) -> str:
    sizes = ", ".join(
        f"{key} {value}"
        for key, value in options.items()
        if key in ("chains", "draws", "warmup", "simulations", "epsilon")
    )
    return f", {sizes}" if sizes else " (method defaults)"


def _infer(args: argparse.Namespace) -> int:
    """Load an image, infer a program's latents from it, write the posterior and a figure; or,
    for a folder, every image in it (:func:`_infer_folder`)."""
    if args.image != SAMPLE_PHOTO_ARGUMENT and Path(args.image).is_dir():
        return _infer_folder(args)
    import torch

    from probgraphics.api import infer
    from probgraphics.config import set_num_threads
    from probgraphics.imageio import SAMPLE_PHOTO_FACE_BOX, load_image

    set_num_threads(args.threads)
    image_path = _image_argument(args.image)
    _reject_folder_flags(args, "an image file")
    crop_box = _parse_crop_box(args.crop_box)
    if crop_box is None and args.crop is None and args.image == SAMPLE_PHOTO_ARGUMENT:
        crop_box = SAMPLE_PHOTO_FACE_BOX
    device = _resolve_cli_device(args.device)
    out = _output_file(args.out or "posterior.nc", "--out")
    figure = None
    if not args.no_figure:
        figure = _output_file(args.figure or str(out.with_suffix(".png")), "--figure")

    program, resolution, channels = _image_program(args)
    loaded = load_image(
        image_path,
        resolution=resolution,
        channels=channels,
        crop=args.crop or "center",
        face_box=crop_box,
    )
    print(loaded.describe())

    options, summary_text = _inference_options(args, program, device, loaded.image)
    print(f"program: {program!r}")
    print(
        f"inferring with {args.method}, {summary_text}, seed {args.seed}, device {device}"
        + _describe_sizes(options)
    )
    posterior = infer(program, loaded.image, method=args.method, **options)

    scalars = _scalar_sites(posterior.samples)
    if scalars:
        table = posterior.summary(var_names=scalars)
        print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    stats = [
        f"{posterior.n_simulations} simulations in {posterior.wall_time:.1f}s "
        f"({posterior.simulations_per_second:.0f}/s)"
        if posterior.n_simulations
        else f"amortized posterior (no simulations) in {posterior.wall_time:.2f}s"
    ]
    if "accepted" in posterior.sample_stats and posterior.n_simulations:
        stats.append(f"acceptance {posterior.sample_stats['accepted'].float().mean():.2f}")
    print(", ".join(stats))

    path = posterior.save(out)
    written = [str(path)]
    if figure is not None:
        from probgraphics.plots import save_figure

        with torch.no_grad():
            fig = _posterior_figure(
                program,
                posterior,
                loaded,
                scalars,
                title=(f"{args.program} program, {args.method}, {summary_text}"),
            )
        save_figure(fig, figure)
        written.append(str(figure))
    print("wrote " + " and ".join(written))
    return 0


#: Seconds ``probgraphics infer FOLDER --scheduler ADDRESS`` waits for the scheduler.
SCHEDULER_TIMEOUT_S = 30

#: The files ``probgraphics infer FOLDER`` reads (suffixes, any case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _reject_folder_flags(args: argparse.Namespace, what: str) -> None:
    given = [
        flag
        for flag, value in (
            ("--workers", args.workers),
            ("--scheduler", args.scheduler),
            ("--chunk-size", args.chunk_size),
        )
        if value is not None
    ]
    if given:
        raise UsageError(
            f"{', '.join(given)} apply to a folder of images (one Dask task per image), but IMAGE "
            f"is {what}; pass a folder, or drop them."
        )


def _folder_images(folder: Path) -> list[Path]:
    files = sorted(
        path
        for path in folder.iterdir()
        if path.is_file()
        and path.suffix.lower() in IMAGE_SUFFIXES
        and not path.name.startswith(".")
    )
    if not files:
        raise UsageError(
            f"the folder {str(folder)!r} holds no {'/'.join(IMAGE_SUFFIXES)} images; put the "
            "images to infer in it, or pass one image file."
        )
    return files


def _image_names(files: list[Path]) -> dict[str, Path]:
    """Name -> file: the file's stem, or its whole name where two files share a stem."""
    stems = [path.stem for path in files]
    return {(path.stem if stems.count(path.stem) == 1 else path.name): path for path in files}


def _output_folder(text: str | None) -> Path:
    if text is None:
        raise UsageError(
            "a folder of images needs --out FOLDER: one posterior NetCDF file per image is "
            "written there, with a manifest infer_many.json."
        )
    folder = Path(text)
    if folder.exists() and not folder.is_dir():
        raise UsageError(
            f"--out {text!r} is a file; for a folder of images give a folder (one posterior "
            "file per image goes in it)."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the --out folder {text!r}: {error}") from None
    return folder


def _load_pixels(path: Path, **options: Any) -> Any:
    """The observation ``load_image`` makes of ``path``: ``(channels, R, R)`` float32."""
    from probgraphics.imageio import load_image

    return load_image(path, **options).image


def _infer_folder(args: argparse.Namespace) -> int:
    """Infer every PNG/JPEG image of a folder, one Dask task per image (or chunk), on a local
    cluster or ``--scheduler``'s; write one posterior per image into ``--out``."""
    from probgraphics.scale import MANIFEST_NAME, infer_many

    folder = Path(args.image)
    if args.figure is not None:
        raise UsageError(
            "--figure is for one image; a folder of images writes no figures (plot a "
            "posterior file with probgraphics.plots)."
        )
    for flag, value in (("--workers", args.workers), ("--chunk-size", args.chunk_size)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}.")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}.")
    if args.workers is not None and args.scheduler is not None:
        raise UsageError(
            "--workers sizes the local cluster, but --scheduler runs on an existing one; "
            "give one of them."
        )
    files = _image_names(_folder_images(folder))
    out = _output_folder(args.out)
    crop_box = _parse_crop_box(args.crop_box)
    device = _resolve_cli_device(args.device)
    program, resolution, channels = _image_program(args)

    # Each file is loaded when infer_many submits it; a file that does not load fails alone (and
    # every image keeps its place, so its seed, whichever others load).
    images = {
        name: functools.partial(
            _load_pixels,
            path,
            resolution=resolution,
            channels=channels,
            crop=args.crop or "center",
            face_box=crop_box,
        )
        for name, path in files.items()
    }
    first = None
    for loader in images.values():
        try:
            first = loader()
            break
        except (OSError, ValueError, TypeError):
            continue
    if first is None:
        raise UsageError(
            f"none of the {len(files)} images in {str(folder)!r} can be read; check the files."
        )

    options, summary_text = _inference_options(args, program, device, first)
    options.pop("progress", None)
    seed = options.pop("seed")
    client = None
    where = f"a local cluster of {args.workers or 'one worker per core'}"
    if args.scheduler is not None:
        from distributed import Client

        try:
            client = Client(args.scheduler, timeout=SCHEDULER_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as error:
            raise UsageError(
                f"cannot reach the Dask scheduler at --scheduler {args.scheduler!r}: {error}"
            ) from None
        where = f"the Dask scheduler at {args.scheduler}"
    print(f"program: {program!r}")
    print(
        f"inferring {len(images)} images with {args.method}, {summary_text}, seed {seed} (each "
        f"image's seed derived from it), device {device}{_describe_sizes(options)}, on {where}"
    )
    try:
        result = infer_many(
            program,
            images,
            args.method,
            client=client,
            seed=seed,
            out=out,
            chunk_size=args.chunk_size or 1,
            workers=args.workers,
            threads_per_task=args.threads or 1,
            progress=not args.quiet,
            keep=False,  # the files are the result: memory stays flat over a large folder
            **options,
        )
    finally:
        if client is not None:
            client.close()
    records = {record["name"]: record for record in result.image_records()}
    for name in result.names:
        if name in result.completed:
            record = records[name]
            print(
                f"{name}: {record['n_simulations']} simulations in {record['wall_time']:.1f}s "
                f"-> {result.paths[name]}"
            )
        else:
            print(f"{name}: failed: {result.failures[name]}", file=sys.stderr)
    failed = len(result.failures)
    print(
        f"wrote {len(result.completed)} posteriors and {out / MANIFEST_NAME} in "
        f"{result.wall_time:.1f}s on {result.workers} worker(s)"
        + (f"; {failed} of {len(files)} images failed" if failed else "")
    )
    return 1 if failed else 0


def _posterior_figure(program, posterior, loaded, scalars: list[str], *, title: str):
    """The photo (crop box drawn), the observation, posterior renders of a few chains' last
    draws (when the program can render), and histograms of the scalar sites' posteriors."""
    import numpy as np
    import torch
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from probgraphics.imageio import read_image_array

    renders = None
    latent_sites = getattr(program, "latent_sites", None)
    render = getattr(program, "render", None)
    n_show = min(6, posterior.num_chains)
    final = {site: value[:n_show, -1] for site, value in posterior.samples.items()}
    if callable(render) and latent_sites and all(s in final for s in latent_sites):
        try:
            renders = render(**{s: final[s] for s in latent_sites}).detach().cpu()
            renders = renders.reshape(n_show, *renders.shape[-3:]).clamp(0, 1)
        except Exception as error:  # a figure without renders beats no figure at all
            print(
                f"probgraphics infer: note: could not render posterior draws ({error})",
                file=sys.stderr,
            )
            renders = None
    shown = scalars[:4]
    columns = 2 + (n_show if renders is not None else 0)
    rows = 2 if shown else 1
    fig = Figure(figsize=(max(1.6 * columns, 2.4 * len(shown)), 2.0 + 1.4 * (rows - 1) + 0.4))
    grid = fig.add_gridspec(rows, 1, height_ratios=[2.0, 1.4][:rows])
    top = grid[0].subgridspec(1, columns)

    photo, _ = read_image_array(loaded.report["path"])
    ax = fig.add_subplot(top[0, 0])
    if photo.shape[-1] == 1:
        ax.imshow(photo[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(photo)
    y0, x0, height, width = loaded.report["crop_box"]
    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), width, height, fill=False, color="red", lw=1))
    ax.set_title("input", fontsize=7)
    ax.set_axis_off()

    def show(axis, image: torch.Tensor, text: str) -> None:
        pixels = image.permute(1, 2, 0).numpy()
        if pixels.shape[-1] == 1:
            axis.imshow(pixels[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            axis.imshow(pixels, interpolation="nearest")
        axis.set_title(text, fontsize=6)
        axis.set_axis_off()

    show(fig.add_subplot(top[0, 1]), loaded.image, "observed")
    if renders is not None:
        titled = [s for s in scalars if s in final][:3]
        for i in range(n_show):
            text = "\n".join([f"chain {i}"] + [f"{s} {float(final[s][i]):+.3g}" for s in titled])
            show(fig.add_subplot(top[0, 2 + i]), renders[i], text)

    if shown:
        bottom = grid[1].subgridspec(1, len(shown))
        for j, site in enumerate(shown):
            draws = posterior.samples[site].reshape(-1).numpy()
            axis = fig.add_subplot(bottom[0, j])
            axis.hist(draws, bins=min(30, max(5, int(np.sqrt(draws.size)))), color="0.4")
            axis.set_title(f"{site}: {draws.mean():.3g} ± {draws.std():.2g}", fontsize=7)
            axis.tick_params(labelsize=6)
            axis.set_yticks([])
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------- train


def _recipes() -> dict[str, Callable[..., Any]]:
    try:
        from probgraphics.training import RECIPES
    except ImportError as error:
        raise RuntimeError(
            f"training recipes are not available: probgraphics.training cannot be imported "
            f"({error})."
        ) from None
    return RECIPES


def _train_epilog() -> str:
    try:
        recipes = _recipes()
    except RuntimeError as error:
        return str(error)
    lines = ["recipes:"]
    for name, recipe in sorted(recipes.items()):
        doc = (inspect.getdoc(recipe) or "").splitlines()
        lines.append(f"  {name:<18} {doc[0].replace('``', '') if doc else ''}")
    return "\n".join(lines)


#: Recipe keywords the train command sets from its own flags (not through --option).
_TRAIN_FLAG_KEYWORDS = (
    "out_path",
    "steps",
    "batch_size",
    "checkpoint",
    "resume",
    "seed",
    "progress",
    "command",
)


def _train(args: argparse.Namespace) -> int:
    """Run a training recipe; it writes the weights and a model card next to them."""
    from probgraphics.config import set_num_threads

    recipes = _recipes()
    if args.name not in recipes:
        raise UsageError(f"unknown recipe {args.name!r}; the recipes are {sorted(recipes)}.")
    recipe = recipes[args.name]
    set_num_threads(args.threads)
    out = _output_file(args.out or f"{args.name}.pt", "--out")
    keywords: dict[str, Any] = {"seed": args.seed, "progress": not args.quiet}
    for key in ("steps", "batch_size", "checkpoint", "resume"):
        value = getattr(args, key)
        if value is not None:
            keywords[key] = value
    for key, value in _parse_program_options(args.option, flag="--option").items():
        if key in _TRAIN_FLAG_KEYWORDS:
            raise UsageError(f"--option {key} is set by the command itself; drop it.")
        keywords[key] = value
    parameters = inspect.signature(recipe).parameters
    if "command" in parameters:
        keywords["command"] = " ".join(["probgraphics", *args.argv])
    unsupported = sorted(key for key in keywords if key not in parameters)
    if unsupported:
        flags = ", ".join("--" + key.replace("_", "-") for key in unsupported)
        raise UsageError(
            f"recipe {args.name!r} does not take {flags}; it takes "
            f"{sorted(p for p in parameters if p not in ('out_path', 'command'))}."
        )
    print(f"training {args.name} -> {out}")
    result = recipe(out, **keywords)
    losses = list(getattr(result, "losses", ()))
    tail = losses[-50:]
    loss_text = (
        f", mean loss of the last {len(tail)} steps {sum(tail) / len(tail):.4g}" if tail else ""
    )
    print(
        f"trained {args.name}: {getattr(result, 'steps', '?')} steps in "
        f"{getattr(result, 'wall_time', float('nan')):.1f}s{loss_text}"
    )
    cards = [str(out.with_suffix(s)) for s in (".md", ".json") if out.with_suffix(s).exists()]
    print("wrote " + ", ".join([str(out), *cards]))
    return 0


# ----------------------------------------------------------------------------------------- bench


def _benchmarks_dir() -> Path | None:
    """``benchmarks/`` of the source checkout this package runs from, or None (a wheel)."""
    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    return folder if folder.is_dir() else None


def _benchmark_names(folder: Path) -> dict[str, str]:
    """Benchmark name -> the first line of its docstring (read without importing it)."""
    names = {}
    for script in sorted(folder.glob("*.py")):
        if script.name.startswith("_"):
            continue
        try:
            doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
        except (SyntaxError, OSError, UnicodeDecodeError):
            doc = ""
        names[script.stem] = doc.splitlines()[0] if doc else ""
    return names


def _bench_epilog() -> str:
    folder = _benchmarks_dir()
    if folder is None:
        return "benchmarks/ is not present: run from a source checkout of probgraphics."
    lines = ["benchmarks (NAME --help shows a benchmark's own options):"]
    lines += [f"  {name:<16} {doc}" for name, doc in _benchmark_names(folder).items()]
    return "\n".join(lines)


def _bench(args: argparse.Namespace) -> int:
    """Run ``benchmarks/NAME.py`` of the source checkout with this Python."""
    folder = _benchmarks_dir()
    if folder is None:
        raise UsageError(
            "benchmarks/ is not present next to this installation (it ships with the source "
            "checkout, not the wheel); clone the repository and run `probgraphics bench` there."
        )
    names = _benchmark_names(folder)
    if args.name not in names:
        raise UsageError(f"unknown benchmark {args.name!r}; the benchmarks are {sorted(names)}.")
    script = folder / f"{args.name}.py"
    extra = list(args.args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    environment = dict(os.environ)
    # The script's own folder is first on its sys.path; the package must come from this
    # checkout even when it is not installed.
    root = str(folder.parent)
    environment["PYTHONPATH"] = os.pathsep.join(
        [root, *filter(None, [environment.get("PYTHONPATH")])]
    )
    print(f"running {sys.executable} {script} {' '.join(extra)}".rstrip(), file=sys.stderr)
    completed = subprocess.run(
        [sys.executable, str(script), *extra], env=environment, cwd=root, check=False
    )
    if completed.returncode < 0:  # killed by a signal
        return 1
    return completed.returncode


# ---------------------------------------------------------------------------------------- parser


def _add_common(parser: argparse.ArgumentParser, *, seed_default: int | None = 0) -> None:
    parser.add_argument(
        "--seed", type=int, default=seed_default, help="random seed (default: %(default)s)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch/numba threads (default: OMP_NUM_THREADS, else all cores)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``probgraphics`` argument parser (subcommands demo, infer, train, bench)."""
    parser = _Parser(
        prog="probgraphics",
        description="Probabilistic inverse graphics: scene programs, ABC-MCMC, encoder guides.",
        epilog=f"Exit codes: 0 success, 2 bad usage or input, 1 failure. Set "
        f"{_TRACEBACK_VARIABLE}=1 to see tracebacks.",
    )
    from probgraphics import __version__

    parser.add_argument("--version", action="version", version=f"probgraphics {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    demo = sub.add_parser(
        "demo",
        help="infer a simulated face scene with ABC-MCMC and write figures",
        description="Sample a face scene, infer it with ABC-MCMC by the recommended call "
        "infer(program, image, guide=face-guide-64, simulations=N) (pixel summary, one block "
        "per latent site, chains started from the guide's q(z | image) and the guide proposing), "
        "print the posterior against the truth, and write prior scenes, trace plot, posterior "
        "renders and posterior.nc to --out.",
    )
    demo.add_argument("--out", default="demo-output", help="output folder (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument("--resolution", type=int, default=64, help="pixels (default: %(default)s)")
    demo.add_argument(
        "--simulations",
        type=int,
        default=DEMO_SIMULATIONS,
        help="hard simulation budget, pilot included (default: %(default)s)",
    )
    demo.add_argument("--chains", type=int, help="chains (default: from the budget)")
    demo.add_argument("--draws", type=int, help="draws (default: from the budget)")
    demo.add_argument("--warmup", type=int, help="warm-up (default: from the budget)")
    demo.add_argument(
        "--summary",
        default="pixel",
        help="'pixel' or a pretrained encoder [NAME:group,...] (default: %(default)s)",
    )
    demo.add_argument(
        "--init",
        choices=("pilot", "prior", "guide"),
        default="guide",
        help="chain start; guide = draws of --guide's q(z | image) (default: %(default)s)",
    )
    demo.add_argument(
        "--guide",
        default="face-guide-64",
        help="guide that starts the chains and proposes, or 'none' (default: %(default)s)",
    )
    demo.add_argument(
        "--collapse",
        default=None,
        help="a latent drawn from its Gaussian conditional at every move, e.g. 'texture' "
        "(exact; more accurate per simulation, about 7x the time; default: none)",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.add_argument("--threads", type=int, default=None, help="torch/numba threads")
    demo.set_defaults(run=_demo)

    infer = sub.add_parser(
        "infer",
        help="infer a scene program's latents from a PNG/JPEG image, or a folder of them",
        description="Load IMAGE (PNG/JPEG; converted to the program's channels, cropped to a "
        "square and resized to the program's resolution, each choice printed), infer the "
        "program's latents with ABC, print the ArviZ summary of the scalar sites, and write the "
        "posterior (NetCDF, --out) and a figure of the image beside posterior renders and "
        "histograms (--figure).\n\n"
        "IMAGE may be a folder: every PNG/JPEG in it is inferred, one Dask task per image, on a "
        "local cluster of one single-threaded worker per core (--workers) or on a running Dask "
        "scheduler (--scheduler), each image on --threads torch/numba threads (default 1); "
        "--out is then a folder that gets NAME.nc per image (written "
        "atomically as each completes) and a manifest infer_many.json. Each image's seed is "
        "derived from --seed, so the results equal inferring the images one by one. An image "
        "that fails is reported and the others complete (exit code 1 if any failed).",
        epilog="IMAGE may be the word 'sample-photo': a face photograph that ships with "
        "matplotlib (grace_hopper.jpg), cropped by default to a box around the face.\n\n"
        "examples:\n  probgraphics infer sample-photo --program face --method abc_mcmc "
        "--summary dcign-face-64 --out posterior.nc\n"
        "  probgraphics infer photos/ --out posteriors/ --workers 2",
    )
    infer.add_argument(
        "image",
        metavar="IMAGE",
        help=f"PNG/JPEG file, '{SAMPLE_PHOTO_ARGUMENT}', or a folder of images",
    )
    infer.add_argument(
        "--program", default="face", help="registered scene program (default: %(default)s)"
    )
    infer.add_argument(
        "--program-option",
        action="append",
        metavar="KEY=VALUE",
        help="program configuration, repeatable (e.g. resolution=32; values are "
        "Python literals or strings)",
    )
    infer.add_argument(
        "--method",
        default="abc_mcmc",
        help="abc_mcmc, abc_slice, abc_rejection, or guide (the trained guide's amortized "
        "posterior, no simulations; see --guide) (default: %(default)s)",
    )
    infer.add_argument(
        "--guide",
        default="face-guide-64",
        help="trained guide for --method guide and --init guide: a bundled network name or a "
        "checkpoint path (default: %(default)s)",
    )
    infer.add_argument(
        "--summary",
        default="pixel",
        help="'pixel', or a pretrained network name such as dcign-face-64, "
        "optionally NAME:group,group for part of its code (default: %(default)s)",
    )
    infer.add_argument("--chains", type=int, help="chains (default: the method's, 64)")
    infer.add_argument("--draws", type=int, help="draws per chain (default: the method's, 500)")
    infer.add_argument("--warmup", type=int, help="warm-up steps (default: the method's, 500)")
    infer.add_argument(
        "--epsilon", type=float, help="ABC tolerance (default: annealed adaptively during warm-up)"
    )
    infer.add_argument(
        "--quantile", type=float, help="epsilon as this quantile of the pilot's distances"
    )
    infer.add_argument(
        "--init",
        choices=("pilot", "prior", "guide"),
        help="chain start: best pilot simulations, prior draws, or draws of the trained "
        "guide's q(z | image) (--guide) (default: pilot)",
    )
    infer.add_argument(
        "--pilot-size",
        type=int,
        help="prior simulations of the pilot (default: max(1000, 4 x chains))",
    )
    infer.add_argument(
        "--simulations",
        type=int,
        help="hard simulation budget, pilot included (abc_mcmc, abc_smc, abc_rejection; default "
        f"for the face program with abc_mcmc: {RECOMMENDED_SIMULATIONS}, with the guide starting "
        "the chains and proposing)",
    )
    infer.add_argument(
        "--collapse",
        help="abc_mcmc: a latent drawn from its Gaussian conditional at every move, e.g. "
        "'texture' for the face program (default: none)",
    )
    infer.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    infer.add_argument(
        "--out",
        help="posterior NetCDF file, written atomically (default: posterior.nc); for a folder "
        "of images, the output folder (required)",
    )
    infer.add_argument("--figure", help="figure file (default: --out with suffix .png)")
    infer.add_argument("--no-figure", action="store_true", help="write no figure")
    infer.add_argument(
        "--crop",
        choices=("center", "none"),
        help="centre square crop, or none (stretch); default center, or the "
        "face box for sample-photo",
    )
    infer.add_argument(
        "--crop-box",
        metavar="TOP,LEFT,HEIGHT,WIDTH",
        help="crop this box of the image (pixels) instead",
    )
    infer.add_argument(
        "--workers",
        type=int,
        help="folder of images: worker processes of the local Dask cluster (default: one per core)",
    )
    infer.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="folder of images: run on this Dask scheduler (e.g. tcp://host:8786) instead of a "
        "local cluster",
    )
    infer.add_argument(
        "--chunk-size",
        type=int,
        help="folder of images: images per Dask task (default: 1)",
    )
    _add_common(infer)
    infer.set_defaults(run=_infer)

    train = sub.add_parser(
        "train",
        help="train a bundled network with a named recipe",
        description="Run a training recipe of probgraphics.training.RECIPES: it writes the "
        "network's weights to --out and a model card (.md, .json) next to them.",
        lazy_epilog=_train_epilog,
    )
    train.add_argument("name", metavar="NAME", help="recipe name (listed below)")
    train.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    train.add_argument("--out", help="weights file (default: NAME.pt)")
    train.add_argument("--batch-size", type=int, help="batch size (default: the recipe's)")
    train.add_argument("--checkpoint", help="write training checkpoints to this file")
    train.add_argument("--resume", help="resume from this training checkpoint")
    train.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="a recipe keyword, repeatable (e.g. invariance_scale=0.01 or ratio=(1,1,1,10); "
        "values are Python literals or strings); recorded in the model card's command",
    )
    _add_common(train)
    train.set_defaults(run=_train)

    bench = sub.add_parser(
        "bench",
        help="run a benchmark script of the source checkout",
        description="Run benchmarks/NAME.py with this Python, passing ARGS on (e.g. --quick).",
        lazy_epilog=_bench_epilog,
    )
    bench.add_argument("name", metavar="NAME", help="benchmark name (listed below)")
    bench.add_argument(
        "args", nargs=argparse.REMAINDER, metavar="ARGS", help="arguments for the benchmark script"
    )
    bench.set_defaults(run=_bench)
    return parser


#: Errors from bad usage or bad input (exit code 2); anything else is a failure (exit code 1).
_USER_ERRORS = (
    UsageError,
    ValueError,
    TypeError,
    KeyError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def _one_line(error: BaseException) -> str:
    if isinstance(error, KeyError) and error.args:
        text = str(error.args[0])  # str(KeyError) would quote the message
    else:
        text = str(error)
    return " ".join(text.split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse exits 2 itself on bad usage)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    prefix = f"probgraphics {args.command}"
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as error:
        if os.environ.get(_TRACEBACK_VARIABLE) == "1":
            raise
        print(f"{prefix}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except Exception as error:
        if os.environ.get(_TRACEBACK_VARIABLE) == "1":
            raise
        print(
            f"{prefix}: failed: {type(error).__name__}: {_one_line(error)} (set "
            f"{_TRACEBACK_VARIABLE}=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
