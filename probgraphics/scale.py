"""Many images at once: :func:`infer_many` runs :func:`probgraphics.infer` on each image as a
Dask task, on a machine's cores or on any Dask cluster.

* **Tasks.** Images go to workers in chunks of ``chunk_size`` (default 1), one Dask task a chunk.
  The program and the options travel once, as one task whose result every chunk depends on (a
  computed result, not scattered data, so the scheduler recomputes it if the worker holding it
  dies). Each chunk runs ``infer`` on its images one after another with ``threads_per_task``
  torch/numba threads.
* **Seeds.** Image ``i`` is inferred with ``seed=image_seeds(seed, n)[i]``, derived from the one
  ``seed`` and ``i`` alone (not from the chunking or the workers), so the results equal the loop
  ``[infer(program, images[i], seed=seeds[i], **options) for i ...]`` bit for bit.
* **Faults.** A worker that dies mid-task loses nothing: the scheduler runs the chunk again on
  another worker (Dask retries a task whose worker died, up to
  ``distributed.scheduler.allowed-failures`` times, 3 by default), with the same seeds, so with
  the same result. A bad image (NaN pixels, a wrong shape, anything ``infer`` refuses or fails
  on) fails that image alone, with its error message; the other images complete.
* **Results.** An :class:`ImagePosteriors`: the posterior of every image that completed, the
  message of every image that failed, one ArviZ dataset over all of them with an ``image``
  dimension (:meth:`ImagePosteriors.to_arviz`, :meth:`ImagePosteriors.save`), and with
  ``out=DIR`` one NetCDF file per image written atomically as each completes, plus a manifest
  ``DIR/infer_many.json`` (name, seed, status, file or error of every image).

``dask.distributed`` is imported when :func:`infer_many` runs, not with probgraphics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import numbers
import os
import secrets
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probgraphics.atomic import atomic_path, atomic_write_text
from probgraphics.inference import arviz_adapter
from probgraphics.inference.posterior import Posterior

__all__ = [
    "MANIFEST_NAME",
    "ImagePosteriors",
    "image_seeds",
    "infer_many",
    "local_client",
    "local_worker_count",
]

#: The manifest ``infer_many(..., out=DIR)`` writes into ``DIR``.
MANIFEST_NAME = "infer_many.json"
#: Root attribute ``probgraphics_format`` of :meth:`ImagePosteriors.to_arviz` data.
FORMAT_NAME = "probgraphics.ImagePosteriors"

#: infer options that name one file: many images cannot share it.
_SINGLE_FILE_OPTIONS = ("checkpoint", "resume")
_KEY_PREFIX = "probgraphics-infer-many"
#: Attributes of one run, dropped from the stacked groups even where the images agree (they are
#: per image: see the ``images`` attribute).
_PER_RUN_ATTRS = (
    "n_simulations",
    "wall_time",
    "simulations_per_second",
    "sampling_time",
    "settings",
    "timings",
)


# ----------------------------------------------------------------------------------------- seeds


def image_seeds(seed: int, count: int) -> list[int]:
    """The seeds of images ``0 .. count - 1`` of an :func:`infer_many` call with ``seed``.

    Image ``i``'s seed depends on ``seed`` and ``i`` only: child ``i`` of
    ``numpy.random.SeedSequence(seed)`` (independent streams), as an int in ``[0, 2**62)`` like
    the seeds ``infer`` draws itself. ``infer(program, images[i], seed=image_seeds(seed, n)[i],
    ...)`` reproduces image ``i`` of the call.
    """
    seed = _check_seed(seed)
    count = _check_count("count", count, 0)
    children = np.random.SeedSequence(seed).spawn(count)
    return [int(child.generate_state(1, dtype=np.uint64)[0] >> np.uint64(2)) for child in children]


# ---------------------------------------------------------------------------------------- result


class ImagePosteriors:
    """The result of :func:`infer_many`: one posterior per image that completed, one error message
    per image that failed.

    Attributes:
        names: every image's name, in input order (``image_0``, ... unless given).
        seeds: every image's seed (``image_seeds(seed, len(names))``).
        seed: the seed they derive from.
        method: the inference method.
        completed: the names of the images that completed, in input order.
        posteriors: name -> :class:`~probgraphics.inference.posterior.Posterior` of each
            completed image held in memory: all of them, unless ``infer_many`` ran with
            ``keep=False`` (then none: ``result[name]`` reads its file).
        failures: name -> ``"ErrorType: message"`` of each image that failed.
        tracebacks: name -> the worker's traceback of each image whose ``infer`` raised.
        paths: name -> NetCDF file of each completed image (with ``out=``; else empty).
        manifest: the manifest file (with ``out=``; else None).
        wall_time: seconds the call took, cluster start included.
        workers: Dask workers when the images were submitted.
    """

    def __init__(
        self,
        *,
        names: Sequence[str],
        seeds: Sequence[int],
        seed: int,
        method: str,
        posteriors: Mapping[str, Posterior],
        runs: Mapping[str, Mapping[str, float]],
        failures: Mapping[str, str],
        paths: Mapping[str, Path],
        manifest: Path | None,
        wall_time: float,
        workers: int,
        tracebacks: Mapping[str, str] | None = None,
    ) -> None:
        self.names = tuple(names)
        self.seeds = tuple(seeds)
        self.seed = seed
        self.method = method
        self.completed = tuple(name for name in self.names if name in runs)
        self.posteriors = {name: posteriors[name] for name in self.names if name in posteriors}
        self._runs = {name: dict(runs[name]) for name in self.completed}
        self.failures = {name: failures[name] for name in self.names if name in failures}
        self.tracebacks = dict(tracebacks or {})
        self.paths = {name: paths[name] for name in self.names if name in paths}
        self.manifest = manifest
        self.wall_time = wall_time
        self.workers = workers

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, name: str) -> Posterior:
        """The posterior of image ``name`` (read from its file when not held in memory)."""
        if name in self.posteriors:
            return self.posteriors[name]
        if name in self.completed:
            return Posterior.load(self.paths[name])
        if name in self.failures:
            raise KeyError(f"image {name!r} failed: {self.failures[name]}")
        raise KeyError(f"no image named {name!r}; the images are {list(self.names)}.")

    def __repr__(self) -> str:
        return (
            f"ImagePosteriors(method={self.method!r}, images={len(self.names)}, "
            f"completed={len(self.completed)}, failed={len(self.failures)}, "
            f"wall_time={self.wall_time:.3g}s, workers={self.workers})"
        )

    def image_records(self) -> list[dict[str, Any]]:
        """One JSON-ready record per image: name, index, seed, status (``"ok"``, ``"failed"``
        or ``"not run"``), and the file, n_simulations and wall_time, or the error."""
        records = []
        for index, (name, seed) in enumerate(zip(self.names, self.seeds)):
            record: dict[str, Any] = {"name": name, "index": index, "seed": seed}
            if name in self.completed:
                record.update(status="ok", **self._runs[name])
                if name in self.paths:
                    record["file"] = self.paths[name].name
            elif name in self.failures:
                record.update(status="failed", error=self.failures[name])
            else:
                record["status"] = "not run"
            records.append(record)
        return records

    def to_arviz(self) -> Any:
        """One ArviZ dataset of every completed image, stacked along an ``image`` dimension.

        Groups as :meth:`Posterior.to_arviz` gives them; sampled variables are
        ``(chain, draw, image, *event)``, observed data ``(image, *event)``; the ``image``
        coordinate holds the images' names. Root attributes: ``probgraphics_format``,
        ``method``, ``seed`` and ``images`` (JSON: :meth:`image_records`); group attributes
        the images share are kept, others dropped (each image's settings are in ``images``
        and in its own file). Every image must have the same chains, draws and sites (the same
        options give them).

        Returns:
            ``arviz.InferenceData`` with ArviZ 0.x, ``xarray.DataTree`` with ArviZ 1.x.
        """
        import xarray as xr

        names = list(self.completed)
        if not names:
            raise ValueError(
                f"none of the {len(self.names)} images completed, so there is no posterior to "
                f"combine; the failures are {self.failures}."
            )
        datas = [self[name].to_arviz() for name in names]
        groups = arviz_adapter.group_names(datas[0])
        for name, data in zip(names, datas):
            if arviz_adapter.group_names(data) != groups:
                raise ValueError(
                    f"image {name!r} has the groups {arviz_adapter.group_names(data)} but "
                    f"image {names[0]!r} has {groups}; combine posteriors of one call's options."
                )
        combined = {}
        for group in groups:
            datasets = [arviz_adapter.group_dataset(data, group) for data in datas]
            try:
                stacked = xr.concat(
                    datasets, dim="image", join="exact", combine_attrs="drop_conflicts"
                )
            except ValueError as error:
                raise ValueError(
                    f"the images' {group} groups cannot be stacked ({error}); every image needs "
                    "the same chains, draws, sites and observation shape."
                ) from None
            # Plain fixed-width strings: NetCDF stores them on every engine.
            stacked = stacked.assign_coords(image=np.array(names, dtype=str))
            for key in _PER_RUN_ATTRS:
                stacked.attrs.pop(key, None)
            if "chain" in stacked.dims:
                stacked = stacked.transpose("chain", "draw", "image", ...)
            combined[group] = stacked
        attrs = {
            "probgraphics_format": FORMAT_NAME,
            "method": self.method,
            "seed": self.seed,
            "images": json.dumps(self.image_records()),
        }
        if arviz_adapter.arviz_major_version() >= 1:
            return xr.DataTree.from_dict({"/": xr.Dataset(attrs=attrs), **combined})
        az = arviz_adapter.import_arviz()
        return az.InferenceData(attrs=attrs, **combined)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_arviz` to one NetCDF file at ``path``, atomically (read it with
        ``arviz.from_netcdf``)."""
        path = Path(os.fspath(path))
        if path.is_dir():
            raise IsADirectoryError(
                f"cannot save the posteriors to {path}: it is a folder; give a file name such as "
                "posteriors.nc."
            )
        if not path.parent.is_dir():
            raise FileNotFoundError(
                f"cannot save the posteriors to {path}: folder {path.parent} does not exist; "
                "create it first."
            )
        data = self.to_arviz()
        with atomic_path(path) as temporary:
            arviz_adapter.write_netcdf(data, temporary)
        return path


# ----------------------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class _Shared:
    """What every task needs, sent to the workers once."""

    program: Callable[[], Any]
    method: str
    options: dict[str, Any]
    threads: int


@dataclass(frozen=True)
class _ImageTask:
    index: int
    name: str
    seed: int
    observation: Any


@dataclass(frozen=True)
class _Outcome:
    index: int
    posterior: Posterior | None
    error: str | None = None
    details: str | None = None  # the traceback on the worker


def _unpack_shared(payload: bytes) -> _Shared:
    import cloudpickle

    return cloudpickle.loads(payload)


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    """torch's and numba's threads set to ``count`` inside, restored after (a user's worker
    keeps its own settings)."""
    from probgraphics.config import set_num_threads

    previous_torch = torch.get_num_threads()
    try:
        import numba

        previous_numba = numba.get_num_threads()
    except ImportError:
        numba, previous_numba = None, None
    set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous_torch)
        if numba is not None:
            numba.set_num_threads(previous_numba)


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split()) or type(error).__name__}"


def _run_images(shared: _Shared, tasks: Sequence[_ImageTask]) -> list[_Outcome]:
    """The Dask task: ``infer`` on each image of a chunk; an image's error is its outcome."""
    from probgraphics.api import infer

    outcomes = []
    with _threads(shared.threads):
        for task in tasks:
            try:
                posterior = infer(
                    shared.program,
                    task.observation,
                    method=shared.method,
                    seed=task.seed,
                    progress=False,
                    **shared.options,
                )
            except Exception as error:  # this image failed; the chunk's others go on
                outcomes.append(
                    _Outcome(task.index, None, _error_text(error), traceback.format_exc())
                )
            else:
                outcomes.append(_Outcome(task.index, posterior))
    return outcomes


# ------------------------------------------------------------------------------------ validation


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise TypeError(f"seed must be a non-negative int or None, got {seed!r}.")
    return int(seed)


def _check_count(label: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{label} must be an int >= {minimum}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{label} must be >= {minimum}, got {value}.")
    return int(value)


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"image names must be non-empty strings, got {name!r}.")
    bad = [c for c in ("/", "\\", "\0") if c in name]
    if bad or name in (".", "..") or name.startswith("."):
        raise ValueError(
            f"image name {name!r} cannot name a file in out=; use names without path "
            "separators ('/', '\\') that do not start with '.'."
        )
    return name


def _named_images(images: Any) -> list[tuple[str, Any]]:
    """``images`` -> ``[(name, observation), ...]`` in order."""
    if isinstance(images, torch.Tensor):
        if images.dim() < 1 or images.shape[0] < 1:
            raise ValueError(
                f"a tensor of images must be shaped (N, C, H, W) with N >= 1, got "
                f"{tuple(images.shape)}."
            )
        items: list[Any] = list(images.unbind(0))
        named = None
    elif isinstance(images, Mapping):
        named = [(_check_name(name), value) for name, value in images.items()]
        items = [value for _, value in named]
    elif isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        items, named = list(images), None
    else:
        raise TypeError(
            "images must be a tensor (N, C, H, W), a list of observations (each a tensor for "
            "the 'image' site or a dict site -> tensor, as infer takes), or a dict name -> "
            f"observation; got {type(images).__name__}."
        )
    if not items:
        raise ValueError("images is empty; give at least one image.")
    # Each observation is checked as infer checks it, as that image's failure (a bad image fails
    # alone).
    if named is not None:
        return named
    width = len(str(len(items) - 1))
    return [(f"image_{i:0{width}d}", value) for i, value in enumerate(items)]


def _check_method_options(method: Any, options: Mapping[str, Any]) -> None:
    from probgraphics import api

    # The method's option names (infer checks the same on every worker; checked here once, so a
    # typo fails before a cluster starts).
    known = set(api.method_options(method))
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for method {method!r}; its options are "
            f"{sorted(known - {'seed', 'progress'})} (seed and progress are infer_many's own)."
        )
    single = [name for name in _SINGLE_FILE_OPTIONS if options.get(name) is not None]
    if single:
        raise ValueError(
            f"{single} name one file, which the images' runs cannot share; run infer on one "
            "image to checkpoint or resume it, or drop these options."
        )


def _prepare_out(out: Any) -> Path | None:
    if out is None:
        return None
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a folder path (str or os.PathLike) or None, got {out!r}.")
    folder = Path(os.fspath(out))
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(
            f"out={str(folder)!r} is a file; infer_many writes one NetCDF file per image into a "
            "folder: give a folder path."
        )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def local_worker_count() -> int:
    """The cores this process may run on (its CPU affinity), at least 1: the size of the
    LocalCluster :func:`infer_many` starts."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------------- infer_many


def infer_many(
    program: Callable[[], Any],
    images: Any,
    method: str = "abc_mcmc",
    *,
    client: Any = None,
    seed: int | None = None,
    out: str | os.PathLike[str] | None = None,
    chunk_size: int = 1,
    workers: int | None = None,
    threads_per_task: int = 1,
    progress: bool = True,
    keep: bool = True,
    **options: Any,
) -> ImagePosteriors:
    """Infer ``program``'s latents for each of many images, each image (or chunk) a Dask task.

    Args:
        program: a Pyro program, as :func:`probgraphics.infer` takes; it must pickle
            (cloudpickle) to reach the workers.
        images: a tensor ``(N, C, H, W)`` of images; a list of observations, each a tensor
            ``(C, H, W)`` for the ``"image"`` site or a dict site -> tensor; or a dict name ->
            observation (names become the files' names and the ``image`` coordinate; default
            ``image_0``, ``image_1``, ... zero-padded). An observation may also be a callable
            with no arguments that returns one (e.g. a file loader): it is called on the client
            when the images are submitted, and its error fails that image alone.
        method: the inference method, as for ``infer``.
        client: a ``dask.distributed.Client`` to run on (a LocalCluster's, a scheduler's
            address, dask-jobqueue, dask-cuda, ...). None: start a ``LocalCluster`` of
            ``workers`` single-threaded worker processes (default :func:`local_worker_count`)
            for this call and close it at the end.
        seed: the one seed the images' seeds derive from (:func:`image_seeds`); None: a random
            one, recorded in the result.
        out: a folder (created if missing): each completed image's posterior is written to
            ``out/NAME.nc`` atomically as it arrives, and a manifest ``out/infer_many.json`` at
            the end (also when interrupted, marking the images not run).
        chunk_size: images per Dask task (more amortizes a task's overhead on short runs; a
            dying worker then reruns the whole chunk).
        workers: size of the LocalCluster started when ``client`` is None (ignored otherwise).
        threads_per_task: torch/numba threads each task uses (restored after the task).
        progress: a progress bar over images on the client (the per-image runs show none).
        keep: hold every posterior in the result (default). ``keep=False`` needs ``out``: each
            posterior is dropped once its file is written, so the client's memory does not grow
            with the number of images (a face posterior is megabytes); ``result[name]`` and
            :meth:`ImagePosteriors.to_arviz` read the files back.
        **options: ``infer``'s options for ``method`` (``chains``, ``draws``, ``summary``,
            ``guide``, ``device``, ...), the same for every image; not ``checkpoint`` or
            ``resume`` (one file each).

    Returns:
        :class:`ImagePosteriors` (posteriors on CPU). Failed images are in its ``failures``
        and do not raise.

    Raises:
        TypeError / ValueError: bad ``images``, ``method``, option names, sizes or ``out``;
            a program or options that do not pickle. Checked before any cluster starts.
    """
    start = time.perf_counter()
    if not callable(program):
        raise TypeError(
            f"program must be a callable Pyro model (no required arguments), got "
            f"{type(program).__name__}; build one with e.g. probgraphics.programs.face()."
        )
    named = _named_images(images)
    names = [name for name, _ in named]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"image names must be unique; {duplicates} repeat.")
    _check_method_options(method, options)
    seed = secrets.randbelow(2**62) if seed is None else _check_seed(seed)
    chunk_size = _check_count("chunk_size", chunk_size, 1)
    threads_per_task = _check_count("threads_per_task", threads_per_task, 1)
    if workers is not None:
        workers = _check_count("workers", workers, 1)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}.")
    if not isinstance(keep, bool):
        raise TypeError(f"keep must be True or False, got {keep!r}.")
    if not keep and out is None:
        raise ValueError(
            "keep=False drops each posterior once its file is written, so it needs out=FOLDER; "
            "give out=, or keep=True to hold the posteriors in memory."
        )
    folder = _prepare_out(out)
    import distributed

    if client is not None and not isinstance(client, distributed.Client):
        raise TypeError(
            f"client must be a dask.distributed.Client or None (start a LocalCluster), got "
            f"{type(client).__name__}."
        )
    import cloudpickle

    shared = _Shared(program, method, dict(options), threads_per_task)
    try:
        payload = cloudpickle.dumps(shared)
    except Exception as error:
        raise TypeError(
            f"the program and options must pickle to travel to Dask workers, but pickling "
            f"failed ({_error_text(error)}); build the program at module level, or pass "
            "picklable options."
        ) from None

    seeds = image_seeds(seed, len(named))
    tasks = [
        _ImageTask(index, name, image_seed, observation)
        for index, ((name, observation), image_seed) in enumerate(zip(named, seeds))
    ]
    run = _Run(names, folder, keep)
    # Loaded, and refused on the client already: the check infer makes first, so its message.
    from probgraphics.api import normalize_observation

    submitted = []
    for task in tasks:
        observation = task.observation
        try:
            if callable(observation) and not isinstance(observation, (torch.Tensor, Mapping)):
                observation = observation()
            normalize_observation(observation)
        except Exception as error:  # a loader's or the check's error fails this image alone
            run.fail(task.index, _error_text(error))
        else:
            submitted.append(dataclasses.replace(task, observation=observation))

    result_workers = 0
    with contextlib.ExitStack() as stack:
        if client is None:
            client = stack.enter_context(local_client(workers, threads_per_worker=1))
        try:
            result_workers = len(client.scheduler_info(n_workers=-1)["workers"])
        except TypeError:  # older distributed: no n_workers argument
            result_workers = len(client.scheduler_info()["workers"])
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = stack.enter_context(tqdm(total=len(tasks), desc="images", unit="image"))
            bar.update(len(tasks) - len(submitted))
        try:
            _submit_and_collect(client, payload, submitted, chunk_size, run, bar)
        finally:
            run.wall_time = time.perf_counter() - start
            run.write_manifest(method, seed, seeds, result_workers)
    return run.result(seed, seeds, method, result_workers)


#: Dask's nanny sets this in every worker by default (65536: give freed memory back to the
#: system early). Measured on the face program: each inference ~30% slower (1.5 s against
#: 1.15 s an image), torch's allocations paying page faults again; :func:`local_client` leaves
#: glibc's default. Set it to null in a cluster's own Dask config for the same effect.
MALLOC_TRIM_VARIABLE = "MALLOC_TRIM_THRESHOLD_"


@contextlib.contextmanager
def local_client(workers: int | None = None, *, threads_per_worker: int = 1) -> Iterator[Any]:
    """A ``dask.distributed`` LocalCluster for inference, and its ``Client``; both closed on exit.

    ``workers`` worker processes (default :func:`local_worker_count`), each with
    ``threads_per_worker`` threads, its OpenMP/MKL threads set to match, the scheduler's HTTP
    server on a free port, and no ``MALLOC_TRIM_THRESHOLD_`` (see :data:`MALLOC_TRIM_VARIABLE`).
    The nanny writes its worker environment into this process's ``os.environ`` (it must, before
    spawning); the variables it wrote are restored on exit.
    """
    import dask
    from distributed import Client, LocalCluster

    workers = local_worker_count() if workers is None else _check_count("workers", workers, 1)
    threads = _check_count("threads_per_worker", threads_per_worker, 1)
    touched = set(dask.config.get("distributed.nanny.pre-spawn-environ")) | {"PYTHONHASHSEED"}
    saved = {key: os.environ.get(key) for key in touched}
    environment = {
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    trim = f"distributed.nanny.pre-spawn-environ.{MALLOC_TRIM_VARIABLE}"
    try:
        with dask.config.set({trim: None}):  # read when each nanny is built
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=threads,
                processes=True,
                dashboard_address=":0",  # any free port (two clusters may run at once)
                silence_logs=logging.ERROR,
                env=environment,
            )
        try:
            client = Client(cluster)
            try:
                yield client
            finally:
                client.close()
        finally:
            cluster.close()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _submit_and_collect(
    client: Any,
    payload: bytes,
    tasks: Sequence[_ImageTask],
    chunk_size: int,
    run: _Run,
    bar: Any,
) -> None:
    from distributed import as_completed

    if not tasks:
        return
    token = secrets.token_hex(6)
    with warnings.catch_warnings():
        # The program travels once, inside this task's spec, on purpose (see the module doc).
        warnings.filterwarnings("ignore", message="Sending large graph")
        shared = client.submit(
            _unpack_shared, payload, key=f"{_KEY_PREFIX}-shared-{token}", pure=False
        )
    chunks = {}
    futures = []
    for number, begin in enumerate(range(0, len(tasks), chunk_size)):
        chunk = list(tasks[begin : begin + chunk_size])
        future = client.submit(
            _run_images, shared, chunk, key=f"{_KEY_PREFIX}-images-{token}-{number}", pure=False
        )
        chunks[future.key] = chunk
        futures.append(future)
    try:
        for future in as_completed(futures):
            chunk = chunks[future.key]
            if future.status == "finished":
                outcomes = future.result()
            else:
                error = future.exception()
                text = _error_text(error)
                if type(error).__name__ == "KilledWorker":
                    text = (
                        "the worker processes running this image died repeatedly (it may need "
                        f"more memory than a worker has); {text}"
                    )
                outcomes = [_Outcome(task.index, None, text) for task in chunk]
            for outcome in outcomes:
                if outcome.posterior is not None:
                    run.complete(outcome.index, outcome.posterior)
                else:
                    run.fail(outcome.index, outcome.error or "failed", outcome.details)
            future.release()
            if bar is not None:
                bar.update(len(chunk))
                if run.failures:
                    bar.set_postfix(failed=len(run.failures))
    finally:
        for future in futures:
            future.cancel()
        shared.cancel()


class _Run:
    """What the client has collected so far, and the files it has written."""

    def __init__(self, names: Sequence[str], folder: Path | None, keep: bool) -> None:
        self.names = list(names)
        self.folder = folder
        self.keep = keep
        self.posteriors: dict[str, Posterior] = {}
        self.runs: dict[str, dict[str, float]] = {}
        self.failures: dict[str, str] = {}
        self.paths: dict[str, Path] = {}
        self.tracebacks: dict[str, str] = {}
        self.manifest: Path | None = None
        self.wall_time = math.nan

    def complete(self, index: int, posterior: Posterior) -> None:
        name = self.names[index]
        if self.folder is not None:
            try:
                self.paths[name] = posterior.save(self.folder / f"{name}.nc")
            except Exception as error:  # a posterior that cannot be written fails its image
                self.failures[name] = f"inferred, but writing its file failed: {_error_text(error)}"
                return
        self.runs[name] = {
            "n_simulations": posterior.n_simulations,
            "wall_time": posterior.wall_time,
        }
        if self.keep:
            self.posteriors[name] = posterior

    def fail(self, index: int, message: str, details: str | None = None) -> None:
        self.failures[self.names[index]] = message
        if details is not None:
            self.tracebacks[self.names[index]] = details

    def result(self, seed: int, seeds: Sequence[int], method: str, workers: int) -> ImagePosteriors:
        return ImagePosteriors(
            names=self.names,
            seeds=seeds,
            seed=seed,
            method=method,
            posteriors=self.posteriors,
            runs=self.runs,
            failures=self.failures,
            paths=self.paths,
            manifest=self.manifest,
            wall_time=self.wall_time,
            workers=workers,
            tracebacks=self.tracebacks,
        )

    def write_manifest(self, method: str, seed: int, seeds: Sequence[int], workers: int) -> None:
        if self.folder is None:
            return
        records = self.result(seed, seeds, method, workers).image_records()
        document = {
            "format": "probgraphics.infer_many",
            "method": method,
            "seed": seed,
            "workers": workers,
            "wall_time": self.wall_time,
            "completed": sum(record["status"] == "ok" for record in records),
            "failed": sum(record["status"] == "failed" for record in records),
            "images": records,
        }
        self.manifest = atomic_write_text(
            self.folder / MANIFEST_NAME, json.dumps(document, indent=2) + "\n"
        )
