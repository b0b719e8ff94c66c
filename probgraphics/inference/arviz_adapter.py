"""The one place that knows which ArviZ is installed.

ArviZ 0.x (the one on Python 3.11) holds an ``InferenceData`` of per-group datasets (built here
with ``az.dict_to_dataset`` per group, as ``az.from_dict(posterior=..., ...)`` does, minus its
chains-versus-draws warning) and reads and writes NetCDF itself (``InferenceData.to_netcdf`` /
``az.from_netcdf``). ArviZ 1.x (Python >= 3.12) builds an ``xarray.DataTree`` from one nested
dict (``az.from_dict({"posterior": {...}, ...})``) and leaves NetCDF to xarray
(``DataTree.to_netcdf`` / ``xarray.open_datatree``). Everything else in probgraphics builds
plain group dicts of numpy arrays and goes through the functions here.

ArviZ is imported lazily (on first use, not when probgraphics is imported): it pulls in
matplotlib and xarray, and ArviZ 0.23 prints a once-a-day FutureWarning at import time.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "GROUPS",
    "import_arviz",
    "arviz_major_version",
    "from_groups",
    "group_names",
    "group_dataset",
    "root_attrs",
    "netcdf_engine",
    "write_netcdf",
    "read_netcdf",
]

#: The groups probgraphics writes, in ArviZ's schema order.
GROUPS = ("posterior", "sample_stats", "observed_data", "prior")


def import_arviz() -> ModuleType:
    """Import and return the ``arviz`` module (looked up in ``sys.modules`` first, so a test can
    put a stand-in there)."""
    try:
        return importlib.import_module("arviz")
    except ImportError as err:  # a dependency, but say what to do if an install lost it
        raise ImportError(
            "probgraphics needs ArviZ for posterior diagnostics and files, but `import arviz` "
            f"failed ({err}); install it with `pip install arviz`."
        ) from err


def arviz_major_version(arviz_module: ModuleType | None = None) -> int:
    """The major version of ``arviz_module`` (default: the installed ArviZ): 0 or 1 (or later).

    Read from ``__version__``; where that is missing or unparsable, from the signature of
    ``from_dict`` (1.x takes the nested dict as its first parameter, ``data``; 0.x takes
    ``posterior``).
    """
    az = import_arviz() if arviz_module is None else arviz_module
    version = getattr(az, "__version__", "")
    head = str(version).split(".", 1)[0]
    if head.isdigit():
        return int(head)
    try:
        first = next(iter(inspect.signature(az.from_dict).parameters))
    except (AttributeError, TypeError, ValueError, StopIteration) as err:
        raise RuntimeError(
            f"cannot tell which ArviZ this is: __version__={version!r} and from_dict has no "
            "readable signature; install a released ArviZ (`pip install arviz`)."
        ) from err
    return 0 if first == "posterior" else 1


def from_groups(
    groups: Mapping[str, Mapping[str, np.ndarray]],
    *,
    dims: Mapping[str, Sequence[str]],
    attrs: Mapping[str, Any],
    group_attrs: Mapping[str, Mapping[str, Any]] | None = None,
    arviz_module: ModuleType | None = None,
) -> Any:
    """Build ArviZ data from group dicts: ``InferenceData`` on ArviZ 0.x, ``DataTree`` on 1.x.

    Args:
        groups: group name (one of :data:`GROUPS`) -> variable name -> numpy array. Arrays in
            ``posterior``, ``sample_stats`` and ``prior`` are ``(chain, draw, *event)``; arrays in
            ``observed_data`` have no sample dims. Empty groups are left out.
        dims: variable name -> names of its event dims (not ``chain``/``draw``), one mapping for
            all groups as ArviZ's ``from_dict`` takes it; a variable not listed, or listed with
            a different number of event dims than it has in some group, gets ArviZ's default
            names ``{var}_dim_{k}`` there.
        attrs: attributes of the whole result (the root of the file).
        group_attrs: group name -> extra attributes of that group.
        arviz_module: the ``arviz`` module to use (default: the installed one; tests pass a
            stand-in to exercise the 1.x branch).

    Returns:
        ``arviz.InferenceData`` (0.x) or ``xarray.DataTree`` (1.x).
    """
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"from_groups got unknown groups {unknown}; expected some of {GROUPS}.")
    az = import_arviz() if arviz_module is None else arviz_module
    group_attrs = {} if group_attrs is None else group_attrs
    present = {name: dict(data) for name, data in groups.items() if data}
    if arviz_major_version(az) >= 1:
        # 1.x: one nested dict, attrs keyed by group ("/" for the root). check_conventions only
        # guesses whether chain and draw were swapped (it warns when chains outnumber draws, as
        # in a short run of many chains); our layout is fixed, so the guess is skipped.
        nested_attrs = {"/": dict(attrs)}
        nested_attrs.update(
            {group: dict(extra) for group, extra in group_attrs.items() if group in present}
        )
        shared_dims = {
            name: list(names)
            for name, names in dims.items()
            if all(
                data[name].ndim - _sample_rank(group) == len(names)
                for group, data in present.items()
                if name in data
            )
        }
        return az.from_dict(present, dims=shared_dims, attrs=nested_attrs, check_conventions=False)
    # 0.x: az.from_dict warns "More chains than draws" whenever chains outnumber draws (its guess
    # that the array was passed transposed), and has no switch for it. So each group is
    # converted by az.dict_to_dataset with every dim named (chain and draw included) and no
    # default dims to guess about, and the groups are put together as az.from_dict would.
    datasets = {}
    for group, data in present.items():
        sample_dims = ["chain", "draw"][: _sample_rank(group)]
        group_dims = {}
        for name, array in data.items():
            event_rank = array.ndim - len(sample_dims)
            names = list(dims.get(name, ()))
            if len(names) != event_rank:
                names = [f"{name}_dim_{k}" for k in range(event_rank)]
            group_dims[name] = sample_dims + names
        datasets[group] = az.dict_to_dataset(
            data, dims=group_dims, default_dims=[], attrs=dict(group_attrs.get(group, {}))
        )
    return az.InferenceData(attrs=dict(attrs), **datasets)


def _sample_rank(group: str) -> int:
    """Number of leading sample dims (chain, draw) the arrays of ``group`` have."""
    return 0 if group == "observed_data" else 2


def group_names(data: Any) -> list[str]:
    """Names of the groups in ``data`` (an ``InferenceData`` or a ``DataTree``)."""
    if hasattr(data, "children") and hasattr(data, "to_dataset"):  # xarray.DataTree
        return list(data.children)
    return list(data.groups())


def group_dataset(data: Any, group: str) -> Any:
    """The ``xarray.Dataset`` of ``group`` in ``data`` (``InferenceData`` or ``DataTree``), or
    ``None`` when the group is absent."""
    if group not in group_names(data):
        return None
    node = data[group]
    return node.to_dataset() if hasattr(node, "to_dataset") else node


def root_attrs(data: Any) -> dict[str, Any]:
    """The whole-result attributes of ``data`` (``InferenceData.attrs`` / the tree root's)."""
    return dict(getattr(data, "attrs", {}) or {})


def netcdf_engine() -> str:
    """The xarray NetCDF engine to use: ``"h5netcdf"`` (an ArviZ 0.x dependency) or, failing
    that, ``"netcdf4"``. Both write NetCDF4/HDF5 files with groups, which a posterior needs
    (scipy's NetCDF3 engine has no groups)."""
    for module, engine in (("h5netcdf", "h5netcdf"), ("netCDF4", "netcdf4")):
        if importlib.util.find_spec(module) is not None:
            return engine
    raise ImportError(
        "saving or loading a posterior needs a NetCDF4 engine, and neither h5netcdf nor netCDF4 "
        "is installed; install one with `pip install h5netcdf`."
    )


def write_netcdf(data: Any, path: str | os.PathLike[str]) -> None:
    """Write ``data`` (from :func:`from_groups`) to a NetCDF file at ``path`` (overwritten).

    ``InferenceData.to_netcdf`` (0.x) and ``DataTree.to_netcdf`` (1.x) take the same two
    arguments here. Not atomic by itself: callers write to a temporary path and rename it.
    """
    data.to_netcdf(os.fspath(path), engine=netcdf_engine())


def read_netcdf(
    path: str | os.PathLike[str], *, arviz_module: ModuleType | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a NetCDF file written by :func:`write_netcdf` fully into memory.

    Returns:
        ``(groups, attrs)``: group name -> ``xarray.Dataset`` (values loaded, file closed), and
        the root attributes. Errors from the file layer (not HDF5, truncated, ...) propagate.
    """
    az = import_arviz() if arviz_module is None else arviz_module
    engine = netcdf_engine()
    if arviz_major_version(az) >= 1:
        import xarray as xr

        tree = xr.open_datatree(os.fspath(path), engine=engine)
        try:
            tree.load()
            groups = {name: node.to_dataset() for name, node in tree.children.items()}
            return groups, dict(tree.attrs)
        finally:
            tree.close()
    # Eager loading makes from_netcdf read every group and close the file before returning.
    with az.rc_context({"data.load": "eager"}):
        idata = az.from_netcdf(os.fspath(path), engine=engine)
    groups = {name: idata[name] for name in idata.groups()}
    return groups, dict(idata.attrs)
