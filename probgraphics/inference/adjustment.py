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
"""

from __future__ import annotations

import torch

__all__ = ["linear_regression_adjustment", "support_bounds"]


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
    design = torch.cat([torch.ones(n, 1, dtype=wide, device=device), offsets], dim=1)
    z = _to_unbounded(values.to(wide), lower, upper)
    root = weights.sqrt().unsqueeze(-1)
    coefficients = torch.linalg.lstsq(root * design, root * z).solution  # (K + 1, P)
    adjusted = z - offsets @ coefficients[1:]
    return _to_bounded(adjusted, lower, upper).to(dtype)


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
