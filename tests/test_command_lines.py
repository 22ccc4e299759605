"""Every command line refuses bad arguments in one line naming the argument, with exit status 2 and no
traceback: the library's commands, the training scripts and the benchmarks, run as a user runs them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from command_line import check_one_line, run_in_this_process

REPO = Path(__file__).resolve().parents[1]
MODEL = str(REPO / "checkpoints" / "ddpm-mnist")
CFG_MODEL = str(REPO / "checkpoints" / "ddpm-mnist-cfg")
PY = [sys.executable]
BENCH = REPO / "benchmarks"

SAMPLE = [*PY, "-m", "hf_ddpm.sample", "--model", MODEL]
EVALUATE = [*PY, "-m", "hf_ddpm.evaluate", "--model", MODEL]
TRAIN = [*PY, REPO / "training" / "train.py"]
TOO_SMALL = "0 is too small: it must be at least 1"

CASES = [
    # hf_ddpm.sample
    ([*SAMPLE, "--num-images", "0"], f"--num-images: {TOO_SMALL}"),
    ([*SAMPLE, "--steps", "0"], f"--steps: {TOO_SMALL}"),
    ([*SAMPLE, "--batch-size", "-3"], "--batch-size: -3 is too small"),
    ([*PY, "-m", "hf_ddpm.sample", "--model", CFG_MODEL, "--guidance-scale", "-1"],
     "--guidance-scale: -1 is negative: it must be 0 or more"),
    ([*SAMPLE, "--guidance-scale", "2"], "is not class-conditional, so there is nothing to guide"),
    ([*SAMPLE, "--sampler", "euler"], "--sampler: invalid choice: 'euler'"),
    ([*PY, "-m", "hf_ddpm.sample", "--model", "/no/such/model"], "folder /no/such/model does not exist"),
    # hf_ddpm.evaluate
    ([*EVALUATE, "--num-images", "1"], "--num-images: 1 is too small: it must be at least 2"),
    ([*EVALUATE, "--num-images", "0"], "--num-images: 0 is too small"),
    ([*EVALUATE, "--inception-images", "1"], "a Frechet distance needs at least 2 images"),
    ([*EVALUATE, "--steps", "0"], f"--steps: {TOO_SMALL}"),
    ([*EVALUATE, "--classifier", "nowhere"], "no classifier 'nowhere'"),
    ([*PY, "-m", "hf_ddpm.evaluate"], "--model is required (or --floor-only with --dataset)"),
    # hf_ddpm.hub, hf_ddpm.visualize, hf_ddpm.classifier, the console command
    ([*PY, "-m", "hf_ddpm.hub", "push", "/no/such/run", "org/name"], "/no/such/run holds no model_index"),
    ([*PY, "-m", "hf_ddpm.hub", "push"], "the following arguments are required: output_dir, repo_id"),
    ([*PY, "-m", "hf_ddpm.visualize", "--only", "everything"], "--only: invalid choice: 'everything'"),
    ([*PY, "-m", "hf_ddpm.visualize", "--seed", "one"], "--seed: invalid int value: 'one'"),
    ([*PY, "-m", "hf_ddpm.classifier", "--dataset", "mnist", "--out", "x", "--epochs", "0"],
     f"--epochs: {TOO_SMALL}"),
    (["hf-ddpm", "sampel"], "unknown command 'sampel': choose one of"),
    (["hf-ddpm", "sample", "--model", MODEL, "--num-images", "0"], f"--num-images: {TOO_SMALL}"),
    # the training scripts
    ([*TRAIN, "--training.max_train_steps", "0"], "training.max_train_steps is 0: it must be at least 1"),
    ([*TRAIN, "--training.eval_num_images", "1"], "training.eval_num_images is 1: it must be at least 2"),
    ([*PY, REPO / "training" / "train_autoencoder.py", "--training.learning_rate", "fast"],
     "training.learning_rate: expected float"),
    # the benchmarks
    ([*PY, BENCH / "sampler_sweep.py", "--model", MODEL, "--num-images", "1"],
     "--num-images: 1 is too small: it must be at least 2"),
    ([*PY, BENCH / "sampler_sweep.py", "--model", MODEL, "--only", "ddim:0"], "is not SAMPLER:STEPS"),
    ([*PY, BENCH / "guidance_sweep.py", "--model", CFG_MODEL, "--scales", "1", "-2"],
     "--scales: -2 is negative"),
    ([*PY, BENCH / "throughput.py", "--batch-size", "0"], f"--batch-size: {TOO_SMALL}"),
    ([*PY, BENCH / "throughput.py", "--train-steps", "40,10"], "need 0 < N1 < N2"),
    ([*PY, BENCH / "time_to_quality.py", "run", "--budget-minutes", "0"], "0 is not allowed"),
    ([*PY, BENCH / "latent_vs_pixel.py", "--repeats", "0"], f"--repeats: {TOO_SMALL}"),
    ([*PY, BENCH / "flow_vs_ddpm.py", "compare", "--num-images", "1"], "--num-images: 1 is too small"),
    ([*PY, BENCH / "learned_variance.py", "compare", "--repeats", "0"], f"--repeats: {TOO_SMALL}"),
    ([*PY, BENCH / "flow_vs_ddpm.py", "compare", "--runs", "ddpm=outputs/x"], "is not MODEL=FOLDER"),
    ([*PY, BENCH / "flow_vs_ddpm.py", "compare", "--runs", "flow=/nix"], "no finished training run in /nix"),
    ([*PY, BENCH / "metric_scale.py", "--num-images", "1"], "--num-images: 1 is too small"),
]  # fmt: skip


@pytest.mark.parametrize("cmd, message", CASES, ids=[" ".join(map(str, c[0][1:4])) for c in CASES])
def test_bad_arguments_end_in_one_line_and_status_2(cmd, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    check_one_line(*run_in_this_process(cmd, capsys), message)


# One case of each kind of entry point, run as a user runs it, in a process of its own: a module, the console
# command, a training script, a benchmark script.
REAL_PROCESSES = [CASES[0], CASES[18], CASES[20], CASES[26]]


@pytest.mark.parametrize("cmd, message", REAL_PROCESSES, ids=["module", "console", "training", "benchmark"])
def test_the_real_processes_end_in_one_line_and_status_2(cmd, message, tmp_path):
    if cmd[0] == "hf-ddpm":
        cmd = [str(Path(sys.executable).with_name("hf-ddpm")), *cmd[1:]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home")}
    result = subprocess.run([str(c) for c in cmd], cwd=tmp_path, env=env, capture_output=True, text=True)
    check_one_line(result.returncode, result.stderr, message)


def test_the_sample_command_draws_what_generate_draws(tmp_path):
    """`python -m hf_ddpm.sample` writes the grid of `generate`'s images for the same model, sampler, steps,
    seed and guidance: the command adds nothing of its own to the pixels."""
    import numpy as np
    from PIL import Image

    from hf_ddpm.pipeline import generate, grid_columns, load_pipeline, save_grid

    out = tmp_path / "grid.png"
    cmd = [*PY, "-m", "hf_ddpm.sample", "--model", CFG_MODEL, "--sampler", "ddim", "--steps", "4",
           "--num-images", "10", "--seed", "3", "--guidance-scale", "1.5", "--device", "cpu",
           "--out", out]  # fmt: skip
    result = subprocess.run([str(c) for c in cmd], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "10 images, ddim 4 steps" in result.stdout
    pipeline = load_pipeline(CFG_MODEL, "ddim")
    expected = save_grid(generate(pipeline, 10, 4, 3, guidance_scale=1.5), tmp_path / "expected.png",
                         cols=grid_columns(pipeline))  # fmt: skip
    found, wanted = (np.asarray(Image.open(p), dtype=np.int16) for p in (out, expected))
    assert found.shape == wanted.shape and np.abs(found - wanted).max() <= 1  # rounding at most
    assert (found != wanted).mean() < 1e-3
