"""Any black-box simulator as a program: a prior plus a function ``theta (B, D) -> x (B, K)``.

ABC needs nothing but draws: :func:`simulator` turns a prior distribution and a simulator
function into a Pyro program that ``pg.infer`` samples like the bundled scene programs, with no
likelihood written anywhere in user code::

    import torch, pyro.distributions as dist, probgraphics as pg

    prior = dist.Uniform(-torch.ones(2), torch.ones(2)).to_event(1)   # theta: event shape (2,)

    def simulate(theta):                       # (B, 2) float tensor -> (B, 3) float tensor
        noise = 0.1 * torch.randn(theta.shape[0], 3)
        return torch.stack([theta[:, 0], theta[:, 1], theta.sum(-1)], dim=-1) + noise

    program = pg.programs.simulator(prior, simulate)
    x_obs = pg.programs.simulate(program, seed=1)["x"]                 # (3,)
    posterior = pg.infer(program, {"x": x_obs}, method="abc_smc", simulations=20_000)
    posterior.samples["theta"]                                         # (chains, draws, 2)

The program samples ``theta`` from the prior at the site ``"theta"`` and records the simulator's
output at the observed site ``"x"`` (a point mass at the simulated value: the program *draws*
``x``, it never scores it). Under ``pyro.plate("chains", C, dim=-1)`` the simulator is called once
with all ``C`` parameter sets, which is what makes batched inference fast.

* **Batched or not.** ``simulate`` takes ``(B, D)`` and returns ``(B, K)``. A simulator written
  for one parameter set (``(D,) -> (K,)``) is wrapped with ``batched=False``: it is then called
  once per row, which is far slower (a :class:`SimulatorSpeedWarning` says so when the program
  is built); batch it with numpy/torch broadcasting where speed matters.
* **NumPy or torch.** With ``numpy=True`` the simulator receives a float64 ``numpy.ndarray`` and
  may return any array-like; otherwise it receives a tensor on the prior's device and dtype. The
  output is converted to a tensor in the prior's dtype and device either way. A simulator that
  takes a keyword argument ``rng`` is passed a ``numpy.random.Generator`` seeded from torch's
  random state on every call, so numpy simulators are reproducible under ``infer(seed=...)``
  (the engine seeds torch's generator for every batch); torch simulators drawing from torch's
  global generator (``torch.randn``) are reproducible as they are.
* **Failed simulations.** A row of the output with NaN or inf is a failed simulation. With
  ``nan="reject"`` (default) the whole row becomes NaN, so its summary distance is NaN and the
  ABC engines never accept it (a NaN distance has zero ABC kernel); a
  :class:`SimulationFailureWarning` reports the first failures and :attr:`SimulatorProgram.failed`
  counts them. The identity summary and learned summaries propagate NaN; a summary callable of
  your own must too (do not ``nan_to_num`` inside it). With ``nan="raise"`` the first failed row
  raises :class:`SimulatorError` naming the parameters that produced it.
* **Checked.** The prior must be a torch/Pyro distribution over a flat vector (event shape
  ``(D,)``, batch shape ``()``) that ABC can whiten (Normal, MultivariateNormal, Uniform,
  ``to_event`` of those, a ``TransformedDistribution`` over them, or any continuous distribution
  with ``icdf``); the output must be ``(B, K)`` numbers with the same ``K`` on every call. Each
  violation raises :class:`SimulatorError` saying what was expected, what came and what to do.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch.distributions import Distribution

from probgraphics.inference.simulator import DirectSimulation
from probgraphics.inference.whitening import WhiteningError, build_layout, trace_program

__all__ = [
    "NAN_POLICIES",
    "SimulationFailureWarning",
    "SimulatorError",
    "SimulatorProgram",
    "SimulatorSpeedWarning",
    "simulator",
]

#: What to do with a simulation whose output has NaN or inf.
NAN_POLICIES = ("reject", "raise")
#: How many failed simulations are reported by warning before the program goes quiet.
FAILURE_WARNINGS = 3


class SimulatorError(ValueError):
    """The prior or the simulator's output is not what :func:`simulator` needs."""


class SimulatorSpeedWarning(UserWarning):
    """A non-batched simulator is called once per parameter set: slow."""


class SimulationFailureWarning(UserWarning):
    """A simulation returned NaN/inf and is treated as failed (never accepted)."""


def _describe(value: Any) -> str:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__


def _as_pyro(prior: Distribution) -> Distribution:
    """A Pyro distribution equal to ``prior`` (``pyro.sample`` takes only Pyro's).

    Pyro's distributions subclass torch's of the same name: a torch instance is rebuilt as the
    Pyro class from its parameters; ``Independent`` (and subclasses such as sbi's
    ``BoxUniform``) and ``TransformedDistribution`` are rebuilt around their converted base.
    """
    if isinstance(prior, TorchDistributionMixin):
        return prior
    if isinstance(prior, torch.distributions.Independent):
        return _as_pyro(prior.base_dist).to_event(prior.reinterpreted_batch_ndims)
    if isinstance(prior, torch.distributions.TransformedDistribution):
        return dist.TransformedDistribution(_as_pyro(prior.base_dist), prior.transforms)
    if isinstance(prior, torch.distributions.MultivariateNormal):
        return dist.MultivariateNormal(prior.loc, scale_tril=prior.scale_tril)
    pyro_class = getattr(dist, type(prior).__name__, None)
    message = (
        f"the prior {type(prior).__name__} is a torch distribution that could not be rebuilt as "
        "a Pyro one; build it from pyro.distributions (e.g. Uniform(low, high).to_event(1))."
    )
    if not (isinstance(pyro_class, type) and issubclass(pyro_class, type(prior))):
        raise SimulatorError(message)
    arguments = {name: getattr(prior, name) for name in prior.arg_constraints}
    try:
        return pyro_class(**arguments)
    except (TypeError, ValueError) as error:
        raise SimulatorError(f"{message} ({error})") from None


def _check_prior(prior: Any, site: str) -> int:
    """Validate the prior; return ``D``, the length of its event vector."""
    if not isinstance(prior, Distribution):
        raise SimulatorError(
            f"prior must be a torch/Pyro distribution over the parameter vector, got "
            f"{_describe(prior)}; e.g. pyro.distributions.Uniform(low, high).to_event(1) or "
            "MultivariateNormal(loc, covariance_matrix=...)."
        )
    try:
        support = prior.support
    except NotImplementedError:
        support = None
    if support is None:
        raise SimulatorError(
            f"the prior {type(prior).__name__} declares no support; ABC needs a continuous "
            "prior with a support (Normal, MultivariateNormal, Uniform, ... .to_event(1))."
        )
    if support.is_discrete:
        raise SimulatorError(
            f"the prior {type(prior).__name__} is discrete (support {support}); ABC samples "
            "continuous parameters. Use a continuous prior, or fix the discrete parameter inside "
            "the simulator."
        )
    batch, event = tuple(prior.batch_shape), tuple(prior.event_shape)
    if batch == () and len(event) == 1:
        dim = event[0]
    elif len(batch) == 1 and event == ():
        raise SimulatorError(
            f"the prior has batch shape {batch} and event shape (): {batch[0]} independent "
            "scalars rather than one parameter vector. Declare the vector with .to_event(1), "
            "e.g. Uniform(low, high).to_event(1)."
        )
    else:
        raise SimulatorError(
            f"the prior must be a distribution over a flat parameter vector: batch shape () and "
            f"event shape (D,); got batch shape {batch} and event shape {event}. Flatten the "
            "parameters into one vector (and use .to_event(1) for independent components)."
        )
    if dim < 1:
        raise SimulatorError(f"the prior's parameter vector is empty (event shape {event}).")

    pyro_prior = _as_pyro(prior)

    def prior_only() -> None:
        pyro.sample(site, pyro_prior)

    try:
        build_layout(trace_program(prior_only), observed=())
    except WhiteningError as error:
        raise SimulatorError(f"the prior cannot be used for ABC: {error}") from None
    return dim


class SimulatorProgram:
    """A prior and a simulator function as a batch-polymorphic Pyro program (see module doc).

    Call it with no arguments to run it: it samples ``theta`` ``(*batch, D)`` at
    :attr:`parameters` and records ``x`` ``(*batch, K)`` at :attr:`observed`, in the prior's
    dtype, and returns ``x``.

    Attributes:
        prior: the prior distribution (event shape ``(D,)``).
        simulate: the user's simulator function.
        dim: ``D``, the number of parameters.
        output_dim: ``K`` once known (given, or learned from the first call), else None.
        batched, numpy, nan: the settings the program was built with.
        parameters, observed: the latent and observed site names.
        calls: how many times the simulator function was called (per row when not batched).
        simulations: how many parameter sets were simulated.
        failed: how many of them returned NaN/inf (rejected or raised).
    """

    def __init__(
        self,
        prior: Distribution,
        simulate: Callable[..., Any],
        *,
        batched: bool = True,
        numpy: bool = False,
        nan: str = "reject",
        parameters: str = "theta",
        observed: str = "x",
        output_dim: int | None = None,
    ) -> None:
        if not callable(simulate):
            raise SimulatorError(
                f"simulate must be a function theta (B, D) -> x (B, K), got {_describe(simulate)}."
            )
        for label, flag in (("batched", batched), ("numpy", numpy)):
            if not isinstance(flag, bool):
                raise TypeError(f"{label} must be True or False, got {flag!r}.")
        if nan not in NAN_POLICIES:
            raise ValueError(
                f"nan must be one of {NAN_POLICIES} (what to do with a simulation returning "
                f"NaN/inf), got {nan!r}."
            )
        for label, name in (("parameters", parameters), ("observed", observed)):
            if not isinstance(name, str) or not name:
                raise TypeError(f"{label} must be a non-empty site name, got {name!r}.")
        if parameters == observed:
            raise ValueError(
                f"parameters and observed must be different site names, both are {observed!r}."
            )
        if output_dim is not None and (
            isinstance(output_dim, bool) or not isinstance(output_dim, int) or output_dim < 1
        ):
            raise ValueError(f"output_dim must be None or an int >= 1, got {output_dim!r}.")
        self.dim = _check_prior(prior, parameters)
        self.prior = _as_pyro(prior)
        self.simulate = simulate
        self.batched = batched
        self.numpy = numpy
        self.nan = nan
        self.parameters = parameters
        self.observed = observed
        self.output_dim = output_dim
        self.calls = 0
        self.simulations = 0
        self.failed = 0
        self._takes_rng = _accepts_keyword(simulate, "rng")
        if not batched:
            warnings.warn(
                "batched=False: the simulator is called once per parameter set, in a Python "
                "loop; inference simulates tens of thousands of them, so this is typically 10-"
                "1000x slower than a batched simulator. Write it to take theta (B, D) and return "
                "(B, K) (numpy/torch broadcasting), then drop batched=False.",
                SimulatorSpeedWarning,
                stacklevel=3,
            )

    def __repr__(self) -> str:
        name = getattr(self.simulate, "__qualname__", type(self.simulate).__name__)
        return (
            f"simulator(prior={type(self.prior).__name__}(D={self.dim}), simulate={name}, "
            f"batched={self.batched}, numpy={self.numpy}, nan={self.nan!r})"
        )

    def __call__(self) -> torch.Tensor:
        theta = pyro.sample(self.parameters, self.prior)
        batch_shape = theta.shape[:-1]
        flat = theta.detach().reshape(-1, self.dim)
        x = self.run(flat).reshape(*batch_shape, -1)
        return pyro.sample(self.observed, dist.Delta(x, event_dim=1))

    def direct_simulation(self) -> DirectSimulation:
        """The program as a prior and :meth:`run`, for ABC to call without Pyro's tracing (the
        same values and random numbers as running the program; see
        :mod:`probgraphics.inference.simulator`)."""
        return DirectSimulation(self.parameters, self.prior, self.observed, self.run)

    def run(self, theta: torch.Tensor) -> torch.Tensor:
        """Simulate parameter sets ``theta`` ``(B, D)``: the checked output ``(B, K)``.

        The output has the dtype and device of ``theta``; failed rows (NaN/inf) are all-NaN
        with ``nan="reject"``.

        Raises:
            SimulatorError: wrong output type or shape, a ``K`` that differs from earlier calls,
                or (``nan="raise"``) a NaN/inf output.
        """
        if theta.dim() != 2 or theta.shape[1] != self.dim:
            raise SimulatorError(
                f"run expects parameters shaped (B, {self.dim}), got {tuple(theta.shape)}."
            )
        batch = theta.shape[0]
        if self.batched:
            output = self._to_tensor(self._call(theta), theta)
            if output.dim() != 2 or output.shape[0] != batch:
                hint = (
                    " It looks like a simulator for one parameter set: pass batched=False (slow), "
                    "or make it return one row per parameter set."
                    if output.dim() == 1 and output.shape[0] != batch
                    else ""
                )
                if output.dim() == 1 and output.shape[0] == batch:
                    hint = " For one output per parameter set return shape (B, 1)."
                raise SimulatorError(
                    f"the simulator must return one row per parameter set, shaped (B, K) = "
                    f"({batch}, K), for parameters shaped {tuple(theta.shape)}; it returned shape "
                    f"{tuple(output.shape)}.{hint}"
                )
        else:
            rows = []
            for row in theta:
                value = self._to_tensor(self._call(row), theta)
                if value.dim() != 1:
                    raise SimulatorError(
                        f"with batched=False the simulator must return a vector (K,) for one "
                        f"parameter set (D,) = ({self.dim},); it returned shape "
                        f"{tuple(value.shape)}. Flatten its output (or reshape a scalar to (1,))."
                    )
                rows.append(value)
            sizes = {int(row.shape[0]) for row in rows}
            if len(sizes) > 1:
                raise SimulatorError(
                    f"the simulator returned vectors of different lengths {sorted(sizes)} for "
                    f"one batch; every output must have the same length K."
                )
            output = torch.stack(rows) if rows else theta.new_zeros(0, self.output_dim or 0)
        if self.output_dim is None:
            self.output_dim = int(output.shape[1])
        elif output.shape[1] != self.output_dim:
            raise SimulatorError(
                f"the simulator returned {output.shape[1]} values per parameter set, but "
                f"{self.output_dim} before (or as output_dim=); every call must return the same K."
            )
        self.simulations += batch
        return self._failures(theta, output)

    def _call(self, theta: torch.Tensor) -> Any:
        argument: Any = theta
        if self.numpy:
            argument = theta.detach().to("cpu", torch.float64).numpy()
        self.calls += 1
        if self._takes_rng:
            # Seeded from torch's generator, which the engine seeds for every batch.
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
            return self.simulate(argument, rng=np.random.default_rng(seed))
        return self.simulate(argument)

    def _to_tensor(self, value: Any, theta: torch.Tensor) -> torch.Tensor:
        if isinstance(value, torch.Tensor):
            tensor = value.detach()
        else:
            try:
                array = np.asarray(value)
            except (TypeError, ValueError) as error:
                raise SimulatorError(
                    f"the simulator must return numbers (a tensor or numpy array), got "
                    f"{_describe(value)} ({error})."
                ) from None
            if array.dtype == object or not (
                np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
            ):
                raise SimulatorError(
                    f"the simulator must return numbers (a tensor or numpy array), got "
                    f"{_describe(value)} with dtype {array.dtype}."
                )
            tensor = torch.from_numpy(np.ascontiguousarray(array))
        if tensor.is_complex():
            raise SimulatorError(
                f"the simulator returned complex values ({tensor.dtype}); return real features "
                "(e.g. torch.view_as_real(x).flatten(1))."
            )
        return tensor.to(device=theta.device, dtype=theta.dtype)

    def _failures(self, theta: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """Mark rows with NaN/inf as failed: all-NaN (reject) or an error (raise)."""
        # The common case first: NaN and inf reach the total (a finite output's total can only
        # overflow to inf, which falls through to the exact check). One reduction over the whole
        # batch instead of one per row: a tenth of a cheap simulator's step at 1,000 chains.
        if bool(torch.isfinite(output.sum())):
            return output
        bad = ~torch.isfinite(output).all(dim=-1)
        count = int(bad.sum())
        if count == 0:
            return output
        first = theta[bad][0].tolist()
        self.failed += count
        if self.nan == "raise":
            raise SimulatorError(
                f"the simulator returned NaN/inf for {count} of {theta.shape[0]} parameter sets "
                f"(the first: theta = {first}). Fix the simulator for these parameters, narrow "
                "the prior, or pass nan='reject' to treat such simulations as failed (never "
                "accepted by ABC)."
            )
        if self.failed - count < FAILURE_WARNINGS:
            warnings.warn(
                f"the simulator returned NaN/inf for {count} of {theta.shape[0]} parameter sets "
                f"(e.g. theta = {first}); they are treated as failed simulations, which ABC never "
                "accepts. SimulatorProgram.failed counts them; pass nan='raise' to stop instead.",
                SimulationFailureWarning,
                stacklevel=2,
            )
        return torch.where(bad.unsqueeze(-1), math.nan, output)


def _accepts_keyword(function: Callable, name: str) -> bool:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return False
    parameter = signature.parameters.get(name)
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def simulator(
    prior: Distribution,
    simulate: Callable[..., Any],
    *,
    batched: bool = True,
    numpy: bool = False,
    nan: str = "reject",
    parameters: str = "theta",
    observed: str = "x",
    output_dim: int | None = None,
) -> SimulatorProgram:
    """A program for ``pg.infer`` from a prior and a simulator function (see the module doc).

    Args:
        prior: a torch/Pyro distribution with batch shape ``()`` and event shape ``(D,)``.
        simulate: ``theta (B, D) -> x (B, K)`` (torch tensors, or numpy arrays with
            ``numpy=True``); with ``batched=False``, ``(D,) -> (K,)``. May take a keyword ``rng``
            (a ``numpy.random.Generator``).
        batched: whether ``simulate`` takes a batch of parameter sets.
        numpy: pass the parameters as a float64 numpy array instead of a tensor.
        nan: ``"reject"`` (NaN/inf simulations are failed, never accepted) or ``"raise"``.
        parameters: the latent site's name (``posterior.samples[parameters]``).
        observed: the observed site's name (``infer(program, {observed: x_obs})``).
        output_dim: ``K`` if known (checked on every call); else learned from the first call.

    Returns:
        A :class:`SimulatorProgram`.

    >>> import torch, pyro.distributions as dist
    >>> program = simulator(dist.Normal(torch.zeros(2), 1.0).to_event(1), lambda t: 2 * t)
    >>> tuple(program.run(torch.ones(5, 2)).shape)
    (5, 2)
    """
    return SimulatorProgram(
        prior,
        simulate,
        batched=batched,
        numpy=numpy,
        nan=nan,
        parameters=parameters,
        observed=observed,
        output_dim=output_dim,
    )
