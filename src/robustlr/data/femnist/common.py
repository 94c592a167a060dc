"""What both FEMNIST readers share: the pixel, normalisation and label constants, and the
helpers that check arguments, filter labels and summarise pixels the same way for either format.

Pixel convention. Both formats store pixel / 255 as a float with **1.0 = white background**
and dark ink (LEAF's README; TFF's own ``emnist.py`` notes "EMNIST background is 1.0"). We keep
that polarity: ``uint8 = round(x * 255)`` without inverting, so the background is 255 and
``ImageDataset.ink = 0``. A trojan drawn in ``ink`` is therefore black on white, as in the
paper's code, which sets FEMNIST trojan pixels to 0.

Normalisation. The paper's code feeds TFF's [0, 1] pixels to the network unnormalised, so
``mean = (0.0,)`` and ``std = (1.0,)`` (identity after the usual division by 255). These are
fixed constants: a result must not depend on which writers happened to be loaded. The actual
statistics of the loaded training pixels are recorded in ``extra["pixel_mean"]`` and
``extra["pixel_std"]`` for information only.

Labels. 0-9 are digits, 10-35 upper case A-Z, 36-61 lower case a-z (LEAF and TFF agree).
``digits_only=True`` keeps labels 0-9 (10 classes, the paper's setting); otherwise all 62.
"""

from __future__ import annotations

import os
import string
from typing import TYPE_CHECKING

import numpy as np

from robustlr.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from robustlr.data.base import ImageDataset

#: Identity normalisation, as in the paper's code (see the module docstring).
FEMNIST_MEAN: tuple[float, ...] = (0.0,)
FEMNIST_STD: tuple[float, ...] = (1.0,)
#: FEMNIST ink is dark on a white (255) background.
FEMNIST_INK = 0
FEMNIST_BACKGROUND = 255

DIGIT_CLASSES: tuple[str, ...] = tuple(string.digits)
ALL_CLASSES: tuple[str, ...] = tuple(string.digits + string.ascii_uppercase + string.ascii_lowercase)

IMAGE_SIDE = 28
PIXELS = IMAGE_SIDE * IMAGE_SIDE

PathLike = str | os.PathLike


def _classes(digits_only: bool) -> tuple[str, ...]:
    return DIGIT_CLASSES if digits_only else ALL_CLASSES


def _check_min_train_samples(min_train_samples: int) -> None:
    if isinstance(min_train_samples, bool) or not isinstance(min_train_samples, (int, np.integer)) or min_train_samples < 1:
        raise DataError(f"min_train_samples must be an integer >= 1, got {min_train_samples!r}")


def _label_filter(digits_only: bool):
    if digits_only:
        return lambda y: y < 10
    return lambda y: np.ones(y.shape, dtype=bool)


def _pixel_stats(x: np.ndarray) -> tuple[float, float]:
    """Exact mean and std of uint8 pixels on the [0, 1] scale, via a 256-bin histogram."""
    if x.size == 0:
        return float("nan"), float("nan")
    flat = x.reshape(-1)
    hist = np.zeros(256, dtype=np.float64)
    chunk = 1 << 22  # bincount widens to int64: bound the temporary to 32 MB
    for start in range(0, flat.size, chunk):
        hist += np.bincount(flat[start : start + chunk], minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    n = hist.sum()
    mean = float((hist * values).sum() / n)
    var = float((hist * (values - mean) ** 2).sum() / n)
    return mean, var**0.5


def femnist_dataset(train: tuple[np.ndarray, np.ndarray, list], test: tuple[np.ndarray, np.ndarray, list],
                    writer_ids: list[str], digits_only: bool, source: str, extra: dict) -> "ImageDataset":
    """The :class:`ImageDataset` of FEMNIST pixels ``(x, y, per-writer index blocks)`` of each split.

    ``source`` is prefixed to the class selection; ``extra`` gets the test writers' blocks and
    the training pixels' mean and std (the normalisation itself is the fixed FEMNIST one)."""
    import torch

    from robustlr.data.base import ImageDataset

    (train_x, train_y, train_blocks), (test_x, test_y, test_blocks) = train, test
    mean, std = _pixel_stats(train_x)
    return ImageDataset(
        name="femnist",
        train_x=torch.from_numpy(train_x),
        train_y=torch.from_numpy(train_y),
        test_x=torch.from_numpy(test_x),
        test_y=torch.from_numpy(test_y),
        classes=_classes(digits_only),
        mean=FEMNIST_MEAN,
        std=FEMNIST_STD,
        ink=FEMNIST_INK,
        train_writers=train_blocks,
        writer_ids=writer_ids,
        source=source + ("digits 0-9 only" if digits_only else "all 62 classes"),
        extra={**extra, "test_writers": test_blocks, "pixel_mean": mean, "pixel_std": std},
    )
