import inspect
import re
from pathlib import Path

import pytest
import yaml
from diffusers import DDPMScheduler

from hf_ddpm.config import OBJECTIVE_KEYS, AutoencoderRunConfig, Config, DiffusionConfig, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "training" / "configs").glob("*.yaml"))


def test_diffusion_defaults_are_stock_ddpm_defaults():
    stock = inspect.signature(DDPMScheduler.__init__).parameters
    for key, value in DiffusionConfig().scheduler_kwargs().items():
        assert stock[key].default == value, key


def test_diffusion_keys_are_scheduler_arguments():
    from hf_ddpm import LinearNoiseScheduler

    ours = inspect.signature(LinearNoiseScheduler.__init__).parameters
    assert {k: p.default for k, p in ours.items() if k != "self"} == DiffusionConfig().scheduler_kwargs()
    # Every other key is the objective's, which no scheduler takes.
    assert set(vars(DiffusionConfig())) - set(ours) == set(OBJECTIVE_KEYS)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_parse(path):
    # training/train_autoencoder.py's configs have their own sections.
    schema = AutoencoderRunConfig if path.stem.startswith("autoencoder-") else Config
    cfg = load_config(path, schema=schema)
    assert isinstance(cfg, schema)
    # Every key written in the file survived parsing with its value.
    for section, values in yaml.safe_load(path.read_text()).items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == (
                float(value) if isinstance(value, str) and key.endswith(("rate", "start", "end")) else value
            )


def test_overrides_apply_and_coerce(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  learning_rate: 1e-4\n  max_train_steps: 10\n")
    cfg = load_config(
        path,
        [
            "--training.learning_rate",
            "2e-4",
            "--dataset.path=/data/mnist",
            "--training.checkpoints_total_limit",
            "null",
        ],
    )
    assert cfg.training.learning_rate == pytest.approx(2e-4)
    assert isinstance(cfg.training.learning_rate, float)
    assert cfg.training.max_train_steps == 10
    assert cfg.dataset.path == "/data/mnist"
    assert cfg.training.checkpoints_total_limit is None


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    # PyYAML reads `1e-4` as the string "1e-4"; the config must still get a float.
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  learning_rate: 1e-4\n")
    assert load_config(path).training.learning_rate == pytest.approx(1e-4)


def test_bare_yaml_no_is_the_word_no(tmp_path):
    # YAML 1.1 reads `no` as False; `mixed_precision: no` must still mean the choice "no".
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  mixed_precision: bf16\n")
    assert load_config(path, ["--training.mixed_precision", "no"]).training.mixed_precision == "no"
    path.write_text("training:\n  mixed_precision: no\n")
    assert load_config(path).training.mixed_precision == "no"
    with pytest.raises(ValueError, match="training.report_to"):
        load_config(None, ["--training.report_to", "yes"])


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["--training.learnin_rate", "1"], "training.learnin_rate"),
        (["--trainer.seed", "1"], "trainer"),
        (["--training.max_train_steps", "many"], "training.max_train_steps: expected int"),
        (["--training.max_train_steps", "1.5"], "training.max_train_steps"),
        (["--training.use_ema", "7"], "training.use_ema: expected bool"),
        (["--training.mixed_precision", "fp8"], r"training.mixed_precision.*\['no', 'bf16', 'fp16'"),
        (["--seed", "1"], "--SECTION.KEY"),
        (["--training.seed"], "has no value"),
        (["seed"], "unexpected argument"),
    ],
)
def test_bad_config_names_the_key(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, overrides)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["--model.preset", "tiny", "--training.learning_rate", "3e-4"])
    cfg.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    "text, match",
    [
        ("- dataset\n- model\n", r"expected a mapping of sections, got list; write the sections dataset:"),
        ("just a word\n", "expected a mapping of sections, got str"),
        ("training: [1, 2\n", r"is not valid YAML \(.* at line 2, column 1\): fix the syntax"),
        ("training: 5\n", r"section 'training' must be a mapping, got int 5: write its keys indented"),
        ("trainer:\n  seed: 1\n", r"unknown config section\(s\) \['trainer'\]: allowed are"),
        ("training:\n  learnin_rate: 1\n", r"unknown key\(s\) training.learnin_rate: 'training' accepts"),
        ("training:\n  1: 2\n  foo: 3\n", r"unknown key\(s\) training.1, training.foo"),
        ("training:\n  max_train_steps: many\n", "training.max_train_steps: expected int, got str 'many'"),
        (
            "training:\n  learning_rate: [1, 2]\n",
            r"training.learning_rate: expected float, got list \[1, 2\]",
        ),
        ("dataset:\n  path: 5\n", "dataset.path: expected str | None, got 5"),
        ("training:\n  checkpointing_steps: 0\n", "training.checkpointing_steps is 0: it must be at least 1"),
        ("training:\n  train_batch_size: -2\n", "training.train_batch_size is -2: it must be at least 1"),
        ("dataset:\n  channels: 2\n", r"dataset.channels is 2: use 1 \(grayscale\), 3 \(RGB\) or null"),
        ("model:\n  preset: huge\n", r"model.preset 'huge' is unknown: choose one of \['tiny'"),
        ("dataset:\n  image_size: 30\n", "image size 30 cannot be halved 2 times .* for dataset.image_size"),
        (
            "training:\n  snr_gamma: 5\n  weighting_scheme: p2\n",
            r"training.snr_gamma \(Min-SNR\) and training.weighting_scheme 'p2' are two loss weightings",
        ),
        (
            "model:\n  attention_levels: [true]\n",
            r"model.attention_levels has 1 entries for 3 resolution levels",
        ),
        (
            "training:\n  hub_license: Apache 2.0\n",
            r"training.hub_license 'Apache 2.0' is not a licence id the Hub accepts .* apache-2.0",
        ),
    ],
)
def test_bad_yaml_files_name_the_problem_and_the_fix(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_a_missing_config_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match=r"nope.yaml is not a file: pass --config a YAML file such as"):
        load_config(tmp_path / "nope.yaml")


def test_range_checks_accept_the_boundaries():
    cfg = load_config(None, ["--training.lr_warmup_steps", "0", "--training.eval_every", "0",
                             "--dataset.image_size", "32", "--dataset.channels", "3"])  # fmt: skip
    assert (cfg.training.lr_warmup_steps, cfg.dataset.image_size, cfg.dataset.channels) == (0, 32, 3)


# --- example `accelerate config` files ------------------------------------------------------------------

ACCELERATE_CONFIGS = Path(__file__).parents[1] / "training" / "accelerate_configs"


@pytest.mark.parametrize(
    "name, distributed_type, num_processes, num_machines",
    [
        ("multi_gpu.yaml", "MULTI_GPU", 4, 1),
        ("multi_node.yaml", "MULTI_GPU", 16, 2),
        ("fsdp.yaml", "FSDP", 4, 1),
        ("deepspeed_zero2.yaml", "DEEPSPEED", 4, 1),
    ],
)
def test_accelerate_configs_load_with_accelerates_own_loader(
    name, distributed_type, num_processes, num_machines
):
    import accelerate.commands.config.cluster as cluster
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE_CONFIGS / name))  # rejects unknown top-level keys
    assert config.distributed_type == distributed_type
    assert (config.num_processes, config.num_machines, config.machine_rank) == (
        num_processes,
        num_machines,
        0,
    )
    assert config.mixed_precision == "bf16" and config.use_cpu is False
    # The nested sections are not checked by the loader: their keys must be ones `accelerate config` writes.
    source = Path(cluster.__file__).read_text()
    for section in ("fsdp_config", "deepspeed_config"):
        written = set(re.findall(rf'{section}\["(\w+)"\]', source))
        assert set(getattr(config, section) or {}) <= written, section
    if num_machines > 1:
        assert config.main_process_ip and config.main_process_port
    # The comment at the top says how to launch it with this very file.
    assert f"--config_file training/accelerate_configs/{name}" in (ACCELERATE_CONFIGS / name).read_text()


def test_every_diffusion_key_reaches_the_scheduler_and_the_export(tmp_path):
    """Non-default values for every scheduler key, from the command line to `training_scheduler` and to the
    exported `scheduler_config.json`, which stock DDPMScheduler loads with the same numbers."""
    import json

    import numpy as np
    import torch

    from hf_ddpm.models import build_unet
    from hf_ddpm.pipeline import export_pipeline, training_scheduler

    values = {
        "num_train_timesteps": 500,
        "beta_start": 0.0002,
        "beta_end": 0.03,
        "beta_schedule": "sigmoid",
        "trained_betas": np.linspace(1e-4, 0.02, 500).round(8).tolist(),
        "variance_type": "learned_range",
        "clip_sample": False,
        "prediction_type": "v_prediction",
        "thresholding": True,
        "dynamic_thresholding_ratio": 0.9,
        "clip_sample_range": 2.0,
        "sample_max_value": 1.5,
        "timestep_spacing": "trailing",
        "steps_offset": 1,
        "rescale_betas_zero_snr": True,
    }
    assert set(values) == set(DiffusionConfig().scheduler_kwargs())  # every key, none forgotten
    overrides = [arg for key, value in values.items() for arg in (f"--diffusion.{key}", json.dumps(value))]
    cfg = load_config(None, [*overrides, "--training.sampler", "ddpm", "--model.preset", "tiny"])
    scheduler = training_scheduler(cfg.diffusion)
    for key, value in values.items():
        assert scheduler.config[key] == value, key
    export_pipeline(build_unet("tiny", variance_type="learned_range"), scheduler, tmp_path)
    saved = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "DDPMScheduler"
    assert {key: saved[key] for key in values} == values
    assert torch.equal(
        DDPMScheduler.from_pretrained(tmp_path / "scheduler").alphas_cumprod, scheduler.alphas_cumprod
    )
