"""Fashion-MNIST loader: the real files, corrupted and missing copies, and the IDX parser.

The real files are read from ``$ROBUSTLR_DATA_DIR`` (CI points it at the shared data folder);
without it, the user cache and Debian's package folder are tried, and the tests that need the
real files are skipped if none has them.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from robustlr.data import DataNotFoundError, ImageDataset, locate
from robustlr.data import fashion_mnist as fm
from robustlr.data.store import ENV_CACHE_DIR, ENV_DATA_DIR, file_sha256


def _real_paths() -> dict[str, Path]:
    try:
        return {role: locate(spec, allow_download=False) for role, spec in fm.DATASET_FILES.items()}
    except DataNotFoundError as exc:
        if os.environ.get(ENV_DATA_DIR):
            raise  # the data folder was given but is broken: that is a failure, not a skip
        pytest.skip(f"Fashion-MNIST not available: {ENV_DATA_DIR} is unset and the files are not in the cache "
                    f"or the system folders ({exc.args[0].splitlines()[0]})")


@pytest.fixture(scope="module")
def real_paths() -> dict[str, Path]:
    return _real_paths()


@pytest.fixture(scope="module")
def dataset(real_paths) -> ImageDataset:
    return fm.load_fashion_mnist(allow_download=False)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No env data dir, an empty cache and an empty system folder: only ``data_dir`` can supply files."""
    monkeypatch.delenv(ENV_DATA_DIR, raising=False)
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "cache"))
    system = tmp_path / "system"
    for role, spec in fm.DATASET_FILES.items():
        monkeypatch.setitem(fm.DATASET_FILES, role, dataclasses.replace(spec, system_dirs=(str(system),)))
    return tmp_path


def _link_all_but(real_paths, folder: Path, role: str) -> Path:
    folder.mkdir(parents=True)
    for r, p in real_paths.items():
        if r != role:
            (folder / p.name).symlink_to(p)
    return folder / real_paths[role].name


def test_checksums_match_the_issue_prefixes():
    prefixes = {"train_images": "c59f468a", "train_labels": "bad3541b", "test_images": "5b4141f0", "test_labels": "0402a96d"}
    assert {r: s.sha256[:8] for r, s in fm.DATASET_FILES.items()} == prefixes
    for spec in fm.DATASET_FILES.values():
        assert spec.subdir == "fashion-mnist"
        assert spec.system_dirs == ("/usr/share/datasets/fashion-mnist",)
        assert all(u.startswith(("http://", "https://")) and u.endswith("/" + spec.name) for u in spec.urls)


def test_real_files_shapes_dtypes_counts(dataset):
    assert dataset.name == "fashion-mnist"
    assert dataset.train_x.shape == (60000, 1, 28, 28) and dataset.train_x.dtype == torch.uint8
    assert dataset.test_x.shape == (10000, 1, 28, 28) and dataset.test_x.dtype == torch.uint8
    assert dataset.train_y.dtype == torch.int64 and dataset.test_y.dtype == torch.int64
    assert torch.equal(torch.bincount(dataset.train_y), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(dataset.test_y), torch.full((10,), 1000))
    assert dataset.classes[0] == "T-shirt/top" and dataset.classes[5] == "Sandal"
    assert dataset.classes[7] == "Sneaker" and dataset.classes[9] == "Ankle boot"
    assert dataset.mean == (0.2860,) and dataset.std == (0.3530,) and dataset.ink == 255
    # the published normalisation constants are the training set's statistics
    pixels = dataset.train_x.float() / 255
    assert pixels.mean().item() == pytest.approx(0.2860, abs=5e-4)
    assert pixels.std().item() == pytest.approx(0.3530, abs=5e-4)


def test_real_files_found_through_env_var(real_paths, tmp_path, monkeypatch):
    folder = tmp_path / "data" / "fashion-mnist"
    folder.mkdir(parents=True)
    for p in real_paths.values():
        (folder / p.name).symlink_to(p)
    monkeypatch.setenv(ENV_DATA_DIR, str(tmp_path / "data"))
    monkeypatch.setenv(ENV_CACHE_DIR, str(tmp_path / "cache"))
    found = locate(fm.DATASET_FILES["test_labels"], allow_download=False)
    assert found == folder / "t10k-labels-idx1-ubyte.gz"


def _flip_content_byte(src: Path, dest: Path, offset: int = 100) -> None:
    """A valid gzip file whose decompressed content differs from ``src`` in one byte."""
    data = bytearray(gzip.decompress(src.read_bytes()))
    data[offset] ^= 0xFF
    dest.write_bytes(gzip.compress(bytes(data)))


def _flip_raw_byte(src: Path, dest: Path) -> None:
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dest.write_bytes(bytes(data))


@pytest.mark.parametrize("flip", [_flip_content_byte, _flip_raw_byte], ids=["content", "compressed"])
def test_corrupt_copy_names_the_file_and_every_place(real_paths, isolated, flip):
    data_dir = isolated / "data"
    bad = _link_all_but(real_paths, data_dir / "fashion-mnist", "test_labels")
    flip(real_paths["test_labels"], bad)
    with pytest.raises(DataNotFoundError) as info:
        fm.load_fashion_mnist(data_dir=data_dir, allow_download=False)
    msg = str(info.value)
    name = "t10k-labels-idx1-ubyte.gz"
    assert f"{bad} (corrupt" in msg or f"{bad} (unreadable" in msg
    if flip is _flip_content_byte:
        assert f"{bad} (corrupt: sha256" in msg
    for place in (
        data_dir / name,
        isolated / "cache" / "fashion-mnist" / name,
        isolated / "cache" / name,
        isolated / "system" / name,
    ):
        assert f"{place} (missing)" in msg
    assert "download: disabled" in msg
    assert "--data-dir" in msg and ENV_DATA_DIR in msg and "dataset-fashion-mnist" in msg


def test_missing_file_is_named(real_paths, isolated):
    data_dir = isolated / "data"
    _link_all_but(real_paths, data_dir / "fashion-mnist", "train_labels")
    with pytest.raises(DataNotFoundError, match="fashion-mnist/train-labels-idx1-ubyte.gz") as info:
        fm.load_fashion_mnist(data_dir=data_dir, allow_download=False)
    msg = str(info.value)
    assert f"--data-dir: {data_dir / 'fashion-mnist' / 'train-labels-idx1-ubyte.gz'} (missing)" in msg
    assert f"system: {isolated / 'system' / 'train-labels-idx1-ubyte.gz'} (missing)" in msg


def test_debian_layout_in_system_dir(real_paths, isolated):
    # Debian installs the four files, with their upstream names, directly in the system folder.
    system = isolated / "system"
    system.mkdir()
    shutil.copy(real_paths["train_labels"], system / "train-labels-idx1-ubyte.gz")
    found = locate(fm.DATASET_FILES["train_labels"], allow_download=False)
    assert found == system / "train-labels-idx1-ubyte.gz"


# --- the IDX parser on small hand-made files ---


def _write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> Path:
    path.write_bytes(gzip.compress(struct.pack(f">{1 + len(dims)}I", magic, *dims) + payload))
    return path


def test_parser_reads_images_and_labels(tmp_path):
    pixels = np.arange(3 * 2 * 4, dtype=np.uint8)
    images = fm.read_idx_images(_write_idx(tmp_path / "i.gz", 2051, (3, 2, 4), pixels.tobytes()))
    assert images.shape == (3, 2, 4) and images.dtype == np.uint8
    assert np.array_equal(images, pixels.reshape(3, 2, 4))
    labels = fm.read_idx_labels(_write_idx(tmp_path / "l.gz", 2049, (3,), bytes([9, 0, 5])))
    assert labels.tolist() == [9, 0, 5]


def test_parser_reads_uncompressed_files(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(struct.pack(">II", 2049, 2) + bytes([1, 2]))
    assert fm.read_idx_labels(path).tolist() == [1, 2]


def test_parser_rejects_wrong_magic(tmp_path):
    labels = _write_idx(tmp_path / "l.gz", 2049, (4,), bytes(4))
    with pytest.raises(fm.IDXFormatError, match=r"magic number 2049 .*expected 2051"):
        fm.read_idx_images(labels)
    with pytest.raises(fm.IDXFormatError, match=r"magic number 2051 .*expected 2049"):
        fm.read_idx_labels(_write_idx(tmp_path / "i.gz", 2051, (1, 1, 1), bytes(1)))


def test_parser_rejects_wrong_size(tmp_path):
    truncated = _write_idx(tmp_path / "t.gz", 2051, (3, 28, 28), bytes(2 * 28 * 28))
    with pytest.raises(fm.IDXFormatError, match=r"3 x 28 x 28 .*file has 1584 bytes"):
        fm.read_idx_images(truncated)
    too_long = _write_idx(tmp_path / "l.gz", 2049, (2,), bytes(3))
    with pytest.raises(fm.IDXFormatError, match="file has 11 bytes"):
        fm.read_idx_labels(too_long)
    short = tmp_path / "s.gz"
    short.write_bytes(gzip.compress(struct.pack(">II", 2051, 1)))
    with pytest.raises(fm.IDXFormatError, match="too short"):
        fm.read_idx_images(short)


def test_checksum_is_of_the_decompressed_bytes(real_paths, tmp_path):
    # a re-compressed copy (as Debian ships) has other gz bytes but passes the same check
    src = real_paths["test_labels"]
    copy = tmp_path / src.name
    copy.write_bytes(gzip.compress(gzip.decompress(src.read_bytes()), compresslevel=1, mtime=0))
    assert copy.read_bytes() != src.read_bytes()
    assert file_sha256(copy, decompress=True) == fm.DATASET_FILES["test_labels"].sha256


def test_a_dataset_refuses_labels_without_a_class_an_empty_train_split_and_bad_normalisation():
    import torch

    from robustlr.data.base import ImageDataset
    from robustlr.errors import DataError

    x, y = torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1, 2, 1])
    ok = dict(name="mine", train_x=x, train_y=y, test_x=x, test_y=y, classes=("a", "b", "c"), mean=(0.5,), std=(0.2,))
    ImageDataset(**ok)
    cases = [({"classes": ("a", "b")}, "mine: train_y holds labels 0..2, outside 0..1 (one per name in classes, 2): "
                                       "give every class a name, or relabel to 0..1"),
             ({"test_y": torch.tensor([0, -1, 0, 0])}, "mine: test_y holds labels -1..0, outside 0..2"),
             ({"train_x": x[:0], "train_y": y[:0]}, "mine: the train split is empty"),
             ({"std": (0.0,)}, "mine: mean must be finite and std finite and > 0, got mean (0.5,), std (0.0,)"),
             ({"mean": (float("nan"),)}, "mine: mean must be finite"),
             ({"train_y": y[:3]}, "mine: train_x has 4 samples (shape (4, 1, 2, 2)) but train_y has 3 labels"),
             ({"train_y": y.to(torch.int32)}, "mine: train_y must be int64 labels of shape (N,), got torch.int32"),
             ({"train_x": x[:, 0]}, "mine: uint8 train_x is read as images and must be (N, C, H, W), got (4, 2, 2)"),
             ({"test_x": torch.zeros(4, 1, 3, 3, dtype=torch.uint8)},
              "mine: test_x is torch.uint8 (1, 3, 3) per sample but train_x is torch.uint8 (1, 2, 2)"),
             ({"train_x": x.double()}, "mine: train_x must be uint8 images (N, C, H, W), float32 features or int64"),
             ({"train_x": x.float().flatten(1), "test_x": x.float().flatten(1)},
              "mine: mean/std normalise uint8 images; torch.float32 data is used as given: leave them empty"),
             ({"train_x": torch.tensor([[0.0], [float("nan")], [1.0], [float("inf")]]), "test_x": x.float()[:, 0, 0, :1],
               "mean": (), "std": ()}, "mine: train_x holds NaN or infinite values (2 samples)"),
             ({"train_x": torch.tensor([[0], [-1], [1], [2]]), "test_x": torch.zeros(4, 1, dtype=torch.int64),
               "mean": (), "std": ()}, "mine: train_x (token ids) holds negative values")]
    for change, message in cases:
        with pytest.raises(DataError) as info:
            ImageDataset(**{**ok, **change})
        assert str(info.value).startswith(message)
