"""Reading CIFAR-10 from an image folder, ``train/<class>/*`` and ``test/<class>/*`` (PNG or
JPEG; class folders named as in :data:`~robustlr.data.cifar.common.CLASSES`), as a folder or a
``.tar.gz``: collecting the image files, decoding them with Pillow, and caching the decoded
arrays so that later loads skip decoding.

``cifar10-jpeg.tar.gz`` is the project's shared lossy copy (all 60,000 images re-encoded
as JPEG quality 75) and must have its known sha256; any other archive or folder is checked
for structure (both splits, all ten classes, every image 32x32). Images are decoded once
with Pillow (about 6 s for the 60,000 JPEGs on one core) and the arrays are cached as an
``.npz`` in ``<cache>/cifar10/`` under the archive's sha256 (for a folder: a digest of
every file's name and bytes), so later loads skip decoding (about 0.3 s). The ``.npz`` is
not compressed: decoded pixels deflate by only ~6 %, for ~5 s more to write and ~1 s more
to read.
Data decoded from the JPEG copy, as archive or as extracted folder (recognised by its
content digest), is labelled ``source == "CIFAR-10 (JPEG q75 copy)"``; quote that label
beside any number computed from it, since its pixels are not the original ones. Where image
folders are looked for is in :mod:`robustlr.data.cifar.locate`.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from robustlr._optional import require
from robustlr.data import store
from robustlr.data.base import ImageDataset
from robustlr.data.cifar.common import CLASSES, SOURCE_JPEG_COPY, _dataset, _Found
from robustlr.data.store import DataNotFoundError, cache_dir

JPEG_ARCHIVE = store.DataFile(
    name="cifar10-jpeg.tar.gz",
    sha256="45b041e867f5a40f79bfde38d3dd1fd511103d50068c1afecf6445e25234d4db",
    subdir="cifar10-jpeg",
    checksum_of_decompressed=False,
)
# _content_digest() of the 60,000 images inside JPEG_ARCHIVE: recognises an extracted copy.
JPEG_CONTENT_DIGEST = "f10d4c9e536a564f17fa5e8d68ba087d1235e60cd1f21700e11ff43f0647bbb0"
IMAGES_SUBDIR = "cifar10-images"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLITS = ("train", "test")
CACHE_SUBDIR = "cifar10"
CACHE_FORMAT = 1


@dataclass(frozen=True)
class _ImageFile:
    split: str
    label: int
    name: str  # path relative to the layout's top: "train/cat/0001.png"
    data: bytes


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def _classify(parts: list[str], where: str) -> tuple[str, int] | None:
    """(split, label) for a path ending in <split>/<class>/<file>, None if not an image path."""
    if len(parts) < 3 or parts[-3] not in SPLITS:
        return None
    base = parts[-1]
    if base.startswith(".") or not base.lower().endswith(IMAGE_SUFFIXES):
        return None
    if parts[-2] not in CLASSES:
        raise DataNotFoundError(
            f"{where}: unknown class folder {parts[-3]}/{parts[-2]}/ (expected one of {', '.join(CLASSES)})"
        )
    return parts[-3], CLASSES.index(parts[-2])


def _files_from_archive(path: Path) -> list[_ImageFile]:
    files: list[_ImageFile] = []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = [p for p in member.name.split("/") if p not in ("", ".")]
                kind = _classify(parts, str(path))
                if kind is not None:
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    files.append(_ImageFile(kind[0], kind[1], "/".join(parts[-3:]), data))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataNotFoundError(f"{path}: unreadable tar.gz ({exc})") from exc
    return files


def _files_from_folder(folder: Path) -> list[_ImageFile]:
    files: list[_ImageFile] = []
    for split in SPLITS:
        for class_dir in sorted((folder / split).iterdir()):
            if not class_dir.is_dir():
                continue
            for path in class_dir.iterdir():
                kind = _classify([split, class_dir.name, path.name], str(folder))
                if kind is not None and path.is_file():
                    files.append(_ImageFile(split, kind[1], f"{split}/{class_dir.name}/{path.name}", path.read_bytes()))
    return files


def _content_digest(files: Iterable[_ImageFile]) -> str:
    """sha256 of a ``sha256sum``-style manifest ("<sha256>  <split>/<class>/<file>" lines, sorted
    by name): the same for a folder and its tar, whatever the order or metadata of either.

    Shell equivalent, inside the folder:
    ``find train test -type f | LC_ALL=C sort | xargs sha256sum | sha256sum``."""
    lines = [f"{hashlib.sha256(f.data).hexdigest()}  {f.name}\n" for f in sorted(files, key=lambda f: f.name)]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _decode(files: list[_ImageFile], where: str) -> dict[str, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    order = sorted(range(len(files)), key=lambda i: (files[i].split, files[i].label, _natural_key(files[i].name)))
    arrays: dict[str, np.ndarray] = {}
    formats: set[str] = set()
    for split in SPLITS:
        chosen = [files[i] for i in order if files[i].split == split]
        present = {f.label for f in chosen}
        absent = [CLASSES[c] for c in range(len(CLASSES)) if c not in present]
        if absent:
            raise DataNotFoundError(f"{where}: {split}/ has no images of class {', '.join(absent)}")
        x = np.empty((len(chosen), 32, 32, 3), dtype=np.uint8)
        for i, f in enumerate(chosen):
            try:
                with Image.open(io.BytesIO(f.data)) as im:
                    formats.add(im.format or "?")
                    if im.size != (32, 32):
                        raise DataNotFoundError(f"{where}: {f.name} is {im.size[0]}x{im.size[1]}, not 32x32")
                    x[i] = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise DataNotFoundError(f"{where}: cannot decode {f.name} ({exc})") from exc
        arrays[f"{split}_x"] = x.transpose(0, 3, 1, 2)
        arrays[f"{split}_y"] = np.array([f.label for f in chosen], dtype=np.int64)
    arrays["formats"] = np.array(sorted(formats))
    return arrays


def _cache_path(key: str) -> Path:
    return cache_dir() / CACHE_SUBDIR / f"images-{key}.v{CACHE_FORMAT}.npz"


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        for split in SPLITS:
            x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (3, 32, 32) or y.shape != (x.shape[0],):
                return None
        return arrays
    except (OSError, KeyError, ValueError, EOFError):
        return None  # damaged cache: decode again and overwrite it


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    # Uncompressed on purpose: decoded CIFAR pixels deflate by only ~6 % (172.6 vs 184 MB)
    # while compression costs ~5 s to write and ~1 s (vs ~0.2 s) to read.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        pass  # an unwritable cache only costs decoding again next time


def _load_image_folder(found: _Found) -> ImageDataset:
    pillow_version = require("PIL", extra="cifar-images", feature="CIFAR-10 in the image-folder layout").__version__

    files: list[_ImageFile] | None = None
    if found.kind == "image-archive":
        key = found.sha256
        is_jpeg_copy = found.is_jpeg_copy
        verified = found.verified
    else:
        files = _files_from_folder(found.path)
        digest = _content_digest(files)
        is_jpeg_copy = digest == JPEG_CONTENT_DIGEST
        key = JPEG_ARCHIVE.sha256 if is_jpeg_copy else digest
        verified = (
            f"content digest {digest} (the extracted shared JPEG q75 copy)" if is_jpeg_copy else found.verified
        )
    assert key is not None
    cache = _cache_path(key)
    arrays = _read_cache(cache)
    cached = arrays is not None
    if arrays is None:
        if files is None:
            files = _files_from_archive(found.path)
        arrays = _decode(files, str(found.path))
        arrays["decoder"] = np.array(f"Pillow {pillow_version}")
        _write_cache(cache, arrays)
    formats = [str(f) for f in arrays["formats"]]
    if is_jpeg_copy:
        source = SOURCE_JPEG_COPY
    elif formats == ["PNG"]:
        source = "CIFAR-10 (image folder, PNG)"
    else:
        source = f"CIFAR-10 (image folder, {'+'.join(formats)}; JPEG is lossy, not the original pixels)"
    extra = {
        "layout": "folder",
        "path": str(found.path),
        "verified": verified,
        "decoder": str(arrays["decoder"]) if "decoder" in arrays else "unknown",
        "cache": str(cache),
        "from_cache": cached,
    }
    return _dataset(arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"], source, extra)
