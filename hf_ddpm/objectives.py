"""The DDPM training objective: L_simple of Ho et al. 2020 (eq. 14) and its v / x_0 variants."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def diffusion_loss(
    model, scheduler, x0: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mean squared error between the model's prediction and its target, at a random timestep per image.

    Algorithm 1 of the paper: t ~ Uniform({0, ..., T-1}), eps ~ N(0, I), x_t from eq. 4, then regress.

    Args:
        model: a `UNet2DModel` (or anything called as `model(x_t, t).sample`).
        scheduler: a `LinearNoiseScheduler`; its `prediction_type` picks the target: `epsilon` (the
            paper's L_simple), `v_prediction` (Salimans & Ho 2022) or `sample` (x_0 itself).
        x0: clean images in [-1, 1], shape (batch, channels, height, width).
        generator: draws t and eps, so a seeded generator makes the loss reproducible.
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
    prediction = model(noisy, timesteps).sample
    return F.mse_loss(prediction.float(), target.float())
