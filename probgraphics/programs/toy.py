"""A conjugate toy program with a closed-form posterior, for testing ABC engines exactly.

``z ~ N(mu0, Sigma0)`` (a MultivariateNormal with a fixed, non-identity covariance) and
``x ~ N(A z, noise^2 I)`` observed at site ``"x"``; ``mu0``, ``Sigma0`` and ``A`` are fixed by the
seed. The posterior is Gaussian. ABC with the Gaussian kernel ``exp(-||s - s_obs||^2 / (2 eps^2))``
on the identity summary with the L2 distance targets *exactly* the posterior of the same model
with noise variance ``noise^2 + eps^2`` (the kernel is a Gaussian density in ``x_obs - x_sim``,
so it adds an independent ``N(0, eps^2 I)`` to the simulator's noise). :meth:`analytic_posterior`
gives both.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch

from probgraphics.programs.registry import register

__all__ = ["LinearGaussian", "linear_gaussian"]


class LinearGaussian:
    """The linear-Gaussian program; call it (no arguments) to run it as a Pyro model.

    Attributes (float32 on :attr:`device` unless noted):
        prior_mean: ``(dim,)`` ``mu0``.
        prior_covariance: ``(dim, dim)`` ``Sigma0``, eigenvalues spread over ``[0.5, 2]``.
        matrix: ``(obs_dim, dim)`` ``A``, entries ``N(0, 1 / dim)``.
        noise: the observation noise standard deviation (float).
    """

    def __init__(
        self,
        dim: int = 10,
        obs_dim: int | None = None,
        noise: float = 0.5,
        seed: int = 0,
        *,
        device: str | torch.device = "cpu",
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        obs_dim = dim if obs_dim is None else obs_dim
        if isinstance(obs_dim, bool) or not isinstance(obs_dim, int) or obs_dim < 1:
            raise ValueError(f"obs_dim must be None (= dim) or an int >= 1, got {obs_dim!r}")
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not noise > 0:
            raise ValueError(f"noise must be a positive number, got {noise!r}")
        if not math.isfinite(noise):
            raise ValueError(f"noise must be finite, got {noise!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {seed!r}")
        self.dim = dim
        self.obs_dim = obs_dim
        self.noise = float(noise)
        self.seed = seed
        generator = torch.Generator().manual_seed(seed)
        mean = 0.5 * torch.randn(dim, generator=generator, dtype=torch.float64)
        rotation, _ = torch.linalg.qr(
            torch.randn(dim, dim, generator=generator, dtype=torch.float64)
        )
        eigenvalues = torch.linspace(0.5, 2.0, dim, dtype=torch.float64)
        covariance = rotation @ torch.diag(eigenvalues) @ rotation.T
        covariance = 0.5 * (covariance + covariance.T)
        matrix = torch.randn(obs_dim, dim, generator=generator, dtype=torch.float64)
        matrix = matrix / math.sqrt(dim)
        # float64 masters for the analytic posterior; float32 copies for simulation.
        self._mean64, self._covariance64, self._matrix64 = mean, covariance, matrix
        self.device = torch.device(device)
        self.prior_mean = mean.to(self.device, torch.float32)
        self.prior_covariance = covariance.to(self.device, torch.float32)
        self.prior_scale_tril = torch.linalg.cholesky(covariance).to(self.device, torch.float32)
        self.matrix = matrix.to(self.device, torch.float32)

    def __repr__(self) -> str:
        return (
            f"linear_gaussian(dim={self.dim}, obs_dim={self.obs_dim}, noise={self.noise}, "
            f"seed={self.seed})"
        )

    def __call__(self) -> torch.Tensor:
        """The model: latent ``"z"`` ``(*batch, dim)``, observed ``"x"`` ``(*batch, obs_dim)``."""
        z = pyro.sample(
            "z", dist.MultivariateNormal(self.prior_mean, scale_tril=self.prior_scale_tril)
        )
        mean = z @ self.matrix.T
        return pyro.sample("x", dist.Normal(mean, self.noise).to_event(1))

    def to(self, device: str | torch.device) -> LinearGaussian:
        """The same program with its constants on ``device``."""
        return LinearGaussian(self.dim, self.obs_dim, self.noise, self.seed, device=device)

    def analytic_posterior(
        self, observation: torch.Tensor | dict[str, torch.Tensor], abc_epsilon: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean ``(dim,)`` and covariance ``(dim, dim)`` of ``z`` given ``x``, float64.

        Args:
            observation: ``x`` as a tensor ``(obs_dim,)`` or ``{"x": tensor}``.
            abc_epsilon: the tolerance of a Gaussian ABC kernel on the identity summary with the
                L2 distance; the result is then the exact ABC target (noise variance
                ``noise^2 + abc_epsilon^2``). 0 gives the true posterior; ``inf`` the prior.
        """
        if isinstance(observation, dict):
            if set(observation) != {"x"}:
                raise ValueError(
                    f"observation dict must have exactly the site 'x', got {sorted(observation)}"
                )
            observation = observation["x"]
        if not isinstance(observation, torch.Tensor) or tuple(observation.shape) != (self.obs_dim,):
            got = tuple(observation.shape) if isinstance(observation, torch.Tensor) else observation
            raise ValueError(f"observation must be a tensor shaped ({self.obs_dim},), got {got}")
        if isinstance(abc_epsilon, bool) or not isinstance(abc_epsilon, (int, float)):
            raise TypeError(f"abc_epsilon must be a number >= 0, got {abc_epsilon!r}")
        if not abc_epsilon >= 0:
            raise ValueError(f"abc_epsilon must be >= 0, got {abc_epsilon!r}")
        x = observation.detach().to("cpu", torch.float64)
        prior_precision = torch.linalg.inv(self._covariance64)
        if math.isinf(abc_epsilon):
            return self._mean64.clone(), self._covariance64.clone()
        variance = self.noise**2 + float(abc_epsilon) ** 2
        matrix = self._matrix64
        precision = prior_precision + matrix.T @ matrix / variance
        covariance = torch.linalg.inv(precision)
        covariance = 0.5 * (covariance + covariance.T)
        mean = covariance @ (prior_precision @ self._mean64 + matrix.T @ x / variance)
        return mean, covariance


@register("linear_gaussian")
def linear_gaussian(
    dim: int = 10, obs_dim: int | None = None, noise: float = 0.5, seed: int = 0
) -> LinearGaussian:
    """Build the linear-Gaussian toy program (see :class:`LinearGaussian`).

    >>> program = linear_gaussian(dim=3)
    >>> mean, covariance = program.analytic_posterior(torch.zeros(3))
    >>> tuple(mean.shape), tuple(covariance.shape)
    ((3,), (3, 3))
    """
    return LinearGaussian(dim=dim, obs_dim=obs_dim, noise=noise, seed=seed)
