"""CIFAR-10 (Krizhevsky 2009): 50,000 training and 10,000 test images, 32x32 RGB, 10 classes.

Two layouts are read, both through the search order of :mod:`robustlr.data.store`
(``--data-dir``, ``$ROBUSTLR_DATA_DIR``, the user cache, then a download), into the same
:class:`~robustlr.data.base.ImageDataset` by :func:`load_cifar10`:

**The python release** (what users normally have), as the folder ``cifar-10-batches-py/``
(``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``) or as the official
``cifar-10-python.tar.gz``, whose members are read straight from the archive without
extracting it; read by :mod:`~robustlr.data.cifar.python_release`.

**The shared original-pixel copy** ``cifar10.npz`` (59,903 of the 60,000 images with their
original pixels, 97 JPEG-filled and flagged; the official split; the test set sorted by class),
read by :mod:`~robustlr.data.cifar.npz` and labelled ``"CIFAR-10 (59,903/60,000 original
pixels)"``. ``exact_only=True`` drops the 97 JPEG-filled images.

**An image folder**: ``train/<class>/*`` and ``test/<class>/*`` (PNG or JPEG; class folders
named as in :data:`CLASSES`), as a folder or a ``.tar.gz``, among them the project's shared
lossy copy ``cifar10-jpeg.tar.gz`` (labelled ``source == "CIFAR-10 (JPEG q75 copy)"``); read
by :mod:`~robustlr.data.cifar.image_folder`.

:mod:`~robustlr.data.cifar.locate` holds the places tried in every root and how each copy is
verified; :mod:`~robustlr.data.cifar.common` the constants and the dataset builder the layouts
share.

With ``layout="auto"`` the python release is preferred wherever it is found (all original
pixels), then ``cifar10.npz``; only when neither exists in any root is an image folder (the
lossy JPEG copy, a fallback) used, and only when none exists is the download tried.
"""

from __future__ import annotations

import os

from robustlr.data.base import ImageDataset

# The constants keep their old names here, but each lives and is read in its own module: a test
# that patches one must patch it there (e.g. ``robustlr.data.cifar.python_release.PYTHON_ARCHIVE``).
from robustlr.data.cifar.common import (  # noqa: F401
    CLASSES,
    INK,
    MEAN,
    SOURCE_JPEG_COPY,
    SOURCE_PYTHON_RELEASE,
    STD,
)
from robustlr.data.cifar.image_folder import (  # noqa: F401
    CACHE_FORMAT,
    CACHE_SUBDIR,
    IMAGE_SUFFIXES,
    IMAGES_SUBDIR,
    JPEG_ARCHIVE,
    JPEG_CONTENT_DIGEST,
    SPLITS,
    _load_image_folder,
)
from robustlr.data.cifar.locate import (
    _download_python_archive,
    _find_image_folder,
    _find_npz,
    _find_python_release,
    _not_found_message,
)
from robustlr.data.cifar.python_release import (  # noqa: F401
    META_FILE,
    PYTHON_ARCHIVE,
    PYTHON_FILE_MD5,
    PYTHON_FOLDER,
    TEST_BATCH,
    TRAIN_BATCHES,
    _load_python_release,
)
from robustlr.data.cifar.npz import NPZ_FILE, SOURCE_NPZ, SOURCE_NPZ_EXACT, _load_npz  # noqa: F401
from robustlr.data.store import DataNotFoundError

# Private, but tests/data/test_cifar.py reaches them through the package.
from robustlr.data.cifar.image_folder import _content_digest, _files_from_folder  # noqa: F401  isort: skip
from robustlr.errors import DataError

__all__ = [
    "CLASSES",
    "MEAN",
    "STD",
    "SOURCE_JPEG_COPY",
    "SOURCE_PYTHON_RELEASE",
    "load_cifar10",
]

LAYOUTS = ("auto", "python", "npz", "folder")


def load_cifar10(
    data_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
    layout: str = "auto",
    exact_only: bool = False,
) -> ImageDataset:
    """Load CIFAR-10 as uint8 (N, 3, 32, 32) tensors with the standard label order.

    Args:
        data_dir: a root folder searched first (the ``--data-dir`` option).
        allow_download: fetch the python release from the authors' site into the user
            cache when no local copy is found (python layout only).
        layout: ``"auto"`` (python release if found anywhere, else ``cifar10.npz``, else an
            image folder, else download), ``"python"``, ``"npz"`` or ``"folder"`` to force one.
        exact_only: keep only images with their original pixels: drops the 97 JPEG-filled
            images of ``cifar10.npz``; refused for an image folder (the JPEG copy has none);
            no effect on the python release (all exact).

    Returns:
        An :class:`ImageDataset` named ``"cifar10"`` with the classes in the standard order
        (0 airplane .. 9 truck), mean/std of the paper's code, ink 255, and ``source``
        saying which copy was read (``"CIFAR-10 (59,903/60,000 original pixels)"`` for
        ``cifar10.npz``, ``"CIFAR-10 (JPEG q75 copy)"`` for the shared JPEG archive). ``extra`` holds ``layout``, ``path`` and ``verified`` (how the copy was
        checked), and ``decoder`` for image folders.

    Raises:
        ValueError: unknown ``layout``.
        DataNotFoundError: no valid copy anywhere; the message lists every place searched,
            why each was rejected, and how to fix it. Also raised for a copy that is found
            but cannot be read as CIFAR-10 (the message names it and the problem).
    """
    if layout not in LAYOUTS:
        raise DataError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    tried: list[str] = []
    if layout in ("auto", "python"):
        found = _find_python_release(data_dir, tried)
        if found is not None:
            return _load_python_release(found)
    if layout in ("auto", "npz"):
        found_npz = _find_npz(data_dir, tried)
        if found_npz is not None:
            return _load_npz(found_npz, exact_only=exact_only)
    if layout in ("auto", "folder"):
        found_images = _find_image_folder(data_dir, tried)
        if found_images is not None:
            if exact_only:
                raise DataError(f"exact_only: the only CIFAR-10 copy found is an image folder ({found_images.path}), "
                                "whose pixels are not the originals; put cifar10.npz or the python release in the "
                                "data folder, or drop exact_only")
            return _load_image_folder(found_images)
    if layout in ("auto", "python"):
        downloaded = _download_python_archive(data_dir, allow_download, tried)
        if downloaded is not None:
            return _load_python_release(downloaded)
    raise DataNotFoundError(_not_found_message(layout, tried))
