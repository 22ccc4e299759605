"""Time to quality: which factors of the MNIST recipe buy sample quality per CPU minute.

Every arm is `training/configs/mnist.yaml` (the baseline, arm `base`) with ONE factor changed, trained for
the same training time: its number of steps is the budget divided by its own step time, measured first
with every arm alone on the machine. Arms may then train side by side (one thread each) without changing
the comparison, because their length is fixed in steps.

    # 1. step times, each arm alone on the machine (one thread, about a minute per arm)
    .venv/bin/python benchmarks/time_to_quality.py measure
    # 2. train the arms (resumable: a killed arm continues from its last checkpoint); two runners in
    #    parallel split the arms between them
    .venv/bin/python benchmarks/time_to_quality.py run --arms base narrow wide --threads 1
    # 3. one table and the frontier picture
    .venv/bin/python benchmarks/time_to_quality.py report --plot docs/images/time_to_quality.png

Sample quality is scored with the project's protocol (hf_ddpm.evaluate): classifier-FID, legibility and
class entropy of `--eval-images` samples from DPM-Solver++ (20 steps) against the MNIST test split,
beside the data floor at the same count; three times per arm, the last at the end of training.
Minutes are steps times the arm's step time measured alone (optimizer steps only: sampling and scoring do
not count), so they do not depend on what else ran while an arm trained.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from hf_ddpm.arguments import ArgumentParser, at_least, positive
from hf_ddpm.files import write_json
from hf_ddpm.launch import accelerate_launch
from hf_ddpm.metrics import MIN_FID_IMAGES
from hf_ddpm.training.checkpoints import checkpoint_step, list_checkpoints

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "training" / "configs" / "mnist.yaml"
TARGET_LEGIBILITY, TARGET_ENTROPY = 0.9, 2.25

# name -> (the factor it changes, overrides of mnist.yaml). `base` is mnist.yaml itself.
ARMS: dict[str, tuple[str, list[str]]] = {
    "base": ("baseline: small, batch 64, lr 1e-3, eps, Min-SNR-5, bf16, EMA 0.999", []),
    "narrow": ("width 16/32/64", ["--model.block_out_channels", "[16,32,64]"]),
    "wide": ("width 64/128/128", ["--model.block_out_channels", "[64,128,128]"]),
    "layers-2": ("2 ResNets per block", ["--model.layers_per_block", "2"]),
    "attn-none": ("attention in the mid block only", ["--model.attention_levels", "[false,false,false]"]),
    "attn-14": ("attention at 14x14 and 7x7", ["--model.attention_levels", "[false,true,true]"]),
    "cpu-preset": ("`cpu` preset, width 24/48/96", ["--model.preset", "cpu"]),
    "b32": ("batch 32, lr 7e-4", ["--training.train_batch_size", "32", "--training.learning_rate", "7e-4",
                                  "--training.lr_warmup_steps", "200"]),
    "b128": ("batch 128, lr 1.4e-3", ["--training.train_batch_size", "128", "--training.learning_rate",
                                      "1.4e-3", "--training.lr_warmup_steps", "50"]),
    "v": ("v-prediction (Min-SNR-5)", ["--diffusion.prediction_type", "v_prediction"]),
    "x0": ("x_0-prediction (Min-SNR-5)", ["--diffusion.prediction_type", "sample"]),
    "no-weighting": ("plain L_simple", ["--training.snr_gamma", "null"]),
    "p2": ("P2 weighting", ["--training.snr_gamma", "null", "--training.weighting_scheme", "p2"]),
    "dropout": ("dropout 0.1", ["--model.dropout", "0.1"]),
    "fp32": ("fp32 instead of bf16", ["--training.mixed_precision", "no"]),
    "channels-last": ("channels-last memory order", ["--training.channels_last", "true"]),
}  # fmt: skip
# The winners of the one-factor arms, trained together (and with a second seed)
COMBINED = ("attn-none", "b32", "v")
ARMS["combined"] = (" + ".join(COMBINED), [override for arm in COMBINED for override in ARMS[arm][1]])
# Arms that change only the speed of a step, not what it computes (up to rounding): their quality at equal
# time is base's at the steps their step time allows, read off base's snapshots instead of trained again.
SPEED_ONLY = ("fp32", "channels-last")
# The EMA factor is not trained arm by arm either: base keeps its raw weights every SNAPSHOT_STEPS steps, and
# each EMA profile is rebuilt from those snapshots afterwards (post-hoc EMA, the idea of Karras et al. 2024,
# "Analyzing and Improving the Training Dynamics of Diffusion Models", by snapshot averaging).
SNAPSHOT_STEPS = 50
EMA_PROFILES = {  # name -> (max decay, warmup power; None: no warmup)
    "ema 0.999, power 3/4 (base)": (0.999, 0.75),
    "ema 0.9999, power 2/3": (0.9999, 2 / 3),
    "ema 0.995, power 3/4": (0.995, 0.75),
    "ema 0.99, no warmup": (0.99, None),
    "no ema": (0.0, None),
}
# Arms whose step runs the same operations as base's (a loss weight, a target, an EMA decay, dropout's mask):
# their step time is base's by construction; measuring them only measures the machine's noise.
SAME_COMPUTE = ("v", "x0", "no-weighting", "p2", "dropout")
# Fast grids and no intermediate ones: the 1000-step ancestral grid of mnist.yaml costs minutes.
COMMON = [
    *("--training.sampler", "dpm-solver", "--training.num_inference_steps", "20"),
    *("--training.save_images_steps", "1000000000", "--training.checkpoints_total_limit", "1"),
]
MEASURE_CHUNK, MEASURE_CHUNKS = 10, 6  # step times: checkpoints every 10 steps, 6 chunks after the first


def launch(arm: str, out: Path, threads: int, extra: list[str]) -> list[str]:
    train = [REPO / "training" / "train.py", "--config", CONFIG, "--training.output_dir", out]
    command = accelerate_launch(*train, *COMMON, *ARMS[arm][1], *extra, threads=threads)
    print(" ".join(command), flush=True)
    return command


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.setdefault("HF_DDPM_DATA_DIR", str(REPO.parent / "shared" / "data"))
    return env


def _clock(checkpoint: Path) -> float:
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "train_clock.safetensors"))["train_seconds"].item()


def measure(arms: list[str], root: Path, threads: int, core: int | None) -> None:
    """Seconds per optimizer step of each arm, into ROOT/step_times.json.

    Each arm is launched alone (pinned to `core` when given) between two launches of `base`, and its time is
    its ratio to the mean of those two times the median of all `base` launches: a shared machine's speed
    drifts by more than some arms differ, and a ratio of neighbours cancels the drift. A launch's step time
    is the median over chunks of `MEASURE_CHUNK` steps between checkpoints' training clocks (the first
    chunk warms up and is left out), so a short burst of other work moves one chunk, not the result.
    """
    root.mkdir(parents=True, exist_ok=True)
    base_runs, ratios, launches = [], {}, 0

    def one(arm: str) -> float:
        nonlocal launches
        launches += 1
        out = root / "measure" / f"{launches:02d}-{arm}"
        steps = MEASURE_CHUNK * (MEASURE_CHUNKS + 1)
        extra = ["--training.max_train_steps", str(steps), "--training.checkpointing_steps",
                 str(MEASURE_CHUNK), "--training.checkpoints_total_limit", "null",
                 "--training.eval_every", "0",
                 "--training.num_sample_images", "1", "--training.report_to", "none"]  # fmt: skip
        pin = ["taskset", "--cpu-list", str(core)] if core is not None else []
        subprocess.run([*pin, *launch(arm, out, threads, extra)], check=True, env=_env())
        clocks = [_clock(out / f"checkpoint-{MEASURE_CHUNK * i}") for i in range(1, MEASURE_CHUNKS + 2)]
        chunks = [(b - a) / MEASURE_CHUNK for a, b in itertools.pairwise(clocks)]
        shutil.rmtree(out)
        print(
            f"{arm}: {1e3 * statistics.median(chunks):.0f} ms/step, chunks {[round(1e3 * c) for c in chunks]}"
        )
        return statistics.median(chunks)

    base_runs.append(one("base"))
    for arm in (a for a in arms if a not in ("base", *SAME_COMPUTE)):
        seconds = one(arm)
        base_runs.append(one("base"))
        ratios[arm] = seconds / statistics.mean(base_runs[-2:])
        print(f"{arm}: {ratios[arm]:.3f} x base", flush=True)
    # A later measurement (of an arm added afterwards) adds its ratios to the base time measured first.
    path = root / "step_times.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    base = previous.get("seconds_per_step", {}).get("base", statistics.median(base_runs))
    ratios = {**previous.get("ratio_to_base", {}), **ratios}
    times = {
        "base": base,
        **{arm: (1.0 if arm in SAME_COMPUTE else ratio) * base for arm, ratio in ratios.items()},
    }
    base_runs = previous.get("base_launches", []) + base_runs
    report = {"seconds_per_step": times, "ratio_to_base": ratios, "base_launches": base_runs}
    write_json(path, report)


def step_times(root: Path) -> dict[str, float]:
    """Seconds per step by arm (`measure`'s), base's for the arms of `SAME_COMPUTE`."""
    times = json.loads((root / "step_times.json").read_text())["seconds_per_step"]
    return {arm: times["base"] if arm in SAME_COMPUTE else times.get(arm) for arm in ARMS}


def arm_steps(seconds_per_step: float, budget_minutes: float) -> int:
    return math.floor(budget_minutes * 60 / seconds_per_step)


def run(arms: list[str], root: Path, threads: int, budget: float, eval_images: int, seed: int) -> None:
    times = step_times(root)
    for arm in arms:
        out = root / (arm if seed == 0 else f"{arm}-seed{seed}")
        if (out / "eval.json").is_file():
            print(f"{arm}: done", flush=True)
            continue
        steps = arm_steps(times[arm], budget)
        if arm == "base":  # raw-weight snapshots for the post-hoc EMA profiles and the speed-only arms
            snapshots = [
                "--training.checkpointing_steps",
                str(SNAPSHOT_STEPS),
                "--training.checkpoints_total_limit",
                "null",
            ]
        else:
            snapshots = ["--training.checkpointing_steps", "250"]
        extra = [
            *snapshots,
            *("--training.max_train_steps", str(steps), "--training.eval_every", str(math.ceil(steps / 3))),
            *("--training.eval_num_images", str(eval_images)),
            *("--training.seed", str(seed), "--training.resume_from_checkpoint", "latest"),
        ]
        subprocess.run(launch(arm, out, threads, extra), check=True, env=_env())


def decay_at(step: int, max_decay: float, power: float | None) -> float:
    """diffusers' `EMAModel.get_decay` at optimization step `step` (1-based), warmup with inv_gamma 1."""
    if max_decay == 0 or step <= 1:
        return 0.0
    t = step - 1
    ramp = 1 - (1 + t) ** -power if power is not None else (1 + t) / (10 + t)
    return min(max_decay, ramp)


def ema_from_snapshots(
    snapshots: list[Path], max_decay: float, power: float | None
) -> dict[str, torch.Tensor]:
    """The EMA of the raw weights, rebuilt from checkpoints every few steps: between two snapshots the
    decays of the steps between them multiply, and the later snapshot stands for all those steps' weights."""
    ema, last = None, 0
    for path in snapshots:
        step = checkpoint_step(path)
        weights = {k: v.double() for k, v in load_file(str(path / "model.safetensors")).items()}
        if ema is None:
            ema, last = weights, step
            continue
        kept = math.prod(decay_at(s, max_decay, power) for s in range(last + 1, step + 1))
        ema = {k: kept * ema[k] + (1 - kept) * weights[k] for k in ema}
        last = step
    return {k: v.float() for k, v in ema.items()}


def posthoc(root: Path, budget: float, eval_images: int) -> None:
    """Scores base's EMA profiles rebuilt from its snapshots, and each speed-only arm as base's weights at the
    steps its step time allows in the budget (base's LR schedule had not yet decayed there: a lower bound),
    into ROOT/posthoc.json."""
    from diffusers import UNet2DModel

    from hf_ddpm.config import load_config
    from hf_ddpm.evaluate import evaluate_unet, load_reference
    from hf_ddpm.pipeline import training_scheduler

    base = root / "base"
    snapshots = list_checkpoints(base)
    cfg = load_config(base / "config.yaml")
    unet = UNet2DModel.from_pretrained(base / "unet")
    scheduler = training_scheduler(cfg.diffusion)
    reference = load_reference(cfg.dataset.path or cfg.dataset.name, cfg.training.eval_classifier)
    times = step_times(root)

    def scored(up_to: list[Path], max_decay: float, power: float | None) -> dict:
        unet.load_state_dict(ema_from_snapshots(up_to, max_decay, power))
        unet.eval()
        metrics = evaluate_unet(
            unet, scheduler.config, reference, sampler="dpm-solver", steps=20, num_images=eval_images, seed=0
        )
        return {"step": checkpoint_step(up_to[-1]), **metrics}

    results = {}
    for name, (max_decay, power) in EMA_PROFILES.items():
        print(f"post-hoc {name}", flush=True)
        results[name] = scored(snapshots, max_decay, power)
    for arm in SPEED_ONLY:
        steps = arm_steps(times[arm], budget)
        up_to = [p for p in snapshots if checkpoint_step(p) <= steps]
        print(
            f"{arm}: base's weights at step {checkpoint_step(up_to[-1])} (the budget allows {steps})",
            flush=True,
        )
        results[arm] = {"budget_steps": steps, **scored(up_to, *EMA_PROFILES["ema 0.999, power 3/4 (base)"])}
    write_json(root / "posthoc.json", results)


def load_log(run_dir: Path) -> list[dict]:
    """eval_log.jsonl, one record per step (a resumed run may have logged a step twice: the last counts)."""
    records = {}
    for line in (run_dir / "eval_log.jsonl").read_text().splitlines():
        record = json.loads(line)
        records[record["step"]] = record
    return [records[step] for step in sorted(records)]


def report(root: Path, plot: Path | None) -> None:
    """The table of every trained arm (and of `posthoc`'s rows, when scored), best classifier-FID first."""
    times = step_times(root)
    rows = []
    for run_dir in sorted(p for p in root.iterdir() if (p / "eval.json").is_file()):
        arm = run_dir.name.split("-seed")[0]
        result = json.loads((run_dir / "eval.json").read_text())
        training = yaml.safe_load((run_dir / "config.yaml").read_text())["training"]
        steps = training["max_train_steps"]
        curve = [(r["step"], r["classifier_fid"]) for r in load_log(run_dir) if r["step"] < steps]
        rows.append({"name": run_dir.name, "factor": ARMS[arm][0], "steps": steps, "seconds": times[arm],
                     "batch": training["train_batch_size"], **result["samples"],
                     "curve": [*curve, (steps, result["samples"]["classifier_fid"])]})  # fmt: skip
    if not rows:
        raise SystemExit(f"no arm in {root} has finished: train some with `run` first")
    if (root / "posthoc.json").is_file():
        base_training = yaml.safe_load((root / "base" / "config.yaml").read_text())["training"]
        for name, result in json.loads((root / "posthoc.json").read_text()).items():
            arm = name if name in SPEED_ONLY else "base"
            label, factor = (name, ARMS[arm][0]) if arm in SPEED_ONLY else ("base, post-hoc EMA", name)
            rows.append({"name": label, "factor": factor, "steps": result["step"], "seconds": times[arm],
                         "batch": base_training["train_batch_size"], **result, "curve": []})  # fmt: skip
    result = json.loads((root / "base" / "eval.json").read_text())
    floor = result["floor"]
    print(f"data floor at n={result['protocol']['num_images']}: "
          f"classifier-FID {floor['classifier_fid']:.2f}, legibility {floor['legibility']:.3f}, "
          f"entropy {floor['class_entropy']:.3f}\n")  # fmt: skip
    print("| arm | factor | minutes | steps | ms/step | images/s | classifier-FID | legibility | entropy |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows.sort(key=lambda row: row["classifier_fid"])
    for r in rows:
        print(f"| {r['name']} | {r['factor']} | {r['steps'] * r['seconds'] / 60:.1f} | {r['steps']} | "
              f"{1e3 * r['seconds']:.0f} | {r['batch'] / r['seconds']:.0f} | {r['classifier_fid']:.1f} | "
              f"{r['legibility']:.3f} | {r['class_entropy']:.3f} |")  # fmt: skip
    if plot:
        _plot(rows, floor, plot)


def _plot(rows: list[dict], floor: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    axes[0].set_prop_cycle(color=plt.cm.tab20.colors)  # one colour per arm: more arms than tab10 has
    for r in (r for r in rows if r["curve"]):
        steps, fids = zip(*r["curve"], strict=True)
        minutes = [step * r["seconds"] / 60 for step in steps]
        (line,) = axes[0].plot(minutes, fids, marker="o", markersize=3, lw=1, label=r["name"])
        axes[1].scatter(r["legibility"], r["classifier_fid"], color=line.get_color())
        axes[1].annotate(r["name"], (r["legibility"], r["classifier_fid"]), fontsize=7, xytext=(3, 2),
                         textcoords="offset points")  # fmt: skip
    for ax in axes:
        ax.set_yscale("log")
        ax.axhline(floor["classifier_fid"], color="gray", linestyle=":", label="data floor")
    axes[0].legend(fontsize=7, ncol=2)
    axes[0].set_xlabel("training minutes (steps x step time alone on one core)")
    axes[0].set_ylabel("classifier-FID (lower is better)")
    axes[0].set_title("quality against training time, one line per arm")
    axes[1].axvline(TARGET_LEGIBILITY, color="gray", linestyle="--")
    axes[1].set_xlabel("legibility")
    axes[1].set_title("end of the budget: FID against legibility")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("outputs/ttq"))
    sub = parser.add_subparsers(dest="command", required=True)
    p_measure = sub.add_parser("measure", help="step time of each arm, alone on the machine")
    p_measure.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p_measure.add_argument("--threads", type=at_least(1), default=1)
    p_measure.add_argument(
        "--core", type=at_least(0), help="pin to this CPU core (taskset): a steadier clock"
    )
    p_run = sub.add_parser("run", help="train arms for the same training time")
    trained = [arm for arm in ARMS if arm not in SPEED_ONLY]
    p_run.add_argument("--arms", nargs="+", choices=trained, default=trained)
    p_run.add_argument("--threads", type=at_least(1), default=1)
    p_run.add_argument("--budget-minutes", type=positive, default=20.0)
    p_run.add_argument("--eval-images", type=at_least(MIN_FID_IMAGES), default=500)
    p_run.add_argument("--seed", type=int, default=0)
    p_posthoc = sub.add_parser("posthoc", help="EMA profiles and speed-only arms from base's snapshots")
    p_posthoc.add_argument("--budget-minutes", type=positive, default=20.0)
    p_posthoc.add_argument("--eval-images", type=at_least(MIN_FID_IMAGES), default=500)
    p_report = sub.add_parser("report", help="the table and the frontier picture")
    p_report.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    if args.command == "measure":
        measure(args.arms, args.root, args.threads, args.core)
    elif args.command == "run":
        run(args.arms, args.root, args.threads, args.budget_minutes, args.eval_images, args.seed)
    elif args.command == "posthoc":
        posthoc(args.root, args.budget_minutes, args.eval_images)
    else:
        report(args.root, args.plot)


if __name__ == "__main__":
    main()
