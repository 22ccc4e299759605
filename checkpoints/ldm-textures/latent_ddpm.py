"""Latent diffusion (Rombach et al. 2022): DDPM sampling in the latent space of a VAE, then one decode.

This file imports only torch and diffusers, so it travels to the Hub beside a checkpoint and loads with
stock diffusers as remote code:

    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained("org/ldm-mnist", trust_remote_code=True)
    images = pipeline(batch_size=4, num_inference_steps=250).images  # unconditional UNet
    images = pipeline(class_labels=[7, "3"], guidance_scale=2.0).images  # class-conditional UNet

The diffusion model is a `UNet2DModel` on latents z = scaling_factor * E(x) of an `AutoencoderKL`: the
VAE shrinks the image (a 28x28 digit to a 4x7x7 latent with three encoder blocks), the UNet denoises the
small latent, and the VAE decodes the result once, D(z / scaling_factor). `scaling_factor` (in the VAE's
config) gives the latents roughly unit variance during training, which the noise schedule assumes; the
pipeline undoes it before decoding.

A UNet with a class embedding of `num_classes + 1` entries is class-conditional: the last entry is the
learned null class that training puts in place of a dropped label, so one network is both the
conditional model eps(z_t, t, y) and the unconditional model eps(z_t, t, null). Classifier-free guidance
(Ho & Salimans 2021) mixes them:

    eps = eps(z_t, t, null) + w * (eps(z_t, t, y) - eps(z_t, t, null))

w = 0 samples the unconditional model, w = 1 the conditional one, w > 1 trades diversity for images
that look more like their class. The same mix applies to v- and x_0-predicting UNets. A UNet without a
class embedding is unconditional and samples `batch_size` images.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

# The module name model_index.json gives, so that diffusers finds this file beside the weights.
MODULE = "latent_ddpm"


class LatentDDPMPipeline(DiffusionPipeline):
    """Samples images from a `UNet2DModel` trained on the latents of an `AutoencoderKL`.

    Args:
        vae: the `AutoencoderKL` whose latents the UNet denoises. Its `config.scaling_factor` s is the factor
            training multiplied the latents by (z = s * E(x)); the pipeline decodes D(z / s). Its
            `config.latent_channels` must equal the UNet's `in_channels`.
        unet: a `UNet2DModel` on latents of shape (`in_channels`, `sample_size`, `sample_size`)
            (`sample_size` an int, or (height, width)). Without a class embedding it is unconditional; with
            `num_class_embeds = num_classes + 1` it is class-conditional and index `num_classes` is the null
            class of classifier-free guidance.
        scheduler: any diffusers scheduler (DDPM, DDIM, DPM-Solver++, ...): swap it with
            `pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)`.
        id2label: class-conditional UNets only: class index (int, or its string from JSON) -> class name,
            saved in `model_index.json`; default: the indices as strings. None for an unconditional UNet.
    """

    # The UNet runs every step, the VAE once at the end.
    model_cpu_offload_seq = "unet->vae"

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        id2label: dict | None = None,
    ):
        super().__init__()
        if unet.config.in_channels != vae.config.latent_channels:
            raise ValueError(
                f"the UNet takes {unet.config.in_channels} channels but the VAE's latents have "
                f"{vae.config.latent_channels}: the UNet must be trained on this VAE's latents"
            )
        if unet.config.class_embed_type is not None:
            # "timestep" / "identity" embeddings take vectors, not class indices with a null class.
            raise ValueError(
                f"class_embed_type {unet.config.class_embed_type!r} is not supported: a class-conditional "
                "UNet needs the default embedding table (num_class_embeds = number of classes + 1)"
            )
        num_class_embeds = unet.config.num_class_embeds
        if num_class_embeds is None:
            if id2label:
                raise ValueError(
                    "id2label was given but the UNet has no class embedding: an unconditional UNet has no "
                    "classes (a class-conditional one needs num_class_embeds = number of classes + 1)"
                )
            id2label = None
        else:
            if num_class_embeds < 2:
                raise ValueError(
                    f"the UNet has num_class_embeds={num_class_embeds}: a class-conditional UNet needs "
                    "num_class_embeds = number of classes + 1 (the null class)"
                )
            id2label = _class_names(id2label, num_class_embeds - 1)
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler)
        self.register_to_config(id2label=id2label)

    @property
    def is_conditional(self) -> bool:
        """Whether the UNet takes class labels (it has a class embedding)."""
        return self.unet.config.num_class_embeds is not None

    # Copied from hf_ddpm.pipelines.class_conditional_ddpm.ClassConditionalDDPMPipeline.num_classes
    @property
    def num_classes(self) -> int:
        """The number of real classes, the null class left out; 0 for a UNet without a class embedding."""
        return (self.unet.config.num_class_embeds or 1) - 1

    @property
    def null_class(self) -> int:
        """The embedding index of "no class", the unconditional model of a class-conditional UNet."""
        if not self.is_conditional:
            raise ValueError("the UNet is unconditional: it has no class embedding and no null class")
        return self.num_classes

    # Copied from hf_ddpm.pipelines.class_conditional_ddpm.ClassConditionalDDPMPipeline.labels
    @property
    def labels(self) -> dict[str, int]:
        """Class name -> class index; empty for a UNet without a class embedding."""
        return {name: int(i) for i, name in (self.config.id2label or {}).items()}

    # Copied from hf_ddpm.pipelines.class_conditional_ddpm.ClassConditionalDDPMPipeline.get_label_ids
    def get_label_ids(self, class_labels: int | str | list[int | str]) -> torch.Tensor:
        """Class indices (batch,) of labels given as indices or names; `ValueError` for anything else."""
        if not self.num_classes:
            raise ValueError(
                "class_labels were given but the UNet is unconditional (it has no class embedding)"
            )
        if isinstance(class_labels, (int, str)):
            class_labels = [class_labels]
        if not len(class_labels):
            raise ValueError("class_labels is empty: give at least one class index or name")
        names, ids = self.labels, []
        for label in class_labels:
            if isinstance(label, str) and label in names:
                ids.append(names[label])
            elif isinstance(label, int) and not isinstance(label, bool) and 0 <= label < self.num_classes:
                ids.append(label)
            else:
                shown = ", ".join(repr(n) for n in list(names)[:20]) + (", ..." if len(names) > 20 else "")
                raise ValueError(
                    f"class label {label!r} is not a class of this model: use an index "
                    f"0..{self.num_classes - 1} or a name ({shown})"
                )
        return torch.tensor(ids, dtype=torch.long)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int | None = None,
        class_labels: int | str | list[int | str] | None = None,
        guidance_scale: float = 2.0,
        num_inference_steps: int = 1000,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """
        Args:
            batch_size: unconditional UNets: the number of images B (default 1). A class-conditional UNet
                makes one image per class label: leave it out, or give `len(class_labels)`.
            class_labels: class-conditional UNets only, and required there: one image per entry, a class
                index (int) or a class name (str, see `labels`); B = the number of entries.
            guidance_scale: w of classifier-free guidance, >= 0. 0: unconditional, 1: conditional without
                guidance. Both need one UNet forward per step; any other w batches the conditional and the
                unconditional input in one forward of 2B latents. Unused by an unconditional UNet.
            num_inference_steps: denoising steps; the scheduler decides which timesteps they visit.
            generator: makes the initial noise and the scheduler's noise reproducible; a list gives one
                generator per image (B of them).
            output_type: "pil" (B PIL images, mode "L" for one channel, "RGB" for three), "np" (float
                (B, H, W, C) in [0, 1]), "pt" (float tensor (B, C, H, W) in [0, 1]) or "latent" (the
                denoised latents (B, in_channels, h, w) of the UNet, still multiplied by `scaling_factor`,
                not decoded). H, W, C are those of the VAE's decoder.
            return_dict: an `ImagePipelineOutput` if True, else a tuple `(images,)`.
        """
        if guidance_scale < 0:
            raise ValueError(
                f"guidance_scale must be >= 0 (0: unconditional, 1: conditional), got {guidance_scale}"
            )
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        if batch_size is not None and (
            not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
        ):
            raise ValueError(
                f"batch_size must be a positive int, got {batch_size!r}"
                + ("; class labels go in class_labels=" if isinstance(batch_size, (str, list, tuple)) else "")
            )

        if self.is_conditional:
            if class_labels is None:
                raise ValueError(
                    "the UNet is class-conditional: give class_labels (class indices or names, one image "
                    f"each), e.g. class_labels={list(self.labels)[:2]}"
                )
            labels = self.get_label_ids(class_labels).to(self.device)
            if batch_size is not None and batch_size != len(labels):
                raise ValueError(
                    f"batch_size={batch_size} but {len(labels)} class labels were given: a class-conditional "
                    "UNet makes one image per label, leave batch_size out"
                )
            batch_size = len(labels)
        else:
            if class_labels is not None:
                raise ValueError(
                    "class_labels were given but the UNet is unconditional (it has no class embedding): "
                    "ask for batch_size images instead"
                )
            labels, batch_size = None, batch_size or 1
        latents = self._denoise(batch_size, labels, guidance_scale, num_inference_steps, generator)

        if output_type == "latent":
            self.maybe_free_model_hooks()
            return ImagePipelineOutput(images=latents) if return_dict else (latents,)

        # Training saw z = s * E(x), or s * (E(x) - shift_factor) for VAEs that define a shift (SD3-style):
        # undo it before decoding.
        vae_config = self.vae.config
        latents = latents / vae_config.scaling_factor
        if getattr(vae_config, "shift_factor", None) is not None:
            latents = latents + vae_config.shift_factor
        image = self.vae.decode(latents.to(self.vae.dtype)).sample
        # The VAE was trained on images in [-1, 1]; its decoder can overshoot, which _to_output clamps.
        return self._to_output(image, output_type, return_dict)

    # Copied from hf_ddpm.pipelines.class_conditional_ddpm.ClassConditionalDDPMPipeline._denoise
    def _denoise(
        self,
        batch_size: int,
        labels: torch.Tensor | None,
        guidance_scale: float,
        num_inference_steps: int,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> torch.Tensor:
        """The scheduler's chain from noise of the UNet's sample shape to a sample, `batch_size` of them."""
        config = self.unet.config
        size = config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, config.in_channels, height, width)
        sample = randn_tensor(shape, generator=generator, device=self.device, dtype=self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        # Schedulers that work in sigma space (Euler, ...) start from noise of std sigma_max, not 1.
        # Flow matching's schedulers start from unit noise and scale no model input: they have neither.
        sample = sample * getattr(self.scheduler, "init_noise_sigma", 1.0)
        step_kwargs = {"generator": generator} if _accepts(self.scheduler.step, "generator") else {}
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = sample
            if hasattr(self.scheduler, "scale_model_input"):
                model_input = self.scheduler.scale_model_input(sample, t)
            output = self._model_output(model_input, t, labels, guidance_scale)
            sample = self.scheduler.step(output, t, sample, **step_kwargs).prev_sample
        return sample

    # Copied from hf_ddpm.pipelines.class_conditional_ddpm.ClassConditionalDDPMPipeline._model_output
    def _model_output(
        self, x: torch.Tensor, t, labels: torch.Tensor | None, guidance_scale: float
    ) -> torch.Tensor:
        """The UNet's output at (x_t, t), mixed with classifier-free guidance for a class-conditional UNet:
        eps(x, t, null) + w * (eps(x, t, y) - eps(x, t, null)); the null class is index `num_classes`."""
        if not self.num_classes:
            return self.unet(x, t).sample
        null = torch.full((len(x),), self.num_classes, dtype=torch.long, device=self.device)
        # w = 0 and w = 1 (and no labels) need one of the two models only: one forward of B instead of 2B.
        if labels is None or guidance_scale == 0:
            return self.unet(x, t, class_labels=null).sample
        if guidance_scale == 1:
            return self.unet(x, t, class_labels=labels).sample
        conditional, unconditional = self.unet(
            torch.cat([x, x]), t, class_labels=torch.cat([labels, null])
        ).sample.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    # Copied from hf_ddpm.pipelines.class_conditional_ddpm.ClassConditionalDDPMPipeline._to_output
    def _to_output(
        self, image: torch.Tensor, output_type: str, return_dict: bool
    ) -> ImagePipelineOutput | tuple:
        """Images in [-1, 1] as `output_type` asks: "pt" or "np" in [0, 1], or "pil". Values beyond [-1, 1]
        (a decoder's overshoot) are clamped."""
        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            image = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                image = self.numpy_to_pil(image)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=image) if return_dict else (image,)

    # Copied from hf_ddpm.pipelines.class_conditional_ddpm.ClassConditionalDDPMPipeline.save_pretrained
    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        """`DiffusionPipeline.save_pretrained`, plus this file beside the weights and its name in
        `model_index.json`, so `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` finds it."""
        super().save_pretrained(save_directory, **kwargs)
        folder = Path(save_directory)
        shutil.copyfile(inspect.getfile(type(self)), folder / f"{MODULE}.py")
        index_path = folder / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = [MODULE, type(self).__name__]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


# Copied from hf_ddpm.pipelines.class_conditional_ddpm._class_names
def _class_names(id2label: dict | None, num_classes: int) -> dict[int, str]:
    """`id2label` with int keys (JSON turns them into strings), checked to name the classes
    0..num_classes - 1; None gives the indices as strings."""
    id2label = {int(k): str(v) for k, v in (id2label or {i: str(i) for i in range(num_classes)}).items()}
    if sorted(id2label) != list(range(num_classes)):
        raise ValueError(
            f"id2label must name the classes 0..{num_classes - 1} of the UNet, got keys {sorted(id2label)}"
        )
    return id2label


# Copied from hf_ddpm.pipelines.class_conditional_ddpm._accepts
def _accepts(function, name: str) -> bool:
    return name in inspect.signature(function).parameters
