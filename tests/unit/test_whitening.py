"""Prior whitening: every supported family maps N(0, 1) draws to its prior; inverses invert;
dependent latents; unsupported sites fail naming the site."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from probgraphics.inference.whitening import (
    WhiteningError,
    build_layout,
    run_whitened,
    trace_program,
    unwhiten,
    whiten,
)

N_DRAWS = 4000
# Kolmogorov-Smirnov critical value at alpha = 1e-3 for N_DRAWS draws (1.95 / sqrt(n)).
KS_CRITICAL = 1.95 / math.sqrt(N_DRAWS)


def standard_normal(shape, seed=0, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


UNIVARIATE = [
    ("normal", dist.Normal(torch.tensor(1.5), torch.tensor(0.3)), stats.norm(1.5, 0.3)),
    ("uniform", dist.Uniform(torch.tensor(-2.0), torch.tensor(3.0)), stats.uniform(-2.0, 5.0)),
    (
        "lognormal",
        dist.LogNormal(torch.tensor(0.2), torch.tensor(0.5)),
        stats.lognorm(s=0.5, scale=math.exp(0.2)),
    ),
    ("exponential", dist.Exponential(torch.tensor(2.0)), stats.expon(scale=0.5)),
    ("cauchy", dist.Cauchy(torch.tensor(0.0), torch.tensor(2.0)), stats.cauchy(0.0, 2.0)),
    ("halfnormal", dist.HalfNormal(torch.tensor(1.5)), stats.halfnorm(scale=1.5)),
    ("gumbel", dist.Gumbel(torch.tensor(1.0), torch.tensor(2.0)), stats.gumbel_r(1.0, 2.0)),
]


@pytest.mark.parametrize("name,fn,reference", UNIVARIATE, ids=[case[0] for case in UNIVARIATE])
def test_univariate_families_map_standard_normal_to_their_prior(name, fn, reference):
    u = standard_normal((N_DRAWS,), seed=1, dtype=torch.float32)
    values = whiten(fn.expand([N_DRAWS]), u).double().numpy()
    assert values.shape == (N_DRAWS,)
    statistic = stats.kstest(values, reference.cdf).statistic
    assert statistic < KS_CRITICAL, f"{name}: KS statistic {statistic:.4f} >= {KS_CRITICAL:.4f}"


def test_normal_and_uniform_transforms_are_the_documented_formulas():
    u = standard_normal((7,))
    normal = dist.Normal(
        torch.tensor(2.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    )
    torch.testing.assert_close(whiten(normal, u), 2.0 + 0.5 * u, rtol=0, atol=0)
    low, high = torch.tensor(-1.0, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64)
    uniform = dist.Uniform(low, high)
    expected = -1.0 + 4.0 * torch.tensor(stats.norm.cdf(u.numpy()))
    torch.testing.assert_close(whiten(uniform, u), expected, rtol=1e-12, atol=1e-12)


def test_multivariate_normal_is_loc_plus_cholesky_times_u_with_prior_moments():
    covariance = torch.tensor(
        [[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]], dtype=torch.float64
    )
    loc = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    fn = dist.MultivariateNormal(loc, covariance_matrix=covariance)
    u = standard_normal((N_DRAWS, 3), seed=2)
    values = whiten(fn.expand([N_DRAWS]), u)
    expected = loc + u @ torch.linalg.cholesky(covariance).T
    torch.testing.assert_close(values, expected)
    # Moments within Monte Carlo error: mean sd sqrt(S_ii / n), covariance sd
    # sqrt((S_ii S_jj + S_ij^2) / n); 5 standard errors.
    mean_error = (values.mean(0) - loc).abs()
    assert bool((mean_error < 5 * (covariance.diag() / N_DRAWS).sqrt()).all())
    sample_covariance = torch.cov(values.T)
    spread = (
        (torch.outer(covariance.diag(), covariance.diag()) + covariance.square()) / N_DRAWS
    ).sqrt()
    assert bool(((sample_covariance - covariance).abs() < 5 * spread).all())


def test_independent_and_expanded_wrappers_are_elementwise():
    fn = dist.Normal(torch.zeros(3), torch.tensor([1.0, 2.0, 3.0])).to_event(1).expand([5])
    u = standard_normal((5, 3), dtype=torch.float32)
    torch.testing.assert_close(whiten(fn, u), u * torch.tensor([1.0, 2.0, 3.0]))
    uniform = dist.Uniform(0.0, 1.0).expand([5, 3]).to_event(1)
    torch.testing.assert_close(whiten(uniform, u), torch.special.ndtr(u))


INVERTIBLE = [
    dist.Normal(torch.tensor(1.0), torch.tensor(2.0)),
    dist.Uniform(torch.tensor(-1.0), torch.tensor(4.0)),
    dist.LogNormal(torch.tensor(0.3), torch.tensor(0.7)),
    dist.Exponential(torch.tensor(1.5)),
    dist.Gumbel(torch.tensor(0.5), torch.tensor(1.5)),
    dist.Normal(torch.zeros(4), torch.ones(4)).to_event(1),
    dist.MultivariateNormal(
        torch.tensor([0.5, -1.0]), covariance_matrix=torch.tensor([[1.0, 0.4], [0.4, 2.0]])
    ),
]


@pytest.mark.parametrize("fn", INVERTIBLE, ids=lambda fn: type(fn).__name__)
def test_inverse_of_whiten_is_the_identity(fn):
    shape = fn.batch_shape + fn.event_shape
    fn = fn.expand(torch.Size([200]) + fn.batch_shape)
    # Stay inside |u| < 4: beyond, Phi(u) rounds to 1 in float32 and the inverse saturates.
    u = standard_normal((200, *shape), seed=3, dtype=torch.float32).clamp(-4.0, 4.0)
    torch.testing.assert_close(unwhiten(fn, whiten(fn, u)), u, rtol=1e-4, atol=2e-4)


def test_saturated_probabilities_stay_finite():
    u = torch.tensor([-40.0, -9.0, 0.0, 9.0, 40.0])
    for fn in (dist.Exponential(torch.tensor(1.0)), dist.Cauchy(0.0, 1.0), dist.Uniform(0.0, 1.0)):
        values = whiten(fn.expand([5]), u)
        assert bool(torch.isfinite(values).all()), type(fn).__name__
        assert bool(torch.isfinite(unwhiten(fn.expand([5]), values)).all())


def dependent_program():
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(a, 0.5))
    scale = pyro.sample("scale", dist.LogNormal(b, 0.1))
    pyro.deterministic("twice", 2 * scale)
    return pyro.sample("y", dist.Normal(a + b, scale))


def test_layout_lists_latents_in_program_order_and_skips_observed_and_deterministic():
    layout = build_layout(trace_program(dependent_program), observed=["y"])
    assert [site.name for site in layout.sites] == ["a", "b", "scale"]
    assert [site.offset for site in layout.sites] == [0, 1, 2]
    assert layout.dim == 3 and layout.latent_dim == 3
    with_noise = build_layout(trace_program(dependent_program), ["y"], whiten_observed=True)
    assert [site.name for site in with_noise.sites] == ["a", "b", "scale", "y"]
    assert with_noise.dim == 4 and with_noise.latent_dim == 3
    assert not with_noise.site("y").latent


def test_dependent_latents_use_the_earlier_values():
    layout = build_layout(trace_program(dependent_program), observed=["y"])
    u = standard_normal((N_DRAWS, 3), seed=4, dtype=torch.float32)
    whitening = run_whitened(dependent_program, layout, u, record=["y"])
    a, b, scale = (whitening.values[name] for name in ("a", "b", "scale"))
    torch.testing.assert_close(a, u[:, 0])
    torch.testing.assert_close(b, a + 0.5 * u[:, 1])
    torch.testing.assert_close(scale, torch.exp(b + 0.1 * u[:, 2]))
    assert whitening.values["y"].shape == (N_DRAWS,)
    # b's marginal is N(0, 1 + 0.25).
    statistic = stats.kstest(b.double().numpy(), stats.norm(0, math.sqrt(1.25)).cdf).statistic
    assert statistic < KS_CRITICAL


def test_given_values_map_back_to_u_and_are_used():
    layout = build_layout(trace_program(dependent_program), observed=["y"])
    u = standard_normal((6, 3), seed=5, dtype=torch.float32)
    reference = run_whitened(dependent_program, layout, u)
    given = {"b": reference.values["b"], "scale": reference.values["scale"]}
    start = u.clone()
    start[:, 1:] = 0.0  # the given sites' u is recovered from their values
    again = run_whitened(dependent_program, layout, start, given=given)
    torch.testing.assert_close(again.u_out, u, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again.values["b"], given["b"])


def discrete_program(kind):
    def program():
        pyro.sample("x", dist.Normal(0.0, 1.0))
        if kind == "bernoulli":
            flag = pyro.sample("flag", dist.Bernoulli(0.3))
        else:
            flag = pyro.sample("flag", dist.Poisson(2.0))
        pyro.sample("y", dist.Normal(flag, 1.0))

    return program


@pytest.mark.parametrize("kind,name", [("bernoulli", "Bernoulli"), ("poisson", "Poisson")])
def test_discrete_latent_is_an_error_naming_the_site_and_distribution(kind, name):
    with pytest.raises(WhiteningError, match=rf"site 'flag' has distribution {name}"):
        build_layout(trace_program(discrete_program(kind)), observed=["y"])


def test_continuous_distribution_without_icdf_is_an_error():
    def program():
        pyro.sample("rate", dist.Gamma(2.0, 1.0))
        pyro.sample("y", dist.Normal(0.0, 1.0))

    with pytest.raises(WhiteningError, match=r"'rate'.*Gamma.*no icdf"):
        build_layout(trace_program(program), observed=["y"])


def test_latent_without_event_declaration_is_an_error_with_the_fix():
    def program():
        pyro.sample("shape", dist.Normal(torch.zeros(3), 1.0))  # batch shape (3,), no to_event
        pyro.sample("y", dist.Normal(0.0, 1.0))

    with pytest.raises(WhiteningError, match=r"'shape'.*batch shape \(3,\).*to_event\(1\)"):
        build_layout(trace_program(program), observed=["y"])
