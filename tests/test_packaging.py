"""The package as a user installs it: a wheel built from this tree, installed in a fresh virtual environment,
used from a folder outside the repository (package data, console command, offline data fallback)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A random tiny UNet exported as a stock DDPMPipeline, then its model card, with the installed package alone.
EXPORT_AND_CARD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    import hf_ddpm
    from hf_ddpm.config import load_config
    from hf_ddpm.model_card import RunInfo, write_model_card
    from hf_ddpm.models import build_unet
    from hf_ddpm.pipeline import export_pipeline, training_scheduler

    out = Path(sys.argv[1])
    cfg = load_config(None, ["--model.preset", "tiny", "--training.output_dir", str(out)])
    torch.manual_seed(0)
    export_pipeline(build_unet("tiny"), training_scheduler(cfg.diffusion), out)
    run = RunInfo(wall_time_s=1.0, hardware="CPU", num_processes=1, steps=1, num_images=1, data_source="x")
    card = write_model_card(out, cfg, run)
    print(hf_ddpm.__file__)
    """
)


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The `bin/` of a new virtual environment holding the wheel of this tree. Its other requirements come
    from the running environment (a `.pth` file), so nothing is downloaded."""
    root = tmp_path_factory.mktemp("wheel")
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", root / "dist", REPO]
    )
    (wheel,) = (root / "dist").glob("hf_ddpm-*.whl")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", venv])
    (purelib,) = (venv / "lib").glob("python3*/site-packages")
    # Every site-packages folder this interpreter reads (a .pth file may have added some), as path lines.
    folders = [p for p in sys.path if p.endswith("site-packages")]
    (purelib / "_requirements.pth").write_text("\n".join(folders) + "\n")
    run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", wheel])
    return venv / "bin"


def test_the_wheel_carries_the_card_template_classifier_and_mnist_sample(installed, tmp_path):
    """A card renders and its package file comes from the installed wheel, not from this checkout."""
    out = tmp_path / "pipeline"
    result = run([installed / "python", "-c", EXPORT_AND_CARD, out], cwd=tmp_path)
    package = Path(result.stdout.strip().splitlines()[-1])
    assert REPO not in package.parents and installed.parent in package.parents
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: diffusers" in card and "DDPMPipeline" in card
    files = run([installed / "python", "-m", "pip", "show", "-f", "hf-ddpm"], cwd=tmp_path).stdout
    for name in ("templates/model_card.md", "classifiers/mnist/model.safetensors", "sample_data/mnist/"):
        assert name in files, name


def test_the_console_command_evaluates_offline_on_the_bundled_data(installed, tmp_path):
    """`hf-ddpm evaluate` from outside the repository: the packaged MNIST classifier scores samples against
    the bundled test digits, the Hub being unreachable."""
    model = tmp_path / "pipeline"
    run([installed / "python", "-c", EXPORT_AND_CARD, model], cwd=tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home")}
    env.pop("HF_DDPM_DATA_DIR", None)
    out = tmp_path / "eval.json"
    result = run([installed / "hf-ddpm", "evaluate", "--model", model, "--dataset", "ylecun/mnist",
                  "--num-images", "200", "--steps", "2", "--out", out], cwd=tmp_path, env=env)  # fmt: skip
    report = json.loads(out.read_text())
    assert report["protocol"]["classifier"].startswith("mnist (test accuracy 0.99")
    assert report["protocol"]["reference"] == "test split, 1000 images"  # the bundled sample's test split
    # Noise from an untrained UNet is nothing like digits: far above the real-vs-real floor.
    assert report["samples"]["classifier_fid"] > 5 * report["floor"]["classifier_fid"]
    assert "sample bundled with hf-ddpm" in result.stderr
