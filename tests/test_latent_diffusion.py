"""Latent diffusion end to end on real MNIST digits: training/train_autoencoder.py, then training/train.py
with `model.latent_autoencoder`, both through the real `accelerate launch`; the export loaded by hf_ddpm
and by stock diffusers."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from run_logs import scalars
from safetensors.torch import load_file

from hf_ddpm.config import AutoencoderRunConfig, load_config
from hf_ddpm.data import load_image_dataset, load_labeled_split
from hf_ddpm.hub import files_to_upload
from hf_ddpm.latents import encode_dataset, encode_latents, load_autoencoder
from hf_ddpm.launch import accelerate_launch
from hf_ddpm.pipeline import load_pipeline

REPO = Path(__file__).resolve().parents[1]
# A tiny autoencoder: 28x28 -> 4x7x7 with 8/16/16 channels.
TINY_AE = ["--autoencoder.block_out_channels", "[8, 16, 16]", "--autoencoder.norm_num_groups", "8"]


def run(cmd, cwd: Path, **env) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env={**os.environ, **env}, capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory, mnist_dir):
    """60 steps of the tiny autoencoder on 512 real digits (no warm-up and no EMA, which would hold the
    weights near their start for this short a run)."""
    out = tmp_path_factory.mktemp("ae") / "autoencoder"
    run(accelerate_launch(REPO / "training" / "train_autoencoder.py", "--config",
         REPO / "training" / "configs" / "autoencoder-mnist.yaml", *TINY_AE, "--dataset.path", mnist_dir,
         "--dataset.max_samples", "512", "--training.output_dir", out, "--training.max_train_steps", "60",
         "--training.mixed_precision", "no", "--training.eval_num_images", "200",
         "--training.lr_warmup_steps", "0", "--training.use_ema", "false"), out.parent)  # fmt: skip
    return out


@pytest.fixture(scope="module")
def latent_run(autoencoder, tmp_path_factory, mnist_dir):
    """The latent-tiny UNet, 20 steps on the autoencoder's latents of the same 512 digits."""
    out = tmp_path_factory.mktemp("ldm") / "ldm"
    tiny = REPO / "training" / "configs" / "tiny.yaml"
    run(accelerate_launch(REPO / "training" / "train.py", "--config", tiny,
         "--model.preset", "latent-tiny", "--model.latent_autoencoder", autoencoder,
         "--diffusion.clip_sample", "false", "--dataset.path", mnist_dir, "--dataset.max_samples", "512",
         "--training.output_dir", out, "--training.max_train_steps", "20",
         "--training.checkpointing_steps", "10"), out.parent)  # fmt: skip
    return out


def test_autoencoder_training_lowers_the_reconstruction_error_and_saves_a_stock_model(autoencoder, mnist_dir):
    mse = scalars(autoencoder / "logs", "mse", run="hf-ddpm-autoencoder")
    assert len(mse) == 60 and np.mean(mse[-10:]) < 0.6 * np.mean(mse[:10])
    vae = AutoencoderKL.from_pretrained(autoencoder, use_safetensors=True)  # stock diffusers
    assert (autoencoder / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(autoencoder.glob("*.bin"))
    report = json.loads((autoencoder / "eval.json").read_text())
    assert report["latent_shape"] == [4, 7, 7] and report["test_images"] == 200
    # The baseline any autoencoder must beat: every test image replaced by the per-pixel mean of the same 200
    # (an all-black reconstruction scores worse than it, and would have passed a fixed bar such as 0.25).
    images, labels, _ = load_labeled_split(str(mnist_dir), "test", max_samples=200)
    pixels = images.double() / 255
    baseline = (pixels - pixels.mean(0)).square().mean((1, 2, 3))
    assert 0 < report["mse"] < 0.8 * baseline.mean().item()
    assert report["psnr_db"] > (10 * torch.log10(1 / baseline)).mean().item() + 1
    # The digits survive: reconstructions are mostly classified as their digit, as the originals are.
    assert report["classifier_accuracy_original"] > 0.95
    assert report["classifier_accuracy_reconstructed"] > 0.5
    assert report["scaling_factor"] == pytest.approx(vae.config.scaling_factor)
    assert (autoencoder / "reconstructions.png").is_file()


def test_scaling_factor_gives_unit_variance_latents_and_flips_are_encoded(autoencoder, mnist_dir):
    """The training images' latents times scaling_factor have standard deviation 1, and the mirrored view
    is the encoding of the mirrored image (not the mirrored latent)."""
    cfg = load_config(
        None, ["--dataset.path", str(mnist_dir), "--dataset.max_samples", "512"], AutoencoderRunConfig
    )
    dataset, info = load_image_dataset(cfg.dataset)
    vae = load_autoencoder(str(autoencoder), info.channels)
    encoded = encode_dataset(vae, dataset, flip=True)
    latents, labels = encoded.tensors
    assert latents.shape == (512, 2, 4, 7, 7) and torch.equal(labels, dataset.tensors[1])
    assert latents[:, 0].std().item() == pytest.approx(1.0, abs=1e-4)
    mirrored = encode_latents(vae, dataset.tensors[0][:4].flip(-1)) * vae.config.scaling_factor
    torch.testing.assert_close(latents[:4, 1], mirrored)
    assert not torch.allclose(latents[:4, 1], latents[:4, 0].flip(-1), atol=1e-3)


def test_latent_export_samples_28x28_images_through_the_decoder(latent_run, autoencoder):
    index = json.loads((latent_run / "model_index.json").read_text())
    assert index["_class_name"] == ["latent_ddpm", "LatentDDPMPipeline"]
    assert (latent_run / "latent_ddpm.py").read_bytes() == (
        REPO / "pipelines" / "latent_ddpm.py"
    ).read_bytes()
    unet = json.loads((latent_run / "unet" / "config.json").read_text())
    assert (unet["in_channels"], unet["sample_size"]) == (4, 7)
    # The autoencoder travels unchanged, scaling factor included.
    exported, trained = (
        load_file(p / "diffusion_pytorch_model.safetensors") for p in (latent_run / "vae", autoencoder)
    )
    assert exported.keys() == trained.keys() and all(torch.equal(exported[k], trained[k]) for k in trained)
    pipeline = load_pipeline(latent_run, "ddim")
    images = pipeline(batch_size=3, num_inference_steps=5, generator=torch.Generator().manual_seed(0),
                      output_type="np").images  # fmt: skip
    assert images.shape == (3, 28, 28, 1) and 0 <= images.min() and images.max() <= 1
    assert "vae/diffusion_pytorch_model.safetensors" in files_to_upload(latent_run)
    card = (latent_run / "README.md").read_text()
    assert "latent space" in card and "trust_remote_code=True" in card


def test_evaluate_scores_a_latent_model_beside_its_autoencoder_floor(latent_run, tmp_path, mnist_dir):
    """The reconstructed floor images are what a perfect latent model would draw: worse than the real ones
    (the autoencoder loses detail), better than 20 steps of training."""
    out = tmp_path / "eval.json"
    result = run([sys.executable, "-m", "hf_ddpm.evaluate", "--model", latent_run, "--dataset", mnist_dir,
                  "--num-images", "100", "--steps", "3", "--out", out], tmp_path)  # fmt: skip
    assert "| metric | samples | floor | autoencoder_floor |" in result.stdout
    report = json.loads(out.read_text())
    samples, floor, decoded = report["samples"], report["floor"], report["autoencoder_floor"]
    assert floor["classifier_fid"] < decoded["classifier_fid"] < samples["classifier_fid"]
    assert decoded["legibility"] < floor["legibility"]


STOCK = textwrap.dedent(
    """
    import sys
    sys.modules["hf_ddpm"] = None
    import numpy as np, torch
    from diffusers import DDIMScheduler, DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    images = pipe(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0),
                  output_type="np").images
    np.save(sys.argv[2], images)
    print(type(pipe).__name__)
    """
)


def test_stock_diffusers_samples_the_latent_export_like_hf_ddpm(latent_run, tmp_path):
    result = run([sys.executable, "-c", STOCK, latent_run, tmp_path / "stock.npy"], tmp_path,
                 HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")  # fmt: skip
    assert result.stdout.strip().splitlines()[-1] == "LatentDDPMPipeline"
    ours = load_pipeline(latent_run, "ddim")
    expected = ours(batch_size=2, num_inference_steps=5, generator=torch.Generator().manual_seed(0),
                    output_type="np").images  # fmt: skip
    np.testing.assert_allclose(np.load(tmp_path / "stock.npy"), expected, atol=1e-5)


def test_a_missing_or_mismatched_autoencoder_stops_train_py_in_one_line(autoencoder, tmp_path, mnist_dir):
    train = [sys.executable, REPO / "training" / "train.py", "--config",
             REPO / "training" / "configs" / "tiny.yaml", "--model.preset", "latent-tiny",
             "--diffusion.clip_sample", "false", "--training.output_dir", tmp_path / "out"]  # fmt: skip
    cases = [
        (["--model.latent_autoencoder", tmp_path / "nowhere", "--dataset.path", mnist_dir],
         "is not an AutoencoderKL folder or Hub repo"),
        (["--model.latent_autoencoder", autoencoder, "--dataset.path", mnist_dir,
          "--dataset.channels", "3"], "encodes 1-channel images, the data have 3"),
    ]  # fmt: skip
    for args, message in cases:
        result = subprocess.run([str(c) for c in [*train, *args]], capture_output=True, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: model.latent_autoencoder") and message in last, last


@pytest.mark.parametrize("clamp", ["--diffusion.clip_sample", "--diffusion.thresholding"])
def test_latent_diffusion_refuses_to_clamp_x0_to_the_pixels_range(clamp):
    ldm = REPO / "training" / "configs" / "ldm-mnist.yaml"
    assert not load_config(ldm).diffusion.clip_sample  # the shipped config loads
    with pytest.raises(ValueError, match="latents are unbounded .* set both false"):
        load_config(ldm, [clamp, "true"])
    pixels = load_config(ldm, [clamp, "true", "--model.latent_autoencoder", "null", "--model.preset", "tiny"])
    assert getattr(pixels.diffusion, clamp.split(".")[-1])  # on pixels the clamp is the paper's


@pytest.mark.parametrize("clamp", ["clip_sample", "thresholding"])
def test_a_latent_export_that_clamps_x0_is_refused_at_load_with_the_fix(tmp_path, clamp):
    """Exports written before the refusal above carry clip_sample true; loading one names the fix."""
    export = tmp_path / "ldm-mnist"
    shutil.copytree(REPO / "checkpoints" / "ldm-mnist", export)
    assert not load_pipeline(export).scheduler.config.clip_sample  # the shipped export loads
    scheduler_config = export / "scheduler" / "scheduler_config.json"
    config = json.loads(scheduler_config.read_text())
    scheduler_config.write_text(json.dumps({**config, clamp: True}))
    with pytest.raises(
        ValueError, match=f"clamps x_0 to the pixels' range \\({clamp} true\\).*set them false"
    ):
        load_pipeline(export)


def test_autoencoder_config_checks_channels_and_size():
    with pytest.raises(ValueError, match="multiples of autoencoder.norm_num_groups"):
        overrides = ["--autoencoder.block_out_channels", "[8, 12]", "--autoencoder.norm_num_groups", "8"]
        load_config(None, overrides, AutoencoderRunConfig)
    with pytest.raises(ValueError, match="cannot be halved 3 times"):
        load_config(None, ["--autoencoder.block_out_channels", "[32, 32, 32, 32]"], AutoencoderRunConfig)
    with pytest.raises(ValueError, match=r"expected a list such as \[32, 64\]"):
        load_config(None, ["--autoencoder.block_out_channels", "32"], AutoencoderRunConfig)
