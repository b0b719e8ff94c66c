"""A two-site conjugate Gaussian program and a deliberately biased guide for it (shared by the
blocked-move tests).

``a ~ N(0, I_2)``, ``b ~ N(1, 2^2)`` and ``x ~ N(M [a, b], noise^2 I_4)`` observed at ``"x"``: the
posterior of ``z = [a, b]`` is Gaussian and correlated across the two sites, so moves that update
one site at a time must still reach every correlation. With the Gaussian ABC kernel on the identity
summary and the L2 distance, the ABC target is the same model with noise variance
``noise^2 + eps^2`` (see ``probgraphics.programs.toy``).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

MATRIX = torch.tensor(
    [[1.0, 0.5, 0.3], [0.2, -1.0, 0.4], [0.7, 0.7, -0.2], [-0.3, 0.4, 0.6]], dtype=torch.float64
)
PRIOR_MEAN = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
PRIOR_COVARIANCE = torch.diag(torch.tensor([1.0, 1.0, 4.0], dtype=torch.float64))
NOISE = 0.5


def program():
    a = pyro.sample("a", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    b = pyro.sample("b", dist.Normal(1.0, 2.0))
    z = torch.cat([a, b.unsqueeze(-1)], dim=-1)
    mean = z @ MATRIX.T.to(z.dtype)
    return pyro.sample("x", dist.Normal(mean, NOISE).to_event(1))


OBSERVATION = torch.tensor([1.2, -0.4, 0.9, 0.3])


def gaussian_posterior(
    prior_mean: torch.Tensor,
    prior_covariance: torch.Tensor,
    matrix: torch.Tensor,
    variance: float,
    x: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (float64) of ``z ~ N(prior_mean, prior_covariance)`` given
    ``x ~ N(matrix z, variance I)``: the conjugate posterior, written out."""
    prior_mean, prior_covariance, matrix, x = (
        t.double() for t in (prior_mean, prior_covariance, matrix, x)
    )
    precision = torch.linalg.inv(prior_covariance) + matrix.T @ matrix / variance
    covariance = torch.linalg.inv(precision)
    prior_term = torch.linalg.solve(prior_covariance, prior_mean)
    return covariance @ (prior_term + matrix.T @ x / variance), covariance


def analytic_posterior(epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(3,)`` and covariance ``(3, 3)`` (float64) of ``[a, b]`` under the Gaussian ABC
    target with tolerance ``epsilon``."""
    return gaussian_posterior(
        PRIOR_MEAN, PRIOR_COVARIANCE, MATRIX, NOISE**2 + epsilon**2, OBSERVATION
    )


class BiasedGuide:
    """A guide whose q(z | x) is the analytic posterior shifted by ``shift`` posterior standard
    deviations and shrunk to ``scale`` of its spread: wrong on purpose, so a sampler that trusts
    it without the right acceptance ratio would be biased."""

    observed = "x"
    observed_shape = (4,)
    site_shapes = {"a": (2,), "b": ()}

    def __init__(self, epsilon: float, shift: float = 1.5, scale: float = 0.6) -> None:
        mean, covariance = analytic_posterior(epsilon)
        sd = covariance.diagonal().sqrt()
        self.mean = (mean + shift * sd).float()
        self.scale_tril = (scale * torch.linalg.cholesky(covariance)).float()

    def posterior(self, images, num_samples, *, generator=None):
        noise = torch.randn(num_samples, images.shape[0], 3, generator=generator)
        z = self.mean + noise @ self.scale_tril.T
        return {"a": z[..., :2], "b": z[..., 2]}
