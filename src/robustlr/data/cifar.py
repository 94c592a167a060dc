"""CIFAR-10 (Krizhevsky 2009): 50,000 training and 10,000 test images, 32x32 RGB, 10 classes.

Two layouts are read, both through the search order of :mod:`robustlr.data.store`
(``--data-dir``, ``$ROBUSTLR_DATA_DIR``, the user cache, then a download):

**The python release** (what users normally have), as the folder ``cifar-10-batches-py/``
(``data_batch_1`` .. ``data_batch_5``, ``test_batch``, ``batches.meta``) or as the official
``cifar-10-python.tar.gz``, whose members are read straight from the archive without
extracting it. In every root these places are tried, in order::

    <root>/cifar-10-batches-py/          <root>/cifar10/cifar-10-batches-py/
    <root>/cifar10/cifar-10-python.tar.gz   <root>/cifar-10-python.tar.gz

Verification: the archive must have the sha256 of the official release
(``6d958be0...``, 170,498,071 bytes, md5 ``c58f3010...``); each extracted file must have
the md5 of its official copy (the per-file md5s torchvision has checked since 2017; no
per-file sha256 is published). Each batch is a Python-2 pickle of a dict with bytes keys:
``b'data'``, a (10000, 3072) uint8 array whose rows are the red, green and blue 32x32
planes one after the other, each row-major, so ``data.reshape(-1, 3, 32, 32)`` is already
(N, C, H, W); and ``b'labels'``, 10,000 ints. The pickles are read with an unpickler that
only admits numpy arrays, so a tampered file cannot run code. With downloads allowed and
no local copy, the archive is fetched from the authors' site into
``<cache>/cifar10/cifar-10-python.tar.gz``.

**An image folder**: ``train/<class>/*`` and ``test/<class>/*`` (PNG or JPEG; class folders
named as in :data:`CLASSES`), as a folder or a ``.tar.gz``. In every root these are tried::

    <root>/cifar10-jpeg/cifar10-jpeg.tar.gz     <root>/cifar10-jpeg.tar.gz
    <root>/cifar10-images/cifar10-images.tar.gz <root>/cifar10-images.tar.gz
    <root>/cifar10-jpeg/{train,test}/  <root>/cifar10-images/{train,test}/  <root>/{train,test}/

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
beside any number computed from it, since its pixels are not the original ones.

With ``layout="auto"`` the python release is preferred wherever it is found (it has the
original pixels); only when no valid copy exists in any root is the image folder used,
and only when neither exists is the download tried.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from robustlr.data import store
from robustlr.data.base import ImageDataset
from robustlr.data.store import DataNotFoundError, cache_dir, search_roots

__all__ = [
    "CLASSES",
    "MEAN",
    "STD",
    "SOURCE_JPEG_COPY",
    "SOURCE_PYTHON_RELEASE",
    "load_cifar10",
]

CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
INK = 255

SOURCE_PYTHON_RELEASE = "CIFAR-10 (python release)"
SOURCE_JPEG_COPY = "CIFAR-10 (JPEG q75 copy)"

LAYOUTS = ("auto", "python", "folder")

# --- the python release --------------------------------------------------------------
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

# --- image folders ----------------------------------------------------------------------
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


# ======================================================================================
# public entry point
# ======================================================================================


def load_cifar10(
    data_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
    layout: str = "auto",
) -> ImageDataset:
    """Load CIFAR-10 as uint8 (N, 3, 32, 32) tensors with the standard label order.

    Args:
        data_dir: a root folder searched first (the ``--data-dir`` option).
        allow_download: fetch the python release from the authors' site into the user
            cache when no local copy is found (python layout only).
        layout: ``"auto"`` (python release if found anywhere, else an image folder, else
            download), ``"python"`` or ``"folder"`` to force one.

    Returns:
        An :class:`ImageDataset` named ``"cifar10"`` with the classes in the standard order
        (0 airplane .. 9 truck), mean/std of the paper's code, ink 255, and ``source``
        saying which copy was read (``"CIFAR-10 (JPEG q75 copy)"`` for the shared JPEG
        archive). ``extra`` holds ``layout``, ``path`` and ``verified`` (how the copy was
        checked), and ``decoder`` for image folders.

    Raises:
        ValueError: unknown ``layout``.
        DataNotFoundError: no valid copy anywhere; the message lists every place searched,
            why each was rejected, and how to fix it. Also raised for a copy that is found
            but cannot be read as CIFAR-10 (the message names it and the problem).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    tried: list[str] = []
    if layout in ("auto", "python"):
        found = _find_python_release(data_dir, tried)
        if found is not None:
            return _load_python_release(found)
    if layout in ("auto", "folder"):
        found_images = _find_image_folder(data_dir, tried)
        if found_images is not None:
            return _load_image_folder(found_images)
    if layout in ("auto", "python"):
        downloaded = _download_python_archive(data_dir, allow_download, tried)
        if downloaded is not None:
            return _load_python_release(downloaded)
    raise DataNotFoundError(_not_found_message(layout, tried))


# ======================================================================================
# searching
# ======================================================================================


@dataclass(frozen=True)
class _Found:
    path: Path
    kind: str  # "python-folder" | "python-archive" | "image-archive" | "image-folder"
    verified: str  # how it was checked, for ImageDataset.extra["verified"]
    sha256: str | None = None  # of an archive, when computed
    is_jpeg_copy: bool = False


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_python_folder(label: str, folder: Path, tried: list[str]) -> _Found | None:
    if not folder.is_dir():
        tried.append(f"{label}: {folder}/ (missing)")
        return None
    missing = [name for name in PYTHON_FILE_MD5 if not (folder / name).is_file()]
    if missing:
        tried.append(f"{label}: {folder}/ (incomplete: no {', '.join(missing)})")
        return None
    for name, expected in PYTHON_FILE_MD5.items():
        try:
            got = _md5(folder / name)
        except OSError as exc:
            tried.append(f"{label}: {folder}/ (unreadable {name}: {exc})")
            return None
        if got != expected:
            tried.append(f"{label}: {folder}/ (corrupt: {name} md5 {got[:12]}... != official {expected[:12]}...)")
            return None
    return _Found(folder, "python-folder", "md5 of every file matches the official release")


def _check_archive(label: str, path: Path, spec: store.DataFile | None, tried: list[str]) -> str | None:
    """sha256 of an archive that exists (and matches ``spec`` when given), else None."""
    if not path.is_file():
        tried.append(f"{label}: {path} (missing)")
        return None
    try:
        got = store.file_sha256(path, decompress=False)
    except OSError as exc:
        tried.append(f"{label}: {path} (unreadable: {exc})")
        return None
    if spec is not None and got != spec.sha256:
        tried.append(f"{label}: {path} (corrupt: sha256 {got[:12]}... != expected {spec.sha256[:12]}...)")
        return None
    return got


def _find_python_release(data_dir, tried: list[str]) -> _Found | None:
    spec = PYTHON_ARCHIVE
    for label, root in search_roots(data_dir):
        for folder in (root / PYTHON_FOLDER, root / spec.subdir / PYTHON_FOLDER):
            found = _check_python_folder(label, folder, tried)
            if found is not None:
                return found
        for archive in (root / spec.subdir / spec.name, root / spec.name):
            if _check_archive(label, archive, spec, tried) is not None:
                return _Found(archive, "python-archive", f"sha256 {spec.sha256} (official archive)", spec.sha256)
    return None


def _is_image_folder(folder: Path) -> bool:
    return all((folder / split).is_dir() for split in SPLITS) and (folder / "train" / CLASSES[0]).is_dir()


def _find_image_folder(data_dir, tried: list[str]) -> _Found | None:
    for label, root in search_roots(data_dir):
        for archive in (root / JPEG_ARCHIVE.subdir / JPEG_ARCHIVE.name, root / JPEG_ARCHIVE.name):
            sha = _check_archive(label, archive, JPEG_ARCHIVE, tried)
            if sha is not None:
                return _Found(archive, "image-archive", f"sha256 {sha} (the shared JPEG q75 copy)", sha, True)
        generic = f"{IMAGES_SUBDIR}.tar.gz"
        for archive in (root / IMAGES_SUBDIR / generic, root / generic):
            sha = _check_archive(label, archive, None, tried)
            if sha is not None:
                return _Found(archive, "image-archive", "structure only (both splits, ten classes, 32x32 images)", sha)
        for folder in (root / JPEG_ARCHIVE.subdir, root / IMAGES_SUBDIR, root):
            if _is_image_folder(folder):
                return _Found(folder, "image-folder", "structure only (both splits, ten classes, 32x32 images)")
            tried.append(f"{label}: {folder}/ (no train/{CLASSES[0]}/ and test/ folders)")
    return None


def _download_python_archive(data_dir, allow_download: bool, tried: list[str]) -> _Found | None:
    spec = PYTHON_ARCHIVE
    if not allow_download:
        tried.append(f"download: disabled (allow_download=False; upstream {spec.urls[0]})")
        return None
    # locate() looks at the local places again (all already rejected above, so cheaply) and
    # then downloads into the cache, keeping the file only if its sha256 is the official one.
    try:
        path = store.locate(spec, data_dir=data_dir, allow_download=True)
    except DataNotFoundError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip().startswith("download")]
        tried.extend(lines or [f"download: {spec.urls[0]} (failed)"])
        return None
    return _Found(path, "python-archive", f"sha256 {spec.sha256} (official archive, downloaded)", spec.sha256)


def _not_found_message(layout: str, tried: list[str]) -> str:
    places = "\n  ".join(tried)
    spec = PYTHON_ARCHIVE
    return (
        f"could not find a valid copy of CIFAR-10 (layout={layout!r}).\n"
        f"Searched, in order:\n  {places}\n"
        "Fix: get the python release, cifar-10-python.tar.gz (sha256 "
        f"{spec.sha256}) from https://www.cs.toronto.edu/~kriz/cifar.html, and put it, or the "
        f"{PYTHON_FOLDER}/ folder extracted from it, in a folder FOLDER passed as --data-dir FOLDER, "
        f"or set {store.ENV_DATA_DIR}=FOLDER, or place it in {cache_dir() / spec.subdir}; "
        "or run once with network access and downloads allowed. "
        f"For the image-folder layout put {JPEG_ARCHIVE.subdir}/{JPEG_ARCHIVE.name} "
        f"(or a {IMAGES_SUBDIR}/ folder or {IMAGES_SUBDIR}.tar.gz holding train/<class>/ and "
        "test/<class>/ images) in FOLDER instead."
    )


# ======================================================================================
# the python release
# ======================================================================================


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


def _dataset(train_x, train_y, test_x, test_y, source: str, extra: dict) -> ImageDataset:
    return ImageDataset(
        name="cifar10",
        train_x=torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.uint8)),
        train_y=torch.from_numpy(np.ascontiguousarray(train_y, dtype=np.int64)),
        test_x=torch.from_numpy(np.ascontiguousarray(test_x, dtype=np.uint8)),
        test_y=torch.from_numpy(np.ascontiguousarray(test_y, dtype=np.int64)),
        classes=CLASSES,
        mean=MEAN,
        std=STD,
        ink=INK,
        source=source,
        extra=extra,
    )


# ======================================================================================
# image folders
# ======================================================================================


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
    from PIL import __version__ as pillow_version

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
