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
    """A labelled dataset held in memory: images, or any other fixed-shape samples.

    Attributes:
        name: dataset name, e.g. ``"fashion-mnist"``.
        train_x, test_x: uint8 tensors of shape (N, C, H, W) for images; for other data float32
            features of shape (N, ...) (already scaled: robustlr does not normalise them) or int64
            token ids of shape (N, ...).
        train_y, test_y: int64 tensors of shape (N,).
        classes: class names, index = label.
        mean, std: images: per-channel normalisation on the [0, 1] scale (pixel / 255); other
            data: empty.
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
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    ink: int = 255
    train_writers: list[np.ndarray] | None = None
    writer_ids: list[str] | None = None
    source: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.name
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise DataError(f"{n}: {split}_x and {split}_y must be torch tensors (torch.from_numpy(array)), got "
                                f"{type(x).__name__} and {type(y).__name__}")
            if y.dtype != torch.int64 or y.ndim != 1:
                raise DataError(f"{n}: {split}_y must be int64 labels of shape (N,), got {y.dtype} {tuple(y.shape)}: "
                                f"use torch.as_tensor(labels, dtype=torch.int64).flatten()")
            if x.ndim < 2 or x.shape[0] != y.shape[0]:
                raise DataError(f"{n}: {split}_x has {x.shape[0] if x.ndim else 0} samples (shape {tuple(x.shape)}) but "
                                f"{split}_y has {y.shape[0]} labels: give one label per sample, samples along dim 0")
        x = self.train_x
        if x.dtype == torch.uint8:
            if x.ndim != 4:
                raise DataError(f"{n}: uint8 train_x is read as images and must be (N, C, H, W), got {tuple(x.shape)}; "
                                f"for other data give float32 features or int64 token ids")
        elif x.dtype not in (torch.float32, torch.int64):
            raise DataError(f"{n}: train_x must be uint8 images (N, C, H, W), float32 features or int64 token ids, "
                            f"got {x.dtype}")
        if self.test_x.dtype != x.dtype or self.test_x.shape[1:] != x.shape[1:]:
            raise DataError(f"{n}: test_x is {self.test_x.dtype} {tuple(self.test_x.shape[1:])} per sample but train_x "
                            f"is {x.dtype} {tuple(x.shape[1:])}: both splits need the same dtype and sample shape")
        if self.is_image:
            if len(self.mean) != self.channels or len(self.std) != self.channels:
                raise DataError(f"{n}: mean/std need one value per channel ({self.channels}), got {len(self.mean)} "
                                f"and {len(self.std)}")
            if not all(math.isfinite(v) for v in (*self.mean, *self.std)) or min(self.std) <= 0:
                raise DataError(f"{n}: mean must be finite and std finite and > 0, got mean {self.mean}, "
                                f"std {self.std}")
        else:
            if self.mean or self.std:
                raise DataError(f"{n}: mean/std normalise uint8 images; {x.dtype} data is used as given: leave them "
                                f"empty (scale the features yourself)")
            for split in ("train", "test"):
                v = getattr(self, f"{split}_x")
                if v.dtype == torch.float32 and v.numel() and not bool(torch.isfinite(v).all()):
                    bad = int((~torch.isfinite(v)).any(dim=tuple(range(1, v.ndim))).sum())
                    raise DataError(f"{n}: {split}_x holds NaN or infinite values ({bad} samples): drop or impute "
                                    f"them before building the dataset")
                if v.dtype == torch.int64 and v.numel() and int(v.min()) < 0:
                    raise DataError(f"{n}: {split}_x (token ids) holds negative values: ids must be >= 0")
        if self.train_y.numel() == 0:
            raise DataError(f"{n}: the train split is empty")
        for split in ("train", "test"):  # an empty test split loads (a train folder alone); a run refuses it
            y = getattr(self, f"{split}_y")
            if y.numel() == 0:
                continue
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= len(self.classes):
                raise DataError(f"{n}: {split}_y holds labels {lo}..{hi}, outside 0..{len(self.classes) - 1} "
                                f"(one per name in classes, {len(self.classes)}): give every class a name, or "
                                f"relabel to 0..{len(self.classes) - 1}")

    @property
    def is_image(self) -> bool:
        """uint8 (N, C, H, W) pixels: trojans can be drawn on them and they are normalised by mean/std."""
        return self.train_x.dtype == torch.uint8 and self.train_x.ndim == 4

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The shape of one sample: (C, H, W) for images."""
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)
