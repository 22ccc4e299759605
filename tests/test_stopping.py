"""Stopping a run without losing work, and what a run prints: real signals sent to real `accelerate launch`
and `python training/train.py` runs of the tiny preset on real MNIST digits, resumed and compared bit for
bit with an uninterrupted run (every run with one CPU thread per process)."""

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import torch
from run_logs import scalars
from safetensors.torch import load_file

from hf_ddpm.launch import accelerate_launch
from hf_ddpm.training.checkpoints import list_checkpoints
from hf_ddpm.training.progress import TrainingClock
from hf_ddpm.training.stopping import REQUEUE_EXIT_CODE

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "training" / "train.py"
HARNESS = REPO / "tests" / "train_harness.py"
STEPS = 16
RUN = ["--config", REPO / "training" / "configs" / "tiny.yaml", "--dataset.max_samples", "512",
       "--training.max_train_steps", str(STEPS), "--training.checkpointing_steps", "4",
       "--training.checkpoints_total_limit", "null", "--training.logging_steps", "1"]  # fmt: skip
RESUME = ["--training.resume_from_checkpoint", "latest"]
WEIGHTS = ["unet/diffusion_pytorch_model.safetensors", f"checkpoint-{STEPS}/model.safetensors"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # what accelerate launch gives each process


def args(out: Path, data: Path, *extra) -> list[str]:
    return [str(a) for a in (*RUN, "--dataset.path", data, "--training.output_dir", out, *extra)]


def run(cmd: list, **env) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=REPO, env={**os.environ, **env}, capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def start(cmd: list, **env) -> subprocess.Popen:
    """A run in a session of its own (so a signal can go to its whole process group, as Ctrl-C's and a
    scheduler's do), its stdout and stderr merged into one pipe that is not a terminal."""
    merged = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    env = {**os.environ, **env}
    return subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env, start_new_session=True, **merged)


def read_until(process: subprocess.Popen, marker: str) -> list[str]:
    """The output lines up to the first one containing `marker` (the run is still going then)."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"{marker!r} never came:\n" + "".join(lines[-30:]))


def same_weights(a: Path, b: Path) -> None:
    for name in WEIGHTS:
        expected, found = load_file(a / name), load_file(b / name)
        assert expected.keys() == found.keys() and all(
            torch.equal(expected[k], found[k]) for k in expected
        ), name


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def wait_gone(pid: int) -> None:
    """Waits for a process this test did not start (an orphaned training process) to end."""
    while Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid):
        time.sleep(0.2)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist_dir) -> Path:
    """The uninterrupted run, one process, one thread."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run([sys.executable, TRAIN, *args(out, mnist_dir)], **ONE_THREAD)
    return out


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_asks_to_be_requeued(
    reference, tmp_path, mnist_dir
):
    """`kill -TERM` of `python training/train.py`: the current step ends, checkpoint-K is written, one line
    names it and the resume command, the status is 75; resuming ends with the uninterrupted run's weights."""
    out = tmp_path / "run"
    process = start([sys.executable, TRAIN, *args(out, mnist_dir)], **ONE_THREAD)
    read_until(process, f"step 6/{STEPS}")
    process.send_signal(signal.SIGTERM)
    rest = process.communicate()[0]
    assert process.returncode == REQUEUE_EXIT_CODE, rest[-3000:]
    assert "Traceback" not in rest
    last = rest.strip().splitlines()[-1]
    stopped = int(last.split("after step ")[1].split(".")[0])
    assert 6 <= stopped < STEPS
    assert last == (
        f"stopped by SIGTERM after step {stopped}. The last complete checkpoint is "
        f"{out}/checkpoint-{stopped}; resume with: accelerate launch {TRAIN} --config {out}/config.yaml "
        "--training.resume_from_checkpoint latest"
    )
    assert list_checkpoints(out)[-1].name == f"checkpoint-{stopped}"
    assert not list(out.glob("*.partial"))
    run([sys.executable, TRAIN, *args(out, mnist_dir, *RESUME)], **ONE_THREAD)
    same_weights(reference, out)


def test_ctrl_c_to_the_accelerate_launch_group_stops_cleanly(reference, tmp_path, mnist_dir):
    """SIGINT to the process group of `accelerate launch` (what Ctrl-C does): the training process stops
    after its step with a checkpoint and no traceback of its own, and the run resumes to the same weights."""
    out = tmp_path / "run"
    launcher = start(accelerate_launch(TRAIN, *args(out, mnist_dir)))
    read_until(launcher, f"step 5/{STEPS}")
    (trainer,) = children(launcher.pid)
    os.killpg(launcher.pid, signal.SIGINT)
    rest = launcher.communicate()[0]  # the pipe closes when the training process, too, has ended
    wait_gone(trainer)
    assert "received SIGINT: stopping after this step, with a checkpoint" in rest
    stopped = int(rest.split("stopped by SIGINT after step ")[1].split(".")[0])
    assert list_checkpoints(out)[-1].name == f"checkpoint-{stopped}"
    run(accelerate_launch(TRAIN, *args(out, mnist_dir, *RESUME)))
    same_weights(reference, out)


def test_one_process_signal_stops_both_at_the_same_step(tmp_path, mnist_dir):
    """Two gloo processes: SIGTERM to rank 1 only stops rank 0 too, at the same step, with one complete
    checkpoint holding both ranks' state; the resumed pair ends as an uninterrupted pair does."""
    env = {"ACCELERATE_USE_CPU": "1", "HF_DDPM_RECORD": str(tmp_path)}
    batch = ["--training.train_batch_size", "16"]
    whole = tmp_path / "whole"
    run(accelerate_launch(HARNESS, *args(whole, mnist_dir, *batch), num_processes=2), **env)
    for rank in (0, 1):
        (tmp_path / f"rank{rank}.jsonl").unlink()
    out = tmp_path / "run"
    launcher = start(accelerate_launch(HARNESS, *args(out, mnist_dir, *batch), num_processes=2), **env)
    read_until(launcher, f"step 5/{STEPS}")
    pid = json.loads((tmp_path / "rank1.jsonl").read_text().splitlines()[0])["pid"]
    os.kill(pid, signal.SIGTERM)
    rest = launcher.communicate()[0]
    assert launcher.returncode != 0
    stopped = int(rest.split("stopped by a signal to another process after step ")[1].split(".")[0])
    checkpoint = out / f"checkpoint-{stopped}"
    assert list_checkpoints(out)[-1] == checkpoint
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()
    run(accelerate_launch(HARNESS, *args(out, mnist_dir, *batch, *RESUME), num_processes=2), **env)
    same_weights(whole, out)


def test_a_second_signal_exits_at_once_and_latest_stays_complete(reference, tmp_path, mnist_dir):
    """Two signals at once (of two kinds, which the kernel does not merge into one): the process exits
    mid-step without a new checkpoint, and `latest` is still a complete one that resumes exactly."""
    out = tmp_path / "run"
    process = start([sys.executable, TRAIN, *args(out, mnist_dir)], **ONE_THREAD)
    read_until(process, f"step 5/{STEPS}")
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGINT)
    rest = process.communicate()[0]
    assert process.returncode in (128 + signal.SIGTERM, 128 + signal.SIGINT), rest[-3000:]
    assert "while stopping: exiting now. The last complete checkpoint is" in rest
    latest = list_checkpoints(out)[-1]
    assert (latest / "model.safetensors").is_file() and (latest / "optimizer.bin").is_file()
    run([sys.executable, TRAIN, *args(out, mnist_dir, *RESUME)], **ONE_THREAD)
    same_weights(reference, out)


def test_a_log_file_gets_one_line_per_logging_period_and_a_terminal_gets_the_bar(tmp_path, mnist_dir):
    every = ["--training.logging_steps", "4", "--training.checkpointing_steps", "100"]
    piped = run([sys.executable, TRAIN, *args(tmp_path / "piped", mnist_dir, *every)], **ONE_THREAD).stderr
    lines = [line for line in piped.splitlines() if f"/{STEPS}: loss" in line]
    assert [line.split("step ")[1].split(":")[0] for line in lines] == ["4/16", "8/16", "12/16", "16/16"]
    assert all(" img/s, ETA " in line for line in lines)
    assert "\r" not in piped and "it/s" not in piped

    # The same run on a pseudo-terminal: tqdm's bar redraws in place, and no step lines.
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a terminal's size
    cmd = [sys.executable, TRAIN, *args(tmp_path / "tty", mnist_dir, *every)]
    process = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env={**os.environ, **ONE_THREAD},
                               stdin=secondary, stdout=secondary, stderr=secondary)  # fmt: skip
    os.close(secondary)
    output = b""
    while True:
        ready, _, _ = select.select([primary], [], [], 1)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the terminal closed: the run is over
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    assert process.wait() == 0
    text = output.decode(errors="replace")
    assert "\r" in text and f"{STEPS}/{STEPS}" in text and "it/s" in text
    assert f"/{STEPS}: loss" not in text


def test_a_resumed_run_logs_each_step_and_evaluation_once(tmp_path, mnist_dir):
    """A run killed after step 7 (evaluations at 2, 4, 6; checkpoint at 4) and resumed from checkpoint-4:
    eval_log.jsonl and TensorBoard hold every step once, the resumed run's values where both logged."""
    out = tmp_path / "run"
    extra = ["--training.eval_every", "2", "--training.eval_num_images", "16",
             "--training.eval_num_inference_steps", "2", "--training.report_to", "tensorboard"]  # fmt: skip
    killed = subprocess.run(
        [str(c) for c in accelerate_launch(HARNESS, *args(out, mnist_dir, *extra))],
        cwd=REPO, env={**os.environ, "HF_DDPM_KILL_AT": "step:8"}, capture_output=True, text=True,
    )  # fmt: skip
    assert killed.returncode != 0 and "SIGKILL" in killed.stderr
    before = [json.loads(line)["step"] for line in (out / "eval_log.jsonl").read_text().splitlines()]
    assert before == [2, 4, 6]
    run(accelerate_launch(HARNESS, *args(out, mnist_dir, *extra, *RESUME)))
    steps = [json.loads(line)["step"] for line in (out / "eval_log.jsonl").read_text().splitlines()]
    assert steps == list(range(2, STEPS + 1, 2))
    assert len(scalars(out / "logs", "loss")) == STEPS
    assert len(scalars(out / "logs", "eval/classifier_fid")) == STEPS // 2


def test_a_write_that_fails_on_one_process_stops_both_with_one_line(tmp_path, mnist_dir):
    """Two gloo processes; process 1 cannot write its part of the first checkpoint (an operating-system write
    error, EFBIG): both stop there with one line naming the process and the reason, neither waits for the
    other, and no half-written checkpoint is left."""
    out = tmp_path / "run"
    env = {"ACCELERATE_USE_CPU": "1", "HF_DDPM_NO_ROOM_RANK": "1"}
    cmd = accelerate_launch(
        HARNESS, *args(out, mnist_dir, "--training.train_batch_size", "16"), num_processes=2
    )
    result = subprocess.run(cmd, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert errors[0].startswith("error: could not write checkpoint-4 (process 1: ")
    assert "there is no complete one yet" in errors[0]
    assert not (out / "checkpoint-4").exists() and not (out / "checkpoint-4.partial").exists()


def test_the_step_a_stopped_process_was_continued_in_counts_as_the_mean_step():
    """SIGCONT (what continues a process stopped by SIGSTOP, Ctrl-Z or a scheduler's suspend) during a step:
    that step's wall time holds the pause, so the training clock counts the mean of the steps before it."""
    clock = TrainingClock()
    with clock.counting():
        for _ in range(2):
            clock.start()
            time.sleep(0.02)
            clock.stop()
        two = clock.seconds
        assert two >= 0.04  # uninterrupted steps count their wall time
        clock.start()
        os.kill(os.getpid(), signal.SIGCONT)
        time.sleep(0.5)
        clock.stop()
        assert clock.seconds == pytest.approx(1.5 * two)  # the two steps and their mean
        clock.start()
        time.sleep(0.02)
        clock.stop()
        assert clock.seconds - 1.5 * two >= 0.02  # the next step is timed again
    assert signal.getsignal(signal.SIGCONT) == signal.SIG_DFL


FREES_ITS_TRAINER = """
import gc, sys, weakref
from hf_ddpm.training import DiffusionTrainer, run_cli
made = []
class Recorded(DiffusionTrainer):
    def __init__(self, cfg):
        super().__init__(cfg)
        made.append(weakref.ref(self))
gc.disable()  # only run_cli's own collection may free the trainer
run_cli(Recorded, sys.argv[1:])
print("freed" if made[0]() is None else "alive")
"""


def test_the_command_line_frees_the_finished_trainer_before_the_interpreter_shuts_down(tmp_path, mnist_dir):
    """The trainer is held only by reference cycles once it is done, and with several processes its DDP model
    holds the process group, whose destruction during the interpreter's shutdown can abort a run that
    succeeded; `run_cli` collects it before it returns."""
    result = run([sys.executable, "-c", FREES_ITS_TRAINER, *args(tmp_path / "run", mnist_dir)], **ONE_THREAD)
    assert result.stdout.splitlines()[-1] == "freed"
