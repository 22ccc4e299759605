"""Latent diffusion (Rombach et al. 2022): the autoencoder named by `model.latent_autoencoder`, and the
training images encoded once into the scaled latents the UNet learns.

The latents are the means of q(z | x), multiplied by the autoencoder's `scaling_factor` (1 / their standard
deviation on the training set, set by training/train_autoencoder.py) so that they have about unit variance,
like the noise they are mixed with; `LatentDDPMPipeline` divides by it again before decoding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from .config import AutoencoderConfig
from .data import to_model_range, to_uint8


class AutoencoderLoss(torch.nn.Module):
    """The training objective as a module, so that DDP wraps one forward that runs encoder and decoder."""

    def __init__(self, vae: AutoencoderKL, kl_weight: float):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        posterior = self.vae.encode(x).latent_dist
        reconstruction = self.vae.decode(posterior.sample(generator)).sample
        mse = F.mse_loss(reconstruction.float(), x.float())
        kl = posterior.kl().mean()  # summed over the latent, averaged over the images
        return mse + self.kl_weight * kl, mse, kl


def build_autoencoder(cfg: AutoencoderConfig, channels: int, image_size: int) -> AutoencoderKL:
    """A freshly initialised `AutoencoderKL` for square `channels`-channel images (`AutoencoderConfig`)."""
    blocks = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=image_size,
    )


def load_autoencoder(name_or_path: str, channels: int, device: str | torch.device = "cpu") -> AutoencoderKL:
    """A frozen `AutoencoderKL` in eval mode from a folder or Hub repo (safetensors only); `ValueError` in
    one line when there is none or it was trained on images of another channel count."""
    try:
        vae = AutoencoderKL.from_pretrained(name_or_path, use_safetensors=True)
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:200]
        raise ValueError(
            f"model.latent_autoencoder {name_or_path!r} is not an AutoencoderKL folder or Hub repo "
            f"({reason}): train one with training/train_autoencoder.py and pass its output_dir"
        ) from err
    if vae.config.in_channels != channels:
        raise ValueError(
            f"model.latent_autoencoder {name_or_path!r} encodes {vae.config.in_channels}-channel images, "
            f"the data have {channels}: set dataset.channels {vae.config.in_channels} or train a matching "
            "autoencoder"
        )
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Latent means (N, latent_channels, h, w) of uint8 images (N, C, H, W), not scaled."""
    device = next(vae.parameters()).device
    batches = images.split(batch_size)
    means = [
        vae.encode(to_model_range(b).to(device)).latent_dist.mode().cpu()
        for b in tqdm(batches, desc="encode", disable=len(batches) < 10)
    ]
    return torch.cat(means)


@torch.no_grad()
def reconstruct(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """uint8 reconstructions of uint8 images (N, C, H, W) through the latent means."""
    vae.eval()
    device = next(vae.parameters()).device
    out = []
    for batch in images.split(batch_size):
        latents = vae.encode(to_model_range(batch).to(device)).latent_dist.mode()
        out.append(to_uint8(vae.decode(latents).sample).cpu())
    return torch.cat(out)


def encode_dataset(vae: AutoencoderKL, dataset, flip: bool) -> TensorDataset:
    """The in-memory split `(uint8 images, labels)` as `(scaled latents (N, views, c, h, w), labels)`: view 0
    encodes each image, view 1 (when `flip`) its mirror image, since a mirrored latent is not the latent
    of the mirrored image."""
    if not isinstance(dataset, TensorDataset):
        raise ValueError(
            "latent diffusion encodes the training split once, in memory: set dataset.streaming false"
        )
    images, labels = dataset.tensors
    views = [images, images.flip(-1)] if flip else [images]
    scale = vae.config.scaling_factor
    return TensorDataset(torch.stack([encode_latents(vae, v) * scale for v in views], dim=1), labels)
