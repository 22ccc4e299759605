"""training/train.py (`hf_ddpm.training.DiffusionTrainer`) with a fault injected and what each process saw
recorded, for tests/test_reliability.py.

Launched exactly like train.py (`accelerate launch tests/train_harness.py --config ...`); the real loop
runs, and the environment says what to do to it:

    HF_DDPM_KILL_AT  where the process SIGKILLs itself:
                     step:N        in step N, after its loss and before the update
                     checkpoint:N  writing checkpoint-N, after model.safetensors and before optimizer.bin
                     grid:N        half-way through writing samples/step_N.png
                     export        in the final export, after unet/ and before model_index.json
    HF_DDPM_RECORD   a folder: each process appends to rank{R}.jsonl its process id, then one hash per image
                     of every batch it trains on, a hash of its EMA weights after every update, and one hash
                     per row it decodes from a stream.
    HF_DDPM_NO_ROOM_RANK  R: from its first checkpoint on, process R may not grow any file (its file size
                     limit drops to 0, so its writes fail with EFBIG, an error of the operating system).
"""

import hashlib
import json
import os
import resource
import signal
import tempfile
from pathlib import Path

import accelerate.checkpointing
from diffusers.training_utils import EMAModel

import hf_ddpm.data
import hf_ddpm.training.diffusion as train
from hf_ddpm.training import DiffusionTrainer, run_cli

KILL = os.environ.get("HF_DDPM_KILL_AT", "")
NO_ROOM_RANK = os.environ.get("HF_DDPM_NO_ROOM_RANK")
where, _, at = KILL.partition(":")
RECORD = os.environ.get("HF_DDPM_RECORD")
RANK = int(os.environ.get("RANK", "0"))
current = {"micro_step": -1}


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def record(entry: dict) -> None:
    with open(Path(RECORD) / f"rank{RANK}.jsonl", "a") as f:
        f.write(json.dumps(entry) + "\n")


def draw_batch(seed, micro_step, *args, **kwargs):
    current["micro_step"] = micro_step
    return draw_batch.original(seed, micro_step, *args, **kwargs)


def training_loss(*args, **kwargs):
    loss = training_loss.original(*args, **kwargs)
    if where == "step" and current["micro_step"] + 1 == int(at):
        kill()
    return loss


def checkpoint_save(obj, f, *args, **kwargs):
    if NO_ROOM_RANK is not None and RANK == int(NO_ROOM_RANK):
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    if (
        where == "checkpoint"
        and Path(f).parent.name == f"checkpoint-{at}.partial"
        and Path(f).name == "optimizer.bin"
    ):
        kill()
    return checkpoint_save.original(obj, f, *args, **kwargs)


def save_grid(images, path, *args, **kwargs):
    path = Path(path)
    if where == "grid" and path.name == f"step_{int(at):06d}.png":
        with tempfile.TemporaryDirectory() as tmp:
            png = save_grid.original(images, Path(tmp) / path.name, *args, **kwargs).read_bytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".partial"), "wb") as f:  # where save_grid writes first
            f.write(png[: len(png) // 2])
            f.flush()
            os.fsync(f.fileno())
        kill()
    return save_grid.original(images, path, *args, **kwargs)


def export_pipeline(model, scheduler, out, *args, **kwargs):
    if where == "export" and Path(out).name != "best.partial":
        model.save_pretrained(Path(out) / "unet")
        kill()
    return export_pipeline.original(model, scheduler, out, *args, **kwargs)


def to_model_range(images, *args, **kwargs):
    record({"images": [hashlib.sha1(image.numpy().tobytes()).hexdigest()[:12] for image in images]})
    return to_model_range.original(images, *args, **kwargs)


def row_to_array(*args, **kwargs):
    array = row_to_array.original(*args, **kwargs)
    record({"decoded": hashlib.sha1(array.tobytes()).hexdigest()[:12]})
    return array


def ema_step(self, parameters):
    ema_step.original(self, parameters)
    digest = hashlib.sha1(b"".join(p.detach().cpu().numpy().tobytes() for p in self.shadow_params))
    record({"ema": digest.hexdigest()})


def patch(owner, name: str, wrapper) -> None:
    wrapper.original = getattr(owner, name)
    setattr(owner, name, wrapper)


if KILL or NO_ROOM_RANK is not None:
    patch(accelerate.checkpointing, "save", checkpoint_save)
if KILL:
    patch(train, "draw_batch", draw_batch)
    patch(train, "training_loss", training_loss)
    patch(train, "save_grid", save_grid)
    patch(train, "export_pipeline", export_pipeline)
if RECORD:
    record({"pid": os.getpid()})
    patch(train, "to_model_range", to_model_range)
    patch(EMAModel, "step", ema_step)
    patch(hf_ddpm.data, "_row_to_array", row_to_array)

if __name__ == "__main__":
    run_cli(DiffusionTrainer)
