"""Federated EMNIST (FEMNIST): handwritten characters grouped by writer, one client per writer.

Two on-disk formats are read into the same :class:`~robustlr.data.base.ImageDataset`:

- LEAF's json shards (:func:`load_leaf_femnist`), e.g. the partial samples in
  ``shared/data/femnist-leaf``;
- TensorFlow Federated's h5 files (:func:`load_tff_emnist`), the exact data of the paper
  (``fed_emnist_digitsonly_{train,test}.h5``: 3,383 writers, 341,873 / 40,832 samples).

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

Clients. A writer is a client when it has at least ``min_train_samples`` training samples
after the digit filter. Clients are ordered by writer id (string order); client ``i``'s
samples are the contiguous block ``train_writers[i]`` of the training split. The test split is
the union of the *clients'* test parts, in the same order (``extra["test_writers"]`` has the
per-client index arrays into it); test parts of writers that are not clients are left out, so
the validation set is drawn from the same population as the training data.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

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
        raise ValueError(f"min_train_samples must be an integer >= 1, got {min_train_samples!r}")


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


# ---------------------------------------------------------------------------------------------
# LEAF json shards
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shard:
    path: Path
    split: str  # "train" or "test"
    origin: Path  # the LEAF run the shard belongs to (the folder holding train/ and test/)


_SHARD_SUFFIXES = (".json", ".json.gz")
_SPLITS = ("train", "test")


def _natural_key(path: Path) -> list:
    """Sort key that puts ``all_data_2`` before ``all_data_10``."""
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", path.as_posix())]


def _is_shard(path: Path) -> bool:
    return path.is_file() and path.name.endswith(_SHARD_SUFFIXES)


def _classify(path: Path, root: Path) -> tuple[str, Path]:
    """The split of a shard and its origin: the nearest enclosing ``train``/``test`` folder
    (at or below ``root``) decides, else a ``train``/``test`` token in the file name."""
    folder = path.parent
    while True:
        if folder.name in _SPLITS:
            return folder.name, folder.parent
        if folder == root or folder.parent == folder:
            break
        folder = folder.parent
    tokens = set(re.split(r"[^A-Za-z0-9]+", path.name.lower()))
    found = [s for s in _SPLITS if s in tokens]
    if len(found) == 1:
        return found[0], path.parent
    raise ValueError(
        f"cannot tell whether {path} holds train or test data: put it in a folder named "
        f"'train' or 'test', or give it a name with a '_train' or '_test' token"
    )


def _find_shards(paths: PathLike | Sequence[PathLike]) -> list[_Shard]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if len(paths) == 0:
        raise ValueError("paths is empty: give at least one folder or shard file")
    shards: list[_Shard] = []
    seen: set[Path] = set()
    for given in paths:
        p = Path(given)
        if p.is_file():
            if not p.name.endswith(_SHARD_SUFFIXES):
                raise ValueError(f"{p} is not a LEAF shard (expected a .json or .json.gz file)")
            files, root = [p], p.parent
        elif p.is_dir():
            split_dirs = [p / s for s in _SPLITS if (p / s).is_dir()]
            search = split_dirs or [p]
            files = sorted((f for d in search for f in d.rglob("*") if _is_shard(f)), key=_natural_key)
            root = p
            if not files:
                raise ValueError(f"no LEAF shards (*.json, *.json.gz) under {p}")
        else:
            raise FileNotFoundError(f"LEAF FEMNIST path does not exist: {p}")
        for f in files:
            key = f.resolve()
            if key in seen:  # the same file named twice (e.g. a folder and a file in it)
                continue
            seen.add(key)
            split, origin = _classify(f, root)
            shards.append(_Shard(f, split, origin))
    return shards


def _read_bytes(path: Path) -> bytes:
    with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as fh:
        return fh.read()


class _FastPathUnsupported(Exception):
    """The shard is valid JSON but not in the exact layout the fast parser handles."""


def _check_writer(where: str, writer: str, x: np.ndarray, y: np.ndarray, declared) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{where}: writer {writer!r} has {x.shape[0]} images but {y.shape[0]} labels")
    if declared is not None and int(declared) != y.shape[0]:
        raise ValueError(f"{where}: writer {writer!r}: num_samples says {declared}, data has {y.shape[0]}")
    if y.size and (y.min() < 0 or y.max() >= len(ALL_CLASSES)):
        raise ValueError(f"{where}: writer {writer!r} has labels outside 0..61 ({y.min()}..{y.max()})")


def _declared_counts(doc, where: str) -> dict:
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: not a LEAF shard (the JSON is not an object)")
    users = doc.get("users")
    if not isinstance(users, list) or not isinstance(doc.get("user_data"), dict):
        raise ValueError(f"{where}: not a LEAF shard (needs 'users' and 'user_data')")
    counts = doc.get("num_samples")
    if counts is None:
        return {}
    if len(counts) != len(users):
        raise ValueError(f"{where}: {len(users)} users but {len(counts)} num_samples entries")
    return dict(zip(users, counts))


def _parse_shard_json(raw: bytes, where: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reference parser: ``json.loads``, then one numpy conversion per writer."""
    doc = json.loads(raw)
    declared = _declared_counts(doc, where)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for writer in doc["users"]:
        if writer in out:
            continue
        data = doc["user_data"].get(writer)
        if data is None:
            raise ValueError(f"{where}: writer {writer!r} is listed in 'users' but has no 'user_data'")
        y = np.asarray(data["y"], dtype=np.int64).reshape(-1)
        x = np.asarray(data["x"], dtype=np.float64)
        if x.size == 0:
            x = x.reshape(0, PIXELS)
        if x.ndim != 2 or x.shape[1] != PIXELS:
            raise ValueError(f"{where}: writer {writer!r}: x must be rows of {PIXELS} values, got shape {x.shape}")
        if x.size and (x.min() < 0.0 or x.max() > 1.0):
            raise ValueError(f"{where}: writer {writer!r}: pixel values must lie in [0, 1]")
        _check_writer(where, writer, x, y, declared.get(writer))
        out[writer] = (np.rint(x * 255.0).astype(np.uint8), y)
    return out


_X_OPEN = re.compile(rb'"x"\s*:\s*\[')
_ALLOWED = np.zeros(256, dtype=bool)
_ALLOWED[np.frombuffer(b"0123456789.,[] ", dtype=np.uint8)] = True
_IS_DIGIT = np.zeros(256, dtype=bool)
_IS_DIGIT[np.frombuffer(b"0123456789", dtype=np.uint8)] = True
_IS_DELIM = np.zeros(256, dtype=bool)
_IS_DELIM[np.frombuffer(b",[ ", dtype=np.uint8)] = True
_FRAC_DIGITS = 6  # decimals read; x truncated to 6 decimals still gives round(x * 255) exactly for x = k / 255


def _parse_shard_fast(raw: bytes, where: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Vectorised parser for LEAF's layout, about 4x faster than ``json.loads``.

    The ``x`` arrays (all but a few bytes of a shard) are cut out of the text and replaced by
    their ordinal, so ``json.loads`` only parses the small skeleton (users, counts, labels).
    The cut-out numbers are decoded with numpy: every one must look like ``D.DDD...`` (one
    integer digit, a decimal point, decimals), every row must hold 784 of them. Anything else
    raises :class:`_FastPathUnsupported` and the caller falls back to the reference parser.
    """
    pieces: list[bytes] = []
    segments: list[bytes] = []
    pos = 0
    for match in _X_OPEN.finditer(raw):
        start = match.end() - 1  # the outer '['
        j = match.end()
        while j < len(raw) and raw[j] in b" \t\r\n":
            j += 1
        if j < len(raw) and raw[j] == ord("]"):
            end = j + 1
        elif j < len(raw) and raw[j] == ord("["):
            k = raw.find(b"]]", j)
            if k < 0:
                raise _FastPathUnsupported
            end = k + 2
        else:
            raise _FastPathUnsupported
        pieces += [raw[pos:start], str(len(segments)).encode()]
        segments.append(raw[start:end])
        pos = end
    pieces.append(raw[pos:])
    try:
        doc = json.loads(b"".join(pieces))
    except json.JSONDecodeError as exc:
        raise _FastPathUnsupported from exc
    declared = _declared_counts(doc, where)

    seg_len = np.fromiter((len(s) for s in segments), dtype=np.int64, count=len(segments))
    seg_start = np.concatenate([[0], np.cumsum(seg_len)])
    pad = _FRAC_DIGITS + 2
    buf = np.frombuffer(b"".join(segments) + b"\0" * pad, dtype=np.uint8)
    body = buf[: len(buf) - pad]
    if np.bincount(body, minlength=256)[~_ALLOWED].any():
        raise _FastPathUnsupported

    # bracket structure: depth 1 = the list of rows, depth 2 = inside a row
    brackets = np.flatnonzero((body == ord("[")) | (body == ord("]")))
    step = np.where(body[brackets] == ord("["), 1, -1)
    depth = np.cumsum(step)
    if depth.size and (depth.min() < 0 or depth.max() > 2 or depth[-1] != 0):
        raise _FastPathUnsupported
    row_open = brackets[(step == 1) & (depth == 2)]
    row_close = brackets[(step == -1) & (depth == 1)]
    seg_open = brackets[(step == 1) & (depth == 1)]
    if len(row_open) != len(row_close) or not np.array_equal(seg_open, seg_start[:-1]):
        raise _FastPathUnsupported
    n_rows = len(row_open)

    # every row holds exactly 784 numbers (784 dots, 783 commas); as the rows are disjoint
    # and the totals match, no dot lies outside a row
    dots = np.flatnonzero(body == ord("."))
    commas = np.flatnonzero(body == ord(","))
    if len(dots) != n_rows * PIXELS:
        raise _FastPathUnsupported
    if n_rows:
        if not (np.searchsorted(dots, row_close) - np.searchsorted(dots, row_open) == PIXELS).all():
            raise _FastPathUnsupported
        if not (np.searchsorted(commas, row_close) - np.searchsorted(commas, row_open) == PIXELS - 1).all():
            raise _FastPathUnsupported
        # each number is D.DDD...: one integer digit after a delimiter, a decimal after the dot
        units = buf[dots - 1] - np.uint8(48)
        tenths = buf[dots + 1] - np.uint8(48)
        if not ((units < 10).all() and (tenths < 10).all() and _IS_DELIM[buf[dots - 2]].all()):
            raise _FastPathUnsupported
        scale = 10**_FRAC_DIGITS
        value = units.astype(np.int32) * scale + tenths.astype(np.int32) * (scale // 10)
        # most numbers are "1.0" or "0.0"; only the longer ones need their further decimals
        longer = np.flatnonzero(_IS_DIGIT[buf[dots + 2]])
        if longer.size:
            at = dots[longer]
            alive = np.ones(longer.size, dtype=bool)
            extra = np.zeros(longer.size, dtype=np.int32)
            for k in range(2, _FRAC_DIGITS + 1):
                digit = buf[at + k] - np.uint8(48)
                alive &= digit < 10
                extra += np.where(alive, digit, 0).astype(np.int32) * 10 ** (_FRAC_DIGITS - k)
            value[longer] += extra
        if value.max() > scale:  # x > 1: let the reference parser report it
            raise _FastPathUnsupported
        pixels = ((value.astype(np.int64) * 255 + scale // 2) // scale).astype(np.uint8).reshape(n_rows, PIXELS)
    else:
        pixels = np.zeros((0, PIXELS), dtype=np.uint8)
    rows_before = np.searchsorted(row_open, seg_start)  # row index where each segment begins

    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for writer in doc["users"]:
        if writer in out:
            continue
        data = doc["user_data"].get(writer)
        if data is None:
            raise ValueError(f"{where}: writer {writer!r} is listed in 'users' but has no 'user_data'")
        seg = data.get("x")
        if not isinstance(seg, int) or isinstance(seg, bool) or not 0 <= seg < len(segments):
            raise _FastPathUnsupported
        x = pixels[rows_before[seg] : rows_before[seg + 1]]
        y = np.asarray(data["y"], dtype=np.int64).reshape(-1)
        _check_writer(where, writer, x, y, declared.get(writer))
        out[writer] = (x, y)
    return out


def _parse_shard(raw: bytes, where: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        return _parse_shard_fast(raw, where)
    except _FastPathUnsupported:
        return _parse_shard_json(raw, where)


def _assemble(
    parts: Sequence[tuple[np.ndarray, np.ndarray]], keep_label
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Concatenate per-writer (uint8 (n, 784), labels) into one preallocated split."""
    masks = [keep_label(lab) for _, lab in parts]
    sizes = [int(m.sum()) for m in masks]
    total = sum(sizes)
    x = np.empty((total, 1, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    y = np.empty(total, dtype=np.int64)
    flat = x.reshape(total, PIXELS)
    blocks = []
    at = 0
    for (px, lab), m, n in zip(parts, masks, sizes):
        flat[at : at + n] = px[m]
        y[at : at + n] = lab[m]
        blocks.append(np.arange(at, at + n, dtype=np.int64))
        at += n
    return x, y, blocks


def _label_filter(digits_only: bool):
    if digits_only:
        return lambda y: y < 10
    return lambda y: np.ones(y.shape, dtype=bool)


def load_leaf_femnist(
    paths: PathLike | Sequence[PathLike],
    digits_only: bool = True,
    min_train_samples: int = 1,
) -> ImageDataset:
    """Load FEMNIST from LEAF json shards, one client per writer.

    Args:
        paths: one or several folders or shard files (``.json`` or ``.json.gz``). A folder with
            ``train/`` and/or ``test/`` subfolders is read from those; any other folder is
            searched recursively. A shard's split is the nearest enclosing folder named
            ``train`` or ``test``, else a ``train``/``test`` token in its file name. The folder
            holding a shard's split folder is its *origin* (one LEAF run, e.g.
            ``femnist-leaf/arakotom_flic``). Folders are read in the order given, the shards in
            each in natural name order (``all_data_2`` before ``all_data_10``).
        digits_only: keep labels 0-9 only (10 classes); else all 62 classes.
        min_train_samples: a writer is a client when it has at least this many training samples
            (counted after the digit filter).

    Duplicate writer ids (the same writer in several LEAF runs, not always with the same
    samples) are merged once: the first origin, in reading order, that holds the writer's
    *train* part supplies both its train and its test part; the writer's parts in other origins
    are ignored. Taking both parts from one run keeps a test image of one run from being a
    training image of another. ``extra`` counts what was merged or dropped.

    Returns:
        an :class:`ImageDataset` named ``"femnist"`` with ``ink = 0``, ``train_writers`` (one
        contiguous index block per client, clients in writer-id order) and ``writer_ids``.
        ``extra`` holds ``test_writers`` (each client's indices into the test split),
        ``writer_origins``, ``shards``, ``writers_seen``, ``duplicate_writers`` (writers found in
        more than one origin, or twice in one split of an origin), ``ignored_duplicate_parts``
        (writer parts not used because of such duplicates), ``writers_without_train``,
        ``writers_below_min_train``, ``pixel_mean`` and ``pixel_std``.
    """
    _check_min_train_samples(min_train_samples)
    shards = _find_shards(paths)
    shards.sort(key=lambda s: s.split != "train")  # stable: train shards first, order kept

    train_part: dict[str, tuple[Path, np.ndarray, np.ndarray]] = {}
    test_parts: dict[tuple[str, Path], tuple[np.ndarray, np.ndarray]] = {}
    occurrences: dict[str, int] = {}
    for shard in shards:
        where = str(shard.path)
        for writer, (x, y) in _parse_shard(_read_bytes(shard.path), where).items():
            occurrences[writer] = occurrences.get(writer, 0) + 1
            if shard.split == "train":
                train_part.setdefault(writer, (shard.origin, x, y))
            else:
                test_parts.setdefault((writer, shard.origin), (x, y))

    # parts kept per writer: the winning origin's train and test part (a writer without any
    # train part keeps its first test part, though it is no client); the rest are duplicates
    kept = {
        w: 1 + ((w, train_part[w][0]) in test_parts) if w in train_part else 1 for w in occurrences
    }
    keep = _label_filter(digits_only)
    clients = sorted(w for w, (_, _, y) in train_part.items() if int(keep(y).sum()) >= min_train_samples)
    empty = (np.zeros((0, PIXELS), np.uint8), np.zeros(0, np.int64))
    train_x, train_y, train_blocks = _assemble([train_part[w][1:] for w in clients], keep)
    test_x, test_y, test_blocks = _assemble(
        [test_parts.get((w, train_part[w][0]), empty) for w in clients], keep
    )
    mean, std = _pixel_stats(train_x)
    folders = sorted({str(s.origin) for s in shards})
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
        writer_ids=clients,
        source=(
            f"FEMNIST, LEAF json shards from {len(folders)} run(s) ({', '.join(Path(f).name for f in folders)}); "
            + ("digits 0-9 only" if digits_only else "all 62 classes")
        ),
        extra={
            "format": "leaf-json",
            "test_writers": test_blocks,
            "writer_origins": [str(train_part[w][0]) for w in clients],
            "shards": len(shards),
            "writers_seen": len(occurrences),
            "duplicate_writers": sum(1 for w, n in occurrences.items() if n > kept[w]),
            "ignored_duplicate_parts": sum(occurrences.values()) - sum(kept.values()),
            "writers_without_train": len(occurrences) - len(train_part),
            "writers_below_min_train": len(train_part) - len(clients),
            "pixel_mean": mean,
            "pixel_std": std,
        },
    )


# ---------------------------------------------------------------------------------------------
# TensorFlow Federated h5 files
# ---------------------------------------------------------------------------------------------

#: Root attribute that marks a file written by :func:`make_synthetic_tff_emnist`.
SYNTHETIC_ATTR = "robustlr_synthetic"


def _examples(h5file, path):
    group = h5file.get("examples")
    if group is None or not hasattr(group, "keys"):
        raise ValueError(f"{path}: not a TFF EMNIST h5 file (no 'examples' group)")
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
            raise ValueError(f"{path}: client {cid!r} needs 'pixels' and 'label' datasets")
        labels = np.asarray(label_ds[()]).reshape(-1).astype(np.int64)
        if pixels_ds.shape != (labels.shape[0], IMAGE_SIDE, IMAGE_SIDE):
            raise ValueError(
                f"{path}: client {cid!r}: pixels must have shape ({labels.shape[0]}, 28, 28) to match "
                f"its {labels.shape[0]} labels, got {pixels_ds.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= len(ALL_CLASSES)):
            raise ValueError(f"{path}: client {cid!r} has labels outside 0..61 ({labels.min()}..{labels.max()})")
        out[cid] = (labels, pixels_ds)
    return out


def _to_uint8(pixels: np.ndarray, where: str) -> np.ndarray:
    """TFF pixels (float in [0, 1], background 1.0) to uint8 without inverting."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.size and (pixels.min() < 0.0 or pixels.max() > 1.0):
        raise ValueError(f"{where}: float pixels must lie in [0, 1], got {pixels.min()}..{pixels.max()}")
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
    import h5py

    _check_min_train_samples(min_train_samples)
    keep = _label_filter(digits_only)
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
        writer_ids=clients,
        source=(
            ("SYNTHETIC data in " if synthetic else "FEMNIST, ")
            + f"TensorFlow Federated h5 ({Path(train_h5).name}, {Path(test_h5).name}); "
            + ("digits 0-9 only" if digits_only else "all 62 classes")
        ),
        extra={
            "format": "tff-h5",
            "synthetic": synthetic,
            "test_writers": test_blocks,
            "writers_seen": len(train_ids) + test_only,
            "test_only_writers": test_only,
            "writers_without_test": without_test,
            "writers_below_min_train": len(train_ids) - len(clients),
            "pixel_mean": mean,
            "pixel_std": std,
        },
    )


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
    import h5py

    items = clients.items() if isinstance(clients, Mapping) else clients
    path = Path(path)
    with h5py.File(path, "w") as fh:
        for key, value in (attrs or {}).items():
            fh.attrs[key] = value
        group = fh.create_group("examples")
        for cid, (pixels, labels) in items:
            cid = str(cid)
            if cid in group:
                raise ValueError(f"client id {cid!r} given twice")
            px = np.asarray(pixels)
            lab = np.asarray(labels).reshape(-1)
            if px.ndim != 3 or px.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE) or px.shape[0] != lab.shape[0]:
                raise ValueError(
                    f"client {cid!r}: pixels must be (n, 28, 28) with n = len(labels) = {lab.shape[0]}, got {px.shape}"
                )
            if not np.issubdtype(lab.dtype, np.integer) or (lab.size and (lab.min() < 0 or lab.max() >= len(ALL_CLASSES))):
                raise ValueError(f"client {cid!r}: labels must be integers in 0..61")
            if px.dtype == np.uint8:
                px = px.astype(np.float32) / np.float32(255.0)
            else:
                px = px.astype(np.float32)
                if px.size and (px.min() < 0.0 or px.max() > 1.0):
                    raise ValueError(f"client {cid!r}: float pixels must lie in [0, 1]")
            sub = group.create_group(cid)
            sub.create_dataset("pixels", data=px)
            sub.create_dataset("label", data=lab.astype(np.int32))
    return path


def _stroke_templates(num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """One dark polyline 'glyph' per class on a white background, values k / 255."""
    templates = np.ones((num_classes, IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    t = np.linspace(0.0, 1.0, 24)
    for c in range(num_classes):
        points = rng.uniform(6, 21, size=(int(rng.integers(3, 6)), 2))
        for a, b in zip(points[:-1], points[1:]):
            line = np.rint(a[None, :] + t[:, None] * (b - a)[None, :]).astype(int)
            for dr in (0, 1):
                for dc in (0, 1):
                    templates[c, line[:, 0] + dr, line[:, 1] + dc] = 0.0
    return templates


def make_synthetic_tff_emnist(
    path: PathLike,
    n_clients: int,
    samples_per_client: int,
    seed: int,
    num_classes: int = 10,
    style_seed: int = 0,
) -> Path:
    """Write a SYNTHETIC file in TFF's Federated EMNIST layout, for scale tests and benchmarks.

    The content is not handwriting: each class is a fixed random polyline ("glyph", drawn from
    ``style_seed``), each writer shifts all its glyphs by its own offset of up to 3 pixels (also
    from ``style_seed``, so a writer looks the same in a train and a test file), and each sample
    gets grey noise on about 10 % of its pixels. Pixels are k / 255 floats with a white 1.0 background and dark ink,
    like the real files; labels are uniform in ``0..num_classes-1``. The root attribute
    ``robustlr_synthetic`` marks the file, and :func:`load_tff_emnist` reports it in ``source``.

    Client ids are ``syn00000``, ``syn00001``, ... whatever the seed, so a train and a test
    file made with different seeds (and sizes) pair up::

        make_synthetic_tff_emnist("train.h5", 3383, 100, seed=1)
        make_synthetic_tff_emnist("test.h5", 3383, 12, seed=2)

    Args:
        path: the file to write (overwritten).
        n_clients: number of writers (>= 1).
        samples_per_client: samples per writer (>= 1).
        seed: seeds the labels and noise of every writer.
        num_classes: 10 (digits) or up to 62.
        style_seed: seeds the glyphs and the writers' offsets.
    """
    if n_clients < 1:
        raise ValueError(f"n_clients must be >= 1, got {n_clients}")
    if samples_per_client < 1:
        raise ValueError(f"samples_per_client must be >= 1, got {samples_per_client}")
    if not 1 <= num_classes <= len(ALL_CLASSES):
        raise ValueError(f"num_classes must lie in 1..62, got {num_classes}")
    templates = _stroke_templates(num_classes, np.random.default_rng([style_seed, 0x5EED]))

    def clients():
        for i in range(n_clients):
            shift = np.random.default_rng([style_seed, i]).integers(-3, 4, size=2)
            rng = np.random.default_rng([seed, i])
            labels = rng.integers(0, num_classes, size=samples_per_client)
            images = np.roll(templates[labels], shift=(int(shift[0]), int(shift[1])), axis=(1, 2))
            # sparse grey noise: like real scans, most of the paper stays exactly white
            noise = rng.integers(0, 24, size=images.shape) * (rng.random(images.shape) < 0.1) / np.float32(255.0)
            images = np.where(images > 0.5, images - noise, images + noise)
            yield f"syn{i:05d}", (np.rint(images * 255.0) / 255.0, labels)

    return write_tff_emnist_h5(
        path,
        clients(),
        attrs={SYNTHETIC_ATTR: True, "description": "SYNTHETIC glyphs in TFF Federated EMNIST layout (robustlr)"},
    )
