"""FEMNIST loaders: LEAF json shards and TensorFlow Federated h5 files.

Exact tests run on tiny files written here. The real LEAF samples are read from
``$ROBUSTLR_DATA_DIR/femnist-leaf`` (CI points it at the shared data folder); those tests are
skipped when the variable is unset.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from robustlr.attacks import apply_trojan, trojan_mask

from robustlr.data import femnist as fe
from robustlr.data.femnist import load_leaf_femnist, load_tff_emnist, make_synthetic_tff_emnist, write_tff_emnist_h5

# ---------------------------------------------------------------------------------------------
# helpers: tiny LEAF shards
# ---------------------------------------------------------------------------------------------


def _images(seed: int, n: int) -> np.ndarray:
    """n white (255) 784-pixel images with a dark stroke and a few arbitrary grey levels."""
    rng = np.random.default_rng(seed)
    x = np.full((n, 784), 255, dtype=np.uint8)
    for i in range(n):
        x[i, 300:310] = 0  # the ink
        x[i, rng.choice(784, 20, replace=False)] = rng.integers(0, 256, 20)
    x[:, 0] = (np.arange(n) + 17 * seed) % 256  # every image distinct and recognisable
    return x


def _doc(writers: dict[str, tuple[np.ndarray, list[int]]]) -> dict:
    """A LEAF shard: x = pixel / 255 as Python floats (what LEAF's preprocessing writes)."""
    return {
        "users": list(writers),
        "num_samples": [len(y) for _, y in writers.values()],
        "user_data": {w: {"x": (x / 255.0).tolist(), "y": list(y)} for w, (x, y) in writers.items()},
    }


def _write(path: Path, doc: dict, **dump) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, **dump).encode()
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text))
    else:
        path.write_bytes(text)
    return path


# writer -> (pixels, labels), per run and split
A_TRAIN = {"w2": (_images(1, 3), [1, 12, 3]), "w1": (_images(2, 2), [0, 5])}
A_TEST = {"w1": (_images(3, 1), [5]), "w2": (_images(4, 1), [3]), "w3": (_images(5, 1), [8])}
B_TRAIN = {"w1": (_images(6, 1), [9]), "w4": (_images(7, 2), [7, 40])}
B_TEST = {"w1": (_images(8, 1), [2]), "w4": (_images(9, 1), [40])}


@pytest.fixture
def two_runs(tmp_path: Path) -> tuple[Path, Path]:
    """Two LEAF runs; w1 is in both (different samples), w3 has only test data, and the
    shards mix .json and .json.gz."""
    a, b = tmp_path / "runA", tmp_path / "runB"
    _write(a / "train" / "all_data_0_niid_05_keep_0_train_9.json", _doc(A_TRAIN))
    _write(a / "test" / "all_data_0_niid_05_keep_0_test_9.json.gz", _doc(A_TEST))
    _write(b / "train" / "all_data_3_niid_05_keep_0_train_9.json.gz", _doc(B_TRAIN))
    _write(b / "test" / "all_data_3_niid_05_keep_0_test_9.json", _doc(B_TEST))
    return a, b


def _rows(ds_x: torch.Tensor) -> np.ndarray:
    return ds_x.numpy().reshape(len(ds_x), 784)


# ---------------------------------------------------------------------------------------------
# LEAF: exact results on tiny shards
# ---------------------------------------------------------------------------------------------


def test_leaf_digits_only_exact(two_runs):
    a, b = two_runs
    ds = load_leaf_femnist([a, b])
    assert ds.name == "femnist" and ds.classes == tuple("0123456789") and ds.num_classes == 10
    assert ds.writer_ids == ["w1", "w2", "w4"]  # sorted ids; w3 has no train part
    assert ds.train_x.dtype == torch.uint8 and tuple(ds.train_x.shape) == (5, 1, 28, 28)
    assert ds.train_y.tolist() == [0, 5, 1, 3, 7]  # 12 and 40 are letters
    assert [w.tolist() for w in ds.train_writers] == [[0, 1], [2, 3], [4]]
    assert all(w.dtype == np.int64 for w in ds.train_writers)
    x1, _ = A_TRAIN["w1"]
    x2, _ = A_TRAIN["w2"]
    x4, _ = B_TRAIN["w4"]
    expected = np.concatenate([x1, x2[[0, 2]], x4[[0]]])
    np.testing.assert_array_equal(_rows(ds.train_x), expected)  # round(x * 255), not inverted
    # test split: the clients' test parts from the run that supplied their train part
    assert ds.test_y.tolist() == [5, 3]  # w1 from runA, w2; w4's only test sample is a letter
    np.testing.assert_array_equal(_rows(ds.test_x), np.concatenate([A_TEST["w1"][0], A_TEST["w2"][0]]))
    assert [w.tolist() for w in ds.extra["test_writers"]] == [[0], [1], []]
    assert ds.extra["writer_origins"] == [str(a), str(a), str(b)]
    assert ds.ink == 0 and ds.mean == (0.0,) and ds.std == (1.0,)
    assert ds.extra["shards"] == 4
    assert ds.extra["writers_seen"] == 4
    assert ds.extra["duplicate_writers"] == 1  # w1
    assert ds.extra["ignored_duplicate_parts"] == 2  # w1's train and test part in runB
    assert ds.extra["writers_without_train"] == 1  # w3
    assert ds.extra["writers_below_min_train"] == 0


def test_leaf_all_classes_exact(two_runs):
    ds = load_leaf_femnist(list(two_runs), digits_only=False)
    assert ds.num_classes == 62 and ds.classes[10] == "A" and ds.classes[12] == "C" and ds.classes[40] == "e"
    assert ds.writer_ids == ["w1", "w2", "w4"]
    assert ds.train_y.tolist() == [0, 5, 1, 12, 3, 7, 40]
    assert [w.tolist() for w in ds.train_writers] == [[0, 1], [2, 3, 4], [5, 6]]
    assert ds.test_y.tolist() == [5, 3, 40]
    np.testing.assert_array_equal(_rows(ds.train_x)[2:5], A_TRAIN["w2"][0])


def test_leaf_first_run_with_train_part_wins(two_runs):
    a, b = two_runs
    ds = load_leaf_femnist([b, a])  # runB first: w1 now comes from runB, train and test
    assert ds.writer_ids == ["w1", "w2", "w4"]
    assert ds.train_y.tolist() == [9, 1, 3, 7]
    assert ds.test_y.tolist() == [2, 3]
    np.testing.assert_array_equal(_rows(ds.train_x)[0], B_TRAIN["w1"][0][0])
    np.testing.assert_array_equal(_rows(ds.test_x)[0], B_TEST["w1"][0][0])


def test_leaf_min_train_samples_counts_after_digit_filter(two_runs):
    ds = load_leaf_femnist(list(two_runs), min_train_samples=2)
    assert ds.writer_ids == ["w1", "w2"]  # w4 has one digit
    assert ds.extra["writers_below_min_train"] == 1
    ds = load_leaf_femnist(list(two_runs), digits_only=False, min_train_samples=3)
    assert ds.writer_ids == ["w2"]


def test_leaf_parent_folder_single_run_and_files(two_runs, tmp_path):
    a, b = two_runs
    whole = load_leaf_femnist(tmp_path)  # searched recursively, runs in name order
    assert whole.writer_ids == ["w1", "w2", "w4"] and whole.train_y.tolist() == [0, 5, 1, 3, 7]
    only_b = load_leaf_femnist(b)
    assert only_b.writer_ids == ["w1", "w4"] and only_b.train_y.tolist() == [9, 7]
    files = load_leaf_femnist(
        [a / "train" / "all_data_0_niid_05_keep_0_train_9.json", a / "test" / "all_data_0_niid_05_keep_0_test_9.json.gz"]
    )
    assert files.writer_ids == ["w1", "w2"] and files.test_y.tolist() == [5, 3]
    assert load_leaf_femnist(a / "train").test_y.tolist() == []  # the train folder alone: no test data


def test_leaf_split_from_file_name(tmp_path):
    flat = tmp_path / "flat"
    _write(flat / "all_data_0_niid_05_keep_0_train_9.json", _doc(A_TRAIN))
    _write(flat / "all_data_0_niid_05_keep_0_test_9.json", _doc(A_TEST))
    ds = load_leaf_femnist(flat)
    assert ds.writer_ids == ["w1", "w2"] and ds.train_y.tolist() == [0, 5, 1, 3] and ds.test_y.tolist() == [5, 3]


def test_leaf_fast_parser_matches_json_parser_and_falls_back(tmp_path):
    doc = _doc({**A_TRAIN, **B_TRAIN})
    raw = json.dumps(doc).encode()
    fast, ref = fe._parse_shard_fast(raw, "t"), fe._parse_shard_json(raw, "t")
    assert list(fast) == list(ref) == ["w2", "w1", "w4"]
    for w in fast:
        np.testing.assert_array_equal(fast[w][0], ref[w][0])
        np.testing.assert_array_equal(fast[w][1], ref[w][1])
    # layouts the fast parser does not take are read by json instead, with the same result
    pretty = json.dumps(doc, indent=1).encode()
    with pytest.raises(fe._FastPathUnsupported):
        fe._parse_shard_fast(pretty, "t")
    ints = dict(doc, user_data={w: {"x": [[int(v) if v in (0.0, 1.0) else v for v in row] for row in d["x"]], "y": d["y"]}
                                for w, d in doc["user_data"].items()})
    with pytest.raises(fe._FastPathUnsupported):
        fe._parse_shard_fast(json.dumps(ints).encode(), "t")
    for variant in (pretty, json.dumps(ints).encode()):
        got = fe._parse_shard(variant, "t")
        for w in ref:
            np.testing.assert_array_equal(got[w][0], ref[w][0])
    # a writer with no samples
    empty = fe._parse_shard_fast(json.dumps(_doc({"e": (np.zeros((0, 784), np.uint8), [])})).encode(), "t")
    assert empty["e"][0].shape == (0, 784) and empty["e"][1].shape == (0,)


def test_leaf_fast_parser_rounds_every_grey_level():
    x = np.arange(256, dtype=np.uint8).repeat(4)[:784].reshape(1, 784)
    x2 = np.arange(256, dtype=np.uint8)[::-1].repeat(4)[:784].reshape(1, 784)
    raw = json.dumps(_doc({"g": (np.concatenate([x, x2]), [0, 1])})).encode()
    np.testing.assert_array_equal(fe._parse_shard_fast(raw, "t")["g"][0], np.concatenate([x, x2]))


def test_leaf_errors(tmp_path, two_runs):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_leaf_femnist(tmp_path / "nope")
    with pytest.raises(ValueError, match="paths is empty"):
        load_leaf_femnist([])
    with pytest.raises(ValueError, match="min_train_samples"):
        load_leaf_femnist(list(two_runs), min_train_samples=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no LEAF shards"):
        load_leaf_femnist(tmp_path / "empty")
    odd = _write(tmp_path / "odd" / "shard.json", _doc(A_TRAIN))
    with pytest.raises(ValueError, match="cannot tell whether"):
        load_leaf_femnist(odd)
    bad = _doc(A_TRAIN)
    bad["user_data"]["w1"]["y"] = [0, 62]
    with pytest.raises(ValueError, match="outside 0..61"):
        load_leaf_femnist(_write(tmp_path / "b1" / "train" / "s.json", bad))
    bad = _doc(A_TRAIN)
    bad["num_samples"] = [3, 5]
    with pytest.raises(ValueError, match="num_samples says 5"):
        load_leaf_femnist(_write(tmp_path / "b2" / "train" / "s.json", bad))
    bad = _doc(A_TRAIN)
    bad["user_data"]["w1"]["x"][0][5] = 1.5
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_leaf_femnist(_write(tmp_path / "b3" / "train" / "s.json", bad))
    bad = _doc(A_TRAIN)
    bad["user_data"]["w1"]["x"][1] = bad["user_data"]["w1"]["x"][1][:-1]
    with pytest.raises(ValueError):
        load_leaf_femnist(_write(tmp_path / "b4" / "train" / "s.json", bad))
    with pytest.raises(ValueError, match="not a LEAF shard"):
        load_leaf_femnist(_write(tmp_path / "b5" / "train" / "s.json", {"hello": 1}))
    with pytest.raises(ValueError, match="not a LEAF shard"):
        load_leaf_femnist(_write(tmp_path / "b6" / "train" / "s.json", [1, 2]))


# ---------------------------------------------------------------------------------------------
# TFF h5
# ---------------------------------------------------------------------------------------------


def _grey(seed: int, n: int) -> np.ndarray:
    return _images(seed, n).reshape(n, 28, 28)


@pytest.fixture
def tff_files(tmp_path: Path) -> tuple[Path, Path]:
    train = write_tff_emnist_h5(
        tmp_path / "fed_emnist_train.h5",
        {
            "f0002_07": (_grey(11, 3) / 255.0, [1, 2, 30]),
            "f0001_03": (_grey(12, 2), np.array([0, 11])),  # uint8 pixels are accepted too
            "f0003_11": (_grey(13, 1) / 255.0, [45]),  # letters only
        },
    )
    test = write_tff_emnist_h5(
        tmp_path / "fed_emnist_test.h5",
        {
            "f0001_03": (_grey(14, 1) / 255.0, [0]),
            "f0002_07": (_grey(15, 2) / 255.0, [30, 2]),
            "f0009_00": (_grey(16, 1) / 255.0, [4]),  # only in the test file
        },
    )
    return train, test


def test_tff_writer_layout(tff_files):
    train, _ = tff_files
    with h5py.File(train, "r") as fh:
        assert sorted(fh["examples"].keys()) == ["f0001_03", "f0002_07", "f0003_11"]
        pixels, label = fh["examples/f0002_07/pixels"], fh["examples/f0002_07/label"]
        assert pixels.dtype == np.float32 and pixels.shape == (3, 28, 28)
        assert label.dtype == np.int32 and label[()].tolist() == [1, 2, 30]
        np.testing.assert_allclose(fh["examples/f0001_03/pixels"][()], _grey(12, 2) / 255.0, atol=1e-7)


def test_tff_digits_only_exact(tff_files):
    ds = load_tff_emnist(*tff_files)
    assert ds.writer_ids == ["f0001_03", "f0002_07"]
    assert ds.classes == tuple("0123456789")
    assert ds.train_y.tolist() == [0, 1, 2]
    assert [w.tolist() for w in ds.train_writers] == [[0], [1, 2]]
    np.testing.assert_array_equal(ds.train_x[:, 0].numpy(), np.concatenate([_grey(12, 2)[:1], _grey(11, 3)[:2]]))
    assert ds.test_y.tolist() == [0, 2]
    np.testing.assert_array_equal(ds.test_x[:, 0].numpy(), np.concatenate([_grey(14, 1), _grey(15, 2)[1:]]))
    assert [w.tolist() for w in ds.extra["test_writers"]] == [[0], [1]]
    assert ds.ink == 0 and ds.mean == (0.0,) and ds.std == (1.0,)
    assert ds.extra["test_only_writers"] == 1
    assert ds.extra["writers_below_min_train"] == 1
    assert ds.extra["synthetic"] is False and "TensorFlow Federated" in ds.source


def test_tff_all_classes(tff_files):
    ds = load_tff_emnist(*tff_files, digits_only=False)
    assert ds.writer_ids == ["f0001_03", "f0002_07", "f0003_11"]
    assert ds.num_classes == 62
    assert ds.train_y.tolist() == [0, 11, 1, 2, 30, 45]
    assert ds.test_y.tolist() == [0, 30, 2]
    assert [w.tolist() for w in ds.extra["test_writers"]] == [[0], [1, 2], []]
    assert ds.extra["writers_without_test"] == 1


def test_tff_errors(tmp_path, tff_files):
    _, test = tff_files
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_tff_emnist_h5(tmp_path / "x.h5", {"a": (np.full((1, 28, 28), 255.0), [1])})
    with pytest.raises(ValueError, match="given twice"):
        write_tff_emnist_h5(tmp_path / "x.h5", [("a", (np.ones((1, 28, 28)), [1])), ("a", (np.ones((1, 28, 28)), [1]))])
    with pytest.raises(ValueError, match="n = len"):
        write_tff_emnist_h5(tmp_path / "x.h5", {"a": (np.ones((2, 28, 28)), [1])})
    with h5py.File(tmp_path / "raw.h5", "w") as fh:
        fh["examples/a/pixels"] = np.full((1, 28, 28), 255.0, dtype=np.float32)  # 0..255, not 0..1
        fh["examples/a/label"] = np.array([1], dtype=np.int32)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_tff_emnist(tmp_path / "raw.h5", test)
    with h5py.File(tmp_path / "nolabel.h5", "w") as fh:
        fh["examples/a/pixels"] = np.ones((1, 28, 28), dtype=np.float32)
    with pytest.raises(ValueError, match="needs 'pixels' and 'label'"):
        load_tff_emnist(tmp_path / "nolabel.h5", test)
    with h5py.File(tmp_path / "other.h5", "w") as fh:
        fh["data"] = np.ones(3)
    with pytest.raises(ValueError, match="no 'examples' group"):
        load_tff_emnist(tmp_path / "other.h5", test)
    with pytest.raises(ValueError, match="min_train_samples"):
        load_tff_emnist(*tff_files, min_train_samples=0)


def test_synthetic_tff_file(tmp_path):
    train = make_synthetic_tff_emnist(tmp_path / "train.h5", n_clients=5, samples_per_client=4, seed=1)
    test = make_synthetic_tff_emnist(tmp_path / "test.h5", n_clients=5, samples_per_client=2, seed=2)
    ds = load_tff_emnist(train, test)
    assert ds.writer_ids == [f"syn{i:05d}" for i in range(5)]
    assert tuple(ds.train_x.shape) == (20, 1, 28, 28) and tuple(ds.test_x.shape) == (10, 1, 28, 28)
    assert ds.extra["synthetic"] is True and ds.source.startswith("SYNTHETIC")
    assert int(ds.train_y.max()) <= 9
    again = load_tff_emnist(make_synthetic_tff_emnist(tmp_path / "again.h5", 5, 4, seed=1), test)
    assert torch.equal(again.train_x, ds.train_x) and torch.equal(again.train_y, ds.train_y)
    other = load_tff_emnist(make_synthetic_tff_emnist(tmp_path / "other.h5", 5, 4, seed=3), test)
    assert not torch.equal(other.train_x, ds.train_x)
    with pytest.raises(ValueError, match="n_clients"):
        make_synthetic_tff_emnist(tmp_path / "bad.h5", 0, 4, seed=1)


# ---------------------------------------------------------------------------------------------
# pixel convention: the trojan colour (ink) must stand out from the background
# ---------------------------------------------------------------------------------------------


def _assert_ink_opposes_background(ds):
    x = ds.train_x.numpy()
    background = int(np.median(x))
    assert background == fe.FEMNIST_BACKGROUND == 255  # white paper
    assert ds.ink == 255 - background and ds.ink != background
    # the ink is the colour of the strokes: every image has a stroke darker than mid-grey,
    # nearly all one close to the ink (a few real scans are faint)
    darkest = x.reshape(len(x), -1).min(axis=1)
    assert (darkest < 128).all() and (darkest < 64).mean() > 0.99
    # robustlr's plus, drawn in the dataset's ink, lands on background and contrasts with it
    mask = trojan_mask("plus", 28, 28, dataset="femnist")
    poisoned = apply_trojan(ds.train_x[:8], mask, ds.ink).numpy()
    assert (poisoned[:, :, mask.numpy()] == ds.ink).all()
    before = x[:8][:, :, mask.numpy()].astype(int)
    assert np.abs(before - ds.ink).mean() > 128  # mostly white paper under the plus before


def test_ink_is_opposite_to_background_tff(tmp_path):
    train = make_synthetic_tff_emnist(tmp_path / "train.h5", n_clients=4, samples_per_client=5, seed=1)
    test = make_synthetic_tff_emnist(tmp_path / "test.h5", n_clients=4, samples_per_client=1, seed=2)
    _assert_ink_opposes_background(load_tff_emnist(train, test))


def test_ink_is_opposite_to_background_leaf_tiny(two_runs):
    _assert_ink_opposes_background(load_leaf_femnist(list(two_runs)))


# ---------------------------------------------------------------------------------------------
# the real LEAF samples in the shared data folder
# ---------------------------------------------------------------------------------------------

SAMPLES = ("arakotom_flic", "slz-ai_leaf-torch", "wenzhu23333_dp-fl")
# from shared/data/femnist-leaf/README.md: writers with train+test, train samples,
# digits train / test of writers with both
README_TABLE = {
    "arakotom_flic": (110, 14697, 10113, 1147),
    "slz-ai_leaf-torch": (105, 14708, 10596, 1180),
    "wenzhu23333_dp-fl": (105, 14640, 10363, 1205),
}


@pytest.fixture(scope="module")
def leaf_dir() -> Path:
    env = os.environ.get("ROBUSTLR_DATA_DIR")
    if not env:
        pytest.skip("real LEAF data needed: set ROBUSTLR_DATA_DIR to the folder holding femnist-leaf/")
    path = Path(env) / "femnist-leaf"
    if not path.is_dir():
        pytest.fail(f"ROBUSTLR_DATA_DIR is set but {path} does not exist")
    return path


@pytest.mark.parametrize("sample", SAMPLES)
def test_real_leaf_sample_matches_readme(leaf_dir, sample):
    ds = load_leaf_femnist(leaf_dir / sample, digits_only=False)
    writers, train, digits_train, digits_test = README_TABLE[sample]
    assert len(ds.writer_ids) == writers
    assert len(ds.train_y) == train
    # digits of the writers with both parts, derived here from the all-class load
    assert int((ds.train_y < 10).sum()) == digits_train
    test_y = ds.test_y.numpy()
    assert sum(int((test_y[t] < 10).sum()) for t in ds.extra["test_writers"]) == digits_test
    assert ds.extra["duplicate_writers"] == 0


def test_real_leaf_pooled(leaf_dir):
    full = load_leaf_femnist(leaf_dir, digits_only=False)
    assert len(full.writer_ids) == 300  # README: 300 distinct writers have train and test data
    assert full.extra["writers_seen"] == 540 and full.extra["duplicate_writers"] == 31
    assert (len(full.train_y), len(full.test_y)) == (41202, 4730)
    assert full.num_classes == 62 and set(full.train_y.unique().tolist()) == set(range(62))
    assert all(len(t) > 0 for t in full.extra["test_writers"])
    digits = load_leaf_femnist(leaf_dir)
    assert len(digits.writer_ids) == 293  # 7 writers have no digit in their train part
    assert (len(digits.train_y), len(digits.test_y)) == (29057, 3294)
    assert int(digits.train_y.max()) == 9
    _assert_ink_opposes_background(digits)
    assert 0.9 < digits.extra["pixel_mean"] < 1.0  # mostly white
