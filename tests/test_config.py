import inspect
from pathlib import Path

import pytest
import yaml
from diffusers import DDPMScheduler

from hf_ddpm.config import Config, DiffusionConfig, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "training" / "configs").glob("*.yaml"))


def test_diffusion_defaults_are_stock_ddpm_defaults():
    stock = inspect.signature(DDPMScheduler.__init__).parameters
    for key, value in vars(DiffusionConfig()).items():
        assert stock[key].default == value, key


def test_diffusion_keys_are_scheduler_arguments():
    from hf_ddpm import LinearNoiseScheduler

    ours = inspect.signature(LinearNoiseScheduler.__init__).parameters
    assert {k: p.default for k, p in ours.items() if k != "self"} == vars(DiffusionConfig())


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_parse(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
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
        (["--training.mixed_precision", "fp8"], r"training.mixed_precision.*\['no', 'bf16', 'fp16'\]"),
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
