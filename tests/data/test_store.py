"""The data-file locator: search order, checksums, and downloads from a local HTTP server.

Every download here goes to a server on 127.0.0.1 started by the test; nothing leaves the machine.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import os
import socket
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from robustlr.data import DataFile, DataNotFoundError, locate
from robustlr.data import fashion_mnist as fm
from robustlr.data.store import ENV_CACHE_DIR, ENV_DATA_DIR

LABELS = "train-labels-idx1-ubyte.gz"


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        super().do_GET()


@contextmanager
def serve(directory: Path):
    """Serve ``directory`` over HTTP on 127.0.0.1 (a free port) for the duration of the block."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(directory)))
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", server.requests  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty cache, no data dir, and no proxy between us and 127.0.0.1."""
    monkeypatch.delenv(ENV_DATA_DIR, raising=False)
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "cache"))
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return tmp_path


@pytest.fixture(scope="module")
def shared_dir() -> Path:
    """The folder holding the real Fashion-MNIST files (skips if there is none)."""
    try:
        return locate(fm.DATASET_FILES["train_labels"], allow_download=False).parent
    except DataNotFoundError:
        if os.environ.get(ENV_DATA_DIR):
            raise
        pytest.skip(f"Fashion-MNIST not available: {ENV_DATA_DIR} is unset and the files are not in the cache or system folders")


def _local_spec(role: str, base_url: str, *extra_urls: str) -> DataFile:
    spec = fm.DATASET_FILES[role]
    return dataclasses.replace(spec, urls=(*extra_urls, base_url + spec.name), system_dirs=())


def _no_partial_files(folder: Path) -> bool:
    return not folder.exists() or not any(p.name.startswith(".partial-") for p in folder.iterdir())


def test_search_order_data_dir_before_env_before_cache(tmp_path, monkeypatch):
    payload = b"hello"
    spec = DataFile("f.bin", hashlib.sha256(payload).hexdigest(), "ds", checksum_of_decompressed=False)
    dirs = {k: tmp_path / k for k in ("arg", "env", "cache")}
    for d in dirs.values():
        (d / "ds").mkdir(parents=True)
        (d / "ds" / "f.bin").write_bytes(payload)
    monkeypatch.setenv(ENV_DATA_DIR, str(dirs["env"]))
    monkeypatch.setenv(ENV_CACHE_DIR, str(dirs["cache"]))
    assert locate(spec, data_dir=dirs["arg"]) == dirs["arg"] / "ds" / "f.bin"
    assert locate(spec) == dirs["env"] / "ds" / "f.bin"
    monkeypatch.delenv(ENV_DATA_DIR)
    assert locate(spec) == dirs["cache"] / "ds" / "f.bin"
    # a corrupt copy earlier in the order is skipped, not fatal


def test_a_corrupt_copy_skipped_for_another_is_named_with_the_reason(tmp_path, monkeypatch, caplog):
    payload = b"hello"
    spec = DataFile("f.bin", hashlib.sha256(payload).hexdigest(), "ds", checksum_of_decompressed=False)
    for d, content in (("arg", b"hellO"), ("cache", payload)):
        (tmp_path / d / "ds").mkdir(parents=True)
        (tmp_path / d / "ds" / "f.bin").write_bytes(content)
    monkeypatch.delenv(ENV_DATA_DIR, raising=False)
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "cache"))
    with caplog.at_level("WARNING", logger="robustlr"):
        assert locate(spec, data_dir=tmp_path / "arg") == tmp_path / "cache" / "ds" / "f.bin"
    msg = " ".join(caplog.messages)
    assert f"using {tmp_path / 'cache' / 'ds' / 'f.bin'}" in msg
    assert f"skipped {tmp_path / 'arg' / 'ds' / 'f.bin'} (corrupt: sha256" in msg
    caplog.clear()
    with caplog.at_level("WARNING", logger="robustlr"):  # a clean first hit says nothing
        locate(spec, data_dir=tmp_path / "cache")
    assert caplog.messages == []


def test_damaged_deflate_stream_is_reported_not_raised(env):
    # an invalid deflate block raises zlib.error (not an OSError) when decompressed
    folder = env / "data"
    folder.mkdir()
    (folder / "x.gz").write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\xff" * 4 + bytes(8))
    spec = DataFile("x.gz", "0" * 64, "ds")
    with pytest.raises(DataNotFoundError, match=r"x.gz \(unreadable: .*invalid block type"):
        locate(spec, data_dir=folder, allow_download=False)


def test_download_into_empty_cache(env, shared_dir):
    with serve(shared_dir) as (base, requests):
        spec = _local_spec("train_labels", base)
        got = locate(spec)
    dest = env / "cache" / "fashion-mnist" / LABELS
    assert got == dest
    assert requests == ["/" + LABELS]
    assert dest.read_bytes() == (shared_dir / LABELS).read_bytes()
    assert _no_partial_files(dest.parent)
    # now it is found in the cache, with the server gone
    assert locate(spec, allow_download=False) == dest


def test_download_falls_back_to_the_next_url(env, shared_dir):
    with serve(shared_dir) as (base, requests):
        spec = _local_spec("train_labels", base, base + "missing/" + LABELS)
        got = locate(spec)
    assert got == env / "cache" / "fashion-mnist" / LABELS
    assert requests == ["/missing/" + LABELS, "/" + LABELS]


def test_corrupt_download_is_an_error_and_not_kept(env, shared_dir):
    served = env / "served"
    served.mkdir()
    data = bytearray(gzip.decompress((shared_dir / LABELS).read_bytes()))
    data[1000] ^= 0x01
    (served / LABELS).write_bytes(gzip.compress(bytes(data)))
    with serve(served) as (base, requests):
        spec = _local_spec("train_labels", base)
        with pytest.raises(DataNotFoundError) as info:
            locate(spec)
    assert requests == ["/" + LABELS]
    msg = str(info.value)
    assert f"download: {base}{LABELS} (corrupt: sha256" in msg and "discarded" in msg
    assert f"user cache: {env / 'cache' / 'fashion-mnist' / LABELS} (missing)" in msg
    cache = env / "cache" / "fashion-mnist"
    assert not (cache / LABELS).exists()
    assert _no_partial_files(cache)


def test_unreachable_and_malformed_urls_are_reported(env):
    with socket.socket() as s:  # a port on 127.0.0.1 that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = f"http://127.0.0.1:{port}/{LABELS}"
    spec = dataclasses.replace(fm.DATASET_FILES["train_labels"], urls=("not a url", dead), system_dirs=())
    with pytest.raises(DataNotFoundError) as info:
        locate(spec, timeout=5)
    msg = str(info.value)
    assert "download: not a url (" in msg
    assert f"download: {dead} (" in msg
    assert "network access" in msg
    assert _no_partial_files(env / "cache" / "fashion-mnist")


def test_download_disabled(env):
    spec = dataclasses.replace(fm.DATASET_FILES["train_labels"], urls=("http://127.0.0.1:9/x",), system_dirs=())
    with pytest.raises(DataNotFoundError, match="download: disabled") as info:
        locate(spec, allow_download=False)
    assert "allow downloads" in str(info.value)


def test_load_fashion_mnist_by_download(env, shared_dir, monkeypatch):
    with serve(shared_dir) as (base, requests):
        for role in fm.DATASET_FILES:
            monkeypatch.setitem(fm.DATASET_FILES, role, _local_spec(role, base))
        ds = fm.load_fashion_mnist()
    assert sorted(requests) == sorted("/" + s.name for s in fm.DATASET_FILES.values())
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(ds.test_y), torch.full((10,), 1000))
    cached = sorted(p.name for p in (env / "cache" / "fashion-mnist").iterdir())
    assert cached == sorted(s.name for s in fm.DATASET_FILES.values())
