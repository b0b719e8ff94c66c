"""The result of inference: posterior samples per site, sample statistics, the observation, the
settings and timings of the run; its ArviZ view; and its NetCDF file.

A :class:`Posterior` holds CPU tensors. :meth:`Posterior.to_arviz` turns it into ArviZ data with
groups ``posterior``, ``sample_stats``, ``observed_data`` (and ``prior`` when the pilot draws were
kept), dims ``(chain, draw, {site}_dim_0, ...)``. :meth:`Posterior.save` writes that data to a
NetCDF file atomically and :meth:`Posterior.load` reads it back into an equal ``Posterior``.
"""

from __future__ import annotations

import errno
import json
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from probgraphics.atomic import atomic_path
from probgraphics.inference import arviz_adapter

__all__ = ["Posterior", "FORMAT_NAME", "FORMAT_VERSION"]

#: Value of the root attribute ``probgraphics_format`` that marks a saved posterior.
FORMAT_NAME = "probgraphics.Posterior"
#: Version of the file layout; :meth:`Posterior.load` refuses files from a newer one.
FORMAT_VERSION = 1

# Sample statistics every engine records, with the dtype kind each must have.
_REQUIRED_STATS = {"distance": "float", "accepted": "bool", "epsilon": "float"}
_OPTIONAL_STAT_KINDS = {"beta": "float"}
# xarray coordinates of the sample dims: a variable of the same name would clash with them.
_RESERVED_NAMES = ("chain", "draw")


def _dtype_kind(t: Tensor) -> str:
    if t.dtype == torch.bool:
        return "bool"
    if t.is_floating_point():
        return "float"
    if t.is_complex():
        return "complex"
    return "int"


def _cpu_copy(t: Tensor) -> Tensor:
    """A detached, contiguous CPU copy (never a view of the caller's buffer)."""
    t = t.detach()
    if t.device.type == "cpu":
        return t.clone(memory_format=torch.contiguous_format)
    return t.to("cpu").contiguous()


def _to_numpy(t: Tensor) -> np.ndarray:
    """A numpy copy of a CPU tensor; bfloat16 (no numpy dtype) becomes float32."""
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy().copy()


def _check_name(what: str, name: object) -> str:
    if not isinstance(name, str) or not name:
        raise TypeError(f"{what} names must be non-empty strings, got {name!r}.")
    if name in _RESERVED_NAMES:
        raise ValueError(
            f"{what} name {name!r} is reserved for ArviZ's sample dimensions {_RESERVED_NAMES}; "
            "rename it."
        )
    return name


def _check_tensor_dict(what: str, value: object, *, allow_empty: bool = False) -> dict:
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{what} must be a dict of site name -> torch.Tensor, got {type(value).__name__}."
        )
    if not value and not allow_empty:
        raise ValueError(f"{what} is empty; it needs at least one site.")
    for name, tensor in value.items():
        _check_name(what, name)
        if not isinstance(tensor, Tensor):
            raise TypeError(
                f"{what}[{name!r}] must be a torch.Tensor, got {type(tensor).__name__}; "
                "convert it with torch.as_tensor."
            )
    return dict(value)


def _check_sample_tensors(what: str, tensors: dict[str, Tensor]) -> tuple[int, int]:
    """Checks ``(chains, draws, *event)`` float tensors with shared, non-empty leading dims."""
    leading: tuple[int, int] | None = None
    first = ""
    for name, t in tensors.items():
        if t.dim() < 2:
            raise ValueError(
                f"{what}[{name!r}] must be shaped (chains, draws, *event), got shape "
                f"{tuple(t.shape)}; add the missing leading dims (e.g. t[None, None])."
            )
        if not t.is_floating_point():
            raise ValueError(
                f"{what}[{name!r}] must be a floating-point tensor, got {t.dtype}; "
                "cast it with .float()."
            )
        if t.shape[0] < 1 or t.shape[1] < 1:
            raise ValueError(
                f"{what}[{name!r}] has shape {tuple(t.shape)}: it needs at least one chain and "
                "one draw."
            )
        if leading is None:
            leading, first = (int(t.shape[0]), int(t.shape[1])), name
        elif (int(t.shape[0]), int(t.shape[1])) != leading:
            raise ValueError(
                f"{what} sites disagree on (chains, draws): {first!r} has {leading}, {name!r} has "
                f"{tuple(t.shape[:2])}; every site must come from the same run."
            )
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(
                f"{what}[{name!r}] has {bad} non-finite values (NaN or inf); posterior and prior "
                "draws of latent sites must be finite, which points to a bug in the engine."
            )
    assert leading is not None
    return leading


def _normalize_settings(settings: object) -> dict[str, Any]:
    if not isinstance(settings, Mapping):
        raise TypeError(f"settings must be a dict, got {type(settings).__name__}.")
    for key, value in settings.items():
        if not isinstance(key, str):
            raise TypeError(f"settings keys must be strings, got {key!r}.")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"settings[{key!r}] = {value!r} is not JSON-serializable ({err}); store plain "
                "numbers, strings, lists or dicts (e.g. a callable's name, a tensor's .tolist())."
            ) from err
    # A JSON round trip makes the stored settings exactly what a saved file gives back
    # (tuples become lists).
    return json.loads(json.dumps(dict(settings)))


def _check_real(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be finite and >= 0, got {value!r}.")
    return value


class Posterior:
    """Posterior samples of a run, with its sample statistics, observation and settings.

    Args:
        samples: site name -> tensor ``(chains, draws, *event)``, floating point, finite, any
            device; every site has the same ``chains`` and ``draws`` (both >= 1).
        sample_stats: name -> tensor ``(chains, draws)``: ``"distance"`` float, ``"accepted"``
            bool and ``"epsilon"`` float are required; ``"beta"`` float when the kernel has one;
            other keys float, int or bool.
        observation: observed site name -> observed tensor (e.g. ``"image"`` ``(C, H, W)``).
        method: the inference method's name, e.g. ``"abc_mcmc"``.
        settings: the options the run used, JSON-serializable (stored JSON-normalized: tuples
            come back as lists).
        n_simulations: simulations the run spent (pilot included), int >= 0.
        wall_time: seconds the run took, finite and >= 0.
        prior: pilot prior draws, site name -> tensor ``(1, n, *event)`` (any leading chain
            count is accepted), or ``None`` when not kept.
        timings: named phase durations in seconds (e.g. ``{"pilot": 1.2, "sampling": 9.8}``).

    All tensors are stored as detached contiguous CPU copies with their dtypes unchanged.
    """

    def __init__(
        self,
        samples: dict[str, Tensor],
        sample_stats: dict[str, Tensor],
        observation: dict[str, Tensor],
        *,
        method: str,
        settings: dict,
        n_simulations: int,
        wall_time: float,
        prior: dict[str, Tensor] | None = None,
        timings: dict[str, float] | None = None,
    ) -> None:
        samples = _check_tensor_dict("samples", samples)
        chains, draws = _check_sample_tensors("samples", samples)

        sample_stats = _check_tensor_dict("sample_stats", sample_stats)
        missing = [name for name in _REQUIRED_STATS if name not in sample_stats]
        if missing:
            raise ValueError(
                f"sample_stats lacks {missing}; every engine records {list(_REQUIRED_STATS)} "
                "per chain and draw."
            )
        for name, t in sample_stats.items():
            if tuple(t.shape) != (chains, draws):
                raise ValueError(
                    f"sample_stats[{name!r}] must be shaped (chains, draws) = {(chains, draws)} "
                    f"like the samples, got {tuple(t.shape)}."
                )
            kind = _dtype_kind(t)
            wanted = _REQUIRED_STATS.get(name) or _OPTIONAL_STAT_KINDS.get(name)
            if wanted is not None and kind != wanted:
                raise ValueError(
                    f"sample_stats[{name!r}] must be a {wanted} tensor, got {t.dtype}."
                )
            if kind == "complex":
                raise ValueError(
                    f"sample_stats[{name!r}] is complex ({t.dtype}); statistics must be float, "
                    "int or bool."
                )

        observation = _check_tensor_dict("observation", observation, allow_empty=True)
        for name, t in observation.items():
            if _dtype_kind(t) == "complex":
                raise ValueError(f"observation[{name!r}] is complex ({t.dtype}); expected real.")

        if not isinstance(method, str) or not method:
            raise TypeError(f"method must be a non-empty string, got {method!r}.")
        if isinstance(n_simulations, bool) or not isinstance(n_simulations, numbers.Integral):
            raise TypeError(f"n_simulations must be an int, got {n_simulations!r}.")
        if n_simulations < 0:
            raise ValueError(f"n_simulations must be >= 0, got {n_simulations}.")

        if prior is not None:
            prior = _check_tensor_dict("prior", prior)
            _check_sample_tensors("prior", prior)
            for name, t in prior.items():
                if name in samples and t.shape[2:] != samples[name].shape[2:]:
                    raise ValueError(
                        f"prior[{name!r}] has event shape {tuple(t.shape[2:])} but the samples "
                        f"have {tuple(samples[name].shape[2:])}; they must match."
                    )

        if timings is None:
            timings = {}
        if not isinstance(timings, Mapping):
            raise TypeError(f"timings must be a dict of str -> seconds, got {timings!r}.")
        checked_timings: dict[str, float] = {}
        for name, seconds in timings.items():
            if not isinstance(name, str):
                raise TypeError(f"timings keys must be strings, got {name!r}.")
            checked_timings[name] = _check_real(f"timings[{name!r}]", seconds)

        self._samples = {name: _cpu_copy(t) for name, t in samples.items()}
        self._sample_stats = {name: _cpu_copy(t) for name, t in sample_stats.items()}
        self._observation = {name: _cpu_copy(t) for name, t in observation.items()}
        self._prior = None if prior is None else {name: _cpu_copy(t) for name, t in prior.items()}
        self._method = method
        self._settings = _normalize_settings(settings)
        self._n_simulations = int(n_simulations)
        self._wall_time = _check_real("wall_time", wall_time)
        self._timings = checked_timings
        self._shape = (chains, draws)

    # ------------------------------------------------------------------ accessors

    @property
    def samples(self) -> dict[str, Tensor]:
        """Site name -> ``(chains, draws, *event)`` CPU tensor (a new dict; tensors shared)."""
        return dict(self._samples)

    @property
    def sample_stats(self) -> dict[str, Tensor]:
        """Statistic name -> ``(chains, draws)`` CPU tensor, as given to the constructor."""
        return dict(self._sample_stats)

    @property
    def observation(self) -> dict[str, Tensor]:
        """Observed site name -> the observed CPU tensor."""
        return dict(self._observation)

    @property
    def prior(self) -> dict[str, Tensor] | None:
        """Pilot prior draws, site name -> ``(1, n, *event)`` CPU tensor, or ``None``."""
        return None if self._prior is None else dict(self._prior)

    @property
    def method(self) -> str:
        return self._method

    @property
    def settings(self) -> dict[str, Any]:
        """The run's options (a copy; JSON-normalized)."""
        return json.loads(json.dumps(self._settings))

    @property
    def n_simulations(self) -> int:
        return self._n_simulations

    @property
    def wall_time(self) -> float:
        """Seconds the run took."""
        return self._wall_time

    @property
    def simulations_per_second(self) -> float:
        """``n_simulations / wall_time``; NaN when ``wall_time`` is 0."""
        return self._n_simulations / self._wall_time if self._wall_time > 0 else math.nan

    @property
    def timings(self) -> dict[str, float]:
        """Named phase durations in seconds (a copy)."""
        return dict(self._timings)

    @property
    def num_chains(self) -> int:
        return self._shape[0]

    @property
    def num_draws(self) -> int:
        return self._shape[1]

    def __getitem__(self, site: str) -> Tensor:
        """The ``(chains, draws, *event)`` samples of ``site``."""
        try:
            return self._samples[site]
        except KeyError:
            raise KeyError(
                f"no site {site!r} in this posterior; its sites are {list(self._samples)}."
            ) from None

    def __repr__(self) -> str:
        sites = ", ".join(
            name + (str(tuple(t.shape[2:])) if t.dim() > 2 else "")
            for name, t in self._samples.items()
        )
        return (
            f"Posterior(method={self._method!r}, chains={self.num_chains}, "
            f"draws={self.num_draws}, sites=[{sites}], n_simulations={self._n_simulations}, "
            f"wall_time={self._wall_time:.3g}s)"
        )

    # ------------------------------------------------------------------ ArviZ

    def _groups(self) -> dict[str, dict[str, np.ndarray]]:
        stats = {name: _to_numpy(t) for name, t in self._sample_stats.items()}
        if "acceptance_rate" not in stats:
            # ArviZ's name for the per-draw acceptance probability. Our kernels accept or not, so
            # per draw it is the 0/1 indicator: its mean over draws is the chain's acceptance
            # rate, which a running average would not be.
            stats["acceptance_rate"] = stats["accepted"].astype(np.float64)
        groups = {
            "posterior": {name: _to_numpy(t) for name, t in self._samples.items()},
            "sample_stats": stats,
            "observed_data": {name: _to_numpy(t) for name, t in self._observation.items()},
        }
        if self._prior is not None:
            groups["prior"] = {name: _to_numpy(t) for name, t in self._prior.items()}
        return groups

    @staticmethod
    def _event_dims(groups: dict[str, dict[str, np.ndarray]]) -> dict[str, list[str]]:
        """``{var}_dim_{k}`` names for each variable's event dims. Both ArviZ versions share one
        dims mapping across groups; a name used with different event ranks in two groups (a
        latent site called ``beta`` of shape (3,) and the scalar ``beta`` statistic) is left out,
        and each group then gets the same default names from the adapter or ArviZ."""
        ranks: dict[str, set[int]] = {}
        for group, data in groups.items():
            sample_rank = 0 if group == "observed_data" else 2
            for name, array in data.items():
                ranks.setdefault(name, set()).add(array.ndim - sample_rank)
        return {
            name: [f"{name}_dim_{k}" for k in range(next(iter(rank)))]
            for name, rank in ranks.items()
            if len(rank) == 1 and next(iter(rank)) > 0
        }

    def _attrs(self) -> dict[str, Any]:
        return {
            "probgraphics_format": FORMAT_NAME,
            "probgraphics_format_version": FORMAT_VERSION,
            "method": self._method,
            "n_simulations": self._n_simulations,
            "wall_time": self._wall_time,
            "simulations_per_second": self.simulations_per_second,
            "settings": json.dumps(self._settings),
            "timings": json.dumps(self._timings),
            # Which sample_stats were given (acceptance_rate may be derived), so load restores
            # exactly those.
            "probgraphics_sample_stats": json.dumps(list(self._sample_stats)),
            # ArviZ 0.x stores a 0-d observation as shape (1,); the shapes undo that on load.
            "probgraphics_observation_shapes": json.dumps(
                {name: list(t.shape) for name, t in self._observation.items()}
            ),
        }

    def to_arviz(self) -> Any:
        """ArviZ data of this posterior.

        Groups: ``posterior`` (each site ``(chain, draw, {site}_dim_0, ...)``), ``sample_stats``
        (the given statistics, ``accepted`` kept as bool, plus ``acceptance_rate``: the accepted
        indicator as float64 unless given), ``observed_data``, and ``prior`` when kept.
        Attributes (of the whole result, and of the posterior group): method, n_simulations,
        wall_time, simulations_per_second, settings and timings (JSON strings).

        Returns:
            ``arviz.InferenceData`` with ArviZ 0.x, ``xarray.DataTree`` with ArviZ 1.x.
        """
        groups = self._groups()
        attrs = self._attrs()
        shown = ("method", "n_simulations", "wall_time", "simulations_per_second", "settings")
        posterior_attrs = {key: attrs[key] for key in (*shown, "timings")}
        posterior_attrs["sampling_time"] = self._wall_time  # the name PyMC and ArviZ use
        posterior_attrs["inference_library"] = "probgraphics"
        return arviz_adapter.from_groups(
            groups,
            dims=self._event_dims(groups),
            attrs=attrs,
            group_attrs={"posterior": posterior_attrs},
        )

    def summary(self, var_names: str | list[str] | None = None, **kwargs: Any) -> Any:
        """``az.summary`` of the posterior group: a pandas DataFrame, one row per scalar element
        (``v[0]``, ``m[0, 1]``, ...), with ``mean``, ``sd``, HDI, ``mcse_*``, ``ess_bulk``,
        ``ess_tail`` and ``r_hat`` columns by default.

        ``kwargs`` go to ``az.summary`` (e.g. ``kind``, ``hdi_prob``, ``round_to``). With one
        chain (rejection ABC) R-hat is undefined; on ArviZ 0.x the diagnostics that one chain
        does define are computed with ``az.ess``/``az.mcse`` and ``r_hat`` is NaN, instead of
        letting ``az.summary`` log its shape-validation warning for every variable.
        """
        az = arviz_adapter.import_arviz()
        if isinstance(var_names, str):
            var_names = [var_names]
        if var_names is not None and kwargs.get("filter_vars") is None:
            unknown = [
                name for name in var_names if not name.startswith("~") and name not in self._samples
            ]
            if unknown:
                raise KeyError(
                    f"summary got var_names {unknown} that are not sites of this posterior; "
                    f"its sites are {list(self._samples)}."
                )
        data = self.to_arviz()
        if (
            self.num_chains == 1
            and arviz_adapter.arviz_major_version(az) == 0
            and kwargs.get("kind", "all") in ("all", "diagnostics")
            and kwargs.get("extend", True)
            and not kwargs.get("circ_var_names")
        ):
            return self._single_chain_summary(az, data, var_names, dict(kwargs))
        return az.summary(data, var_names=var_names, **kwargs)

    @staticmethod
    def _single_chain_summary(az: Any, data: Any, var_names: Any, kwargs: dict) -> Any:
        # az.summary hands each stat_func one variable element's draws, flattened over
        # (chain, draw): with one chain, that chain in order.
        def draws(flat: np.ndarray) -> np.ndarray:
            return np.asarray(flat)[np.newaxis, :]

        def mcse_sd(flat: np.ndarray) -> float:
            # az.summary's own formula (the ESS of the squared deviations); az.mcse(method="sd")
            # is not used because ArviZ 0.23's numba path of it fails on numpy 2.
            squared = (draws(flat) - np.mean(flat)) ** 2
            variance = squared.mean()
            variance_of_variance = ((squared**2).mean() - variance**2) / az.ess(
                squared, method="mean"
            )
            return float(np.sqrt(variance_of_variance / variance / 4))

        if kwargs.get("stat_focus", "mean") == "median":
            diagnostics = {
                "mcse_median": lambda x: az.mcse(draws(x), method="median"),
                "ess_median": lambda x: az.ess(draws(x), method="median"),
                "ess_tail": lambda x: az.ess(draws(x), method="tail"),
                "r_hat": lambda x: np.nan,
            }
        else:
            diagnostics = {
                "mcse_mean": lambda x: az.mcse(draws(x), method="mean"),
                "mcse_sd": mcse_sd,
                "ess_bulk": lambda x: az.ess(draws(x), method="bulk"),
                "ess_tail": lambda x: az.ess(draws(x), method="tail"),
                "r_hat": lambda x: np.nan,
            }
        user_funcs = kwargs.pop("stat_funcs", None)
        if isinstance(user_funcs, Mapping):
            diagnostics.update(user_funcs)
        elif user_funcs is not None:
            diagnostics.update({func.__name__: func for func in user_funcs})
        kind = kwargs.pop("kind", "all")
        kwargs.pop("extend", None)
        # kind="stats" keeps mean/sd/HDI and skips the multichain diagnostics; the diagnostics
        # come from stat_funcs, after the stats as in az.summary's own column order. For
        # kind="diagnostics", extend=False drops the stats columns.
        return az.summary(
            data,
            var_names=var_names,
            kind="stats",
            extend=kind == "all",
            stat_funcs=diagnostics,
            **kwargs,
        )

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write this posterior to a NetCDF file at ``path`` (through ArviZ), atomically.

        The file is written next to ``path`` under a temporary name and renamed into place, so
        ``path`` is either the old file or the complete new one, never a partial one; on failure
        the temporary file is removed. Returns ``path`` as a :class:`~pathlib.Path`.
        """
        path = Path(os.fspath(path))
        if path.is_dir():
            raise IsADirectoryError(
                errno.EISDIR,
                f"cannot save a posterior to {path}: it is a directory; give a "
                "file name such as posterior.nc",
                str(path),
            )
        directory = path.parent
        if not directory.is_dir():
            raise FileNotFoundError(
                errno.ENOENT,
                f"cannot save a posterior to {path}: directory {directory} does "
                "not exist; create it first",
                str(directory),
            )
        named = (self._samples, self._sample_stats, self._observation, self._prior or {})
        slashed = sorted({name for data in named for name in data if "/" in name})
        if slashed:
            raise ValueError(
                f"cannot save sites {slashed}: NetCDF uses '/' to separate groups, so names with "
                "'/' cannot be stored; rename those sites in the program."
            )
        data = self.to_arviz()
        # Synced to disk before the rename makes it visible.
        with atomic_path(path) as temporary:
            arviz_adapter.write_netcdf(data, temporary)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Posterior:
        """Read a posterior written by :meth:`save`.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the file is not a readable NetCDF file (corrupt or truncated), is not a
                probgraphics posterior, or its contents are inconsistent.
        """
        path = Path(os.fspath(path))
        if not path.exists():
            raise FileNotFoundError(
                errno.ENOENT,
                f"no posterior file at {path}; check the path (Posterior.save writes these files)",
                str(path),
            )
        if path.is_dir():
            raise IsADirectoryError(
                errno.EISDIR, f"{path} is a directory, not a posterior file", str(path)
            )
        try:
            groups, attrs = arviz_adapter.read_netcdf(path)
        except ImportError:
            raise
        except Exception as err:  # h5py/xarray raise OSError, ValueError, KeyError, ...
            raise ValueError(
                f"{path} could not be read as a NetCDF posterior file ({type(err).__name__}: "
                f"{err}); it may be truncated or corrupt. Re-create it with Posterior.save."
            ) from err
        if attrs.get("probgraphics_format") != FORMAT_NAME:
            raise ValueError(
                f"{path} is a NetCDF file but not a probgraphics posterior (its root attribute "
                f"probgraphics_format is {attrs.get('probgraphics_format')!r}, expected "
                f"{FORMAT_NAME!r}); open other ArviZ files with arviz.from_netcdf."
            )
        try:
            version = int(attrs["probgraphics_format_version"])
            if version > FORMAT_VERSION:
                raise ValueError(
                    f"it has format version {version}, newer than this probgraphics reads "
                    f"({FORMAT_VERSION}); upgrade probgraphics"
                )
            return cls._from_file_contents(groups, attrs)
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(
                f"{path} is a probgraphics posterior file but cannot be restored: {err}"
            ) from err

    @classmethod
    def _from_file_contents(cls, groups: dict[str, Any], attrs: dict[str, Any]) -> Posterior:
        def tensors(group: str, *, sampled: bool) -> dict[str, Tensor]:
            dataset = groups[group]
            out = {}
            for name in dataset.data_vars:
                array = dataset[name]
                if sampled:
                    array = array.transpose("chain", "draw", ...)
                # np.array copies: xarray's buffers may be read-only, which torch warns about.
                out[str(name)] = torch.from_numpy(np.array(array.values))
            return out

        for group in ("posterior", "sample_stats"):
            if group not in groups:
                raise KeyError(f"the {group!r} group is missing")
        stats = tensors("sample_stats", sampled=True)
        given_stats = json.loads(attrs["probgraphics_sample_stats"])
        missing = [name for name in given_stats if name not in stats]
        if missing:
            raise KeyError(f"sample_stats {missing} are missing")
        observation = tensors("observed_data", sampled=False) if "observed_data" in groups else {}
        shapes = json.loads(attrs["probgraphics_observation_shapes"])
        if set(shapes) != set(observation):
            raise KeyError(
                f"observed sites {sorted(observation)} do not match the recorded {sorted(shapes)}"
            )
        observation = {name: t.reshape(shapes[name]) for name, t in observation.items()}
        return cls(
            tensors("posterior", sampled=True),
            {name: stats[name] for name in given_stats},
            observation,
            method=str(attrs["method"]),
            settings=json.loads(attrs["settings"]),
            n_simulations=int(attrs["n_simulations"]),
            wall_time=float(attrs["wall_time"]),
            prior=tensors("prior", sampled=True) if "prior" in groups else None,
            timings=json.loads(attrs["timings"]),
        )
