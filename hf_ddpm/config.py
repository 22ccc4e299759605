"""Typed training configuration: the YAML sections `dataset`, `model`, `diffusion`, `training` of a DDPM run
(`Config`), and `dataset`, `autoencoder`, `training` of an autoencoder run (`AutoencoderRunConfig`).

The dataclasses below are the single source of truth for every key a config file or a dotted CLI
override (`--training.learning_rate 2e-4`) may set. Unknown keys and wrong types fail with the key's
full name, so a typo never trains silently with a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


@dataclass
class DatasetConfig:
    # Hub dataset id, used when no local copy is given.
    name: str | None = "ylecun/mnist"
    # Local folder: parquet files in the Hub's schema (`train-*.parquet`, ...) or an image folder.
    # A relative path is looked up in $HF_DDPM_DATA_DIR first, then in the working directory.
    path: str | None = None
    split: str = "train"
    image_column: str = "image"
    label_column: str = "label"
    image_size: int = 28
    # 1 (grayscale) or 3 (RGB): images are converted to it. None keeps the data's own channels.
    channels: int | None = None
    random_flip: bool = False
    # Train on the first N rows only (tests, quick looks).
    max_samples: int | None = None
    # Stream rows instead of decoding the split into memory once (data larger than memory or disk).
    streaming: bool = False
    shuffle_buffer_size: int = 10_000


@dataclass
class ModelConfig:
    # A `UNet2DModel` preset from `hf_ddpm.models.PRESETS`: tiny | small | cpu | tutorial (latent-*: latents).
    preset: str = "small"
    dropout: float = 0.0
    # Changes to the preset's shape (null keeps the preset's): channels per resolution level from the image
    # size down (`UNet2DModel.block_out_channels`), ResNet layers per block, and which levels hold
    # self-attention, e.g. [false, false, true] for attention at 7x7 only (the mid block always has it).
    block_out_channels: list[int] | None = None
    layers_per_block: int | None = None
    attention_levels: list[bool] | None = None
    # Condition on the dataset's ClassLabel column (dataset.label_column): the UNet gets a class embedding
    # of num_classes + 1 entries, the last one the learned null class of classifier-free guidance
    # (Ho & Salimans 2021), and the export is pipelines/class_conditional_ddpm.py's pipeline.
    class_conditional: bool = False
    # Latent diffusion (Rombach et al. 2022): an AutoencoderKL folder or Hub repo (as written by
    # training/train_autoencoder.py). The data are encoded once, the UNet (a `latent-*` preset) learns the
    # scaled latents, and the export is pipelines/latent_ddpm.py's pipeline. None: diffusion on pixels.
    latent_autoencoder: str | None = None
    # Fine-tuning: a pipeline folder or Hub repo whose UNet weights start training (diffusers' examples'
    # `--pretrained_model_name_or_path`). Its shape must be this config's; a class-conditional model may start
    # from an unconditional one, its class embedding at zero so that every class begins as that model.
    pretrained_model_name_or_path: str | None = None

    def unet_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of `hf_ddpm.models.build_unet` besides the preset and the image geometry."""
        shape = {k: getattr(self, k) for k in ("block_out_channels", "layers_per_block", "attention_levels")}
        return {"dropout": self.dropout, **{k: v for k, v in shape.items() if v is not None}}


@dataclass
class DiffusionConfig:
    """The objective (`OBJECTIVE_KEYS`), and the keyword arguments of `LinearNoiseScheduler` (and of stock
    `DDPMScheduler`), same names and defaults."""

    # `ddpm`: Ho et al.'s noising process; the UNet predicts `prediction_type`'s target.
    # `flow_matching` (Lipman et al. 2023; Liu et al. 2023): x_t = (1 - t) x_0 + t noise on a straight line,
    # the UNet predicts the velocity noise - x_0 at timestep t * num_train_timesteps, and the export samples
    # with `FlowMatchEulerDiscreteScheduler`. The beta and variance keys below do not apply to it.
    objective: Literal["ddpm", "flow_matching"] = "ddpm"
    # Flow matching's t: `uniform` on [0, 1], or `logit_normal`: sigmoid of N(logit_mean, logit_std^2)
    # (Esser et al. 2024), which trains the middle of the path, where the velocity is hardest, more often.
    time_sampling: Literal["uniform", "logit_normal"] = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    # The scheduler's keys, in DDPMScheduler's order; see hf_ddpm/scheduler.py for what each does.
    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid", "laplace"] = "linear"
    # The betas themselves, one per timestep (overrides beta_schedule, beta_start and beta_end).
    trained_betas: list[float] | None = None
    # learned_range: the UNet also predicts its variances (2x the channels), trained with L_hybrid (Nichol &
    # Dhariwal 2021); sampled by the ddpm sampler only. `learned` and `fixed_large_log` cannot be trained
    # here (see _check_variance).
    variance_type: Literal[
        "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"
    ] = "fixed_small"
    clip_sample: bool = True
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    # Dynamic thresholding of the predicted x_0 when sampling (Saharia et al. 2022), instead of clipping.
    thresholding: bool = False
    dynamic_thresholding_ratio: float = 0.995
    clip_sample_range: float = 1.0
    sample_max_value: float = 1.0
    timestep_spacing: Literal["leading", "linspace", "trailing"] = "leading"
    steps_offset: int = 0
    # Zero terminal SNR (Lin et al. 2024): x_T holds no signal at all; needs prediction_type v_prediction.
    rescale_betas_zero_snr: bool = False

    @property
    def flow_matching(self) -> bool:
        return self.objective == "flow_matching"

    def scheduler_kwargs(self) -> dict[str, Any]:
        """The `LinearNoiseScheduler` / `DDPMScheduler` arguments: every key but the objective's."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in OBJECTIVE_KEYS}


OBJECTIVE_KEYS = ("objective", "time_sampling", "logit_mean", "logit_std")


@dataclass
class LoopConfig:
    """The keys of the training loop both trainers share (`hf_ddpm.training.loop`)."""

    output_dir: str = "outputs/run"
    seed: int = 0
    train_batch_size: int = 64
    max_train_steps: int = 2000
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    lr_warmup_steps: int = 100
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    # A step whose loss is NaN or inf (on any process) updates nothing and is counted (`nonfinite_steps` in
    # the logs); this many in a row stop the run with a message, leaving the last checkpoint as it was.
    max_nonfinite_steps: int = 5
    # `no`, `bf16`, `fp16` or `auto`: bf16 where the device computes it natively (a GPU with bf16, a CPU
    # with AVX-512 or AMX), else `no`, since bf16 autocast on an AVX2-only CPU is about 10x slower than
    # fp32. It wins over `accelerate launch --mixed_precision` and the accelerate config, which decide only
    # when this is null. The run logs the precision it uses and config.yaml records it (never `auto`).
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] | None = "no"
    # Exponential moving average of the weights (diffusers' `EMAModel`). With `ema_warmup` the decay grows
    # as 1 - (1 + step / inv_gamma) ** -power up to max_decay; without it, it is max_decay from the start.
    use_ema: bool = True
    ema_max_decay: float = 0.9999
    ema_warmup: bool = True
    ema_inv_gamma: float = 1.0
    ema_power: float = 0.75
    dataloader_num_workers: int = 0
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 2
    # "latest" or a checkpoint folder.
    resume_from_checkpoint: str | None = None
    report_to: Literal["tensorboard", "none"] = "tensorboard"
    # Where the output is not a terminal (nohup, a cluster's log), one line every this many steps (loss, lr,
    # images per second, time left) instead of a progress bar.
    logging_steps: int = 50
    # Evaluation on this many test images, with this classifier folder (None: the data set's own,
    # `hf_ddpm.classifier.load_classifier`).
    eval_num_images: int = 500
    eval_classifier: str | None = None


@dataclass
class TrainingConfig(LoopConfig):
    """training/train.py's `training` section: the loop's keys and the diffusion run's own."""

    output_dir: str = "outputs/ddpm-mnist"
    train_batch_size: int = 128
    # Min-SNR loss weighting (Hang et al. 2023): each timestep's loss is weighted by
    # min(SNR_t, gamma) / SNR_t (epsilon target; see objectives.py). None: plain L_simple.
    snr_gamma: float | None = None
    # Another per-timestep loss weighting (the name diffusers' training examples use), exclusive with
    # snr_gamma: `p2`, perception-prioritized weighting (Choi et al. 2022), 1 / (1 + SNR_t) on the eps loss.
    weighting_scheme: Literal["none", "p2"] = "none"
    # Keep the UNet's weights and activations in channels-last (NHWC) memory order, which some convolution
    # kernels run faster in (benchmarks/throughput.py measures it); the results are the same up to rounding.
    channels_last: bool = False
    # Sample grids from the EMA weights during training (samples/step_000500.png) and at the end.
    save_images_steps: int = 500
    num_sample_images: int = 64
    # A name of `hf_ddpm.samplers.SAMPLERS`: ddpm, ddim or dpm-solver for the ddpm objective; flow-euler or
    # dpm-solver for flow_matching.
    sampler: str = "ddpm"
    num_inference_steps: int = 1000
    # Class-conditional models: the probability that a training label is replaced by the null class, so
    # the one network also learns the unconditional model; and the guidance scale w of sample grids and
    # evaluations (0: unconditional, 1: conditional, > 1: guided).
    cond_drop_prob: float = 0.1
    guidance_scale: float = 2.0
    # Every `eval_every` steps (0: never), sample `eval_num_images` from the EMA weights with a fast sampler
    # and score them with the data set's classifier (hf_ddpm.metrics): logged as eval/*, appended to
    # eval_log.jsonl, and the best classifier-FID so far is exported to OUTPUT_DIR/best/.
    eval_every: int = 0
    eval_sampler: str = "dpm-solver"
    eval_num_inference_steps: int = 20
    # The Hub, as in diffusers' training examples: at the end, the main process uploads the pipeline, the
    # model card (README.md), samples.png and config.yaml (see hf_ddpm/hub.py).
    push_to_hub: bool = False
    # `org/name`, or `name` for the token's user; default: the output folder's name.
    hub_model_id: str | None = None
    hub_private_repo: bool = False
    # A write token; None uses $HF_TOKEN or the saved `hf auth login`. Never written anywhere (see to_dict).
    hub_token: str | None = None
    # Licence of the weights in the model card: a licence id the Hub accepts (`hf_ddpm.hub.HUB_LICENSES`).
    # Data with unclear rights (textures) always get "other".
    hub_license: str = "apache-2.0"


@dataclass
class AutoencoderConfig:
    """A diffusers `AutoencoderKL`: one `DownEncoderBlock2D` per entry of `block_out_channels`, all but the
    last halving the size, so [32, 64, 64] maps 28x28 images to `latent_channels` x 7 x 7 latents."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    # Weight of KL(q(z|x) || N(0, I)) (summed over latent elements, averaged over images) beside the mean
    # squared pixel error: small, so the latents keep the detail, yet enough to keep their scale bounded.
    kl_weight: float = 1e-6


@dataclass
class AutoencoderTrainingConfig(LoopConfig):
    """training/train_autoencoder.py's `training` section: the loop's keys, other defaults."""

    output_dir: str = "outputs/autoencoder-mnist"
    adam_weight_decay: float = 0.01
    use_ema: bool = False
    ema_max_decay: float = 0.999
    ema_warmup: bool = False
    # Reconstruction metrics on this many test images; the classifier of hf_ddpm.metrics reads them.
    eval_num_images: int = 10_000


class _Sections:
    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        from .files import write_atomically

        write_atomically(path, self.to_yaml())

    def check(self) -> None:
        """Checks between keys, after each key's own type check."""


@dataclass
class Config(_Sections):
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The config as nested dicts, with secrets blanked: config.yaml, TensorBoard's hparams and the model
        card are all written from here, and the token must reach none of them (null means $HF_TOKEN)."""
        values = dataclasses.asdict(self)
        values["training"]["hub_token"] = None
        return values

    def check(self) -> None:
        _check_values(self)


@dataclass
class AutoencoderRunConfig(_Sections):
    """training/train_autoencoder.py's config."""

    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    training: AutoencoderTrainingConfig = field(default_factory=AutoencoderTrainingConfig)

    def check(self) -> None:
        _check_minimums(self)
        if self.dataset.streaming:
            raise ValueError(
                "the autoencoder's scaling_factor is measured on the whole split, in memory: set "
                "dataset.streaming false"
            )
        a = self.autoencoder
        if not a.block_out_channels or any(c % a.norm_num_groups for c in a.block_out_channels):
            raise ValueError(
                f"autoencoder.block_out_channels {a.block_out_channels} must be non-empty multiples of "
                f"autoencoder.norm_num_groups ({a.norm_num_groups})"
            )
        halvings = len(a.block_out_channels) - 1
        if self.dataset.image_size % 2**halvings:
            raise ValueError(
                f"dataset.image_size {self.dataset.image_size} cannot be halved {halvings} times by "
                f"autoencoder.block_out_channels {a.block_out_channels}: use a multiple of {2**halvings}"
            )


# Named in error messages as the example of a valid file.
_EXAMPLE = "training/configs/mnist.yaml"


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, schema: type[_Sections] = Config
) -> Any:
    """Reads a YAML config (or the defaults when `path` is None) and applies dotted overrides.

    Args:
        path: YAML file with any of the sections of `schema` (`dataset`, `model`, `diffusion`, `training`).
        overrides: `["--training.learning_rate", "2e-4", "--dataset.path=/data/mnist", ...]`.
        schema: `Config` (a DDPM run) or `AutoencoderRunConfig`.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise ValueError(f"config {path} is not a file: pass --config a YAML file such as {_EXAMPLE}")
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ValueError(
                f"config {path} is not valid YAML ({problem}{where}): fix the syntax there"
            ) from err
        if not isinstance(raw, dict):
            raise ValueError(
                f"config {path}: expected a mapping of sections, got {type(raw).__name__}; write the "
                f"sections dataset:, model:, diffusion:, training: as top-level keys, see {_EXAMPLE}"
            )
    for key, value in _parse_overrides(overrides or []):
        section, _, name = key.partition(".")
        if not name:
            raise ValueError(f"override --{key}: use --SECTION.KEY VALUE, e.g. --training.learning_rate 2e-4")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ValueError(_not_a_mapping(section, raw[section]))
        raw[section][name] = yaml.safe_load(value) if value != "" else None
    return from_dict(raw, schema)


def from_dict(raw: dict[str, Any], schema: type[_Sections] = Config) -> Any:
    sections = typing.get_type_hints(schema)
    unknown = set(raw) - set(sections)
    if unknown:
        raise ValueError(
            f"unknown config section(s) {sorted(unknown, key=str)}: allowed are {list(sections)}"
        )
    built = {}
    for name, cls in sections.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise ValueError(_not_a_mapping(name, values))
        built[name] = _build_section(name, cls, values)
    config = schema(**built)
    config.check()
    return config


def _not_a_mapping(section: str, value: Any) -> str:
    return (
        f"config section '{section}' must be a mapping, got {type(value).__name__} {value!r}: write its "
        f"keys indented below '{section}:', one 'key: value' per line (see {_EXAMPLE})"
    )


# Smallest allowed value of numeric keys: a 0 here would divide by zero, loop forever or build an empty model
# far into a run, so it fails at load time instead.
_MINIMUM = {
    "dataset.image_size": 1,
    "dataset.max_samples": 1,
    "dataset.shuffle_buffer_size": 1,
    "diffusion.num_train_timesteps": 1,
    "training.train_batch_size": 1,
    "training.max_train_steps": 1,
    "training.gradient_accumulation_steps": 1,
    "training.lr_warmup_steps": 0,
    "training.max_nonfinite_steps": 1,
    "training.dataloader_num_workers": 0,
    "training.checkpointing_steps": 1,
    "training.logging_steps": 1,
    "training.checkpoints_total_limit": 1,
    "training.save_images_steps": 1,
    "training.num_sample_images": 1,
    "training.num_inference_steps": 1,
    "training.eval_every": 0,
    "training.eval_num_images": 2,  # a Frechet distance needs a covariance
    "training.eval_num_inference_steps": 1,
}


def _check_minimums(config: _Sections) -> None:
    for key, low in _MINIMUM.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section, None), name, None)
        if value is not None and value < low:
            raise ValueError(f"{key} is {value}: it must be at least {low}")


def _check_values(config: Config) -> None:
    """Ranges, and the combinations the model needs (a preset that exists, an image size it can halve)."""
    _check_minimums(config)
    if config.dataset.channels not in (None, 1, 3):
        raise ValueError(
            f"dataset.channels is {config.dataset.channels}: use 1 (grayscale), 3 (RGB) or null (keep the "
            "data's own)"
        )
    _check_objective(config)
    t = config.training
    if config.model.class_conditional and not 0 <= t.cond_drop_prob < 1:
        raise ValueError(
            f"training.cond_drop_prob is {t.cond_drop_prob}: use a probability in [0, 1) (0.1 is usual; 0 "
            "never trains the unconditional model that guidance needs)"
        )
    if t.guidance_scale < 0:
        raise ValueError(
            f"training.guidance_scale is {t.guidance_scale}: use w >= 0 (0 unconditional, 1 conditional)"
        )
    if config.model.latent_autoencoder and config.dataset.streaming:
        raise ValueError(
            "latent diffusion encodes the training split once, in memory: set dataset.streaming false"
        )
    if config.model.latent_autoencoder and (config.diffusion.clip_sample or config.diffusion.thresholding):
        # DDPM and DDIM sampling clamp x_0 to the pixels' range; DPM-Solver++ does not, which hides the damage
        # from the evaluations (DDIM-50 legibility 0.17 with the clamp, 0.88 without, on ldm-mnist).
        raise ValueError(
            "diffusion.clip_sample and diffusion.thresholding clamp the predicted x_0 to the pixels' range, "
            "but an autoencoder's latents are unbounded (a quarter of MNIST's lie beyond ±1): set both false "
            "for latent diffusion"
        )
    from .hub import HUB_LICENSES

    if t.hub_license not in HUB_LICENSES:
        raise ValueError(
            f"training.hub_license {t.hub_license!r} is not a licence id the Hub accepts (it would refuse "
            "the model card at push time): use one such as apache-2.0, mit, cc-by-4.0 or other (the list "
            "is hf_ddpm.hub.HUB_LICENSES)"
        )
    _check_variance(config)
    _check_scheduler(config.diffusion)
    from .models import unet_config  # no torch import: only the preset table

    # A latent UNet's input size is the autoencoder's latent size, checked once the autoencoder is loaded.
    if config.model.latent_autoencoder is None:
        unet_config(config.model.preset, config.dataset.image_size, **config.model.unet_kwargs())


def _check_objective(config: Config) -> None:
    """Keys that belong to the other objective are refused rather than silently ignored."""
    d, t = config.diffusion, config.training
    flow = d.flow_matching
    if d.logit_std <= 0:
        raise ValueError(f"diffusion.logit_std is {d.logit_std}: it must be positive (1.0 is usual)")
    if t.snr_gamma is not None and t.weighting_scheme != "none":
        raise ValueError(
            f"training.snr_gamma (Min-SNR) and training.weighting_scheme {t.weighting_scheme!r} are two loss "
            "weightings: set one of them (snr_gamma null, or weighting_scheme none)"
        )
    if flow and t.weighting_scheme != "none":
        raise ValueError(
            f"training.weighting_scheme {t.weighting_scheme!r} weights the DDPM objective's timesteps; flow "
            "matching's loss is the plain velocity MSE: set it to none"
        )
    if flow and t.snr_gamma is not None:
        raise ValueError(
            "training.snr_gamma (Min-SNR) weights the DDPM objective's timesteps; flow matching's loss is "
            "the plain velocity MSE: set training.snr_gamma null, or choose its times with "
            "diffusion.time_sampling"
        )
    if flow and d.prediction_type != "epsilon":
        raise ValueError(
            f"diffusion.prediction_type {d.prediction_type!r} is a DDPM target; flow matching always "
            "predicts the velocity: leave prediction_type at its default"
        )
    from .samplers import check_sampler

    for key in ("sampler", "eval_sampler"):
        check_sampler(getattr(t, key), d.objective, key=f"training.{key}")


def _check_variance(config: Config) -> None:
    """Variance types that train and export here: the fixed ones but `fixed_large_log`, and learned_range for
    unconditional pixel models sampled by the ddpm sampler."""
    d, t, m = config.diffusion, config.training, config.model
    if d.variance_type == "fixed_large_log":
        raise ValueError(
            "diffusion.variance_type fixed_large_log: stock DDPMScheduler samples it as sqrt(log beta_t), "
            "which is NaN, so the exported pipeline would draw NaN; use fixed_large, the same variance"
        )
    if d.variance_type == "learned":
        raise ValueError(
            "diffusion.variance_type learned: stock DDPMScheduler reads the UNet's variance channels as the "
            "variance itself, which training cannot keep positive; use learned_range (Nichol & Dhariwal 2021)"
        )
    if d.variance_type != "learned_range":
        return
    if d.flow_matching:
        raise ValueError(
            "diffusion.variance_type learned_range learns the variances of the DDPM's reverse steps; flow "
            "matching has none: leave variance_type at its default"
        )
    if m.class_conditional or m.latent_autoencoder:
        raise ValueError(
            "diffusion.variance_type learned_range is supported for unconditional pixel-space models only "
            "(the guided and latent pipelines mix or decode whole UNet outputs): set model.class_conditional "
            "false and model.latent_autoencoder null, or use a fixed variance type"
        )
    for key in ("sampler", "eval_sampler") if t.eval_every else ("sampler",):
        if getattr(t, key) != "ddpm":
            raise ValueError(
                f"training.{key} {getattr(t, key)!r} cannot sample a learned_range model (diffusers' DDIM "
                "ignores its variance channels and DPM-Solver reads 3 of them as the mean): use ddpm, with "
                "fewer steps (training.num_inference_steps, training.eval_num_inference_steps) for speed"
            )


def _check_scheduler(diffusion: DiffusionConfig) -> None:
    """The scheduler's own checks of the diffusion keys (beta ranges, trained betas, zero terminal SNR, ...),
    at load time rather than when training starts."""
    if diffusion.flow_matching:
        return
    from .scheduler import LinearNoiseScheduler

    try:
        LinearNoiseScheduler(**diffusion.scheduler_kwargs())
    except ValueError as err:
        raise ValueError(f"diffusion: {err}") from None


def _build_section(section: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    unknown = set(values) - set(hints)
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(f'{section}.{k}' for k in sorted(unknown, key=str))}: "
            f"'{section}' accepts {', '.join(hints)}"
        )
    return cls(**{k: _coerce(f"{section}.{k}", v, hints[k]) for k, v in values.items()})


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Checks `value` against a field's annotation; ints widen to float and numeric strings
    such as YAML's `1e-4` (which PyYAML reads as a string) become floats."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, arg)
            except ValueError:
                pass
        choices = [c for a in args if typing.get_origin(a) is Literal for c in typing.get_args(a)]
        if choices:  # an optional choice: name the choices, and null
            allowed = choices + ([None] if type(None) in args else [])
            raise ValueError(f"{key}: got {value!r}, allowed values are {allowed}")
        raise ValueError(f"{key}: expected {_type_name(annotation)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list such as [32, 64], got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(annotation)
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is Literal:
        choices = typing.get_args(annotation)
        if isinstance(value, bool):
            # YAML 1.1 reads a bare `no` (mixed_precision: no) as False: map it back to the word meant.
            words = ("yes", "on", "true") if value else ("no", "off", "false")
            value = next((w for w in words if w in choices), value)
        if value not in choices:
            raise ValueError(f"{key}: got {value!r}, allowed values are {list(choices)}")
        return value
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, annotation):
        return value
    raise ValueError(f"{key}: expected {_type_name(annotation)}, got {type(value).__name__} {value!r}")


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation))


def _parse_overrides(args: list[str]) -> list[tuple[str, str]]:
    pairs, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ValueError(
                f"unexpected argument {arg!r}: overrides look like --training.max_train_steps 100"
            )
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        elif i + 1 < len(args):
            key, value = arg[2:], args[i + 1]
            i += 2
        else:
            raise ValueError(f"override {arg} has no value")
        pairs.append((key, value))
    return pairs
