"""Training checkpoints: `OUTPUT_DIR/checkpoint-STEP/` folders written atomically.

`accelerator.save_state` writes into `checkpoint-STEP.partial/`, which is renamed to `checkpoint-STEP`
only once complete. A kill at any moment therefore leaves either no new folder or a complete one, and
`latest` never picks a half-written checkpoint, and a write that fails (disk full) removes its partial
folder. `load_checkpoint` first compares the checkpoint's weights with the model the config builds, so
another config fails in one line, and refuses any file that is not plain tensors.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

from ..files import partial_path

_NAME = re.compile(r"checkpoint-(\d+)")


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, folder gone); the message is one line."""


def check_writable(output_dir: str | Path) -> None:
    """Creates `output_dir`; `ValueError` when it cannot be written (read-only, not a folder, ...)."""
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"training.output_dir {output_dir} is not writable ({err.strerror}): choose another one"
        ) from err


def register_ema(accelerator, ema, model_cls: type, folder: str) -> None:
    """Puts the EMA weights (`diffusers.training_utils.EMAModel` of a `model_cls`) in every checkpoint,
    as safetensors in `checkpoint-STEP/folder/`, and restores them on resume."""

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            ema.save_pretrained(str(Path(output_dir) / folder))

    def load_hook(models, input_dir):
        loaded = type(ema).from_pretrained(str(Path(input_dir) / folder), model_cls=model_cls)
        ema.load_state_dict(loaded.state_dict())
        ema.to(accelerator.device)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def check_free_space(output_dir: str | Path, model: torch.nn.Module, use_ema: bool) -> None:
    """`ValueError` when `output_dir` has no room for one checkpoint and the final export of `model`.

    A checkpoint holds the weights, AdamW's two moments and the EMA weights; the export one more copy.
    """
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    need = model_bytes * (3 + use_ema + 1)
    free = shutil.disk_usage(output_dir).free
    if free < need:
        raise ValueError(
            f"training.output_dir {output_dir} has {_mb(free)} free, but a checkpoint and the export of "
            f"this model need about {_mb(need)}: free space or choose another training.output_dir"
        )


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _free(path: str | Path) -> str:
    try:
        return _mb(shutil.disk_usage(path).free)
    except OSError:
        return "unknown space"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints in `output_dir`, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: str | Path) -> int:
    match = _NAME.fullmatch(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint folder: expected a name like checkpoint-500")
    return int(match.group(1))


def resolve_checkpoint(output_dir: str | Path, resume_from: str) -> Path | None:
    """`"latest"` -> the newest complete checkpoint (None if there is none); otherwise a folder path."""
    if resume_from == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume_from)
    if not path.is_dir():
        path = Path(output_dir) / resume_from
    if not path.is_dir():
        raise ValueError(
            f"training.resume_from_checkpoint {resume_from!r} is not a folder: use 'latest' or a "
            f"checkpoint-STEP folder such as {Path(output_dir) / 'checkpoint-500'}"
        )
    checkpoint_step(path)
    return path


def save_checkpoint(accelerator, output_dir: str | Path, step: int, total_limit: int | None) -> Path:
    """Saves the accelerator state as `checkpoint-{step}` and prunes the oldest beyond `total_limit`.

    Called on every process (each writes its own RNG state); only the main process renames and prunes.
    A failed write (disk full, a folder one process may not write) on any process removes the partial
    folder and raises `CheckpointWriteError` on every process at once, the message naming the process and
    its reason: the checkpoints written before stay as they were, and no process waits for another.
    """
    final = Path(output_dir) / f"checkpoint-{step}"
    partial = partial_path(final)
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)  # left by a run killed mid-write
    accelerator.wait_for_everyone()
    reason = None
    try:
        accelerator.save_state(str(partial))
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as a RuntimeError
        if isinstance(err, OSError) and err.strerror:
            reason = err.strerror
        else:  # torch.save: "[enforce fail at inline_container.cc:672] . unexpected pos ..."
            first_line = str(err).splitlines()[0]
            reason = "write failed: " + re.sub(r"^\[enforce fail at [^\]]*\][ .]*", "", first_line)
    reasons = _gather_reasons(accelerator, reason)
    if reasons:
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        found = list_checkpoints(output_dir)
        last = f"the last complete one is {found[-1].name}" if found else "there is no complete one yet"
        rank, why = reasons[0]
        why = why if accelerator.num_processes == 1 else f"process {rank}: {why}"
        raise CheckpointWriteError(
            f"could not write {final.name} ({why}; {_free(output_dir)} free in {output_dir}): {last}; "
            "free space or choose another training.output_dir, then resume with "
            "--training.resume_from_checkpoint latest"
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        if total_limit is not None:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _gather_reasons(accelerator, reason: str | None) -> list[tuple[int, str]]:
    """(process index, reason) of every process whose write failed, on every process (one collective)."""
    if accelerator.num_processes == 1:
        return [(0, reason)] if reason else []
    from accelerate.utils import gather_object

    reasons = gather_object([(accelerator.process_index, reason)])
    return [(rank, why) for rank, why in reasons if why]


def check_model_weights(path: str | Path, state_dict: dict) -> None:
    """`ValueError` naming the first difference when `path/model.safetensors` does not hold weights of the
    names and shapes in `state_dict` (a checkpoint of another model config), or is missing (only
    safetensors weights are loaded, never pickles)."""
    weights = Path(path) / "model.safetensors"
    if not weights.is_file():
        raise ValueError(
            f"{path} holds no model.safetensors: resume only from checkpoint folders written by "
            "training/train.py (weights are read as safetensors, never unpickled)"
        )
    found = _safetensors_shapes(weights)
    expected = {k: tuple(v.shape) for k, v in state_dict.items()}
    if found == expected:
        return
    reshaped = [k for k in sorted(found) if k in expected and found[k] != expected[k]]
    if reshaped:
        key = reshaped[0]
        detail = f"{key} has shape {list(found[key])} there, {list(expected[key])} in the configured model"
    else:
        key = sorted(set(found) ^ set(expected))[0]
        where = "only in the checkpoint" if key in found else "only in the configured model"
        detail = f"{key} is {where}"
    raise ValueError(
        f"{path} was written by a different model config ({detail}): resume with that run's config "
        "(its output_dir/config.yaml) or train into a new training.output_dir"
    )


def load_checkpoint(accelerator, path: str | Path, state_dict: dict) -> None:
    """Restores `accelerator`'s state from a checkpoint folder after `check_model_weights`.

    accelerate reads optimizer.bin, scheduler.bin and random_states_N.pkl with
    `torch.load(weights_only=True)`, which refuses a pickle that would build anything but tensors and plain
    containers (running code on load is how a malicious pickle attacks). Such a refusal, and any
    *.safetensors file that is not one, becomes a one-line `ValueError` naming the file.
    """
    import pickle

    path = Path(path)
    check_model_weights(path, state_dict)
    for file in sorted(path.rglob("*.safetensors")):  # the EMA weights and the training clock too
        _safetensors_shapes(file)
    # accelerate swallows any error reading the RNG states (it logs "Could not load random states" and
    # goes on), so a refused pickle there would pass unnoticed: read it first.
    states = path / f"random_states_{accelerator.process_index}.pkl"
    if states.is_file():
        _load_plain(states)
    try:
        accelerator.load_state(str(path))
    except pickle.UnpicklingError as err:
        for file in sorted([*path.glob("*.bin"), *path.glob("*.pkl")]):
            _load_plain(file)
        raise ValueError(_refusal(path, err)) from err  # none failed on its own: name the folder


def _load_plain(file: Path) -> None:
    """Reads `file` as accelerate does (weights only, numpy RNG states allowed); `ValueError` if refused."""
    import pickle

    from accelerate.utils import load

    try:
        load(file, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise ValueError(_refusal(file, err)) from err


def _refusal(file: Path, err: Exception) -> str:
    # torch's message is a page of advice (including how to allow the global); keep what the pickle asked
    # for: "Unsupported global: GLOBAL io.open" or "Unsupported operand 149".
    match = re.search(r"Unsupported [^\n]*?(?= was not|$)", str(err), re.M)
    why = match.group(0) if match else ""
    return (
        f"{file} is refused: it is a pickle that holds more than plain tensors"
        f"{f' ({why})' if why else ''}, and loading it could run code; only load checkpoints you trust, "
        "written by training/train.py"
    )


def _safetensors_shapes(file: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape from the header of a safetensors file; anything else (a pickle, a truncated file) is
    refused in one line rather than guessed at."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except SafetensorError as err:
        raise ValueError(
            f"{file} is not a safetensors file ({err}): it is refused, never unpickled; resume only from "
            "checkpoints written by training/train.py"
        ) from err
