"""The `accelerate launch` command line of a training script, as the Makefile, the tests and the benchmarks
run it: one machine, an explicit process and thread count, and no launcher defaults from a saved
`accelerate config` that would make runs differ between machines."""

from __future__ import annotations

import sys
from pathlib import Path


def accelerate_launch(
    script: str | Path,
    *args: object,
    num_processes: int = 1,
    threads: int = 1,
    mixed_precision: str = "no",
    dynamo_backend: str = "no",
) -> list[str]:
    """`python -m accelerate.commands.launch ... SCRIPT ARGS` with this Python.

    Args:
        script: the training script (`training/train.py`, `training/train_autoencoder.py`, ...).
        args: its arguments (`--config`, `--training.max_train_steps`, ...); paths and numbers are str()-ed.
        num_processes: processes on this machine (CPU processes talk through gloo).
        threads: CPU threads per process (1, accelerate's own default; the Makefile gives all cores). A
            resumed run matches an uninterrupted one bit for bit only at equal thread counts.
        mixed_precision: the launcher's precision; a config's `training.mixed_precision` wins over it
            (see `hf_ddpm.training.loop.build_accelerator`).
        dynamo_backend: `no`, or `inductor` to run the model through `torch.compile`.
    """
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1"]
    launch += ["--num_processes", str(num_processes), "--num_cpu_threads_per_process", str(threads)]
    launch += ["--mixed_precision", mixed_precision, "--dynamo_backend", dynamo_backend]
    if num_processes > 1:
        # torch.distributed with gloo on CPU, its rendezvous on a free port: runs started side by side (test
        # workers, a sweep) would otherwise all race for accelerate's default 29500.
        launch += ["--multi_gpu", "--main_process_port", "0"]
    return [*launch, str(script), *(str(a) for a in args)]
