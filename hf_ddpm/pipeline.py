"""Exporting trained models as stock `DDPMPipeline`s, loading them back, and sampling with any sampler.

The exported `scheduler/scheduler_config.json` names `DDPMScheduler`: our `LinearNoiseScheduler` has
the same config keys and numerics, so a user with stock diffusers alone (no hf_ddpm installed) loads
the pipeline and gets the same images for the same seed. Class-conditional UNets are exported as
`pipelines/class_conditional_ddpm.py`'s pipeline and latent diffusion models (a UNet with its autoencoder)
as `pipelines/latent_ddpm.py`'s, each with its file beside the weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UNet2DModel,
)
from PIL import Image

from .config import DiffusionConfig
from .files import write_atomically
from .hub import component_names
from .pipelines.class_conditional_ddpm import ClassConditionalDDPMPipeline
from .pipelines.latent_ddpm import LatentDDPMPipeline
from .samplers import SAMPLERS, SAVED_SAMPLER, check_sampler
from .scheduler import LEARNED_VARIANCE_TYPES, LinearNoiseScheduler


def is_flow(config: dict) -> bool:
    """Whether a scheduler config (saved, or a live scheduler's, which has no `_class_name`) samples a
    flow-matching model: the FlowMatch* schedulers' `shift`, or DPM-Solver's flow mode."""
    return "shift" in config or bool(config.get("use_flow_sigmas"))


def objective_of(config: dict) -> str:
    """`flow_matching` or `ddpm`: the objective of the model a scheduler config samples (`is_flow`)."""
    return "flow_matching" if is_flow(config) else "ddpm"


def saved_sampler(config: dict) -> str:
    """The sampler name of a saved scheduler config: DDPM's ancestral sampler, or flow matching's Euler."""
    return SAVED_SAMPLER[objective_of(config)]


_SCHEDULER_CLASSES = {
    cls.__name__: cls
    for cls in (
        LinearNoiseScheduler,
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        FlowMatchEulerDiscreteScheduler,
    )
}


def make_scheduler(sampler: str, config: dict):
    """A scheduler of the kind `sampler` (a key of `hf_ddpm.samplers.SAMPLERS`) with the noise schedule in
    `config`; a flow-matching config (`is_flow`) gets the sampler's flow mode (`Sampler.flow_kwargs`)."""
    objective = objective_of(config)
    check_sampler(sampler, objective)
    if config.get("variance_type") in LEARNED_VARIANCE_TYPES and sampler != "ddpm":
        raise ValueError(
            f"sampler {sampler!r} cannot sample a model with learned variances (diffusers' DDIM ignores the "
            "variance channels, DPM-Solver reads 3 of them as the mean): use ddpm, with fewer steps for speed"
        )
    entry = SAMPLERS[sampler]
    cls = _SCHEDULER_CLASSES[entry.scheduler_class]
    if objective == "flow_matching" and entry.flow_kwargs:
        return cls.from_config(config, **entry.flow_kwargs, flow_shift=config.get("shift", 1.0))
    return cls.from_config(config)


def training_scheduler(diffusion: DiffusionConfig) -> LinearNoiseScheduler | FlowMatchEulerDiscreteScheduler:
    """The scheduler a run trains with and exports: the DDPM noise schedule, or for flow matching the
    Euler sampler of the straight path, which only needs the timestep scale."""
    if diffusion.flow_matching:
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=diffusion.num_train_timesteps)
    return LinearNoiseScheduler(**diffusion.scheduler_kwargs())


def make_pipeline(
    unet: UNet2DModel, scheduler, id2label: dict[int, str] | None = None, vae: AutoencoderKL | None = None
) -> DDPMPipeline | ClassConditionalDDPMPipeline | LatentDDPMPipeline:
    """`LatentDDPMPipeline` with an autoencoder; else `ClassConditionalDDPMPipeline` for a UNet with a
    class embedding, else `DDPMPipeline`."""
    if vae is not None:
        return LatentDDPMPipeline(vae=vae, unet=unet, scheduler=scheduler, id2label=id2label)
    if unet.config.num_class_embeds:
        return ClassConditionalDDPMPipeline(unet=unet, scheduler=scheduler, id2label=id2label)
    return DDPMPipeline(unet=unet, scheduler=scheduler)


def export_pipeline(
    unet: UNet2DModel,
    scheduler: LinearNoiseScheduler | FlowMatchEulerDiscreteScheduler,
    output_dir: str | Path,
    id2label: dict[int, str] | None = None,
    vae: AutoencoderKL | None = None,
) -> None:
    """Writes `model_index.json`, `unet/` (safetensors) and `scheduler/` loadable by stock `DDPMPipeline`;
    a class-conditional UNet gets `ClassConditionalDDPMPipeline` with `id2label` and its pipeline file, a
    UNet with an autoencoder `LatentDDPMPipeline` with `vae/` too. A DDPM's scheduler is saved as stock
    `DDPMScheduler`, a flow-matching model's as `FlowMatchEulerDiscreteScheduler`, which the same pipelines
    drive unchanged."""
    if isinstance(scheduler, LinearNoiseScheduler):
        scheduler = DDPMScheduler.from_config(scheduler.config)
    make_pipeline(unet, scheduler, id2label, vae).save_pretrained(output_dir, safe_serialization=True)


def load_pipeline(
    model: str | Path, sampler: str | None = None, device: str | torch.device = "cpu"
) -> DDPMPipeline | ClassConditionalDDPMPipeline | LatentDDPMPipeline:
    """Loads an exported pipeline from a folder or a Hub repo id and swaps in `sampler`'s scheduler (None:
    the saved one, DDPM's ancestral sampler or flow matching's Euler).

    A class-conditional or latent export is assembled from its components and `id2label` with hf_ddpm's
    own copy of the pipeline class: the `.py` file that travels with it is never executed here.
    """
    local = Path(model)
    if not local.exists() and (
        local.is_absolute() or str(model).startswith((".", "~")) or str(model).count("/") > 1
    ):
        raise ValueError(
            f"folder {model} does not exist: point --model at a folder written by training/train.py (its "
            "output_dir) or at a Hub repo id such as org/name"
        )
    if local.is_dir() and not (local / "model_index.json").is_file():
        raise ValueError(
            f"{model} holds no model_index.json: point --model at a folder written by training/train.py "
            "(its output_dir) or at a Hub repo id"
        )
    index = _model_index(model)
    if local.is_dir():
        _refuse_pickled_weights(local, index)
    try:
        if isinstance(index.get("_class_name"), list):
            unet = UNet2DModel.from_pretrained(model, subfolder="unet", use_safetensors=True)
            config = DDPMScheduler.load_config(model, subfolder="scheduler")
            kind = FlowMatchEulerDiscreteScheduler if is_flow(config) else DDPMScheduler
            scheduler = kind.from_config(config)
            id2label = index.get("id2label")
            if index["_class_name"][-1] == LatentDDPMPipeline.__name__:
                _refuse_clamped_latents(model, config)
                vae = AutoencoderKL.from_pretrained(model, subfolder="vae", use_safetensors=True)
                pipeline = LatentDDPMPipeline(vae, unet, scheduler, id2label=id2label)
            else:
                pipeline = ClassConditionalDDPMPipeline(unet, scheduler, id2label=id2label)
        else:
            pipeline = DDPMPipeline.from_pretrained(model, use_safetensors=True)
    except OSError as err:  # diffusers' multi-paragraph "Error no file named ..." / download errors
        reason = " ".join(str(err).split())
        raise ValueError(
            f"{model} is not a complete pipeline: {reason[:300]}; export it again with training/train.py "
            "(weights are read only as safetensors)"
        ) from err
    if sampler is not None:
        pipeline.scheduler = make_scheduler(sampler, pipeline.scheduler.config)
    return pipeline.to(device)


def _refuse_clamped_latents(model: str | Path, config: dict) -> None:
    """A latent export whose scheduler clamps x_0 to the pixels' range (what hf-ddpm wrote before it refused
    `diffusion.clip_sample` for latent diffusion) would sample distorted latents with DDPM and DDIM."""
    clamps = " and ".join(key for key in ("clip_sample", "thresholding") if config.get(key))
    if clamps:
        raise ValueError(
            f"{model} is a latent pipeline whose scheduler clamps x_0 to the pixels' range ({clamps} true), "
            "but its latents are unbounded: set them false in its scheduler/scheduler_config.json"
        )


def _refuse_pickled_weights(folder: Path, index: dict) -> None:
    """A component folder holding pickled weights and no safetensors is refused by name. diffusers (asked
    for safetensors) would never unpickle it either, but its message only says no safetensors file exists."""
    for name in component_names(index):
        component = folder / name
        if not component.is_dir():
            continue
        pickled = sorted(
            f for f in component.iterdir() if f.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")
        )
        if pickled and not any(component.glob("*.safetensors")):
            raise ValueError(
                f"{pickled[0]} is refused: weights are loaded only as safetensors, never unpickled (a pickle "
                "can run code); export the model from a copy you trust with save_pretrained(..., "
                "safe_serialization=True), as training/train.py does"
            )


def _model_index(model: str | Path) -> dict:
    """`model_index.json` of a folder or a Hub repo; a Hub failure becomes a one-line `ValueError`."""
    path = Path(model) / "model_index.json"
    if not path.is_file():
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
        )

        try:
            path = hf_hub_download(str(model), "model_index.json")
        except RepositoryNotFoundError as err:
            raise ValueError(
                f"{model} is neither a folder nor a Hub repo you can read: check the id, or log in "
                "(HF_TOKEN, `hf auth login`) for a private repo"
            ) from err
        except RemoteEntryNotFoundError as err:
            raise ValueError(
                f"Hub repo {model} holds no model_index.json, so it is not a diffusers pipeline: push one "
                f"with `python -m hf_ddpm.hub push OUTPUT_DIR {model}`"
            ) from err
        except LocalEntryNotFoundError as err:
            raise ValueError(
                f"cannot reach the Hub for {model} and it is not in the local cache: check the network "
                "and HF_ENDPOINT, or pass a local folder"
            ) from err
    return json.loads(Path(path).read_text())


def balanced_labels(num_images: int, num_classes: int) -> torch.Tensor:
    """Class indices 0, 1, ..., C-1, 0, 1, ...: every class equally often (the labels `generate` asks for)."""
    return torch.arange(num_images) % num_classes


@torch.no_grad()
def generate(
    pipeline: DDPMPipeline | ClassConditionalDDPMPipeline | LatentDDPMPipeline,
    num_images: int,
    num_inference_steps: int,
    seed: int,
    batch_size: int = 64,
    guidance_scale: float | None = None,
) -> np.ndarray:
    """Samples `num_images` images; returns uint8 of shape (num_images, H, W, C).

    One generator seeded once drives every batch, so the result depends on `seed` alone. A class-conditional
    pipeline draws the classes `balanced_labels` in order, with `guidance_scale` (None: the pipeline's
    default).
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    conditional = bool(getattr(pipeline, "num_classes", 0))
    labels = balanced_labels(num_images, pipeline.num_classes).tolist() if conditional else None
    guidance = {} if guidance_scale is None or not conditional else {"guidance_scale": guidance_scale}
    batches = []
    for start in range(0, num_images, batch_size):
        end = min(start + batch_size, num_images)
        if conditional:
            batch = {"class_labels": labels[start:end], **guidance}
        else:
            batch = {"batch_size": end - start}
        images = pipeline(
            **batch, generator=generator, num_inference_steps=num_inference_steps, output_type="np"
        ).images
        batches.append(np.round(images * 255).astype(np.uint8))
    return np.concatenate(batches)


def grid_columns(pipeline) -> int | None:
    """One column per class for a class-conditional pipeline with up to 16 classes (`generate` cycles
    through them, so each column holds one class); None (a square grid) otherwise."""
    classes = getattr(pipeline, "num_classes", 0)
    return classes if 2 <= classes <= 16 else None


def save_grid(images: np.ndarray, path: str | Path, padding: int = 2, cols: int | None = None) -> Path:
    """Writes uint8 images (N, H, W, C) as one PNG grid, `cols` wide (default: as square as possible)."""
    n, h, w, c = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), dtype=np.uint8)
    for i, image in enumerate(images):
        y, x = padding + (i // cols) * (h + padding), padding + (i % cols) * (w + padding)
        grid[y : y + h, x : x + w] = image
    image = Image.fromarray(grid[..., 0] if c == 1 else grid)
    return write_atomically(path, lambda partial: image.save(partial, format="PNG"))
