"""What a GPU run depends on, checked where it shows on a CPU: compiled models resume and export plain
weights, one documented precedence for mixed precision, fp16's skipped steps, streamed rows split between
processes, unlabelled rows stopping every process. Tests marked `gpu` check device placement on CUDA and
skip without it."""

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from hf_ddpm.config import load_config
from hf_ddpm.launch import accelerate_launch

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "training" / "train.py"
HARNESS = REPO / "tests" / "train_harness.py"
TINY = ["--config", REPO / "training" / "configs" / "tiny.yaml", "--dataset.max_samples", "256"]
gpu = pytest.mark.gpu  # skipped without CUDA (conftest.py); benchmarks/device_check.sh runs them


def run(cmd: list, ok: bool = True, **env) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=REPO, env={**os.environ, **env}, capture_output=True,
                            text=True)  # fmt: skip
    if ok:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def keys(weights: Path) -> list[str]:
    with safe_open(str(weights), framework="pt") as f:
        return list(f.keys())


def compile_and_resume(out: Path, data: Path, backend: str) -> None:
    """Two steps under `accelerate launch --dynamo_backend BACKEND`, a checkpoint, then two more resumed from
    it: the checkpoints and the export hold the model's own weight names, never torch.compile's `_orig_mod.`
    (which would make resume refuse every checkpoint)."""
    common = [
        *TINY,
        "--dataset.path",
        data,
        "--training.output_dir",
        out,
        "--training.checkpointing_steps",
        "2",
    ]
    run(accelerate_launch(TRAIN, *common, "--training.max_train_steps", "2", dynamo_backend=backend))
    assert not any(k.startswith("_orig_mod.") for k in keys(out / "checkpoint-2" / "model.safetensors"))
    resume = ["--training.max_train_steps", "4", "--training.resume_from_checkpoint", "latest"]
    resumed = run(accelerate_launch(TRAIN, *common, *resume, dynamo_backend=backend))
    assert "checkpoint-2 at step 2" in resumed.stderr
    assert keys(out / "checkpoint-4" / "model.safetensors") == keys(
        out / "checkpoint-2" / "model.safetensors"
    )
    from diffusers import UNet2DModel

    UNet2DModel.from_pretrained(out / "unet", use_safetensors=True)  # stock names, stock class


def test_a_compiled_model_checkpoints_resumes_and_exports_its_own_weight_names(tmp_path, mnist_dir):
    compile_and_resume(tmp_path / "run", mnist_dir, "eager")  # dynamo's wrapper without inductor's compile


# What `auto` must become here: bf16 only where oneDNN has bf16 kernels for this CPU (AVX-512 or AMX).
AUTO = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"


@pytest.mark.parametrize(
    "config, launcher, effective, log",
    [
        ("bf16", "fp16", "bf16", "mixed precision bf16 (training.mixed_precision); it overrides the "
                                 "launcher's --mixed_precision fp16 (set it null to use that)"),
        ("null", "bf16", "bf16", "mixed precision bf16 (from accelerate: launcher or accelerate config)"),
        ("auto", "fp16", AUTO, f"mixed precision {AUTO} (training.mixed_precision auto: this CPU "
                               f"{'computes' if AUTO == 'bf16' else 'does not compute'} bf16 natively); it "
                               "overrides the launcher's --mixed_precision fp16"),
    ],
)  # fmt: skip
def test_the_config_precision_wins_over_the_launcher_and_the_run_says_which(
    tmp_path, mnist_dir, config, launcher, effective, log
):
    out = tmp_path / "run"
    result = run(accelerate_launch(TRAIN, *TINY, "--dataset.path", mnist_dir, "--training.output_dir", out,
                                   "--training.max_train_steps", "1", "--training.mixed_precision", config,
                                   mixed_precision=launcher))  # fmt: skip
    assert log in result.stderr
    saved = load_config(out / "config.yaml").training.mixed_precision
    assert saved == effective  # what a resume from config.yaml uses: never `auto`


# One process, a real torch.amp.GradScaler on the CPU in accelerate's place (accelerate gives fp16 no scaler
# on a CPU). Step 1's loss is finite but so large that, scaled, its gradients overflow; the scaler then backs
# off to a scale that fits.
FP16_SCALER = textwrap.dedent(
    """
    import json, sys, torch
    from hf_ddpm.config import load_config
    from hf_ddpm.training import DiffusionTrainer

    class ScaledTrainer(DiffusionTrainer):
        def make_accelerator(self):
            accelerator = super().make_accelerator()
            accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1e38, backoff_factor=1e-30)
            return accelerator

        def compute_loss(self, model, images, labels, micro_step):
            loss, extras = super().compute_loss(model, images, labels, micro_step)
            return (loss * 1e6 if micro_step == 0 else loss), extras

    cfg = load_config(sys.argv[1], sys.argv[2:])
    trainer = ScaledTrainer(cfg)
    trainer.train()
    print(json.dumps({"skipped": trainer.nonfinite["total"], "steps": trainer.global_step}))
    """
)


def test_fp16_overflow_steps_are_counted_as_skipped_and_leave_the_ema_alone(tmp_path, mnist_dir):
    out = tmp_path / "run"
    config = [REPO / "training" / "configs" / "tiny.yaml", "--dataset.path", mnist_dir,
              "--dataset.max_samples", "256", "--training.output_dir", out,
              "--training.max_train_steps", "4"]  # fmt: skip
    result = run([sys.executable, "-c", FP16_SCALER, *config])
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts == {"skipped": 1, "steps": 4}
    assert "step 1: the gradients overflowed in fp16, update skipped (1 in a row)" in result.stderr
    ema = json.loads((out / "checkpoint-4" / "unet_ema" / "config.json").read_text())
    assert ema["optimization_step"] == 3  # the overflowing step did not move the average


def test_streamed_rows_are_split_between_processes_each_decoding_its_own(tmp_path, mnist_dir):
    """Two gloo processes stream the split: each decodes rows of its own (none decoded twice), and the
    batches both train on are the rows they decoded."""
    out = tmp_path / "run"
    env = {"ACCELERATE_USE_CPU": "1", "HF_DDPM_RECORD": str(tmp_path)}
    cmd = accelerate_launch(HARNESS, *TINY, "--dataset.path", mnist_dir, "--dataset.streaming", "true",
                            "--dataset.shuffle_buffer_size", "64", "--training.output_dir", out,
                            "--training.max_train_steps", "4", "--training.train_batch_size", "16",
                            num_processes=2)  # fmt: skip
    run(cmd, **env)

    def recorded(rank: int, kind: str) -> list:
        lines = (tmp_path / f"rank{rank}.jsonl").read_text().splitlines()
        return [entry[kind] for entry in map(json.loads, lines) if kind in entry]

    decoded = [recorded(rank, "decoded") for rank in (0, 1)]
    assert all(decoded) and not set(decoded[0]) & set(decoded[1])
    for rank in (0, 1):
        trained = [h for batch in recorded(rank, "images") for h in batch]
        assert len(trained) == 4 * 16 and set(trained) <= set(decoded[rank])


def unlabelled_data(folder: Path, rows: int = 96) -> Path:
    """MNIST-like rows of a `ClassLabel` column whose every third row has no label."""
    images, labels = [], []
    for i in range(rows):
        png = io.BytesIO()
        Image.fromarray(np.full((28, 28), 8 * (i % 32), np.uint8)).save(png, format="PNG")
        images.append({"bytes": png.getvalue(), "path": None})
        labels.append(None if i % 3 == 2 else i % 2)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    folder.mkdir()
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
        folder / "train-00000-of-00001.parquet"
    )
    return folder


@pytest.mark.parametrize("streaming, processes", [("false", 1), ("true", 2)])
def test_unlabelled_rows_stop_a_class_conditional_run_on_every_process(tmp_path, streaming, processes):
    data = unlabelled_data(tmp_path / "data")
    cmd = accelerate_launch(TRAIN, *TINY, "--dataset.path", data, "--dataset.streaming", streaming,
                            "--model.class_conditional", "true", "--training.output_dir", tmp_path / "run",
                            "--training.train_batch_size", "8", "--training.max_train_steps", "6",
                            num_processes=processes)  # fmt: skip
    result = run(cmd, ok=False, ACCELERATE_USE_CPU="1")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: rows without a label in 'label': a class-conditional model needs every row labelled (filter "
        "the data or set model.class_conditional false)"
    ], result.stderr[-3000:]


@gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16", "no"])
def test_diffusion_training_runs_on_the_gpu(tmp_path, mnist_dir, precision):
    out = tmp_path / "run"
    run(accelerate_launch(TRAIN, *TINY, "--dataset.path", mnist_dir, "--training.output_dir", out,
                          "--training.max_train_steps", "6", "--training.mixed_precision", precision,
                          "--training.eval_every", "6", "--training.eval_num_images", "32",
                          "--training.dataloader_num_workers", "2"))  # fmt: skip
    assert "NVIDIA" in json.loads((out / "run_info.json").read_text())["hardware"]
    assert (out / "model_index.json").is_file() and (out / "eval.json").is_file()


@gpu
def test_the_autoencoder_trains_on_the_gpu_with_its_ema_and_flips(tmp_path, mnist_dir):
    out = tmp_path / "ae"
    config = REPO / "training" / "configs" / "autoencoder-textures.yaml"  # the config that flips
    run(accelerate_launch(REPO / "training" / "train_autoencoder.py", "--config", config,
                          "--dataset.path", mnist_dir, "--dataset.name", "mnist",
                          "--dataset.max_samples", "256", "--training.output_dir", out,
                          "--training.max_train_steps", "4",
                          "--training.eval_num_images", "64"))  # fmt: skip
    assert (out / "diffusion_pytorch_model.safetensors").is_file()


@gpu
def test_compiled_training_with_inductor_resumes_on_the_gpu(tmp_path, mnist_dir):
    compile_and_resume(tmp_path / "run", mnist_dir, "inductor")


@gpu
def test_sampling_and_scoring_run_on_the_gpu(tmp_path):
    model = REPO / "checkpoints" / "ddpm-mnist"
    run([sys.executable, "-m", "hf_ddpm.sample", "--model", model, "--sampler", "dpm-solver", "--steps", "5",
         "--num-images", "16", "--device", "cuda", "--out", tmp_path / "grid.png"])  # fmt: skip
    out = tmp_path / "eval.json"
    run([sys.executable, "-m", "hf_ddpm.evaluate", "--model", model, "--num-images", "64", "--steps", "5",
         "--inception-images", "16", "--device", "cuda", "--out", out])  # fmt: skip
    assert json.loads(out.read_text())["samples"]["inception_fid"] > 0
