"""Exporting trained models as stock `DDPMPipeline`s, loading them back, and sampling with any sampler.

The exported `scheduler/scheduler_config.json` names `DDPMScheduler`: our `LinearNoiseScheduler` has
the same config keys and numerics, so a user with stock diffusers alone (no hf_ddpm installed) loads
the pipeline and gets the same images for the same seed.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
from PIL import Image

from .scheduler import LinearNoiseScheduler

# Sampler names of the CLI and the training config -> scheduler classes swapped in through `from_config`.
SAMPLERS = {
    "ddpm": LinearNoiseScheduler,  # Algorithm 2 of Ho et al. 2020, ancestral sampling
    "ddim": DDIMScheduler,  # Song et al. 2021, deterministic (eta = 0)
    "dpm-solver": DPMSolverMultistepScheduler,  # DPM-Solver++ (Lu et al. 2022), second order
}


def make_scheduler(sampler: str, config: dict):
    """A scheduler of the kind `sampler` (a key of `SAMPLERS`) with the noise schedule in `config`."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is unknown: choose one of {list(SAMPLERS)}")
    return SAMPLERS[sampler].from_config(config)


def export_pipeline(unet: UNet2DModel, scheduler: LinearNoiseScheduler, output_dir: str | Path) -> None:
    """Writes `model_index.json`, `unet/` (safetensors) and `scheduler/` loadable by stock `DDPMPipeline`."""
    stock_scheduler = DDPMScheduler.from_config(scheduler.config)
    DDPMPipeline(unet=unet, scheduler=stock_scheduler).save_pretrained(output_dir, safe_serialization=True)


def load_pipeline(
    model: str | Path, sampler: str = "ddpm", device: str | torch.device = "cpu"
) -> DDPMPipeline:
    """Loads an exported pipeline from a folder or a Hub repo id and swaps in `sampler`'s scheduler."""
    local = Path(model)
    if local.is_dir() and not (local / "model_index.json").is_file():
        raise ValueError(
            f"{model} holds no model_index.json: point --model at a folder written by training/train.py "
            "(its output_dir) or at a Hub repo id"
        )
    pipeline = DDPMPipeline.from_pretrained(model, use_safetensors=True)
    pipeline.scheduler = make_scheduler(sampler, pipeline.scheduler.config)
    return pipeline.to(device)


@torch.no_grad()
def generate(
    pipeline: DDPMPipeline, num_images: int, num_inference_steps: int, seed: int, batch_size: int = 64
) -> np.ndarray:
    """Samples `num_images` images; returns uint8 of shape (num_images, H, W, C).

    One generator seeded once drives every batch, so the result depends on `seed` alone.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    batches = []
    for start in range(0, num_images, batch_size):
        images = pipeline(
            batch_size=min(batch_size, num_images - start),
            generator=generator,
            num_inference_steps=num_inference_steps,
            output_type="np",
        ).images
        batches.append(np.round(images * 255).astype(np.uint8))
    return np.concatenate(batches)


def save_grid(images: np.ndarray, path: str | Path, padding: int = 2) -> Path:
    """Writes uint8 images (N, H, W, C) as one PNG grid, as square as possible."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), dtype=np.uint8)
    for i, image in enumerate(images):
        y, x = padding + (i // cols) * (h + padding), padding + (i % cols) * (w + padding)
        grid[y : y + h, x : x + w] = image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside, then renamed: a kill mid-write never leaves a truncated PNG under the real name.
    partial = path.with_name(path.name + ".partial")
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(partial, format="PNG")
    partial.replace(path)
    return path
