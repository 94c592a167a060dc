"""FEMNIST from LEAF's json shards (:func:`load_leaf_femnist`), e.g. the partial samples in
``shared/data/femnist-leaf``: finding the shards and telling their split, parsing them (a fast
vectorised parser with the plain ``json`` one as reference and fallback), and merging the
writers of several LEAF runs into one :class:`~robustlr.data.base.ImageDataset`.

A shard is a json object with ``users``, ``num_samples`` and ``user_data`` (per writer ``x``, rows
of 784 pixel / 255 floats, and ``y``, labels 0..61); see :mod:`robustlr.data.femnist.common` for
the pixel and label conventions and :mod:`robustlr.data.femnist` for how writers become clients.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robustlr.data.base import ImageDataset
from robustlr.data.femnist.common import (
    ALL_CLASSES,
    IMAGE_SIDE,
    PIXELS,
    PathLike,
    _check_min_train_samples,
    _label_filter,
    femnist_dataset,
)
from robustlr.errors import DataError, DataNotFoundError

# ---------------------------------------------------------------------------------------------
# finding the shards
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
    raise DataError(
        f"cannot tell whether {path} holds train or test data: put it in a folder named "
        f"'train' or 'test', or give it a name with a '_train' or '_test' token"
    )


def _find_shards(paths: PathLike | Sequence[PathLike]) -> list[_Shard]:
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if len(paths) == 0:
        raise DataError("paths is empty: give at least one folder or shard file")
    shards: list[_Shard] = []
    seen: set[Path] = set()
    for given in paths:
        p = Path(given)
        if p.is_file():
            if not p.name.endswith(_SHARD_SUFFIXES):
                raise DataError(f"{p} is not a LEAF shard (expected a .json or .json.gz file)")
            files, root = [p], p.parent
        elif p.is_dir():
            split_dirs = [p / s for s in _SPLITS if (p / s).is_dir()]
            search = split_dirs or [p]
            files = sorted((f for d in search for f in d.rglob("*") if _is_shard(f)), key=_natural_key)
            root = p
            if not files:
                raise DataError(f"no LEAF shards (*.json, *.json.gz) under {p}")
        else:
            raise DataNotFoundError(f"LEAF FEMNIST path does not exist: {p}; give a folder of LEAF shards "
                                    f"(*.json, *.json.gz) or shard files that exist")
        for f in files:
            key = f.resolve()
            if key in seen:  # the same file named twice (e.g. a folder and a file in it)
                continue
            seen.add(key)
            split, origin = _classify(f, root)
            shards.append(_Shard(f, split, origin))
    return shards


# ---------------------------------------------------------------------------------------------
# parsing a shard
# ---------------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        with (gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")) as fh:
            return fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; a truncated .gz an EOFError
        raise DataError(f"LEAF shard {path} cannot be read ({type(exc).__name__}: {exc}); it is damaged or "
                        f"truncated: replace it, or remove it from the folder") from None


class _FastPathUnsupported(Exception):
    """The shard is valid JSON but not in the exact layout the fast parser handles."""


def _check_writer(where: str, writer: str, x: np.ndarray, y: np.ndarray, declared) -> None:
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{where}: writer {writer!r} has {x.shape[0]} images but {y.shape[0]} labels")
    if declared is not None and int(declared) != y.shape[0]:
        raise DataError(f"{where}: writer {writer!r}: num_samples says {declared}, data has {y.shape[0]}")
    if y.size and (y.min() < 0 or y.max() >= len(ALL_CLASSES)):
        raise DataError(f"{where}: writer {writer!r} has labels outside 0..61 ({y.min()}..{y.max()})")


def _declared_counts(doc, where: str) -> dict:
    if not isinstance(doc, dict):
        raise DataError(f"{where}: not a LEAF shard (the JSON is not an object)")
    users = doc.get("users")
    if not isinstance(users, list) or not isinstance(doc.get("user_data"), dict):
        raise DataError(f"{where}: not a LEAF shard (needs 'users' and 'user_data')")
    counts = doc.get("num_samples")
    if counts is None:
        return {}
    if len(counts) != len(users):
        raise DataError(f"{where}: {len(users)} users but {len(counts)} num_samples entries")
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
            raise DataError(f"{where}: writer {writer!r} is listed in 'users' but has no 'user_data'")
        y = np.asarray(data["y"], dtype=np.int64).reshape(-1)
        x = np.asarray(data["x"], dtype=np.float64)
        if x.size == 0:
            x = x.reshape(0, PIXELS)
        if x.ndim != 2 or x.shape[1] != PIXELS:
            raise DataError(f"{where}: writer {writer!r}: x must be rows of {PIXELS} values, got shape {x.shape}")
        if x.size and (x.min() < 0.0 or x.max() > 1.0):
            raise DataError(f"{where}: writer {writer!r}: pixel values must lie in [0, 1]")
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
            raise DataError(f"{where}: writer {writer!r} is listed in 'users' but has no 'user_data'")
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


# ---------------------------------------------------------------------------------------------
# merging the shards into one dataset
# ---------------------------------------------------------------------------------------------


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
    folders = sorted({str(s.origin) for s in shards})
    return femnist_dataset(
        (train_x, train_y, train_blocks), (test_x, test_y, test_blocks), clients, digits_only,
        f"FEMNIST, LEAF json shards from {len(folders)} run(s) ({', '.join(Path(f).name for f in folders)}); ",
        {
            "format": "leaf-json",
            "writer_origins": [str(train_part[w][0]) for w in clients],
            "shards": len(shards),
            "writers_seen": len(occurrences),
            "duplicate_writers": sum(1 for w, n in occurrences.items() if n > kept[w]),
            "ignored_duplicate_parts": sum(occurrences.values()) - sum(kept.values()),
            "writers_without_train": len(occurrences) - len(train_part),
            "writers_below_min_train": len(train_part) - len(clients),
        },
    )
