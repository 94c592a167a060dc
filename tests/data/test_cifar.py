"""CIFAR-10 loaders: exact pixels and labels on files written here in the real formats, and
counts on the shared JPEG copy (from ``$ROBUSTLR_DATA_DIR``; skipped when it is unset)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustlr.data import cifar
from robustlr.data.cifar import image_folder, python_release
from robustlr.data.store import ENV_CACHE_DIR, ENV_DATA_DIR, DataNotFoundError

# --------------------------------------------------------------------------------------
# writing the python release's format
# --------------------------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler, so its dispatch can be changed
    """Writes pickles as Python 2 did for the CIFAR-10 release: every str (keys included) and
    every bytes object as a Python-2 ``str`` (BINSTRING), numpy under ``numpy.core``. Read
    with ``encoding="bytes"`` they come back with bytes keys, exactly like the real files."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        raw = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str

    def save_global(self, obj, name=None):
        module = pickle.whichmodule(obj, name or obj.__qualname__).replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def make_images(n: int, seed: int) -> np.ndarray:
    """(n, 3072) uint8 rows as in the release: red plane, green plane, blue plane, row-major."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No shared data, and a private cache, so only what a test writes can be found."""
    monkeypatch.delenv(ENV_DATA_DIR, raising=False)
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "cache"))
    return tmp_path


def write_python_release(folder: Path) -> dict:
    """A small release (2 images per training batch, 3 test images) in the real file format."""
    folder.mkdir(parents=True)
    batches = {f"data_batch_{i}": (make_images(2, i), [i % 10, (i + 3) % 10]) for i in range(1, 6)}
    batches["test_batch"] = (make_images(3, 99), [9, 0, 5])
    # image 0 of data_batch_1: red 10, green 20, blue 30, and red 200 at row 1, column 2
    first = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)]).astype(np.uint8)
    first[1 * 32 + 2] = 200
    batches["data_batch_1"][0][0] = first
    for name, (data, labels) in batches.items():
        entry = {
            "batch_label": f"{name} of 5",
            "labels": labels,
            "data": data,
            "filenames": [f"img_{k}.png" for k in range(len(labels))],
        }
        (folder / name).write_bytes(py2_pickle(entry))
    meta = {"num_cases_per_batch": 10000, "label_names": list(cifar.CLASSES), "num_vis": 3072}
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    return batches


def accept_files_in(monkeypatch, folder: Path) -> None:
    """Make the loader's md5 table describe the files written here instead of the official ones."""
    table = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in cifar.PYTHON_FILE_MD5}
    monkeypatch.setattr(python_release, "PYTHON_FILE_MD5", table)


def assert_matches_release(ds, batches: dict) -> None:
    train = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert ds.train_x.dtype == torch.uint8 and ds.train_x.shape == (10, 3, 32, 32)
    assert ds.test_x.shape == (3, 3, 32, 32)
    assert np.array_equal(ds.train_x.reshape(10, -1).numpy(), train)
    assert np.array_equal(ds.test_x.reshape(3, -1).numpy(), batches["test_batch"][0])
    assert ds.train_y.tolist() == train_labels
    assert ds.test_y.tolist() == [9, 0, 5]
    # channel order and row-major planes
    assert ds.train_x[0, :, 0, 0].tolist() == [10, 20, 30]
    assert ds.train_x[0, :, 1, 2].tolist() == [200, 20, 30]
    assert ds.classes == cifar.CLASSES and ds.classes[5] == "dog" and ds.classes[7] == "horse"
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2023, 0.1994, 0.2010) and ds.ink == 255
    assert ds.source == cifar.SOURCE_PYTHON_RELEASE and ds.extra["layout"] == "python"


# --------------------------------------------------------------------------------------
# python release
# --------------------------------------------------------------------------------------


def test_writer_matches_real_release_format(tmp_path):
    raw = py2_pickle({"data": np.zeros((1, 3072), np.uint8), "labels": [3]})
    entry = pickle.loads(raw, encoding="bytes")
    assert set(entry) == {b"data", b"labels"}
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw


def test_python_folder_exact(isolated, monkeypatch):
    folder = isolated / "data" / "cifar-10-batches-py"
    batches = write_python_release(folder)
    accept_files_in(monkeypatch, folder)
    ds = cifar.load_cifar10(isolated / "data", allow_download=False)
    assert_matches_release(ds, batches)
    assert ds.extra["path"] == str(folder)


def test_python_archive_read_without_extracting(isolated, monkeypatch):
    staging = isolated / "staging" / "cifar-10-batches-py"
    batches = write_python_release(staging)
    root = isolated / "data"
    (root / "cifar10").mkdir(parents=True)
    archive = root / "cifar10" / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging, arcname="cifar-10-batches-py")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(python_release, "PYTHON_ARCHIVE", dataclasses.replace(cifar.PYTHON_ARCHIVE, sha256=sha))
    ds = cifar.load_cifar10(root, allow_download=False, layout="python")
    assert_matches_release(ds, batches)
    assert ds.extra["path"] == str(archive)
    assert sorted(p.name for p in root.rglob("*")) == ["cifar-10-python.tar.gz", "cifar10"]  # nothing extracted


def test_download_into_cache_when_nothing_local(isolated, monkeypatch):
    staging = isolated / "upstream"
    batches = write_python_release(staging / "cifar-10-batches-py")
    archive = staging / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    spec = dataclasses.replace(cifar.PYTHON_ARCHIVE, sha256=sha, urls=(archive.as_uri(),))
    monkeypatch.setattr(python_release, "PYTHON_ARCHIVE", spec)
    ds = cifar.load_cifar10(isolated / "empty")
    assert_matches_release(ds, batches)
    assert ds.extra["path"] == str(isolated / "cache" / "cifar10" / "cifar-10-python.tar.gz")
    assert cifar.load_cifar10(isolated / "empty", allow_download=False).extra["path"] == ds.extra["path"]


def test_failed_download_is_reported(isolated, monkeypatch):
    url = (isolated / "nowhere" / "cifar-10-python.tar.gz").as_uri()
    monkeypatch.setattr(python_release, "PYTHON_ARCHIVE", dataclasses.replace(cifar.PYTHON_ARCHIVE, urls=(url,)))
    with pytest.raises(DataNotFoundError) as err:
        cifar.load_cifar10(isolated / "empty", layout="python")
    assert f"download: {url} (" in str(err.value)
    assert not (isolated / "cache" / "cifar10" / "cifar-10-python.tar.gz").exists()


def test_python_release_with_wrong_checksums_is_rejected(isolated):
    root = isolated / "data"
    write_python_release(root / "cifar-10-batches-py")  # our md5s are not the official ones
    with pytest.raises(DataNotFoundError) as err:
        cifar.load_cifar10(root, allow_download=False, layout="python")
    msg = str(err.value)
    assert f"{root / 'cifar-10-batches-py'}/ (corrupt: data_batch_1 md5" in msg
    assert "download: disabled" in msg


def test_pickle_that_would_run_code_is_refused(isolated, monkeypatch):
    folder = isolated / "data" / "cifar-10-batches-py"
    write_python_release(folder)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2))
    accept_files_in(monkeypatch, folder)
    with pytest.raises(DataNotFoundError, match="refusing to load"):
        cifar.load_cifar10(isolated / "data", allow_download=False)


def test_nothing_found_lists_every_place(isolated, monkeypatch):
    cli_dir, env_dir = isolated / "cli", isolated / "env"
    cli_dir.mkdir()
    env_dir.mkdir()
    monkeypatch.setenv(ENV_DATA_DIR, str(env_dir))
    with pytest.raises(DataNotFoundError) as err:
        cifar.load_cifar10(cli_dir, allow_download=False)
    msg = str(err.value)
    cache = isolated / "cache"
    for label, root in (("--data-dir", cli_dir), (f"${ENV_DATA_DIR}", env_dir), ("user cache", cache)):
        assert f"{label}: {root / 'cifar-10-batches-py'}/ (missing)" in msg
        assert f"{label}: {root / 'cifar10' / 'cifar-10-python.tar.gz'} (missing)" in msg
        assert f"{label}: {root / 'cifar10-jpeg' / 'cifar10-jpeg.tar.gz'} (missing)" in msg
        assert f"{label}: {root / 'cifar10-images'}/ (no train/airplane/" in msg
    assert "download: disabled" in msg
    assert "https://www.cs.toronto.edu/~kriz/" in msg and "--data-dir" in msg


def test_unknown_layout():
    with pytest.raises(ValueError, match="layout"):
        cifar.load_cifar10(layout="png")


# --------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------


def write_image_folder(top: Path) -> dict[str, list[np.ndarray]]:
    """train/<class>/{2,10}.png and test/<class>/0.png; class 3's "2.png" is grayscale.

    Returns, per split, the expected (3, 32, 32) arrays in loading order."""
    rng = np.random.default_rng(7)
    expected: dict[str, list[np.ndarray]] = {"train": [], "test": []}
    for split, names in (("train", ("10.png", "2.png")), ("test", ("0.png",))):
        for label, name in enumerate(cifar.CLASSES):
            d = top / split / name
            d.mkdir(parents=True)
            images = {}
            for fname in names:
                if split == "train" and label == 3 and fname == "2.png":
                    gray = rng.integers(0, 256, size=(32, 32), dtype=np.uint8)
                    Image.fromarray(gray, mode="L").save(d / fname)
                    images[fname] = np.stack([gray] * 3)
                else:
                    hwc = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                    hwc[0, 0] = (label, 100 + label, 200 + label)
                    Image.fromarray(hwc, mode="RGB").save(d / fname)
                    images[fname] = hwc.transpose(2, 0, 1)
            (d / ".DS_Store").write_bytes(b"junk")  # ignored
            # natural order: 2.png before 10.png
            expected[split] += [images[f] for f in sorted(names, key=lambda f: int(f.split(".")[0]))]
    return expected


def assert_matches_folder(ds, expected) -> None:
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (10, 3, 32, 32)
    assert np.array_equal(ds.train_x.numpy(), np.stack(expected["train"]))
    assert np.array_equal(ds.test_x.numpy(), np.stack(expected["test"]))
    assert ds.train_y.tolist() == [c for c in range(10) for _ in range(2)]
    assert ds.test_y.tolist() == list(range(10))
    assert ds.test_x[7, :, 0, 0].tolist() == [7, 107, 207]  # horse, RGB order
    assert ds.source == "CIFAR-10 (image folder, PNG)" and ds.extra["layout"] == "folder"
    assert ds.classes == cifar.CLASSES


def test_png_folder_exact_and_cached(isolated, monkeypatch):
    top = isolated / "data" / "cifar10-images"
    expected = write_image_folder(top)
    ds = cifar.load_cifar10(isolated / "data", allow_download=False)
    assert_matches_folder(ds, expected)
    assert ds.extra["from_cache"] is False and Path(ds.extra["cache"]).is_file()
    assert Path(ds.extra["cache"]).parent == isolated / "cache" / "cifar10"

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(image_folder, "_decode", no_decoding)
    again = cifar.load_cifar10(isolated / "data", allow_download=False, layout="folder")
    assert again.extra["from_cache"] is True
    assert_matches_folder(again, expected)


def test_png_tar_gz_equals_folder_and_is_keyed_by_its_sha256(isolated):
    staging = isolated / "staging"
    expected = write_image_folder(staging / "some-prefix")
    root = isolated / "data"
    root.mkdir()
    archive = root / "cifar10-images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging / "some-prefix", arcname="some-prefix")
    ds = cifar.load_cifar10(root, allow_download=False)
    assert_matches_folder(ds, expected)
    assert hashlib.sha256(archive.read_bytes()).hexdigest() in ds.extra["cache"]


def test_extracted_jpeg_copy_is_recognised_by_content(isolated, monkeypatch):
    top = isolated / "data" / "cifar10-jpeg"
    write_image_folder(top)
    files = cifar._files_from_folder(top)
    monkeypatch.setattr(image_folder, "JPEG_CONTENT_DIGEST", cifar._content_digest(files))
    ds = cifar.load_cifar10(isolated / "data", allow_download=False)
    assert ds.source == cifar.SOURCE_JPEG_COPY == "CIFAR-10 (JPEG q75 copy)"
    assert cifar.JPEG_ARCHIVE.sha256 in ds.extra["cache"]  # shares the archive's cache entry


def test_python_release_preferred_unless_folder_forced(isolated, monkeypatch):
    root = isolated / "data"
    write_image_folder(root / "cifar10-images")
    folder = root / "cifar-10-batches-py"
    write_python_release(folder)
    accept_files_in(monkeypatch, folder)
    assert cifar.load_cifar10(root, allow_download=False).extra["layout"] == "python"
    assert cifar.load_cifar10(root, allow_download=False, layout="folder").extra["layout"] == "folder"


def test_folder_with_wrong_image_size_is_an_error(isolated):
    top = isolated / "data" / "cifar10-images"
    write_image_folder(top)
    Image.new("RGB", (28, 28)).save(top / "test" / "cat" / "1.png")
    with pytest.raises(DataNotFoundError, match=r"test/cat/1.png is 28x28, not 32x32"):
        cifar.load_cifar10(isolated / "data", allow_download=False)


def test_folder_missing_a_class_is_an_error(isolated):
    top = isolated / "data" / "cifar10-images"
    write_image_folder(top)
    for f in (top / "test" / "ship").iterdir():
        f.unlink()
    with pytest.raises(DataNotFoundError, match="test/ has no images of class ship"):
        cifar.load_cifar10(isolated / "data", allow_download=False)


# --------------------------------------------------------------------------------------
# the shared JPEG copy
# --------------------------------------------------------------------------------------


def shared_cifar(layout: str, holding: str):
    root = os.environ.get(ENV_DATA_DIR)
    if not root:
        pytest.skip(f"shared data not given: set {ENV_DATA_DIR} to the folder holding {holding}")
    ds = cifar.load_cifar10(root, allow_download=False, layout=layout)
    assert ds.train_x.shape == (50_000, 3, 32, 32) and ds.test_x.shape == (10_000, 3, 32, 32)
    assert ds.image_shape == (3, 32, 32) and ds.num_classes == 10
    assert torch.bincount(ds.train_y, minlength=10).tolist() == [5_000] * 10
    assert torch.bincount(ds.test_y, minlength=10).tolist() == [1_000] * 10
    return ds


def test_shared_jpeg_archive():
    # Uses the real user cache: the first run decodes (~10 s), later runs read the arrays.
    ds = shared_cifar("folder", "cifar10-jpeg/cifar10-jpeg.tar.gz")
    assert ds.source == "CIFAR-10 (JPEG q75 copy)"
    assert ds.extra["verified"].startswith("sha256 45b041e867f5a40f")
    # channel order: the per-channel means are CIFAR-10's (R > G > B), JPEG shifts them < 0.001
    mean = (ds.train_x.float().mean(dim=(0, 2, 3)) / 255).tolist()
    assert mean == pytest.approx([0.4914, 0.4822, 0.4465], abs=2e-3)


# --------------------------------------------------------------------------------------
# the shared original-pixel copy, cifar10.npz
# --------------------------------------------------------------------------------------


def write_npz(path: Path, n_train: int = 6, n_test: int = 4, names=None) -> dict:
    g = np.random.default_rng(0)
    arrays = {
        "x_train": g.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.int64),
        "x_test": g.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        "y_test": np.sort(np.arange(n_test) % 10).astype(np.int64),
        "train_exact": np.array([True] * (n_train - 1) + [False]),
        "test_exact": np.array([False] + [True] * (n_test - 1)),
        "label_names": np.array(names or cifar.CLASSES),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return arrays


def accept_npz(monkeypatch, path: Path) -> None:
    from robustlr.data.cifar import npz

    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setattr(npz, "NPZ_FILE", dataclasses.replace(npz.NPZ_FILE, sha256=sha))


def test_npz_is_read_as_chw_with_its_inexact_images_flagged(isolated, monkeypatch):
    path = isolated / "data" / "cifar10" / "cifar10.npz"
    arrays = write_npz(path)
    accept_npz(monkeypatch, path)
    ds = cifar.load_cifar10(isolated / "data", allow_download=False)
    assert ds.source == "CIFAR-10 (59,903/60,000 original pixels)" and ds.extra["layout"] == "npz"
    assert torch.equal(ds.train_x, torch.from_numpy(arrays["x_train"]).permute(0, 3, 1, 2))
    assert torch.equal(ds.test_x, torch.from_numpy(arrays["x_test"]).permute(0, 3, 1, 2))
    assert ds.train_x[2, 1, 3, 4] == arrays["x_train"][2, 3, 4, 1]  # (N, H, W, C) -> (N, C, H, W)
    assert (ds.extra["inexact_train"], ds.extra["inexact_test"]) == ([5], [0])
    exact = cifar.load_cifar10(isolated / "data", allow_download=False, exact_only=True)
    assert exact.source == "CIFAR-10 (59,903 images with original pixels; the 97 JPEG-filled dropped)"
    assert torch.equal(exact.train_x, ds.train_x[:5]) and torch.equal(exact.test_y, ds.test_y[1:])


def test_npz_with_another_sha256_is_rejected_and_listed(isolated):
    write_npz(isolated / "data" / "cifar10" / "cifar10.npz")
    with pytest.raises(DataNotFoundError, match=r"cifar10\.npz \(corrupt: sha256 [0-9a-f]{12}\.\.\. != expected 87a96a9294ac"):
        cifar.load_cifar10(isolated / "data", allow_download=False, layout="npz")


def test_npz_with_wrong_contents_is_an_error(isolated, monkeypatch):
    path = isolated / "data" / "cifar10.npz"
    write_npz(path, names=[f"c{i}" for i in range(10)])
    accept_npz(monkeypatch, path)
    with pytest.raises(DataNotFoundError, match="label_names .* are not CIFAR-10's"):
        cifar.load_cifar10(isolated / "data", allow_download=False)


def test_order_python_release_then_npz_then_image_folder(isolated, monkeypatch):
    root = isolated / "data"
    write_image_folder(root / "cifar10-images")
    path = root / "cifar10" / "cifar10.npz"
    write_npz(path)
    accept_npz(monkeypatch, path)
    assert cifar.load_cifar10(root, allow_download=False).extra["layout"] == "npz"
    assert cifar.load_cifar10(root, allow_download=False, layout="folder").extra["layout"] == "folder"
    with pytest.raises(Exception, match="exact_only: the only CIFAR-10 copy found is an image folder"):
        cifar.load_cifar10(root, allow_download=False, layout="folder", exact_only=True)
    folder = root / "cifar-10-batches-py"
    write_python_release(folder)
    accept_files_in(monkeypatch, folder)
    assert cifar.load_cifar10(root, allow_download=False).extra["layout"] == "python"


def test_shared_npz():
    ds = shared_cifar("npz", "cifar10/cifar10.npz")
    assert ds.source == "CIFAR-10 (59,903/60,000 original pixels)"
    # the test set is sorted by class (so any evaluation subset must be stratified)
    assert torch.equal(ds.test_y, torch.arange(10).repeat_interleave(1000))
    assert (len(ds.extra["inexact_train"]), len(ds.extra["inexact_test"])) == (77, 20)
    assert set(ds.train_y[ds.extra["inexact_train"]].tolist()) == {7, 8}  # horses and ships only
    # data_batch_1's label histogram, as published
    assert torch.bincount(ds.train_y[:10_000], minlength=10).tolist() == [1005, 974, 1032, 1016, 999, 937, 1030,
                                                                           1001, 1025, 981]
    mean = (ds.train_x.float().mean(dim=(0, 2, 3)) / 255).tolist()
    assert mean == pytest.approx([0.4914, 0.4822, 0.4465], abs=1e-3)
