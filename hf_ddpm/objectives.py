"""The DDPM training objective: L_simple of Ho et al. 2020 (eq. 14) and its v / x_0 variants."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def diffusion_loss(
    model,
    scheduler,
    x0: torch.Tensor,
    generator: torch.Generator | None = None,
    snr_gamma: float | None = None,
    class_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error between the model's prediction and its target, at a random timestep per image.

    Algorithm 1 of the paper: t ~ Uniform({0, ..., T-1}), eps ~ N(0, I), x_t from eq. 4, then regress.

    Args:
        model: a `UNet2DModel` (or anything called as `model(x_t, t).sample`).
        scheduler: a `LinearNoiseScheduler`; its `prediction_type` picks the target: `epsilon` (the
            paper's L_simple), `v_prediction` (Salimans & Ho 2022) or `sample` (x_0 itself).
        x0: clean images in [-1, 1], shape (batch, channels, height, width).
        generator: draws t and eps, so a seeded generator makes the loss reproducible.
        snr_gamma: Min-SNR weighting (Hang et al. 2023): every target is weighted so that its loss
            equals the x_0 loss times min(SNR_t, gamma), which stops the easy low-noise steps from
            dominating. None: the unweighted loss.
        class_labels: int64 (batch,) class indices for a class-conditional UNet (see `drop_labels`).
    """
    batch = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (batch,), generator=generator, device=x0.device
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
    if snr_gamma is None:
        return F.mse_loss(prediction.float(), target.float())
    per_image = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_image * min_snr_weight(scheduler, timesteps, snr_gamma)).mean()


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


def drop_labels(
    labels: torch.Tensor, null_class: int, drop_prob: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Classifier-free guidance training (Ho & Salimans 2021): each label becomes `null_class` with
    probability `drop_prob`, so the network learns eps(x_t, t, null), the unconditional model, as well."""
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < drop_prob
    return torch.where(drop, torch.full_like(labels, null_class), labels)
