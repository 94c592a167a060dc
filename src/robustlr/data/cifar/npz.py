"""Reading the shared ``cifar10.npz``: CIFAR-10 with the original pixels of 59,903 of its
60,000 images and the official train/test split.

The file (``numpy.savez_compressed``, no pickles; read with ``allow_pickle=False``) holds
``x_train`` (50000, 32, 32, 3) and ``x_test`` (10000, 32, 32, 3) uint8 HWC RGB images,
``y_train`` / ``y_test`` int64 labels in the standard order, ``train_exact`` / ``test_exact``
bool masks (False for the 97 images, 77 train and 20 test, all ships or horses, whose pixels
are a JPEG-q75 approximation because no lossless copy was found) and ``label_names``.

The training set is in the original order (``data_batch_1`` .. ``data_batch_5``). The test
set is **sorted by class** (``x_test[c * 1000 + k]`` is the k-th test image of class c): a
subset of it must be stratified, never a slice (the evaluation sets of
:mod:`robustlr.sim.federation` are the whole test set, or the whole base class).

``exact_only=True`` drops the 97 JPEG-filled images; the source label then says so.
Where the file is looked for: :mod:`robustlr.data.cifar.locate`.
"""

from __future__ import annotations

import zipfile
import zlib

import numpy as np

from robustlr.data import store
from robustlr.data.base import ImageDataset
from robustlr.data.cifar.common import CLASSES, _dataset, _Found
from robustlr.data.store import DataNotFoundError

NPZ_FILE = store.DataFile(
    name="cifar10.npz",
    sha256="87a96a9294ac21b97e06135ffd493d77521868b81871ac40215292b4da6f1594",
    subdir="cifar10",
    checksum_of_decompressed=False,
    hint="the shared data folder holds it as cifar10/cifar10.npz (see its README)",
)
SOURCE_NPZ = "CIFAR-10 (59,903/60,000 original pixels)"
SOURCE_NPZ_EXACT = "CIFAR-10 (59,903 images with original pixels; the 97 JPEG-filled dropped)"
# key -> (shape with N for the split's image count, dtype); the shared file has N 50,000 and 10,000
KEYS = {
    "x_train": (("N", 32, 32, 3), np.uint8), "y_train": (("N",), np.int64), "train_exact": (("N",), np.bool_),
    "x_test": (("N", 32, 32, 3), np.uint8), "y_test": (("N",), np.int64), "test_exact": (("N",), np.bool_),
}


def _read(found: _Found) -> dict[str, np.ndarray]:
    try:
        with np.load(found.path, allow_pickle=False) as npz:
            missing = sorted((set(KEYS) | {"label_names"}) - set(npz.files))
            arrays = {} if missing else {k: npz[k] for k in (*KEYS, "label_names")}
    except (OSError, ValueError, zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DataNotFoundError(f"{found.path}: unreadable npz ({exc})") from exc
    if missing:
        raise DataNotFoundError(f"{found.path}: no {', '.join(missing)} in the npz (is it cifar10.npz?)")
    for key, (shape, dtype) in KEYS.items():
        a = arrays[key]
        n = len(arrays["x_train" if "train" in key else "x_test"])
        want = tuple(n if d == "N" else d for d in shape)
        if a.shape != want or a.dtype != dtype:
            raise DataNotFoundError(f"{found.path}: {key} is {a.dtype} {a.shape}, expected {np.dtype(dtype)} {want}")
    names = tuple(str(n) for n in arrays["label_names"])
    if names != CLASSES:
        raise DataNotFoundError(f"{found.path}: label_names {names!r} are not CIFAR-10's {CLASSES!r}")
    return arrays


def _load_npz(found: _Found, exact_only: bool = False) -> ImageDataset:
    a = _read(found)
    keep_train = a["train_exact"] if exact_only else np.ones(len(a["x_train"]), dtype=bool)
    keep_test = a["test_exact"] if exact_only else np.ones(len(a["x_test"]), dtype=bool)
    # HWC -> CHW, the layout of every ImageDataset
    train_x = a["x_train"][keep_train].transpose(0, 3, 1, 2)
    test_x = a["x_test"][keep_test].transpose(0, 3, 1, 2)
    extra = {
        "layout": "npz", "path": str(found.path), "verified": found.verified,
        "inexact_train": np.flatnonzero(~a["train_exact"]).tolist() if not exact_only else [],
        "inexact_test": np.flatnonzero(~a["test_exact"]).tolist() if not exact_only else [],
        "exact_only": exact_only, "test_order": "sorted by class",
    }
    return _dataset(train_x, a["y_train"][keep_train], test_x, a["y_test"][keep_test],
                    SOURCE_NPZ_EXACT if exact_only else SOURCE_NPZ, extra)
