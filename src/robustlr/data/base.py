"""The in-memory representation every dataset loader returns.

Images are kept once, as uint8 pixels in (N, C, H, W) layout, exactly as the dataset's files
hold them; trojans are drawn on these pixels and normalisation happens once, later, in the
simulator. Clients are index arrays into the training split, never copies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from robustlr.errors import DataError


@dataclass
class ImageDataset:
    """A labelled image dataset held in memory.

    Attributes:
        name: dataset name, e.g. ``"fashion-mnist"``.
        train_x, test_x: uint8 tensors of shape (N, C, H, W).
        train_y, test_y: int64 tensors of shape (N,).
        classes: class names, index = label.
        mean, std: per-channel normalisation on the [0, 1] scale (pixel / 255).
        ink: the pixel value (0..255) that stands out from the background. Trojans are
            drawn in this value: 255 for Fashion-MNIST and CIFAR-10 (bright on dark),
            0 for FEMNIST (dark ink on a white background).
        train_writers: natural partition, if the dataset has one (FEMNIST: one index array
            into the training split per writer); None otherwise.
        writer_ids: the writers' ids, aligned with ``train_writers``.
        source: where the data came from, as it should be quoted beside any number
            computed from it (e.g. ``"CIFAR-10 (JPEG q75 copy)"``).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    ink: int = 255
    train_writers: list[np.ndarray] | None = None
    writer_ids: list[str] | None = None
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x = getattr(self, f"{split}_x")
            y = getattr(self, f"{split}_y")
            if x.dtype != torch.uint8 or x.ndim != 4:
                raise DataError(f"{self.name}: {split}_x must be uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise DataError(f"{self.name}: {split}_y must be int64 of shape ({x.shape[0]},), got {y.dtype} {tuple(y.shape)}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataError(f"{self.name}: mean/std need one value per channel ({self.channels})")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)) or min(self.std) <= 0:
            raise DataError(f"{self.name}: mean must be finite and std finite and > 0, got mean {self.mean}, "
                            f"std {self.std}")
        if self.train_y.numel() == 0:
            raise DataError(f"{self.name}: the train split is empty")
        for split in ("train", "test"):  # an empty test split loads (a train folder alone); a run refuses it
            y = getattr(self, f"{split}_y")
            if y.numel() == 0:
                continue
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= len(self.classes):
                raise DataError(f"{self.name}: {split}_y holds labels {lo}..{hi}, outside 0..{len(self.classes) - 1} "
                                f"(one per name in classes, {len(self.classes)}): give every class a name, or "
                                f"relabel to 0..{len(self.classes) - 1}")

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)
