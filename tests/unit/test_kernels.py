"""The batched kernels equal single-chain reference loops on the same pre-drawn noise, and are
deterministic given the generator."""

from __future__ import annotations

import math

import pytest
import torch

from probgraphics.inference.kernels import elliptical, elliptical_slice
from probgraphics.inference.kernels.elliptical import GaussianReference
from probgraphics.inference.simulator import Simulation

DTYPE = torch.float64
CHAINS, DIM = 12, 5
TARGET = torch.linspace(-1.0, 1.0, DIM, dtype=DTYPE)


def simulate(u: torch.Tensor) -> Simulation:
    """A deterministic stand-in simulator: distance to a fixed point, values = an affine map."""
    values = 2.0 * u[:, :3] + 1.0
    summaries = u.clone()
    distance = 1.3 * torch.linalg.vector_norm(u - TARGET, dim=-1)
    return Simulation(values, summaries, distance)


def simulate_one(u: torch.Tensor) -> tuple[float, torch.Tensor]:
    simulation = simulate(u.unsqueeze(0))
    return float(simulation.distance[0]), simulation.values[0]


def starting_state(module, seed=0):
    u = torch.randn(CHAINS, DIM, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)
    simulation = simulate(u)
    return module.init(u, simulation.values, simulation.distance)


def make_reference(rank=DIM, seed=1) -> GaussianReference:
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=generator, dtype=DTYPE))
    scale = 0.2 + torch.rand(rank, generator=generator, dtype=DTYPE)
    mean = 0.5 * torch.randn(DIM, generator=generator, dtype=DTYPE)
    return GaussianReference(mean, basis[:, :rank], scale)


def reference_covariance(reference):
    basis = reference.basis
    return torch.eye(DIM, dtype=DTYPE) + basis @ torch.diag(reference.scale**2 - 1) @ basis.T


def reference_sqrt(reference):
    basis = reference.basis
    return torch.eye(DIM, dtype=DTYPE) + basis @ torch.diag(reference.scale - 1) @ basis.T


def log_weight_one(reference, u):
    """log N(u; 0, I) - log N(u; m, S) + const, from the dense covariance."""
    if reference is None:
        return 0.0
    centred = u - reference.mean
    mahalanobis = centred @ torch.linalg.solve(reference_covariance(reference), centred)
    return 0.5 * float(mahalanobis - u @ u)


def test_reference_offsets_have_the_reference_covariance():
    reference = make_reference(rank=3)
    root = reference_sqrt(reference)
    torch.testing.assert_close(root @ root, reference_covariance(reference))
    nu = torch.randn(4, DIM, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    torch.testing.assert_close(reference.offset(nu), nu @ root.T)


# ---------------------------------------------------------------------------- elliptical


def elliptical_reference_loop(state, noise, epsilon, abc_kernel, reference):
    """One chain at a time, written out from the paper's description."""
    new_u, new_values, new_distance, accepted = [], [], [], []
    for chain in range(CHAINS):
        u, distance = state.u[chain], float(state.distance[chain])
        a = float(noise.a[chain])
        if reference is None:
            proposal = math.sqrt(1 - a * a) * u + a * noise.nu[chain]
        else:
            offset = reference_sqrt(reference) @ noise.nu[chain]
            proposal = reference.mean + math.sqrt(1 - a * a) * (u - reference.mean) + a * offset
        proposed_distance, proposed_values = simulate_one(proposal)
        if abc_kernel == "indicator":
            log_ratio = 0.0 if proposed_distance <= max(epsilon, distance) else -math.inf
        else:
            log_ratio = (distance**2 - proposed_distance**2) / (2 * epsilon**2)
        log_ratio += log_weight_one(reference, proposal) - log_weight_one(reference, u)
        accept = float(noise.log_uniform[chain]) < log_ratio
        accepted.append(accept)
        new_u.append(proposal if accept else u)
        new_values.append(proposed_values if accept else state.values[chain])
        new_distance.append(proposed_distance if accept else distance)
    return (
        torch.stack(new_u),
        torch.stack(new_values),
        torch.tensor(new_distance, dtype=DTYPE),
        torch.tensor(accepted),
    )


@pytest.mark.parametrize("abc_kernel", ["indicator", "gaussian"])
@pytest.mark.parametrize("reference_rank", [None, DIM, 2])
def test_elliptical_batched_step_equals_single_chain_loop(abc_kernel, reference_rank):
    reference = make_reference(reference_rank) if reference_rank else None
    state = starting_state(elliptical)
    # The current distances span both sides of epsilon, so the indicator's walk-in rule is hit.
    epsilon = float(state.distance.median())
    generator = torch.Generator().manual_seed(7)
    beta = torch.linspace(0.05, 1.0, CHAINS, dtype=DTYPE)
    n_accepted = 0
    for _ in range(5):
        noise = elliptical.draw_noise(generator, state, beta)
        assert bool((noise.a.abs() <= beta).all())
        expected = elliptical_reference_loop(state, noise, epsilon, abc_kernel, reference)
        state, info = elliptical.step_with_noise(
            state, simulate, epsilon, abc_kernel, noise, reference
        )
        torch.testing.assert_close(state.u, expected[0])
        torch.testing.assert_close(state.values, expected[1])
        torch.testing.assert_close(state.distance, expected[2])
        assert torch.equal(info.accepted, expected[3])
        n_accepted += int(info.accepted.sum())
    assert 0 < n_accepted < 5 * CHAINS  # both branches exercised


def test_elliptical_step_is_deterministic_given_the_generator():
    state = starting_state(elliptical)
    beta = torch.full((CHAINS,), 0.5, dtype=DTYPE)

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        current = state
        for _ in range(4):
            current, _ = elliptical.step(generator, current, simulate, 2.0, beta, "gaussian")
        return current

    first, second, other = run(3), run(3), run(4)
    assert torch.equal(first.u, second.u) and torch.equal(first.distance, second.distance)
    assert not torch.equal(first.u, other.u)


def test_elliptical_infinite_epsilon_accepts_everything_and_nan_is_rejected():
    state = starting_state(elliptical)
    beta = torch.ones(CHAINS, dtype=DTYPE)
    for abc_kernel in ("indicator", "gaussian"):
        generator = torch.Generator().manual_seed(0)
        _, info = elliptical.step(generator, state, simulate, math.inf, beta, abc_kernel)
        assert bool(info.accepted.all()), abc_kernel

    def simulate_nan(u):
        simulation = simulate(u)
        return simulation._replace(distance=torch.full_like(simulation.distance, math.nan))

    for abc_kernel in ("indicator", "gaussian"):
        generator = torch.Generator().manual_seed(0)
        new, info = elliptical.step(generator, state, simulate_nan, 1.0, beta, abc_kernel)
        assert not bool(info.accepted.any())
        assert torch.equal(new.u, state.u)
        assert bool((info.acceptance_probability == 0).all())


def test_elliptical_move_leaves_the_standard_normal_invariant():
    # u ~ N(0, I), any a: sqrt(1 - a^2) u + a nu ~ N(0, I). Moments within 5 standard errors.
    n = 20_000
    generator = torch.Generator().manual_seed(11)
    u = torch.randn(n, 3, generator=generator, dtype=DTYPE)
    nu = torch.randn(n, 3, generator=generator, dtype=DTYPE)
    a = 2 * torch.rand(n, generator=generator, dtype=DTYPE) - 1
    moved = elliptical.propose(u, nu, a)
    assert bool((moved.mean(0).abs() < 5 / math.sqrt(n)).all())
    assert bool(
        ((torch.cov(moved.T) - torch.eye(3, dtype=DTYPE)).abs() < 5 * math.sqrt(2 / n)).all()
    )


# ---------------------------------------------------------------------------- elliptical slice


def slice_reference_loop(state, noise, epsilon, abc_kernel, reference):
    """Murray, Adams & MacKay (2010), figure 2, one chain at a time."""
    max_shrinks = noise.angle_uniforms.shape[1]
    out_u, out_values, out_distance, out_sims, out_cap = [], [], [], [], []
    for chain in range(CHAINS):
        u, distance = state.u[chain], float(state.distance[chain])
        nu = noise.nu[chain]
        if reference is not None:
            nu = reference_sqrt(reference) @ nu
            centre = reference.mean
        else:
            centre = torch.zeros_like(u)

        def log_likelihood(d, x, current=distance):
            if abc_kernel == "gaussian":
                value = -(d**2) / (2 * epsilon**2)
            else:
                value = 0.0 if d <= max(epsilon, current) else -math.inf
            return value + log_weight_one(reference, x)

        if abc_kernel == "gaussian":
            log_y = log_likelihood(distance, u) + float(noise.log_uniform[chain])
        else:
            log_y = log_weight_one(reference, u) + float(noise.log_uniform[chain])
        theta = float(noise.angle_uniforms[chain, 0]) * 2 * math.pi
        lower, upper = theta - 2 * math.pi, theta
        result = None
        simulations = 0
        for round_index in range(max_shrinks):
            proposal = centre + (u - centre) * math.cos(theta) + nu * math.sin(theta)
            proposed_distance, proposed_values = simulate_one(proposal)
            simulations += 1
            if log_likelihood(proposed_distance, proposal) > log_y:
                result = (proposal, proposed_values, proposed_distance)
                break
            if theta < 0:
                lower = theta
            else:
                upper = theta
            if round_index + 1 < max_shrinks:
                fraction = float(noise.angle_uniforms[chain, round_index + 1])
                theta = lower + (upper - lower) * fraction
        cap_hit = result is None
        if cap_hit:
            result = (u, state.values[chain], distance)
        out_u.append(result[0])
        out_values.append(result[1])
        out_distance.append(result[2])
        out_sims.append(simulations)
        out_cap.append(cap_hit)
    return (
        torch.stack(out_u),
        torch.stack(out_values),
        torch.tensor(out_distance, dtype=DTYPE),
        torch.tensor(out_sims),
        torch.tensor(out_cap),
    )


@pytest.mark.parametrize("abc_kernel", ["gaussian", "indicator"])
@pytest.mark.parametrize("reference_rank", [None, DIM, 2])
def test_elliptical_slice_batched_step_equals_single_chain_loop(abc_kernel, reference_rank):
    reference = make_reference(reference_rank) if reference_rank else None
    state = starting_state(elliptical_slice)
    epsilon = 0.5 * float(state.distance.median())
    generator = torch.Generator().manual_seed(5)
    max_shrinks = 6  # small, so some chains hit the cap
    total_caps = 0
    for _ in range(4):
        noise = elliptical_slice.draw_noise(generator, state, max_shrinks)
        expected = slice_reference_loop(state, noise, epsilon, abc_kernel, reference)
        state, info = elliptical_slice.step_with_noise(
            state, simulate, epsilon, abc_kernel, noise, reference
        )
        torch.testing.assert_close(state.u, expected[0])
        torch.testing.assert_close(state.values, expected[1])
        torch.testing.assert_close(state.distance, expected[2])
        assert torch.equal(info.n_simulations, expected[3])
        assert torch.equal(info.cap_hit, expected[4])
        assert torch.equal(info.accepted, ~expected[4])
        total_caps += int(info.cap_hit.sum())
    assert bool((info.n_simulations >= 1).all())
    if abc_kernel == "indicator":
        assert total_caps > 0  # the cap path is compared too


def test_elliptical_slice_cap_keeps_the_state_and_is_counted():
    state = starting_state(elliptical_slice)

    def simulate_far(u):
        simulation = simulate(u)
        return simulation._replace(distance=simulation.distance + 1e6)

    generator = torch.Generator().manual_seed(0)
    new, info = elliptical_slice.step(
        generator, state, simulate_far, 1.0, "indicator", max_shrinks=4
    )
    assert bool(info.cap_hit.all()) and not bool(info.accepted.any())
    assert bool((info.n_simulations == 4).all())
    assert torch.equal(new.u, state.u) and torch.equal(new.distance, state.distance)


def test_elliptical_slice_stops_its_rounds_at_max_simulations():
    state = starting_state(elliptical_slice)
    chains = state.u.shape[0]
    epsilon = 0.5 * float(state.distance.median())
    noise = elliptical_slice.draw_noise(torch.Generator().manual_seed(3), state, 10)
    free, free_info = elliptical_slice.step_with_noise(state, simulate, epsilon, "gaussian", noise)
    assert int(free_info.n_simulations.sum()) > chains + 2  # some chains shrink
    limit = int(free_info.n_simulations.sum()) - 1
    capped, info = elliptical_slice.step_with_noise(
        state, simulate, epsilon, "gaussian", noise, max_simulations=limit
    )
    assert int(info.n_simulations.sum()) <= limit
    # Up to the round that would exceed the limit, the same as without it; the chains still
    # shrinking then keep their state and count as cap hits.
    moved = ~info.cap_hit
    assert bool(info.cap_hit.any())
    assert torch.equal(capped.u[moved], free.u[moved])
    assert torch.equal(capped.u[info.cap_hit], state.u[info.cap_hit])
    # Nothing left: every chain keeps its state, no simulation.
    none, info = elliptical_slice.step_with_noise(
        state, simulate, epsilon, "gaussian", noise, max_simulations=chains - 1
    )
    assert int(info.n_simulations.sum()) == 0 and bool(info.cap_hit.all())
    assert torch.equal(none.u, state.u)


def test_elliptical_slice_is_deterministic_given_the_generator():
    state = starting_state(elliptical_slice)

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        current = state
        for _ in range(3):
            current, _ = elliptical_slice.step(generator, current, simulate, 1.0, "gaussian")
        return current

    first, second, other = run(1), run(1), run(2)
    assert torch.equal(first.u, second.u) and torch.equal(first.values, second.values)
    assert not torch.equal(first.u, other.u)


def test_elliptical_slice_infinite_epsilon_accepts_the_first_angle():
    state = starting_state(elliptical_slice)
    generator = torch.Generator().manual_seed(0)
    _, info = elliptical_slice.step(generator, state, simulate, math.inf, "gaussian")
    assert bool((info.n_simulations == 1).all()) and bool(info.accepted.all())


def test_init_validates_shapes():
    with pytest.raises(ValueError, match=r"u \(C, D\)"):
        elliptical.init(torch.zeros(3), torch.zeros(3, 1), torch.zeros(3))
    with pytest.raises(ValueError, match="chain dimension"):
        elliptical_slice.init(torch.zeros(3, 2), torch.zeros(2, 1), torch.zeros(3))
