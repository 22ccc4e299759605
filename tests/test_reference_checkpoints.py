"""The committed reference pipelines load offline with stock diffusers and draw what they claim to."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DPMSolverMultistepScheduler

from hf_ddpm.classifier import load_classifier, predict
from hf_ddpm.metrics import class_entropy, legibility

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


@pytest.mark.parametrize("name, scheduler", [
    ("ddpm-mnist", "DDPMScheduler"),
    ("ddpm-textures", "DDPMScheduler"),
    ("flow-mnist", "FlowMatchEulerDiscreteScheduler"),
])  # fmt: skip
def test_reference_pipeline_is_a_small_stock_pipeline(name, scheduler):
    folder = CHECKPOINTS / name
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    assert weights.stat().st_size <= 16 * 2**20
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pkl"))  # safetensors only
    assert (
        json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == scheduler
    )
    report = json.loads((folder / "eval.json").read_text())
    assert report["samples"]["classifier_fid"] > report["floor"]["classifier_fid"]  # the floor is a floor
    card = (folder / "README.md").read_text()
    assert f'DDPMPipeline.from_pretrained("checkpoints/{name}")' in card and "## Evaluation" in card


# The flow-matching model with its saved Euler sampler (stock DDPMPipeline drives it), in 20 steps.
@pytest.mark.parametrize("name, fast_sampler", [
    ("ddpm-mnist", DPMSolverMultistepScheduler),
    ("flow-mnist", None),
])  # fmt: skip
def test_reference_mnist_pipeline_draws_digits_of_every_class(name, fast_sampler):
    pipeline = DDPMPipeline.from_pretrained(CHECKPOINTS / name, use_safetensors=True)
    if fast_sampler is not None:
        pipeline.scheduler = fast_sampler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    out = pipeline(
        batch_size=100, num_inference_steps=20, generator=torch.Generator().manual_seed(1), output_type="np"
    )
    images = torch.from_numpy(np.round(out.images * 255).astype(np.uint8)).permute(0, 3, 1, 2)
    assert images.shape == (100, 1, 28, 28)
    _, probs = predict(load_classifier("mnist"), images)
    # An untrained UNet scored legibility 1.0 on one repeated blob; only legibility with entropy means digits.
    assert legibility(probs) > 0.6 and class_entropy(probs) > 2.1


# Stock diffusers alone, offline, hf_ddpm blocked: the pipeline file beside the weights does the sampling.
DRAW_EACH_CLASS = textwrap.dedent(
    """
    import sys
    sys.modules["hf_ddpm"] = None
    import numpy as np, torch
    from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler
    pipeline = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
    pipeline.scheduler = DPMSolverMultistepScheduler.from_config(pipeline.scheduler.config)
    names = [pipeline.config.id2label[i] for i in range(len(pipeline.config.id2label))]
    labels = [names[i % len(names)] for i in range(int(sys.argv[3]))]  # by name: "7", "D017"
    out = pipeline(labels, guidance_scale=2.0, num_inference_steps=20,
                   generator=torch.Generator().manual_seed(1), output_type="np")
    np.save(sys.argv[2], out.images)
    """
)


# Class accuracy of the samples by the project's classifier: MNIST's is 99.3% accurate on real digits,
# the textures' 55% on real patches (99 classes, chance 1%).
@pytest.mark.parametrize("name, dataset, num_images, accuracy", [
    ("ddpm-mnist-cfg", "mnist", 50, 0.9),
    ("ddpm-textures-cfg", "textures", 99, 0.2),
])  # fmt: skip
def test_reference_cfg_pipeline_draws_the_class_asked_for(tmp_path, name, dataset, num_images, accuracy):
    folder = CHECKPOINTS / name
    # The copy that travels with the weights is the library's file (re-export the checkpoint after edits).
    library_copy = CHECKPOINTS.parent / "pipelines" / "class_conditional_ddpm.py"
    assert (folder / "class_conditional_ddpm.py").read_bytes() == library_copy.read_bytes()
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size <= 16 * 2**20
    snippet = f'DiffusionPipeline.from_pretrained("checkpoints/{name}", trust_remote_code=True)'
    assert snippet in (folder / "README.md").read_text()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [sys.executable, "-c", DRAW_EACH_CLASS, str(folder), str(tmp_path / "out.npy"), str(num_images)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    images = np.round(np.load(tmp_path / "out.npy") * 255).astype(np.uint8)
    _, probs = predict(load_classifier(dataset), torch.from_numpy(images).permute(0, 3, 1, 2))
    classes = probs.shape[-1]
    asked = torch.arange(num_images) % classes
    assert (probs.argmax(-1) == asked).float().mean() > accuracy


DRAW_UNCONDITIONAL = textwrap.dedent(
    """
    import sys
    sys.modules["hf_ddpm"] = None
    import numpy as np, torch
    import diffusers
    pipeline = diffusers.DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
    pipeline.scheduler = getattr(diffusers, sys.argv[3]).from_config(pipeline.scheduler.config)
    out = pipeline(batch_size=100, num_inference_steps=20, generator=torch.Generator().manual_seed(1),
                   output_type="np")
    np.save(sys.argv[2], out.images)
    """
)


# MNIST against the bar of the pixel model above; textures, whose real patches are only 24% legible to
# their classifier, by the spread over the 99 classes alone (log 99 = 4.6; one repeated patch scores ~0).
# DDIM takes the saved scheduler's x_0 clamp with it, which DPM-Solver++ ignores: latents clamped to the
# pixels' +-1 decode to thin, illegible strokes.
@pytest.mark.parametrize("sampler", ["DPMSolverMultistepScheduler", "DDIMScheduler"])
@pytest.mark.parametrize("name, dataset, legible, entropy", [
    ("ldm-mnist", "mnist", 0.6, 2.1),
    ("ldm-textures", "textures", 0.0, 3.0),
])  # fmt: skip
def test_reference_latent_pipeline_decodes_varied_images(tmp_path, name, dataset, legible, entropy, sampler):
    folder = CHECKPOINTS / name
    library_copy = CHECKPOINTS.parent / "pipelines" / "latent_ddpm.py"
    assert (folder / "latent_ddpm.py").read_bytes() == library_copy.read_bytes()
    weights = [folder / part / "diffusion_pytorch_model.safetensors" for part in ("unet", "vae")]
    assert sum(w.stat().st_size for w in weights) <= 16 * 2**20
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pkl"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home")}
    out = tmp_path / "out.npy"
    result = subprocess.run([sys.executable, "-c", DRAW_UNCONDITIONAL, str(folder), str(out), sampler],
                            env=env, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    images = np.round(np.load(out) * 255).astype(np.uint8)
    assert images.shape == (100, 28, 28, 1)
    _, probs = predict(load_classifier(dataset), torch.from_numpy(images).permute(0, 3, 1, 2))
    assert legibility(probs) >= legible and class_entropy(probs) > entropy


def test_the_published_classifier_fid_is_reproduced_and_a_coarser_sampler_misses_it(shared_data, monkeypatch):
    """checkpoints/ddpm-mnist sampled and scored again with its eval.json's protocol (1,000 samples,
    DPM-Solver++ 20 steps, seed 0, against the whole MNIST test split) gives the published numbers; the same
    weights sampled in 5 steps, a near miss rather than a broken model, land outside the same bar."""
    from hf_ddpm.evaluate import evaluate_unet, load_reference

    folder = CHECKPOINTS / "ddpm-mnist"
    report = json.loads((folder / "eval.json").read_text())
    protocol, published = report["protocol"], report["samples"]
    monkeypatch.setenv("HF_DDPM_DATA_DIR", str(shared_data))
    reference = load_reference("mnist")
    assert len(reference.test_images) == 10_000 and protocol["reference"] == "test split, 10000 images"
    pipeline = DDPMPipeline.from_pretrained(folder, use_safetensors=True)
    unet, sampling = pipeline.unet.eval(), {key: protocol[key] for key in ("sampler", "num_images", "seed")}

    def fid(steps: int) -> dict:
        return evaluate_unet(unet, pipeline.scheduler.config, reference, steps=steps, **sampling)

    def near(metrics: dict) -> bool:
        return (
            abs(metrics["classifier_fid"] - published["classifier_fid"]) <= 0.02 * published["classifier_fid"]
            and abs(metrics["legibility"] - published["legibility"]) <= 0.01
        )

    assert near(fid(protocol["steps"])), published
    assert protocol["steps"] > 5 and not near(fid(5))
