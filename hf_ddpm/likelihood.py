"""The variational bound on the negative log-likelihood of 8-bit images (Ho et al. 2020, eq. 5), in bits per
dimension, and the L_vlb term of Improved DDPM's hybrid loss (Nichol & Dhariwal 2021, "Improved Denoising
Diffusion Probabilistic Models").

For an image x_0 of D dimensions the bound is, in nats,

    L = L_T + sum_{t=2..T} L_{t-1} + L_0
    L_T     = KL(q(x_T | x_0) || N(0, I))                                  (the prior term)
    L_{t-1} = E_q KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))            (eq. 7 against the reverse step)
    L_0     = -E_q log p(x_0 | x_1)                                        (the decoder, eq. 13)

and the bits per dimension are L / (D log 2). The decoder is the discretised Gaussian of eq. 13: the
reverse step's Gaussian integrated over the bin of each 8-bit value (width 2/255 on [-1, 1], the outer bins
reaching to +-infinity), so the bound is on the probability of the 8-bit data itself.

Indices here are 0-based like the scheduler's (t = 0 .. T - 1 is the paper's 1 .. T): the term at t = 0 is
the decoder, t >= 1 the KL terms. The reverse step p(x_{t-1} | x_t) is the one `LinearNoiseScheduler.step`
samples (the mean of eq. 7 at the predicted x_0, the variance of `variance_type`), with two conventions for
the decoder at t = 0, whose variance sampling never uses: the fixed variance types use beta-tilde_1 there, as
Ho et al.'s code does (beta-tilde_0 is 0), and `learned_range` interpolates between log beta-tilde_1 and
log beta_0, as Nichol & Dhariwal's. The tables are float64 from the scheduler's float32 betas, because
1 - alpha_bar_t loses most of its digits in float32 at small t, where the terms are most sensitive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from .scheduler import LEARNED_VARIANCE_TYPES, LinearNoiseScheduler

LOG2 = math.log(2.0)
# Half the width of an 8-bit bin on the model's [-1, 1] scale (x = k / 127.5 - 1).
HALF_BIN = 1.0 / 255.0


class BoundTables(NamedTuple):
    """Per-timestep float64 tables of the bound, each of shape (T,)."""

    alphas_cumprod: torch.Tensor  # alpha_bar_t
    log_betas: torch.Tensor  # log beta_t
    posterior_mean_x0: torch.Tensor  # eq. 7's coefficient of x_0
    posterior_mean_xt: torch.Tensor  # eq. 7's coefficient of x_t
    posterior_log_variance: torch.Tensor  # log beta-tilde_t, with beta-tilde_1 at t = 0
    large_log_variance: torch.Tensor  # log beta_t, with beta-tilde_1 at t = 0 (`fixed_large`)


def bound_tables(scheduler: LinearNoiseScheduler, device: str | torch.device = "cpu") -> BoundTables:
    """The float64 tables of the bound for `scheduler`'s noise schedule (T >= 2)."""
    betas = scheduler.betas.double().to(device)
    if len(betas) < 2:
        raise ValueError("the variational bound needs num_train_timesteps >= 2 (a decoder and a KL term)")
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    prev = torch.cat([torch.ones(1, dtype=torch.float64, device=device), alphas_cumprod[:-1]])
    posterior_variance = betas * (1 - prev) / (1 - alphas_cumprod)
    first = posterior_variance[1:2]  # beta-tilde_1 stands in for beta-tilde_0 = 0
    return BoundTables(
        alphas_cumprod=alphas_cumprod,
        log_betas=betas.log(),
        posterior_mean_x0=prev.sqrt() * betas / (1 - alphas_cumprod),
        posterior_mean_xt=(1 - betas).sqrt() * (1 - prev) / (1 - alphas_cumprod),
        posterior_log_variance=torch.cat([first, posterior_variance[1:]]).log(),
        large_log_variance=torch.cat([first, betas[1:]]).log(),
    )


def normal_kl(
    mean_q: torch.Tensor, log_var_q: torch.Tensor, mean_p: torch.Tensor, log_var_p: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean_q, exp(log_var_q)) || N(mean_p, exp(log_var_p))) per element, in nats:
    (log_var_p - log_var_q + (var_q + (mean_q - mean_p)^2) / var_p - 1) / 2."""
    return 0.5 * (
        log_var_p
        - log_var_q
        + torch.exp(log_var_q - log_var_p)
        + (mean_q - mean_p) ** 2 * torch.exp(-log_var_p)
        - 1
    )


def _log_ndtr_difference(upper: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """log(Phi(upper) - Phi(lower)) for upper > lower, accurate in both tails: in the upper tail it is
    computed as log(Phi(-lower) - Phi(-upper)), so that neither term rounds to 1."""
    flip = lower > 0
    hi = torch.where(flip, -lower, upper)
    lo = torch.where(flip, -upper, lower)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    # log(Phi(hi) - Phi(lo)) = log Phi(hi) + log(1 - exp(log Phi(lo) - log Phi(hi)))
    return log_hi + torch.log(-torch.expm1(log_lo - log_hi))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor
) -> torch.Tensor:
    """
    log P(x) per element under N(mean, exp(log_var)) discretised to the 256 bins of 8-bit data (eq. 13): the
    probability of [x - 1/255, x + 1/255], with the bins of -1 and 1 reaching to -infinity and +infinity.

    Args:
        x (`torch.Tensor`): 8-bit data on the model's scale, k / 127.5 - 1 for k in 0 .. 255.
        mean, log_var (`torch.Tensor`): the Gaussian, broadcastable to `x`.

    Returns:
        `torch.Tensor` of `x`'s shape: log-probabilities in nats (<= 0).
    """
    inv_std = torch.exp(-0.5 * log_var)
    upper = (x - mean + HALF_BIN) * inv_std
    lower = (x - mean - HALF_BIN) * inv_std
    middle = _log_ndtr_difference(upper, lower)
    # The edge bins: P(X <= 1/255 - 1) = Phi(upper), P(X >= 1 - 1/255) = Phi(-lower).
    bottom = torch.special.log_ndtr(upper)
    top = torch.special.log_ndtr(-lower)
    return torch.where(x < -1 + HALF_BIN, bottom, torch.where(x > 1 - HALF_BIN, top, middle))


def prior_bits(x0: torch.Tensor, tables: BoundTables) -> torch.Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per image, in bits per dimension: (batch,) float64."""
    alpha_bar = tables.alphas_cumprod[-1]
    mean = alpha_bar.sqrt() * x0.double()
    log_var = torch.log1p(-alpha_bar).expand_as(mean)
    kl = normal_kl(mean, log_var, torch.zeros_like(mean), torch.zeros_like(mean))
    return kl.flatten(1).mean(dim=1) / LOG2


def sample_x_t(
    x0: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor, tables: BoundTables
) -> torch.Tensor:
    """x_t ~ q(x_t | x_0) (eq. 4) from the float64 tables: (batch, ...) float64."""
    alpha_bar = _at(tables.alphas_cumprod, timesteps, x0)
    return alpha_bar.sqrt() * x0.double() + (1 - alpha_bar).sqrt() * noise.double()


def reverse_step(
    scheduler: LinearNoiseScheduler,
    tables: BoundTables,
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
    clip_denoised: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    The mean and log variance of p(x_{t-1} | x_t), float64.

    Args:
        scheduler (`LinearNoiseScheduler`): reads `prediction_type`, `variance_type` and the x_0 processing.
        tables (`BoundTables`): `bound_tables(scheduler)`.
        model_output (`torch.Tensor`): the model's output at (x_t, t); 2C channels for learned variances.
        x_t (`torch.Tensor` of shape `(batch, C, H, W)`): the noisy images.
        timesteps (`torch.Tensor` of shape `(batch,)`, int64): t of each image.
        clip_denoised (`bool`, *optional*): process the predicted x_0 as `step` does (thresholding, else
            clipping to +-`clip_sample_range`). `None` follows the scheduler's config; the result is a bound
            either way, on the model that samples that way.

    Returns:
        `(mean, log_var)`, each of `x_t`'s shape.
    """
    x_t = x_t.double()
    channels = x_t.shape[1]
    kind = scheduler.config.variance_type or "fixed_small"
    if kind in LEARNED_VARIANCE_TYPES:
        if model_output.shape[1] != 2 * channels:
            raise ValueError(
                f"variance_type {kind!r} needs {2 * channels} output channels for {channels}-channel images, "
                f"got {model_output.shape[1]}"
            )
        mean_part, variance_part = model_output.double().split(channels, dim=1)
    else:
        mean_part, variance_part = model_output.double(), None

    alpha_bar = _at(tables.alphas_cumprod, timesteps, x_t)
    prediction = scheduler.config.prediction_type
    if prediction == "epsilon":
        x0_hat = (x_t - (1 - alpha_bar).sqrt() * mean_part) / alpha_bar.sqrt()
    elif prediction == "v_prediction":
        x0_hat = alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * mean_part
    else:
        x0_hat = mean_part
    config = scheduler.config
    process = (config.thresholding or config.clip_sample) if clip_denoised is None else clip_denoised
    if process and config.thresholding:
        x0_hat = scheduler._threshold_sample(x0_hat)
    elif process:
        x0_hat = x0_hat.clamp(-config.clip_sample_range, config.clip_sample_range)
    mean = (
        _at(tables.posterior_mean_x0, timesteps, x_t) * x0_hat
        + _at(tables.posterior_mean_xt, timesteps, x_t) * x_t
    )

    if kind == "learned_range":
        # Nichol & Dhariwal 2021, eq. 15: v in [-1, 1] interpolates between log beta-tilde_t and log beta_t.
        fraction = (variance_part + 1) / 2
        log_var = fraction * _at(tables.log_betas, timesteps, x_t) + (1 - fraction) * _at(
            tables.posterior_log_variance, timesteps, x_t
        )
    elif kind == "learned":
        if (variance_part <= 0).any():
            raise ValueError(
                "variance_type 'learned' reads the second half of the output as the variance itself, and the "
                "model gave values <= 0: this model has no likelihood (use learned_range for new models)"
            )
        log_var = variance_part.log()
    elif kind in ("fixed_large", "fixed_large_log"):
        log_var = _at(tables.large_log_variance, timesteps, x_t).expand_as(x_t)
    else:
        log_var = _at(tables.posterior_log_variance, timesteps, x_t).expand_as(x_t)
    return mean, log_var


def term_bits(
    scheduler: LinearNoiseScheduler,
    tables: BoundTables,
    model_output: torch.Tensor,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    timesteps: torch.Tensor,
    clip_denoised: bool | None = None,
) -> torch.Tensor:
    """
    The bound's term at each image's t, in bits per dimension: the decoder L_0 = -log p(x_0 | x_1) where
    t = 0, L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) where t >= 1 (both at the sampled x_t).

    Args:
        scheduler, tables, model_output, x_t, timesteps, clip_denoised: as in `reverse_step`.
        x0 (`torch.Tensor` of shape `(batch, C, H, W)`): the 8-bit images on the model's [-1, 1] scale.

    Returns:
        `torch.Tensor` of shape `(batch,)`, float64.
    """
    x0 = x0.double()
    mean, log_var = reverse_step(scheduler, tables, model_output, x_t, timesteps, clip_denoised)
    true_mean = (
        _at(tables.posterior_mean_x0, timesteps, x0) * x0 + _at(tables.posterior_mean_xt, timesteps, x0) * x_t
    )
    true_log_var = _at(tables.posterior_log_variance, timesteps, x0).expand_as(x0)
    kl = normal_kl(true_mean, true_log_var, mean, log_var)
    decoder = -discretized_gaussian_log_likelihood(x0, mean, log_var)
    at_zero = (timesteps == 0).reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.where(at_zero, decoder, kl).flatten(1).mean(dim=1) / LOG2


@dataclass
class BoundResult:
    """The bound over a set of images, in bits per dimension."""

    per_image: torch.Tensor  # (N,) float64: each image's L_T + sum of L_{t-1} + L_0
    terms: torch.Tensor  # (T,) float64: the mean over images of the term at each t (t = 0: the decoder L_0)
    prior: float  # the mean L_T
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bits_per_dim(self) -> float:
        return float(self.per_image.mean())

    @property
    def standard_error(self) -> float:
        """Over the images (each with its own noise draws): std / sqrt(N); NaN for one image."""
        n = len(self.per_image)
        return float(self.per_image.std() / math.sqrt(n)) if n > 1 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "bits_per_dim": self.bits_per_dim,
            "standard_error": self.standard_error,
            "prior_bits_per_dim": self.prior,
            "decoder_bits_per_dim": float(self.terms[0]),
            "kl_bits_per_dim": float(self.terms[1:].sum()),
            **self.extra,
        }


@torch.no_grad()
def variational_bound(
    model: Any,
    scheduler: LinearNoiseScheduler,
    images: torch.Tensor,
    seed: int = 0,
    batch_size: int = 256,
    clip_denoised: bool | None = None,
    progress: bool = False,
) -> BoundResult:
    """
    The variational bound of each image (Ho et al. 2020, eq. 5), every one of its T + 1 terms computed at one
    x_t ~ q(x_t | x_0) per t (as in Ho et al.'s and Nichol & Dhariwal's evaluation): an unbiased estimate of
    each image's bound, which costs T model evaluations per image.

    Args:
        model: a `UNet2DModel` (or anything called as `model(x_t, t).sample`), in eval mode.
        scheduler (`LinearNoiseScheduler`): the model's noise schedule, prediction and variance types.
        images (`torch.Tensor` of shape `(N, C, H, W)`, uint8): the 8-bit images.
        seed (`int`): seeds the noise of the x_t, drawn in order image batch by image batch, t by t.
        batch_size (`int`): (image, t) pairs per model call: `batch_size // len(image batch)` timesteps are
            evaluated together.
        clip_denoised (`bool`, *optional*): see `reverse_step`; `None` follows the scheduler's config.
        progress (`bool`): show a tqdm bar over the image batches.

    Returns:
        [`BoundResult`]: per-image bounds, the mean term at each t, the mean L_T.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (8-bit data, the bound's unit), got {images.dtype}")
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    tables = bound_tables(scheduler, device)
    total = len(tables.alphas_cumprod)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    image_batch = max(1, min(len(images), batch_size))
    per_image, prior_sum = [], 0.0
    term_sums = torch.zeros(total, dtype=torch.float64, device=device)
    starts = range(0, len(images), image_batch)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="bound", unit="batch")
    for start in starts:
        x0 = images[start : start + image_batch].to(device).double() / 127.5 - 1  # as data.to_model_range
        n = len(x0)
        per_t = max(1, batch_size // n)  # timesteps per model call
        bits = prior_bits(x0, tables)
        prior_sum += float(bits.sum())
        for first in range(0, total, per_t):
            ts = torch.arange(first, min(first + per_t, total), device=device)
            # (k timesteps x n images) in one model call, t-major
            timesteps = ts.repeat_interleave(n)
            x0_k = x0.repeat(len(ts), 1, 1, 1)
            noise = torch.randn(x0_k.shape, generator=generator, dtype=torch.float64).to(device)
            x_t = sample_x_t(x0_k, timesteps, noise, tables)
            output = model(x_t.to(dtype), timesteps).sample
            terms = term_bits(scheduler, tables, output, x0_k, x_t, timesteps, clip_denoised).view(len(ts), n)
            bits = bits + terms.sum(dim=0)
            term_sums[ts] += terms.sum(dim=1)
        per_image.append(bits)
    return BoundResult(
        per_image=torch.cat(per_image).cpu(),
        terms=(term_sums / len(images)).cpu(),
        prior=prior_sum / len(images),
    )


def _at(table: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """table[t] of each image, shaped (batch, 1, ..., 1) to broadcast against `like`."""
    return table[timesteps.to(table.device)].reshape(-1, *([1] * (like.ndim - 1)))
