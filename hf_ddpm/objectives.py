"""The training objectives: L_simple of Ho et al. 2020 (eq. 14) with its v / x_0 variants, L_hybrid for
learned variances (Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models"), and flow
matching (Lipman et al. 2023, "Flow Matching for Generative Modeling"; Liu et al. 2023, "Rectified Flow")."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F

from .likelihood import bound_tables, term_bits
from .scheduler import LEARNED_VARIANCE_TYPES

if TYPE_CHECKING:
    from .config import DiffusionConfig, TrainingConfig

# lambda of L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal 2021, Sec. 3.1).
VLB_WEIGHT = 0.001


def diffusion_loss(
    model,
    scheduler,
    x0: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    snr_gamma: float | None = None,
    class_labels: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
    weighting_scheme: str = "none",
) -> torch.Tensor:
    """Mean squared error between the model's prediction and its target, at a random timestep per image; with
    learned variances, L_hybrid.

    Algorithm 1 of the paper: t ~ Uniform({0, ..., T-1}), eps ~ N(0, I), x_t from eq. 4, then regress.

    When the scheduler's `variance_type` is `learned_range`, the UNet outputs 2C channels: the first C are
    trained with the loss above (the configured target and Min-SNR weighting), the last C (the variance
    interpolation v of Nichol & Dhariwal 2021, eq. 15) with the variational bound's term at the same t:
    L_hybrid = L_simple + 0.001 L_vlb (`VLB_WEIGHT`, the paper's lambda). The term sees the mean with its
    gradient stopped, so L_vlb trains only the variances and L_simple alone the mean (Sec. 3.1). L_vlb is in
    bits per dimension, estimated at the batch's t as T L_t (`hf_ddpm.likelihood.term_bits`: the decoder L_0
    at t = 0, KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) above), so x0 must be 8-bit data on [-1, 1].
    t stays uniform: Nichol & Dhariwal's importance sampling of t lowers the variance of L_vlb trained alone,
    and they found it does not help L_hybrid. `learned` (the raw output read as the variance, diffusers'
    convention) cannot be trained this way: nothing keeps the output positive.

    Args:
        model: a `UNet2DModel` (or anything called as `model(x_t, t).sample`).
        scheduler: a `LinearNoiseScheduler`; its `prediction_type` picks the target: `epsilon` (the
            paper's L_simple), `v_prediction` (Salimans & Ho 2022) or `sample` (x_0 itself).
        x0: clean images in [-1, 1], shape (batch, channels, height, width).
        generator: draws t and eps, so a seeded generator makes the loss reproducible.
        snr_gamma: Min-SNR weighting (Hang et al. 2023): every target is weighted so that its loss
            equals the x_0 loss times min(SNR_t, gamma), which stops the easy low-noise steps from
            dominating. None: the unweighted loss.
        class_labels: int64 (batch,) class indices for a class-conditional UNet.
        noise, timesteps: eps (shape of `x0`) and t (int64, (batch,)) drawn beforehand (`draw_batch`);
            drawn from `generator` when None.
        weighting_scheme: `none`, or `p2` (Choi et al. 2022, "Perception Prioritized Training of Diffusion
            Models", k = 1, gamma = 1): the epsilon loss weighted by 1 / (1 + SNR_t), which moves the
            effort from the nearly clean steps to the coarse and content steps. Not with `snr_gamma`.
    """
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if timesteps is None:
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator, device=x0.device
        )
    noisy = scheduler.add_noise(x0, noise, timesteps)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(x0, noise, timesteps)
    else:
        target = x0
    conditioning = {} if class_labels is None else {"class_labels": class_labels}
    prediction = model(noisy, timesteps, **conditioning).sample
    variance_type = scheduler.config.variance_type
    if variance_type in LEARNED_VARIANCE_TYPES:
        if variance_type == "learned":
            raise ValueError(
                "variance_type 'learned' reads the raw output as the variance, which training cannot keep "
                "positive: use learned_range (Nichol & Dhariwal 2021)"
            )
        mean_part, variance_part = prediction.split(x0.shape[1], dim=1)
    else:
        mean_part = prediction
    if snr_gamma is None and weighting_scheme == "none":
        loss = F.mse_loss(mean_part.float(), target.float())
    else:
        per_image = F.mse_loss(mean_part.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if snr_gamma is not None:
            weight = min_snr_weight(scheduler, timesteps, snr_gamma)
        elif weighting_scheme == "p2":
            weight = p2_weight(scheduler, timesteps)
        else:
            raise ValueError(f"unknown weighting_scheme {weighting_scheme!r}: use none or p2")
        loss = (per_image * weight).mean()
    if variance_type not in LEARNED_VARIANCE_TYPES:
        return loss
    # The stop-gradient on the mean: L_vlb sees the mean but trains only the variance channels.
    frozen_mean = torch.cat([mean_part.detach(), variance_part], dim=1)
    tables = bound_tables(scheduler, x0.device)
    vlb_term = term_bits(scheduler, tables, frozen_mean, x0, noisy, timesteps, clip_denoised=False)
    return loss + VLB_WEIGHT * scheduler.config.num_train_timesteps * vlb_term.mean().float()


def min_snr_weight(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-timestep weights (batch,) of Min-SNR-gamma for the scheduler's prediction type.

    With SNR_t = alpha_bar_t / (1 - alpha_bar_t), the x_0 error is the epsilon error / SNR_t and the
    v error / (SNR_t + 1); dividing by that factor turns min(SNR_t, gamma) on x_0 into each target's weight.
    """
    alpha_bar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].double()
    snr = alpha_bar / (1 - alpha_bar)
    clipped = snr.clamp(max=gamma)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        weight = clipped / snr
    elif prediction_type == "v_prediction":
        weight = clipped / (snr + 1)
    else:
        weight = clipped
    return weight.float()


def p2_weight(scheduler, timesteps: torch.Tensor, k: float = 1.0, gamma: float = 1.0) -> torch.Tensor:
    """Per-timestep weights (batch,) of P2 weighting for the scheduler's prediction type.

    Choi et al. 2022 weight the epsilon loss by 1 / (k + SNR_t)^gamma; as in `min_snr_weight`, the x_0 error
    is the epsilon error / SNR_t and the v error / (SNR_t + 1), which converts it to the other targets.
    """
    alpha_bar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].double()
    snr = alpha_bar / (1 - alpha_bar)
    epsilon_weight = (k + snr) ** -gamma
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        weight = epsilon_weight
    elif prediction_type == "v_prediction":
        weight = epsilon_weight * snr / (snr + 1)
    else:
        weight = epsilon_weight * snr
    return weight.float()


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x_0 + t noise: the straight path from the data (t = 0) to the noise (t = 1).

    Args:
        x0, noise: (batch, C, H, W).
        t: (batch,) times in [0, 1].
    """
    t = t.to(x0.dtype)[:, None, None, None]
    return (1 - t) * x0 + t * noise


def velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """d x_t / dt = noise - x_0: the flow-matching target, the same at every t of a path."""
    return noise - x0


def flow_times(uniform: torch.Tensor, sampling: str, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Flow-matching times t in [0, 1] from uniform draws u (batch,).

    `uniform` keeps t = u; `logit_normal` returns sigmoid(mean + std * Phi^-1(u)), a draw of the logit-normal
    distribution of Esser et al. 2024 (the inverse CDF of the one uniform draw, so both options use the same
    random numbers).
    """
    if sampling == "uniform":
        return uniform
    if sampling == "logit_normal":
        return torch.sigmoid(mean + std * torch.special.ndtri(uniform))
    raise ValueError(f"unknown time sampling {sampling!r}: use uniform or logit_normal")


def flow_matching_loss(
    model,
    x0: torch.Tensor,
    *,
    noise: torch.Tensor,
    t: torch.Tensor,
    num_train_timesteps: int,
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Conditional flow matching: the MSE between the UNet's output at x_t and the velocity noise - x_0.

    Args:
        model: a `UNet2DModel`; it sees the time as timestep t * num_train_timesteps, the scale of
            `FlowMatchEulerDiscreteScheduler.timesteps` at sampling time (and of a DDPM's timesteps).
        x0: clean images in [-1, 1], (batch, C, H, W).
        noise: N(0, I) draws, shape of `x0`.
        t: (batch,) times in [0, 1] (`flow_times`).
        class_labels: int64 (batch,) class indices for a class-conditional UNet.
    """
    conditioning = {} if class_labels is None else {"class_labels": class_labels}
    prediction = model(interpolate(x0, noise, t), t * num_train_timesteps, **conditioning).sample
    return F.mse_loss(prediction.float(), velocity(x0, noise).float())


def step_generator(seed: int, *keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded by (`seed`, `*keys`), e.g. (seed, micro-step): the random numbers of a step then
    depend on the step alone, so a resumed run needs no generator state."""
    digest = hashlib.sha256(":".join(map(str, (seed, *keys))).encode()).digest()
    # torch's CPU generator keeps 32 bits of a seed: mix all the numbers into those.
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:4], "little"))


class BatchDraws(NamedTuple):
    """The random numbers of one training micro-batch, for this process's rows."""

    noise: torch.Tensor  # (batch, C, H, W): eps ~ N(0, I)
    timesteps: torch.Tensor  # int64 (batch,): t ~ Uniform({0, ..., T-1})
    flip: torch.Tensor  # bool (batch,): mirror the image (dataset.random_flip)
    drop: torch.Tensor  # bool (batch,): replace the label by the null class (classifier-free guidance)
    uniform: torch.Tensor  # (batch,): u ~ Uniform(0, 1), flow matching's time (`flow_times`)


def draw_batch(
    seed: int,
    micro_step: int,
    shape: tuple[int, ...],
    num_train_timesteps: int,
    drop_prob: float = 0.0,
    num_processes: int = 1,
    process_index: int = 0,
    device: str | torch.device = "cpu",
) -> BatchDraws:
    """Draws the noise, the timesteps (DDPM) and uniform times (flow matching), the flips and the label
    dropout of micro-batch `micro_step` (counted from 0 over the whole run).

    Everything is drawn for the global micro-batch (`num_processes * shape[0]` rows, in the order the
    processes' shards make it up) from a generator seeded by (`seed`, `micro_step`), and this process
    keeps its rows. So an image's random numbers depend only on the step and its place in the global
    batch: one process at batch 2B draws what two processes at batch B draw together, and a resumed
    run needs no generator state.

    Args:
        shape: this process's batch of images, (batch, channels, height, width).
        drop_prob: the probability that `drop` is True for a row.
    """
    generator = step_generator(seed, micro_step, device=device)
    batch, rows = num_processes * shape[0], slice(process_index * shape[0], (process_index + 1) * shape[0])
    options = {"generator": generator, "device": device}
    flip = torch.rand(batch, **options) < 0.5
    drop = torch.rand(batch, **options) < drop_prob
    noise = torch.randn((batch, *shape[1:]), **options)
    timesteps = torch.randint(0, num_train_timesteps, (batch,), **options)
    uniform = torch.rand(batch, **options)  # drawn last: the draws above stay those of earlier versions
    return BatchDraws(noise[rows], timesteps[rows], flip[rows], drop[rows], uniform[rows])


def training_loss(
    model,
    scheduler,
    x0: torch.Tensor,
    draws: BatchDraws,
    *,
    diffusion: DiffusionConfig,
    training: TrainingConfig,
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """The loss a run's config trains, on one micro-batch's random numbers (`draw_batch`): flow matching's
    velocity regression, or L_simple with the configured target and weighting (L_hybrid with learned
    variances). train.py and the benchmarks' plain training step both call it, so they train the same thing.

    Args:
        scheduler: the DDPM noise schedule (`LinearNoiseScheduler`); flow matching does not use it.
        x0: clean images (or scaled latents), (batch, C, H, W).
        class_labels: int64 (batch,) class indices for a class-conditional UNet, the null class where dropped.
    """
    if diffusion.flow_matching:
        return flow_matching_loss(
            model,
            x0,
            noise=draws.noise,
            t=flow_times(draws.uniform, diffusion.time_sampling, diffusion.logit_mean, diffusion.logit_std),
            num_train_timesteps=diffusion.num_train_timesteps,
            class_labels=class_labels,
        )
    return diffusion_loss(
        model,
        scheduler,
        x0,
        noise=draws.noise,
        timesteps=draws.timesteps,
        snr_gamma=training.snr_gamma,
        weighting_scheme=training.weighting_scheme,
        class_labels=class_labels,
    )
