"""Pixel-space against latent diffusion at 28x28: training step time, sampling time, quality and size.

    .venv/bin/python benchmarks/latent_vs_pixel.py                     # step times and the equal budget
    .venv/bin/python benchmarks/latent_vs_pixel.py --pixel checkpoints/ddpm-mnist \\
        --latent checkpoints/ldm-mnist

Everything timed is measured in the same run on this machine, each model after warm-up:
- training step: the UNet's forward, backward and AdamW step on one batch, with the recipe of each config
  (`--pixel-config`, `--latent-config`: its UNet, batch, target and Min-SNR weighting); the
  latent model trains on latents encoded once before training, so a step costs no encoding. The precision
  is what `mixed_precision: auto` picks on this CPU: bf16 autocast where it computes bf16 natively, else
  fp32. `--steps N` prints how many latent steps take as long as N pixel steps: the equal training wall
  time budget. The
  autoencoder's own step (`--autoencoder-config`'s model and batch) is timed too: training it is a
  cost the latent model pays once, on top of that budget.
- sampling: 64 images with DPM-Solver++ (20 steps), decoding included.
- quality: classifier-FID, legibility, class entropy and Inception FID from each model's eval.json (same
  protocol), beside the data floor and, where the latent model's eval.json has it, its autoencoder floor.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import diffusers
import torch
from throughput import build_plain_loop

from hf_ddpm.arguments import ArgumentParser, at_least
from hf_ddpm.config import AutoencoderRunConfig, Config, load_config
from hf_ddpm.latents import AutoencoderLoss, build_autoencoder
from hf_ddpm.pipeline import generate, load_pipeline
from hf_ddpm.training.loop import native_bf16

BF16 = native_bf16(torch.device("cpu"))


def median_step_seconds(model: torch.nn.Module, loss_fn, repeats: int) -> float:
    """Median seconds of `loss_fn()`'s forward (bf16 autocast where native), backward and an AdamW step,
    after two warm-up steps."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_seconds(cfg: Config, shape: tuple[int, ...], repeats: int) -> float:
    """A training step of `cfg`'s UNet with its loss (objective, target, weighting) and batch on random
    inputs of `shape` (channels, height, width): the throughput benchmark's plain loop at that shape."""
    loop = build_plain_loop(cfg, shape[0], image_size=shape[-1])
    generator = torch.Generator().manual_seed(cfg.training.seed)
    x0 = torch.randn(cfg.training.train_batch_size, *shape, generator=generator).clamp(-1, 1)
    return median_step_seconds(loop.model, lambda: loop.loss(x0), repeats)


def autoencoder_step_seconds(run: AutoencoderRunConfig, repeats: int) -> float:
    """train_autoencoder.py's step (encode, sample, decode, MSE + KL) for `run`'s model and batch."""
    channels, size = run.dataset.channels, run.dataset.image_size
    objective = AutoencoderLoss(build_autoencoder(run.autoencoder, channels, size), run.autoencoder.kl_weight)
    x = torch.rand(run.training.train_batch_size, channels, size, size) * 2 - 1
    generator = torch.Generator().manual_seed(0)
    return median_step_seconds(objective, lambda: objective(x, generator)[0], repeats)


def sampling_seconds(model: str, num_images: int = 64, steps: int = 20) -> float:
    diffusers.utils.logging.disable_progress_bar()
    pipeline = load_pipeline(model, "dpm-solver")
    pipeline.set_progress_bar_config(disable=True)
    generate(pipeline, 8, steps, seed=1)  # warm-up
    start = time.perf_counter()
    generate(pipeline, num_images, steps, seed=0)
    return time.perf_counter() - start


def parameters(folder: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(folder / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixel-config", default="training/configs/mnist.yaml")
    parser.add_argument("--latent-config", default="training/configs/ldm-mnist.yaml")
    parser.add_argument("--autoencoder-config", default="training/configs/autoencoder-mnist.yaml")
    parser.add_argument(
        "--latent-shape", type=at_least(1), nargs=3, default=[4, 7, 7], metavar=("C", "H", "W")
    )
    parser.add_argument("--repeats", type=at_least(1), default=10)
    parser.add_argument(
        "--steps", type=at_least(1), help="pixel steps of the equal-time budget (default: the pixel config's)"
    )
    parser.add_argument("--pixel", help="a trained pixel-space pipeline (with eval.json)")
    parser.add_argument("--latent", help="a trained latent pipeline (with eval.json)")
    args = parser.parse_args()

    pixel, latent = load_config(args.pixel_config), load_config(args.latent_config)
    batch = pixel.training.train_batch_size
    precision = "bf16 autocast" if BF16 else "fp32"
    print(f"# {torch.get_num_threads()} threads, {precision}; pixel: {args.pixel_config}, latent: "
          f"{args.latent_config}")  # fmt: skip
    size = pixel.dataset.image_size
    t_pixel = step_seconds(pixel, (pixel.dataset.channels, size, size), args.repeats)
    t_latent = step_seconds(latent, tuple(args.latent_shape), args.repeats)
    print(f"training step: pixel ({pixel.model.preset}, batch {batch}) {t_pixel * 1000:.1f} ms, latent "
          f"({latent.model.preset}, batch {latent.training.train_batch_size}) {t_latent * 1000:.1f} ms, "
          f"ratio {t_pixel / t_latent:.2f}")  # fmt: skip
    steps = args.steps or pixel.training.max_train_steps
    print(f"equal wall time: {steps} pixel steps = {round(steps * t_pixel / t_latent)} latent steps")
    autoencoder = load_config(args.autoencoder_config, schema=AutoencoderRunConfig)
    t_ae = autoencoder_step_seconds(autoencoder, args.repeats)
    ae_steps = autoencoder.training.max_train_steps
    print(f"autoencoder step {t_ae * 1000:.1f} ms: its {ae_steps} steps take "
          f"{ae_steps * t_ae / 60:.1f} min; the pixel budget is "
          f"{steps * t_pixel / 60:.1f} min")  # fmt: skip
    if not (args.pixel and args.latent):
        return

    print("| model | UNet parameters | autoencoder parameters | step (ms) | sampling 64 images (s) "
          "| classifier-FID | legibility | class entropy | Inception FID |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    reports = {}
    for name, model, step in (("pixel", args.pixel, t_pixel), ("latent", args.latent, t_latent)):
        folder = Path(model)
        reports[name] = json.loads((folder / "eval.json").read_text())
        vae = parameters(folder / "vae") if (folder / "vae").is_dir() else 0
        print(f"| {name} `{model}` | {parameters(folder / 'unet'):,} | {vae:,} | {step * 1000:.1f} | "
              f"{sampling_seconds(model):.1f} | {quality(reports[name]['samples'])}", flush=True)  # fmt: skip
    print(f"| data floor (train vs test) | | | | | {quality(reports['pixel']['floor'])}")
    decoded = reports["latent"].get("autoencoder_floor")  # what a perfect latent model would score
    if decoded:
        print(f"| the same images through the autoencoder | | | | | {quality(decoded)}")


def quality(metrics: dict) -> str:
    """The four quality cells of a table row, from one scored set of an eval.json."""
    return (
        f"{metrics['classifier_fid']:.1f} | {metrics['legibility']:.3f} | {metrics['class_entropy']:.3f} | "
        f"{metrics.get('inception_fid', float('nan')):.1f} |"
    )


if __name__ == "__main__":
    main()
