"""Training checkpoints: `OUTPUT_DIR/checkpoint-STEP/` folders written atomically.

`accelerator.save_state` writes into `checkpoint-STEP.partial/`, which is renamed to `checkpoint-STEP`
only once complete. A kill at any moment therefore leaves either no new folder or a complete one, and
`latest` never picks a half-written checkpoint. Before resuming, `check_model_weights` compares the
checkpoint's weights with the model the config builds, so another config fails in one line.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

_NAME = re.compile(r"checkpoint-(\d+)")


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
    """
    final = Path(output_dir) / f"checkpoint-{step}"
    partial = final.with_name(final.name + ".partial")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)  # left by a run killed mid-write
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
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


def check_model_weights(path: str | Path, state_dict: dict) -> None:
    """`ValueError` naming the first difference when `path/model.safetensors` does not hold weights of the
    names and shapes in `state_dict` (a checkpoint of another model config), or is missing (only
    safetensors weights are loaded, never pickles)."""
    from safetensors import safe_open

    weights = Path(path) / "model.safetensors"
    if not weights.is_file():
        raise ValueError(
            f"{path} holds no model.safetensors: resume only from checkpoint folders written by "
            "training/train.py (weights are read as safetensors, never unpickled)"
        )
    with safe_open(str(weights), framework="pt") as f:
        found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
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
