import os
from pathlib import Path

import numpy as np
import pytest
import torch

from robustlr.data.base import ImageDataset


def shared_data_dir() -> Path | None:
    """The real datasets, from $ROBUSTLR_DATA_DIR (CI exports it to the shared data folder)."""
    env = os.environ.get("ROBUSTLR_DATA_DIR")
    return Path(env) if env and Path(env).is_dir() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("real data needed: set ROBUSTLR_DATA_DIR to the folder holding fashion-mnist/, femnist-leaf/, cifar10-jpeg/")
    return d


def tiny_dataset(n_train: int = 240, n_test: int = 60, seed: int = 0, channels: int = 1, size: int = 28) -> ImageDataset:
    """Random images whose label is readable from a bright block, so a model can learn a little.

    Only for code paths (determinism, resume, shapes), never for science."""
    g = np.random.default_rng(seed)

    def make(n):
        y = np.arange(n) % 10
        g.shuffle(y)
        x = g.integers(0, 60, size=(n, channels, size, size), dtype=np.uint8)
        for i, c in enumerate(y):
            r = 2 + 2 * int(c)
            x[i, :, r : r + 2, 10:20] = 230
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    tx, ty = make(n_train)
    vx, vy = make(n_test)
    return ImageDataset("tiny", tx, ty, vx, vy, classes=tuple(str(i) for i in range(10)),
                        mean=(0.2,) * channels, std=(0.3,) * channels, ink=255, source="generated (tests only)")


@pytest.fixture
def tiny():
    """A factory of tiny generated datasets (code paths only)."""
    return tiny_dataset
