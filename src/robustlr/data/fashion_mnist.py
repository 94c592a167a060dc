"""Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017) from its original IDX gz files.

The four files are found by :func:`robustlr.data.store.locate` (``--data-dir``,
``$ROBUSTLR_DATA_DIR``, the user cache, Debian's ``dataset-fashion-mnist`` package, then a
download from the dataset's upstream) and verified by the sha256 of their decompressed bytes,
so the upstream files and Debian's re-compressed copies are both accepted.

The IDX parser is our own (no torchvision): a big-endian header (magic number, item count,
then rows and columns for images) followed by uint8 data. Parsing all four files, checksums
included, takes well under a second, so nothing is cached beyond the files themselves.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch

from robustlr.data.base import ImageDataset
from robustlr.data.store import DataFile, locate
from robustlr.errors import DataError

NAME = "fashion-mnist"
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MEAN = (0.2860,)
STD = (0.3530,)
IMAGE_SIZE = (28, 28)

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

# The dataset authors' download location, as given in their README; the same files are in
# their repository under data/fashion/.
UPSTREAM_URLS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)  # Debian's dataset-fashion-mnist
HINT = "on Debian or Ubuntu install the dataset-fashion-mnist package (sudo apt-get install dataset-fashion-mnist)"


def _spec(name: str, sha256: str) -> DataFile:
    return DataFile(
        name=name,
        sha256=sha256,
        subdir=NAME,
        urls=tuple(base + name for base in UPSTREAM_URLS),
        system_dirs=SYSTEM_DIRS,
        checksum_of_decompressed=True,
        hint=HINT,
    )


# sha256 of the decompressed bytes; the gz files' MD5s equal those in the upstream README.
DATASET_FILES: dict[str, DataFile] = {
    "train_images": _spec(
        "train-images-idx3-ubyte.gz", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
    ),
    "train_labels": _spec(
        "train-labels-idx1-ubyte.gz", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
    ),
    "test_images": _spec(
        "t10k-images-idx3-ubyte.gz", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
    ),
    "test_labels": _spec(
        "t10k-labels-idx1-ubyte.gz", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
    ),
}
"""The four files, by role. The loader reads this dict at call time."""


class IDXFormatError(DataError):
    """A file is not a well-formed IDX file of the expected kind."""


def _read_bytes(path: Path) -> bytes:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        return fh.read()


def _parse(path: Path, magic: int, ndim: int) -> tuple[tuple[int, ...], np.ndarray]:
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXFormatError(f"{path}: {len(data)} bytes, too short for an IDX magic number")
    (got_magic,) = struct.unpack(">I", data[:4])
    if got_magic != magic:
        raise IDXFormatError(f"{path}: magic number {got_magic} (0x{got_magic:08x}), expected {magic} (0x{magic:08x})")
    header_len = 4 * (1 + ndim)
    if len(data) < header_len:
        raise IDXFormatError(f"{path}: {len(data)} bytes, too short for an IDX header of {header_len} bytes")
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    expected = header_len + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise IDXFormatError(
            f"{path}: header says {' x '.join(map(str, dims))} uint8 values ({expected} bytes with the header), "
            f"file has {len(data)} bytes"
        )
    return tuple(dims), np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX image file (magic 2051), gzip-compressed if its name ends in ``.gz``.

    Returns:
        uint8 array of shape (N, rows, cols), read-only (a view of the file's bytes).

    Raises:
        IDXFormatError: wrong magic number, or a size that disagrees with the header.
    """
    _, images = _parse(Path(path), IDX_IMAGES_MAGIC, 3)
    return images


def read_idx_labels(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX label file (magic 2049). Returns a read-only uint8 array of shape (N,)."""
    _, labels = _parse(Path(path), IDX_LABELS_MAGIC, 1)
    return labels


def _split(images_path: Path, labels_path: Path, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx_images(images_path)
    labels = read_idx_labels(labels_path)
    if images.shape != (count, *IMAGE_SIZE):
        raise IDXFormatError(f"{images_path}: images of shape {images.shape}, expected {(count, *IMAGE_SIZE)}")
    if labels.shape != (count,):
        raise IDXFormatError(f"{labels_path}: {labels.shape[0]} labels, expected {count}")
    if labels.max() >= len(CLASSES):
        raise IDXFormatError(f"{labels_path}: label {labels.max()} outside 0..{len(CLASSES) - 1}")
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, allow_download: bool = True) -> ImageDataset:
    """Load Fashion-MNIST: 60,000 training and 10,000 test images, 28x28, one channel.

    Args:
        data_dir: a folder searched first (``data_dir/fashion-mnist/`` or ``data_dir/``).
        allow_download: download missing files from the dataset's upstream into the user cache.

    Returns:
        An :class:`ImageDataset` with uint8 images of shape (N, 1, 28, 28), int64 labels,
        normalisation mean 0.2860 / std 0.3530 and ink 255 (bright pattern on dark background).

    Raises:
        robustlr.data.DataNotFoundError: a file is missing or corrupt everywhere searched; the
            message names every place and how to fix it.
        IDXFormatError: a file passed its checksum but is not the expected IDX content
            (only possible with a wrong checksum in :data:`DATASET_FILES`).
    """
    paths = {role: locate(spec, data_dir=data_dir, allow_download=allow_download) for role, spec in DATASET_FILES.items()}
    train_x, train_y = _split(paths["train_images"], paths["train_labels"], 60_000)
    test_x, test_y = _split(paths["test_images"], paths["test_labels"], 10_000)
    return ImageDataset(
        name=NAME,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        classes=CLASSES,
        mean=MEAN,
        std=STD,
        ink=255,
        source="Fashion-MNIST",
        extra={"files": {role: str(p) for role, p in paths.items()}},
    )
