"""Property tests of the Gaussian maths (Eq. 12-14 and 19)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmhvae.model.distributions import (
    Gaussian,
    RowNoise,
    bridge_marginal,
    bridge_step,
    inverse_std_fusion,
    kl_divergence,
    kl_single_sample,
    product_of_experts,
    product_of_two,
    soft_clamp,
)

FAST = settings(max_examples=40, deadline=None)

means = st.floats(-5.0, 5.0, allow_nan=False)
logvars = st.floats(-6.0, 6.0, allow_nan=False)


def f64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def gaussian_batch(draw_means, draw_logvars, shape) -> Gaussian:
    return Gaussian(
        torch.tensor(draw_means, dtype=torch.float64).reshape(shape),
        torch.tensor(draw_logvars, dtype=torch.float64).reshape(shape),
    )


@FAST
@given(mu=means, lv=logvars)
def test_one_expert_with_standard_prior_is_textbook_product(mu: float, lv: float) -> None:
    prior = Gaussian(torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64))
    expert_mean = torch.tensor([[[mu]]], dtype=torch.float64)
    expert_logvar = torch.tensor([[[lv]]], dtype=torch.float64)
    fused = product_of_experts(prior, expert_mean, expert_logvar, torch.ones(1, 1, dtype=torch.bool))

    var = math.exp(lv)
    expected_var = 1.0 / (1.0 + 1.0 / var)
    expected_mean = expected_var * mu / var
    assert fused.var.item() == pytest.approx(expected_var, rel=1e-9)
    assert fused.mean.item() == pytest.approx(expected_mean, rel=1e-9, abs=1e-12)
    reference = product_of_two(prior, Gaussian(expert_mean[:, 0], expert_logvar[:, 0]))
    torch.testing.assert_close(fused.mean, reference.mean)
    torch.testing.assert_close(fused.logvar, reference.logvar)


@FAST
@given(
    mus=st.lists(means, min_size=3, max_size=3),
    lvs=st.lists(logvars, min_size=3, max_size=3),
    prior_mu=means,
    prior_lv=logvars,
    permutation=st.permutations([0, 1, 2]),
)
def test_product_is_invariant_to_expert_order(mus, lvs, prior_mu, prior_lv, permutation) -> None:
    prior = Gaussian(f64([[prior_mu]]), f64([[prior_lv]]))
    mean = torch.tensor(mus, dtype=torch.float64).reshape(1, 3, 1)
    logvar = torch.tensor(lvs, dtype=torch.float64).reshape(1, 3, 1)
    mask = torch.ones(1, 3, dtype=torch.bool)
    order = list(permutation)
    for fuse in (product_of_experts, inverse_std_fusion):
        a = fuse(prior, mean, logvar, mask)
        b = fuse(prior, mean[:, order], logvar[:, order], mask)
        torch.testing.assert_close(a.mean, b.mean)
        torch.testing.assert_close(a.logvar, b.logvar)


@FAST
@given(
    mus=st.lists(means, min_size=3, max_size=3),
    lvs=st.lists(logvars, min_size=3, max_size=3),
    garbage=st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -1e30]),
    masked=st.integers(0, 2),
)
def test_masked_expert_changes_nothing_even_with_garbage(mus, lvs, garbage, masked) -> None:
    prior = Gaussian(torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64))
    mean = torch.tensor(mus, dtype=torch.float64).reshape(1, 3, 1)
    logvar = torch.tensor(lvs, dtype=torch.float64).reshape(1, 3, 1)
    mask = torch.ones(1, 3, dtype=torch.bool)
    mask[0, masked] = False
    keep = [k for k in range(3) if k != masked]
    for fuse in (product_of_experts, inverse_std_fusion):
        without = fuse(prior, mean[:, keep], logvar[:, keep], torch.ones(1, 2, dtype=torch.bool))
        dirty_mean, dirty_logvar = mean.clone(), logvar.clone()
        dirty_mean[0, masked] = garbage
        dirty_logvar[0, masked] = garbage
        dirty_mean.requires_grad_(True)
        dirty_logvar.requires_grad_(True)
        with_garbage = fuse(prior, dirty_mean, dirty_logvar, mask)
        torch.testing.assert_close(with_garbage.mean, without.mean)
        torch.testing.assert_close(with_garbage.logvar, without.logvar)
        # Gradients must stay finite too, and be exactly zero for the absent expert.
        (with_garbage.mean.sum() + with_garbage.logvar.sum()).backward()
        assert torch.isfinite(dirty_mean.grad).all() and torch.isfinite(dirty_logvar.grad).all()
        assert dirty_mean.grad[0, masked].item() == 0.0 and dirty_logvar.grad[0, masked].item() == 0.0


def test_all_experts_masked_returns_the_prior() -> None:
    prior = Gaussian(torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    absent = torch.zeros(2, 5, dtype=torch.bool)
    fused = product_of_experts(prior, torch.randn(2, 5, 3, 4), torch.randn(2, 5, 3, 4), absent)
    torch.testing.assert_close(fused.mean, prior.mean)
    torch.testing.assert_close(fused.logvar, prior.logvar)


def test_product_is_stable_for_extreme_log_variances() -> None:
    prior = Gaussian(torch.zeros(1, 2), torch.zeros(1, 2))
    mean = torch.tensor([[[1.0, 2.0], [3.0, -4.0]]])
    logvar = torch.tensor([[[-80.0, 80.0], [-85.0, 85.0]]])
    fused = product_of_experts(prior, mean, logvar, torch.ones(1, 2, dtype=torch.bool))
    assert torch.isfinite(fused.mean).all() and torch.isfinite(fused.logvar).all()
    # Dimension 0: the two very precise experts dominate with weights e^80 : e^85.
    expected = (1.0 * math.exp(-5.0) + 3.0) / (1.0 + math.exp(-5.0))
    assert fused.mean[0, 0].item() == pytest.approx(expected, rel=1e-5)
    # Dimension 1: both experts are uninformative, the prior wins.
    assert fused.mean[0, 1].item() == pytest.approx(0.0, abs=1e-6)


def test_inverse_std_fusion_matches_its_formula() -> None:
    torch.manual_seed(0)
    prior = Gaussian(torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64))
    mean, logvar = torch.randn(4, 3, 6, dtype=torch.float64), torch.randn(4, 3, 6, dtype=torch.float64)
    fused = inverse_std_fusion(prior, mean, logvar, torch.ones(4, 3, dtype=torch.bool))
    all_means = torch.cat([prior.mean[:, None], mean], dim=1)
    all_std = torch.exp(0.5 * torch.cat([prior.logvar[:, None], logvar], dim=1))
    expected_mean = (all_means / all_std).sum(1) / (1 / all_std).sum(1)
    expected_std = 1 / (1 / all_std).sum(1)
    torch.testing.assert_close(fused.mean, expected_mean)
    torch.testing.assert_close(fused.std, expected_std)


@FAST
@given(mq=means, lq=logvars, mp=means, lp=logvars)
def test_kl_is_non_negative_and_zero_iff_equal(mq, lq, mp, lp) -> None:
    q = gaussian_batch([mq], [lq], (1,))
    p = gaussian_batch([mp], [lp], (1,))
    kl = kl_divergence(q, p).item()
    assert kl >= -1e-12
    assert kl_divergence(q, q).item() == pytest.approx(0.0, abs=1e-12)
    if abs(mq - mp) > 1e-3 or abs(lq - lp) > 1e-3:
        assert kl > 0


def test_single_sample_kl_averages_to_analytic_kl() -> None:
    generator = torch.Generator().manual_seed(1234)
    q = Gaussian(f64([0.5, -1.0, 2.0]), f64([-1.0, 0.5, 0.0]))
    p = Gaussian(f64([0.0, 0.0, 1.0]), f64([0.0, 1.0, -0.5]))
    n = 200_000
    repeated = Gaussian(q.mean.expand(n, 3), q.logvar.expand(n, 3))
    z = repeated.sample(generator=generator)
    estimate = kl_single_sample(repeated, Gaussian(p.mean.expand(n, 3), p.logvar.expand(n, 3)), z).mean(0)
    torch.testing.assert_close(estimate, kl_divergence(q, p), atol=0.02, rtol=0.02)


def test_temperature_zero_gives_the_mean_and_temperature_scales_std() -> None:
    g = Gaussian(torch.randn(1000, 8), torch.full((1000, 8), 0.7))
    assert torch.equal(g.sample(temperature=0.0), g.mean)
    generator = torch.Generator().manual_seed(0)
    spread = (g.sample(temperature=0.5, generator=generator) - g.mean).std().item()
    assert spread == pytest.approx(0.5 * math.exp(0.35), rel=0.03)


def test_sample_is_reparameterised() -> None:
    mean = torch.zeros(3, requires_grad=True)
    logvar = torch.zeros(3, requires_grad=True)
    Gaussian(mean, logvar).sample().sum().backward()
    assert mean.grad is not None and logvar.grad is not None and logvar.grad.abs().sum() > 0


@FAST
@given(x=st.floats(-1e6, 1e6, allow_nan=False), c=st.floats(0.5, 20.0))
def test_soft_clamp_is_bounded_and_near_identity_for_small_values(x: float, c: float) -> None:
    y = soft_clamp(torch.tensor(x, dtype=torch.float64), c).item()
    assert abs(y) <= c
    if abs(x) < 0.01 * c:
        assert y == pytest.approx(x, rel=1e-3, abs=1e-12)


def test_from_params_splits_and_clamps() -> None:
    params = torch.tensor([[100.0, -100.0]]).reshape(1, 2, 1)
    g = Gaussian.from_params(params, clamp=10.0)
    assert g.mean.item() == pytest.approx(10.0, rel=1e-3)
    assert g.logvar.item() == pytest.approx(-10.0, rel=1e-3)


def test_row_noise_depends_on_the_row_key_only_not_on_the_batch():
    shape = (3, 2, 4, 4)
    first = RowNoise(torch.tensor([7, 7, 9]), seed=1)
    draws = [first.draw(shape, torch.float32, torch.device("cpu")) for _ in range(2)]  # two latent groups
    torch.testing.assert_close(draws[0][0], draws[0][1])  # one key, one noise
    assert not torch.allclose(draws[0][0], draws[0][2]) and not torch.allclose(draws[0][0], draws[1][0])
    # key 9 alone, or beside other keys in another order, draws the same noise in each group
    for keys, row in (([9], 0), ([3, 9, 7, 5], 1)):
        other = RowNoise(torch.tensor(keys), seed=1)
        again = [other.draw((len(keys), *shape[1:]), torch.float32, torch.device("cpu")) for _ in range(2)]
        for group in range(2):
            torch.testing.assert_close(again[group][row], draws[group][2], rtol=0, atol=0)
    reseeded = RowNoise(torch.tensor([7, 7, 9]), seed=2).draw(shape, torch.float32, torch.device("cpu"))
    assert not torch.allclose(reseeded, draws[0])
    noise = RowNoise(torch.tensor([7, 7, 9]), seed=1)
    sample = Gaussian(torch.ones(shape), torch.zeros(shape)).sample(0.5, noise)
    torch.testing.assert_close(sample, 1 + 0.5 * draws[0])


def test_a_bridge_step_is_the_conditional_of_the_forward_chain() -> None:
    """Sample x_s from the bridge's marginal, then x_t from the forward transition; the regression of x_s on
    x_t is linear with the mean and the residual variance bridge_step states."""
    torch.manual_seed(0)
    x0, y, m_s, m_t, n = torch.tensor(0.3), torch.tensor(-0.8), 0.3, 0.7, 400_000
    x_s = bridge_marginal(x0.expand(n), y.expand(n), torch.tensor(m_s)).sample()
    a = (1 - m_t) / (1 - m_s)
    delta_ts = 2 * (m_t - m_t**2) - a * a * 2 * (m_s - m_s**2)
    x_t = a * x_s + (m_t - a * m_s) * y + math.sqrt(delta_ts) * torch.randn(n)
    assert x_t.mean().item() == pytest.approx((1 - m_t) * 0.3 + m_t * -0.8, abs=5e-3)  # the marginal at m_t
    slope, intercept = torch.linalg.lstsq(torch.stack([x_t, torch.ones(n)], 1), x_s[:, None]).solution[:, 0]
    residual = (x_s - slope * x_t - intercept).var().item()
    for value in (-0.5, 0.1, 0.6):
        mean, variance = bridge_step(torch.tensor(value), x0, y, m_t, m_s)
        assert mean.item() == pytest.approx((slope * value + intercept).item(), abs=5e-3)
        assert variance.item() == pytest.approx(residual, rel=2e-2)


def test_the_bridge_is_pinned_at_both_ends() -> None:
    x0, y, x_t = torch.randn(5), torch.randn(5), torch.randn(5)
    assert torch.equal(bridge_marginal(x0, y, torch.tensor(1.0)).mean, y)
    assert bridge_marginal(x0, y, torch.tensor(0.0)).std.max() < 1e-9
    mean, variance = bridge_step(x_t, x0, y, 1.0, 0.5)  # from t = T (x_T = y): the marginal at m_s
    torch.testing.assert_close(mean, 0.5 * x0 + 0.5 * y)
    torch.testing.assert_close(variance, torch.full((5,), 0.5))
    mean, variance = bridge_step(x_t, x0, y, 0.2, 0.0)  # to s = 0: x_0 itself
    torch.testing.assert_close(mean, x0)
    assert variance.abs().max() == 0
    with pytest.raises(ValueError, match="m_s < m_t"):
        bridge_step(x_t, x0, y, 0.3, 0.3)
