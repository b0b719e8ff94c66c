"""Weighted populations of chains or particles: weights, effective sample size, adaptive
tempering of the ABC tolerance, resampling.

Shared by ABC-SMC (:mod:`probgraphics.inference.smc`, whose particles carry weights) and by the
ABC-MCMC run loop's warm-up (:mod:`probgraphics.inference.runner`, whose equal-weight chains are
reweighted by the kernel ratio when epsilon is lowered, then resampled). All functions are pure,
batched over the population's leading dimension ``P``, and keep the arithmetic in float64.
"""

from __future__ import annotations

import math

import torch

from probgraphics.inference.kernels.elliptical import ABC_KERNELS

__all__ = [
    "RESAMPLING_SCHEMES",
    "log_kernel",
    "normalized_weights",
    "weighted_moments",
    "effective_sample_size",
    "weighted_quantile",
    "gaussian_increment",
    "incremental_log_weights",
    "next_epsilon",
    "resample_indices",
]

RESAMPLING_SCHEMES = ("systematic", "multinomial")
#: Bisection iterations on ``log eps`` for the Gaussian kernel's next tolerance.
BISECTION_ITERATIONS = 64


def log_kernel(
    distance: torch.Tensor, epsilon: torch.Tensor | float, abc_kernel: str
) -> torch.Tensor:
    """``log K_eps(rho)`` per particle, float64 ``(P,)``: indicator ``0`` or ``-inf``; Gaussian
    ``-rho^2 / (2 eps^2)`` (``0`` at ``eps = inf``). A NaN distance gives ``-inf``."""
    rho = distance.to(torch.float64)
    epsilon = torch.as_tensor(epsilon, dtype=torch.float64, device=rho.device)
    if abc_kernel == "indicator":
        result = torch.where(rho <= epsilon, 0.0, -math.inf).to(torch.float64)
    elif abc_kernel == "gaussian":
        result = -0.5 * rho.square() * epsilon.square().reciprocal()
    else:
        raise ValueError(f"abc_kernel must be one of {ABC_KERNELS}, got {abc_kernel!r}")
    return torch.where(torch.isnan(rho), -math.inf, result)


def normalized_weights(log_weight: torch.Tensor) -> torch.Tensor:
    """Weights summing to one, ``(P,)`` float64 (all zero when every particle is dead)."""
    log_weight = log_weight.to(torch.float64)
    total = torch.logsumexp(log_weight, dim=0)
    return torch.exp(log_weight - total).nan_to_num(0.0)


def weighted_moments(u: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean ``(D,)`` and covariance ``(D, D)`` of a population ``u`` ``(P, D)`` with
    ``weights`` ``(P,)`` summing to one (float64 both). The covariance is the product as
    computed, symmetric only up to rounding."""
    mean = weights @ u
    centred = u - mean
    return mean, (centred * weights.unsqueeze(-1)).T @ centred


def effective_sample_size(log_weight: torch.Tensor) -> torch.Tensor:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` of log weights ``(..., P)``: ``(...)``
    float64, in ``[1, P]`` (0 when every weight is zero)."""
    log_weight = log_weight.to(torch.float64)
    value = torch.exp(
        2.0 * torch.logsumexp(log_weight, dim=-1) - torch.logsumexp(2.0 * log_weight, dim=-1)
    )
    return value.nan_to_num(0.0)


def weighted_quantile(values: torch.Tensor, log_weight: torch.Tensor, q: float) -> torch.Tensor:
    """The smallest of ``values`` ``(P,)`` whose cumulative normalized weight reaches ``q``: a
    ``()`` float64 tensor. NaN values rank last; zero-weight values never count."""
    weights = normalized_weights(log_weight)
    ranking = torch.nan_to_num(values.to(torch.float64), nan=math.inf)
    order = torch.argsort(ranking, stable=True)
    cumulative = torch.cumsum(weights[order], dim=0)
    # searchsorted: the first position whose cumulative weight is >= q (clamped for rounding).
    target = torch.tensor([q], dtype=torch.float64, device=values.device)
    position = torch.searchsorted(cumulative, target).clamp(max=values.shape[0] - 1)
    return ranking[order][position].squeeze(0)


def gaussian_increment(
    distance: torch.Tensor, epsilon: torch.Tensor, previous: torch.Tensor
) -> torch.Tensor:
    """``log K_eps(rho) - log K_prev(rho)`` for the Gaussian kernel, float64; ``epsilon`` may
    carry leading candidate dimensions ``(G, 1)`` against ``distance`` ``(P,)``."""
    rho2 = distance.to(torch.float64).square()
    return -0.5 * rho2 * (epsilon.square().reciprocal() - previous.square().reciprocal())


def incremental_log_weights(
    distance: torch.Tensor,
    epsilon: torch.Tensor | float,
    previous: torch.Tensor | float,
    abc_kernel: str,
) -> torch.Tensor:
    """``log K_eps(rho) - log K_previous(rho)`` per member ``(P,)`` float64, for members inside
    the previous tolerance (indicator kernel: the new indicator). NaN distances give ``-inf``."""
    if abc_kernel == "gaussian":
        previous = torch.as_tensor(previous, dtype=torch.float64, device=distance.device)
        epsilon = torch.as_tensor(epsilon, dtype=torch.float64, device=distance.device)
        increment = gaussian_increment(distance, epsilon, previous)
        return torch.where(torch.isnan(increment), -math.inf, increment)
    return log_kernel(distance, epsilon, abc_kernel)


def next_epsilon(
    distance: torch.Tensor,
    log_weight: torch.Tensor,
    epsilon: torch.Tensor | float,
    alpha: float,
    abc_kernel: str,
    floor: float = 0.0,
) -> torch.Tensor:
    """The next tolerance, ``()`` float64: ``max(candidate, floor)``.

    Indicator kernel: the candidate is :func:`weighted_quantile` of the distances at ``alpha``.
    Gaussian kernel: the largest tolerance below the current one whose reweighting leaves at most
    ``alpha`` of the current effective sample size (bisection on ``log eps``, all in tensors).
    """
    floor_tensor = torch.tensor(floor, dtype=torch.float64, device=distance.device)
    epsilon = torch.as_tensor(epsilon, dtype=torch.float64, device=distance.device)
    if abc_kernel == "indicator":
        return torch.maximum(weighted_quantile(distance, log_weight, alpha), floor_tensor)
    rho = distance.to(torch.float64)
    finite = torch.isfinite(rho) & torch.isfinite(log_weight)
    largest = torch.where(finite, rho, 0.0).max().clamp(min=1e-300)
    high = torch.where(torch.isfinite(epsilon), epsilon, 10.0 * largest)
    log_high = high.log()
    log_low = log_high - math.log(1e12)
    target = alpha * effective_sample_size(log_weight)
    log_weight = torch.where(finite, log_weight, -math.inf)
    safe_rho = torch.where(finite, rho, 0.0)
    for _ in range(BISECTION_ITERATIONS):
        middle = 0.5 * (log_low + log_high)
        increment = gaussian_increment(safe_rho, middle.exp(), epsilon)
        enough = effective_sample_size(log_weight + increment) >= target
        log_high = torch.where(enough, middle, log_high)
        log_low = torch.where(enough, log_low, middle)
    return torch.maximum(log_high.exp(), floor_tensor)


def resample_indices(
    generator: torch.Generator,
    log_weight: torch.Tensor,
    scheme: str = "systematic",
    count: int | None = None,
) -> torch.Tensor:
    """``count`` (default ``P``) ancestor indices int64 drawn in proportion to the weights ``(P,)``.

    ``"systematic"``: one uniform ``U``, positions ``(i + U) / count``; each particle appears
    ``floor`` or ``ceil`` of ``count * w`` times, so systematic resampling of equal weights into
    ``P`` returns every particle once. ``"multinomial"``: ``count`` independent draws.
    """
    particles = log_weight.shape[0]
    count = particles if count is None else count
    weights = normalized_weights(log_weight)
    if scheme == "multinomial":
        return torch.multinomial(weights, count, replacement=True, generator=generator)
    if scheme != "systematic":
        raise ValueError(f"resampling must be one of {RESAMPLING_SCHEMES}, got {scheme!r}")
    offset = torch.rand((), generator=generator, device=weights.device, dtype=torch.float64)
    positions = (torch.arange(count, device=weights.device, dtype=torch.float64) + offset) / count
    cumulative = torch.cumsum(weights, dim=0)
    cumulative = cumulative / cumulative[-1]
    index = torch.searchsorted(cumulative, positions, right=True)
    return index.clamp(max=particles - 1)
