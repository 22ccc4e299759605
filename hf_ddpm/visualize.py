"""Pictures that explain diffusion, written as PNGs (by default into `docs/images/`).

    python -m hf_ddpm.visualize [--out docs/images] [--model PIPELINE_DIR] [--run RUN_DIR] \\
        [--only NAME ...] [--seed 0] [--fast]

Each picture is a plotting function (returns the PNG's path) over a data function that is plain numpy/torch,
so the numbers can be tested without looking at pixels:

* `forward_diffusion` (`noised_images`): a digit and a texture under q(x_t | x_0), Ho et al. 2020 eq. 4.
* `pixel_trajectories` (`pixel_chain`): one pixel through the forward Markov chain (eq. 2) against the
  closed-form marginal of eq. 4.
* `schedules` (`schedule_curves`): alpha_bar_t and log SNR of the linear, scaled_linear and cosine betas.
* `reverse_process` (`reverse_snapshots`): x_t and the predicted x_0 along the DDPM reverse chain
  (Algorithm 2). Needs `--model`.
* `training_curves` (`read_scalars`): loss and eval scalars from a run's TensorBoard logs. Needs `--run`.
* `sampler_grids` (`sample_with_samplers`): one seed through DDPM, DDIM and DPM-Solver at several step
  counts. Needs `--model`.

Time is counted as in the paper: t is the number of noising steps taken, so t = 0 is the data x_0 and
t = T = 1000 is (almost) pure noise. The scheduler's tables start at index 0 for the first step, so paper t
is scheduler index t - 1: t = 1000 is index 999.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so importing this module changes no
global matplotlib state and needs no display.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMPipeline
from diffusers.utils import logging as diffusers_logging
from diffusers.utils.torch_utils import randn_tensor
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .arguments import ArgumentParser
from .config import DatasetConfig
from .data import decode_split, load_split, resolve_source, to_model_range, to_uint8
from .files import write_atomically
from .pipeline import generate, load_pipeline
from .scheduler import LinearNoiseScheduler

PICTURES = (
    "forward_diffusion",
    "pixel_trajectories",
    "schedules",
    "reverse_process",
    "training_curves",
    "sampler_grids",
)
FORWARD_TS = tuple(range(0, 1001, 50))
# (sampler, inference steps) for `sampler_grids`: the paper's chain, then fewer-step solvers of one model.
SAMPLER_RUNS = (("ddpm", 1000), ("ddim", 50), ("ddim", 10), ("dpm-solver", 20), ("dpm-solver", 10))
EVAL_TAGS = ("eval/classifier_fid", "eval/legibility", "eval/class_entropy")
# Row 1000 of the textures train split is Brodatz D006, a brick wall: structure that is easy to see fade.
TEXTURE_INDEX = 1000
DPI = 120


# ---------------------------------------------------------------------------------------------
# Data: numpy / torch only
# ---------------------------------------------------------------------------------------------


def load_example(dataset: str, index: int = 0) -> torch.Tensor:
    """Row `index` of the train split of `$HF_DDPM_DATA_DIR/<dataset>` (`mnist` or `textures`).

    Returns:
        float32 of shape (1, 28, 28) in [-1, 1], the model's range.
    """
    cfg = DatasetConfig(name=None, path=dataset, channels=1)
    ds = load_split(resolve_source(cfg), cfg.split)
    images, _ = decode_split(ds.select([index]), cfg, progress=False)
    return to_model_range(images[0])


def alpha_bars(scheduler: LinearNoiseScheduler) -> np.ndarray:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s) for paper t = 0 .. T, float64 of shape (T + 1,).

    Entry 0 is 1 (nothing noised yet); entry t is the scheduler's `alphas_cumprod[t - 1]`.
    """
    return np.concatenate([[1.0], scheduler.alphas_cumprod.double().cpu().numpy()])


def noised_images(
    x0: torch.Tensor, ts: Sequence[int], seed: int = 0, scheduler: LinearNoiseScheduler | None = None
) -> torch.Tensor:
    """x_t ~ q(x_t | x_0) in closed form (eq. 4), x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.

    Args:
        x0: clean images of shape (N, C, H, W) in [-1, 1].
        ts: paper timesteps in [0, T]; t = 0 returns x0 itself.
        seed: seeds eps.

    Returns:
        Tensor of shape (N, len(ts), C, H, W): x_t of image n at ts[k] in [n, k].
    """
    scheduler = scheduler or LinearNoiseScheduler()
    total = scheduler.config.num_train_timesteps
    if any(not 0 <= t <= total for t in ts):
        raise ValueError(f"timesteps must lie in [0, {total}], got {list(ts)}")
    # One eps per image for every t: along a row only alpha_bar_t changes, so the fade is the schedule's.
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    batch = len(x0)
    columns = [x0 if t == 0 else scheduler.add_noise(x0, noise, torch.full((batch,), t - 1)) for t in ts]
    return torch.stack(columns, dim=1)


def pixel_chain(
    x0: float, num: int = 200, seed: int = 0, scheduler: LinearNoiseScheduler | None = None
) -> np.ndarray:
    """`num` runs of the forward Markov chain (eq. 2) for one pixel starting at `x0`:
    x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps_t, fresh eps_t at every step.

    Its marginal at each t is eq. 4's N(sqrt(alpha_bar_t) x_0, 1 - alpha_bar_t).

    Returns:
        float64 of shape (num, T + 1); column t is x_t, column 0 is x0.
    """
    scheduler = scheduler or LinearNoiseScheduler()
    betas = scheduler.betas.double().cpu().numpy()
    eps = np.random.default_rng(seed).standard_normal((num, len(betas)))
    x = np.empty((num, len(betas) + 1))
    x[:, 0] = x0
    for t, beta in enumerate(betas, start=1):
        x[:, t] = math.sqrt(1 - beta) * x[:, t - 1] + math.sqrt(beta) * eps[:, t - 1]
    return x


# The schedules of the picture: the paper's, latent diffusion's and the cosine one.
PICTURED_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def schedule_curves(
    schedules: Sequence[str] = PICTURED_SCHEDULES, num_train_timesteps: int = 1000
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """alpha_bar_t and log SNR_t = log(alpha_bar_t / (1 - alpha_bar_t)) for each beta schedule
    (beta 1e-4 .. 0.02 where the schedule uses them).

    Returns:
        {schedule: (alpha_bar, log_snr)}, each float64 of shape (T,) for paper t = 1 .. T.
    """
    curves = {}
    for name in schedules:
        scheduler = LinearNoiseScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=name)
        alpha_bar = alpha_bars(scheduler)[1:]
        curves[name] = (alpha_bar, np.log(alpha_bar) - np.log1p(-alpha_bar))
    return curves


@torch.no_grad()
def reverse_snapshots(
    pipeline: DDPMPipeline,
    num_images: int = 4,
    seed: int = 0,
    num_inference_steps: int = 1000,
    every: int = 100,
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Runs the reverse chain (Algorithm 2) as `DDPMPipeline.__call__` does, keeping every `every`-th step.

    The noise draws are the pipeline's, so the last prediction equals `generate(pipeline, num_images,
    num_inference_steps, seed)` up to the uint8 rounding.

    Returns:
        ts: paper t of each kept step (scheduler timestep + 1), decreasing; the last step is always kept.
        xs: float32 (K, N, C, H, W), x_t as fed to the model at those steps.
        x0_preds: float32 (K, N, C, H, W), the step's `pred_original_sample` (x_0 from eq. 15, clipped);
            the last one is the sample the chain returns.
    """
    unet, scheduler = pipeline.unet, pipeline.scheduler
    size = unet.config.sample_size
    shape = (num_images, unet.config.in_channels, *((size, size) if isinstance(size, int) else size))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    sample = randn_tensor(shape, generator=generator, device=pipeline.device, dtype=unet.dtype)
    scheduler.set_timesteps(num_inference_steps)
    last = len(scheduler.timesteps) - 1
    ts, xs, x0_preds = [], [], []
    for i, t in enumerate(scheduler.timesteps):
        out = scheduler.step(unet(sample, t).sample, t, sample, generator=generator)
        if i % every == 0 or i == last:
            ts.append(int(t) + 1)
            xs.append(sample.float().cpu())
            x0_preds.append(out.pred_original_sample.float().cpu())
        sample = out.prev_sample
    return ts, torch.stack(xs), torch.stack(x0_preds)


def read_scalars(run: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every scalar in the TensorBoard event files under `run/logs` (or under `run` when it has no logs/).

    Event files are found by searching, not by a fixed path (accelerate writes logs/<project>/events...,
    plus a sub-folder per run for hparams). A resumed run logs the steps after its checkpoint again; the
    value written last wins.

    Returns:
        {tag: (steps int64 (K,), values float64 (K,))}, sorted by step.
    """
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    root = Path(run) / "logs" if (Path(run) / "logs").is_dir() else Path(run)
    files = sorted(root.rglob("events.out.tfevents.*"))
    if not files:
        raise ValueError(
            f"no TensorBoard event files under {root}; pass --run the output_dir of a training run"
        )
    events: dict[str, list[tuple[float, int, float]]] = {}
    for file in files:
        # size_guidance 0 keeps every point; the default reservoir-samples long runs down to 10k.
        accumulator = EventAccumulator(str(file), size_guidance={SCALARS: 0})
        accumulator.Reload()
        for tag in accumulator.Tags()[SCALARS]:
            events.setdefault(tag, []).extend(
                (e.wall_time, e.step, e.value) for e in accumulator.Scalars(tag)
            )
    return {tag: _latest_per_step(points) for tag, points in events.items()}


def _latest_per_step(points: list[tuple[float, int, float]]) -> tuple[np.ndarray, np.ndarray]:
    by_step = {step: value for _, step, value in sorted(points)}
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


def smooth(values: np.ndarray, weight: float = 0.95) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average, debiased so the first points are not
    pulled towards 0. `values` of shape (K,), returns (K,)."""
    out = np.empty(len(values))
    ema, norm = 0.0, 0.0
    for i, value in enumerate(values):
        ema = weight * ema + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out[i] = ema / norm
    return out


def sample_with_samplers(
    model: str | Path, runs: Sequence[tuple[str, int]] = SAMPLER_RUNS, num_images: int = 16, seed: int = 0
) -> list[tuple[str, int, np.ndarray, float]]:
    """Samples `num_images` from the same seed (hence the same x_T) with each (sampler, steps) of `runs`.

    Returns:
        [(sampler, steps, uint8 images (N, H, W, C), seconds)], in the order of `runs`.
    """
    results = []
    for sampler, steps in runs:
        pipeline = load_pipeline(model, sampler)
        pipeline.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        images = generate(pipeline, num_images, steps, seed)
        results.append((sampler, steps, images, time.perf_counter() - start))
    return results


# ---------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------


def forward_diffusion(
    out_dir: str | Path, seed: int = 0, ts: Sequence[int] = FORWARD_TS, mnist_index: int = 0
) -> Path:
    """A real MNIST digit and a texture patch noised by eq. 4 at each paper t of `ts` (two rows)."""
    x0 = torch.stack([load_example("mnist", mnist_index), load_example("textures", TEXTURE_INDEX)])
    images = noised_images(x0, ts, seed)
    alpha_bar = alpha_bars(LinearNoiseScheduler())
    fig = _figure(0.72 * len(ts) + 1.0, 2.5)
    axes = fig.subplots(2, len(ts), squeeze=False)
    for row, name in enumerate(("MNIST digit", "texture patch")):
        axes[row, 0].set_ylabel(name)
        for col in range(len(ts)):
            _show(axes[row, col], images[row, col])
    for col, t in enumerate(ts):
        axes[0, col].set_title(f"t={t}", fontsize=9)
        axes[1, col].set_xlabel(rf"$\bar\alpha$={alpha_bar[t]:.2g}", fontsize=7)
    fig.suptitle(
        r"Forward diffusion $q(x_t \mid x_0) = \mathcal{N}(\sqrt{\bar\alpha_t}\,x_0,\ (1-\bar\alpha_t)I)$"
        " (Ho et al. 2020, eq. 4), linear betas 1e-4..0.02, one noise draw per row\n"
        "t = noising steps taken (paper's 1..T; scheduler index t-1, so t=1000 is index 999); "
        "shown clipped to [-1, 1]",
        fontsize=10,
    )
    return _save(fig, out_dir, "forward_diffusion")


def pixel_trajectories(out_dir: str | Path, seed: int = 0, x0: float = 1.0, num: int = 200) -> Path:
    """`num` forward chains of one pixel from `x0` with the eq. 4 mean and 2-std band, and the histogram
    of x_T against N(0, 1)."""
    scheduler = LinearNoiseScheduler()
    x = pixel_chain(x0, num, seed, scheduler)
    alpha_bar = alpha_bars(scheduler)
    t = np.arange(len(alpha_bar))
    mean, std = np.sqrt(alpha_bar) * x0, np.sqrt(1 - alpha_bar)

    fig = _figure(11, 4.2)
    left, right = fig.subplots(1, 2, width_ratios=(2.3, 1))
    left.plot(t, x.T, color="tab:blue", alpha=0.08, linewidth=0.6)
    left.fill_between(t, mean - 2 * std, mean + 2 * std, color="tab:orange", alpha=0.25, label="±2 std")
    left.plot(t, mean, color="tab:red", linewidth=2, label=r"mean $\sqrt{\bar\alpha_t}\,x_0$")
    left.plot([], [], color="tab:blue", label=f"{num} chains")
    left.set(xlabel="t (noising steps)", ylabel="$x_t$", xlim=(0, t[-1]))
    left.set_title(
        r"Markov chain $x_t = \sqrt{1-\beta_t}\,x_{t-1} + \sqrt{\beta_t}\,\epsilon_t$ (eq. 2), "
        rf"$x_0 = {x0:+g}$;"
        "\n"
        r"band: eq. 4 marginal, std $\sqrt{1-\bar\alpha_t}$",
        fontsize=10,
    )
    left.legend(loc="upper right", fontsize=8)

    grid = np.linspace(-4, 4, 200)
    right.hist(x[:, -1], bins=25, range=(-4, 4), density=True, color="tab:blue", alpha=0.6, label="$x_T$")
    right.plot(grid, np.exp(-(grid**2) / 2) / math.sqrt(2 * math.pi), color="black", label="N(0, 1)")
    right.set(xlabel=f"$x_T$, T = {t[-1]}", ylabel="density")
    right.set_title(
        rf"$x_T$ vs N(0, 1): $\sqrt{{\bar\alpha_T}}$ = {math.sqrt(alpha_bar[-1]):.4f}", fontsize=10
    )
    right.legend(fontsize=8)
    return _save(fig, out_dir, "pixel_trajectories")


def schedules(out_dir: str | Path) -> Path:
    """alpha_bar_t and log SNR_t against t for each beta schedule of `LinearNoiseScheduler`."""
    curves = schedule_curves()
    fig = _figure(11, 4)
    left, right = fig.subplots(1, 2)
    for name, (alpha_bar, log_snr) in curves.items():
        t = np.arange(1, len(alpha_bar) + 1)
        label = "squaredcos_cap_v2 (cosine)" if name == "squaredcos_cap_v2" else name
        left.plot(t, alpha_bar, label=label)
        right.plot(t, log_snr, label=label)
    left.set(
        xlabel="t",
        ylabel=r"$\bar\alpha_t$",
        title=r"signal kept: $\bar\alpha_t = \Pi_{s\leq t}\,(1-\beta_s)$",
    )
    right.set(xlabel="t", ylabel=r"log SNR$_t$", title=r"log SNR$_t = \log(\bar\alpha_t / (1-\bar\alpha_t))$")
    right.axhline(0, color="grey", linewidth=0.8, linestyle=":")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        "Noise schedules, T = 1000, betas 1e-4..0.02 (the cosine one of Nichol & Dhariwal 2021 ignores them)",
        fontsize=11,
    )
    return _save(fig, out_dir, "schedules")


def reverse_process(
    model: str | Path,
    out_dir: str | Path,
    num_images: int = 4,
    seed: int = 0,
    num_inference_steps: int = 1000,
    every: int = 100,
) -> Path:
    """Two rows per image: x_t and the predicted x_0 every `every` steps of the DDPM reverse chain."""
    ts, xs, x0_preds = reverse_snapshots(
        load_pipeline(model, "ddpm"), num_images, seed, num_inference_steps, every
    )
    fig = _figure(0.8 * len(ts) + 1.2, 1.6 * num_images + 0.8)
    axes = fig.subplots(2 * num_images, len(ts), squeeze=False)
    for n in range(num_images):
        axes[2 * n, 0].set_ylabel(f"#{n + 1} $x_t$", fontsize=9)
        axes[2 * n + 1, 0].set_ylabel(rf"#{n + 1} $\hat x_0$", fontsize=9)
        for k in range(len(ts)):
            _show(axes[2 * n, k], xs[k, n])
            _show(axes[2 * n + 1, k], x0_preds[k, n])
    for k, t in enumerate(ts):
        axes[0, k].set_title(f"t={t}", fontsize=9)
    fig.suptitle(
        f"DDPM reverse process (Algorithm 2), {num_inference_steps} steps, seed {seed}: $x_t$ and "
        r"$\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta) / \sqrt{\bar\alpha_t}$ (eq. 15, clipped)"
        f"\nevery {every} steps; the last $\\hat x_0$ is the sample",
        fontsize=10,
    )
    return _save(fig, out_dir, "reverse_process")


def training_curves(run: str | Path, out_dir: str | Path, weight: float = 0.95) -> Path:
    """Loss (raw and smoothed) against step, plus one panel per eval scalar the run logged."""
    scalars = read_scalars(run)
    tags = [tag for tag in ("loss", *EVAL_TAGS) if tag in scalars]
    if not tags:
        raise ValueError(f"{run}: no 'loss' or eval scalars in the logs; found {sorted(scalars) or 'none'}")
    fig = _figure(4.2 * len(tags), 3.8)
    axes = fig.subplots(1, len(tags), squeeze=False)[0]
    for ax, tag in zip(axes, tags, strict=True):
        steps, values = scalars[tag]
        if tag == "loss":
            ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.6, label="raw")
            ax.plot(steps, smooth(values, weight), color="tab:blue", label=f"EMA {weight}")
            # The loss falls by orders of magnitude early on; a log axis keeps the late part readable.
            ax.set_yscale("log")
            ax.legend(fontsize=8)
        else:
            ax.plot(steps, values, marker="o", markersize=3)
        ax.set(xlabel="optimizer step", title=tag)
        ax.grid(alpha=0.3)
    fig.suptitle(f"Training run {Path(run).resolve().name}", fontsize=11)
    return _save(fig, out_dir, "training_curves")


def sampler_grids(
    model: str | Path,
    out_dir: str | Path,
    runs: Sequence[tuple[str, int]] = SAMPLER_RUNS,
    num_images: int = 16,
    seed: int = 0,
) -> Path:
    """One panel of `num_images` samples per (sampler, steps) of `runs`, all from the same seed."""
    results = sample_with_samplers(model, runs, num_images, seed)
    fig = _figure(2.6 * len(results), 3.2)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, (sampler, steps, images, seconds) in zip(axes, results, strict=True):
        grid = tile(images)
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{sampler}, {steps} steps\n{seconds:.1f} s", fontsize=10)
        ax.set_axis_off()
    title = (
        f"One model, one seed ({seed}), hence one $x_T$, through different samplers.\n"
        "DDIM (eta = 0) and DPM-Solver map $x_T$ to $x_0$ deterministically"
    )
    if any(sampler == "ddpm" for sampler, _ in runs):
        title += "; DDPM adds fresh noise at every step, so its samples need not resemble theirs"
    fig.suptitle(title, fontsize=10)
    return _save(fig, out_dir, "sampler_grids")


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _show(ax: Axes, image: torch.Tensor) -> None:
    """Draws a model-range image (C, H, W); values outside [-1, 1] clip, as they would in a saved PNG."""
    pixels = to_uint8(image).permute(1, 2, 0).numpy()
    ax.imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, cmap="gray", vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])


def tile(images: np.ndarray, padding: int = 2) -> np.ndarray:
    """uint8 images (N, H, W, C) -> one uint8 grid (rows * (H + padding) - padding, ..., C), near square."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + padding) - padding, cols * (w + padding) - padding, c), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        y, x = (i // cols) * (h + padding), (i % cols) * (w + padding)
        grid[y : y + h, x : x + w] = image
    return grid


def _save(fig: Figure, out_dir: str | Path, name: str) -> Path:
    """Writes `out_dir/name.png`; through a `.partial` file and a rename, so a kill mid-write never leaves
    a truncated PNG under the real name."""
    # format="png": the ".partial" suffix would otherwise decide the format.
    return write_atomically(
        Path(out_dir) / f"{name}.png", lambda partial: fig.savefig(partial, format="png", dpi=DPI)
    )


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m hf_ddpm.visualize", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images", help="folder for the PNGs")
    parser.add_argument("--model", help="exported pipeline folder (for reverse_process, sampler_grids)")
    parser.add_argument("--run", help="training output_dir with TensorBoard logs (for training_curves)")
    parser.add_argument(
        "--only", nargs="+", choices=PICTURES, metavar="NAME", help=f"any of {', '.join(PICTURES)}"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true", help="sampler_grids without the 1000-step DDPM panel")
    args = parser.parse_args(argv)
    # One bar per pipeline load would bury the printed paths.
    diffusers_logging.disable_progress_bar()

    runs = [run for run in SAMPLER_RUNS if not (args.fast and run == ("ddpm", 1000))]
    pictures: dict[str, tuple[str | None, Callable[[], Path]]] = {
        "forward_diffusion": (None, lambda: forward_diffusion(args.out, args.seed)),
        "pixel_trajectories": (None, lambda: pixel_trajectories(args.out, args.seed)),
        "schedules": (None, lambda: schedules(args.out)),
        "reverse_process": ("model", lambda: reverse_process(args.model, args.out, seed=args.seed)),
        "training_curves": ("run", lambda: training_curves(args.run, args.out)),
        "sampler_grids": ("model", lambda: sampler_grids(args.model, args.out, runs, seed=args.seed)),
    }
    for name in args.only or PICTURES:
        needs, draw = pictures[name]
        if needs and getattr(args, needs) is None:
            print(f"{name}: skipped (needs --{needs})")
            continue
        try:
            print(draw())
        except (ValueError, OSError) as err:
            parser.error(f"{name}: {err}")


if __name__ == "__main__":
    main()
