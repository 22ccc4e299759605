"""Learned against fixed reverse variances on MNIST (Nichol & Dhariwal 2021, "Improved Denoising Diffusion
Probabilistic Models"): same UNet, data, batch and steps; sampled by the ancestral sampler with fewer steps.

    # train both models one after the other (resume a killed run by repeating it with
    # --training.resume_from_checkpoint latest)
    .venv/bin/python benchmarks/learned_variance.py train
    # sample each with 1000, 100, 50 and 25 ancestral steps, score, time a training step of each
    .venv/bin/python benchmarks/learned_variance.py compare --picture docs/images/learned_variance.png

Both models are training/configs/mnist.yaml's recipe with epsilon-prediction, the paper's (Min-SNR-5, bf16,
EMA 0.999, seed 0). `fixed` keeps the paper's fixed_small variances; `learned` has `diffusion.variance_type:
learned_range`: the UNet's 2 output channels are epsilon and the variance interpolation v, trained with
L_hybrid = L_simple + 0.001 L_vlb. The paper's claim is that learned variances keep the ancestral sampler's
quality with far fewer steps (their Fig. 8). A learned_range step costs one more output channel and the
bound's term, so `compare` times one training step of each in the same run; each row of its table is appended
to `OUT_ROOT/compare.jsonl` as it is scored, and a rerun skips those rows. `train` passes any other train.py
option on to both runs, for example `--model.preset tiny --training.max_train_steps 3000` for a shorter run
(docs/scheduler.md gives the options of the run it reports).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from flow_vs_ddpm import step_grid_picture, train_minutes
from latent_vs_pixel import median_step_seconds

from hf_ddpm.arguments import ArgumentParser, at_least
from hf_ddpm.config import load_config
from hf_ddpm.evaluate import data_floor, load_reference, score, to_nchw
from hf_ddpm.files import write_json
from hf_ddpm.metrics import MIN_FID_IMAGES
from hf_ddpm.models import build_unet
from hf_ddpm.objectives import diffusion_loss, draw_batch
from hf_ddpm.pipeline import generate, load_pipeline
from hf_ddpm.scheduler import LinearNoiseScheduler

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "training" / "configs" / "mnist.yaml"
# Nothing scored during training (compare scores both alike); the final grid with 100 ancestral steps.
COMMON = [
    *("--training.eval_every", "0", "--training.save_images_steps", "100000"),
    *("--training.sampler", "ddpm", "--training.num_inference_steps", "100"),
    *("--diffusion.prediction_type", "epsilon"),
]
MODELS = {"fixed": [], "learned": ["--diffusion.variance_type", "learned_range"]}
STEPS = (1000, 100, 50, 25)


def train(names: list[str], out_root: Path, threads: int, extra: list[str]) -> None:
    for name in names:
        command = [
            *(sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1"),
            *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
            *("--num_cpu_threads_per_process", str(threads)),
            str(REPO / "training" / "train.py"),
            *("--config", str(CONFIG)),
            *("--training.output_dir", str(out_root / name)),
            *COMMON,
            *MODELS[name],
            *extra,
        ]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def step_seconds(repeats: int, preset: str, batch: int = 64) -> dict[str, float]:
    """One training step of each model with the runs' UNet preset at batch 64 (bf16 autocast, AdamW), on
    8-bit images (the bound's decoder needs them) with train.py's loss."""
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 256, (batch, 1, 28, 28), generator=generator).float() / 127.5 - 1
    draws = draw_batch(0, 0, tuple(x0.shape), 1000)
    options = {"snr_gamma": 5.0, "noise": draws.noise, "timesteps": draws.timesteps}
    seconds = {}
    for name, variance in (("fixed", "fixed_small"), ("learned", "learned_range")):
        scheduler = LinearNoiseScheduler(variance_type=variance)
        torch.manual_seed(0)
        unet = build_unet(preset, variance_type=variance)
        loss = lambda unet=unet, scheduler=scheduler: diffusion_loss(unet, scheduler, x0, **options)  # noqa: E731
        seconds[name] = median_step_seconds(unet, loss, repeats)
    return seconds


def compare(out_root: Path, num_images: int, seed: int, picture: Path | None, repeats: int) -> None:
    threads = torch.get_num_threads()
    print(f"# {num_images} samples per row, seed {seed}, {threads} threads; classifier metrics against the "
          "MNIST test split (10,000 digits)", flush=True)  # fmt: skip
    steps = step_seconds(repeats, load_config(out_root / "fixed" / "config.yaml").model.preset)
    print("\n| model | train step (ms, measured here) | vs fixed | steps | training clock (min) |")
    print("|---|---|---|---|---|")
    for name, s in steps.items():
        run = out_root / name
        info = json.loads((run / "run_info.json").read_text())
        print(f"| {name} | {1000 * s:.1f} | {s / steps['fixed']:.3f}x | {info['steps']} | "
              f"{train_minutes(run):.1f} |", flush=True)  # fmt: skip

    ref = load_reference("mnist")
    done_path = out_root / "compare.jsonl"
    done = {}
    if done_path.is_file():
        for line in done_path.read_text().splitlines():
            row = json.loads(line)
            if row["num_images"] == num_images and row["seed"] == seed:
                done[row["model"], row["steps"]] = row
    print("\n| model | steps | classifier-FID | legibility | class entropy | s/image |")
    print("|---|---|---|---|---|---|")
    cells = {}
    for name in MODELS:
        pipeline = load_pipeline(out_root / name, "ddpm")
        pipeline.set_progress_bar_config(disable=True)
        for n in STEPS:
            if (name, n) not in done:
                start = time.perf_counter()
                images = generate(pipeline, num_images, n, seed=seed, batch_size=128)
                seconds = (time.perf_counter() - start) / num_images
                row = {"model": name, "steps": n, "num_images": num_images, "seed": seed,
                       **score(to_nchw(images), ref), "s_per_image": seconds}  # fmt: skip
                np.save(out_root / f"samples-{name}-{n}.npy", images[:16])
                with open(done_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                done[name, n] = row
            print(_row(done[name, n]), flush=True)
            cells[name, n] = np.load(out_root / f"samples-{name}-{n}.npy")
    floor = data_floor(ref, num_images)
    print(
        _row(
            {
                "model": f"data ({num_images} train vs test)",
                "steps": "-",
                **floor,
                "s_per_image": float("nan"),
            }
        )
    )
    write_json(
        out_root / "compare.json",
        {"num_images": num_images, "seed": seed, "threads": threads, "train_step_seconds": steps,
         "rows": [done[k] for k in sorted(done)], "floor": floor},
    )  # fmt: skip
    if picture:
        step_grid_picture(cells, picture, list(MODELS), STEPS)
        print(f"wrote {picture}")


def _row(r: dict) -> str:
    return (
        f"| {r['model']} | {r['steps']} | {r['classifier_fid']:.1f} | {r['legibility']:.3f} | "
        f"{r['class_entropy']:.3f} | {r['s_per_image']:.3f} |"
    )


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train the models one after the other")
    p_train.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p_train.add_argument("--threads", type=at_least(1), default=os.cpu_count())
    p_train.add_argument("--out-root", type=Path, default=Path("outputs/learned-variance"))
    p_compare = sub.add_parser("compare", help="sample, score and time the trained models")
    p_compare.add_argument("--out-root", type=Path, default=Path("outputs/learned-variance"))
    p_compare.add_argument("--num-images", type=at_least(MIN_FID_IMAGES), default=256)
    p_compare.add_argument("--seed", type=int, default=0)
    p_compare.add_argument("--repeats", type=at_least(1), default=10, help="timed training steps per model")
    p_compare.add_argument("--picture", type=Path, help="PNG: one row per model, one column per step count")
    args, extra = parser.parse_known_args()
    if args.command == "train":
        train(args.models, args.out_root, args.threads, extra)
    else:
        compare(args.out_root, args.num_images, args.seed, args.picture, args.repeats)


if __name__ == "__main__":
    main()
