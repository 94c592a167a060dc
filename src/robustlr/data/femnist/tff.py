"""FEMNIST from TensorFlow Federated's h5 files (:func:`load_tff_emnist`), the exact data of the
paper (``fed_emnist_digitsonly_{train,test}.h5``: 3,383 writers, 341,873 / 40,832 samples), and
the writer of that layout (:func:`write_tff_emnist_h5`).

A file holds ``examples/<client_id>/pixels`` (float32, (n, 28, 28), pixel / 255 with a white 1.0
background) and ``examples/<client_id>/label`` (int, (n,)); see
:mod:`robustlr.data.femnist.common` for the pixel and label conventions and
:mod:`robustlr.data.femnist` for how writers become clients. The root attribute
:data:`SYNTHETIC_ATTR` marks files made by
:func:`~robustlr.data.femnist.synthetic.make_synthetic_tff_emnist`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from robustlr._optional import require
from robustlr.data.base import ImageDataset
from robustlr.data.femnist.common import (
    ALL_CLASSES,
    IMAGE_SIDE,
    PathLike,
    _check_min_train_samples,
    _label_filter,
    femnist_dataset,
)
from robustlr.errors import DataError

#: the feature named when h5py is missing
_TFF_FILES = "FEMNIST from TensorFlow Federated's h5 files"

#: Root attribute that marks a file written by
#: :func:`~robustlr.data.femnist.synthetic.make_synthetic_tff_emnist`.
SYNTHETIC_ATTR = "robustlr_synthetic"


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------


def _examples(h5file, path):
    group = h5file.get("examples")
    if group is None or not hasattr(group, "keys"):
        raise DataError(f"{path}: not a TFF EMNIST h5 file (no 'examples' group)")
    return group


def _scan_clients(group, path, ids: Iterable[str]) -> dict[str, tuple[np.ndarray, object]]:
    """Labels and the (unread) pixels dataset of each listed client present in ``group``."""
    out: dict[str, tuple[np.ndarray, object]] = {}
    for cid in ids:
        client = group.get(cid)
        if client is None:
            continue
        label_ds, pixels_ds = client.get("label"), client.get("pixels")
        if label_ds is None or pixels_ds is None:
            raise DataError(f"{path}: client {cid!r} needs 'pixels' and 'label' datasets")
        labels = np.asarray(label_ds[()]).reshape(-1).astype(np.int64)
        if pixels_ds.shape != (labels.shape[0], IMAGE_SIDE, IMAGE_SIDE):
            raise DataError(
                f"{path}: client {cid!r}: pixels must have shape ({labels.shape[0]}, 28, 28) to match "
                f"its {labels.shape[0]} labels, got {pixels_ds.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= len(ALL_CLASSES)):
            raise DataError(f"{path}: client {cid!r} has labels outside 0..61 ({labels.min()}..{labels.max()})")
        out[cid] = (labels, pixels_ds)
    return out


def _to_uint8(pixels: np.ndarray, where: str) -> np.ndarray:
    """TFF pixels (float in [0, 1], background 1.0) to uint8 without inverting."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.size and (pixels.min() < 0.0 or pixels.max() > 1.0):
        raise DataError(f"{where}: float pixels must lie in [0, 1], got {pixels.min()}..{pixels.max()}")
    scaled = np.multiply(pixels, 255.0, dtype=np.float32)
    return np.rint(scaled, out=scaled).astype(np.uint8)


def _read_tff_split(
    path, clients: Sequence[str], keep, scanned: dict[str, tuple[np.ndarray, object]]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Read the listed clients into one preallocated split; absent clients get no samples."""
    masks = {cid: keep(labels) for cid, (labels, _) in scanned.items()}
    total = sum(int(masks[cid].sum()) for cid in clients if cid in masks)
    x = np.empty((total, 1, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    y = np.empty(total, dtype=np.int64)
    blocks = []
    at = 0
    for cid in clients:
        n = 0
        if cid in scanned:
            labels, pixels_ds = scanned[cid]
            mask = masks[cid]
            n = int(mask.sum())
            scanned[cid] = (labels, None)  # closes the dataset after the read: HDF5 keeps a buffer per open one
            if n:
                pixels = pixels_ds[()]  # one read per client
                if n != mask.size:
                    pixels = pixels[mask]
                x[at : at + n, 0] = _to_uint8(pixels, f"{path}: client {cid!r}")
                y[at : at + n] = labels[mask]
        blocks.append(np.arange(at, at + n, dtype=np.int64))
        at += n
    return x, y, blocks


def load_tff_emnist(
    train_h5: PathLike,
    test_h5: PathLike,
    digits_only: bool = True,
    min_train_samples: int = 1,
) -> ImageDataset:
    """Load TensorFlow Federated's Federated EMNIST h5 files, one client per writer.

    The files hold ``examples/<client_id>/pixels`` (float32, (n, 28, 28), in [0, 1] with a white
    1.0 background) and ``examples/<client_id>/label`` (int, (n,)). TFF ships a digits-only pair
    (``fed_emnist_digitsonly_{train,test}.h5``: 3,383 writers, 341,873 / 40,832 samples, the
    paper's data) and a full pair (``fed_emnist_{train,test}.h5``: 3,400 writers, 62 classes);
    ``digits_only`` filters either to labels 0-9.

    Each client's arrays are read in one go into preallocated uint8 tensors; the float data is
    never held for more than one client at a time (the digits-only training split takes 268 MB
    as uint8, 1.07 GB as float32).

    Args:
        train_h5, test_h5: the two files of one variant.
        digits_only: keep labels 0-9 only (10 classes); else all 62.
        min_train_samples: a writer is a client when it has at least this many training
            samples after the digit filter.

    Returns:
        an :class:`ImageDataset` like :func:`load_leaf_femnist`'s: clients in client-id order,
        ``train_writers`` contiguous blocks, the test split = the clients' test parts
        (``extra["test_writers"]``); writers found only in the test file are left out and
        counted in ``extra["test_only_writers"]``. ``extra["synthetic"]`` is true for files
        made by :func:`make_synthetic_tff_emnist`.
    """
    h5py = require("h5py", extra="femnist", feature=_TFF_FILES)

    _check_min_train_samples(min_train_samples)
    keep = _label_filter(digits_only)
    for path in (train_h5, test_h5):
        if not h5py.is_hdf5(path):
            raise DataError(f"{path} is not an HDF5 file (damaged or truncated?); get the files again "
                            f"(see docs/how-to/data.md, 'Non-iid (FEMNIST)')")
    with h5py.File(train_h5, "r") as ftrain, h5py.File(test_h5, "r") as ftest:
        train_group, test_group = _examples(ftrain, train_h5), _examples(ftest, test_h5)
        train_ids = sorted(train_group.keys())
        train_scan = _scan_clients(train_group, train_h5, train_ids)
        clients = [cid for cid in train_ids if int(keep(train_scan[cid][0]).sum()) >= min_train_samples]
        train_x, train_y, train_blocks = _read_tff_split(train_h5, clients, keep, train_scan)
        test_scan = _scan_clients(test_group, test_h5, clients)
        test_x, test_y, test_blocks = _read_tff_split(test_h5, clients, keep, test_scan)
        known = set(train_ids)
        test_only = sum(1 for cid in test_group.keys() if cid not in known)
        without_test = sum(1 for cid in clients if cid not in test_scan)
        synthetic = bool(ftrain.attrs.get(SYNTHETIC_ATTR, False) or ftest.attrs.get(SYNTHETIC_ATTR, False))
    return femnist_dataset(
        (train_x, train_y, train_blocks), (test_x, test_y, test_blocks), clients, digits_only,
        ("SYNTHETIC data in " if synthetic else "FEMNIST, ")
        + f"TensorFlow Federated h5 ({Path(train_h5).name}, {Path(test_h5).name}); ",
        {
            "format": "tff-h5",
            "synthetic": synthetic,
            "writers_seen": len(train_ids) + test_only,
            "test_only_writers": test_only,
            "writers_without_test": without_test,
            "writers_below_min_train": len(train_ids) - len(clients),
        },
    )


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def write_tff_emnist_h5(
    path: PathLike,
    clients: Mapping[str, tuple[np.ndarray, np.ndarray]] | Iterable[tuple[str, tuple[np.ndarray, np.ndarray]]],
    attrs: Mapping[str, object] | None = None,
) -> Path:
    """Write clients in TFF's Federated EMNIST h5 layout (overwriting ``path``).

    Args:
        path: the file to write.
        clients: ``{client_id: (pixels, labels)}`` or an iterable of such pairs (a generator
            keeps memory flat when writing many clients). ``pixels``: (n, 28, 28), float in
            [0, 1] with background 1.0 (as TFF), or uint8 0..255 (divided by 255); ``labels``:
            (n,) integers in 0..61. Stored as float32 ``pixels`` and int32 ``label``.
        attrs: optional attributes of the file's root.

    Returns:
        ``Path(path)``.
    """
    h5py = require("h5py", extra="femnist", feature=_TFF_FILES)

    items = clients.items() if isinstance(clients, Mapping) else clients
    path = Path(path)
    with h5py.File(path, "w") as fh:
        for key, value in (attrs or {}).items():
            fh.attrs[key] = value
        group = fh.create_group("examples")
        for cid, (pixels, labels) in items:
            cid = str(cid)
            if cid in group:
                raise DataError(f"client id {cid!r} given twice")
            px = np.asarray(pixels)
            lab = np.asarray(labels).reshape(-1)
            if px.ndim != 3 or px.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE) or px.shape[0] != lab.shape[0]:
                raise DataError(
                    f"client {cid!r}: pixels must be (n, 28, 28) with n = len(labels) = {lab.shape[0]}, got {px.shape}"
                )
            if not np.issubdtype(lab.dtype, np.integer) or (lab.size and (lab.min() < 0 or lab.max() >= len(ALL_CLASSES))):
                raise DataError(f"client {cid!r}: labels must be integers in 0..61")
            if px.dtype == np.uint8:
                px = px.astype(np.float32) / np.float32(255.0)
            else:
                px = px.astype(np.float32)
                if px.size and (px.min() < 0.0 or px.max() > 1.0):
                    raise DataError(f"client {cid!r}: float pixels must lie in [0, 1]")
            sub = group.create_group(cid)
            sub.create_dataset("pixels", data=px)
            sub.create_dataset("label", data=lab.astype(np.int32))
    return path
