"""End to end: training/train.py on the real MNIST parquet, through the real `accelerate launch`."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from run_logs import scalars
from safetensors.torch import load_file

from hf_ddpm.launch import accelerate_launch

REPO = Path(__file__).resolve().parents[1]
TRAIN = [str(REPO / "training" / "train.py"), "--config", str(REPO / "training" / "configs" / "tiny.yaml")]


def run(cmd, cwd, **env):
    result = subprocess.run(cmd, cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_dir):
    """The tiny preset, 50 steps on 2,048 real MNIST digits, launched by `accelerate launch`."""
    out = tmp_path_factory.mktemp("run") / "ddpm-tiny"
    run(
        [
            *accelerate_launch(*TRAIN),
            "--training.output_dir",
            str(out),
            "--dataset.path",
            str(mnist_dir),
            "--training.report_to",
            "tensorboard",
            "--training.eval_every",
            "25",
            "--training.eval_num_images",
            "64",
            "--training.eval_num_inference_steps",
            "5",
        ],
        cwd=out.parent,
    )
    return out


def test_loss_falls_and_outputs_are_written(trained):
    losses = scalars(trained / "logs", "loss")
    assert len(losses) == 50
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    for name in [
        "model_index.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/config.json",
        "scheduler/scheduler_config.json",
        "config.yaml",
        "samples.png",
        "checkpoint-50/model.safetensors",
        "checkpoint-50/unet_ema/diffusion_pytorch_model.safetensors",
    ]:
        assert (trained / name).is_file(), name
    assert not list(trained.rglob("*.partial"))
    # Only the newest checkpoints_total_limit (2) remain: 25 and 50.
    assert sorted(p.name for p in trained.glob("checkpoint-*")) == ["checkpoint-25", "checkpoint-50"]


def test_eval_every_logs_metrics_and_keeps_the_best_pipeline(trained):
    records = [json.loads(line) for line in (trained / "eval_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [25, 50]
    assert records[1]["train_minutes"] > records[0]["train_minutes"] > 0
    for r in records:
        assert 0 <= r["legibility"] <= 1 and 0 <= r["class_entropy"] <= np.log(10) + 1e-9
    assert scalars(trained / "logs", "eval/classifier_fid") == pytest.approx(
        [r["classifier_fid"] for r in records]
    )
    best = min(records, key=lambda r: r["classifier_fid"])
    kept = json.loads((trained / "best" / "eval.json").read_text())
    assert kept["step"] == best["step"] and kept["classifier_fid"] == best["classifier_fid"]
    assert (trained / "best" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (trained / "best.partial").exists() and not (trained / "best.old").exists()
    # The final model is scored once more, next to the data floor, and the card shows both.
    report = json.loads((trained / "eval.json").read_text())
    assert report["protocol"]["num_images"] == 64 and report["protocol"]["sampler"] == "dpm-solver"
    assert report["floor"]["classifier_fid"] < report["samples"]["classifier_fid"]
    card = (trained / "README.md").read_text()
    assert f"| samples.classifier_fid | {report['samples']['classifier_fid']:.4g} |" in card


def test_exported_unet_holds_the_ema_weights(trained):
    exported = load_file(trained / "unet/diffusion_pytorch_model.safetensors")
    ema = load_file(trained / "checkpoint-50/unet_ema/diffusion_pytorch_model.safetensors")
    raw = load_file(trained / "checkpoint-50/model.safetensors")
    assert exported.keys() == ema.keys() == raw.keys()
    assert all(torch.equal(exported[k], ema[k]) for k in exported)
    assert not all(torch.equal(exported[k], raw[k]) for k in exported)


STOCK_SAMPLING = textwrap.dedent(
    """
    import sys
    sys.modules["hf_ddpm"] = None  # stock diffusers alone
    try:
        import hf_ddpm
    except ImportError:
        pass
    else:
        raise SystemExit("hf_ddpm is importable")
    import numpy as np, torch
    from diffusers import DDPMPipeline, DDPMScheduler
    pipe = DDPMPipeline.from_pretrained(sys.argv[1])
    assert type(pipe.scheduler) is DDPMScheduler
    images = pipe(batch_size=4, num_inference_steps=sys.argv[3] and int(sys.argv[3]),
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    np.save(sys.argv[2], images)
    """
)


def test_stock_diffusers_loads_and_samples_like_our_scheduler(trained, tmp_path):
    """The pipeline's plumbing at 20 steps; the schedulers agree step by step over full 1000-step loops in
    test_scheduler.py."""
    steps = 20
    out = tmp_path / "stock.npy"
    run([sys.executable, "-c", STOCK_SAMPLING, str(trained), str(out), str(steps)], cwd=tmp_path)
    stock = np.load(out)
    assert stock.shape == (4, 28, 28, 1)
    assert stock.min() >= 0 and stock.max() <= 1

    from hf_ddpm.pipeline import load_pipeline

    ours = load_pipeline(trained, "ddpm")
    assert type(ours.scheduler).__name__ == "LinearNoiseScheduler"
    images = ours(
        batch_size=4, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    np.testing.assert_allclose(images, stock, atol=1e-5)


FLOW_MATCHING = [
    *("--diffusion.objective", "flow_matching"),
    *("--training.sampler", "flow-euler", "--training.eval_sampler", "flow-euler"),
]


@pytest.mark.parametrize("objective", [[], FLOW_MATCHING], ids=["ddpm", "flow_matching"])
def test_resume_continues_exactly(tmp_path, mnist_dir, objective):
    """Kill-free resume check: drop the final checkpoint, resume from the one before, get the same weights."""
    common = [
        sys.executable,
        *TRAIN,
        *objective,
        "--dataset.path",
        str(mnist_dir),
        "--dataset.max_samples",
        "256",
        "--training.max_train_steps",
        "12",
        "--training.checkpointing_steps",
        "5",
        "--training.checkpoints_total_limit",
        "null",
        "--training.num_sample_images",
        "1",
        "--training.num_inference_steps",
        "1",
        "--dataset.random_flip",
        "true",
    ]
    a, b = tmp_path / "a", tmp_path / "b"
    run([*common, "--training.output_dir", str(a)], cwd=tmp_path)
    run([*common, "--training.output_dir", str(b)], cwd=tmp_path)
    # 256 rows / batch 32 = 8 batches per epoch: resuming at step 10 skips 2 batches of epoch 1.
    for name in ["checkpoint-12", "unet", "model_index.json"]:
        subprocess.run(["rm", "-r", str(b / name)], check=True)
    run(
        [*common, "--training.output_dir", str(b), "--training.resume_from_checkpoint", "latest"],
        cwd=tmp_path,
    )
    for name in ["model.safetensors", "unet_ema/diffusion_pytorch_model.safetensors"]:
        wa, wb = load_file(a / "checkpoint-12" / name), load_file(b / "checkpoint-12" / name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    ema_config = json.loads((b / "checkpoint-12/unet_ema/config.json").read_text())
    assert ema_config["optimization_step"] == 12
    # The card's training time sums both runs' optimizer steps; its wall time is the last run's, and says so.
    run_info = json.loads((b / "run_info.json").read_text())
    clock = {
        s: load_file(b / f"checkpoint-{s}/train_clock.safetensors")["train_seconds"].item() for s in (10, 12)
    }
    assert run_info["resumed_at"] == 10 and run_info["train_time_s"] == clock[12] > clock[10] > 0
    assert "(the last run, resumed at step 10)" in (b / "README.md").read_text()
    assert json.loads((a / "run_info.json").read_text())["resumed_at"] == 0


def test_lr_schedule_counts_optimizer_steps(tmp_path, mnist_dir):
    """With gradient accumulation the warmup and cosine decay follow optimizer steps, not batches."""
    out = tmp_path / "accum"
    run(
        [
            sys.executable,
            *TRAIN,
            "--training.output_dir",
            str(out),
            "--dataset.path",
            str(mnist_dir),
            "--dataset.max_samples",
            "128",
            "--training.train_batch_size",
            "8",
            "--training.gradient_accumulation_steps",
            "3",
            "--training.max_train_steps",
            "6",
            "--training.lr_warmup_steps",
            "2",
            "--training.learning_rate",
            "1e-3",
            "--training.use_ema",
            "false",
            "--training.num_sample_images",
            "1",
            "--training.num_inference_steps",
            "1",
            "--training.report_to",
            "tensorboard",
        ],
        cwd=tmp_path,
    )
    lrs = scalars(out / "logs", "lr")
    assert len(lrs) == 6
    assert lrs[:2] == pytest.approx([5e-4, 1e-3])  # linear warmup over 2 optimizer steps
    assert lrs[2] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi / 4)), rel=1e-5)  # cosine over the other 4
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_sample_cli_writes_a_grid(trained, tmp_path):
    from PIL import Image

    out = tmp_path / "grid.png"
    result = run(
        [
            sys.executable,
            "-m",
            "hf_ddpm.sample",
            "--model",
            str(trained),
            "--sampler",
            "dpm-solver",
            "--steps",
            "5",
            "--num-images",
            "4",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
    )
    assert "dpm-solver 5 steps" in result.stdout
    grid = Image.open(out)
    assert grid.mode == "L" and grid.size == (2 + 2 * 30, 2 + 2 * 30)  # 2x2 images of 28 px, 2 px padding


def test_sample_cli_rejects_a_folder_without_a_pipeline(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "hf_ddpm.sample", "--model", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "holds no model_index.json" in result.stderr
    assert "Traceback" not in result.stderr


def test_import_is_cheap():
    code = "import sys, hf_ddpm; print(sorted({'torch', 'diffusers', 'datasets'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"


def test_nonfinite_losses_skip_the_update_and_stop_the_run_after_k_in_a_row(tmp_path, mnist_dir):
    """A learning rate of 1e12 without clipping blows the weights up after one step, so every later loss is
    NaN or inf: those steps change nothing, and the third in a row stops the run with one line."""
    out = tmp_path / "diverged"
    result = subprocess.run(
        [sys.executable, *TRAIN, "--training.output_dir", str(out), "--dataset.path", str(mnist_dir),
         "--dataset.max_samples", "256", "--training.max_train_steps", "20",
         "--training.learning_rate", "1e12", "--training.lr_warmup_steps", "0",
         "--training.max_grad_norm", "0", "--training.max_nonfinite_steps", "3",
         "--training.checkpointing_steps", "1", "--training.checkpoints_total_limit", "null",
         "--training.use_ema", "false"],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: the loss was NaN or inf for 3 steps in a row (up to step 4), so training stopped")
    )
    assert "Traceback" not in result.stderr
    assert [f"step {s}: loss [" in result.stderr for s in (2, 3, 4)] == [True] * 3
    assert "update skipped (3 in a row)" in result.stderr
    # Step 1 updated the weights; the skipped steps 2 and 3 left them as they were, finite.
    weights = [load_file(out / f"checkpoint-{s}" / "model.safetensors") for s in (1, 2, 3)]
    assert all(torch.isfinite(w).all() for w in weights[0].values())
    assert all(torch.equal(weights[0][k], w[k]) for w in weights[1:] for k in weights[0])
    assert not (out / "checkpoint-4").exists() and not (out / "model_index.json").exists()


@pytest.mark.parametrize(
    "change, detail",
    [
        (["--model.preset", "small"], "has shape"),
        (["--model.class_conditional", "true"], "class_embedding.weight is only in the configured model"),
    ],
)
def test_resuming_with_another_model_config_fails_in_one_line(tmp_path, mnist_dir, change, detail):
    common = [sys.executable, *TRAIN, "--training.output_dir", str(tmp_path / "run"), "--dataset.path",
              str(mnist_dir), "--dataset.max_samples", "64", "--training.checkpointing_steps", "1",
              "--training.num_sample_images", "1", "--training.num_inference_steps", "1"]  # fmt: skip
    run([*common, "--training.max_train_steps", "2"], cwd=tmp_path)
    result = subprocess.run(
        [*common, "--training.max_train_steps", "4", "--training.resume_from_checkpoint", "latest", *change],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: ") and "was written by a different model config (" in last and detail in last
    )
    assert "Traceback" not in result.stderr
