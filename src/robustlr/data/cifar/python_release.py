"""Reading the python release of CIFAR-10, as the folder ``cifar-10-batches-py/`` or as the
official ``cifar-10-python.tar.gz`` (whose members are read straight from the archive without
extracting it): its file names and official checksums, an unpickler that admits only numpy
arrays, and the parsing of its batches into an :class:`~robustlr.data.base.ImageDataset`.

Each batch is a Python-2 pickle of a dict with bytes keys: ``b'data'``, a (10000, 3072) uint8
array whose rows are the red, green and blue 32x32 planes one after the other, each
row-major, so ``data.reshape(-1, 3, 32, 32)`` is already (N, C, H, W); and ``b'labels'``,
10,000 ints. The pickles are read with an unpickler that only admits numpy arrays, so a
tampered file cannot run code. Where the release is looked for, and how a copy is verified
before it is read, is in :mod:`robustlr.data.cifar.locate`.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from typing import Callable

import numpy as np

from robustlr.data import store
from robustlr.data.base import ImageDataset
from robustlr.data.cifar.common import CLASSES, SOURCE_PYTHON_RELEASE, _dataset, _Found
from robustlr.data.store import DataNotFoundError

PYTHON_FOLDER = "cifar-10-batches-py"
PYTHON_ARCHIVE = store.DataFile(
    name="cifar-10-python.tar.gz",
    # sha256 of the official archive as published by Keras (``file_hash`` in
    # keras.datasets.cifar10); its md5 c58f30108f718f92721af3b95e74349a is torchvision's.
    sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    subdir="cifar10",
    urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
    checksum_of_decompressed=False,
)
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
# md5 of each file of the official release (torchvision.datasets.CIFAR10).
PYTHON_FILE_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}


def _numpy_reconstruct() -> Callable:
    return np.ndarray((0,), dtype=np.uint8).__reduce__()[0]  # numpy's own _reconstruct


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Admits the globals a pickled numpy array needs, and nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: __import__("_codecs").encode,
    }

    def find_class(self, module: str, name: str):
        getter = self._ALLOWED.get((module, name))
        if getter is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-10 batch holds only arrays")
        return getter()


def _unpickle(raw: bytes, what: str) -> dict:
    try:
        # The release was pickled by Python 2: its str keys and values come back as bytes.
        obj = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # any failure to parse means the file is not a CIFAR-10 batch
        raise DataNotFoundError(f"{what}: not a CIFAR-10 python-format pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise DataNotFoundError(f"{what}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _parse_batch(raw: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    entry = _unpickle(raw, what)
    if b"data" not in entry or b"labels" not in entry:
        raise DataNotFoundError(f"{what}: no b'data'/b'labels' keys (has {sorted(entry)!r})")
    data = np.asarray(entry[b"data"])
    labels = np.asarray(entry[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataNotFoundError(f"{what}: b'data' must be uint8 (n, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DataNotFoundError(f"{what}: {labels.shape[0]} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise DataNotFoundError(f"{what}: labels outside 0..{len(CLASSES) - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _check_meta(raw: bytes, what: str) -> None:
    names = _unpickle(raw, what).get(b"label_names")
    decoded = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in (names or ()))
    if decoded != CLASSES:
        raise DataNotFoundError(f"{what}: label_names {decoded!r} are not CIFAR-10's {CLASSES!r}")


def _read_python_members(found: _Found) -> dict[str, bytes]:
    wanted = set(PYTHON_FILE_MD5)
    if found.kind == "python-folder":
        return {name: (found.path / name).read_bytes() for name in wanted}
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(found.path, "r:gz") as tar:
            for member in tar:
                name = member.name.rstrip("/").rsplit("/", 1)[-1]
                if member.isfile() and name in wanted and name not in members:
                    members[name] = tar.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataNotFoundError(f"{found.path}: unreadable tar.gz ({exc})") from exc
    missing = sorted(wanted - members.keys())
    if missing:
        raise DataNotFoundError(f"{found.path}: archive has no {', '.join(missing)} (is it cifar-10-python.tar.gz?)")
    return members


def _load_python_release(found: _Found) -> ImageDataset:
    members = _read_python_members(found)
    _check_meta(members[META_FILE], f"{found.path}:{META_FILE}")
    parts = [_parse_batch(members[name], f"{found.path}:{name}") for name in TRAIN_BATCHES]
    test_x, test_y = _parse_batch(members[TEST_BATCH], f"{found.path}:{TEST_BATCH}")
    train_x = np.concatenate([x for x, _ in parts])
    train_y = np.concatenate([y for _, y in parts])
    return _dataset(
        train_x, train_y, test_x, test_y, SOURCE_PYTHON_RELEASE,
        {"layout": "python", "path": str(found.path), "verified": found.verified},
    )
