"""A Gradio app to play with the project's DDPMs: watch images being denoised, explore the forward process,
and draw a sketch for the model to complete.

    python -m hf_ddpm.demo [--model checkpoints/ddpm-mnist-cfg --model org/ddpm-mnist ...]
                           [--host 127.0.0.1] [--port 7860] [--concurrency-limit 1]

Three tabs:

- Generate: any pipeline (folder or Hub id) with any of its samplers; a class and the guidance scale for
  class-conditional models. Every few steps the page shows x_t above the x_0 the model predicts from it.
- Forward process: a real digit or texture patch noised to time t with the closed form q(x_t | x_0), with
  alpha_bar_t, the SNR and the histogram of the pixels against N(0, 1).
- Draw: a sketchpad. RePaint completes the drawing (the strokes are kept, the rest regenerated) and SDEdit
  turns it into a digit by noising it to a chosen strength and denoising it (`pipelines/inpainting_ddpm.py`).

Requests wait in Gradio's queue; each one samples with its own scheduler around the shared weights, so
concurrent users never see each other's images. Bad input (an unknown model, steps of 0, an empty sketch,
a class the model lacks) is answered with one line in the page, and the server keeps serving.
"""

from __future__ import annotations

import argparse
import math
import re
import threading
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from .data import DATA_DIR_ENV, load_labeled_split, to_model_range
from .live import Frame, frames, latent_decoder, tile_frame, to_uint8_images, watch_steps
from .pipeline import (
    DDPM_SAMPLERS,
    FLOW_SAMPLERS,
    SAMPLERS,
    is_flow,
    load_pipeline,
    make_pipeline,
    make_scheduler,
)
from .pipelines.inpainting_ddpm import (
    InpaintingDDPMPipeline,
    SDEditDDPMPipeline,
    repaint_schedule,
    sdedit_timesteps,
)
from .scheduler import BETA_SCHEDULES, LinearNoiseScheduler

# The reference checkpoints committed with the project (the classifier finds its own the same way).
REFERENCE_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
DEFAULT_MODEL = "ddpm-mnist-cfg"
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
ANY_CLASS = "any (unconditional)"
CANVAS = 280  # the sketchpad's size: 10 canvas pixels per image pixel
MAX_STEPS, MAX_IMAGES = 1000, 16
FRAMES_PER_RUN = 25  # about this many streamed frames per run, whatever the step count
# Images are shown at 28x28, enlarged by the browser without smoothing.
CSS = """
.pixelated img, .pixelated canvas { image-rendering: pixelated; }
.pixelated .thumbnail-item img, .pixelated .grid-wrap img { image-rendering: pixelated; }
"""


def _gr():
    import gradio as gr  # imported here: the library must not need gradio (extra `demo`)

    return gr


def _fail(message: str) -> Exception:
    """One line in the page: Gradio shows a `gr.Error`'s message as it is and keeps serving."""
    return _gr().Error(" ".join(str(message).split()), print_exception=False)


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
    gr = _gr()
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
    gr = _gr()
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


# -- The app ----------------------------------------------------------------------------------------------


def _model_controls(models: ModelCache, model: str):
    """Updates for (sampler, class, guidance) when the model changes."""
    gr = _gr()
    pipeline = models.get(model)
    choices = class_choices(pipeline)
    sampler = "flow-euler" if is_flow(pipeline.scheduler.config) else "dpm-solver"
    return (
        gr.update(value=sampler, choices=list(FLOW_SAMPLERS if sampler == "flow-euler" else DDPM_SAMPLERS)),
        gr.update(
            choices=choices or [ANY_CLASS], value=choices[0] if choices else ANY_CLASS, visible=bool(choices)
        ),
        gr.update(visible=bool(choices)),
    )


def _draw_controls(models: ModelCache, model: str):
    gr = _gr()
    choices = class_choices(models.get(model))
    return (
        gr.update(choices=[ANY_CLASS, *choices], value=ANY_CLASS, visible=bool(choices)),
        gr.update(visible=bool(choices)),
    )


def drawable(source: str) -> bool:
    """Whether the Draw tab can use a model: a pixel-space DDPM (no autoencoder, not flow matching). Read
    from a folder's config files; a Hub id is offered and checked when used."""
    import json

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


def build_app(models: dict[str, str], default_model: str | None = None, data_dir: str | None = None):
    """The Gradio Blocks app over `models` (display name -> folder or Hub id). Call `.queue()` and
    `.launch()` on it, as `main` does."""
    import os

    gr = _gr()
    if data_dir:
        os.environ.setdefault(DATA_DIR_ENV, str(data_dir))
    cache, examples = ModelCache(models), Examples()
    names = list(models)
    default_model = default_model or (DEFAULT_MODEL if DEFAULT_MODEL in models else names[0])
    start = models and cache.get(default_model)
    classes = class_choices(start) if start else []
    datasets = available_datasets(data_dir or os.environ.get(DATA_DIR_ENV))
    pixel_models = [name for name in names if drawable(models[name])] or names
    draw_default = default_model if default_model in pixel_models else pixel_models[0]
    draw_classes = class_choices(cache.get(draw_default))

    with gr.Blocks(title="hf-ddpm: diffusion, live") as app:
        gr.Markdown(
            "# Denoising diffusion, live\n"
            "Denoising diffusion probabilistic models (Ho et al. 2020) on 28x28 images, trained with "
            "hf-ddpm. Generate and watch x_t turn into an image, noise a real image step by step, or draw "
            "something for the model to finish."
        )
        with gr.Tab("Generate", id="generate"):
            with gr.Row():
                with gr.Column(scale=1):
                    model = gr.Dropdown(
                        names,
                        value=default_model,
                        label="model",
                        allow_custom_value=True,
                        info="a reference checkpoint, a folder or a Hub id",
                        elem_id="gen-model",
                    )
                    sampler = gr.Dropdown(
                        list(SAMPLERS), value="dpm-solver", label="sampler", elem_id="gen-sampler"
                    )
                    steps = gr.Number(20, label="steps", precision=0, elem_id="gen-steps")
                    seed = gr.Number(0, label="seed", precision=0, elem_id="gen-seed")
                    count = gr.Slider(
                        1, MAX_IMAGES, value=4, step=1, label="number of images", elem_id="gen-count"
                    )
                    label = gr.Dropdown(
                        classes or [ANY_CLASS],
                        value=classes[0] if classes else ANY_CLASS,
                        label="class",
                        allow_custom_value=True,
                        visible=bool(classes),
                        elem_id="gen-class",
                    )
                    guidance = gr.Slider(
                        0,
                        10,
                        value=2.0,
                        step=0.5,
                        label="guidance scale w",
                        visible=bool(classes),
                        info="0: unconditional, 1: conditional, more: stronger class",
                        elem_id="gen-guidance",
                    )
                    run = gr.Button("Generate", variant="primary", elem_id="gen-run")
                with gr.Column(scale=2):
                    panel = gr.Image(
                        label="x_t (top) and predicted x_0 (below), as it denoises",
                        format="png",
                        elem_id="gen-frames",
                        elem_classes="pixelated",
                        height=260,
                    )
                    gallery = gr.Gallery(
                        label="images",
                        format="png",
                        columns=8,
                        height=200,
                        elem_id="gen-gallery",
                        elem_classes="pixelated",
                    )
                    status = gr.Markdown(elem_id="gen-status")
            model.change(lambda m: _model_controls(cache, m), model, [sampler, label, guidance])

            def on_generate(*controls):
                yield from generate_frames(cache, *controls)

            run.click(
                on_generate,
                [model, sampler, steps, seed, count, label, guidance],
                [panel, gallery, status],
                concurrency_id="sampling",
                api_name="generate",
            )

        with gr.Tab("Forward process", id="forward"):
            with gr.Row():
                with gr.Column(scale=1):
                    dataset = gr.Radio(datasets, value=datasets[0], label="data set", elem_id="fwd-dataset")
                    index = gr.Slider(
                        0, 9, value=0, step=1, label="example (one per class)", elem_id="fwd-index"
                    )
                    t = gr.Slider(0, 1000, value=250, step=1, label="t", elem_id="fwd-t")
                    schedule = gr.Radio(
                        list(BETA_SCHEDULES), value="linear", label="beta schedule", elem_id="fwd-schedule"
                    )
                    noise_seed = gr.Number(0, label="noise seed", precision=0, elem_id="fwd-seed")
                with gr.Column(scale=2):
                    with gr.Row():
                        x0_view = gr.Image(
                            label="x_0", format="png", elem_id="fwd-x0", elem_classes="pixelated", height=200
                        )
                        xt_view = gr.Image(
                            label="x_t ~ q(x_t | x_0)",
                            format="png",
                            elem_id="fwd-xt",
                            elem_classes="pixelated",
                            height=200,
                        )
                    stats = gr.Markdown(elem_id="fwd-stats")
                    plot = gr.LinePlot(
                        x="pixel value",
                        y="density",
                        color="series",
                        height=220,
                        label="pixels of x_t against N(0, 1)",
                        elem_id="fwd-hist",
                    )
            inputs = [dataset, index, t, schedule, noise_seed]
            outputs = [x0_view, xt_view, stats, plot]

            def on_dataset(name):
                images, _ = examples.get(name)
                return gr.update(maximum=len(images) - 1, value=0)

            dataset.change(on_dataset, dataset, index)
            for control in inputs:
                control.change(
                    lambda *a: explore(examples, *a),
                    inputs,
                    outputs,
                    trigger_mode="always_last",
                    concurrency_id="explore",
                    api_visibility="private",
                    concurrency_limit=4,
                )
            app.load(lambda *a: explore(examples, *a), inputs, outputs, api_name="explore")

        with gr.Tab("Draw", id="draw"):
            with gr.Row():
                with gr.Column(scale=1):
                    black = np.zeros((CANVAS, CANVAS, 3), np.uint8)
                    pad = gr.Sketchpad(
                        value={"background": black, "layers": [], "composite": black},
                        canvas_size=(CANVAS, CANVAS),
                        fixed_canvas=True,
                        image_mode="RGB",
                        type="numpy",
                        brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=12),
                        layers=False,
                        transforms=(),
                        format="png",
                        label="draw in white",
                        elem_id="draw-pad",
                    )
                    mode = gr.Radio(
                        [
                            "Complete it (RePaint: keep the strokes, regenerate the rest)",
                            "Turn it into a digit (SDEdit: noise it, then denoise)",
                        ],
                        value="Complete it (RePaint: keep the strokes, regenerate the rest)",
                        label="what the model does",
                        elem_id="draw-mode",
                    )
                    draw_model = gr.Dropdown(
                        pixel_models,
                        value=draw_default,
                        label="model",
                        allow_custom_value=True,
                        elem_id="draw-model",
                    )
                    draw_label = gr.Dropdown(
                        [ANY_CLASS, *draw_classes],
                        value=ANY_CLASS,
                        label="class",
                        allow_custom_value=True,
                        visible=bool(draw_classes),
                        elem_id="draw-class",
                    )
                    draw_guidance = gr.Slider(
                        0,
                        10,
                        value=2.0,
                        step=0.5,
                        label="guidance scale w",
                        visible=bool(draw_classes),
                        elem_id="draw-guidance",
                    )
                    with gr.Accordion("sampling", open=False):
                        draw_steps = gr.Number(50, label="steps", precision=0, elem_id="draw-steps")
                        jump = gr.Slider(
                            1, 20, value=5, step=1, label="RePaint jump length j", elem_id="draw-jump"
                        )
                        jumps = gr.Slider(
                            1,
                            10,
                            value=5,
                            step=1,
                            label="RePaint resampling r (1: none)",
                            elem_id="draw-jumps",
                        )
                        strength = gr.Slider(
                            0.05,
                            1,
                            value=0.6,
                            step=0.05,
                            label="SDEdit strength (t0 = strength T)",
                            elem_id="draw-strength",
                        )
                        draw_seed = gr.Number(0, label="seed", precision=0, elem_id="draw-seed")
                        draw_count = gr.Slider(
                            1, MAX_IMAGES, value=4, step=1, label="number of images", elem_id="draw-count"
                        )
                    draw_run = gr.Button("Run", variant="primary", elem_id="draw-run")
                with gr.Column(scale=2):
                    seen = gr.Image(
                        label="the sketch at 28x28, and the kept pixels (white)",
                        format="png",
                        elem_id="draw-input",
                        elem_classes="pixelated",
                        height=140,
                    )
                    draw_panel = gr.Image(
                        label="x_t (top) and predicted x_0 (below)",
                        format="png",
                        elem_id="draw-frames",
                        elem_classes="pixelated",
                        height=220,
                    )
                    draw_gallery = gr.Gallery(
                        label="results",
                        format="png",
                        columns=8,
                        height=200,
                        elem_id="draw-gallery",
                        elem_classes="pixelated",
                    )
                    draw_status = gr.Markdown(elem_id="draw-status")
            draw_model.change(lambda m: _draw_controls(cache, m), draw_model, [draw_label, draw_guidance])

            def on_draw(*controls):
                yield from draw_frames(cache, *controls)

            draw_run.click(
                on_draw,
                [
                    pad,
                    mode,
                    draw_model,
                    draw_label,
                    draw_guidance,
                    draw_steps,
                    jump,
                    jumps,
                    strength,
                    draw_seed,
                    draw_count,
                ],
                [seen, draw_panel, draw_gallery, draw_status],
                concurrency_id="sampling",
                api_name="draw",
            )
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hf_ddpm.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="a pipeline folder or Hub id to offer (repeat it); default: the reference checkpoints",
    )
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument(
        "--data-dir", default=None, help=f"folder with mnist/ and textures/ (default ${DATA_DIR_ENV})"
    )
    parser.add_argument(
        "--concurrency-limit",
        type=int,
        default=1,
        help="sampling requests run at once; the others wait in the queue (default 1: CPUs are few)",
    )
    args = parser.parse_args(argv)
    if args.model:
        models = {}
        for source in args.model:
            if not Path(source).is_dir() and not HUB_ID.match(source):
                parser.error(f"--model {source}: no such folder, and not a Hub repo id (org/name)")
            models[Path(source).name if Path(source).is_dir() else source] = source
    else:
        models = reference_models()
        if not models:
            parser.error(f"no reference checkpoints in {REFERENCE_DIR}: pass --model FOLDER_OR_HUB_ID")
    app = build_app(models, data_dir=args.data_dir)
    app.queue(default_concurrency_limit=args.concurrency_limit).launch(
        server_name=args.host, server_port=args.port, css=CSS, show_error=True
    )


if __name__ == "__main__":
    main()
