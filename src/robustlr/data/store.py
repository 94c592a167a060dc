"""Finding, verifying and (optionally) downloading dataset files.

Every dataset file is identified by its name and the sha256 of its *decompressed* bytes (for
``.gz`` files) or of its bytes (otherwise), so the same check accepts the upstream gzip and a
re-compressed copy. The search order is the same for every dataset:

1. the ``--data-dir`` given on the command line (``data_dir`` argument),
2. the ``ROBUSTLR_DATA_DIR`` environment variable,
3. the user cache, ``~/.cache/robustlr`` (``ROBUSTLR_CACHE_DIR`` overrides it),
4. dataset-specific system folders (e.g. Debian's ``/usr/share/datasets/fashion-mnist``),
5. a download from the dataset's upstream into the cache, when a URL is known and
   ``allow_download`` is true.

In each root directory both ``<root>/<subdir>/<file>`` and ``<root>/<file>`` are tried.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ENV_DATA_DIR = "ROBUSTLR_DATA_DIR"
ENV_CACHE_DIR = "ROBUSTLR_CACHE_DIR"


class DataNotFoundError(FileNotFoundError):
    """A dataset file is missing or fails its checksum everywhere we looked."""


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset: its name, its checksum and where it may be found."""

    name: str
    sha256: str
    subdir: str
    urls: tuple[str, ...] = ()
    system_dirs: tuple[str, ...] = ()
    checksum_of_decompressed: bool = True


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "robustlr")


def search_roots(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The root folders to search, in order, each with a label saying where it came from."""
    roots: list[tuple[str, Path]] = []
    if data_dir is not None:
        roots.append(("--data-dir", Path(data_dir)))
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        roots.append((f"${ENV_DATA_DIR}", Path(env)))
    roots.append(("user cache", cache_dir()))
    return roots


def file_sha256(path: Path, decompress: bool) -> str:
    digest = hashlib.sha256()
    opener = gzip.open if (decompress and path.suffix == ".gz") else open
    with opener(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class _Search:
    tried: list[str] = field(default_factory=list)

    def check(self, label: str, path: Path, spec: DataFile) -> bool:
        if not path.is_file():
            self.tried.append(f"{label}: {path} (missing)")
            return False
        try:
            got = file_sha256(path, spec.checksum_of_decompressed)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            self.tried.append(f"{label}: {path} (unreadable: {exc})")
            return False
        if got != spec.sha256:
            self.tried.append(f"{label}: {path} (corrupt: sha256 {got[:12]}... != expected {spec.sha256[:12]}...)")
            return False
        return True


def _download(url: str, dest: Path, timeout: float) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def locate(
    spec: DataFile,
    data_dir: str | os.PathLike | None = None,
    allow_download: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Return the path of a verified copy of ``spec``, searching in the documented order.

    Raises:
        DataNotFoundError: naming every place searched, why each failed, and how to fix it.
    """
    search = _Search()
    for label, root in search_roots(data_dir):
        for cand in (root / spec.subdir / spec.name, root / spec.name):
            if search.check(label, cand, spec):
                return cand
    for sysdir in spec.system_dirs:
        cand = Path(sysdir) / spec.name
        if search.check("system", cand, spec):
            return cand
    if allow_download and spec.urls:
        dest = cache_dir() / spec.subdir / spec.name
        for url in spec.urls:
            try:
                _download(url, dest, timeout)
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                search.tried.append(f"download: {url} ({exc})")
                continue
            if search.check(f"download from {url}", dest, spec):
                return dest
            dest.unlink(missing_ok=True)
    elif spec.urls:
        search.tried.append("download: disabled")
    places = "\n  ".join(search.tried)
    raise DataNotFoundError(
        f"could not find a valid copy of {spec.subdir}/{spec.name} (sha256 {spec.sha256}).\n"
        f"Searched, in order:\n  {places}\n"
        f"Fix: put the file in a folder and pass --data-dir FOLDER (it may sit in FOLDER/{spec.subdir}/), "
        f"or set {ENV_DATA_DIR}=FOLDER, or place it in {cache_dir() / spec.subdir}"
        + (", or run once with network access to download it." if spec.urls else ".")
    )
