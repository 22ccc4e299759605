"""Flow matching against DDPM (epsilon and v-prediction) on MNIST: same UNet, data, batch and training time.

    # train the three models one after the other, each alone on the machine
    .venv/bin/python benchmarks/flow_vs_ddpm.py train
    # sample each at 1000 (DDPM only), 50, 20, 10 and 5 steps; score; time a training step of each objective
    .venv/bin/python benchmarks/flow_vs_ddpm.py compare --picture docs/images/flow_vs_ddpm.png
    # or compare other training runs of the same recipe, such as the reference checkpoints' runs
    .venv/bin/python benchmarks/flow_vs_ddpm.py compare --runs ddpm-v=outputs/reference/ddpm-mnist \
        flow=outputs/reference/flow-mnist

Every model is training/configs/mnist.yaml's recipe (UNet, data, batch, steps, optimizer, EMA) and differs
only in what the UNet learns: epsilon or v with Min-SNR-5 weighting, or the flow-matching velocity
(training/configs/mnist-flow.yaml, the same recipe). Equal steps are equal training time
because the objectives cost the same per step: `compare` times one step of each run's config (UNet, batch,
objective), in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import torch
from latent_vs_pixel import step_seconds
from safetensors.torch import load_file

from hf_ddpm.arguments import ArgumentParser, at_least
from hf_ddpm.config import load_config
from hf_ddpm.evaluate import data_floor, load_reference, score, to_nchw
from hf_ddpm.files import write_json
from hf_ddpm.launch import accelerate_launch
from hf_ddpm.metrics import MIN_FID_IMAGES
from hf_ddpm.pipeline import generate, load_pipeline

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"
# Nothing sampled during training (evaluation happens in `compare`, for all three alike); the final grid of
# the DDPM models with DPM-Solver++ rather than 1000 ancestral steps, which would take minutes.
NO_EVAL = ["--training.eval_every", "0", "--training.save_images_steps", "100000"]
FAST_GRID = ["--training.sampler", "dpm-solver", "--training.num_inference_steps", "20"]
# name -> (config, overrides)
MODELS = {
    "ddpm-eps": ("mnist.yaml", [*FAST_GRID, "--diffusion.prediction_type", "epsilon"]),
    "ddpm-v": ("mnist.yaml", [*FAST_GRID, "--diffusion.prediction_type", "v_prediction"]),
    "flow": ("mnist-flow.yaml", []),
}


def train(names: list[str], out_root: Path, threads: int, extra: list[str]) -> None:
    for name in names:
        config, overrides = MODELS[name]
        train = [REPO / "training" / "train.py", "--config", CONFIGS / config]
        outputs = ["--training.output_dir", out_root / name]
        command = accelerate_launch(*train, *outputs, *NO_EVAL, *overrides, *extra, threads=threads)
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


# (model, sampler, steps) in table order: the paper's 1000 ancestral steps for the DDPMs only, then each
# model's fast samplers. Euler is flow matching's own; DDIM is its first-order counterpart for a DDPM, and
# DPM-Solver++ the best fast sampler of both (for flow matching in diffusers' flow mode).
FEW_STEPS = (50, 20, 10, 5)
SWEEP = [
    *[(m, "ddpm", 1000) for m in ("ddpm-eps", "ddpm-v")],
    *[(m, s, n) for m in ("ddpm-eps", "ddpm-v") for s in ("dpm-solver", "ddim") for n in FEW_STEPS],
    *[("flow", s, n) for s in ("flow-euler", "dpm-solver") for n in FEW_STEPS],
]
# The picture: one row per model, one column per step count; the DDPMs' fast sampler is DPM-Solver++.
PICTURE_SAMPLER = {"ddpm-eps": "dpm-solver", "ddpm-v": "dpm-solver", "flow": "flow-euler"}
PICTURE_STEPS = (1000, *FEW_STEPS)


def run_step_seconds(run: Path, repeats: int) -> float:
    """One training step of `run` as its config.yaml says (objective, UNet, batch, loss weighting), on
    random images (bf16 autocast, AdamW)."""
    cfg = load_config(run / "config.yaml")
    shape = (cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size)
    return step_seconds(cfg, shape, repeats)


def train_minutes(run: Path) -> float:
    """The run's training clock (optimizer steps only) from its last checkpoint."""
    last = max(
        run.glob("checkpoint-*/train_clock.safetensors"), key=lambda p: int(p.parent.name.split("-")[1])
    )
    return load_file(last)["train_seconds"].item() / 60


def compare(
    runs: dict[str, Path], out_root: Path, num_images: int, seed: int, picture: Path | None, repeats: int
) -> None:
    """Samples, scores and times the training output folders `runs` (model name -> folder)."""
    threads = torch.get_num_threads()
    print(f"# {num_images} samples per row, seed {seed}, {threads} threads; classifier metrics against the "
          "MNIST test split (10,000 digits)", flush=True)  # fmt: skip
    steps = {name: run_step_seconds(run, repeats) for name, run in runs.items()}
    first = next(iter(steps))
    print(
        f"\n| model | folder | train step (ms, measured here) | vs {first} | steps | training clock (min) |"
    )
    print("|---|---|---|---|---|---|")
    for name, s in steps.items():
        run = runs[name]
        config = json.loads((run / "run_info.json").read_text())
        print(f"| {name} | {run} | {1000 * s:.1f} | {s / steps[first]:.3f}x | {config['steps']} | "
              f"{train_minutes(run):.1f} |", flush=True)  # fmt: skip
    ref = load_reference("mnist")
    print("\n| model | sampler | steps | classifier-FID | legibility | class entropy | s/image |")
    print("|---|---|---|---|---|---|---|")
    rows, cells = [], {}
    for name, sampler, n in [row for row in SWEEP if row[0] in runs]:
        pipeline = load_pipeline(runs[name], sampler)
        pipeline.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        images = generate(pipeline, num_images, n, seed=seed, batch_size=128)
        seconds = (time.perf_counter() - start) / num_images
        rows.append({"model": name, "sampler": sampler, "steps": n, **score(to_nchw(images), ref),
                     "s_per_image": seconds})  # fmt: skip
        print(_row(rows[-1]), flush=True)
        if PICTURE_SAMPLER[name] == sampler or sampler == "ddpm":
            cells[name, n] = images[:16]
    floor = data_floor(ref, num_images)
    print(_row({"model": f"data ({num_images} train vs test)", "sampler": "-", "steps": "-", **floor,
                "s_per_image": float("nan")}))  # fmt: skip
    write_json(
        out_root / "compare.json",
        {"num_images": num_images, "seed": seed, "threads": threads, "train_step_seconds": steps,
         "runs": {name: str(run) for name, run in runs.items()}, "rows": rows, "floor": floor},
    )  # fmt: skip
    if picture:
        step_grid_picture(cells, picture, [m for m in PICTURE_SAMPLER if m in runs], PICTURE_STEPS)
        print(f"wrote {picture}")


def _row(r: dict) -> str:
    return (
        f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['classifier_fid']:.1f} | "
        f"{r['legibility']:.3f} | {r['class_entropy']:.3f} | {r['s_per_image']:.3f} |"
    )


def step_grid_picture(cells: dict, path: Path, models: list[str], steps: tuple[int, ...]) -> None:
    """One row per model, one column per step count: `cells[model, steps]`, the first 16 samples (same seed,
    so the same starting noise in every cell); a cell without samples says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hf_ddpm.visualize import tile

    fig, axes = plt.subplots(len(models), len(steps), figsize=(1.6 * len(steps), 1.6 * len(models)))
    for row, name in enumerate(models):
        for col, n in enumerate(steps):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if (name, n) in cells:
                ax.imshow(tile(cells[name, n])[..., 0], cmap="gray", vmin=0, vmax=255)
            else:
                ax.text(0.5, 0.5, "DDPM only", ha="center", va="center", fontsize=9, color="gray")
                ax.spines[:].set_visible(False)
            if row == 0:
                ax.set_title(f"{n} steps", fontsize=9)
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.tight_layout(pad=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train the models one after the other")
    p_train.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p_train.add_argument("--threads", type=at_least(1), default=os.cpu_count())
    p_train.add_argument("--out-root", type=Path, default=Path("outputs/flow-vs-ddpm"))
    p_compare = sub.add_parser("compare", help="sample, score and time the trained models")
    p_compare.add_argument("--out-root", type=Path, default=Path("outputs/flow-vs-ddpm"))
    p_compare.add_argument("--num-images", type=at_least(MIN_FID_IMAGES), default=256)
    p_compare.add_argument("--seed", type=int, default=0)
    p_compare.add_argument(
        "--repeats", type=at_least(1), default=10, help="timed training steps per objective"
    )
    p_compare.add_argument("--picture", type=Path, help="PNG: one row per model, one column per step count")
    p_compare.add_argument(
        "--runs",
        nargs="+",
        type=model_folder,
        metavar="MODEL=FOLDER",
        help=f"training output folders to compare instead of OUT_ROOT/MODEL; MODEL: one of {list(MODELS)}",
    )
    args, extra = parser.parse_known_args()
    if args.command == "train":
        train(args.models, args.out_root, args.threads, extra)
    else:
        runs = dict(args.runs) if args.runs else {name: args.out_root / name for name in MODELS}
        if unfinished := [str(run) for run in runs.values() if not (run / "run_info.json").is_file()]:
            parser.error(
                f"no finished training run in {', '.join(unfinished)} (no run_info.json): run "
                "`flow_vs_ddpm.py train` first, or pass --runs MODEL=FOLDER"
            )
        compare(runs, args.out_root, args.num_images, args.seed, args.picture, args.repeats)


def model_folder(text: str) -> tuple[str, Path]:
    """`--runs` values: MODEL=FOLDER, MODEL being a key of MODELS."""
    name, _, folder = text.partition("=")
    if name not in MODELS or not folder:
        raise argparse.ArgumentTypeError(f"{text!r} is not MODEL=FOLDER with MODEL one of {list(MODELS)}")
    return name, Path(folder)


if __name__ == "__main__":
    main()
