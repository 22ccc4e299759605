"""One-run GPU check: the `gpu` tests, train.py against a plain loop for two presets in bf16 with and without
torch.compile, then the `tutorial` preset trained for the time left, all written to one folder.

    benchmarks/device_check.sh OUT                      # on a GPU machine: at most --budget-minutes in all
    benchmarks/device_check.sh OUT --device cpu --presets tiny --train-preset tiny --budget-minutes 6 \
        --steps 6 --dynamo-backend eager                # the CPU dry run: every step, small and quick

`device_check.sh` first installs the wheels of `.whl/` (for a machine without diffusers or datasets) and this
package, then runs this script. What OUT receives (at most 8 files, none over 15 MB, for a copy back):
`device_check.json` (every figure below, with the machine), `gpu_tests.txt` (pytest's report), and the
trained pipeline as `pipeline.tar.partNN` (fp16 safetensors; `cat pipeline.tar.part* | tar x` rebuilds it).

Figures: img/s of train.py (its own log line, from the training clock, first step left out) and of the plain
loop of benchmarks/throughput.py on the same device, their ratio, and the achieved TFLOP/s of each (the
FLOPs of one forward and backward, counted by torch.utils.flop_counter, times steps per second) beside the
device's bf16 matmul rate.
"""

from __future__ import annotations

import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from hf_ddpm.arguments import ArgumentParser, at_least, positive
from hf_ddpm.data import DATA_DIR_ENV, SAMPLE_DATA, load_image_dataset
from hf_ddpm.evaluate import default_device
from hf_ddpm.files import write_json
from hf_ddpm.launch import accelerate_launch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import (  # noqa: E402  (a sibling script, not a package)
    Variant,
    count_step_flops,
    make_batches,
    make_config,
    matmul_rate,
    time_plain,
)

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "training" / "train.py"
PART_BYTES = 15 * 2**20
# Seconds kept back at the end: the export, its sample grid, packing, and the JSON.
RESERVE_S = 60


def log(message: str) -> None:
    print(f"[device_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine(device: str) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": device}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        smi = shutil.which("nvidia-smi")
        if smi:
            query = [smi, "--query-gpu=driver_version,memory.total", "--format=csv,noheader"]
            info["driver, memory"] = subprocess.run(query, capture_output=True, text=True).stdout.strip()
    else:
        info["cpu"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    return info


def gpu_tests(out: Path) -> dict:
    """`pytest -m gpu`: device placement only a GPU can show (skipped, with the reason, without one)."""
    # Run from outside the checkout, so that `hf_ddpm` is the installed package (the checkout's folder holds
    # no hf_ddpm.pipelines: setup.cfg maps that to the top-level pipelines/).
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", "-p", "no:cacheprovider", REPO / "tests"],
        cwd=out,
        capture_output=True,
        text=True,
    )
    (out / "gpu_tests.txt").write_text(result.stdout[-200_000:] + result.stderr[-50_000:])
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "no output"
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", summary)}
    return {"exit_status": result.returncode, "summary": summary, **counts}


def train_rate(preset: str, batch: int, steps: int, backend: str | None, data: Path, device: str) -> dict:
    """img/s of train.py over its steps after the first, from its own log line (the training clock)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            *("--config", REPO / "training" / "configs" / "mnist.yaml", "--model.preset", preset),
            *("--dataset.path", data, "--training.output_dir", Path(tmp) / "run"),
            *("--training.train_batch_size", batch, "--training.max_train_steps", steps),
            *("--training.logging_steps", steps, "--training.mixed_precision", "bf16"),
            *("--training.checkpointing_steps", steps + 1, "--training.save_images_steps", steps + 1),
            *("--training.eval_every", "0", "--training.num_sample_images", "1"),
            *("--training.num_inference_steps", "1", "--training.report_to", "none"),
        ]
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor")}
        if torch.device(device).type == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        launch = accelerate_launch(TRAIN, *args, dynamo_backend=backend or "no", threads=8)
        start = time.perf_counter()
        result = subprocess.run(launch, cwd=REPO, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    match = re.findall(rf"step {steps}/{steps}: .* ([\d.]+) img/s", result.stderr)
    if result.returncode or not match:
        return {"error": (result.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    return {"img_per_s": float(match[-1]), "launch_s": seconds}


def throughput(presets: list[str], batch: int, steps: int, data: Path, device: str, backend: str) -> dict:
    """Per preset: the plain loop and train.py, bf16, eager and compiled, with achieved TFLOP/s."""
    dataset, _ = load_image_dataset(
        load_config_for("small", batch, data).dataset, progress=False
    )  # the same digits for every preset
    results = {"bf16_matmul_tflops": matmul_rate(torch.bfloat16, n=4096 if device != "cpu" else 1024,
                                                 device=device) / 1e12}  # fmt: skip
    for preset in presets:
        cfg = load_config_for(preset, batch, data)
        batches = make_batches(dataset, batch)
        flops = count_step_flops(cfg, batches[0])
        rows = {}
        for compiled in (False, True):
            variant = Variant(bf16=True, compile=compiled)
            log(f"{preset}: plain loop {variant.name}")
            with tempfile.TemporaryDirectory() as cache:
                plain = time_plain(variant, cfg, batches, steps, Path(cache), device, backend)
            log(f"{preset}: train.py {variant.name}")
            train = train_rate(preset, batch, steps, backend if compiled else None, data, device)
            row = {"plain_ms_per_step": plain["ms_per_step"], "plain_compile_s": plain["compile_s"]}
            row["plain_img_per_s"] = batch / (plain["ms_per_step"] / 1e3)
            row["plain_tflops"] = flops * row["plain_img_per_s"] / batch / 1e12
            row.update({f"train_{k}": v for k, v in train.items()})
            if "img_per_s" in train:
                row["train_tflops"] = flops * train["img_per_s"] / batch / 1e12
                row["train_over_plain_time"] = row["plain_img_per_s"] / train["img_per_s"]
            rows[variant.name] = row
        results[preset] = {"gflop_per_step": flops / 1e9, "batch": batch, **rows}
    return results


def load_config_for(preset: str, batch: int, data: Path):
    cfg = make_config(preset, batch)
    cfg.dataset.path = str(data)
    return cfg


def train_tutorial(
    out: Path, seconds: float, step_s: float, backend: str | None, data: Path, device: str, preset: str
) -> dict:
    """mnist-tutorial.yaml (with `preset`) for `seconds` of steps at `step_s` each; the EMA pipeline packed
    into OUT."""
    steps = max(1, math.floor(seconds / step_s))
    run = Path(tempfile.mkdtemp()) / "ddpm-mnist-tutorial"
    args = [
        *("--config", REPO / "training" / "configs" / "mnist-tutorial.yaml", "--dataset.path", data),
        *("--model.preset", preset),
        *("--training.output_dir", run, "--training.max_train_steps", steps),
        *("--training.checkpointing_steps", steps, "--training.save_images_steps", steps + 1),
        *("--training.sampler", "dpm-solver", "--training.num_inference_steps", "20"),
        *(
            "--training.logging_steps",
            max(1, steps // 20),
            "--training.lr_warmup_steps",
            min(500, steps // 10),
        ),
    ]
    env = {**os.environ}
    if torch.device(device).type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    log(f"training the tutorial preset for {steps} steps (about {seconds / 60:.1f} min)")
    start = time.perf_counter()
    result = subprocess.run(
        accelerate_launch(TRAIN, *args, dynamo_backend=backend or "no", threads=8),
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    figures = {"steps": steps, "dynamo_backend": backend, "wall_s": time.perf_counter() - start}
    (out / "tutorial_log.txt").write_text(result.stderr[-500_000:])
    if result.returncode:
        return {**figures, "error": (result.stderr.strip().splitlines() or ["no output"])[-1][:300]}
    losses = [float(x) for x in re.findall(r"loss ([\d.]+), lr", result.stderr)]
    figures["last_logged_loss"] = losses[-1] if losses else None
    figures["parts"] = pack_fp16(run, out)
    return figures


def pack_fp16(run: Path, out: Path) -> list[str]:
    """The exported pipeline with fp16 weights, as a tar split into parts small enough to copy back."""
    from diffusers import DDPMPipeline

    folder = run.parent / "fp16"
    DDPMPipeline.from_pretrained(run, use_safetensors=True).to(torch.float16).save_pretrained(folder)
    for name in ("README.md", "samples.png", "config.yaml"):
        if (run / name).is_file():
            shutil.copy2(run / name, folder / name)
    archive = run.parent / "pipeline.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname=run.name)
    data, parts = archive.read_bytes(), []
    for i in range(0, len(data), PART_BYTES):
        part = out / f"pipeline.tar.part{i // PART_BYTES:02d}"
        part.write_bytes(data[i : i + PART_BYTES])
        parts.append(part.name)
    return parts


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="benchmarks/device_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON, reports and pipeline")
    parser.add_argument(
        "--device", default=default_device(), help="cuda (the default where there is one) or cpu"
    )
    parser.add_argument("--budget-minutes", type=positive, default=8.0, help="the whole check's time")
    parser.add_argument("--presets", nargs="+", default=["small", "tutorial"], help="throughput presets")
    parser.add_argument("--train-preset", default="tutorial", help="the preset trained for the time left")
    parser.add_argument("--batch-size", type=at_least(1), default=64)
    parser.add_argument("--steps", type=at_least(2), default=50, help="timed steps per throughput variant")
    parser.add_argument("--dynamo-backend", default="inductor", help="torch.compile's backend (eager: quick)")
    parser.add_argument(
        "--data", type=Path, help="an MNIST folder (default: $HF_DDPM_DATA_DIR/mnist or the sample)"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    deadline = start + 60 * args.budget_minutes
    default_data = Path(os.environ.get(DATA_DIR_ENV, "/nonexistent")) / "mnist"
    data = args.data or (default_data if default_data.is_dir() else SAMPLE_DATA / "mnist")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"machine": machine(args.device), "data": str(data), "budget_minutes": args.budget_minutes}

    def save() -> None:
        report["elapsed_s"] = time.perf_counter() - start
        write_json(args.out / "device_check.json", report)

    log("gpu tests")
    report["gpu_tests"] = gpu_tests(args.out)
    save()
    log("throughput")
    report["throughput"] = throughput(
        args.presets, args.batch_size, args.steps, data, args.device, args.dynamo_backend
    )
    save()
    if args.train_preset not in report["throughput"]:
        parser.error(f"--train-preset {args.train_preset} needs its step time: name it in --presets too")
    tutorial = report["throughput"][args.train_preset]
    # Train with whichever variant trains faster, compile's start-up counted against the time it would gain.
    seconds_left = deadline - time.perf_counter() - RESERVE_S
    choices = []
    for name, compiled in (("bf16", False), ("bf16 + compile", True)):
        row = tutorial.get(name, {})
        if "train_img_per_s" in row:
            step_s = args.batch_size / row["train_img_per_s"]
            startup = row.get("plain_compile_s", 0.0) if compiled else 0.0
            choices.append(((seconds_left - startup) / step_s, compiled, step_s, startup))
    if not choices or seconds_left <= 0:
        report["tutorial"] = {"error": "no time or no step time left for training"}
    else:
        _, compiled, step_s, startup = max(choices)
        backend = args.dynamo_backend if compiled else None
        report["tutorial"] = train_tutorial(
            args.out, seconds_left - startup, step_s, backend, data, args.device, args.train_preset
        )
    save()
    log(f"done in {report['elapsed_s'] / 60:.1f} min: {args.out / 'device_check.json'}")


if __name__ == "__main__":
    main()
