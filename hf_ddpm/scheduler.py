"""The DDPM noise scheduler of Ho et al. 2020, "Denoising Diffusion Probabilistic Models"
(https://arxiv.org/abs/2006.11239), written from the papers it implements.

`LinearNoiseScheduler` is a drop-in replacement for `diffusers.DDPMScheduler`: every config key with the same
name and default, the same attributes, the same `step` / `add_noise` / `get_velocity` / `set_timesteps` /
`previous_timestep` / `_get_variance` signatures and return types, and the same float32 arithmetic in the same
order, so that a model trained or sampled with one gives the same numbers with the other. Pipelines
(`DDPMPipeline`) and `from_config` conversions to other diffusers schedulers (DDIM, DPM-Solver, ...) work with
it unchanged. Besides the paper's linear betas it implements the options later papers added to the DDPM
sampler: learned variances (Nichol & Dhariwal 2021), dynamic thresholding (Saharia et al. 2022), zero terminal
SNR (Lin et al. 2024) and the cosine, sigmoid and Laplace beta schedules.

Where it refuses what stock accepts, it does so because stock would compute nonsense (see the class
docstring, "Differences from stock"); a config key it does not know is refused rather than dropped whenever
dropping it could change the numbers (`extract_init_dict`).

Notation follows the paper: `beta_t` is the variance added by forward step t, `alpha_t = 1 - beta_t`, and
`alpha_bar_t = prod_{s<=t} alpha_s` is the fraction of the clean signal's variance left in x_t. Indices are
0-based (t = 0 .. num_train_timesteps - 1) like diffusers, where the paper counts 1 .. T.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace")
VARIANCE_TYPES = (
    "fixed_small",
    "fixed_small_log",
    "fixed_large",
    "fixed_large_log",
    "learned",
    "learned_range",
)
# Variance types whose model output holds 2C channels: the mean's prediction, then the variance's.
LEARNED_VARIANCE_TYPES = ("learned", "learned_range")
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
            The model's current estimate of x_0 (after clipping or thresholding when configured). Useful to
            preview where the chain is heading.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------------------------
# Beta schedules
# ----------------------------------------------------------------------------------------------------------


def alpha_bar_betas(
    alpha_bar: Callable[[float], float], num_train_timesteps: int, max_beta: float = 0.999
) -> torch.Tensor:
    """
    Betas that discretise a continuous alpha_bar(u), u in [0, 1]: beta_t = 1 - alpha_bar(u_{t+1}) /
    alpha_bar(u_t) with u_t = t / T, capped at `max_beta` (Nichol & Dhariwal 2021, eq. 17 and below).

    The arithmetic is done in Python floats and only the result is rounded to float32, because that is how
    diffusers builds its tables and the last few betas are very sensitive to rounding.

    Args:
        alpha_bar (`Callable[[float], float]`):
            The fraction of signal variance left at time u, decreasing from about 1 at u = 0.
        num_train_timesteps (`int`):
            T, the number of betas to produce.
        max_beta (`float`, defaults to `0.999`):
            Cap on each beta; without it the last beta of the cosine schedule is 1 (alpha_bar(1) = 0) and x_0
            can no longer be recovered from x_T.

    Returns:
        `torch.Tensor` of shape `(num_train_timesteps,)`, float32: the betas.
    """
    betas = [
        min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
        for i in range(num_train_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float32)


def cosine_alpha_bar(u: float, s: float = 0.008) -> float:
    """The cosine alpha_bar of Nichol & Dhariwal 2021 (eq. 17): cos^2((u + s) / (1 + s) * pi / 2); the offset
    `s` keeps beta_0 from being vanishingly small near u = 0."""
    return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def laplace_alpha_bar(u: float) -> float:
    """The Laplace schedule of Hang et al. 2024 ("Improved Noise Schedule for Diffusion Training"): log SNR
    lambda(u) = -sign(0.5 - u) log(1 - 2 |0.5 - u|) / 2 (location 0, scale 1/2), with 1e-6 inside the log so
    that u = 0 and 1 stay finite. Like diffusers' `laplace` option this returns sqrt(SNR / (1 + SNR)), the
    signal's standard deviation, as the value that the betas discretise."""
    log_snr = -0.5 * math.copysign(1, 0.5 - u) * math.log(1 - 2 * math.fabs(0.5 - u) + 1e-6)
    snr = math.exp(log_snr)
    return math.sqrt(snr / (1 + snr))


def cosine_betas(num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """
    Betas of the cosine schedule of Nichol & Dhariwal 2021 ("Improved DDPM", eq. 17), `squaredcos_cap_v2`.

    Args:
        num_train_timesteps (`int`):
            T, the number of betas to produce.
        s (`float`, defaults to `0.008`):
            Offset that keeps beta_0 from being vanishingly small near u = 0.
        max_beta (`float`, defaults to `0.999`):
            Cap on each beta (see `alpha_bar_betas`).

    Returns:
        `torch.Tensor` of shape `(num_train_timesteps,)`, float32: the betas.
    """
    return alpha_bar_betas(lambda u: cosine_alpha_bar(u, s), num_train_timesteps, max_beta)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """
    Algorithm 1 of Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"
    (https://arxiv.org/abs/2305.08891): shift sqrt(alpha_bar_t) so that its last value is exactly 0 (x_T holds
    no signal, as the sampler's pure-noise start assumes) and scale it so that its first value is unchanged,
    then recover the betas. The last beta becomes 1.

    Args:
        betas (`torch.Tensor` of shape `(T,)`, float32, T >= 2):
            The schedule to rescale.

    Returns:
        `torch.Tensor` of shape `(T,)`, float32: the rescaled betas.
    """
    sqrt_alpha_bar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_alpha_bar[0].clone(), sqrt_alpha_bar[-1].clone()
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * (first / (first - last))
    alpha_bar = sqrt_alpha_bar**2
    # alpha_t = alpha_bar_t / alpha_bar_{t-1}, with alpha_0 = alpha_bar_0.
    alphas = torch.cat([alpha_bar[0:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


# ----------------------------------------------------------------------------------------------------------
# Config keys of other schedulers
# ----------------------------------------------------------------------------------------------------------

# Keys that other diffusers schedulers store and that steer only their own sampling algorithm (solver order,
# sigma grids, the alpha used after DDIM's last step, ...). The noise process they describe is the one the
# DDPM keys describe, so a DDPM sampler built from their config draws from the same model: they are kept in
# the config (for a later `from_config` back to that sampler) and play no part here.
SAMPLER_ONLY_KEYS = frozenset(
    {
        # DDIM, PNDM, LCM, TCD, RePaint
        "set_alpha_to_one",
        "skip_prk_steps",
        "original_inference_steps",
        "timestep_scaling",
        "eta",
        # multistep solvers: DPM-Solver(++), DEIS, UniPC, SA-Solver
        "solver_order",
        "algorithm_type",
        "solver_type",
        "lower_order_final",
        "euler_at_final",
        "final_sigmas_type",
        "lambda_min_clipped",
        "use_lu_lambdas",
        "predict_x0",
        "disable_corrector",
        "solver_p",
        "predictor_order",
        "corrector_order",
        "tau_func",
        # sigma grids of the Karras-style samplers (Euler, Heun, LMS, KDPM2, ...), and the flow-grid options
        # that act only together with `use_flow_sigmas` / `use_dynamic_shifting` (refused below when on)
        "use_karras_sigmas",
        "use_exponential_sigmas",
        "use_beta_sigmas",
        "interpolation_type",
        "sigma_min",
        "sigma_max",
        "flow_shift",
        "time_shift_type",
        "shift_terminal",
        "base_shift",
        "max_shift",
        "base_image_seq_len",
        "max_image_seq_len",
    }
)

_FLOW = "a flow-matching model's config: load it with FlowMatchEulerDiscreteScheduler"
# Keys of other schedulers that describe another noise process or another model input: a DDPM sampler that
# dropped them would sample a different model than the one trained. Key -> (is this value harmless?, reason).
PROCESS_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "shift": (lambda v: False, _FLOW),
    "use_flow_sigmas": (lambda v: not v, _FLOW),
    "use_dynamic_shifting": (lambda v: not v, _FLOW),
    "invert_sigmas": (lambda v: not v, _FLOW),
    "stochastic_sampling": (lambda v: not v, _FLOW),
    "snr_shift_scale": (
        lambda v: v == 1.0,
        "CogVideoX's SNR shift rescales alpha_bar, which DDPMScheduler cannot express: use "
        "CogVideoXDDIMScheduler",
    ),
    "scaler": (lambda v: False, "a Wuerstchen model's continuous-time schedule: use DDPMWuerstchenScheduler"),
    "s": (lambda v: False, "a Wuerstchen model's continuous-time schedule: use DDPMWuerstchenScheduler"),
    "sigma_data": (lambda v: False, "an EDM / consistency model (variance exploding, preconditioned)"),
    "sigma_schedule": (lambda v: False, "an EDM model's sigma schedule: use EDMEulerScheduler"),
    "s_churn": (lambda v: False, "a variance-exploding model: use KarrasVeScheduler"),
    "sampling_eps": (lambda v: False, "a variance-exploding SDE: use ScoreSdeVeScheduler"),
    "snr": (lambda v: False, "a variance-exploding SDE: use ScoreSdeVeScheduler"),
    "timestep_type": (
        lambda v: v == "discrete",
        "the model takes continuous timesteps (0.25 log sigma): use EulerDiscreteScheduler",
    ),
    "predict_epsilon": (
        lambda v: bool(v),
        "the old spelling of prediction_type: write prediction_type: sample, not predict_epsilon: false",
    ),
}

# Schedulers whose config holds only DDPM key names but means another process (IPNDM's `betas` are its own
# noise levels, sin^2 over the sampling grid, with alpha = sqrt(1 - beta^2)): recognised by `_class_name`.
PROCESS_CLASSES = {
    "IPNDMScheduler": "IPNDM's noise levels are not a DDPM beta schedule: load it with IPNDMScheduler",
}


def _choice(key: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        names = ", ".join(str(a) for a in allowed)
        raise ValueError(f"{key}={value!r} is not supported; allowed values are {names}")


class LinearNoiseScheduler(SchedulerMixin, ConfigMixin):
    """
    Ancestral sampler and forward-noising process of DDPM (Ho et al. 2020), numerically identical to
    `diffusers.DDPMScheduler` for every config key.

    Inherits config saving/loading (`save_pretrained`, `from_pretrained`, `from_config`) from [`ConfigMixin`]
    and [`SchedulerMixin`].

    Args:
        num_train_timesteps (`int`, defaults to `1000`):
            T, the number of forward diffusion steps the model was trained with. Must be >= 1.
        beta_start (`float`, defaults to `0.0001`):
            beta_0, the forward-process variance at the first step (`linear`, `scaled_linear`, `sigmoid`).
        beta_end (`float`, defaults to `0.02`):
            beta_{T-1}, the variance at the last step; must exceed `beta_start`, and both must lie in (0, 1)
            (`linear`, `scaled_linear` and `sigmoid`). The defaults are the paper's (Sec. 4).
        beta_schedule (`str`, defaults to `"linear"`):
            How betas grow with t, one of `BETA_SCHEDULES`. `linear`: evenly spaced from `beta_start` to
            `beta_end` (the paper). `scaled_linear`: evenly spaced in sqrt(beta), then squared (latent
            diffusion). `squaredcos_cap_v2`: the cosine alpha_bar of Nichol & Dhariwal 2021. `sigmoid`:
            beta_start plus (beta_end - beta_start) times a sigmoid over [-6, 6] (GeoDiff, Xu et al. 2022).
            `laplace`: the Laplace log-SNR schedule of Hang et al. 2024. The cosine and Laplace schedules
            ignore `beta_start` and `beta_end`.
        trained_betas (`np.ndarray` or `list[float]`, *optional*):
            The betas themselves, one per training timestep (length `num_train_timesteps`), each in (0, 1];
            only the last may be 1. Overrides `beta_schedule`, `beta_start` and `beta_end`.
        variance_type (`str`, defaults to `"fixed_small"`):
            Variance sigma_t^2 of the reverse step p(x_{t'} | x_t), one of `VARIANCE_TYPES`. `fixed_small`
            is the posterior variance beta-tilde_t of eq. 7, the right choice when x_0 is a point;
            `fixed_large` is beta_t, right when x_0 ~ N(0, I) (Sec. 3.2; the paper found both to give similar
            samples). The `_log` variants are the same variances computed through their logarithm.
            `learned_range` (Nichol & Dhariwal 2021, eq. 15): the model outputs 2C channels, the second half v
            in [-1, 1] per pixel, and sigma_t^2 = exp(v' log beta_t + (1 - v') log beta-tilde_t) with
            v' = (v + 1) / 2. `learned`: the second half is sigma_t^2 itself (diffusers' convention; Nichol &
            Dhariwal's `learned` outputs its log). `None`, which other schedulers' configs hold, samples as
            `fixed_small`, as in stock.
        clip_sample (`bool`, defaults to `True`):
            Clamp the predicted x_0 to [-clip_sample_range, clip_sample_range] before forming the posterior
            mean. Keeps early, very noisy steps (where the x_0 estimate is poor and large) from leaving the
            data range. Ignored when `thresholding` is on.
        prediction_type (`"epsilon"`, `"v_prediction"` or `"sample"`, defaults to `"epsilon"`):
            What the model outputs: the noise epsilon (the paper), the velocity
            v = sqrt(alpha_bar_t) * epsilon - sqrt(1 - alpha_bar_t) * x_0 (Salimans & Ho 2022), or x_0 itself.
        thresholding (`bool`, defaults to `False`):
            Dynamic thresholding of the predicted x_0 (Saharia et al. 2022, "Photorealistic Text-to-Image
            Diffusion Models with Deep Language Understanding", Sec. 2.3): per image, s is the
            `dynamic_thresholding_ratio` quantile of |x_0|, clamped to [1, `sample_max_value`], and x_0
            becomes clamp(x_0, -s, s) / s. Meant for pixel-space models sampled with strong guidance;
            unsuitable for latent diffusion, whose latents are not bounded by 1.
        dynamic_thresholding_ratio (`float`, defaults to `0.995`):
            The quantile of `thresholding`, in (0, 1].
        clip_sample_range (`float`, defaults to `1.0`):
            Bound used by `clip_sample`; must be > 0.
        sample_max_value (`float`, defaults to `1.0`):
            Largest s of `thresholding`; must be >= 1 (with 1, thresholding is plain clipping to [-1, 1]).
        timestep_spacing (`"leading"`, `"linspace"` or `"trailing"`, defaults to `"leading"`):
            How `set_timesteps` picks a subset of the training timesteps when sampling with fewer steps, as in
            Table 2 of Lin et al. 2024: `leading` takes multiples of T // n counted up from 0, `linspace`
            spreads n points evenly over [0, T - 1], `trailing` counts down from T - 1 in strides of T / n.
        steps_offset (`int`, defaults to `0`):
            Added to every timestep of a `leading` schedule (some model families were trained to expect it).
            Must be >= 0; ignored by the other spacings.
        rescale_betas_zero_snr (`bool`, defaults to `False`):
            Rescale the betas to zero terminal SNR (Lin et al. 2024, Algorithm 1), so that x_T holds no signal
            at all, as the sampler's pure-noise start assumes; lets a model generate very bright or very dark
            images. x_0 cannot be recovered from epsilon at SNR 0, so it needs `v_prediction` or `sample`
            (Lin et al. train with v).

    Differences from stock, each where stock computes nonsense:
        - Refused at construction: betas outside (0, 1) (a beta of 0 adds no noise, 1 erases the signal),
          `beta_end <= beta_start`, `trained_betas` of another length than `num_train_timesteps`, zero
          terminal SNR with `prediction_type="epsilon"`, `clip_sample_range <= 0`, `sample_max_value < 1`.
        - Refused by `set_timesteps`: a `leading` schedule that `steps_offset` pushes past T - 1 (stock fails
          later with an IndexError), negative or empty custom timesteps.
        - `trailing` spacing can make stock's float stride add a spurious timestep -1 (e.g. T = 1000, n = 61);
          this scheduler keeps the n real timesteps.
        - `fixed_large_log`: stock takes the square root of log(beta_t) and samples NaN; here it samples as
          `fixed_large` (noise scale sqrt(beta_t)). `_get_variance` returns log(beta_t), as stock's.
        - After `set_timesteps(timesteps=...)`, `num_inference_steps` is the number of custom timesteps (stock
          leaves the previous value).
        - A model output whose channels do not fit the variance type (2C for `learned` / `learned_range`, C
          otherwise) is refused in `step` (stock broadcasts or fails with a TypeError).
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
        trained_betas: np.ndarray | list[float] | None = None,
        variance_type: str | None = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        _choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
        _choice("variance_type", variance_type, (*VARIANCE_TYPES, None))
        _choice("prediction_type", prediction_type, PREDICTION_TYPES)
        _choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be an integer >= 1, got {num_train_timesteps}")
        if clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be > 0, got {clip_sample_range}")
        if steps_offset < 0:
            raise ValueError(f"steps_offset must be an integer >= 0, got {steps_offset}")
        if not 0 < dynamic_thresholding_ratio <= 1:
            raise ValueError(
                f"dynamic_thresholding_ratio must be a quantile in (0, 1], got {dynamic_thresholding_ratio} "
                "(0.995 is usual)"
            )
        if sample_max_value < 1:
            raise ValueError(
                f"sample_max_value must be >= 1, got {sample_max_value}: thresholding clamps its s to "
                "[1, sample_max_value] (use 1 for plain clipping to [-1, 1])"
            )

        if trained_betas is not None:
            self.betas = self._checked_trained_betas(trained_betas, num_train_timesteps)
        elif beta_schedule == "squaredcos_cap_v2":
            self.betas = cosine_betas(num_train_timesteps)
        elif beta_schedule == "laplace":
            self.betas = alpha_bar_betas(laplace_alpha_bar, num_train_timesteps)
        else:
            self._check_beta_range(beta_start, beta_end, beta_schedule)
            if beta_schedule == "linear":
                self.betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
            elif beta_schedule == "scaled_linear":
                # Latent-diffusion convention: the noise standard deviation, not the variance, grows linearly.
                sqrt_betas = torch.linspace(
                    beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32
                )
                self.betas = sqrt_betas**2
            else:  # sigmoid
                self.betas = (
                    torch.sigmoid(torch.linspace(-6, 6, num_train_timesteps)) * (beta_end - beta_start)
                    + beta_start
                )

        if rescale_betas_zero_snr:
            if num_train_timesteps < 2:
                raise ValueError(
                    "rescale_betas_zero_snr needs num_train_timesteps >= 2: it keeps alpha_bar_0 and moves "
                    "alpha_bar_{T-1} to 0, which one timestep cannot do"
                )
            self.betas = rescale_zero_terminal_snr(self.betas)

        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        if prediction_type == "epsilon" and self.alphas_cumprod[-1] == 0:
            raise ValueError(
                "alpha_bar reaches 0 at the last timestep (zero terminal SNR), where x_0 cannot be "
                "recovered from epsilon (x_T is pure noise): use prediction_type v_prediction (Lin et al. "
                "2024) or sample"
            )
        # alpha_bar "before" the first step (t = -1): nothing has been noised yet.
        self.one = torch.tensor(1.0)

        # x_T ~ N(0, I): samplers multiply their initial Gaussian noise by this.
        self.init_noise_sigma = 1.0

        self.num_inference_steps: int | None = None
        self.custom_timesteps = False
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self.variance_type = variance_type

    @staticmethod
    def _check_beta_range(beta_start: float, beta_end: float, beta_schedule: str) -> None:
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

    @staticmethod
    def _checked_trained_betas(trained_betas: Any, num_train_timesteps: int) -> torch.Tensor:
        betas = torch.tensor(trained_betas, dtype=torch.float32)
        if betas.ndim != 1 or len(betas) != num_train_timesteps:
            raise ValueError(
                f"trained_betas must hold one beta per training timestep: got shape {tuple(betas.shape)} "
                f"for num_train_timesteps={num_train_timesteps}; set num_train_timesteps to its length"
            )
        # A beta of 1 erases the signal: allowed only last (zero terminal SNR), where nothing follows.
        if not (
            torch.isfinite(betas).all() and (betas > 0).all() and (betas[:-1] < 1).all() and betas[-1] <= 1
        ):
            raise ValueError(
                "trained_betas must lie in (0, 1), the last one in (0, 1]: a beta of 0 adds no noise and 1 "
                "erases the signal (only the last may, for zero terminal SNR)"
            )
        return betas

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> tuple[dict, dict, dict]:
        """
        What `from_config` and `from_pretrained` pass to `__init__`, after refusing keys diffusers would drop.

        diffusers' `ConfigMixin.extract_init_dict` silently drops private keys (`_class_name`,
        `_diffusers_version`, ...), keys of the schedulers in `_compatibles` and keys of the class named by
        `_class_name`, and drops any other unknown key with only a logged warning. Dropping is harmless for
        private keys and for `SAMPLER_ONLY_KEYS` (another sampler's own settings: the noise process is the
        one the DDPM keys describe). It is not for `PROCESS_KEYS` (another noise process or model input:
        flow matching, variance exploding, EDM, shifted SNR, continuous timesteps, the old `predict_epsilon`)
        nor for a key no diffusers scheduler has (a typo, or a key of a newer diffusers): those are refused
        with one line naming the key and what to do, as is the config of a scheduler in `PROCESS_CLASSES`.

        Args:
            config_dict (`dict`):
                The scheduler config, as loaded from `scheduler_config.json` or another scheduler's `.config`.
            kwargs:
                Overrides passed to `from_config`; checked like config keys.

        Returns:
            The `(init_dict, unused_kwargs, hidden_config_dict)` of `ConfigMixin.extract_init_dict`.
        """
        source = config_dict.get("_class_name")
        if isinstance(source, str) and source in PROCESS_CLASSES:
            raise ValueError(
                f"a {source} config cannot be loaded into a DDPM scheduler: {PROCESS_CLASSES[source]}"
            )
        own = set(cls._get_init_keys(cls)) - {"self"}
        for key, value in {**config_dict, **kwargs}.items():
            if key.startswith("_") or key in own or key in SAMPLER_ONLY_KEYS:
                continue
            if key in PROCESS_KEYS:
                harmless, reason = PROCESS_KEYS[key]
                if harmless(value):
                    continue
                raise ValueError(
                    f"scheduler config key {key}={value!r} cannot be loaded into a DDPM scheduler: {reason}"
                )
            raise ValueError(
                f"unknown scheduler config key {key!r}: DDPMScheduler's keys are {', '.join(sorted(own))}; "
                "fix the spelling or remove it"
            )
        return super().extract_init_dict(config_dict, **kwargs)

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
                An explicit, strictly decreasing schedule inside [0, num_train_timesteps). `step` then jumps
                from each to the next, and from the last one to x_0.
        """
        total = self.config.num_train_timesteps
        if timesteps is not None:
            if num_inference_steps is not None:
                raise ValueError(
                    "pass either num_inference_steps or timesteps to set_timesteps, not both: "
                    "timesteps=[...] sets the number of steps itself"
                )
            schedule = np.asarray(timesteps, dtype=np.int64)
            if schedule.ndim != 1 or schedule.size == 0:
                raise ValueError(f"timesteps must be a non-empty list of integers, got {timesteps!r}")
            if np.any(np.diff(schedule) >= 0):
                raise ValueError(
                    f"timesteps must be strictly decreasing (from the noisiest step down), got "
                    f"{timesteps!r}: pass sorted(set(timesteps), reverse=True)"
                )
            if schedule[0] >= total or schedule[-1] < 0:
                raise ValueError(
                    f"timesteps must lie in [0, {total - 1}] (num_train_timesteps={total}), got "
                    f"{schedule[0]} .. {schedule[-1]}: drop the ones outside"
                )
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

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """
        The timestep the chain moves to from `timestep`.

        Args:
            timestep (`int` or 0-d `torch.Tensor`):
                The current timestep t.

        Returns:
            `int` or `torch.Tensor`: before `set_timesteps`, `timestep - 1` (an `int` for an `int`). After it,
            the next entry of `self.timesteps` as a 0-d tensor, or `torch.tensor(-1)` ("x_0") after the last
            one, as DDPMScheduler returns them.
        """
        if not (self.custom_timesteps or self.num_inference_steps):
            return timestep - 1
        hits = (self.timesteps == timestep).nonzero(as_tuple=True)[0]
        if len(hits) == 0:
            raise ValueError(
                f"timestep {int(timestep)} is not in the current schedule (self.timesteps, set by "
                "set_timesteps): step through scheduler.timesteps"
            )
        index = int(hits[0])
        return torch.tensor(-1) if index == len(self.timesteps) - 1 else self.timesteps[index + 1]

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

    def _threshold_sample(self, sample: torch.Tensor) -> torch.Tensor:
        """
        Dynamic thresholding (Saharia et al. 2022, Sec. 2.3) of a predicted x_0: per image, s is the
        `dynamic_thresholding_ratio` quantile of |x_0| over all its pixels and channels, clamped to
        [1, `sample_max_value`]; x_0 becomes clamp(x_0, -s, s) / s. Where s = 1 this is plain clipping; where
        s > 1 it pulls saturated pixels inwards instead of flattening them at +-1.

        Args:
            sample (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                The predicted x_0.

        Returns:
            `torch.Tensor`: the thresholded x_0, same shape and dtype (the quantile is taken in float32 for
            half-precision input).
        """
        dtype = sample.dtype
        flat = sample.reshape(sample.shape[0], -1)
        if dtype not in (torch.float32, torch.float64):
            flat = flat.float()  # torch.quantile needs float32 or float64
        s = torch.quantile(flat.abs(), self.config.dynamic_thresholding_ratio, dim=1)
        s = torch.clamp(s, min=1, max=self.config.sample_max_value).unsqueeze(1)
        return (torch.clamp(flat, -s, s) / s).reshape(sample.shape).to(dtype)

    def _split_model_output(
        self, model_output: torch.Tensor, sample: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean part, variance part or None): a learned variance type's 2C output splits into its halves."""
        channels, got = sample.shape[1], model_output.shape[1]
        if self.variance_type in LEARNED_VARIANCE_TYPES:
            if got != 2 * channels:
                raise ValueError(
                    f"variance_type {self.variance_type!r} needs a model output of {2 * channels} channels "
                    f"(the {self.config.prediction_type} prediction, then the variance) for "
                    f"{channels}-channel samples, got {got}: build the UNet with out_channels={2 * channels} "
                    "(hf_ddpm.models.unet_config(..., variance_type=...)) or use a fixed variance type"
                )
            mean_part, variance_part = torch.split(model_output, channels, dim=1)
            return mean_part, variance_part
        if got != channels:
            raise ValueError(
                f"the model output has {got} channels for {channels}-channel samples; a "
                f"{2 * channels}-channel output (with variances) needs variance_type learned_range or learned"
            )
        return model_output, None

    def _get_variance(
        self,
        t: int | torch.Tensor,
        predicted_variance: torch.Tensor | None = None,
        variance_type: str | None = None,
    ) -> torch.Tensor:
        """
        The variance of the reverse step t -> t' (t' = `previous_timestep(t)`), in the form each variance type
        is stored in: a variance, its square root or its logarithm (see Returns). Called by `step` for t > 0,
        and by diffusers pipelines that sample with DDPM variances.

        With beta_t = 1 - alpha_bar_t / alpha_bar_{t'} (the combined beta of the jump) and the posterior
        variance beta-tilde_t = (1 - alpha_bar_{t'}) / (1 - alpha_bar_t) * beta_t of eq. 7, floored at 1e-20
        so that its logarithm is finite at t' = -1.

        Args:
            t (`int` or 0-d `torch.Tensor`):
                The current timestep.
            predicted_variance (`torch.Tensor`, *optional*):
                The variance half of the model output; used by `learned` and `learned_range` only.
            variance_type (`str`, *optional*):
                One of `VARIANCE_TYPES`; `None` uses `config.variance_type`.

        Returns:
            `torch.Tensor`: `fixed_small`: beta-tilde_t. `fixed_small_log`: sqrt(beta-tilde_t) (a standard
            deviation, computed as exp(log(beta-tilde_t) / 2)). `fixed_large`: beta_t. `fixed_large_log`:
            log(beta_t). `learned`: `predicted_variance` itself. `learned_range`: the log variance
            v' log beta_t + (1 - v') log beta-tilde_t with v' = (predicted_variance + 1) / 2 (Nichol &
            Dhariwal 2021, eq. 15).
        """
        prev_t = self.previous_timestep(t)
        alpha_bar_t = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        beta_t = 1 - alpha_bar_t / alpha_bar_prev
        posterior = torch.clamp((1 - alpha_bar_prev) / (1 - alpha_bar_t) * beta_t, min=1e-20)

        kind = variance_type or self.config.variance_type or "fixed_small"
        if kind == "fixed_small":
            return posterior
        if kind == "fixed_small_log":  # the standard deviation, via the log (Janner et al. 2022, Diffuser)
            return torch.exp(0.5 * torch.log(posterior))
        if kind == "fixed_large":
            return beta_t
        if kind == "fixed_large_log":  # GLIDE's max_log
            return torch.log(beta_t)
        if kind == "learned":
            return predicted_variance
        # learned_range: the model's v in [-1, 1] interpolates the log variance between beta-tilde and beta.
        fraction = (predicted_variance + 1) / 2
        return fraction * torch.log(beta_t) + (1 - fraction) * torch.log(posterior)

    def _noise_scale(self, t: int | torch.Tensor, predicted_variance: torch.Tensor | None) -> torch.Tensor:
        """sigma_t, the standard deviation of the noise `step` adds, from `_get_variance`'s stored form."""
        kind = self.variance_type or "fixed_small"
        if kind == "fixed_large_log":
            # Stock takes sqrt(log beta_t), NaN; this is its fixed_large step, the variance meant.
            return self._get_variance(t, variance_type="fixed_large") ** 0.5
        stored = self._get_variance(t, predicted_variance=predicted_variance)
        if kind == "fixed_small_log":
            return stored
        if kind == "learned_range":
            return torch.exp(0.5 * stored)
        return stored**0.5

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

        The model output is first turned into an estimate of x_0 (eq. 15 for epsilon), optionally clipped or
        thresholded, then plugged into the mean of the forward posterior q(x_{t'} | x_t, x_0) of eq. 7. With
        an epsilon model and no clipping this equals the paper's eq. 11 mean,
        (x_t - beta_t / sqrt(1 - alpha_bar_t) * epsilon) / sqrt(alpha_t); going through x_0 is what makes
        clipping possible. When the schedule skips timesteps, alpha_t and beta_t are those of the combined
        jump t -> t': alpha_t = alpha_bar_t / alpha_bar_{t'} (for learned variances this is how Nichol &
        Dhariwal 2021, Sec. 4, sample with fewer steps: the same v interpolates the jump's beta-tilde and
        beta).

        Args:
            model_output (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`):
                The model's prediction at (x_t, t): epsilon, v or x_0 per `config.prediction_type`; for
                `learned` and `learned_range`, `2 * num_channels` channels: that prediction, then the
                variance.
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
            `return_dict` is `False`; both tensors have the shape and dtype of `sample`.
        """
        t = timestep
        prev_t = self.previous_timestep(t)
        model_output, predicted_variance = self._split_model_output(model_output, sample)

        # 1. alpha_bar at both ends of the jump t -> t', and the jump's alpha_t and beta_t
        alpha_bar_t = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        beta_bar_t = 1 - alpha_bar_t
        beta_bar_prev = 1 - alpha_bar_prev
        alpha_t = alpha_bar_t / alpha_bar_prev
        beta_t = 1 - alpha_t

        # 2. the predicted x_0: eq. 15 for epsilon (eq. 4 solved for x_0), its v and x_0 counterparts
        pred_original_sample = self._predict_original(model_output, sample, alpha_bar_t, beta_bar_t)

        # 3. keep the predicted x_0 in the data range: dynamic thresholding, else clipping
        if self.config.thresholding:
            pred_original_sample = self._threshold_sample(pred_original_sample)
        elif self.config.clip_sample:
            bound = self.config.clip_sample_range
            pred_original_sample = pred_original_sample.clamp(-bound, bound)

        # 4. eq. 7: mu-tilde(x_t, x_0) = sqrt(alpha_bar_{t'}) beta_t / (1 - alpha_bar_t) * x_0
        #                               + sqrt(alpha_t) (1 - alpha_bar_{t'}) / (1 - alpha_bar_t) * x_t
        x0_coeff = (alpha_bar_prev**0.5 * beta_t) / beta_bar_t
        xt_coeff = alpha_t**0.5 * beta_bar_prev / beta_bar_t
        prev_sample = x0_coeff * pred_original_sample + xt_coeff * sample

        # 5. Algorithm 2 adds sigma_t z only for t > 0: the last step returns the mean. A schedule that ends
        # above 0 (trailing spacing, steps_offset, custom timesteps) still gets noise at its last step, as in
        # DDPMScheduler. fixed_small's beta-tilde is exactly 0 when t' = -1; the 1e-20 floor of
        # `_get_variance` makes such a step add the same 1e-10 * z as stock.
        if t > 0:
            z = randn_tensor(
                model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
            )
            prev_sample = prev_sample + self._noise_scale(t, predicted_variance) * z

        if not return_dict:
            return prev_sample, pred_original_sample
        return LinearNoiseSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
