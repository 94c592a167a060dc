"""Finding a copy of CIFAR-10: the places tried in every root of the search order of
:mod:`robustlr.data.store` (``--data-dir``, ``$ROBUSTLR_DATA_DIR``, the user cache), the checks
that accept or reject each, the download of the python release, and the message that lists
every place searched when no valid copy is found.

The python release, as the folder ``cifar-10-batches-py/`` or the official
``cifar-10-python.tar.gz``. In every root these places are tried, in order::

    <root>/cifar-10-batches-py/          <root>/cifar10/cifar-10-batches-py/
    <root>/cifar10/cifar-10-python.tar.gz   <root>/cifar-10-python.tar.gz

Verification: the archive must have the sha256 of the official release
(``6d958be0...``, 170,498,071 bytes, md5 ``c58f3010...``); each extracted file must have
the md5 of its official copy (the per-file md5s torchvision has checked since 2017; no
per-file sha256 is published). With downloads allowed and no local copy, the archive is
fetched from the authors' site into ``<cache>/cifar10/cifar-10-python.tar.gz``.

The shared original-pixel copy ``cifar10.npz`` (59,903 of 60,000 images exact), tried in
every root as ``<root>/cifar10/cifar10.npz`` and ``<root>/cifar10.npz`` and accepted only with
its published sha256 (``87a96a92...``).

An image folder, ``train/<class>/*`` and ``test/<class>/*``, as a folder or a ``.tar.gz``. In
every root these are tried::

    <root>/cifar10-jpeg/cifar10-jpeg.tar.gz     <root>/cifar10-jpeg.tar.gz
    <root>/cifar10-images/cifar10-images.tar.gz <root>/cifar10-images.tar.gz
    <root>/cifar10-jpeg/{train,test}/  <root>/cifar10-images/{train,test}/  <root>/{train,test}/

The file names and checksums of each layout live with its reader
(:mod:`~robustlr.data.cifar.python_release`, :mod:`~robustlr.data.cifar.image_folder`) and are
read from there at call time, so patching them there is seen here too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from robustlr.data import store
from robustlr.data.cifar import image_folder, npz, python_release
from robustlr.data.cifar.common import CLASSES, _Found
from robustlr.data.store import DataNotFoundError, cache_dir, search_roots


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
    missing = [name for name in python_release.PYTHON_FILE_MD5 if not (folder / name).is_file()]
    if missing:
        tried.append(f"{label}: {folder}/ (incomplete: no {', '.join(missing)})")
        return None
    for name, expected in python_release.PYTHON_FILE_MD5.items():
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
    spec = python_release.PYTHON_ARCHIVE
    for label, root in search_roots(data_dir):
        for folder in (root / python_release.PYTHON_FOLDER, root / spec.subdir / python_release.PYTHON_FOLDER):
            found = _check_python_folder(label, folder, tried)
            if found is not None:
                return found
        for archive in (root / spec.subdir / spec.name, root / spec.name):
            if _check_archive(label, archive, spec, tried) is not None:
                return _Found(archive, "python-archive", f"sha256 {spec.sha256} (official archive)", spec.sha256)
    return None


def _find_npz(data_dir, tried: list[str]) -> _Found | None:
    spec = npz.NPZ_FILE
    for label, root in search_roots(data_dir):
        for path in (root / spec.subdir / spec.name, root / spec.name):
            if _check_archive(label, path, spec, tried) is not None:
                return _Found(path, "npz", f"sha256 {spec.sha256} (the shared original-pixel copy)", spec.sha256)
    return None


def _is_image_folder(folder: Path) -> bool:
    return all((folder / split).is_dir() for split in image_folder.SPLITS) and (folder / "train" / CLASSES[0]).is_dir()


def _find_image_folder(data_dir, tried: list[str]) -> _Found | None:
    jpeg = image_folder.JPEG_ARCHIVE
    for label, root in search_roots(data_dir):
        for archive in (root / jpeg.subdir / jpeg.name, root / jpeg.name):
            sha = _check_archive(label, archive, jpeg, tried)
            if sha is not None:
                return _Found(archive, "image-archive", f"sha256 {sha} (the shared JPEG q75 copy)", sha, True)
        generic = f"{image_folder.IMAGES_SUBDIR}.tar.gz"
        for archive in (root / image_folder.IMAGES_SUBDIR / generic, root / generic):
            sha = _check_archive(label, archive, None, tried)
            if sha is not None:
                return _Found(archive, "image-archive", "structure only (both splits, ten classes, 32x32 images)", sha)
        for folder in (root / jpeg.subdir, root / image_folder.IMAGES_SUBDIR, root):
            if _is_image_folder(folder):
                return _Found(folder, "image-folder", "structure only (both splits, ten classes, 32x32 images)")
            tried.append(f"{label}: {folder}/ (no train/{CLASSES[0]}/ and test/ folders)")
    return None


def _download_python_archive(data_dir, allow_download: bool, tried: list[str]) -> _Found | None:
    spec = python_release.PYTHON_ARCHIVE
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
    spec = python_release.PYTHON_ARCHIVE
    return (
        f"could not find a valid copy of CIFAR-10 (layout={layout!r}).\n"
        f"Searched, in order:\n  {places}\n"
        "Fix: get the python release, cifar-10-python.tar.gz (sha256 "
        f"{spec.sha256}) from https://www.cs.toronto.edu/~kriz/cifar.html, and put it, or the "
        f"{python_release.PYTHON_FOLDER}/ folder extracted from it, in a folder FOLDER passed as --data-dir FOLDER, "
        f"or set {store.ENV_DATA_DIR}=FOLDER, or place it in {cache_dir() / spec.subdir}; "
        "or run once with network access and downloads allowed. "
        f"Or put the original-pixel copy {npz.NPZ_FILE.name} (sha256 {npz.NPZ_FILE.sha256[:12]}...) in "
        f"FOLDER/{npz.NPZ_FILE.subdir}/. "
        f"For the image-folder layout put {image_folder.JPEG_ARCHIVE.subdir}/{image_folder.JPEG_ARCHIVE.name} "
        f"(or a {image_folder.IMAGES_SUBDIR}/ folder or {image_folder.IMAGES_SUBDIR}.tar.gz holding train/<class>/ and "
        "test/<class>/ images) in FOLDER instead."
    )
