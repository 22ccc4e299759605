"""Inpainting and sketch-to-image editing with a pixel-space DDPM: RePaint and SDEdit.

- `InpaintingDDPMPipeline`: RePaint (Lugmayr, Danelljan, Romero, Yu, Timofte & Van Gool 2022, "RePaint:
  Inpainting using Denoising Diffusion Probabilistic Models", CVPR). The pixels the mask keeps are
  re-noised from the closed form q(x_t | x_0) at every step, the model denoises the rest, and resampling
  jumps (back up the chain with q(x_t | x_{t'}), then down again) let the two regions agree.
- `SDEditDDPMPipeline`: SDEdit (Meng, He, Song, Song, Wu, Zhu & Ermon 2022, "SDEdit: Guided Image Synthesis
  and Editing with Stochastic Differential Equations", ICLR). A rough input (a sketch) is noised to
  t0 = strength * T with q(x_t0 | x_0) and denoised from there: low strength stays close to the input, high
  strength follows the model.

This file imports only torch and diffusers, like the other pipeline files, so it works without hf_ddpm. Both
pipelines take the `unet` and `scheduler` of a trained DDPM, unconditional or class-conditional:

    from diffusers import DDPMPipeline

    base = DDPMPipeline.from_pretrained("checkpoints/ddpm-mnist")
    inpaint = InpaintingDDPMPipeline.from_pipe(base)
    images = inpaint(image, mask_image, num_inference_steps=50, jump_length=5, jump_n_sample=5).images
    sketches = SDEditDDPMPipeline.from_pipe(base)(image, strength=0.6, num_inference_steps=100).images

Both run the DDPM ancestral sampler (Ho et al. 2020, Algorithm 2) on their own timestep grid; the scheduler
only lends its noise schedule (`alphas_cumprod`) and its `prediction_type`, `clip_sample` and
`variance_type`, so any DDPM-family scheduler (DDPM, DDIM, DPM-Solver++) is accepted and its state is never
changed. A class-conditional UNet (`num_class_embeds = num_classes + 1`, the last the null class) takes
`class_labels` with classifier-free guidance (Ho & Salimans 2021), eps = eps(x, t, null) +
w (eps(x, t, y) - eps(x, t, null)); without labels it runs as the unconditional model.

Timesteps are diffusers' 0-based indices: timestep k is the paper's t = k + 1, so the pure-noise end is
k = T - 1.
"""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor


def spaced_timesteps(last: int, num: int) -> list[int]:
    """`num` timesteps evenly spaced from 0 to `last` (both included), increasing.

    Rounded with floor(x + 0.5), which keeps them distinct whenever `num <= last + 1` (numpy's round to even
    can merge neighbours).
    """
    if num == 1:
        return [last]
    return [int(math.floor(x + 0.5)) for x in np.linspace(0, last, num)]


def repaint_schedule(num_steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """The order in which RePaint visits the positions n - 1, ..., 0 of an n-step chain, -1 being the clean
    image: a step down is a reverse (denoising) step, a step up a forward jump q(x_{k+1} | x_k).

    The definition of Lugmayr et al. 2022 (Sec. 4.2, "resampling"): walking down from n - 1, at every
    position that is a multiple of `jump_length` (below n - jump_length) the chain jumps back up
    `jump_length` positions and walks down again, `jump_n_sample - 1` times, so each such stretch is
    denoised `jump_n_sample` times. `jump_n_sample=1` is plain sampling with the known pixels replaced.
    """
    jumps = {j: jump_n_sample - 1 for j in range(0, num_steps - jump_length, jump_length)}
    order, position = [num_steps - 1], num_steps - 1
    while position >= 0:
        position -= 1
        order.append(position)
        if jumps.get(position, 0) > 0:
            jumps[position] -= 1
            for _ in range(jump_length):
                position += 1
                order.append(position)
    return order


def sdedit_timesteps(strength: float, num_inference_steps: int, num_train_timesteps: int) -> list[int]:
    """The timesteps SDEdit visits, decreasing: round(s * n) of them (at least one) evenly spaced from
    t0 - 1 = round(s * T) - 1, the start, down to 0."""
    if not 0 < strength <= 1 or round(strength * num_train_timesteps) < 1:
        raise ValueError(f"strength must lie in (0, 1] (at least 1/{num_train_timesteps}), got {strength}")
    start = round(strength * num_train_timesteps) - 1
    num_steps = min(max(1, math.floor(strength * num_inference_steps + 0.5)), start + 1)
    return spaced_timesteps(start, num_steps)[::-1]


class _DDPMEditingPipeline(DiffusionPipeline):
    """What both pipelines share: the UNet call with guidance, the x_0 estimate, the ancestral step and the
    forward jump, on the scheduler's noise schedule.

    Args:
        unet: a `UNet2DModel` on images; with `num_class_embeds = num_classes + 1` it is class-conditional and
            index `num_classes` is the null class.
        scheduler: a DDPM-family scheduler (it must have `alphas_cumprod`): only its schedule and its
            `prediction_type`, `clip_sample`, `clip_sample_range` and `variance_type` are read.
        id2label: class-conditional UNets: class index (int, or its string from JSON) -> class name; default
            the indices as strings.
    """

    model_cpu_offload_seq = "unet"

    def __init__(self, unet: UNet2DModel, scheduler, id2label: dict | None = None):
        super().__init__()
        if getattr(scheduler, "alphas_cumprod", None) is None:
            raise ValueError(
                f"{type(scheduler).__name__} has no alphas_cumprod: inpainting and SDEdit need a DDPM noise "
                "schedule (a DDPM, DDIM or DPM-Solver++ scheduler), not a flow-matching one"
            )
        if scheduler.config.get("thresholding"):
            raise ValueError(
                "dynamic thresholding is not supported: load the scheduler with thresholding=False"
            )
        num_class_embeds = unet.config.num_class_embeds
        id2label = _class_names(id2label, num_class_embeds - 1) if num_class_embeds else None
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(id2label=id2label)

    # Copied from hf_ddpm.pipelines.class_conditional_ddpm.ClassConditionalDDPMPipeline.num_classes
    @property
    def num_classes(self) -> int:
        """The number of real classes, the null class left out; 0 for a UNet without a class embedding."""
        return (self.unet.config.num_class_embeds or 1) - 1

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

    # -- inputs ------------------------------------------------------------------------------------------

    def _image_tensor(self, image, name: str, channels: int) -> torch.Tensor:
        """(B, C, H, W) float in the UNet's dtype from a tensor in [-1, 1] or PIL image(s) in [0, 255]."""
        if not isinstance(image, torch.Tensor):
            images = image if isinstance(image, (list, tuple)) else [image]
            mode = "L" if channels == 1 else "RGB"
            arrays = np.stack([np.asarray(im.convert(mode), dtype=np.float32) / 127.5 - 1 for im in images])
            image = torch.from_numpy(arrays[:, None] if channels == 1 else arrays.transpose(0, 3, 1, 2))
        if image.ndim == 3:
            image = image[None]
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        if image.ndim != 4 or image.shape[1] != channels or tuple(image.shape[-2:]) != size:
            raise ValueError(
                f"{name} has shape {tuple(image.shape)}: this UNet takes "
                f"(batch, {channels}, {size[0]}, {size[1]})"
            )
        return image.to(self.device, self.unet.dtype)

    def _batch(self, images: torch.Tensor, class_labels) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images and label ids broadcast to one batch size (an image of batch 1 serves every label)."""
        labels = None if class_labels is None else self.get_label_ids(class_labels).to(self.device)
        size = max(len(images), len(labels) if labels is not None else 1)
        if len(images) not in (1, size) or (labels is not None and len(labels) not in (1, size)):
            raise ValueError(
                f"{len(images)} images and {len(labels)} class labels: give one image for all labels, "
                "or one per label"
            )
        images = images.expand(size, *images.shape[1:])
        return images, None if labels is None else labels.expand(size)

    # -- the chain -----------------------------------------------------------------------------------------

    def _alpha_bar(self, timestep: int) -> torch.Tensor:
        """alpha_bar of a 0-based timestep, in the scheduler's float32 as its own steps use it; -1 (the
        clean image) has 1."""
        if timestep < 0:
            return torch.tensor(1.0)
        return self.scheduler.alphas_cumprod[timestep].cpu()

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

    def predict_original(self, model_output: torch.Tensor, x: torch.Tensor, timestep: int) -> torch.Tensor:
        """x_0 implied by the model output at (x_t, t) (eq. 15 of Ho et al. 2020 for epsilon), clipped when
        the scheduler's `clip_sample` is set."""
        alpha_bar = self._alpha_bar(timestep).to(x.dtype)
        kind = self.scheduler.config.get("prediction_type", "epsilon")
        if kind == "epsilon":
            x0 = (x - (1 - alpha_bar) ** 0.5 * model_output) / alpha_bar**0.5
        elif kind == "v_prediction":
            x0 = alpha_bar**0.5 * x - (1 - alpha_bar) ** 0.5 * model_output
        elif kind == "sample":
            x0 = model_output
        else:
            raise ValueError(
                f"prediction_type {kind!r} is not supported: use epsilon, v_prediction or sample"
            )
        if self.scheduler.config.get("clip_sample", False):
            bound = self.scheduler.config.get("clip_sample_range", 1.0)
            x0 = x0.clamp(-bound, bound)
        return x0

    def reverse_step(
        self, x: torch.Tensor, x0: torch.Tensor, timestep: int, prev_timestep: int, generator=None
    ) -> torch.Tensor:
        """x_{t'} ~ q(x_{t'} | x_t, x_0 = x0), the posterior of eqs. 6-7 of Ho et al. 2020 between any t > t'
        (t' = -1: the clean image, the mean without noise). With t' the scheduler's previous timestep this is
        `DDPMScheduler.step` given the same x_0 estimate: the same float32 arithmetic and noise draw."""
        alpha_bar, alpha_bar_prev = self._alpha_bar(timestep), self._alpha_bar(prev_timestep)
        alpha = alpha_bar / alpha_bar_prev  # alpha and beta of the combined jump t -> t'
        beta = 1 - alpha
        x0_coeff = (alpha_bar_prev**0.5 * beta) / (1 - alpha_bar)
        xt_coeff = alpha**0.5 * (1 - alpha_bar_prev) / (1 - alpha_bar)
        mean = x0_coeff.to(x.device, x.dtype) * x0 + xt_coeff.to(x.device, x.dtype) * x
        if prev_timestep < 0:
            return mean
        kind = self.scheduler.config.get("variance_type") or "fixed_small"
        if kind == "fixed_small":
            variance = torch.clamp((1 - alpha_bar_prev) / (1 - alpha_bar) * beta, min=1e-20)
        elif kind == "fixed_large":
            variance = beta
        else:
            raise ValueError(f"variance_type {kind!r} is not supported: use fixed_small or fixed_large")
        noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return mean + (variance**0.5).to(x.device, x.dtype) * noise

    def forward_jump(
        self, x: torch.Tensor, timestep: int, next_timestep: int, generator=None
    ) -> torch.Tensor:
        """x_{t''} ~ q(x_{t''} | x_t) for t'' > t: N(sqrt(alpha_bar_t'' / alpha_bar_t) x_t, (1 - that) I)."""
        ratio = (self._alpha_bar(next_timestep) / self._alpha_bar(timestep)).to(x.device, x.dtype)
        noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return ratio**0.5 * x + (1 - ratio) ** 0.5 * noise

    def q_sample(self, x0: torch.Tensor, timestep: int, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) noise, the closed form q(x_t | x_0) (eq. 4),
        with the arithmetic of the scheduler's `add_noise`."""
        alpha_bar = self._alpha_bar(timestep).to(x0.device, x0.dtype)
        return alpha_bar**0.5 * x0 + (1 - alpha_bar) ** 0.5 * noise

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


def _check_common(guidance_scale: float, output_type: str, num_inference_steps: int) -> None:
    if guidance_scale < 0:
        raise ValueError(
            f"guidance_scale must be >= 0 (0: unconditional, 1: conditional), got {guidance_scale}"
        )
    if output_type not in ("pil", "np", "pt"):
        raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
    if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive int, got {num_inference_steps!r}")


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


class InpaintingDDPMPipeline(_DDPMEditingPipeline):
    """RePaint: fills the pixels a mask does not keep with what the DDPM finds consistent with those it keeps.

    At every reverse step t -> t' the kept pixels are drawn afresh from q(x_t' | x_0) of the input image and
    the others come from the model's step p(x_t' | x_t); then x_t' = mask * known + (1 - mask) * generated.
    Resampling jumps (`repaint_schedule`) take the whole image back up the chain and down again, so the
    generated pixels can adapt to the kept ones instead of merely sitting next to them.
    """

    @torch.no_grad()
    def __call__(
        self,
        image: torch.Tensor | list,
        mask_image: torch.Tensor | list,
        class_labels: int | str | list[int | str] | None = None,
        guidance_scale: float = 2.0,
        num_inference_steps: int = 250,
        jump_length: int = 10,
        jump_n_sample: int = 10,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
    ) -> ImagePipelineOutput | tuple:
        """
        Args:
            image: the image(s) to complete: a tensor (B, C, H, W) in [-1, 1], or PIL image(s). Only the
                pixels the mask keeps are read.
            mask_image: 1 (white) keeps the pixel, 0 (black) regenerates it, as in diffusers' RePaintPipeline:
                a tensor (B or 1, 1, H, W) in [0, 1] (>= 0.5 keeps) or PIL image(s).
            class_labels: class-conditional UNets: one class per image (index or name); None runs the
                unconditional (null-class) model. An image of batch 1 is completed once per label.
            guidance_scale: w of classifier-free guidance, >= 0 (with `class_labels` only).
            num_inference_steps: n, the positions of the chain: timesteps evenly spaced from T - 1 to 0.
            jump_length: j of RePaint, how far a resampling jump goes back up the chain (in positions).
            jump_n_sample: r of RePaint, how many times each stretch is denoised; 1 turns resampling off.
                The UNet runs n + (r - 1) * j * floor((n - 1) / j) times (about r * n).
            generator: makes the noise reproducible.
            output_type: "pil", "np" (float (B, H, W, C) in [0, 1]) or "pt" (float (B, C, H, W) in [0, 1]).
            return_dict: an `ImagePipelineOutput` if True, else a tuple `(images,)`.
            callback_on_step_end: called after every reverse step as
                `callback(pipeline, step, timestep, {"image": x_t', "pred_original_sample": x_0 estimate,
                "known_mask": the mask})`; a dict it returns may replace "image".
        """
        _check_common(guidance_scale, output_type, num_inference_steps)
        if jump_length < 1 or jump_n_sample < 1:
            raise ValueError(
                f"jump_length and jump_n_sample must be >= 1, got {jump_length} and {jump_n_sample}"
            )
        channels = self.unet.config.in_channels
        x0 = self._image_tensor(image, "image", channels)
        mask = self._image_tensor(mask_image, "mask_image", 1)
        if not isinstance(mask_image, torch.Tensor):  # PIL, read in [-1, 1]: white keeps
            mask = mask / 2 + 0.5
        mask = (mask >= 0.5).to(x0.dtype)
        x0, labels = self._batch(x0, class_labels)
        if len(mask) not in (1, len(x0)):
            raise ValueError(
                f"{len(mask)} masks for {len(x0)} images: give one mask for all, or one per image"
            )
        mask = mask.expand(len(x0), *mask.shape[1:])

        total = self.scheduler.config.num_train_timesteps
        num_steps = min(num_inference_steps, total)
        timesteps = spaced_timesteps(total - 1, num_steps)
        order = repaint_schedule(num_steps, jump_length, jump_n_sample)

        def timestep_at(position: int) -> int:
            return timesteps[position] if position >= 0 else -1

        # Start at the top of the chain: the kept pixels from q(x_T | x_0), the rest pure noise.
        noise = randn_tensor(x0.shape, generator=generator, device=self.device, dtype=x0.dtype)
        x = mask * self.q_sample(x0, timesteps[-1], noise) + (1 - mask) * noise
        reverse = sum(1 for a, b in pairwise(order) if b < a)
        step = 0
        with self.progress_bar(total=reverse) as progress:
            for position, next_position in pairwise(order):
                t, t_next = timestep_at(position), timestep_at(next_position)
                if next_position > position:
                    x = self.forward_jump(x, t, t_next, generator)
                    continue
                x0_pred = self.predict_original(self._model_output(x, t, labels, guidance_scale), x, t)
                generated = self.reverse_step(x, x0_pred, t, t_next, generator)
                if t_next < 0:
                    known = x0
                else:
                    fresh = randn_tensor(x0.shape, generator=generator, device=self.device, dtype=x0.dtype)
                    known = self.q_sample(x0, t_next, fresh)
                x = mask * known + (1 - mask) * generated
                if callback_on_step_end is not None:
                    kwargs = {"image": x, "pred_original_sample": x0_pred, "known_mask": mask}
                    x = (callback_on_step_end(self, step, t, kwargs) or {}).get("image", x)
                step += 1
                progress.update()
        return self._to_output(x, output_type, return_dict)


class SDEditDDPMPipeline(_DDPMEditingPipeline):
    """SDEdit: turns a rough image (a sketch, a blurred or blocky version) into a sample of the model.

    The input is noised to t0 = strength * T with the closed form q(x_t0 | x_0) and denoised from t0 with
    the ancestral sampler. Noise at t0 hides the input's details but not its layout, so the result keeps
    the sketch's shape where the model can believe it: low strength is faithful, high strength realistic.
    """

    @torch.no_grad()
    def __call__(
        self,
        image: torch.Tensor | list,
        strength: float = 0.5,
        class_labels: int | str | list[int | str] | None = None,
        guidance_scale: float = 2.0,
        num_inference_steps: int = 100,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end=None,
    ) -> ImagePipelineOutput | tuple:
        """
        Args:
            image: the guide image(s): a tensor (B, C, H, W) in [-1, 1], or PIL image(s).
            strength: s in (0, 1]; the chain starts at paper time t0 = round(s * T) (0-based timestep
                t0 - 1) from x_t0 = sqrt(alpha_bar_t0) x_0 + sqrt(1 - alpha_bar_t0) eps, eps the generator's
                first draw. 1 ignores the input (plain sampling from noise).
            class_labels: class-conditional UNets: one class per image (index or name); None runs the
                unconditional (null-class) model. An image of batch 1 is edited once per label.
            guidance_scale: w of classifier-free guidance, >= 0 (with `class_labels` only).
            num_inference_steps: steps for the whole chain; strength s runs round(s * n) of them, evenly
                spaced from t0 down to 0.
            generator, output_type, return_dict: as for `InpaintingDDPMPipeline`.
            callback_on_step_end: called after every step as `callback(pipeline, step, timestep,
                {"image": x_t', "pred_original_sample": x_0 estimate})`; a dict it returns may replace
                "image".
        """
        _check_common(guidance_scale, output_type, num_inference_steps)
        timesteps = sdedit_timesteps(strength, num_inference_steps, self.scheduler.config.num_train_timesteps)
        x0 = self._image_tensor(image, "image", self.unet.config.in_channels)
        x0, labels = self._batch(x0, class_labels)
        noise = randn_tensor(x0.shape, generator=generator, device=self.device, dtype=x0.dtype)
        x = self.q_sample(x0, timesteps[0], noise)
        for step, (t, t_next) in enumerate(self.progress_bar(list(pairwise([*timesteps, -1])))):
            x0_pred = self.predict_original(self._model_output(x, t, labels, guidance_scale), x, t)
            x = self.reverse_step(x, x0_pred, t, t_next, generator)
            if callback_on_step_end is not None:
                kwargs = {"image": x, "pred_original_sample": x0_pred}
                x = (callback_on_step_end(self, step, t, kwargs) or {}).get("image", x)
        return self._to_output(x, output_type, return_dict)
