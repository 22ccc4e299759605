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

from pathlib import Path

import numpy as np

from ..arguments import ArgumentParser, at_least
from ..data import DATA_DIR_ENV
from ..pipeline import objective_of
from ..samplers import sampler_names
from ..scheduler import BETA_SCHEDULES
from .actions import (
    ANY_CLASS,
    DEFAULT_MODEL,
    HUB_ID,
    MAX_IMAGES,
    REFERENCE_DIR,
    Examples,
    ModelCache,
    available_datasets,
    class_choices,
    draw_frames,
    drawable,
    explore,
    generate_frames,
    import_gradio,
    reference_models,
)

CANVAS = 280  # the sketchpad's size: 10 canvas pixels per image pixel
# Images are shown at 28x28, enlarged by the browser without smoothing.
CSS = """
.pixelated img, .pixelated canvas { image-rendering: pixelated; }
.enlarged img { width: 100%; height: 100%; object-fit: contain; }
"""


# -- The app ----------------------------------------------------------------------------------------------


def _model_controls(models: ModelCache, model: str):
    """Updates for (sampler, class, guidance) when the model changes."""
    gr = import_gradio()
    pipeline = models.get(model)
    choices = class_choices(pipeline)
    objective = objective_of(pipeline.scheduler.config)
    sampler = "flow-euler" if objective == "flow_matching" else "dpm-solver"
    return (
        gr.update(value=sampler, choices=sampler_names(objective)),
        gr.update(
            choices=choices or [ANY_CLASS], value=choices[0] if choices else ANY_CLASS, visible=bool(choices)
        ),
        gr.update(visible=bool(choices)),
    )


def _draw_controls(models: ModelCache, model: str):
    gr = import_gradio()
    choices = class_choices(models.get(model))
    return (
        gr.update(choices=[ANY_CLASS, *choices], value=ANY_CLASS, visible=bool(choices)),
        gr.update(visible=bool(choices)),
    )


def _class_and_guidance(gr, *, choices: list[str], value: str, visible: bool, prefix: str):
    """The class dropdown and guidance slider, shown only for class-conditional models."""
    label = gr.Dropdown(
        choices,
        value=value,
        label="class",
        allow_custom_value=True,
        visible=visible,
        elem_id=f"{prefix}-class",
    )
    guidance = gr.Slider(
        0,
        10,
        value=2.0,
        step=0.5,
        label="guidance scale w",
        visible=visible,
        info="0: unconditional, 1: conditional, more: stronger class",
        elem_id=f"{prefix}-guidance",
    )
    return label, guidance


def _frames_and_gallery(gr, *, prefix: str, frames_label: str, frames_height: int, gallery_label: str):
    """The x_t / predicted x_0 panel that updates while sampling, and the gallery of final images."""
    panel = gr.Image(
        label=frames_label,
        format="png",
        elem_id=f"{prefix}-frames",
        elem_classes="pixelated enlarged",
        height=frames_height,
    )
    gallery = gr.Gallery(
        label=gallery_label,
        format="png",
        columns=8,
        height=200,
        elem_id=f"{prefix}-gallery",
        elem_classes="pixelated",
    )
    return panel, gallery


def build_app(models: dict[str, str], default_model: str | None = None, data_dir: str | None = None):
    """The Gradio Blocks app over `models` (display name -> folder or Hub id). Call `.queue()` and
    `.launch()` on it, as `main` does."""
    import os

    gr = import_gradio()
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
        _generate_tab(gr, cache, names, default_model, classes)
        _forward_tab(gr, app, examples, datasets)
        _draw_tab(gr, cache, pixel_models, draw_default, draw_classes)
    return app


def _generate_tab(gr, cache: ModelCache, names: list[str], default_model: str, classes: list[str]) -> None:
    """Generate: sample from a model and watch x_t and the predicted x_0 as it denoises."""
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
                    sampler_names(), value="dpm-solver", label="sampler", elem_id="gen-sampler"
                )
                steps = gr.Number(20, label="steps", precision=0, elem_id="gen-steps")
                seed = gr.Number(0, label="seed", precision=0, elem_id="gen-seed")
                count = gr.Slider(
                    1, MAX_IMAGES, value=4, step=1, label="number of images", elem_id="gen-count"
                )
                label, guidance = _class_and_guidance(
                    gr,
                    choices=classes or [ANY_CLASS],
                    value=classes[0] if classes else ANY_CLASS,
                    visible=bool(classes),
                    prefix="gen",
                )
                run = gr.Button("Generate", variant="primary", elem_id="gen-run")
            with gr.Column(scale=2):
                panel, gallery = _frames_and_gallery(
                    gr,
                    prefix="gen",
                    frames_label="x_t (top) and predicted x_0 (below), as it denoises",
                    frames_height=260,
                    gallery_label="images",
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


def _forward_tab(gr, app, examples: Examples, datasets: list[str]) -> None:
    """Forward process: one real image noised to any t, and its pixels against N(0, 1)."""
    with gr.Tab("Forward process", id="forward"):
        with gr.Row():
            with gr.Column(scale=1):
                dataset = gr.Radio(datasets, value=datasets[0], label="data set", elem_id="fwd-dataset")
                index = gr.Slider(0, 9, value=0, step=1, label="example (one per class)", elem_id="fwd-index")
                t = gr.Slider(0, 1000, value=250, step=1, label="t", elem_id="fwd-t")
                schedule = gr.Radio(
                    list(BETA_SCHEDULES), value="linear", label="beta schedule", elem_id="fwd-schedule"
                )
                noise_seed = gr.Number(0, label="noise seed", precision=0, elem_id="fwd-seed")
            with gr.Column(scale=2):
                with gr.Row():
                    x0_view = gr.Image(
                        label="x_0",
                        format="png",
                        elem_id="fwd-x0",
                        elem_classes="pixelated enlarged",
                        height=200,
                    )
                    xt_view = gr.Image(
                        label="x_t ~ q(x_t | x_0)",
                        format="png",
                        elem_id="fwd-xt",
                        elem_classes="pixelated enlarged",
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


def _draw_tab(
    gr, cache: ModelCache, pixel_models: list[str], draw_default: str, draw_classes: list[str]
) -> None:
    """Draw: a sketch completed by RePaint or turned into a digit by SDEdit."""
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
                draw_label, draw_guidance = _class_and_guidance(
                    gr,
                    choices=[ANY_CLASS, *draw_classes],
                    value=ANY_CLASS,
                    visible=bool(draw_classes),
                    prefix="draw",
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
                    elem_classes="pixelated enlarged",
                    height=140,
                )
                draw_panel, draw_gallery = _frames_and_gallery(
                    gr,
                    prefix="draw",
                    frames_label="x_t (top) and predicted x_0 (below)",
                    frames_height=220,
                    gallery_label="results",
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


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m hf_ddpm.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="a pipeline folder or Hub id to offer (repeat it); default: the reference checkpoints",
    )
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines")
    parser.add_argument("--port", type=at_least(0), default=7860)
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
