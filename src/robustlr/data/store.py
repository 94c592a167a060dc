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
import http.client
import logging
import os
import shutil
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from robustlr.errors import DataNotFoundError

log = logging.getLogger("robustlr")

ENV_DATA_DIR = "ROBUSTLR_DATA_DIR"
ENV_CACHE_DIR = "ROBUSTLR_CACHE_DIR"


@dataclass(frozen=True)
class DataFile:
    """One file of a dataset: its name, its checksum and where it may be found.

    ``hint`` is one more way to fix a missing file, added to the error message (e.g. the
    system package that installs it).
    """

    name: str
    sha256: str
    subdir: str
    urls: tuple[str, ...] = ()
    system_dirs: tuple[str, ...] = ()
    checksum_of_decompressed: bool = True
    hint: str = ""


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


def _problem(path: Path, spec: DataFile) -> str | None:
    """Why ``path`` is not a valid copy of ``spec`` (``None`` if it is)."""
    if not path.is_file():
        return "missing"
    try:
        got = file_sha256(path, spec.checksum_of_decompressed)
    # A damaged deflate stream raises zlib.error, which is not an OSError.
    except (OSError, EOFError, zlib.error) as exc:
        return f"unreadable: {exc}"
    if got != spec.sha256:
        return f"corrupt: sha256 {got[:12]}... != expected {spec.sha256[:12]}..."
    return None


@dataclass
class _Search:
    tried: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # copies that exist but failed their check

    def check(self, label: str, path: Path, spec: DataFile) -> bool:
        problem = _problem(path, spec)
        if problem is not None:
            self.tried.append(f"{label}: {path} ({problem})")
            if path.exists():
                self.skipped.append(f"{path} ({problem})")
        elif self.skipped:
            # say which copy is used and why the earlier ones were not
            log.warning("using %s; skipped %s", path, "; ".join(self.skipped))
        return problem is None


def _download(url: str, dest: Path, timeout: float, search: _Search, spec: DataFile) -> bool:
    """Download ``url`` and move it to ``dest`` only once it has passed the checksum.

    The partial file keeps ``dest``'s name as its suffix (so a ``.gz`` is still checked on its
    decompressed bytes) and is removed whatever happens, so a bad download never reaches the cache.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix="-" + dest.name, dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        problem = _problem(Path(tmp), spec)
        if problem is not None:
            search.tried.append(f"download: {url} ({problem}; discarded)")
            return False
        os.replace(tmp, dest)
        return True
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
                if _download(url, dest, timeout, search, spec):
                    return dest
            # URLError and timeouts are OSErrors; a truncated body raises http.client.IncompleteRead
            # (an HTTPException) and a malformed URL a ValueError.
            except (OSError, http.client.HTTPException, ValueError) as exc:
                search.tried.append(f"download: {url} ({exc})")
    elif spec.urls:
        search.tried.append("download: disabled")
    places = "\n  ".join(search.tried)
    fixes = [
        f"put the file in a folder and pass --data-dir FOLDER (it may sit in FOLDER/{spec.subdir}/)",
        f"or set {ENV_DATA_DIR}=FOLDER",
        f"or place it in {cache_dir() / spec.subdir}",
    ]
    if spec.hint:
        fixes.append(f"or {spec.hint}")
    if spec.urls:
        fixes.append("or run once with network access to download it" if allow_download
                     else f"or allow downloads (from {spec.urls[0]})")
    raise DataNotFoundError(
        f"could not find a valid copy of {spec.subdir}/{spec.name} (sha256 {spec.sha256}).\n"
        f"Searched, in order:\n  {places}\n"
        f"Fix: " + ", ".join(fixes) + "."
    )
