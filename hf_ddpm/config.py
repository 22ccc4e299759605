"""Typed training configuration: the YAML sections `dataset`, `model`, `diffusion`, `training`.

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
    # A `UNet2DModel` preset from `hf_ddpm.models.PRESETS`: tiny | small | tutorial.
    preset: str = "small"
    dropout: float = 0.0
    # Condition on the dataset's ClassLabel column (dataset.label_column): the UNet gets a class embedding
    # of num_classes + 1 entries, the last one the learned null class of classifier-free guidance
    # (Ho & Salimans 2021), and the export is pipelines/class_conditional_ddpm.py's pipeline.
    class_conditional: bool = False


@dataclass
class DiffusionConfig:
    """Keyword arguments of `LinearNoiseScheduler` (and of stock `DDPMScheduler`), same names and defaults."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    variance_type: str = "fixed_small"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0


@dataclass
class TrainingConfig:
    output_dir: str = "outputs/ddpm-mnist"
    seed: int = 0
    train_batch_size: int = 128
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
    # Min-SNR loss weighting (Hang et al. 2023): each timestep's loss is weighted by
    # min(SNR_t, gamma) / SNR_t (epsilon target; see objectives.py). None: plain L_simple.
    snr_gamma: float | None = None
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # Exponential moving average of the weights, with the warmup of diffusers' `EMAModel`
    # (decay = 1 - (1 + step / inv_gamma) ** -power, capped at max_decay).
    use_ema: bool = True
    ema_max_decay: float = 0.9999
    ema_inv_gamma: float = 1.0
    ema_power: float = 0.75
    dataloader_num_workers: int = 0
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 2
    # "latest" or a checkpoint folder.
    resume_from_checkpoint: str | None = None
    # Sample grids from the EMA weights during training (samples/step_000500.png) and at the end.
    save_images_steps: int = 500
    num_sample_images: int = 64
    sampler: Literal["ddpm", "ddim", "dpm-solver"] = "ddpm"
    num_inference_steps: int = 1000
    # Class-conditional models: the probability that a training label is replaced by the null class, so
    # the one network also learns the unconditional model; and the guidance scale w of sample grids and
    # evaluations (0: unconditional, 1: conditional, > 1: guided).
    cond_drop_prob: float = 0.1
    guidance_scale: float = 2.0
    report_to: Literal["tensorboard", "none"] = "tensorboard"
    # Every `eval_every` steps (0: never), sample `eval_num_images` from the EMA weights with a fast sampler
    # and score them with the data set's classifier (hf_ddpm.metrics): logged as eval/*, appended to
    # eval_log.jsonl, and the best classifier-FID so far is exported to OUTPUT_DIR/best/.
    eval_every: int = 0
    eval_num_images: int = 500
    eval_sampler: Literal["ddpm", "ddim", "dpm-solver"] = "dpm-solver"
    eval_num_inference_steps: int = 20
    # A classifier folder; None: checkpoints/classifier-<last part of the dataset name>.
    eval_classifier: str | None = None
    # The Hub, as in diffusers' training examples: at the end, the main process uploads the pipeline, the
    # model card (README.md), samples.png and config.yaml (see hf_ddpm/hub.py).
    push_to_hub: bool = False
    # `org/name`, or `name` for the token's user; default: the output folder's name.
    hub_model_id: str | None = None
    hub_private_repo: bool = False
    # A write token; None uses $HF_TOKEN or the saved `hf auth login`. Never written anywhere (see to_dict).
    hub_token: str | None = None
    # Licence of the weights in the model card. Data with unclear rights (textures) always get "other".
    hub_license: str = "apache-2.0"


@dataclass
class Config:
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

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Reads a YAML config (or the defaults when `path` is None) and applies dotted overrides.

    Args:
        path: YAML file with any of the sections `dataset`, `model`, `diffusion`, `training`.
        overrides: `["--training.learning_rate", "2e-4", "--dataset.path=/data/mnist", ...]`.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"config {path}: expected a mapping of sections, got {type(raw).__name__}")
    for key, value in _parse_overrides(overrides or []):
        section, _, name = key.partition(".")
        if not name:
            raise ValueError(f"override --{key}: use --SECTION.KEY VALUE, e.g. --training.learning_rate 2e-4")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ValueError(f"config section '{section}' must be a mapping")
        raw[section][name] = yaml.safe_load(value) if value != "" else None
    return from_dict(raw)


def from_dict(raw: dict[str, Any]) -> Config:
    sections = typing.get_type_hints(Config)
    unknown = set(raw) - set(sections)
    if unknown:
        raise ValueError(f"unknown config section(s) {sorted(unknown)}: allowed are {list(sections)}")
    built = {}
    for name, cls in sections.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise ValueError(f"config section '{name}' must be a mapping, got {type(values).__name__}")
        built[name] = _build_section(name, cls, values)
    return Config(**built)


def _build_section(section: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    unknown = set(values) - set(hints)
    if unknown:
        raise ValueError(
            f"unknown key(s) {', '.join(f'{section}.{k}' for k in sorted(unknown))}: "
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
        raise ValueError(f"{key}: expected {_type_name(annotation)}, got {value!r}")
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
