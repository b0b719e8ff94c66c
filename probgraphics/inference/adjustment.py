"""Linear regression adjustment of ABC draws (Beaumont, Zhang & Balding 2002).

An ABC draw ``theta_i`` was accepted because its simulation's summary ``s_i`` came close to the
observed ``s_obs``, not equal to it; the spread that ``s_i - s_obs`` adds to the draws is what
makes ABC posteriors wider than the true one. Regressing the draws on their summaries,

    theta_i = alpha + (s_i - s_obs) beta + e_i,      weights w_i = 1 - (d_i / d_max)^2

(the Epanechnikov kernel of each draw's distance ``d_i``, by weighted least squares), and moving
each draw to where its summary would have been the observed one,

    theta_i_adjusted = theta_i - (s_i - s_obs) beta,

removes that spread where ``theta`` depends on the summary linearly near ``s_obs``: exactly for a
linear-Gaussian model, approximately elsewhere. Parameters bounded by their prior are adjusted on
an unbounded scale (log for one bound, logit for an interval, as R's ``abc`` package does), so an
adjusted draw stays inside the prior's support.

>>> import torch
>>> theta = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
>>> summaries = theta + torch.tensor([[0.5], [-0.5], [0.5], [-0.5]])
>>> adjusted = linear_regression_adjustment(
...     theta, summaries, torch.tensor([1.5]), torch.tensor([0.1, 0.2, 0.3, 0.4]))
>>> tuple(adjusted.shape)
(4, 1)

**Per mode** (``modes=True``, ``adjust="linear_modes"`` in :func:`probgraphics.infer`). One
regression fits one slope, which a multimodal posterior breaks: where the simulator folds the
parameters (two_moons' ``|theta_1 + theta_2|``), ``E[theta | s]`` lies between the modes and the
slope fitted across them moves no draw the right way. :func:`posterior_modes` splits the kept
draws into the connected components of their nearest-neighbour graph, and each mode gets its own
regression. The per-mode regression works on the parameters' own scale: for a simulator whose
output is a function of the parameters plus noise that does not depend on them, the relation is
linear there within a mode, and a logit stretches it near the bounds. A draw the adjustment would
move outside the prior's support keeps its unadjusted value (still an ABC draw at the
tolerance).
"""

from __future__ import annotations

import math

import torch

__all__ = ["linear_regression_adjustment", "posterior_modes", "support_bounds"]

#: Neighbours per draw in the graph whose connected components are the modes: enough that
#: random gaps in a mode's thin tail do not split it (10 split the tails of a 1-D mode), and at
#: most a twentieth of the draws (so a mode of a tenth of them is not joined to its neighbour).
MODE_NEIGHBOURS = 50
#: A mode holds at least this fraction of the draws: a smaller component is a piece of a mode's
#: tail cut off by a gap, and a regression on it alone would be fitted on the selected parameter.
MODE_MIN_FRACTION = 0.05
#: Draws whose distance to their ``MODE_NEIGHBOURS``-th neighbour is above this quantile are left
#: out of the graph (and then join their nearest draw's mode): a few stray draws between two
#: modes would otherwise bridge them into one component.
MODE_CORE_QUANTILE = 0.9
#: A mode needs this many draws per regression coefficient; smaller components join the nearest
#: large one (a few stray draws are not a mode, and cannot fit a slope).
MODE_DRAWS_PER_COEFFICIENT = 10


def _bound_kinds(
    lower: torch.Tensor, upper: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masks of the coordinates bounded on both sides, below only and above only."""
    finite_low, finite_high = torch.isfinite(lower), torch.isfinite(upper)
    return finite_low & finite_high, finite_low & ~finite_high, ~finite_low & finite_high


def _to_unbounded(values: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    both, low_only, high_only = _bound_kinds(lower, upper)
    span = torch.where(both, upper - lower, torch.ones_like(upper))
    fraction = ((values - torch.where(both, lower, 0.0)) / span).clamp(1e-12, 1 - 1e-12)
    out = torch.where(both, torch.logit(fraction), values)
    out = torch.where(low_only, torch.log((values - lower).clamp_min(1e-300)), out)
    return torch.where(high_only, torch.log((upper - values).clamp_min(1e-300)), out)


def _to_bounded(z: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    both, low_only, high_only = _bound_kinds(lower, upper)
    out = torch.where(both, lower + (upper - lower) * torch.sigmoid(z), z)
    out = torch.where(low_only, lower + torch.exp(z), out)
    return torch.where(high_only, upper - torch.exp(z), out)


def linear_regression_adjustment(
    values: torch.Tensor,
    summaries: torch.Tensor,
    observed_summary: torch.Tensor,
    distance: torch.Tensor,
    *,
    lower: torch.Tensor | None = None,
    upper: torch.Tensor | None = None,
    modes: bool = False,
) -> torch.Tensor:
    """Adjust ABC draws by weighted linear regression on their summaries (see module doc).

    Args:
        values: ``(N, P)`` float, the accepted parameter draws (flattened latent values).
        summaries: ``(N, K)`` float, the summary of each draw's simulation.
        observed_summary: ``(K,)`` float, the observation's summary.
        distance: ``(N,)`` float, finite, each draw's distance to the observation.
        lower, upper: ``(P,)`` float bounds of the prior's support (``-inf`` / ``inf`` where
            unbounded; default unbounded). Bounded parameters are adjusted on the log or logit
            scale and stay inside their bounds.
        modes: regress within each of :func:`posterior_modes`'s modes, on the parameters' own
            scale; a draw moved outside ``[lower, upper]`` keeps its value (module doc).

    Returns:
        ``(N, P)`` adjusted draws, in ``values``'s dtype and device.

    Raises:
        ValueError: shapes that do not match, non-finite inputs, or fewer draws with positive
            weight than the regression has coefficients (``K + 1``): keep more draws.
    """
    if values.dim() != 2 or summaries.dim() != 2 or values.shape[0] != summaries.shape[0]:
        raise ValueError(
            f"values must be (N, P) and summaries (N, K) with the same N, got "
            f"{tuple(values.shape)} and {tuple(summaries.shape)}."
        )
    n, dim = values.shape
    k = summaries.shape[1]
    if observed_summary.reshape(-1).shape[0] != k or distance.reshape(-1).shape[0] != n:
        raise ValueError(
            f"observed_summary must have K = {k} values and distance N = {n}, got shapes "
            f"{tuple(observed_summary.shape)} and {tuple(distance.shape)}."
        )
    inputs = (values, summaries, observed_summary, distance)
    if not all(bool(torch.isfinite(t).all()) for t in inputs):
        raise ValueError(
            "regression adjustment needs finite draws, summaries and distances; drop failed "
            "simulations (NaN distance) first."
        )
    dtype, device = values.dtype, values.device
    wide = torch.float64
    lower = torch.full((dim,), -torch.inf, dtype=wide) if lower is None else lower
    upper = torch.full((dim,), torch.inf, dtype=wide) if upper is None else upper
    lower = lower.to(device=device, dtype=wide).reshape(dim)
    upper = upper.to(device=device, dtype=wide).reshape(dim)

    distance = distance.to(wide).reshape(n)
    largest = distance.max()
    # Epanechnikov weights: the farthest kept draw gets weight 0. All at one distance: equal.
    if float(largest) > 0:
        weights = (1.0 - (distance / largest).square()).clamp_min(0.0)
    else:
        weights = torch.ones_like(distance)
    if int((weights > 0).sum()) <= k + 1:
        raise ValueError(
            f"regression adjustment fits {k + 1} coefficients per parameter but only "
            f"{int((weights > 0).sum())} of the {n} draws have positive weight; keep more draws "
            "(a larger keep_fraction or budget) or use a lower-dimensional summary."
        )
    offsets = summaries.to(wide) - observed_summary.to(device=device, dtype=wide).reshape(1, k)
    if not modes:
        z = _to_unbounded(values.to(wide), lower, upper)
        return _to_bounded(_regress_out(z, offsets, weights), lower, upper).to(dtype)
    raw = values.to(wide)
    labels = posterior_modes(raw, min_size=MODE_DRAWS_PER_COEFFICIENT * (k + 1))
    adjusted = raw.clone()
    for label in torch.unique(labels):
        members = labels == label
        if int((weights[members] > 0).sum()) <= k + 1:
            continue  # all its weight sits at the tolerance: nothing to fit (kept as simulated)
        adjusted[members] = _regress_out(raw[members], offsets[members], weights[members])
    inside = ((adjusted >= lower) & (adjusted <= upper)).all(dim=1, keepdim=True)
    return torch.where(inside, adjusted, raw).to(dtype)


def _regress_out(z: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``z - offsets @ beta``, with ``beta`` the weighted least-squares slope of ``z`` ``(N, P)``
    on ``[1, offsets]`` ``(N, 1 + K)`` (float64, weights ``(N,)``)."""
    design = torch.cat([torch.ones_like(offsets[:, :1]), offsets], dim=1)
    root = weights.sqrt().unsqueeze(-1)
    coefficients = torch.linalg.lstsq(root * design, root * z).solution  # (K + 1, P)
    return z - offsets @ coefficients[1:]


def posterior_modes(
    values: torch.Tensor,
    *,
    neighbours: int = MODE_NEIGHBOURS,
    min_size: int = 1,
    min_fraction: float = MODE_MIN_FRACTION,
) -> torch.Tensor:
    """Label each draw with its mode: the connected components of the ``neighbours``
    nearest-neighbour graph of the core draws (coordinates scaled to unit standard deviation; the
    core: draws whose ``neighbours``-th neighbour is within the :data:`MODE_CORE_QUANTILE` of
    those distances), components of fewer than ``max(min_size, min_fraction * N)`` draws, and
    the draws outside the core, joined to the mode of their nearest draw in a large component.

    Args:
        values: ``(N, P)`` float draws, finite.
        neighbours: edges per draw (at most ``N // 20``, at least 1).
        min_size, min_fraction: smallest mode, in draws and as a fraction of ``N``; with no
            component this large, every draw is one mode.

    Returns:
        ``(N,)`` int64 labels ``0 .. M - 1`` on ``values``'s device, modes numbered by their
        first draw.

    >>> import torch
    >>> draws = torch.cat([torch.randn(50, 2) - 10, torch.randn(50, 2) + 10])
    >>> posterior_modes(draws).unique().tolist()
    [0, 1]
    """
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    from probgraphics.inference.neighbours import scaled_neighbours

    if values.dim() != 2 or not bool(torch.isfinite(values).all()):
        raise ValueError(f"posterior_modes needs finite draws (N, P), got {tuple(values.shape)}.")
    n = values.shape[0]
    if n < 2:
        return torch.zeros(n, dtype=torch.int64, device=values.device)
    k = max(1, min(neighbours, n // 20))
    min_size = max(min_size, math.ceil(min_fraction * n))
    near = scaled_neighbours(values, k)
    points, radius, nearest = near.points, near.distances, near.indices
    core = radius[:, -1] <= np.quantile(radius[:, -1], MODE_CORE_QUANTILE)
    rows = np.repeat(np.arange(n), k)
    columns = nearest[:, 1:].reshape(-1)
    edge = core[rows] & core[columns]
    graph = coo_matrix((np.ones(int(edge.sum())), (rows[edge], columns[edge])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels, minlength=labels.max() + 1)
    large = core & (sizes[labels] >= min_size)
    if not large.any():
        return torch.zeros(n, dtype=torch.int64, device=values.device)
    if not large.all():
        _, index = cKDTree(points[large]).query(points[~large])
        labels[~large] = labels[large][index]
    # Number the modes by their first draw: labels do not depend on scipy's order.
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return torch.as_tensor(rank[inverse], dtype=torch.int64, device=values.device)


def support_bounds(trace, layout) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lower, upper)`` ``(latent_dim,)`` float64 bounds of each latent's prior support, in
    the layout's flattened order (``-inf`` / ``inf`` where unbounded), from a traced program."""
    lower = torch.full((layout.latent_dim,), -torch.inf, dtype=torch.float64)
    upper = torch.full((layout.latent_dim,), torch.inf, dtype=torch.float64)
    for site in layout.latent_sites:
        support = trace.nodes[site.name]["fn"].support
        while hasattr(support, "base_constraint"):  # constraints.independent(...)
            support = support.base_constraint
        span = slice(site.value_offset, site.value_offset + site.size)
        for bound, out in (("lower_bound", lower), ("upper_bound", upper)):
            value = getattr(support, bound, None)
            if value is not None:
                value = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
                out[span] = value.expand(site.event_shape).reshape(-1)
    return lower, upper
