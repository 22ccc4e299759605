"""The DDPM noise scheduler of Ho et al. 2020, "Denoising Diffusion Probabilistic Models"
(https://arxiv.org/abs/2006.11239), written from the paper.

`LinearNoiseScheduler` is a drop-in replacement for `diffusers.DDPMScheduler` restricted to the options this
project uses: same config keys and defaults, same attributes, same `step` / `add_noise` / `get_velocity`
signatures, and the same float32 arithmetic in the same order, so that a model trained or sampled with one
gives the same numbers with the other. Pipelines (`DDPMPipeline`) and `from_config` conversions to other
diffusers schedulers (DDIM, DPM-Solver, ...) work with it unchanged.

Notation follows the paper: `beta_t` is the variance added by forward step t, `alpha_t = 1 - beta_t`, and
`alpha_bar_t = prod_{s<=t} alpha_s` is the fraction of the clean signal's variance left in x_t. Indices are
0-based (t = 0 .. num_train_timesteps - 1) like diffusers, where the paper counts 1 .. T.
"""

import math
import operator
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
VARIANCE_TYPES = ("fixed_small", "fixed_large")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")


@dataclass
class LinearNoiseSchedulerOutput(BaseOutput):
    """
    What one reverse step of [`LinearNoiseScheduler.step`] produces.

    Args:
        prev_sample (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
            x_{t'}, a draw from p(x_{t'} | x_t) where t' is the timestep after t in the inference schedule
            (t - 1 when every training timestep is visited). Feed it to the model at the next step.
        pred_original_sample (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
            The model's current estimate of x_0 (after clipping when `clip_sample` is set). Useful to preview
            where the chain is heading.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def cosine_betas(num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """
    Betas of the cosine schedule of Nichol & Dhariwal 2021 ("Improved DDPM", eq. 17):
    alpha_bar(u) = cos^2((u + s) / (1 + s) * pi / 2) for u = t / T, and beta_t = 1 - alpha_bar(u_{t+1}) /
    alpha_bar(u_t).

    The arithmetic is done in Python floats and only the result is rounded to float32, because that is how
    diffusers builds its `squaredcos_cap_v2` table and the last few betas are very sensitive to rounding.

    Args:
        num_train_timesteps (`int`):
            T, the number of betas to produce.
        s (`float`, defaults to `0.008`):
            Offset that keeps beta_0 from being vanishingly small near u = 0.
        max_beta (`float`, defaults to `0.999`):
            Cap on each beta; without it the last beta is 1 (alpha_bar(1) = 0) and x_0 can no longer be
            recovered from x_T.

    Returns:
        `torch.Tensor` of shape `(num_train_timesteps,)`, float32: the betas.
    """

    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
        for i in range(num_train_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


def _choice(key: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not supported; allowed values are {', '.join(allowed)}")


class LinearNoiseScheduler(SchedulerMixin, ConfigMixin):
    """
    Ancestral sampler and forward-noising process of DDPM (Ho et al. 2020), numerically identical to
    `diffusers.DDPMScheduler` for the options below.

    Inherits config saving/loading (`save_pretrained`, `from_pretrained`, `from_config`) from [`ConfigMixin`]
    and [`SchedulerMixin`].

    Args:
        num_train_timesteps (`int`, defaults to `1000`):
            T, the number of forward diffusion steps the model was trained with. Must be >= 1.
        beta_start (`float`, defaults to `0.0001`):
            beta_0, the forward-process variance at the first step (`linear` and `scaled_linear` only).
        beta_end (`float`, defaults to `0.02`):
            beta_{T-1}, the variance at the last step; must exceed `beta_start`, and both must lie in (0, 1)
            (`linear` and `scaled_linear` only). The defaults are the paper's (Sec. 4).
        beta_schedule (`"linear"`, `"scaled_linear"` or `"squaredcos_cap_v2"`, defaults to `"linear"`):
            How betas grow with t. `linear`: evenly spaced from `beta_start` to `beta_end` (the paper).
            `scaled_linear`: evenly spaced in sqrt(beta), then squared (latent diffusion).
            `squaredcos_cap_v2`: the cosine alpha_bar of Nichol & Dhariwal 2021, ignoring `beta_start` and
            `beta_end`.
        variance_type (`"fixed_small"` or `"fixed_large"`, defaults to `"fixed_small"`):
            Variance sigma_t^2 of the reverse step (Sec. 3.2). `fixed_small` is the posterior variance
            beta-tilde_t of eq. 7, the right choice when x_0 is a point; `fixed_large` is beta_t, right when
            x_0 ~ N(0, I). The paper found both to give similar samples.
        clip_sample (`bool`, defaults to `True`):
            Clamp the predicted x_0 to [-clip_sample_range, clip_sample_range] before forming the posterior
            mean. Keeps early, very noisy steps (where the x_0 estimate is poor and large) from leaving the
            data range.
        clip_sample_range (`float`, defaults to `1.0`):
            Bound used by `clip_sample`; must be > 0.
        prediction_type (`"epsilon"`, `"v_prediction"` or `"sample"`, defaults to `"epsilon"`):
            What the model outputs: the noise epsilon (the paper), the velocity
            v = sqrt(alpha_bar_t) * epsilon - sqrt(1 - alpha_bar_t) * x_0 (Salimans & Ho 2022), or x_0 itself.
        timestep_spacing (`"leading"`, `"linspace"` or `"trailing"`, defaults to `"leading"`):
            How `set_timesteps` picks a subset of the training timesteps when sampling with fewer steps, as in
            Table 2 of Lin et al. 2023 (https://arxiv.org/abs/2305.08891): `leading` takes multiples of
            T // n counted up from 0, `linspace` spreads n points evenly over [0, T - 1], `trailing` counts
            down from T - 1 in strides of T / n.
        steps_offset (`int`, defaults to `0`):
            Added to every timestep of a `leading` schedule (some model families were trained to expect it).
            Must be >= 0; ignored by the other spacings.
    """

    # Same list as DDPMScheduler, so `compatibles` offers every scheduler that can reuse this config.
    _compatibles = list(dict.fromkeys([e.name for e in KarrasDiffusionSchedulers] + ["DDPMScheduler"]))
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ) -> None:
        _choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        _choice("variance_type", variance_type, VARIANCE_TYPES)
        _choice("prediction_type", prediction_type, PREDICTION_TYPES)
        _choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be an integer >= 1, got {num_train_timesteps}")
        if clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be > 0, got {clip_sample_range}")
        if steps_offset < 0:
            raise ValueError(f"steps_offset must be an integer >= 0, got {steps_offset}")

        if beta_schedule == "squaredcos_cap_v2":
            self.betas = cosine_betas(num_train_timesteps)
        else:
            if beta_end <= beta_start:
                raise ValueError(
                    f"beta_end ({beta_end}) must be greater than beta_start ({beta_start}) "
                    f"for beta_schedule={beta_schedule!r}"
                )
            if not 0 < beta_start < beta_end < 1:
                raise ValueError(
                    f"beta_start ({beta_start}) and beta_end ({beta_end}) must lie in the open interval "
                    f"(0, 1) for beta_schedule={beta_schedule!r}: a beta of 0 adds no noise and 1 erases "
                    "the signal"
                )
            if beta_schedule == "linear":
                self.betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
            else:
                # Latent-diffusion convention: the noise standard deviation, not the variance, grows linearly.
                sqrt_betas = torch.linspace(
                    beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32
                )
                self.betas = sqrt_betas**2

        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        # alpha_bar "before" the first step (t = -1): nothing has been noised yet.
        self._alpha_bar_start = torch.tensor(1.0)

        # x_T ~ N(0, I): samplers multiply their initial Gaussian noise by this.
        self.init_noise_sigma = 1.0

        self.num_inference_steps: int | None = None
        self.custom_timesteps = False
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def scale_model_input(
        self, sample: torch.Tensor, timestep: int | torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        DDPM feeds x_t to the model unscaled; this exists so pipelines can treat all schedulers alike.

        Args:
            sample (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                x_t, the current noisy sample.
            timestep (`int` or `torch.Tensor`, *optional*):
                The current timestep t; unused.

        Returns:
            `torch.Tensor`: `sample` itself.
        """
        return sample

    # ------------------------------------------------------------------------------------------------------
    # Forward process
    # ------------------------------------------------------------------------------------------------------

    def _alpha_bar_for(self, timesteps: torch.Tensor | int | list[int], like: torch.Tensor) -> torch.Tensor:
        """alpha_bar at `timesteps`, in `like`'s dtype/device, shaped `(batch, 1, ..., 1)` to broadcast."""
        # Keep the table on the samples' device: training calls add_noise every step, and a fresh host to
        # device copy each time would be wasted work.
        self.alphas_cumprod = self.alphas_cumprod.to(device=like.device)
        table = self.alphas_cumprod.to(dtype=like.dtype)
        picked = table[torch.as_tensor(timesteps, device=like.device)]
        return picked.reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(
        self,
        original_samples: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor | int | list[int],
    ) -> torch.Tensor:
        """
        Sample x_t ~ q(x_t | x_0) in closed form (eq. 4):
        x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * epsilon.

        Args:
            original_samples (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                x_0, clean training samples. Any shape whose first dimension is the batch works.
            noise (`torch.Tensor`, same shape as `original_samples`):
                epsilon ~ N(0, I).
            timesteps (`torch.Tensor` of shape `(batch_size,)`, integer):
                The timestep t of each sample in [0, num_train_timesteps). A single timestep (0-d tensor or
                int) applies to the whole batch.

        Returns:
            `torch.Tensor` of the same shape, dtype and device as `original_samples`: x_t.
        """
        alpha_bar = self._alpha_bar_for(timesteps, original_samples)
        return alpha_bar**0.5 * original_samples + (1 - alpha_bar) ** 0.5 * noise

    def get_velocity(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor | int | list[int]
    ) -> torch.Tensor:
        """
        The v-prediction target of Salimans & Ho 2022 (Sec. 4):
        v = sqrt(alpha_bar_t) * epsilon - sqrt(1 - alpha_bar_t) * x_0.

        Args:
            sample (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                x_0, the clean samples (not x_t).
            noise (`torch.Tensor`, same shape as `sample`):
                The epsilon that was (or will be) passed to `add_noise`.
            timesteps (`torch.Tensor` of shape `(batch_size,)`, integer):
                The timestep t of each sample, as in `add_noise`.

        Returns:
            `torch.Tensor` of the same shape, dtype and device as `sample`: v.
        """
        alpha_bar = self._alpha_bar_for(timesteps, sample)
        return alpha_bar**0.5 * noise - (1 - alpha_bar) ** 0.5 * sample

    # ------------------------------------------------------------------------------------------------------
    # Inference schedule
    # ------------------------------------------------------------------------------------------------------

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """
        Choose the timesteps the reverse chain visits (call before sampling). With fewer steps than training
        timesteps, `step` jumps between the chosen ones using the alpha_bar ratio (see `step`).

        Args:
            num_inference_steps (`int`, *optional*):
                n, how many reverse steps to take, 1 <= n <= num_train_timesteps. The timesteps are picked by
                `config.timestep_spacing`. Pass exactly one of `num_inference_steps` and `timesteps`.
            device (`str` or `torch.device`, *optional*):
                Where to put `self.timesteps`; left on the CPU when `None`.
            timesteps (`list[int]`, *optional*):
                An explicit, strictly decreasing schedule inside [0, num_train_timesteps).
        """
        total = self.config.num_train_timesteps
        if timesteps is not None:
            if num_inference_steps is not None:
                raise ValueError("pass either num_inference_steps or timesteps to set_timesteps, not both")
            schedule = np.asarray(timesteps, dtype=np.int64)
            if schedule.ndim != 1 or schedule.size == 0:
                raise ValueError(f"timesteps must be a non-empty list of integers, got {timesteps!r}")
            if np.any(np.diff(schedule) >= 0):
                raise ValueError(f"timesteps must be strictly decreasing, got {timesteps!r}")
            if schedule[0] >= total or schedule[-1] < 0:
                raise ValueError(f"timesteps must lie in [0, {total - 1}] (num_train_timesteps={total})")
            self.custom_timesteps = True
        else:
            if num_inference_steps is None:
                raise ValueError("set_timesteps needs num_inference_steps (or an explicit timesteps list)")
            try:
                num_inference_steps = operator.index(num_inference_steps)
            except TypeError:
                raise ValueError(
                    f"num_inference_steps must be an integer, got {num_inference_steps!r}"
                ) from None
            if not 1 <= num_inference_steps <= total:
                raise ValueError(
                    f"num_inference_steps must be in [1, {total}] (at most num_train_timesteps), "
                    f"got {num_inference_steps}"
                )
            schedule = self._spaced_timesteps(num_inference_steps)
            self.custom_timesteps = False

        self.num_inference_steps = len(schedule)
        self.timesteps = torch.from_numpy(np.ascontiguousarray(schedule)).to(device)

    def _spaced_timesteps(self, n: int) -> np.ndarray:
        """n decreasing timesteps per `config.timestep_spacing`; numpy arithmetic as in DDPMScheduler."""
        total = self.config.num_train_timesteps
        spacing = self.config.timestep_spacing
        if spacing == "linspace":
            # Both ends included: the chain starts from the noisiest step and finishes at t = 0.
            return np.linspace(0, total - 1, n).round()[::-1].astype(np.int64)
        if spacing == "leading":
            stride = total // n
            schedule = np.arange(n, dtype=np.int64)[::-1] * stride + self.config.steps_offset
            if schedule[0] >= total:
                raise ValueError(
                    f"steps_offset={self.config.steps_offset} with {n} leading-spaced steps gives timestep "
                    f"{schedule[0]}, past the last training timestep {total - 1}; use steps_offset <= "
                    f"{total - 1 - schedule[0] + self.config.steps_offset} or fewer steps"
                )
            return schedule
        # trailing. The float stride can make np.arange yield one extra element (a spurious timestep -1 after
        # the last real one, e.g. T=1000, n=61); DDPMScheduler keeps it, we keep only the n real timesteps.
        stride = total / n
        return np.round(np.arange(total, 0, -stride))[:n].astype(np.int64) - 1

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        """
        The timestep the chain moves to from `timestep`: the next entry of `self.timesteps` (t - 1 before
        `set_timesteps` is called), or -1 when `timestep` is the last one, meaning "x_0".

        Args:
            timestep (`int` or 0-d `torch.Tensor`):
                The current timestep t; must be one of `self.timesteps`.

        Returns:
            `int`: the previous timestep t', or -1.
        """
        t = int(timestep)
        hits = (self.timesteps == t).nonzero()
        if hits.numel() == 0:
            raise ValueError(
                f"timestep {t} is not in the current schedule (self.timesteps, set by set_timesteps; "
                f"valid training timesteps are 0..{self.config.num_train_timesteps - 1})"
            )
        index = int(hits[0, 0]) + 1
        return int(self.timesteps[index]) if index < len(self.timesteps) else -1

    # ------------------------------------------------------------------------------------------------------
    # Reverse process
    # ------------------------------------------------------------------------------------------------------

    def _predict_original(
        self,
        model_output: torch.Tensor,
        sample: torch.Tensor,
        alpha_bar_t: torch.Tensor,
        beta_bar_t: torch.Tensor,
    ) -> torch.Tensor:
        """x_0 implied by the model output at x_t; `beta_bar_t` is 1 - alpha_bar_t."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            # eq. 15, eq. 4 solved for x_0.
            return (sample - beta_bar_t**0.5 * model_output) / alpha_bar_t**0.5
        if kind == "v_prediction":
            return alpha_bar_t**0.5 * sample - beta_bar_t**0.5 * model_output
        return model_output

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
    ) -> LinearNoiseSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """
        One iteration of the sampling loop (Algorithm 2): draw x_{t'} ~ p(x_{t'} | x_t), where t' is the
        previous timestep of the schedule (t - 1 when sampling with every training timestep).

        The model output is first turned into an estimate of x_0 (eq. 15 for epsilon), optionally clipped,
        then plugged into the mean of the forward posterior q(x_{t'} | x_t, x_0) of eq. 7. With an
        epsilon model and no clipping this equals the paper's eq. 11 mean,
        (x_t - beta_t / sqrt(1 - alpha_bar_t) * epsilon) / sqrt(alpha_t); going through x_0 is what makes
        clipping possible. When the schedule skips timesteps, alpha_t and beta_t are those of the combined
        jump t -> t': alpha_t = alpha_bar_t / alpha_bar_{t'}.

        Args:
            model_output (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                The model's prediction at (x_t, t): epsilon, v or x_0 per `config.prediction_type`.
            timestep (`int` or 0-d `torch.Tensor`):
                The current timestep t, an element of `self.timesteps`.
            sample (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                x_t, the current sample.
            generator (`torch.Generator` or list of them, *optional*):
                Source of the noise z added at t > 0, for reproducible sampling. The draw is the same
                `randn_tensor` call DDPMScheduler makes, so equal seeds give equal samples.
            return_dict (`bool`, defaults to `True`):
                Return a [`LinearNoiseSchedulerOutput`] instead of a tuple.

        Returns:
            [`LinearNoiseSchedulerOutput`], or the tuple `(prev_sample, pred_original_sample)` when
            `return_dict` is `False`; both tensors have the shape and dtype of `model_output`.
        """
        t = int(timestep)
        prev_t = self.previous_timestep(t)

        alpha_bar_t = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self._alpha_bar_start
        beta_bar_t = 1 - alpha_bar_t
        beta_bar_prev = 1 - alpha_bar_prev
        alpha_t = alpha_bar_t / alpha_bar_prev
        beta_t = 1 - alpha_t

        pred_original_sample = self._predict_original(model_output, sample, alpha_bar_t, beta_bar_t)
        if self.config.clip_sample:
            bound = self.config.clip_sample_range
            pred_original_sample = pred_original_sample.clamp(-bound, bound)

        # eq. 7: mu-tilde(x_t, x_0) = sqrt(alpha_bar_{t'}) beta_t / (1 - alpha_bar_t) * x_0
        #                            + sqrt(alpha_t) (1 - alpha_bar_{t'}) / (1 - alpha_bar_t) * x_t
        x0_coeff = (alpha_bar_prev**0.5 * beta_t) / beta_bar_t
        xt_coeff = alpha_t**0.5 * beta_bar_prev / beta_bar_t
        prev_sample = x0_coeff * pred_original_sample + xt_coeff * sample

        # Algorithm 2 adds sigma_t z only for t > 0: the last step returns the mean. A schedule that ends
        # above 0 (trailing spacing, steps_offset) still gets noise at its last step, as in DDPMScheduler.
        if t > 0:
            z = randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
            )
            if self.config.variance_type == "fixed_small":
                # beta-tilde of eq. 7. It is exactly 0 when t' = -1; diffusers floors it at 1e-20 (its log
                # variants need that), and keeping the floor makes such a step add the same 1e-10 * z.
                variance = torch.clamp(beta_bar_prev / beta_bar_t * beta_t, min=1e-20)
            else:
                variance = beta_t
            prev_sample = prev_sample + variance**0.5 * z

        if not return_dict:
            return prev_sample, pred_original_sample
        return LinearNoiseSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
