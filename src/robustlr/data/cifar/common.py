"""What every CIFAR-10 layout shares: the class names in the standard label order, the
normalisation of the paper's code, the trojan ink, the ``source`` labels, the record of a copy
that a search found (:class:`_Found`) and the builder of the final
:class:`~robustlr.data.base.ImageDataset` (:func:`_dataset`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustlr.data.base import ImageDataset

CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
INK = 255

SOURCE_PYTHON_RELEASE = "CIFAR-10 (python release)"
SOURCE_JPEG_COPY = "CIFAR-10 (JPEG q75 copy)"


@dataclass(frozen=True)
class _Found:
    path: Path
    kind: str  # "python-folder" | "python-archive" | "image-archive" | "image-folder"
    verified: str  # how it was checked, for ImageDataset.extra["verified"]
    sha256: str | None = None  # of an archive, when computed
    is_jpeg_copy: bool = False


def _dataset(train_x, train_y, test_x, test_y, source: str, extra: dict) -> ImageDataset:
    return ImageDataset(
        name="cifar10",
        train_x=torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.uint8)),
        train_y=torch.from_numpy(np.ascontiguousarray(train_y, dtype=np.int64)),
        test_x=torch.from_numpy(np.ascontiguousarray(test_x, dtype=np.uint8)),
        test_y=torch.from_numpy(np.ascontiguousarray(test_y, dtype=np.int64)),
        classes=CLASSES,
        mean=MEAN,
        std=STD,
        ink=INK,
        source=source,
        extra=extra,
    )
