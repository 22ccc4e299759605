"""Shared pytest fixtures."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets (`mnist/`, `textures/`): $HF_DDPM_DATA_DIR, else `shared/data` beside the repo."""
    env = os.environ.get("HF_DDPM_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def mnist_dir(shared_data: Path) -> Path:
    return shared_data / "mnist"
