"""Class-conditional DDPM sampling with classifier-free guidance (Ho & Salimans 2021).

This file imports only torch and diffusers, so it travels to the Hub beside a checkpoint and loads with
stock diffusers as remote code:

    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained("org/ddpm-mnist-cfg", trust_remote_code=True)
    images = pipeline(class_labels=[7, "3"], guidance_scale=2.0, num_inference_steps=1000).images

The UNet is a `UNet2DModel` with a class embedding of `num_classes + 1` entries: the last one is the
learned null class that training puts in place of a dropped label, so one network is both the
conditional model eps(x_t, t, y) and the unconditional model eps(x_t, t, null). Guidance mixes them:

    eps = eps(x_t, t, null) + w * (eps(x_t, t, y) - eps(x_t, t, null))

w = 0 samples the unconditional model, w = 1 the conditional one, w > 1 trades diversity for images
that look more like their class. The same mix applies to v- and x_0-predicting UNets.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

# The module name model_index.json gives, so that diffusers finds this file beside the weights.
MODULE = "class_conditional_ddpm"


class ClassConditionalDDPMPipeline(DiffusionPipeline):
    """Samples images of requested classes from a class-conditional `UNet2DModel`.

    Args:
        unet: a `UNet2DModel` with `num_class_embeds = num_classes + 1`; index `num_classes` is the
            null class.
        scheduler: any diffusers scheduler (DDPM, DDIM, DPM-Solver++, ...): swap it with
            `pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)`.
        id2label: class index (int, or its string from JSON) -> class name, saved in `model_index.json`;
            default: the indices as strings.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler, id2label: dict | None = None):
        super().__init__()
        if not unet.config.num_class_embeds or unet.config.num_class_embeds < 2:
            raise ValueError(
                "the UNet has no class embedding: a class-conditional UNet needs num_class_embeds = "
                "number of classes + 1 (the null class)"
            )
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(id2label=_class_names(id2label, unet.config.num_class_embeds - 1))

    @property
    def num_classes(self) -> int:
        """The number of real classes, the null class left out; 0 for a UNet without a class embedding."""
        return (self.unet.config.num_class_embeds or 1) - 1

    @property
    def null_class(self) -> int:
        """The embedding index of "no class", the unconditional model."""
        return self.num_classes

    @property
    def labels(self) -> dict[str, int]:
        """Class name -> class index; empty for a UNet without a class embedding."""
        return {name: int(i) for i, name in (self.config.id2label or {}).items()}

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
        class_labels: int | str | list[int | str],
        guidance_scale: float = 2.0,
        num_inference_steps: int = 1000,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """
        Args:
            class_labels: one image per entry, a class index (int) or a class name (str, see `labels`).
            guidance_scale: w of classifier-free guidance, >= 0. 0: unconditional, 1: conditional without
                guidance. Both need one UNet forward per step; any other w batches the conditional and the
                unconditional input in one forward of twice the batch.
            num_inference_steps: denoising steps; the scheduler decides which timesteps they visit.
            generator: makes the initial noise and the scheduler's noise reproducible.
            output_type: "pil" (PIL images), "np" (float (batch, H, W, C) in [0, 1]) or "pt" (float tensor
                (batch, C, H, W) in [0, 1]).
            return_dict: an `ImagePipelineOutput` if True, else a tuple `(images,)`.
        """
        if guidance_scale < 0:
            raise ValueError(
                f"guidance_scale must be >= 0 (0: unconditional, 1: conditional), got {guidance_scale}"
            )
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
        labels = self.get_label_ids(class_labels).to(self.device)
        image = self._denoise(len(labels), labels, guidance_scale, num_inference_steps, generator)
        return self._to_output(image, output_type, return_dict)

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


def _class_names(id2label: dict | None, num_classes: int) -> dict[int, str]:
    """`id2label` with int keys (JSON turns them into strings), checked to name the classes
    0..num_classes - 1; None gives the indices as strings."""
    id2label = {int(k): str(v) for k, v in (id2label or {i: str(i) for i in range(num_classes)}).items()}
    if sorted(id2label) != list(range(num_classes)):
        raise ValueError(
            f"id2label must name the classes 0..{num_classes - 1} of the UNet, got keys {sorted(id2label)}"
        )
    return id2label


def _accepts(function, name: str) -> bool:
    return name in inspect.signature(function).parameters
