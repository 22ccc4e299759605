"""Time to quality: sample metrics against training minutes for CPU training recipes on MNIST.

    # train (each recipe is training/configs/mnist.yaml plus overrides; eval_every writes eval_log.jsonl)
    .venv/bin/python benchmarks/time_to_quality.py run --recipes min-snr-b64 b128 --threads 1
    # report: one table per run, the minutes to the target, and a plot
    .venv/bin/python benchmarks/time_to_quality.py report outputs/ttq/* --plot docs/images/time_to_quality.png

Minutes are training minutes (optimizer steps only, as train.py counts them), so evaluation and grid
sampling do not count against a recipe. The target: legibility >= 0.9 with class entropy >= 2.25 (log 10 =
2.30 is uniform); legibility alone proves nothing, a model drawing one digit well would pass it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_LEGIBILITY, TARGET_ENTROPY = 0.9, 2.25

# Overrides of training/configs/mnist.yaml (whose default is the winner, `min-snr-b64`).
RECIPES = {
    "min-snr-b64": [],
    "b128": ["--training.train_batch_size", "128", "--training.max_train_steps", "2000",
             "--training.snr_gamma", "null"],
    "tiny-b64": ["--model.preset", "tiny", "--training.learning_rate", "2e-3",
                 "--training.max_train_steps", "6000"],
}  # fmt: skip
# Intermediate grids off (they cost minutes of 1000-step sampling); the final grid stays.
EVAL = [
    "--training.eval_every",
    "500",
    "--training.eval_num_images",
    "300",
    "--training.save_images_steps",
    "100000",
]


def run(recipes: list[str], threads: int, out_root: Path, extra: list[str]) -> None:
    for name in recipes:
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--num_cpu_threads_per_process", str(threads)]  # fmt: skip
        config = str(REPO / "training" / "configs" / "mnist.yaml")
        cmd = [*launch, str(REPO / "training" / "train.py"), "--config", config,
               "--training.output_dir", str(out_root / name), *EVAL, *RECIPES[name], *extra]  # fmt: skip
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def load_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "eval_log.jsonl").read_text().splitlines()]


def minutes_to_target(records: list[dict]) -> float | None:
    for r in records:
        if r["legibility"] >= TARGET_LEGIBILITY and r["class_entropy"] >= TARGET_ENTROPY:
            return r["train_minutes"]
    return None


def report(run_dirs: list[Path], plot: Path | None) -> None:
    summary = []
    for run_dir in run_dirs:
        records = load_log(run_dir)
        print(f"\n## {run_dir.name}\n")
        print("| step | train min | classifier-FID | legibility | class entropy |\n|---|---|---|---|---|")
        for r in records:
            print(f"| {r['step']} | {r['train_minutes']:.1f} | {r['classifier_fid']:.2f} | "
                  f"{r['legibility']:.3f} | {r['class_entropy']:.3f} |")  # fmt: skip
        best = min(records, key=lambda r: r["classifier_fid"])
        summary.append((run_dir.name, minutes_to_target(records), best, records[-1]))
    print(f"\n## Summary (target: legibility >= {TARGET_LEGIBILITY}, entropy >= {TARGET_ENTROPY})\n")
    print("| recipe | minutes to target | best classifier-FID (step) | final legibility | final entropy |")
    print("|---|---|---|---|---|")
    for name, minutes, best, last in summary:
        reached = f"{minutes:.1f}" if minutes is not None else "not reached"
        print(f"| {name} | {reached} | {best['classifier_fid']:.2f} ({best['step']}) | "
              f"{last['legibility']:.3f} | {last['class_entropy']:.3f} |")  # fmt: skip
    if plot:
        _plot(run_dirs, plot)


def _plot(run_dirs: list[Path], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for run_dir in run_dirs:
        records = load_log(run_dir)
        minutes = [r["train_minutes"] for r in records]
        for ax, key in zip(axes, ("classifier_fid", "legibility", "class_entropy"), strict=True):
            ax.plot(minutes, [r[key] for r in records], marker="o", label=run_dir.name)
    axes[0].set_yscale("log")
    axes[1].axhline(TARGET_LEGIBILITY, color="gray", linestyle="--")
    axes[2].axhline(TARGET_ENTROPY, color="gray", linestyle="--")
    for ax, title in zip(
        axes, ("classifier-FID (lower is better)", "legibility", "class entropy (nats)"), strict=True
    ):
        ax.set_title(title)
        ax.set_xlabel("training minutes (2 CPU cores)")
    axes[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="train recipes one after the other")
    p_run.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=["min-snr-b64"])
    p_run.add_argument("--threads", type=int, default=os.cpu_count())
    p_run.add_argument("--out-root", type=Path, default=Path("outputs/ttq"))
    p_report = sub.add_parser("report", help="tables and a plot from finished runs")
    p_report.add_argument("runs", nargs="+", type=Path)
    p_report.add_argument("--plot", type=Path)
    args, extra = parser.parse_known_args()
    if args.command == "run":
        run(args.recipes, args.threads, args.out_root, extra)
    else:
        report(args.runs, args.plot)


if __name__ == "__main__":
    main()
