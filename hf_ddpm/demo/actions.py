"""What the demo's tabs do, apart from the page: load models, stream a sampling run, noise an example,
turn a sketch into an image and a mask, check the input. `hf_ddpm.demo` lays these out as a Gradio app.

Each handler checks its input first and raises `gr.Error` with one line naming the problem and the fix,
which Gradio shows in the page; the streaming ones are generators that yield the outputs every few steps.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from ..classifier import CHECKOUT as REFERENCE_DIR  # the reference checkpoints of a source checkout
from ..data import load_labeled_split, to_model_range
from ..pipeline import is_flow, load_pipeline, make_pipeline, make_scheduler
from ..pipelines.inpainting_ddpm import (
    InpaintingDDPMPipeline,
    SDEditDDPMPipeline,
    repaint_schedule,
    sdedit_timesteps,
)
from ..scheduler import BETA_SCHEDULES, LinearNoiseScheduler
from .live import Frame, frames, latent_decoder, tile_frame, to_uint8_images, watch_steps

DEFAULT_MODEL = "ddpm-mnist-cfg"
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
ANY_CLASS = "any (unconditional)"
MAX_STEPS, MAX_IMAGES = 1000, 16
FRAMES_PER_RUN = 25  # about this many streamed frames per run, whatever the step count


def import_gradio():
    import gradio as gr  # imported here: the library must not need gradio (extra `demo`)

    return gr


def _fail(message: str) -> Exception:
    """One line in the page: Gradio shows a `gr.Error`'s message as it is and keeps serving."""
    return import_gradio().Error(" ".join(str(message).split()), print_exception=False)


def reference_models(folder: Path = REFERENCE_DIR) -> dict[str, str]:
    """Display name -> folder of every exported pipeline in `folder` (the reference checkpoints)."""
    if not folder.is_dir():
        return {}
    return {p.name: str(p) for p in sorted(folder.iterdir()) if (p / "model_index.json").is_file()}


class ModelCache:
    """Pipelines loaded on first use, by display name, folder or Hub id; shared by all requests.

    Requests never change a cached pipeline: they build their own around its weights.
    """

    def __init__(self, models: dict[str, str]):
        self.models = models
        self._loaded: dict[str, object] = {}
        self._lock = threading.Lock()

    def resolve(self, name: str) -> str:
        """A dropdown value -> what `load_pipeline` takes; `gr.Error` naming the choices if it is neither."""
        name = (name or "").strip()
        if name in self.models:
            return self.models[name]
        if Path(name).is_dir() or HUB_ID.match(name):
            return name
        raise _fail(
            f"unknown model {name!r}: choose one of {', '.join(self.models)}, or type a folder written by "
            "training/train.py or a Hub repo id (org/name)"
        )

    def get(self, name: str):
        source = self.resolve(name)
        with self._lock:  # one load per model, even when several requests ask at once
            if source not in self._loaded:
                try:
                    pipeline = load_pipeline(source)
                except Exception as err:  # a missing folder, an unreachable Hub, a broken export: one line
                    message = str(err).splitlines()[0] if str(err) else type(err).__name__
                    raise _fail(f"cannot load model {name!r}: {message}") from err
                pipeline.set_progress_bar_config(disable=True)
                self._loaded[source] = pipeline
            return self._loaded[source]


def _whole(name: str, value, low: int, high: int) -> int:
    """An integer input within [low, high], or `gr.Error` saying which."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _fail(f"{name} must be a whole number from {low} to {high}, got {value!r}") from None
    if not math.isfinite(number) or number != int(number) or not low <= number <= high:
        raise _fail(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(number)


def class_choices(pipeline) -> list[str]:
    """The class names of a class-conditional pipeline, in index order; [] for an unconditional one."""
    labels = getattr(pipeline, "labels", {}) or {}
    return sorted(labels, key=labels.get)


def _label_ids(pipeline, label: str, count: int) -> list[int] | None:
    """`count` copies of a class's index, None for "any"; `gr.Error` for a class the model lacks."""
    if not class_choices(pipeline) or label in (None, "", ANY_CLASS):
        return None
    try:
        return pipeline.get_label_ids([label] * count).tolist()
    except ValueError as err:
        raise _fail(str(err)) from err


# -- Generate --------------------------------------------------------------------------------------------


def generate_frames(
    models: ModelCache,
    model: str,
    sampler: str,
    steps,
    seed,
    num_images,
    label: str,
    guidance_scale: float,
) -> Iterator[tuple]:
    """The Generate tab: yields (frames image, gallery, status) every few steps, the images at the end."""
    gr = import_gradio()
    steps = _whole("steps", steps, 1, MAX_STEPS)
    seed = _whole("seed", seed, 0, 2**32 - 1)
    count = _whole("number of images", num_images, 1, MAX_IMAGES)
    base = models.get(model)
    try:
        scheduler = make_scheduler(sampler, base.scheduler.config)
    except ValueError as err:
        raise _fail(str(err)) from err
    labels = _label_ids(base, label, count)
    if class_choices(base) and labels is None:
        raise _fail(
            f"{model} is class-conditional: pick one of its classes ({', '.join(class_choices(base)[:10])})"
        )
    pipeline = make_pipeline(
        base.unet, scheduler, id2label=getattr(base.config, "id2label", None), vae=getattr(base, "vae", None)
    )
    pipeline.set_progress_bar_config(disable=True)
    decode = latent_decoder(pipeline) if getattr(pipeline, "vae", None) is not None else None

    def run(report) -> np.ndarray:
        watch_steps(pipeline, report, decode)
        generator = torch.Generator().manual_seed(seed)
        request = (
            {"class_labels": labels, "guidance_scale": guidance_scale} if labels else {"batch_size": count}
        )
        return pipeline(**request, num_inference_steps=steps, generator=generator, output_type="np").images

    captions = [label] * count if labels else [f"seed {seed}, #{i}" for i in range(count)]
    yield from _stream(run, steps, captions, gr)


def _stream(run, total_steps: int, captions: list[str], gr) -> Iterator[tuple]:
    """Yields (frames image, gallery, status) for the frames of `run`, then its images."""
    start = time.perf_counter()
    first = None
    for item in frames(run, every=max(1, total_steps // FRAMES_PER_RUN)):
        elapsed = time.perf_counter() - start
        if isinstance(item, Frame):
            first = first if first is not None else elapsed
            status = f"step {item.step} of {item.total} (timestep {item.timestep}), {elapsed:.1f} s"
            yield tile_frame(item), gr.skip(), status
        else:
            images = np.round(np.asarray(item) * 255).astype(np.uint8)
            gallery = [
                (image[..., 0] if image.shape[-1] == 1 else image, c)
                for image, c in zip(images, captions, strict=True)
            ]
            status = f"{len(images)} images in {elapsed:.2f} s (first frame after {first or 0:.2f} s)"
            yield gr.skip(), gallery, status


# -- Forward process --------------------------------------------------------------------------------------


class Examples:
    """The first test image of each class of a data set, loaded on first use (offline first, see
    `hf_ddpm.data`): what the forward-process tab noises."""

    def __init__(self):
        self._cache: dict[str, tuple[torch.Tensor, list[str]]] = {}
        self._lock = threading.Lock()

    def get(self, dataset: str) -> tuple[torch.Tensor, list[str]]:
        with self._lock:
            if dataset not in self._cache:
                try:
                    images, labels, names = load_labeled_split(dataset, "test")
                except Exception as err:
                    raise _fail(f"cannot load the {dataset} examples: {str(err).splitlines()[0]}") from err
                first = [int((labels == c).nonzero()[0, 0]) for c in labels.unique()]
                self._cache[dataset] = (images[first], [names[int(labels[i])] for i in first])
            return self._cache[dataset]


def forward_process(x0: torch.Tensor, t: int, schedule: str, seed: int) -> tuple[torch.Tensor, float]:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (eq. 4 of Ho et al. 2020) at paper time t
    (0 returns x_0), eps seeded; returns x_t and alpha_bar_t."""
    if t == 0:
        return x0.clone(), 1.0
    alpha_bar = float(LinearNoiseScheduler(beta_schedule=schedule).alphas_cumprod[t - 1])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    return alpha_bar**0.5 * x0 + (1 - alpha_bar) ** 0.5 * noise, alpha_bar


def histogram(values: torch.Tensor, bins: int = 40, limit: float = 4.0):
    """Density of the pixel values against the N(0, 1) density, as a long table for a line plot."""
    import pandas as pd  # comes with gradio

    counts, edges = np.histogram(values.numpy().ravel().clip(-limit, limit), bins=bins, range=(-limit, limit))
    centers = (edges[:-1] + edges[1:]) / 2
    density = counts / (counts.sum() * (edges[1] - edges[0]))
    normal = np.exp(-(centers**2) / 2) / math.sqrt(2 * math.pi)
    return pd.DataFrame(
        {
            "pixel value": np.concatenate([centers, centers]),
            "density": np.concatenate([density, normal]),
            "series": ["x_t pixels"] * bins + ["N(0, 1)"] * bins,
        }
    )


def explore(examples: Examples, dataset: str, index, t, schedule: str, seed) -> tuple:
    """The forward-process tab: (x_0, x_t, statistics, histogram) of example `index` at time t."""
    images, names = examples.get(dataset)
    index = _whole("example", index, 0, len(images) - 1)
    t = _whole("t", t, 0, 1000)
    seed = _whole("seed", seed, 0, 2**32 - 1)
    if schedule not in BETA_SCHEDULES:
        raise _fail(f"schedule {schedule!r} is unknown: choose one of {', '.join(BETA_SCHEDULES)}")
    x0 = to_model_range(images[index : index + 1])
    xt, alpha_bar = forward_process(x0, t, schedule, seed)
    snr = alpha_bar / (1 - alpha_bar) if alpha_bar < 1 else math.inf
    stats = (
        f"**{dataset} example {index} (class {names[index]}), t = {t}**  \n"
        f"alpha_bar_t = {alpha_bar:.5f}: signal scale sqrt(alpha_bar_t) = {alpha_bar**0.5:.4f}, "
        f"noise scale sqrt(1 - alpha_bar_t) = {(1 - alpha_bar) ** 0.5:.4f}  \n"
        f"SNR = alpha_bar_t / (1 - alpha_bar_t) = {snr:.4g} "
        f"(log10 SNR = {math.log10(snr) if snr else -math.inf:.2f})  \n"
        f"x_t pixels: mean {xt.mean():.3f}, std {xt.std():.3f} (N(0, 1): 0 and 1)"
    )
    single = to_uint8_images(x0)[0]
    noisy = to_uint8_images(xt)[0]  # shown clipped to [-1, 1]; the histogram has the real values
    squeeze = (lambda a: a[..., 0]) if single.shape[-1] == 1 else (lambda a: a)
    return squeeze(single), squeeze(noisy), stats, histogram(xt)


# -- Draw -------------------------------------------------------------------------------------------------


def sketch_to_image(sketch, size: int = 28, threshold: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """The sketchpad's value -> (image (1, 1, size, size) in [-1, 1], mask (1, 1, size, size) of the strokes).

    Ink is the brightness of the drawing (white strokes on black, as MNIST), averaged over each block of
    canvas pixels: a stroke edge becomes gray, as the digits' edges are. Pixels with at least `threshold`
    ink are the strokes, the pixels RePaint keeps.
    """
    from PIL import Image

    composite = sketch.get("composite") if isinstance(sketch, dict) else sketch
    if composite is None:
        raise _fail("the sketch is empty: draw a stroke on the canvas first")
    array = np.asarray(composite, dtype=np.float32) / 255
    if array.ndim == 3:
        gray = (
            array[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
            if array.shape[-1] >= 3
            else array[..., 0]
        )
        if array.shape[-1] == 4:  # strokes on a transparent canvas: what is not drawn is black
            gray = gray * array[..., 3]
    else:
        gray = array
    ink = np.asarray(Image.fromarray(gray, mode="F").resize((size, size), Image.BOX)).clip(0, 1)
    if ink.max() < threshold:
        raise _fail("the sketch is empty: draw a stroke on the canvas first (white on black)")
    image = torch.from_numpy(ink)[None, None] * 2 - 1
    return image, (torch.from_numpy(ink) >= threshold).float()[None, None]


def draw_frames(
    models: ModelCache,
    sketch,
    mode: str,
    model: str,
    label: str,
    guidance_scale: float,
    steps,
    jump_length,
    jump_n_sample,
    strength: float,
    seed,
    num_images,
) -> Iterator[tuple]:
    """The Draw tab: yields (input view, frames image, gallery, status)."""
    gr = import_gradio()
    image, mask = sketch_to_image(sketch)
    steps = _whole("steps", steps, 1, MAX_STEPS)
    seed = _whole("seed", seed, 0, 2**32 - 1)
    count = _whole("number of images", num_images, 1, MAX_IMAGES)
    base = models.get(model)
    if getattr(base, "vae", None) is not None or is_flow(base.scheduler.config):
        kind = "a latent" if getattr(base, "vae", None) is not None else "a flow-matching"
        raise _fail(
            f"{model} is {kind} model: drawing needs a pixel-space DDPM, e.g. ddpm-mnist or ddpm-mnist-cfg"
        )
    labels = _label_ids(base, label, count)
    images = image if labels else image.expand(count, -1, -1, -1)
    id2label = getattr(base.config, "id2label", None)
    common = {"class_labels": labels, "guidance_scale": guidance_scale, "output_type": "np"}
    if mode.startswith("Complete"):
        jump_length = _whole("jump length", jump_length, 1, steps)
        jump_n_sample = _whole("resampling jumps", jump_n_sample, 1, 20)
        pipeline = InpaintingDDPMPipeline(base.unet, base.scheduler, id2label=id2label)
        order = repaint_schedule(steps, jump_length, jump_n_sample)
        total = sum(1 for a, b in pairwise(order) if b < a)
        call = {
            "image": images,
            "mask_image": mask,
            "jump_length": jump_length,
            "jump_n_sample": jump_n_sample,
        }
    else:
        if not 0 < strength <= 1:
            raise _fail(f"strength must lie in (0, 1], got {strength}")
        pipeline = SDEditDDPMPipeline(base.unet, base.scheduler, id2label=id2label)
        total = len(sdedit_timesteps(strength, steps, base.scheduler.config.num_train_timesteps))
        call = {"image": images, "strength": strength}
    pipeline.set_progress_bar_config(disable=True)

    def run(report) -> np.ndarray:
        def on_step(_pipeline, step, timestep, tensors):
            report(
                Frame(
                    step + 1,
                    total,
                    int(timestep),
                    tensors["image"].float().cpu(),
                    tensors["pred_original_sample"].clamp(-1, 1).float().cpu(),
                )
            )
            return {}

        generator = torch.Generator().manual_seed(seed)
        return pipeline(
            **call, **common, num_inference_steps=steps, generator=generator, callback_on_step_end=on_step
        ).images

    view = np.concatenate(
        [to_uint8_images(image)[0, ..., 0], to_uint8_images(mask * 2 - 1)[0, ..., 0]], axis=1
    )
    yield view, gr.skip(), gr.skip(), "starting"
    captions = [label if labels else f"seed {seed}, #{i}" for i in range(count)]
    for frame_image, gallery, status in _stream(run, total, captions, gr):
        yield gr.skip(), frame_image, gallery, status


def drawable(source: str) -> bool:
    """Whether the Draw tab can use a model: a pixel-space DDPM (no autoencoder, not flow matching). Read
    from a folder's config files; a Hub id is offered and checked when used."""
    folder = Path(source)
    if not (folder / "model_index.json").is_file():
        return True
    index = json.loads((folder / "model_index.json").read_text())
    scheduler = folder / "scheduler" / "scheduler_config.json"
    flow = scheduler.is_file() and is_flow(json.loads(scheduler.read_text()))
    return "vae" not in index and not flow


def available_datasets(data_dir: str | None) -> list[str]:
    """The example data sets of the forward-process tab: those in the data folder, else MNIST (from the
    Hub)."""
    if data_dir and Path(data_dir).is_dir():
        found = [name for name in ("mnist", "textures") if (Path(data_dir) / name).is_dir()]
        if found:
            return found
    return ["mnist"]
