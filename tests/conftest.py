"""Shared pytest fixtures: the data the tests train and score on.

Every test runs on data the repository carries: the MNIST sample bundled with hf-ddpm
(`hf_ddpm/sample_data/mnist`, 5,000 training and 1,000 test digits) and a small texture set generated here.
Tests that need the full MNIST splits or the real texture set take the `shared_data` fixture: they run when
$HF_DDPM_DATA_DIR names a folder holding `mnist/` and `textures/`, are marked `full_data`, and skip with the
reason otherwise. Tests marked `gpu` run only where CUDA is.
"""

import io
import os
from pathlib import Path

import numpy as np
import pytest

from hf_ddpm.data import SAMPLE_DATA

FULL_DATA = "full_data"
GPU = "gpu"


def pytest_configure(config):
    # Under pytest-xdist (`make test` runs one worker per core) each worker and the processes it starts get
    # an equal share of the cores: more threads than cores makes small models slower, not faster.
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = str(max(1, (os.cpu_count() or 1) // int(workers)))
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads
        import torch

        torch.set_num_threads(int(threads))
    config.addinivalue_line("markers", f"{FULL_DATA}: needs the full data sets in $HF_DDPM_DATA_DIR")
    config.addinivalue_line("markers", f"{GPU}: needs a CUDA GPU (skipped without one)")


# The slowest test files, slowest first (--durations on 2 cores). pytest-xdist's `--dist loadfile` hands
# files to the workers in collection order, and alphabetically these come last: one worker then ran them
# alone for minutes at the end.
SLOWEST_FILES = ("test_stopping.py", "test_reliability.py", "test_reference_checkpoints.py",
                 "test_training.py", "test_class_conditional.py", "test_devices.py", "test_metrics.py",
                 "test_flow_matching.py", "test_hub.py", "test_latent_diffusion.py")  # fmt: skip


def pytest_collection_modifyitems(config, items):
    import torch

    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's order is kept

    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()):
            item.add_marker(FULL_DATA)
        if GPU in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The full data sets (`mnist/`, `textures/`) in $HF_DDPM_DATA_DIR."""
    env = os.environ.get("HF_DDPM_DATA_DIR")
    if not env or not (Path(env) / "mnist").is_dir() or not (Path(env) / "textures").is_dir():
        pytest.skip("needs the full data sets: set HF_DDPM_DATA_DIR to a folder with mnist/ and textures/")
    return Path(env)


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """A data folder holding `mnist/`: the sample bundled with hf-ddpm."""
    return SAMPLE_DATA


@pytest.fixture(scope="session")
def mnist_dir(sample_data: Path) -> Path:
    return sample_data / "mnist"


@pytest.fixture(scope="session")
def textures_dir(tmp_path_factory) -> Path:
    """A stand-in for the texture set in its layout and schema (`textures/{train,test}-*.parquet`): 10
    classes of 28x28 grayscale gratings (an orientation and a frequency per class, random phase and noise),
    rows sorted by class like the real set."""
    folder = tmp_path_factory.mktemp("data") / "textures"
    folder.mkdir()
    write_texture_standin(folder, classes=10, train_per_class=110, test_per_class=16)
    return folder


def write_texture_standin(folder: Path, classes: int, train_per_class: int, test_per_class: int) -> None:
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:28, 0:28].astype(np.float64)
    names = [f"grating-{k}" for k in range(classes)]
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        rows = {"image": [], "label": []}
        for k in range(classes):
            angle, frequency = np.pi * k / classes, 0.15 + 0.25 * (k % 3)
            for _ in range(per_class):
                phase = rng.uniform(0, 2 * np.pi)
                wave = np.sin(frequency * (x * np.cos(angle) + y * np.sin(angle)) + phase)
                pixels = np.clip(127.5 + 100 * wave + rng.normal(0, 12, wave.shape), 0, 255).astype(np.uint8)
                png = io.BytesIO()
                Image.fromarray(pixels, mode="L").save(png, format="PNG")
                rows["image"].append({"bytes": png.getvalue(), "path": None})
                rows["label"].append(k)
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
        datasets.Dataset.from_dict(rows, features=features).to_parquet(
            folder / f"{split}-00000-of-00001.parquet"
        )
