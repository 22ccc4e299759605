"""Training throughput on this machine: training/train.py against a plain PyTorch loop.

Everything below is measured in one run, on one machine, with the same model preset, batch size and
thread count, so the ratios compare like with like:

1. Our overhead. `training/train.py` is launched as the Makefile does (`accelerate launch ...`), twice,
   with `max_train_steps` N1 and N2 and no checkpoints, grids or trackers inside the run; its step time
   is (T2 - T1) / (N2 - N1) from the wall times T of the two launches, so start-up, data decoding,
   compilation and the final export cancel. The plain loop is the same UNet preset, AdamW and
   `training_loss` (train.py's loss and random numbers) on batches already in memory (in [-1, 1]), timed
   after warm-up steps. The ratio
   train.py / plain is what the accelerate loop (EMA, gradient clipping, LR schedule, data loading,
   logging) costs per step.
2. Data-loading share: iterating the DataLoader that train.py builds (same dataset, batch, workers,
   prepared by accelerate with the seedable sampler), plus the uint8 -> [-1, 1] scaling train.py does
   per batch, as a percentage of the measured step time.
3. Efficiency: FLOPs of one training step (forward + backward, `torch.utils.flop_counter`) over the
   step time, against the best rate of a 2048 x 2048 matmul (2 n^3 FLOPs) in the same precision.
4. Variants: fp32 or bf16 autocast, eager or `torch.compile` (mode default; compile time is reported
   apart and kept out of the step time). train.py gets bf16 from `--training.mixed_precision bf16` and
   compilation from accelerate's `--dynamo_backend inductor`; a launch that fails shows its error line.

Run it (about half an hour with the defaults on 2 CPU cores, most of it compiling: six compilations of
two to four minutes each; `--skip-compile` takes a few minutes):

    .venv/bin/python benchmarks/throughput.py --preset small
    .venv/bin/python benchmarks/throughput.py --preset tiny --batch-size 32 --steps 5 --train-steps 5,15

Markdown tables go to stdout, progress to stderr; `--json PATH` also writes the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import accelerate
import diffusers
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from hf_ddpm.arguments import ArgumentParser, at_least
from hf_ddpm.config import Config, load_config
from hf_ddpm.data import DATA_DIR_ENV, load_image_dataset, to_model_range
from hf_ddpm.evaluate import default_device
from hf_ddpm.files import write_json
from hf_ddpm.launch import accelerate_launch
from hf_ddpm.model_card import cpu_model
from hf_ddpm.models import build_unet
from hf_ddpm.objectives import draw_batch, training_loss
from hf_ddpm.scheduler import LinearNoiseScheduler
from hf_ddpm.training.loop import build_accelerator, build_dataloader, build_optimizer

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "training" / "configs" / "mnist.yaml"
TRAIN_SCRIPT = REPO / "training" / "train.py"
MATMUL_SIZE = 2048
MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
EAGER_WARMUP = 2
# Cycling through a few distinct batches is enough: the step cost does not depend on the pixels.
PLAIN_BATCHES = 4
# An exception line (`ValueError: ...`, `torch._dynamo.exc.BackendCompilerFailed: ...`) or `error:`.
_ERROR = re.compile(r"^([\w.]*(Error|Exception|Failed)\b.*:|.*\berror: )")


@dataclasses.dataclass(frozen=True)
class Variant:
    bf16: bool
    compile: bool

    @property
    def name(self) -> str:
        return ("bf16" if self.bf16 else "fp32") + (" + compile" if self.compile else "")


@dataclasses.dataclass
class Launch:
    """One `accelerate launch training/train.py` run."""

    steps: int
    seconds: float
    inductor_files: int  # files inductor wrote; > 0 proves the run really compiled
    error: str | None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="UNet preset: tiny | small | tutorial")
    parser.add_argument("--batch-size", type=at_least(1), default=128)
    parser.add_argument("--steps", type=at_least(1), default=20, help="timed plain-loop steps, after warm-up")
    parser.add_argument(
        "--train-steps", type=_step_pair, default=(10, 40), help="N1,N2: max_train_steps of the two launches"
    )
    parser.add_argument(
        "--data-batches", type=at_least(1), default=50, help="batches timed from the DataLoader"
    )
    parser.add_argument("--skip-train-script", action="store_true", help="do not launch training/train.py")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile variants")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument(
        "--device", default=default_device(), help="cuda (the default where there is one) or cpu"
    )
    return parser.parse_args(argv)


def _step_pair(text: str) -> tuple[int, int]:
    try:
        n1, n2 = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N1,N2 such as 10,40, got {text!r}") from None
    if not 0 < n1 < n2:
        raise argparse.ArgumentTypeError(f"need 0 < N1 < N2, got {text!r}")
    return n1, n2


def log(message: str) -> None:
    print(f"[throughput] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "accelerate": accelerate.__version__,
        # Other jobs on the machine skew every number below; the load average shows whether there were any.
        "load average at start": _load_average(),
    }


def _busy(machine: dict[str, Any]) -> bool:
    """True when other work loaded more than half the cores as the run began (the load at the end
    counts this benchmark's own threads too, so it is shown but not judged)."""
    return float(machine["load average at start"].split()[0]) > 0.5 * machine["cores"]


def _load_average() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def matmul_rate(dtype: torch.dtype, n: int = MATMUL_SIZE, repeats: int = 5, device: str = "cpu") -> float:
    """Best FLOP/s of an n x n matmul: the ceiling that the model's convolutions and matmuls can reach."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)  # the first call pays for the kernel selection
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def synchronize(device: str | torch.device) -> None:
    """Waits for the GPU's queued work, so that the clock measures it (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# The plain loop
# ---------------------------------------------------------------------------------------------


def make_config(preset: str, batch_size: int) -> Config:
    return load_config(CONFIG, ["--model.preset", preset, "--training.train_batch_size", str(batch_size)])


def make_batches(dataset: TensorDataset, batch_size: int) -> list[torch.Tensor]:
    images = dataset.tensors[0]
    return [to_model_range(images[i * batch_size : (i + 1) * batch_size]) for i in range(PLAIN_BATCHES)]


@dataclasses.dataclass
class PlainLoop:
    """The minimal training step: the same UNet, AdamW, random numbers and loss as train.py, nothing else."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: LinearNoiseScheduler
    cfg: Config
    bf16: bool = False
    device: str = "cpu"
    micro_step: int = 0

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        config = {"diffusion": self.cfg.diffusion, "training": self.cfg.training}
        timesteps = self.cfg.diffusion.num_train_timesteps
        draws = draw_batch(self.cfg.training.seed, self.micro_step, x0.shape, timesteps, device=x0.device)
        self.micro_step += 1
        with torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.bf16):
            return training_loss(self.model, self.scheduler, x0, draws, **config)

    def step(self, x0: torch.Tensor) -> None:
        self.loss(x0).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def build_plain_loop(
    cfg: Config, channels: int, bf16: bool = False, device: str = "cpu", image_size: int | None = None
) -> PlainLoop:
    """A fresh UNet on `device` with train.py's AdamW; seeded, so every variant starts alike. `image_size`
    replaces the dataset's (a latent model's UNet sees the autoencoder's latents)."""
    set_seed(cfg.training.seed)
    size = image_size or cfg.dataset.image_size
    model = build_unet(cfg.model.preset, size, channels, **cfg.model.unet_kwargs())
    model.to(device).train()
    optimizer = build_optimizer(model.parameters(), cfg.training)
    scheduler = LinearNoiseScheduler(**cfg.diffusion.scheduler_kwargs())
    return PlainLoop(model, optimizer, scheduler, cfg, bf16, device)


def time_plain(
    variant: Variant,
    cfg: Config,
    batches: list[torch.Tensor],
    steps: int,
    cache_root: Path,
    device: str = "cpu",
    backend: str = "inductor",
) -> dict[str, float]:
    """ms per step of the plain loop on `device` after warm-up; for compiled models also the compile time."""
    loop = build_plain_loop(cfg, batches[0].shape[1], variant.bf16, device)
    batches = [b.to(device) for b in batches]
    compile_seconds = 0.0
    with _fresh_inductor_cache(cache_root / variant.name.replace(" ", "")):
        if variant.compile:
            torch._dynamo.reset()  # no graphs left over from the other compiled variant
            loop.model = torch.compile(loop.model, backend=backend)
            start = time.perf_counter()
            loop.step(batches[0])
            synchronize(device)
            compile_seconds = time.perf_counter() - start
        for i in range(EAGER_WARMUP):
            loop.step(batches[i % len(batches)])
        synchronize(device)
        start = time.perf_counter()
        for i in range(steps):
            loop.step(batches[i % len(batches)])
        synchronize(device)
        seconds = (time.perf_counter() - start) / steps
    if variant.compile:
        compile_seconds -= seconds  # the first call also did one ordinary step
    return {"ms_per_step": 1e3 * seconds, "compile_s": compile_seconds}


@contextmanager
def _fresh_inductor_cache(path: Path) -> Iterator[None]:
    """Points inductor at an empty cache, so compile times are those of a first run, not cache hits."""
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


def count_step_flops(cfg: Config, batch: torch.Tensor) -> int:
    """FLOPs of forward + backward of one fp32 step (the optimizer's elementwise work is not counted)."""
    loop = build_plain_loop(cfg, batch.shape[1])
    with FlopCounterMode(display=False) as counter:
        loop.loss(batch).backward()
    return counter.get_total_flops()


# ---------------------------------------------------------------------------------------------
# train.py's DataLoader and accelerate's bf16
# ---------------------------------------------------------------------------------------------


def make_accelerator(cfg: Config, output_dir: Path) -> Accelerator:
    """train.py's Accelerator, in bf16 (so that its autocast can be checked too) and without trackers."""
    return build_accelerator(
        dataclasses.replace(cfg.training, mixed_precision="bf16", report_to="none"), output_dir
    )


def time_data_loading(
    accelerator: Accelerator, dataset: TensorDataset, cfg: Config, num_batches: int
) -> float:
    """Seconds per batch to fetch a batch from train.py's DataLoader and scale it to [-1, 1]."""
    loader = accelerator.prepare(build_dataloader(dataset, cfg.training))
    count = 0
    start = time.perf_counter()
    while count < num_batches:  # several epochs when the data set is small
        for images, _labels in loader:
            to_model_range(images)
            count += 1
            if count == num_batches:
                break
    return (time.perf_counter() - start) / num_batches


def probe_accelerate_bf16(accelerator: Accelerator, cfg: Config, batch: torch.Tensor) -> dict[str, str]:
    """Dtypes inside and out of a model prepared with mixed_precision bf16, as train.py prepares it."""
    model = build_plain_loop(cfg, batch.shape[1]).model
    seen: dict[str, str] = {}

    def record(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        seen.setdefault("inner", str(output.dtype))  # returns None: the output stays as it is

    model.conv_in.register_forward_hook(record)
    model = accelerator.prepare(model)
    timesteps = torch.zeros(batch.shape[0], dtype=torch.long)
    with torch.no_grad():
        seen["output"] = str(model(batch, timesteps).sample.dtype)
    return seen


# ---------------------------------------------------------------------------------------------
# train.py, launched
# ---------------------------------------------------------------------------------------------


def train_command(variant: Variant, cfg: Config, steps: int, output_dir: Path) -> list[str]:
    never = str(steps + 1)  # no checkpoint and no grid inside the timed steps
    return accelerate_launch(
        TRAIN_SCRIPT,
        *("--config", str(CONFIG)),
        *("--model.preset", cfg.model.preset),
        *("--training.train_batch_size", str(cfg.training.train_batch_size)),
        *("--training.max_train_steps", str(steps)),
        # Quoted: the override is parsed as YAML, where a bare `no` is the boolean false.
        *("--training.mixed_precision", "bf16" if variant.bf16 else '"no"'),
        *("--training.output_dir", str(output_dir)),
        *("--training.report_to", "none"),
        *("--training.checkpointing_steps", never, "--training.save_images_steps", never),
        # The final grid is in both launches and cancels; one image and one step keep it out of the noise.
        *("--training.num_sample_images", "1", "--training.num_inference_steps", "1"),
        *_no_evaluation(cfg),
        dynamo_backend="inductor" if variant.compile else "no",
        threads=os.cpu_count(),
    )


def _no_evaluation(cfg: Config) -> list[str]:
    # Periodic evaluation (where train.py has it) would sample inside the timed steps.
    return ["--training.eval_every", "0"] if hasattr(cfg.training, "eval_every") else []


def launch_train(variant: Variant, cfg: Config, steps: int, device: str = "cpu") -> Launch:
    with tempfile.TemporaryDirectory(prefix="hf-ddpm-throughput-") as tmp:
        cache = Path(tmp) / "inductor"
        # A fresh cache per launch: both launches compile from scratch, so compilation cancels.
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
        if torch.device(device).type == "cpu":  # train.py takes a GPU where there is one: not here
            env["CUDA_VISIBLE_DEVICES"] = ""
        command = train_command(variant, cfg, steps, Path(tmp) / "run")
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        files = sum(1 for p in cache.rglob("*") if p.is_file()) if cache.exists() else 0
    error = _error_line(done.stderr + done.stdout) if done.returncode else None
    return Launch(steps, seconds, files, error)


def _error_line(output: str) -> str:
    """The line that says why train.py failed: its exception or argparse error, not accelerate's
    CalledProcessError about the child that raised it."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if _ERROR.search(line) and "CalledProcessError" not in line]
    return (errors or lines or ["no output"])[-1]


def time_train_script(
    variant: Variant, cfg: Config, train_steps: tuple[int, int], device: str = "cpu"
) -> dict[str, Any]:
    launches = []
    for steps in train_steps:
        log(f"train.py {variant.name}, max_train_steps {steps}")
        launches.append(launch_train(variant, cfg, steps, device))
        if launches[-1].error:
            log(f"  failed: {launches[-1].error}")
            break
    result: dict[str, Any] = {"launches": [dataclasses.asdict(launch) for launch in launches]}
    failed = [launch.error for launch in launches if launch.error]
    if failed:
        return {**result, "error": f"failed: {failed[0]}"}
    first, second = launches
    seconds = (second.seconds - first.seconds) / (second.steps - first.steps)
    if seconds <= 0:
        # The launches' fixed costs (above all compilation) varied by more than the extra steps took.
        return {**result, "error": f"T2 <= T1 (noise > {second.steps - first.steps} steps): raise N2"}
    return {**result, "ms_per_step": 1e3 * seconds, "fixed_s": first.seconds - first.steps * seconds}


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def images_per_s(ms_per_step: float, batch_size: int) -> float:
    return batch_size / (ms_per_step / 1e3)


def machine_table(info: dict[str, Any]) -> str:
    return markdown_table(["what", "value"], [[key, str(value)] for key, value in info.items()])


def overhead_table(results: dict[str, Any], batch_size: int) -> str:
    rows = []
    for name, plain in results["plain"].items():
        train = results["train"].get(name)
        row = [name, f"{plain['ms_per_step']:.1f}", f"{images_per_s(plain['ms_per_step'], batch_size):.0f}"]
        if train is None:
            row += ["skipped"] * 4
        elif "error" in train:
            row += [train["error"][:100], "", "", ""]
        else:
            ms = train["ms_per_step"]
            row += [
                f"{ms:.1f}",
                f"{images_per_s(ms, batch_size):.0f}",
                f"{ms / plain['ms_per_step']:.2f}x",
                f"{train['fixed_s']:.1f}",
            ]
        rows.append(row + [_compile_cell(plain, train)])
    headers = ["variant", "plain ms/step", "plain img/s", "train.py ms/step", "train.py img/s"]
    headers += ["train.py / plain", "train.py fixed s", "compile"]
    return markdown_table(headers, rows)


def _compile_cell(plain: dict[str, float], train: dict[str, Any] | None) -> str:
    if "compile_s" not in plain or not plain["compile_s"]:
        return "-"
    cell = f"plain {plain['compile_s']:.1f} s"
    launches = train["launches"] if train else []
    if launches and not any(launch["error"] for launch in launches):
        files = launches[0]["inductor_files"]
        cell += f"; train.py inductor wrote {files} files" if files else "; train.py did NOT compile"
    return cell


def data_table(results: dict[str, Any], batch_size: int) -> str:
    data_ms = 1e3 * results["data_s_per_batch"]
    rows = []
    for source in ("train", "plain"):
        for name, timing in results[source].items():
            if "ms_per_step" in timing:
                label = f"{'train.py' if source == 'train' else 'plain loop'} {name}"
                share = 100 * data_ms / timing["ms_per_step"]
                rows.append([label, f"{timing['ms_per_step']:.1f}", f"{data_ms:.2f}", f"{share:.1f}%"])
    headers = ["step of", "ms/step", f"data ms/batch ({batch_size} images)", "data / step"]
    return markdown_table(headers, rows)


def efficiency_table(results: dict[str, Any]) -> str:
    flops = results["flops_per_step"]
    rows = []
    for source in ("plain", "train"):
        for name, timing in results[source].items():
            if "ms_per_step" not in timing:
                continue
            peak = results["matmul_flops"]["bf16" if name.startswith("bf16") else "fp32"]
            achieved = flops / (timing["ms_per_step"] / 1e3)
            label = f"{'train.py' if source == 'train' else 'plain loop'} {name}"
            rows.append(
                [label, f"{achieved / 1e9:.1f}", f"{peak / 1e9:.1f}", f"{100 * achieved / peak:.1f}%"]
            )
    return markdown_table(["step of", "achieved GFLOP/s", "matmul GFLOP/s", "of matmul"], rows)


def print_report(results: dict[str, Any], args: argparse.Namespace) -> None:
    batch = args.batch_size
    rates = results["matmul_flops"]
    probe = results["accelerate_bf16"]
    sections = [
        ("Machine", machine_table(results["machine"])),
        (
            f"Our overhead: preset {args.preset}, batch {batch}; train.py steps from launches of "
            f"{args.train_steps[0]} and {args.train_steps[1]} steps",
            overhead_table(results, batch),
        ),
        (f"Data loading: {args.data_batches} batches of train.py's DataLoader", data_table(results, batch)),
        (
            f"Efficiency: {results['flops_per_step'] / 1e9:.2f} GFLOP per step (forward + backward); "
            f"{MATMUL_SIZE}^2 matmul: fp32 {rates['fp32'] / 1e9:.1f}, bf16 {rates['bf16'] / 1e9:.1f} GFLOP/s",
            efficiency_table(results),
        ),
    ]
    for title, table in sections:
        print(f"### {title}\n\n{table}\n")
    if _busy(results["machine"]):
        print(
            "WARNING: other jobs were keeping the CPUs busy (see the load averages): timings are unreliable."
        )
    print(
        f"accelerate mixed_precision bf16 on CPU: conv_in computes in {probe['inner']}, "
        f"the model returns {probe['output']}."
    )


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # As the Makefile does: the local data next to the checkout, unless told otherwise.
    default_data = REPO.parent / "shared" / "data"
    if default_data.is_dir():
        os.environ.setdefault(DATA_DIR_ENV, str(default_data))
    torch.set_num_threads(os.cpu_count())
    cfg = make_config(args.preset, args.batch_size)
    set_seed(cfg.training.seed)
    variants = [Variant(bf16, compiled) for compiled in (False, True) for bf16 in (False, True)]
    if args.skip_compile:
        variants = [v for v in variants if not v.compile]

    results: dict[str, Any] = {"machine": machine_info(), "settings": {**vars(args), "json": str(args.json)}}
    log("matmul rates")
    results["matmul_flops"] = {
        name: matmul_rate(dtype, device=args.device) for name, dtype in MATMUL_DTYPES.items()
    }
    log("loading the data set")
    dataset, _info = load_image_dataset(cfg.dataset, seed=cfg.training.seed, progress=False)
    batches = make_batches(dataset, args.batch_size)
    results["flops_per_step"] = count_step_flops(cfg, batches[0])
    results["plain"] = {}
    with tempfile.TemporaryDirectory(prefix="hf-ddpm-inductor-") as cache_root:
        for variant in variants:
            log(f"plain loop {variant.name}")
            results["plain"][variant.name] = time_plain(
                variant, cfg, batches, args.steps, Path(cache_root), args.device
            )

    log("data loading and accelerate's bf16")
    accelerator = make_accelerator(cfg, Path(tempfile.mkdtemp(prefix="hf-ddpm-throughput-")))
    results["data_s_per_batch"] = time_data_loading(accelerator, dataset, cfg, args.data_batches)
    results["accelerate_bf16"] = probe_accelerate_bf16(accelerator, cfg, batches[0])

    results["train"] = {}
    if not args.skip_train_script:
        for variant in variants:
            results["train"][variant.name] = time_train_script(variant, cfg, args.train_steps, args.device)

    results["machine"]["load average at end"] = _load_average()
    print_report(results, args)
    if args.json:
        write_json(args.json, results)
        log(f"wrote {args.json}")


if __name__ == "__main__":
    main()
