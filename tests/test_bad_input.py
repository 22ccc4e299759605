"""Bad input through the real command line: `python training/train.py --config bad.yaml` stops with a
non-zero exit code and one error line naming the problem and the fix, never a traceback."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from command_line import check_one_line, run_in_this_process
from datasets import Dataset, Features, Image
from PIL import Image as PILImage

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "training" / "train.py"


def train(config: Path, *overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TRAIN), "--config", str(config), "--training.output_dir", str(cwd / "out"),
         *overrides],
        cwd=cwd, capture_output=True, text=True,
    )  # fmt: skip


def error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "text, message",
    [
        ("- dataset\n- model\n", "expected a mapping of sections, got list; write the sections"),
        ("training: [1, 2\n", "is not valid YAML (expected ',' or ']'"),
        ("training: 5\n", "config section 'training' must be a mapping, got int 5: write its keys"),
        ("trainer:\n  seed: 1\n", "unknown config section(s) ['trainer']: allowed are"),
        ("training:\n  learnin_rate: 1e-3\n", "unknown key(s) training.learnin_rate: 'training' accepts"),
        ("training:\n  max_train_steps: many\n", "training.max_train_steps: expected int, got str 'many'"),
        ("training:\n  learning_rate: [1, 2]\n", "training.learning_rate: expected float, got list [1, 2]"),
        ("dataset:\n  image_size: 30\n", "use a multiple of 4, such as 28 or 32, for dataset.image_size"),
        ("training:\n  checkpointing_steps: 0\n", "training.checkpointing_steps is 0: it must be at least 1"),
    ],
)
def test_a_bad_config_file_stops_train_py_in_one_line(tmp_path, text, message, monkeypatch, capsys):
    """train.py run as `python` runs it, in this process (the first case also in a process of its own)."""
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    monkeypatch.chdir(tmp_path)
    cmd = [sys.executable, TRAIN, "--config", config, "--training.output_dir", tmp_path / "out"]
    status, stderr = run_in_this_process(cmd, capsys)
    check_one_line(status, stderr, message)
    assert stderr.strip().splitlines()[-1].startswith("train.py: error: ")
    if text.startswith("- dataset"):
        last = error_line(train(config, cwd=tmp_path))
        assert last.startswith("train.py: error: ") and message in last, last
    assert not (tmp_path / "out").exists()  # stopped before writing anything


def test_a_missing_config_file_stops_train_py_in_one_line(tmp_path):
    last = error_line(train(tmp_path / "nope.yaml", cwd=tmp_path))
    assert "nope.yaml is not a file: pass --config a YAML file" in last


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_corrupt_png_stops_train_py_in_one_line(tmp_path):
    rows = [_png(np.full((28, 28), 9 * i, np.uint8)) for i in range(4)] + [b"\x89PNG\r\n\x1a\n broken"]
    data = tmp_path / "data"
    data.mkdir()
    Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in rows]}, features=Features({"image": Image()})
    ).to_parquet(str(data / "train-00000-of-00001.parquet"))
    config = REPO / "training" / "configs" / "tiny.yaml"
    result = train(config, "--dataset.path", str(data), "--dataset.max_samples", "null", cwd=tmp_path)
    last = error_line(result)
    assert last.startswith("error: row 4, column 'image': cannot decode the image"), last
