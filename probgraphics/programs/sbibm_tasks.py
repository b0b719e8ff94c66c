"""Three tasks of the simulation-based-inference benchmark (sbibm, Lueckmann et al. 2021) as
programs: ``gaussian_linear``, ``two_moons`` and ``slcp``, written in torch from the task
definitions and built with :func:`~probgraphics.programs.simulator.simulator`.

Each task is a :class:`~probgraphics.programs.simulator.SimulatorProgram` (latent site
``"theta"``, observed site ``"x"``) with the task's facts attached::

    task = pg.programs.two_moons()
    x_obs = task.observation(1)                                   # (2,) float32
    posterior = pg.infer(task, {"x": x_obs}, method="abc_smc", simulations=100_000)
    reference = task.reference_samples(1)                         # (10000, 2): needs sbibm

* **Prior and simulator** follow sbibm 1.1 exactly, random draws included: each simulator draws
  its noise with the same torch calls in the same order as sbibm's, so with the same torch seed
  both give the same numbers (tested against sbibm when it is installed).
* **Observations** 1-10: sbibm draws observation ``n`` by seeding numpy and torch with the task's
  observation seed ``n``, drawing the true parameters from the prior and simulating once.
  :meth:`SBIBMTask.observation` repeats that draw with this module's code, so the tasks run
  without sbibm; ``source="sbibm"`` reads sbibm's stored file instead (the two agree to float32
  rounding; tested when sbibm is installed).
* **Reference posterior samples** (10,000 per observation) exist only in sbibm's files:
  :meth:`SBIBMTask.reference_samples` needs the optional ``sbibm`` package (``pip install -e
  '.[bench]'``). ``gaussian_linear`` also has its posterior in closed form
  (:meth:`GaussianLinearTask.analytic_posterior`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from pyro.distributions import MultivariateNormal, Normal, Uniform  # sbibm samples with these

from probgraphics.programs.registry import register
from probgraphics.programs.simulator import SimulatorProgram

__all__ = [
    "GaussianLinearTask",
    "SBIBMTask",
    "SBIBM_TASKS",
    "SLCPTask",
    "TwoMoonsTask",
    "gaussian_linear",
    "sbibm_task",
    "slcp",
    "two_moons",
]

#: sbibm tasks have ten observations, numbered 1..10.
NUM_OBSERVATIONS = 10


class SBIBMTask(SimulatorProgram):
    """An sbibm task as a program (see the module doc).

    Attributes (besides :class:`SimulatorProgram`'s):
        name: sbibm's task name.
        observation_seeds: the ten seeds sbibm drew observations 1..10 with.
    """

    name: str = ""
    observation_seeds: tuple[int, ...] = tuple(1_000_000 + i for i in range(NUM_OBSERVATIONS))

    def __init__(self, prior, simulate: Callable[[torch.Tensor], torch.Tensor], dim_data: int):
        super().__init__(prior, simulate, output_dim=dim_data)

    def __repr__(self) -> str:
        return f"{self.name}()"

    def _check_number(self, number: int) -> int:
        if isinstance(number, bool) or not isinstance(number, int):
            raise TypeError(f"the observation number must be an int in 1..10, got {number!r}")
        if not 1 <= number <= NUM_OBSERVATIONS:
            raise ValueError(
                f"sbibm's {self.name} has observations 1..{NUM_OBSERVATIONS}, got {number}."
            )
        return number

    def _draw_observation(self, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        """sbibm's draw of observation ``number``: ``(true_parameters (D,), x (K,))``."""
        seed = self.observation_seeds[self._check_number(number) - 1]
        with torch.random.fork_rng(devices=[]):
            state = np.random.get_state()
            try:
                np.random.seed(seed)
                torch.manual_seed(seed)
                theta = self.prior.sample((1,))
                x = self.simulate(theta)
            finally:
                np.random.set_state(state)
        return theta[0], x[0]

    def true_parameters(self, number: int, *, source: str = "simulate") -> torch.Tensor:
        """The parameters observation ``number`` was simulated from, ``(D,)`` float32.

        ``source="simulate"`` repeats sbibm's seeded draw; ``"sbibm"`` reads sbibm's file."""
        if _check_source(source) == "sbibm":
            return _sbibm_task(self.name).get_true_parameters(self._check_number(number))[0]
        return self._draw_observation(number)[0]

    def observation(self, number: int, *, source: str = "simulate") -> torch.Tensor:
        """Observation ``number`` (1..10), ``(K,)`` float32, for ``infer(task, {"x": ...})``.

        ``source="simulate"`` repeats sbibm's seeded draw (no sbibm needed); ``"sbibm"`` reads
        sbibm's stored observation (needs the ``sbibm`` package)."""
        if _check_source(source) == "sbibm":
            return _sbibm_task(self.name).get_observation(self._check_number(number))[0]
        return self._draw_observation(number)[1]

    def reference_samples(self, number: int) -> torch.Tensor:
        """sbibm's 10,000 reference posterior samples for observation ``number``,
        ``(10000, D)`` float32. Needs the optional ``sbibm`` package."""
        task = _sbibm_task(self.name)
        return task.get_reference_posterior_samples(self._check_number(number))


def _check_source(source: str) -> str:
    if source not in ("simulate", "sbibm"):
        raise ValueError(f"source must be 'simulate' or 'sbibm', got {source!r}")
    return source


def _sbibm_task(name: str):
    try:
        import sbibm
    except ImportError as error:
        raise ImportError(
            f"sbibm's stored files for {name!r} need the optional sbibm package ({error}); "
            "install the benchmark extra into its own environment: "
            "pip install torch==2.13.0 && pip install -e '.[bench]'."
        ) from None
    return sbibm.get_task(name)


# ---------------------------------------------------------------------------- gaussian_linear


class GaussianLinearTask(SBIBMTask):
    """sbibm's ``gaussian_linear``: ``theta ~ N(0, 0.1 I_10)``, ``x ~ N(theta, 0.1 I_10)``.

    (sbibm's ``prior_scale`` and ``simulator_scale`` are variances: the precisions are
    ``1 / 0.1``.) The posterior is ``N(x / 2, 0.05 I)``.
    """

    name = "gaussian_linear"

    def __init__(self, dim: int = 10, prior_variance: float = 0.1, noise_variance: float = 0.1):
        self.prior_variance = float(prior_variance)
        self.noise_variance = float(noise_variance)
        eye = torch.eye(dim)
        prior = MultivariateNormal(
            torch.zeros(dim), precision_matrix=torch.inverse(self.prior_variance * eye)
        )
        self._noise_precision = torch.inverse(self.noise_variance * eye)
        # sbibm draws MultivariateNormal(theta, precision_matrix=...): loc + L eps with L the
        # Cholesky factor of the covariance, here diagonal. Scaling eps by L's diagonal draws the
        # same numbers without a batch of (D, D) products per call (tested against the MVN).
        self._noise_scale = torch.linalg.cholesky(torch.inverse(self._noise_precision)).diagonal()
        super().__init__(prior, self._simulate, dim_data=dim)

    def _simulate(self, theta: torch.Tensor) -> torch.Tensor:
        """``(B, D) -> (B, D)``: one draw of ``N(theta, noise_variance I)`` per row."""
        scale = self._noise_scale.to(device=theta.device, dtype=theta.dtype)
        return theta + scale * torch.randn_like(theta)

    def analytic_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact posterior of ``theta`` given ``x`` ``(D,)``: mean ``(D,)`` and covariance
        ``(D, D)``, float64."""
        x = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
        if x.shape[0] != self.dim:
            raise ValueError(f"x must have {self.dim} values, got shape {tuple(x.shape)}")
        prior_precision = 1.0 / self.prior_variance
        noise_precision = 1.0 / self.noise_variance
        variance = 1.0 / (prior_precision + noise_precision)
        mean = variance * noise_precision * x
        return mean, variance * torch.eye(self.dim, dtype=torch.float64)


# ---------------------------------------------------------------------------------- two_moons


class TwoMoonsTask(SBIBMTask):
    """sbibm's ``two_moons``: ``theta ~ U(-1, 1)^2``; ``a ~ U(-pi/2, pi/2)``,
    ``r ~ N(0.1, 0.01^2)``, ``p = (r cos a + 0.25, r sin a)``, and
    ``x = p + (-|theta_1 + theta_2| / sqrt 2, (theta_2 - theta_1) / sqrt 2)``."""

    name = "two_moons"
    observation_seeds = (
        1000011,
        1000001,
        1000002,
        1000003,
        1000013,
        1000005,
        1000006,
        1000007,
        1000008,
        1000009,
    )
    A_LOW, A_HIGH = -math.pi / 2.0, math.pi / 2.0
    BASE_OFFSET = 0.25
    R_LOC, R_SCALE = 0.1, 0.01

    def __init__(self):
        prior = Uniform(-torch.ones(2), torch.ones(2)).to_event(1)
        super().__init__(prior, self._simulate, dim_data=2)

    def _simulate(self, theta: torch.Tensor) -> torch.Tensor:
        """``(B, 2) -> (B, 2)``; draws ``a`` then ``r`` (sbibm's order)."""
        batch = theta.shape[0]
        a = Uniform(
            torch.tensor(self.A_LOW, dtype=theta.dtype, device=theta.device),
            torch.tensor(self.A_HIGH, dtype=theta.dtype, device=theta.device),
        ).sample((batch, 1))
        r = Normal(
            torch.tensor(self.R_LOC, dtype=theta.dtype, device=theta.device),
            torch.tensor(self.R_SCALE, dtype=theta.dtype, device=theta.device),
        ).sample((batch, 1))
        return self.simulate_with_noise(theta, a[:, 0], r[:, 0])

    @classmethod
    def simulate_with_noise(
        cls, theta: torch.Tensor, a: torch.Tensor, r: torch.Tensor
    ) -> torch.Tensor:
        """The simulator as a function of its noise: ``theta (B, 2)``, angle ``a (B,)``,
        radius ``r (B,)`` -> ``x (B, 2)``."""
        p = torch.stack([torch.cos(a) * r + cls.BASE_OFFSET, torch.sin(a) * r], dim=-1)
        # sbibm rotates theta by -pi/4: z0 = c t0 - s t1, z1 = s t0 + c t1, c = cos, s = sin.
        angle = -math.pi / 4.0
        c, s = math.cos(angle), math.sin(angle)
        z0 = c * theta[:, 0] - s * theta[:, 1]
        z1 = s * theta[:, 0] + c * theta[:, 1]
        return p + torch.stack([-z0.abs(), z1], dim=-1)


# --------------------------------------------------------------------------------------- slcp


class SLCPTask(SBIBMTask):
    """sbibm's ``slcp`` (simple likelihood, complex posterior): ``theta ~ U(-3, 3)^5``; four
    i.i.d. 2-d normal draws with mean ``(theta_1, theta_2)``, standard deviations
    ``s1 = theta_3^2``, ``s2 = theta_4^2`` and correlation ``rho = tanh(theta_5)`` (covariance
    ``[[s1^2, rho s1 s2], [rho s1 s2, s2^2]] + 1e-6 I``); ``x`` is the four draws flattened,
    ``(x1_1, x1_2, x2_1, ..., x4_2)``."""

    name = "slcp"
    observation_seeds = (
        1000000,
        1000001,
        1000002,
        1000003,
        1000004,
        1000005,
        1000010,
        1000012,
        1000008,
        1000009,
    )
    NUM_DRAWS = 4
    JITTER = 1e-6

    def __init__(self):
        prior = Uniform(torch.full((5,), -3.0), torch.full((5,), 3.0)).to_event(1)
        super().__init__(prior, self._simulate, dim_data=2 * self.NUM_DRAWS)

    @classmethod
    def covariance(cls, theta: torch.Tensor) -> torch.Tensor:
        """The 2x2 covariance of the draws for ``theta (B, 5)``: ``(B, 2, 2)``."""
        s1 = theta[:, 2].square()
        s2 = theta[:, 3].square()
        rho = torch.tanh(theta[:, 4])
        off = rho * s1 * s2
        row0 = torch.stack([s1.square() + cls.JITTER, off], dim=-1)
        row1 = torch.stack([off, s2.square() + cls.JITTER], dim=-1)
        return torch.stack([row0, row1], dim=-2)

    def _simulate(self, theta: torch.Tensor) -> torch.Tensor:
        """``(B, 5) -> (B, 8)``; standard-normal noise ``(B, 4, 2)`` drawn as sbibm's
        ``MultivariateNormal(...).expand((B, 4)).sample()`` draws it."""
        noise = torch.randn(
            theta.shape[0], self.NUM_DRAWS, 2, dtype=theta.dtype, device=theta.device
        )
        return self.simulate_with_noise(theta, noise)

    @classmethod
    def simulate_with_noise(cls, theta: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The simulator as a function of its noise: ``theta (B, 5)``, standard-normal
        ``noise (B, 4, 2)`` -> ``x (B, 8)`` = mean + L noise, ``L`` the Cholesky factor."""
        covariance = cls.covariance(theta.to(torch.float64))
        # The 2x2 Cholesky factor in closed form (no batched LAPACK call, no failure at rho ~ 1).
        l00 = covariance[:, 0, 0].sqrt()
        l10 = covariance[:, 1, 0] / l00
        l11 = (covariance[:, 1, 1] - l10.square()).clamp_min(0.0).sqrt()
        z = noise.to(torch.float64)
        first = l00.unsqueeze(-1) * z[..., 0]
        second = l10.unsqueeze(-1) * z[..., 0] + l11.unsqueeze(-1) * z[..., 1]
        mean = theta[:, :2].to(torch.float64)
        draws = torch.stack([first, second], dim=-1) + mean.unsqueeze(1)
        return draws.reshape(theta.shape[0], 2 * cls.NUM_DRAWS).to(theta.dtype)


# ---------------------------------------------------------------------------------- builders

SBIBM_TASKS: dict[str, type[SBIBMTask]] = {
    "gaussian_linear": GaussianLinearTask,
    "two_moons": TwoMoonsTask,
    "slcp": SLCPTask,
}


@register("sbibm_gaussian_linear")
def gaussian_linear() -> GaussianLinearTask:
    """sbibm's ``gaussian_linear`` task as a program (see :class:`GaussianLinearTask`)."""
    return GaussianLinearTask()


@register("sbibm_two_moons")
def two_moons() -> TwoMoonsTask:
    """sbibm's ``two_moons`` task as a program (see :class:`TwoMoonsTask`)."""
    return TwoMoonsTask()


@register("sbibm_slcp")
def slcp() -> SLCPTask:
    """sbibm's ``slcp`` task as a program (see :class:`SLCPTask`)."""
    return SLCPTask()


def sbibm_task(name: str) -> SBIBMTask:
    """The task ``name`` (one of :data:`SBIBM_TASKS`) as a program.

    >>> task = sbibm_task("two_moons")
    >>> tuple(task.observation(1).shape)
    (2,)
    """
    if name not in SBIBM_TASKS:
        raise KeyError(f"unknown sbibm task {name!r}; the tasks here are {sorted(SBIBM_TASKS)}.")
    return SBIBM_TASKS[name]()
