"""The autoencoder trainer of latent diffusion (Rombach et al. 2022): a diffusers `AutoencoderKL` that maps
28x28 images to small latents (4x7x7 by default) and back, for `model.latent_autoencoder` in train.py.

The loss is the mean squared pixel error of the reconstruction from a sampled latent plus
`autoencoder.kl_weight` x KL(q(z|x) || N(0, I)). At the end the (EMA) weights are saved with
`save_pretrained` (safetensors; stock diffusers loads them) together with `scaling_factor` = 1 / the
standard deviation of the training set's latent means, so that scaled latents have unit variance like
the noise of the diffusion. Outputs in `training.output_dir`: `config.json` and
`diffusion_pytorch_model.safetensors` (the autoencoder), `eval.json` (reconstruction error, PSNR and the
classifier's accuracy on reconstructed test images), `reconstructions.png` (rows of test images, each
above its reconstruction), `config.yaml`, `checkpoint-STEP/` and `logs/`.
"""

from __future__ import annotations

import torch
from accelerate.logging import get_logger
from diffusers import AutoencoderKL

from ..config import AutoencoderRunConfig
from ..data import load_labeled_split, to_model_range
from ..files import write_json
from ..latents import AutoencoderLoss, build_autoencoder, encode_latents, reconstruct
from ..objectives import draw_batch, step_generator
from ..pipeline import save_grid
from .loop import TrainLoop

logger = get_logger(__name__, log_level="INFO")


class AutoencoderTrainer(TrainLoop):
    config_class = AutoencoderRunConfig
    tracker_project = "hf-ddpm-autoencoder"
    ema_folder = "vae_ema"

    def build_model(self) -> AutoencoderLoss:
        # The objective as a module, so that DDP wraps one forward that runs encoder and decoder.
        vae = build_autoencoder(self.cfg.autoencoder, self.info.channels, self.cfg.dataset.image_size)
        return AutoencoderLoss(vae, self.cfg.autoencoder.kl_weight)

    def ema_model(self, model: AutoencoderLoss) -> AutoencoderKL:
        return model.vae

    def describe(self) -> str:
        a = self.cfg.autoencoder
        size = self.info.image_size // 2 ** (len(a.block_out_channels) - 1)
        parameters = sum(p.numel() for p in self.model.parameters())
        return f"AutoencoderKL with {parameters:,} parameters, latents {a.latent_channels}x{size}x{size}"

    def compute_loss(self, model, images, labels, micro_step):
        seed = self.cfg.training.seed
        x = to_model_range(images)
        if self.cfg.dataset.random_flip:
            draws = draw_batch(
                seed,
                micro_step,
                x.shape,
                num_train_timesteps=1,
                num_processes=self.accelerator.num_processes,
                process_index=self.accelerator.process_index,
                device=x.device,
            )
            x = torch.where(draws.flip[:, None, None, None], x.flip(-1), x)
        # The latent's sampling noise, keyed like every other random number by the micro-step.
        generator = step_generator(seed, micro_step, self.accelerator.process_index, device=x.device)
        loss, mse, kl = model(x, generator)
        return loss, {"mse": mse.detach(), "kl": kl.detach()}

    def export(self) -> None:
        """The autoencoder with its scaling_factor, the test split's reconstruction numbers, the grid."""
        self.on_main_process(lambda: finish(self.ema_model(self.unwrapped_model), self.cfg, self.dataset))


def reconstruction_metrics(
    vae: AutoencoderKL, images: torch.Tensor, labels: torch.Tensor, classifier
) -> dict:
    """Mean squared error and PSNR in [0, 1] pixel units, and the classifier's accuracy on the
    reconstructions next to its accuracy on the originals."""
    from ..classifier import predict

    recon = reconstruct(vae, images)
    per_image = ((recon.float() - images.float()) / 255).square().mean(dim=(1, 2, 3))
    accuracy = {}
    for name, x in (("reconstructed", recon), ("original", images)):
        _, probs = predict(classifier, x)
        accuracy[name] = (probs.argmax(-1) == labels).float().mean().item()
    return {
        "test_images": len(images),
        "mse": per_image.mean().item(),
        "psnr_db": (10 * torch.log10(1 / per_image.clamp(min=1e-10))).mean().item(),
        "classifier_accuracy_reconstructed": accuracy["reconstructed"],
        "classifier_accuracy_original": accuracy["original"],
    }


def finish(vae: AutoencoderKL, cfg: AutoencoderRunConfig, dataset) -> None:
    """Measures `scaling_factor` on the training split and saves the autoencoder with it, then writes the
    reconstruction metrics of the test split (`eval.json`) and `reconstructions.png`."""
    from ..classifier import load_classifier
    from ..evaluate import dataset_key, random_subset

    output_dir = cfg.training.output_dir
    latents = encode_latents(vae, dataset.tensors[0])
    scaling_factor = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scaling_factor)
    vae.save_pretrained(output_dir)  # safetensors

    source = cfg.dataset.path or cfg.dataset.name
    test_images, labels, _ = load_labeled_split(source, "test", cfg.training.eval_num_images)
    classifier = load_classifier(cfg.training.eval_classifier or dataset_key(source))
    report = {
        "scaling_factor": scaling_factor,
        "latent_shape": list(latents.shape[1:]),
        **reconstruction_metrics(vae, test_images, labels, classifier),
    }
    write_json(f"{output_dir}/eval.json", report)
    originals = random_subset(test_images, 32, cfg.training.seed)  # splits may be sorted by class
    shape = (4, 8, *originals.shape[1:])  # 4 rows of 8 test images, each row above its reconstruction
    grid = torch.stack([originals.reshape(shape), reconstruct(vae, originals).reshape(shape)], dim=1)
    save_grid(
        grid.reshape(-1, *shape[2:]).permute(0, 2, 3, 1).numpy(), f"{output_dir}/reconstructions.png", cols=8
    )
    logger.info(
        f"saved {output_dir}: test MSE {report['mse']:.5f}, PSNR {report['psnr_db']:.2f} dB, classifier "
        f"accuracy {report['classifier_accuracy_reconstructed']:.4f} on reconstructions "
        f"({report['classifier_accuracy_original']:.4f} on the originals), scaling_factor "
        f"{scaling_factor:.4f}"
    )
