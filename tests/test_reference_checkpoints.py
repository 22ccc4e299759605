"""The committed reference pipelines load offline with stock diffusers and draw what they claim to."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DPMSolverMultistepScheduler

from hf_ddpm.classifier import load_classifier, predict
from hf_ddpm.metrics import class_entropy, legibility

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


@pytest.mark.parametrize("name", ["ddpm-mnist", "ddpm-textures"])
def test_reference_pipeline_is_a_small_stock_pipeline(name):
    folder = CHECKPOINTS / name
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size <= 16 * 2**20
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pkl"))  # safetensors only
    assert (
        json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
        == "DDPMScheduler"
    )
    report = json.loads((folder / "eval.json").read_text())
    assert report["samples"]["classifier_fid"] > report["floor"]["classifier_fid"]  # the floor is a floor
    card = (folder / "README.md").read_text()
    assert f'DDPMPipeline.from_pretrained("checkpoints/{name}")' in card and "## Evaluation" in card


def test_reference_mnist_pipeline_draws_digits_of_every_class():
    pipeline = DDPMPipeline.from_pretrained(CHECKPOINTS / "ddpm-mnist", use_safetensors=True)
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    out = pipeline(
        batch_size=100, num_inference_steps=20, generator=torch.Generator().manual_seed(1), output_type="np"
    )
    images = torch.from_numpy(np.round(out.images * 255).astype(np.uint8)).permute(0, 3, 1, 2)
    assert images.shape == (100, 1, 28, 28)
    _, probs = predict(load_classifier("mnist"), images)
    # An untrained UNet scored legibility 1.0 on one repeated blob; only legibility with entropy means digits.
    assert legibility(probs) > 0.6 and class_entropy(probs) > 2.1
