"""The variational bound of `hf_ddpm.likelihood` against closed forms: the KL between Gaussians, the
discretised Gaussian decoder (to 50 digits with mpmath, far tails included), L_T, the whole bound of data
whose optimal denoiser is known (a point mass: every term in closed form; Gaussian data: the expected KL terms
in closed form), and the reverse step it scores against the one `LinearNoiseScheduler.step` samples."""

import math

import mpmath
import pytest
import torch

from hf_ddpm.likelihood import (
    LOG2,
    bound_tables,
    discretized_gaussian_log_likelihood,
    normal_kl,
    prior_bits,
    reverse_step,
    sample_x_t,
    term_bits,
    variational_bound,
)
from hf_ddpm.scheduler import LinearNoiseScheduler

mpmath.mp.dps = 50


def test_normal_kl_is_torchs_kl_between_gaussians():
    g = torch.Generator().manual_seed(0)
    m1, m2 = (
        torch.randn(100, generator=g, dtype=torch.float64),
        torch.randn(100, generator=g, dtype=torch.float64),
    )
    v1, v2 = (
        torch.randn(100, generator=g, dtype=torch.float64),
        torch.randn(100, generator=g, dtype=torch.float64),
    )
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * v1).exp()), torch.distributions.Normal(m2, (0.5 * v2).exp())
    )
    torch.testing.assert_close(normal_kl(m1, v1, m2, v2), expected, rtol=1e-12, atol=1e-12)
    assert normal_kl(m1, v1, m1, v1).abs().max() < 1e-12


def _exact_log_bin(k: int, mean: float, std: float) -> float:
    """log P(bin of 8-bit value k) under N(mean, std^2), with mpmath's 50-digit normal CDF (a bin above the
    mean through the mirrored CDF, so that 1 - CDF never rounds to 0)."""
    x, h, mean, std = (
        mpmath.mpf(k) / mpmath.mpf("127.5") - 1,
        mpmath.mpf(1) / 255,
        mpmath.mpf(mean),
        mpmath.mpf(std),
    )
    lo = -mpmath.inf if k == 0 else x - h
    hi = mpmath.inf if k == 255 else x + h
    if x > mean:  # P(lo < X < hi) = P(-hi < -X < -lo), -X ~ N(-mean, std^2)
        lo, hi, mean = -hi, -lo, -mean
    return float(mpmath.log(mpmath.ncdf((hi - mean) / std) - mpmath.ncdf((lo - mean) / std)))


@pytest.mark.parametrize(
    "k, mean, std",
    [
        (128, 0.0039, 0.01),  # the bin the mean sits in
        (128, 0.5, 0.01),  # 50 standard deviations away: the lower tail
        (3, -0.3, 0.005),  # 140 standard deviations the other way: the upper tail
        (0, -1.0, 0.02),  # the bottom bin reaches to -infinity
        (0, 0.8, 0.05),  # ... and far from the mean
        (255, 1.0, 0.3),  # the top bin reaches to +infinity
        (255, -0.9, 0.04),
        (77, 0.1, 3.0),  # a wide Gaussian: nearly the density times the bin width
        (200, 0.57, 1e-4),  # a narrow one, centred in the bin
    ],
)
def test_discretized_gaussian_matches_50_digit_arithmetic(k, mean, std):
    x = torch.tensor(k / 127.5 - 1, dtype=torch.float64)
    log_var = torch.tensor(2 * math.log(std), dtype=torch.float64)
    got = discretized_gaussian_log_likelihood(x, torch.tensor(mean, dtype=torch.float64), log_var)
    expected = _exact_log_bin(k, mean, std)
    assert math.isfinite(got.item())
    assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("mean, std", [(0.0, 0.004), (0.3, 0.2), (-0.97, 0.05), (1.4, 2.0), (0.123, 1e-4)])
def test_the_256_bins_hold_all_the_probability(mean, std):
    x = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    log_p = discretized_gaussian_log_likelihood(x, torch.tensor(mean), torch.tensor(2 * math.log(std)))
    assert torch.logsumexp(log_p, 0).item() == pytest.approx(0.0, abs=1e-12)
    assert (log_p <= 0).all()


def test_prior_term_is_the_kl_to_the_standard_normal():
    """L_T for x_0 = c: KL(N(sqrt(a) c, 1 - a) || N(0, 1)) = (a c^2 - a - log(1 - a)) / 2 nats a dimension."""
    scheduler = LinearNoiseScheduler()
    tables = bound_tables(scheduler)
    a = tables.alphas_cumprod[-1].item()
    assert 3e-5 < a < 5e-5
    for c in (0.0, 1.0, -0.6):
        x0 = torch.full((1, 1, 2, 2), c, dtype=torch.float64)
        expected = (a * c * c - a - math.log1p(-a)) / 2 / LOG2
        assert prior_bits(x0, tables).item() == pytest.approx(expected, rel=1e-10)


class Oracle(torch.nn.Module):
    """The optimal model of a point mass at `x0`: from x_t it knows the noise exactly, and outputs it as
    epsilon, v or x_0 (with a constant `v_var` in the variance channels for learned variances). float64, so
    that the bound's closed form holds to rounding."""

    def __init__(self, x0: torch.Tensor, scheduler: LinearNoiseScheduler, v_var: float | None = None):
        super().__init__()
        self.x0, self.scheduler, self.v_var = x0, scheduler, v_var
        self.tables = bound_tables(scheduler)
        self.anchor = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))  # the dtype the bound feeds

    def forward(self, x_t, t):
        alpha_bar = self.tables.alphas_cumprod[t].view(-1, 1, 1, 1)
        x0 = self.x0.expand_as(x_t)
        eps = (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
        kind = self.scheduler.config.prediction_type
        out = {"epsilon": eps, "v_prediction": alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0}.get(
            kind, x0
        )
        if self.v_var is not None:
            out = torch.cat([out, torch.full_like(out, self.v_var)], dim=1)
        return type("Output", (), {"sample": out})()


def _closed_form_bound(x0: torch.Tensor, scheduler: LinearNoiseScheduler, v_var: float | None) -> float:
    """L_T + sum of KL + L_0 (bits/dim) when the mean is exact: each KL is that between two zero-mean
    Gaussians of the posterior and the model's variance, the decoder the mass of the bin around its centre."""
    tables = bound_tables(scheduler)
    posterior = tables.posterior_log_variance
    kind = scheduler.config.variance_type
    if kind == "learned_range":
        fraction = (v_var + 1) / 2
        model = fraction * tables.log_betas + (1 - fraction) * posterior
    elif kind == "fixed_large":
        model = tables.large_log_variance
    else:
        model = posterior
    kl = 0.5 * (model - posterior + torch.exp(posterior - model) - 1)
    decoder = -discretized_gaussian_log_likelihood(x0, x0, model[0]).mean()
    prior = prior_bits(x0, tables).item() * LOG2
    return (prior + kl[1:].sum().item() + decoder.item()) / LOG2


@pytest.mark.parametrize(
    "variance, prediction, v_var",
    [
        ("fixed_small", "epsilon", None),
        ("fixed_large", "epsilon", None),
        ("fixed_large", "v_prediction", None),
        ("fixed_small", "sample", None),
        ("learned_range", "epsilon", 0.3),
        ("learned_range", "v_prediction", -0.8),
    ],
)
def test_the_bound_of_a_point_mass_equals_its_closed_form(variance, prediction, v_var):
    """One 8-bit image (edge bins, middle bins), its optimal denoiser: the bound computed through the model
    loop equals L_T + the variance-only KL terms + the decoder's bin mass, whatever the noise draws."""
    scheduler = LinearNoiseScheduler(num_train_timesteps=200, beta_end=0.05, variance_type=variance,
                                     prediction_type=prediction, clip_sample=False)  # fmt: skip
    image = torch.tensor([0, 1, 77, 128, 254, 255], dtype=torch.uint8).view(1, 1, 2, 3)
    x0 = image.double() / 127.5 - 1
    model = Oracle(x0, scheduler, v_var)
    result = variational_bound(model, scheduler, image.repeat(3, 1, 1, 1), seed=1, batch_size=96)
    expected = _closed_form_bound(x0, scheduler, v_var)
    torch.testing.assert_close(
        result.per_image, torch.full((3,), expected, dtype=torch.float64), rtol=1e-8, atol=0
    )
    assert result.bits_per_dim == pytest.approx(expected, rel=1e-8)
    if variance == "fixed_small":  # the model is the true reverse process but for the decoder and L_T
        assert result.terms[1:].abs().max() < 1e-9
    else:
        assert result.terms[1:].min() > 0
    assert result.standard_error < 1e-9  # the same image three times, so no spread over images


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large"])
def test_gaussian_data_expected_kl_terms_equal_their_closed_form(variance):
    """x_0 ~ N(m, s^2) per dimension: the optimal denoiser is linear, x0_hat = m + k_t (x_t - sqrt(a_t) m)
    with k_t = sqrt(a_t) s^2 / (a_t s^2 + 1 - a_t), and E[(x_0 - x0_hat)^2] = s^2 (1 - a_t) / (a_t s^2 + 1 -
    a_t). So every expected KL term, and L_T, is known; the bound's terms, averaged over 65,536 dimensions,
    match."""
    scheduler = LinearNoiseScheduler(
        num_train_timesteps=50, beta_end=0.2, variance_type=variance, clip_sample=False
    )
    tables = bound_tables(scheduler)
    m, s = 0.2, 0.5
    g = torch.Generator().manual_seed(0)
    x0 = m + s * torch.randn(256, 1, 16, 16, generator=g, dtype=torch.float64)
    model_log_var = tables.large_log_variance if variance == "fixed_large" else tables.posterior_log_variance
    total_mc, total_exact = 0.0, 0.0
    for t in range(1, 50):
        a = tables.alphas_cumprod[t]
        timesteps = torch.full((len(x0),), t)
        x_t = sample_x_t(x0, timesteps, torch.randn(x0.shape, generator=g, dtype=torch.float64), tables)
        k = a.sqrt() * s**2 / (a * s**2 + 1 - a)
        x0_hat = m + k * (x_t - a.sqrt() * m)
        eps = (x_t - a.sqrt() * x0_hat) / (1 - a).sqrt()
        mc = term_bits(scheduler, tables, eps, x0, x_t, timesteps).mean().item()
        error = s**2 * (1 - a) / (a * s**2 + 1 - a)
        lq, lp = tables.posterior_log_variance[t], model_log_var[t]
        exact = 0.5 * (
            lp - lq + torch.exp(lq - lp) - 1 + tables.posterior_mean_x0[t] ** 2 * error * torch.exp(-lp)
        )
        exact = exact.item() / LOG2
        assert mc == pytest.approx(exact, rel=0.03), t
        total_mc, total_exact = total_mc + mc, total_exact + exact
    assert total_mc == pytest.approx(total_exact, rel=0.01)
    a_T = tables.alphas_cumprod[-1].item()
    prior_exact = 0.5 * (a_T * (m * m + s * s) - a_T - math.log1p(-a_T)) / LOG2
    assert prior_bits(x0, tables).mean().item() == pytest.approx(prior_exact, rel=0.02)


@pytest.mark.parametrize("variance", ["fixed_small", "fixed_large", "learned_range", "fixed_small_log"])
def test_the_bound_scores_the_reverse_step_the_scheduler_samples(variance):
    """For t >= 1, reverse_step's Gaussian is the one `step` draws from: its mean is step's output without the
    noise, its variance the square of step's noise scale. The tolerance is the scheduler's float32: its
    1 - alpha_bar_t keeps about 4 digits at t = 1 and 5 at t = 17 (hence the bound's float64 tables)."""
    scheduler = LinearNoiseScheduler(variance_type=variance)
    tables = bound_tables(scheduler)
    g = torch.Generator().manual_seed(3)
    channels = 2 if variance == "learned_range" else 1
    for t in (1, 17, 400, 999):
        x_t = torch.randn(2, 1, 4, 4, generator=g)
        output = torch.tanh(torch.randn(2, channels, 4, 4, generator=g))
        mean, log_var = reverse_step(scheduler, tables, output, x_t, torch.full((2,), t))
        z = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(t))
        sampled = scheduler.step(output, t, x_t, generator=torch.Generator().manual_seed(t)).prev_sample
        scale = scheduler._noise_scale(t, output[:, 1:] if channels == 2 else None)
        tol = 2e-4 if t < 100 else 1e-5
        torch.testing.assert_close(mean, (sampled - scale * z).double(), rtol=tol, atol=tol)
        torch.testing.assert_close(log_var.exp(), (scale.double() ** 2).expand_as(log_var), rtol=tol, atol=0)


class HalfOracle(Oracle):
    """The oracle's noise at half strength. An oracle of a fixed x_0 gives a mean whose noise cancels, so its
    bound does not depend on the noise drawn; this model's error does."""

    def forward(self, x_t, t):
        output = super().forward(x_t, t)
        output.sample = 0.5 * output.sample
        return output


def test_the_bound_is_reproducible_and_refuses_what_it_cannot_score():
    scheduler = LinearNoiseScheduler(num_train_timesteps=20, beta_end=0.3, clip_sample=False)
    image = torch.randint(0, 256, (3, 1, 2, 2), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    model = HalfOracle(torch.zeros(1, 1, 2, 2, dtype=torch.float64), scheduler)
    first = variational_bound(model, scheduler, image, seed=5)
    assert torch.equal(first.per_image, variational_bound(model, scheduler, image, seed=5).per_image)
    other = variational_bound(model, scheduler, image, seed=6).per_image
    assert not torch.allclose(first.per_image, other, rtol=1e-3)  # another seed, other noise
    assert first.to_dict()["bits_per_dim"] == pytest.approx(first.prior + first.terms.sum().item())
    with pytest.raises(ValueError, match="images must be uint8"):
        variational_bound(model, scheduler, image.float())
    learned = LinearNoiseScheduler(variance_type="learned")
    with pytest.raises(ValueError, match="gave values <= 0: this model has no likelihood"):
        reverse_step(learned, bound_tables(learned), torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 2, 2),
                     torch.tensor([5]))  # fmt: skip
