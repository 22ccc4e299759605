"""Pickles where safetensors (or plain tensors) are expected are refused before they can run code.

The attack file is a real malicious pickle: unpickling it opens a marker file for writing. Each test plants
it in a real checkpoint or exported pipeline written by training/train.py, asserts a one-line ValueError
naming the file, and that the marker was never created. `test_the_payloads_run_code_when_unpickled` shows
the payloads are live, so the refusals are what keeps the marker away.
"""

from __future__ import annotations

import ast
import io
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_ddpm.pipeline import load_pipeline
from hf_ddpm.training.checkpoints import check_model_weights, load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TRAIN = [str(REPO / "training" / "train.py"), "--config", str(REPO / "training" / "configs" / "tiny.yaml")]
SOURCES = ["hf_ddpm", "training", "pipelines", "benchmarks", "tests"]


class _OpensAFile:
    """Unpickling this calls open(marker, "w"): code run by merely loading a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def malicious(marker: Path, kind: str) -> bytes:
    """The payload as torch.save writes it (a zip with data.pkl, like optimizer.bin) or as a bare pickle."""
    if kind == "torch":
        buffer = io.BytesIO()
        torch.save({"state": _OpensAFile(marker)}, buffer)
        return buffer.getvalue()
    return pickle.dumps(_OpensAFile(marker), protocol=2)  # protocol 2: what torch's unpickler reads


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mnist_dir) -> Path:
    """A real 2-step run of training/train.py: checkpoint-2/ and the exported pipeline."""
    out = tmp_path_factory.mktemp("safe") / "run"
    result = subprocess.run(
        [sys.executable, *TRAIN, "--training.output_dir", str(out), "--dataset.path", str(mnist_dir),
         "--dataset.max_samples", "64", "--training.max_train_steps", "2",
         "--training.num_sample_images", "1", "--training.num_inference_steps", "1"],
        cwd=out.parent, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture
def checkpoint(run_dir, tmp_path) -> Path:
    """A private copy of the run's checkpoint, to tamper with."""
    return Path(shutil.copytree(run_dir / "checkpoint-2", tmp_path / "checkpoint-2"))


def prepared():
    """An Accelerator with train.py's model, optimizer and LR scheduler for tiny.yaml, prepared."""
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler

    from hf_ddpm.models import build_unet

    accelerator = Accelerator()
    unet = build_unet("tiny", 28, 1)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-3)
    lr_scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=5, num_training_steps=50)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    return accelerator, unet, optimizer


def assert_refused(err: pytest.ExceptionInfo, name: str, marker: Path) -> None:
    message = str(err.value)
    assert "\n" not in message and name in message, message
    assert "only load checkpoints you trust" in message or "written by training/train.py" in message
    assert not marker.exists()


def test_the_payloads_run_code_when_unpickled(tmp_path):
    # Plain pickle on our own payloads (nothing untrusted): both forms really do open the marker.
    bare = tmp_path / "bare"
    pickle.loads(malicious(bare, "pickle"))
    assert bare.exists()
    zipped = tmp_path / "zipped"
    with zipfile.ZipFile(io.BytesIO(malicious(zipped, "torch"))) as archive:
        data = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        pickle.loads(archive.read(data))
    assert zipped.exists()


def test_a_checkpoint_of_train_py_loads(checkpoint):
    accelerator, unet, optimizer = prepared()
    load_checkpoint(accelerator, checkpoint, accelerator.unwrap_model(unet).state_dict())
    saved = load_file(checkpoint / "model.safetensors")
    assert all(torch.equal(v, saved[k]) for k, v in accelerator.unwrap_model(unet).state_dict().items())
    assert {int(s["step"]) for s in optimizer.state_dict()["state"].values()} == {2}


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_a_pickle_named_model_safetensors_is_refused(checkpoint, tmp_path, kind):
    marker = tmp_path / "marker"
    (checkpoint / "model.safetensors").write_bytes(malicious(marker, kind))
    accelerator, unet, _ = prepared()
    state_dict = accelerator.unwrap_model(unet).state_dict()
    with pytest.raises(ValueError, match="model.safetensors is not a safetensors file") as err:
        check_model_weights(checkpoint, state_dict)
    assert_refused(err, "model.safetensors", marker)
    with pytest.raises(ValueError, match="model.safetensors is not a safetensors file") as err:
        load_checkpoint(accelerator, checkpoint, state_dict)
    assert_refused(err, "model.safetensors", marker)


# random_states_0.pkl matters most: accelerate ignores any error reading it and trains on.
@pytest.mark.parametrize("kind", ["torch", "pickle"])
@pytest.mark.parametrize("name", ["optimizer.bin", "scheduler.bin", "random_states_0.pkl"])
def test_a_malicious_accelerate_state_file_is_refused(checkpoint, tmp_path, name, kind):
    marker = tmp_path / "marker"
    (checkpoint / name).write_bytes(malicious(marker, kind))
    accelerator, unet, _ = prepared()
    with pytest.raises(ValueError, match=rf"{name} is refused: it is a pickle that holds more") as err:
        load_checkpoint(accelerator, checkpoint, accelerator.unwrap_model(unet).state_dict())
    assert_refused(err, name, marker)


def test_a_pickle_named_like_any_other_safetensors_file_is_refused(checkpoint, tmp_path):
    # The EMA weights and train.py's own state files are read by its load hook, which assumes safetensors:
    # every one is checked before any of it runs.
    names = [p.relative_to(checkpoint).as_posix() for p in sorted(checkpoint.rglob("*.safetensors"))]
    names.remove("model.safetensors")
    assert "unet_ema/diffusion_pytorch_model.safetensors" in names and len(names) >= 2
    accelerator, unet, _ = prepared()
    for name in names:
        marker = tmp_path / "marker"
        original = (checkpoint / name).read_bytes()
        (checkpoint / name).write_bytes(malicious(marker, "torch"))
        with pytest.raises(ValueError, match=f"{name} is not a safetensors file") as err:
            load_checkpoint(accelerator, checkpoint, accelerator.unwrap_model(unet).state_dict())
        assert_refused(err, name, marker)
        (checkpoint / name).write_bytes(original)


@pytest.fixture
def pipeline_copy(run_dir, tmp_path) -> Path:
    skip = shutil.ignore_patterns("checkpoint-*")
    return Path(shutil.copytree(run_dir, tmp_path / "pipeline", ignore=skip))


def test_an_exported_pipeline_with_only_pickled_unet_weights_is_refused(pipeline_copy, tmp_path):
    marker = tmp_path / "marker"
    unet = pipeline_copy / "unet"
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    (unet / "diffusion_pytorch_model.bin").write_bytes(malicious(marker, "torch"))
    with pytest.raises(ValueError, match=r"model.bin is refused: .*only as safetensors") as err:
        load_pipeline(pipeline_copy)
    assert "\n" not in str(err.value) and not marker.exists()
    # The CLI says the same in one line, no traceback.
    result = subprocess.run(
        [sys.executable, "-m", "hf_ddpm.sample", "--model", str(pipeline_copy), "--steps", "1"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "diffusion_pytorch_model.bin is refused" in result.stderr.strip().splitlines()[-1]
    assert not marker.exists()


def test_an_exported_pipeline_with_a_pickle_named_safetensors_is_refused(pipeline_copy, tmp_path):
    marker = tmp_path / "marker"
    (pipeline_copy / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(malicious(marker, "torch"))
    with pytest.raises(ValueError, match="is not a complete pipeline: Unable to load weights") as err:
        load_pipeline(pipeline_copy)
    assert "\n" not in str(err.value) and not marker.exists()


# --- torch.load only with weights_only=True --------------------------------------------------------------


def unsafe_torch_loads(source: str) -> list[int]:
    """Line numbers of `torch.load(...)` calls without the keyword weights_only=True (a literal True)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if not (isinstance(func, ast.Attribute) and func.attr == "load"):
            continue
        if not (isinstance(func.value, ast.Name) and func.value.id == "torch"):
            continue
        safe = any(
            k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in node.keywords
        )
        if not safe:
            lines.append(node.lineno)
    return lines


def test_the_checker_finds_unsafe_torch_loads():
    source = (
        "torch.load(f)\n"
        "torch.load(f, weights_only=False)\n"
        "torch.load(f, map_location='cpu', weights_only=True)\n"
        "torch.load(f, **{'weights_only': True})\n"
    )
    assert unsafe_torch_loads(source) == [1, 2, 4]


def test_every_torch_load_in_the_repo_passes_weights_only_true():
    files = [p for d in SOURCES for p in sorted((REPO / d).rglob("*.py"))]
    assert len(files) > 20 and REPO / "training" / "train.py" in files
    unsafe = {str(p.relative_to(REPO)): lines for p in files if (lines := unsafe_torch_loads(p.read_text()))}
    assert unsafe == {}
