"""Learned variances (`diffusion.variance_type: learned_range`, Nichol & Dhariwal 2021) end to end: a real
`accelerate launch` of training/train.py on MNIST trains a 2C-output UNet with L_hybrid and exports a stock
`DDPMPipeline` that stock diffusers (hf_ddpm blocked from import) samples exactly as hf-ddpm does;
`python -m hf_ddpm.evaluate --nll` scores it, keeps eval.json's other numbers and shows the bound on the card;
settings that cannot train or sample such a model are refused in one line."""

import inspect
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
from diffusers import DDPMScheduler
from run_logs import scalars

from hf_ddpm.config import load_config
from hf_ddpm.pipeline import generate, load_pipeline, make_scheduler

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "training" / "configs" / "tiny.yaml"
LEARNED = ["--diffusion.variance_type", "learned_range", "--training.sampler", "ddpm"]


def run(cmd: list, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, env=os.environ)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def learned_run(tmp_path_factory, mnist_dir):
    """The tiny preset with learned_range variances, 30 steps on 1,024 real MNIST digits, under `accelerate
    launch`."""
    out = tmp_path_factory.mktemp("learned") / "learned-tiny"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    run(
        [*launch, REPO / "training" / "train.py", "--config", TINY, *LEARNED, "--training.output_dir", out,
         "--dataset.path", mnist_dir, "--dataset.max_samples", "1024", "--training.max_train_steps", "30",
         "--training.checkpointing_steps", "15", "--training.report_to", "tensorboard",
         "--training.num_inference_steps", "10"],
        out.parent,
    )  # fmt: skip
    return out


def test_train_py_trains_the_variances_and_exports_a_stock_learned_range_pipeline(learned_run):
    losses = scalars(learned_run / "logs", "loss")
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:5])
    assert json.loads((learned_run / "model_index.json").read_text())["_class_name"] == "DDPMPipeline"
    scheduler = json.loads((learned_run / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDPMScheduler" and scheduler["variance_type"] == "learned_range"
    unet = json.loads((learned_run / "unet" / "config.json").read_text())
    assert (unet["in_channels"], unet["out_channels"]) == (1, 2)
    card = (learned_run / "README.md").read_text()
    assert "L_hybrid = L_simple + 0.001 L_vlb" in card
    assert "`learned_range`: learned: the UNet's second half of channels interpolates" in card
    assert (
        "| Input / output | 1 / 2 channels" in card
        and "diffusers' DDIM and DPM-Solver do not read them" in card
    )


STOCK = textwrap.dedent(
    """
    import sys
    sys.modules["hf_ddpm"] = None  # stock diffusers only
    import numpy as np, torch
    from diffusers import DDPMPipeline
    pipe = DDPMPipeline.from_pretrained(sys.argv[1])
    pipe.set_progress_bar_config(disable=True)
    steps, generator = int(sys.argv[3]), torch.Generator().manual_seed(0)
    images = pipe(batch_size=3, num_inference_steps=steps, generator=generator, output_type="np").images
    np.save(sys.argv[2], images)
    print(type(pipe.scheduler).__name__, pipe.scheduler.config.variance_type, pipe.unet.config.out_channels)
    """
)


def test_stock_diffusers_samples_the_export_as_hf_ddpm_does(learned_run, tmp_path):
    """Through the pipelines at 10 steps; the learned variances of full 1000-step loops are compared step by
    step with stock's in test_scheduler.py."""
    steps = 10
    result = run([sys.executable, "-c", STOCK, learned_run, tmp_path / "stock.npy", steps], tmp_path)
    assert result.stdout.split() == ["DDPMScheduler", "learned_range", "2"]
    ours = generate(load_pipeline(learned_run, "ddpm"), 3, steps, seed=0)  # LinearNoiseScheduler samples
    stock = np.round(np.load(tmp_path / "stock.npy") * 255).astype(np.uint8)
    assert ours.shape == (3, 28, 28, 1) and ours.std() > 0
    np.testing.assert_array_equal(stock, ours)


def test_evaluate_nll_adds_the_bound_to_eval_json_and_the_card(learned_run, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(learned_run, folder)
    kept = {"samples": {"classifier_fid": 123.4}}
    (folder / "eval.json").write_text(json.dumps(kept))
    cli = [sys.executable, "-m", "hf_ddpm.evaluate", "--model", folder, "--nll", "--nll-images", "3",
           "--batch-size", "600", "--seed", "1"]  # fmt: skip
    out = run(cli, REPO).stdout
    assert "NLL <= " in out and "bits/dim (3 test images, seed 1)" in out
    report = json.loads((folder / "eval.json").read_text())
    assert report["samples"] == kept["samples"]
    nll = report["nll"]
    assert nll["images"] == 3 and nll["timesteps"] == 1000 and nll["subset"] == "random, seed 1"
    assert 0 < nll["bits_per_dim"] < 20 and nll["standard_error"] > 0
    parts = nll["prior_bits_per_dim"] + nll["decoder_bits_per_dim"] + nll["kl_bits_per_dim"]
    assert parts == pytest.approx(nll["bits_per_dim"], rel=1e-9)
    card = (folder / "README.md").read_text()
    assert f"| NLL (test, bits/dim) | ≤ {nll['bits_per_dim']:.3f} ± {nll['standard_error']:.3f}" in card
    assert "3 test images (random, seed 1), noise seed 1" in card


def test_samplers_that_cannot_read_the_variances_are_refused(learned_run):
    config = load_pipeline(learned_run).scheduler.config
    for sampler in ("ddim", "dpm-solver"):
        with pytest.raises(
            ValueError, match=f"sampler '{sampler}' cannot sample a model with learned variances"
        ):
            make_scheduler(sampler, config)
    assert make_scheduler("ddpm", config).config.variance_type == "learned_range"


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["--diffusion.variance_type", "learned"], "learned: stock DDPMScheduler reads .* use learned_range"),
        (["--diffusion.variance_type", "fixed_large_log"], "NaN; use fixed_large"),
        (
            [*LEARNED, "--training.sampler", "ddim"],
            r"training.sampler 'ddim' cannot sample a learned_range model",
        ),
        ([*LEARNED, "--training.eval_every", "10"], "training.eval_sampler 'dpm-solver' cannot sample"),
        ([*LEARNED, "--model.class_conditional", "true"], "unconditional pixel-space models only"),
        (
            [*LEARNED, "--diffusion.objective", "flow_matching", "--training.sampler", "flow-euler"],
            "flow matching",
        ),
        (["--diffusion.rescale_betas_zero_snr", "true"], "diffusion: alpha_bar reaches 0 .* v_prediction"),
        (["--diffusion.variance_type", "learnt"], r"diffusion.variance_type: got 'learnt', allowed values"),
    ],
)
def test_settings_that_cannot_train_or_export_are_refused_in_one_line(overrides, match):
    with pytest.raises(ValueError, match=match) as err:
        load_config(TINY, overrides)
    assert "\n" not in str(err.value)


def test_the_export_holds_every_stock_key_and_stock_reads_it(learned_run):
    saved = json.loads((learned_run / "scheduler" / "scheduler_config.json").read_text())
    assert set(inspect.signature(DDPMScheduler.__init__).parameters) - {"self"} <= set(saved)
    stock = DDPMScheduler.from_pretrained(learned_run / "scheduler")
    ours = load_pipeline(learned_run, "ddpm").scheduler
    assert type(ours).__name__ == "LinearNoiseScheduler" and stock.variance_type == ours.variance_type
    assert torch.equal(stock.alphas_cumprod, ours.alphas_cumprod)
