"""The model card (`README.md`) of a trained pipeline, rendered from `templates/model_card.md` with
huggingface_hub's `ModelCard`: Hub metadata, the sample grid, a usage snippet for stock diffusers, the
training run, the scheduler and UNet, evaluation numbers when `eval.json` exists, and the data's licence.

Everything is read from what the run left in its output folder (`unet/config.json`, the weights,
`scheduler/scheduler_config.json`, `samples.png`, `eval.json`) plus the config and a `RunInfo`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .config import Config
from .files import write_atomically, write_json
from .samplers import SAMPLERS, SAVED_SAMPLER

logger = logging.getLogger(__name__)

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"  # package data

# Data whose rights rule out an open licence for weights trained on it, by the data set's short name
# (last part of dataset.name, dataset.path or the folder the rows came from). See shared/data/README.md.
RESTRICTED_DATA = {
    "textures": (
        "The training images are patches of the Brodatz texture album (Phil Brodatz, *Textures: A "
        "Photographic Album for Artists and Designers*, Dover, 1966). The photographs come from a "
        "copyrighted book and the redistribution status of the digitised plates has never been clear, so "
        "these weights are published without an open licence (`license: other`). Treat them as a research "
        "artefact and check the rights yourself before any other use."
    ),
}
DATA_NOTES = {
    "mnist": (
        "MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges (derived from NIST Special "
        "Databases 1 and 3). Licence statements for the data differ by redistributor (CC BY-SA 3.0 in "
        "TensorFlow's documentation; Hub copies are commonly tagged MIT); cite LeCun et al. when you use it."
    ),
}
DATA_DESCRIPTIONS = {"mnist": "handwritten digits (MNIST)", "textures": "Brodatz texture patches"}
# DPMSolverMultistepScheduler's flow mode, for a flow-matching model's scheduler config.
FLOW_DPM_SOLVER = ", ".join(
    f"{k}={v!r}".replace("'", '"') for k, v in SAMPLERS["dpm-solver"].flow_kwargs.items()
)


@dataclass
class RunInfo:
    """What the card needs to know about a finished run that the config does not say."""

    wall_time_s: float  # from the start of training/train.py to the end of the export, in this process
    hardware: str  # `describe_hardware(accelerator.device)`
    num_processes: int
    steps: int  # optimizer steps done
    num_images: int | None  # training images used (None: streamed, unknown)
    data_source: str  # local folder or Hub id the rows came from (not printed: it may be a private path)
    # The optimizer steps' time summed over every run that led here (the checkpointed clock), and the step
    # this process resumed from (0: one uninterrupted run, whose wall time then covers all of training).
    train_time_s: float | None = None
    resumed_at: int = 0


def describe_hardware(device: Any) -> str:
    """`NVIDIA H100 80GB HBM3`, or the CPU model and the cores this process may use."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return torch.cuda.get_device_name(device)
    if getattr(device, "type", str(device)) == "mps":
        return f"Apple silicon GPU (MPS), {platform.machine()}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_model()}, {cores} CPU core{'s' if cores != 1 else ''}"


def write_model_card(
    output_dir: str | Path, cfg: Config, run: RunInfo, repo_id: str | None = None, template: Path = TEMPLATE
) -> Path:
    """Renders the card of the pipeline in `output_dir` and writes it as `output_dir/README.md`.

    `repo_id` is what the usage snippet loads; default `training.hub_model_id`, else the output folder.
    """
    from huggingface_hub import ModelCard, ModelCardData

    folder = Path(output_dir)
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae_config = folder / "vae" / "config.json"  # a latent diffusion model's autoencoder
    vae = json.loads(vae_config.read_text()) if vae_config.is_file() else None
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    flow = cfg.diffusion.flow_matching
    name = cfg.dataset.name or Path(run.data_source).name
    short = _short_names(cfg, run)
    restricted = next((RESTRICTED_DATA[k] for k in short if k in RESTRICTED_DATA), None)
    licence = "other" if restricted else cfg.training.hub_license
    if restricted and cfg.training.hub_license != "other":
        logger.warning(
            f"model card: license 'other', not {cfg.training.hub_license!r}: {name} has unclear rights"
        )

    repo_id = repo_id or cfg.training.hub_model_id
    parameters = _count_parameters(folder / "unet" / "diffusion_pytorch_model.safetensors")
    index = json.loads((folder / "model_index.json").read_text())
    # A custom pipeline names [its code file, its class]; its id2label are the class names.
    code, pipeline_class = index["_class_name"] if isinstance(index["_class_name"], list) else (None, None)
    id2label = index.get("id2label") if code else None
    pipeline_class, code_file = pipeline_class or "DDPMPipeline", f"{code}.py" if code else None
    kind = (
        ["class-conditional", "classifier-free-guidance"] if id2label else ["unconditional-image-generation"]
    )
    pretrained = cfg.model.pretrained_model_name_or_path
    data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        license=licence,
        datasets=[name] if "/" in name else None,
        base_model=pretrained if pretrained and not Path(pretrained).exists() else None,  # Hub ids only
        tags=[
            "diffusers",
            f"diffusers:{pipeline_class}",
            "flow-matching" if flow else "ddpm",
            "hf-ddpm",
            *kind,
            name,
        ],
    )
    card = ModelCard.from_template(
        data,
        template_path=str(template),
        title=(repo_id or cfg.training.output_dir).rstrip("/").split("/")[-1],
        summary=_summary(
            cfg,
            unet=unet,
            scheduler=scheduler,
            parameters=parameters,
            name=name,
            short=short,
            id2label=id2label,
            pipeline_class=pipeline_class,
            code_file=code_file,
            vae=vae,
        ),
        samples=_samples_caption(cfg, id2label) if (folder / "samples.png").is_file() else None,
        pipeline_note=_pipeline_note(id2label, code_file),
        sampler_note=_sampler_note(flow, scheduler),
        scheduler_title=(
            "The sampler (`scheduler/`, a `FlowMatchEulerDiscreteScheduler`)"
            if flow
            else "The noise schedule (`scheduler/`, a `DDPMScheduler`)"
        ),
        usage=_usage(cfg, repo_id or cfg.training.output_dir, _image_geometry(unet, vae), id2label, vae),
        training=_training_rows(cfg, run, unet, name, id2label, vae),
        scheduler=_flow_rows(cfg, scheduler) if flow else _scheduler_rows(scheduler),
        unet=_unet_rows(cfg, unet, parameters),
        evaluation=_evaluation_rows(folder / "eval.json"),
        licence=_licence_text(licence, restricted, short),
    )
    return write_atomically(folder / "README.md", str(card).rstrip("\n") + "\n")


def _sampler_note(flow: bool, scheduler: dict) -> str:
    if flow:
        return (
            "`DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config, "
            f"{FLOW_DPM_SOLVER})` samples in fewer steps with a second-order solver."
        )
    if scheduler.get("variance_type") in ("learned", "learned_range"):
        return (
            "Learned variances are meant to keep ancestral sampling good with far fewer steps (Nichol & "
            "Dhariwal 2021): lower `num_inference_steps`. diffusers' DDIM and DPM-Solver do not read them, "
            "so keep this scheduler."
        )
    return (
        "`DDIMScheduler` or `DPMSolverMultistepScheduler` can replace the scheduler through "
        "`from_config(pipeline.scheduler.config)` for sampling in 20 to 50 steps."
    )


def _short_names(cfg: Config, run: RunInfo) -> list[str]:
    names = [cfg.dataset.name, cfg.dataset.path, run.data_source]
    return [Path(n.rstrip("/")).name.lower() for n in names if n]


def _image_geometry(unet: dict, vae: dict | None) -> tuple[int, int]:
    """(size, channels) of the generated images: the autoencoder's for a latent model, else the UNet's."""
    model = vae or unet
    return model["sample_size"], model["in_channels"]


def _summary(
    cfg: Config,
    *,
    unet: dict,
    scheduler: dict,
    parameters: int,
    name: str,
    short: list[str],
    id2label: dict[str, str] | None,
    pipeline_class: str,
    code_file: str | None,
    vae: dict | None,
) -> str:
    kind = next((DATA_DESCRIPTIONS[k] for k in short if k in DATA_DESCRIPTIONS), f"the images of {name}")
    size, channels = _image_geometry(unet, vae)
    colour = "grayscale" if channels == 1 else "RGB"
    ema = cfg.training.use_ema
    weights = "an exponential moving average (EMA) of the training weights" if ema else "the final weights"
    if id2label:
        opening = (
            f"A class-conditional image generator with classifier-free guidance ([Ho & Salimans 2021]"
            f"(https://arxiv.org/abs/2207.12598)) over {len(id2label)} classes"
        )
    else:
        opening = "An unconditional image generator"
    saved = (
        f"`{pipeline_class}` (the file `{code_file}` beside the weights)"
        if code_file
        else "stock `DDPMPipeline`"
    )
    latent = ""
    if vae:
        shape = f"{unet['in_channels']}x{unet['sample_size']}x{unet['sample_size']}"
        latent = (
            f" The diffusion runs in the {shape} latent space of an "
            "`AutoencoderKL` (`vae/`), which decodes its samples: latent diffusion "
            "([Rombach et al. 2022](https://arxiv.org/abs/2112.10752))."
        )
    if cfg.diffusion.flow_matching:
        model = "a flow-matching model ([Lipman et al. 2023](https://arxiv.org/abs/2210.02747))"
        learns = (
            "the velocity ε - x_0 of the straight path x_t = (1 - t) x_0 + t ε from the data to the noise, "
            "which the sampler follows back in a few Euler steps"
        )
    else:
        ddpm = "[Ho et al. 2020](https://arxiv.org/abs/2006.11239)"
        model = f"a denoising diffusion probabilistic model (DDPM, {ddpm})"
        targets = {"epsilon": "the noise ε", "v_prediction": "v", "sample": "x_0"}
        target = targets[scheduler["prediction_type"]]
        learns = (
            f"{target} under a {scheduler['beta_schedule']} noise schedule of "
            f"{scheduler['num_train_timesteps']} steps"
        )
        if scheduler.get("variance_type") in ("learned", "learned_range"):
            learns += ", and the variance of each reverse step"
    return (
        f"{opening}: {model} that turns Gaussian noise into {size}x{size} {colour} images of {kind}.{latent} "
        f"The network is a `UNet2DModel` (hf-ddpm's `{cfg.model.preset}` preset, {parameters:,} parameters) "
        f"that predicts {learns}. It was trained with hf-ddpm (diffusers, accelerate, datasets) and is saved "
        f"as a {saved} holding {weights}."
    )


def _samples_caption(cfg: Config, id2label: dict[str, str] | None) -> str:
    training = cfg.training
    guidance = ""
    if id2label:
        guidance = f", guidance scale {training.guidance_scale:g}; the classes cycle in label order"
    return (
        f"{training.num_sample_images} samples from these weights: {SAMPLERS[training.sampler].title}, "
        f"{training.num_inference_steps} steps, seed {training.seed}{guidance}"
    )


def _pipeline_note(id2label: dict[str, str] | None, code_file: str | None) -> str:
    if not code_file:
        return "A stock `diffusers` pipeline: nothing from hf-ddpm is needed to load or sample it."
    guidance = (
        " `guidance_scale` 0 samples the unconditional model, 1 the conditional one, larger values trade "
        "diversity for images that look more like their class."
        if id2label
        else ""
    )
    return (
        f"Stock `diffusers` plus the pipeline file that travels with the weights (`{code_file}`, "
        "torch and diffusers only): `trust_remote_code=True` lets diffusers run it, so read it first. "
        f"Nothing from hf-ddpm is needed.{guidance}"
    )


def _usage(
    cfg: Config,
    repo_id: str,
    geometry: tuple[int, int],
    id2label: dict[str, str] | None = None,
    vae: dict | None = None,
) -> str:
    """Python that loads the pipeline and samples it the way `samples.png` was made (sampler, steps)."""
    training = cfg.training
    # The saved scheduler samples as it is; another one is swapped in (in its flow mode for flow matching).
    saved = training.sampler == SAVED_SAMPLER[cfg.diffusion.objective]
    scheduler_class = None if saved else SAMPLERS[training.sampler].scheduler_class
    flow_options = f", {FLOW_DPM_SOLVER}" if cfg.diffusion.flow_matching else ""
    remote_code = bool(id2label or vae)
    pipeline_class = "DiffusionPipeline" if remote_code else "DDPMPipeline"
    imports = ", ".join(c for c in (scheduler_class, pipeline_class) if c)
    steps = (
        ""
        if training.sampler == "ddpm" and training.num_inference_steps == 1000
        else f", num_inference_steps={training.num_inference_steps}"
    )
    size, mode = geometry[0], "L" if geometry[1] == 1 else "RGB"
    if remote_code:
        load = f'pipeline = DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)'
    else:
        load = f'pipeline = DDPMPipeline.from_pretrained("{repo_id}")'
    if id2label:
        names = json.dumps(list(id2label.values())[:4])
        labels = "class_labels=labels" if vae else "labels"
        call = (
            f"labels = {names}  # class names (pipeline.labels) or indices\n"
            "generator = torch.Generator().manual_seed(0)\n"
            f"images = pipeline({labels}, guidance_scale={training.guidance_scale:g}{steps}, "
            "generator=generator).images"
        )
    else:
        call = f"images = pipeline(batch_size=16{steps}, generator=torch.Generator().manual_seed(0)).images"
    lines = [
        "import torch",
        f"from diffusers import {imports}",
        "",
        load,
        f"pipeline.scheduler = {scheduler_class}.from_config(pipeline.scheduler.config{flow_options})"
        if scheduler_class
        else "",
        call,
        f'images[0].save("sample.png")  # PIL images, mode {mode}, {size}x{size}',
    ]
    return "\n".join(line for i, line in enumerate(lines) if line or i == 2)


def _training_rows(
    cfg: Config,
    run: RunInfo,
    unet: dict,
    name: str,
    id2label: dict[str, str] | None = None,
    vae: dict | None = None,
) -> list[tuple[str, str]]:
    training = cfg.training
    source = f"[{name}](https://huggingface.co/datasets/{name})" if "/" in name else f"`{name}`"
    if run.data_source != name:
        source += " (a local copy)"
    images = f", {run.num_images:,} images" if run.num_images else ""
    global_batch = training.train_batch_size * run.num_processes * training.gradient_accumulation_steps
    epochs = f" ({run.steps * global_batch / run.num_images:.1f} epochs)" if run.num_images else ""
    batch = f"{global_batch}"
    if global_batch != training.train_batch_size:
        batch += (
            f" ({training.train_batch_size} per process x {run.num_processes} processes x "
            f"{training.gradient_accumulation_steps} accumulation steps)"
        )
    warmup = f", {training.lr_warmup_steps} warmup steps" if training.lr_warmup_steps else ""
    ema = (
        f"yes: decay up to {training.ema_max_decay} "
        f"(warmup 1 - (1 + step / {training.ema_inv_gamma:g})^-{training.ema_power:g})"
        if training.use_ema
        else "no"
    )
    return [
        ("Dataset", f"{source}, split `{cfg.dataset.split}`{images}"),
        ("Image size", "{1}x{0}x{0}".format(*_image_geometry(unet, vae))),
        *(
            [
                (
                    "Latent space",
                    f"`AutoencoderKL` from `{cfg.model.latent_autoencoder}`: {vae['sample_size']}x"
                    f"{vae['sample_size']} images as {unet['in_channels']}x{unet['sample_size']}x"
                    f"{unet['sample_size']} latents, scaling factor {vae['scaling_factor']:.4g}; the "
                    "training set encoded once",
                )
            ]
            if vae
            else []
        ),
        *(
            [("Initial weights", f"the UNet of `{cfg.model.pretrained_model_name_or_path}`, fine-tuned")]
            if cfg.model.pretrained_model_name_or_path
            else []
        ),
        ("Random flips", "yes" if cfg.dataset.random_flip else "no"),
        ("Steps", f"{run.steps:,} optimizer steps{epochs}"),
        ("Batch", batch),
        ("Learning rate", f"{training.learning_rate:g}, {training.lr_scheduler} schedule{warmup}"),
        (
            "Optimizer",
            f"AdamW (betas {training.adam_beta1:g}, {training.adam_beta2:g}; "
            f"weight decay {training.adam_weight_decay:g}), "
            f"gradient clipping at {training.max_grad_norm:g}",
        ),
        ("Loss", _loss(cfg)),
        *(
            [
                (
                    "Conditioning",
                    f"`{cfg.dataset.label_column}` ({len(id2label)} classes) + a learned null class; "
                    f"labels dropped to the null class with probability {training.cond_drop_prob:g}",
                )
            ]
            if id2label
            else []
        ),
        ("EMA", ema),
        (
            "Precision",
            "fp32" if training.mixed_precision == "no" else f"{training.mixed_precision} mixed precision",
        ),
        ("Hardware", f"{run.hardware}; {run.num_processes} process{'es' if run.num_processes > 1 else ''}"),
        *(
            [("Training time", f"{_duration(run.train_time_s)} of optimizer steps")]
            if run.train_time_s
            else []
        ),
        (
            "Wall time",
            _duration(run.wall_time_s)
            + (f" (the last run, resumed at step {run.resumed_at:,})" if run.resumed_at else ""),
        ),
        ("Seed", str(training.seed)),
        ("Software", _versions()),
    ]


def _loss(cfg: Config) -> str:
    d = cfg.diffusion
    if d.flow_matching:
        times = (
            f"logit-normal t (sigmoid of N({d.logit_mean:g}, {d.logit_std:g}²))"
            if d.time_sampling == "logit_normal"
            else "t uniform on [0, 1]"
        )
        return f"MSE on the velocity ε - x_0 (flow matching), {times}"
    loss = {"epsilon": "MSE on the noise (L_simple)", "v_prediction": "MSE on v", "sample": "MSE on x_0"}
    gamma = cfg.training.snr_gamma
    text = loss[d.prediction_type]
    if gamma is not None:
        text += f", Min-SNR-{gamma:g} weighting (Hang et al. 2023)"
    elif cfg.training.weighting_scheme == "p2":
        text += ", P2 weighting (Choi et al. 2022)"
    if d.variance_type == "learned_range":
        text += (
            "; the variances by the variational bound, L_hybrid = L_simple + 0.001 L_vlb with the mean's "
            "gradient stopped in L_vlb (Nichol & Dhariwal 2021)"
        )
    return text


def _flow_rows(cfg: Config, s: dict) -> list[tuple[str, str]]:
    return [
        ("Path", "x_t = (1 - t) x_0 + t ε, t from 0 (data) to 1 (noise)"),
        (
            "Training timesteps",
            f"{s['num_train_timesteps']}: the UNet sees timestep {s['num_train_timesteps']} t",
        ),
        ("Time sampling", cfg.diffusion.time_sampling.replace("_", "-")),
        ("Prediction", "the velocity ε - x_0"),
        ("Sigma shift", f"{s.get('shift', 1.0):g}"),
    ]


VARIANCE_NOTES = {
    "fixed_small": "the posterior variance β̃_t (Ho et al. 2020)",
    "fixed_small_log": "the posterior variance β̃_t, through its log",
    "fixed_large": "β_t (Ho et al. 2020)",
    "fixed_large_log": "β_t, through its log",
    "learned": "learned: the UNet's second half of channels is the variance",
    "learned_range": (
        "learned: the UNet's second half of channels interpolates log β̃_t .. log β_t (Nichol & Dhariwal 2021)"
    ),
}


def _scheduler_rows(s: dict) -> list[tuple[str, str]]:
    """Every key of the saved `DDPMScheduler` config that changes the numbers, in words."""
    betas = s.get("trained_betas")
    if betas:
        schedule = f"trained betas, {len(betas)} values from {min(betas):g} to {max(betas):g}"
    elif s["beta_schedule"] in ("squaredcos_cap_v2", "laplace"):
        schedule = s["beta_schedule"]
    else:
        schedule = f"{s['beta_schedule']}, {s['beta_start']:g} to {s['beta_end']:g}"
    if s.get("rescale_betas_zero_snr"):
        schedule += ", rescaled to zero terminal SNR (Lin et al. 2024)"
    if s.get("thresholding"):
        clip = (
            f"dynamic thresholding at the {s['dynamic_thresholding_ratio']:g} quantile, s <= "
            f"{s['sample_max_value']:g} (Saharia et al. 2022)"
        )
    else:
        clip = f"to ±{s.get('clip_sample_range', 1.0):g}" if s.get("clip_sample") else "no"
    variance = s.get("variance_type") or "fixed_small"
    spacing = f"`{s.get('timestep_spacing', 'leading')}`"
    if s.get("steps_offset"):
        spacing += f", offset {s['steps_offset']}"
    return [
        ("Training timesteps", str(s["num_train_timesteps"])),
        ("β schedule", schedule),
        ("Variance", f"`{variance}`: {VARIANCE_NOTES[variance]}"),
        ("Prediction", f"`{s['prediction_type']}`"),
        ("x_0 clipping", clip),
        ("Timestep spacing", spacing),
    ]


def _unet_rows(cfg: Config, u: dict, parameters: int) -> list[tuple[str, str]]:
    return [
        ("Preset", f"`{cfg.model.preset}`{_changed_shape(cfg)}, {parameters:,} parameters"),
        ("Input / output", f"{u['in_channels']} / {u['out_channels']} channels, {u['sample_size']} px"),
        ("Channels per resolution", " / ".join(str(c) for c in u["block_out_channels"])),
        ("ResNet blocks per resolution", str(u["layers_per_block"])),
        ("Down blocks", ", ".join(f"`{b}`" for b in u["down_block_types"])),
        ("Up blocks", ", ".join(f"`{b}`" for b in u["up_block_types"])),
        ("Dropout", f"{u.get('dropout', cfg.model.dropout):g}"),
    ]


def _changed_shape(cfg: Config) -> str:
    """' with layers_per_block 2' when the config changed the preset's shape (the rows below show it)."""
    changed = {k: v for k, v in cfg.model.unet_kwargs().items() if k != "dropout"}
    return "".join(f" with {k} {v}" for k, v in changed.items()).replace("[", "").replace("]", "")


def save_run_info(output_dir: str | Path, run: RunInfo) -> None:
    """Keeps the run's facts beside the card (`run_info.json`, not uploaded), so it can be re-rendered."""
    write_json(Path(output_dir) / "run_info.json", dataclasses.asdict(run))


def refresh_model_card(output_dir: str | Path, repo_id: str | None = None) -> Path | None:
    """Re-renders `README.md` from `config.yaml` and `run_info.json` (after `eval.json` changed); None when
    the folder was not written by training/train.py. `repo_id`: what the usage snippet loads."""
    import yaml

    from .config import from_dict

    folder = Path(output_dir)
    if not (folder / "config.yaml").is_file() or not (folder / "run_info.json").is_file():
        return None
    cfg = from_dict(yaml.safe_load((folder / "config.yaml").read_text()))
    run = RunInfo(**json.loads((folder / "run_info.json").read_text()))
    return write_model_card(folder, cfg, run, repo_id)


def _evaluation_rows(path: Path) -> list[tuple[str, str]] | None:
    """`eval.json`'s numbers, nested keys joined with dots; None (no section) when the file is absent."""
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        logger.warning(f"model card: {path} is not readable JSON ({err}); no evaluation section")
        return None
    rows: list[tuple[str, str]] = []
    nll = values.pop("nll", None) if isinstance(values, dict) else None
    if isinstance(nll, dict) and "bits_per_dim" in nll:
        rows += _nll_rows(nll)

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        elif isinstance(value, float):
            rows.append((prefix, f"{value:.4g}"))
        elif isinstance(value, (int, str, bool)):
            rows.append((prefix, str(value)))

    walk("", values)
    return rows or None


def _nll_rows(nll: dict) -> list[tuple[str, str]]:
    """The variational bound of `python -m hf_ddpm.evaluate --nll` (eval.json's `nll`), with its protocol."""
    protocol = f"{nll.get('images')} test images ({nll.get('subset')}), noise seed {nll.get('seed')}"
    return [
        (
            "NLL (test, bits/dim)",
            f"≤ {nll['bits_per_dim']:.3f} ± {nll['standard_error']:.3f} (variational bound, eq. 5 of Ho et "
            f"al. 2020, all {nll.get('timesteps')} timesteps; {protocol}; ± one standard error over images)",
        ),
        (
            "NLL terms (bits/dim)",
            f"prior L_T {nll['prior_bits_per_dim']:.4f}, decoder L_0 {nll['decoder_bits_per_dim']:.3f}, "
            f"KL terms {nll['kl_bits_per_dim']:.3f}",
        ),
    ]


def _licence_text(licence: str, restricted: str | None, short: list[str]) -> str:
    if restricted:
        return restricted
    note = next((DATA_NOTES[k] for k in short if k in DATA_NOTES), "")
    return f"The weights are released under `{licence}`. {note}".strip()


def _count_parameters(weights: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(weights), framework="np") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _versions() -> str:
    names = ["hf-ddpm", "diffusers", "torch", "accelerate"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
