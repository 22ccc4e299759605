"""Train the autoencoder of latent diffusion (Rombach et al. 2022): a diffusers `AutoencoderKL` that maps
28x28 images to small latents (4x7x7 by default) and back, for `model.latent_autoencoder` in train.py.

    accelerate launch training/train_autoencoder.py --config training/configs/autoencoder-mnist.yaml

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

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hf_ddpm.checkpoints import (
    check_writable,
    checkpoint_step,
    load_checkpoint,
    register_ema,
    resolve_checkpoint,
    save_checkpoint,
)
from hf_ddpm.config import AutoencoderRunConfig, load_config
from hf_ddpm.data import check_batches, load_image_dataset, load_labeled_split, to_model_range, to_uint8
from hf_ddpm.latents import AutoencoderLoss, build_autoencoder, encode_latents
from hf_ddpm.objectives import step_generator
from hf_ddpm.pipeline import save_grid

logger = get_logger(__name__, log_level="INFO")


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


def reconstruction_metrics(
    vae: AutoencoderKL, images: torch.Tensor, labels: torch.Tensor, classifier
) -> dict:
    """Mean squared error and PSNR in [0, 1] pixel units, and the classifier's accuracy on the
    reconstructions next to its accuracy on the originals."""
    from hf_ddpm.classifier import predict

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


def main(cfg: AutoencoderRunConfig) -> None:
    t = cfg.training
    output_dir = Path(t.output_dir)
    accelerator = Accelerator(
        mixed_precision=t.mixed_precision,
        log_with=None if t.report_to == "none" else t.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=t.seed),
    )
    if accelerator.is_main_process:
        try:
            check_writable(output_dir)
        except ValueError as err:
            sys.exit(f"error: {err}")
        cfg.save(output_dir / "config.yaml")
    set_seed(t.seed)
    if cfg.dataset.streaming:
        sys.exit(
            "error: scaling_factor is measured on the whole split, in memory: set dataset.streaming false"
        )
    try:
        dataset, info = load_image_dataset(cfg.dataset, seed=t.seed)
        check_batches(info.num_rows, t.train_batch_size, accelerator.num_processes)
    except (ValueError, RuntimeError) as err:
        sys.exit(f"error: {err}")
    vae = build_autoencoder(cfg.autoencoder, info.channels, cfg.dataset.image_size)
    ema = None
    if t.use_ema:
        ema = EMAModel(
            vae.parameters(), decay=t.ema_max_decay, model_cls=AutoencoderKL, model_config=vae.config
        )
        register_ema(accelerator, ema, AutoencoderKL, "vae_ema")
    objective = AutoencoderLoss(vae, cfg.autoencoder.kl_weight)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=t.learning_rate)
    dataloader = DataLoader(dataset, batch_size=t.train_batch_size, shuffle=True, drop_last=True)
    lr_scheduler = get_scheduler(
        t.lr_scheduler,
        optimizer,
        num_warmup_steps=t.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=t.max_train_steps * accelerator.num_processes,
    )
    objective, optimizer, dataloader, lr_scheduler = accelerator.prepare(
        objective, optimizer, dataloader, lr_scheduler
    )

    step = 0
    if t.resume_from_checkpoint:
        path = resolve_checkpoint(output_dir, t.resume_from_checkpoint)
        if path is not None:
            try:
                load_checkpoint(accelerator, path, accelerator.unwrap_model(objective).state_dict())
            except ValueError as err:
                sys.exit(f"error: {err}")
            step = checkpoint_step(path)
    if accelerator.is_main_process and t.report_to != "none":
        accelerator.init_trackers("hf-ddpm-autoencoder")
    size = info.image_size // 2 ** (len(cfg.autoencoder.block_out_channels) - 1)
    logger.info(
        f"{info.num_rows} images from {info.source}; AutoencoderKL with "
        f"{sum(p.numel() for p in vae.parameters()):,} parameters, latents "
        f"{cfg.autoencoder.latent_channels}x{size}x{size}"
    )
    epoch, skip = divmod(step, len(dataloader))
    progress = tqdm(
        total=t.max_train_steps, initial=step, desc="train", disable=not accelerator.is_local_main_process
    )
    objective.train()
    while step < t.max_train_steps:
        dataloader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        skip = 0
        for images, _ in batches:
            x = to_model_range(images)
            if cfg.dataset.random_flip:
                flip = torch.rand(len(x), generator=step_generator(t.seed, step, -1)) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss, mse, kl = objective(x, step_generator(t.seed, step, accelerator.process_index))
            accelerator.backward(loss)
            if t.max_grad_norm > 0:
                accelerator.clip_grad_norm_(objective.parameters(), t.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(accelerator.unwrap_model(objective).vae.parameters())
            step += 1
            logs = {
                "loss": loss.item(),
                "mse": mse.item(),
                "kl": kl.item(),
                "lr": lr_scheduler.get_last_lr()[0],
            }
            progress.update(1)
            progress.set_postfix(mse=f"{logs['mse']:.4f}", kl=f"{logs['kl']:.1f}")
            accelerator.log(logs, step=step)
            if step % t.checkpointing_steps == 0 or step == t.max_train_steps:
                save_checkpoint(accelerator, output_dir, step, t.checkpoints_total_limit)
            if step >= t.max_train_steps:
                break
        epoch += 1
    progress.close()

    if accelerator.is_main_process:
        vae = accelerator.unwrap_model(objective).vae
        if ema is not None:
            ema.copy_to(vae.parameters())
        finish(vae, cfg, dataset, output_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()


def finish(vae: AutoencoderKL, cfg: AutoencoderRunConfig, dataset, output_dir: Path) -> None:
    """scaling_factor, the reconstruction numbers on the test split, the grid, and the saved autoencoder."""
    from hf_ddpm.classifier import load_classifier
    from hf_ddpm.evaluate import dataset_key, random_subset

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
    (output_dir / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    originals = random_subset(test_images, 32, cfg.training.seed)  # splits may be sorted by class
    shape = (4, 8, *originals.shape[1:])  # 4 rows of 8 test images, each row above its reconstruction
    grid = torch.stack([originals.reshape(shape), reconstruct(vae, originals).reshape(shape)], dim=1)
    save_grid(
        grid.reshape(-1, *shape[2:]).permute(0, 2, 3, 1).numpy(), output_dir / "reconstructions.png", cols=8
    )
    logger.info(
        f"saved {output_dir}: test MSE {report['mse']:.5f}, PSNR {report['psnr_db']:.2f} dB, classifier "
        f"accuracy {report['classifier_accuracy_reconstructed']:.4f} on reconstructions "
        f"({report['classifier_accuracy_original']:.4f} on the originals), scaling_factor "
        f"{scaling_factor:.4f}"
    )


def parse_args(argv: list[str] | None = None) -> AutoencoderRunConfig:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML file with sections dataset, autoencoder, training")
    args, overrides = parser.parse_known_args(argv)
    try:
        return load_config(args.config, overrides, AutoencoderRunConfig)
    except ValueError as err:
        parser.error(str(err))


if __name__ == "__main__":
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S", level=logging.INFO
    )
    main(parse_args())
