"""Partitioners: sizes, disjointness, coverage, determinism, exact tiny cases, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustlr.data import partition as P
from robustlr.data.base import ImageDataset


def _check_partition(parts, n_samples, cover=True):
    assert all(isinstance(p, np.ndarray) and p.dtype == np.int64 and p.ndim == 1 for p in parts)
    assert all((np.diff(p) > 0).all() for p in parts)  # sorted, no repeats
    allidx = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    assert len(np.unique(allidx)) == len(allidx)  # disjoint
    if len(allidx):
        assert allidx.min() >= 0 and allidx.max() < n_samples
    if cover:
        assert len(allidx) == n_samples  # with disjointness: union == range(n_samples)


def _same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------ natural


def _dataset(writers):
    n = 6
    x = torch.zeros((n, 1, 28, 28), dtype=torch.uint8)
    y = torch.zeros(n, dtype=torch.int64)
    return ImageDataset("t", x, y, x, y, classes=("0",), mean=(0.0,), std=(1.0,), train_writers=writers,
                        writer_ids=None if writers is None else [str(i) for i in range(len(writers))])


def test_natural_returns_the_writers():
    ds = _dataset([np.array([0, 1, 2]), np.array([5, 3]), np.array([4], dtype=np.int32)])
    parts = P.natural(ds)
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 5], [4]]
    _check_partition(parts, 6)
    parts[0][0] = 99  # a copy: the dataset's arrays are untouched
    assert ds.train_writers[0][0] == 0


def test_natural_without_writers():
    with pytest.raises(ValueError, match="no natural partition"):
        P.natural(_dataset(None))


# ------------------------------------------------------------------ iid


def test_iid_exact_tiny():
    assert [p.tolist() for p in P.iid(5, 2, seed=0)] == [[1, 2, 3], [0, 4]]
    one_each = [p.tolist() for p in P.iid(3, 3, seed=7)]
    assert sorted(one_each) == [[0], [1], [2]]
    assert [p.tolist() for p in P.iid(4, 1, seed=1)] == [[0, 1, 2, 3]]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 400), k=st.integers(1, 50), seed=st.integers(0, 2**32 - 1))
def test_iid_sizes_disjoint_cover(n, k, seed):
    if k > n:
        with pytest.raises(ValueError, match="n_clients"):
            P.iid(n, k, seed)
        return
    parts = P.iid(n, k, seed)
    assert len(parts) == k
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # leftovers go to the first clients
    _check_partition(parts, n)


def test_iid_seeded():
    assert _same(P.iid(1000, 7, 3), P.iid(1000, 7, 3))
    assert _same(P.iid(1000, 7, np.random.default_rng(3)), P.iid(1000, 7, np.random.default_rng(3)))
    assert not _same(P.iid(1000, 7, 3), P.iid(1000, 7, 4))


def test_iid_stratified():
    labels = np.repeat(np.arange(10), [100, 91, 100, 100, 100, 100, 100, 100, 100, 9])  # 900
    parts = P.iid(900, 10, seed=0, labels=labels)
    _check_partition(parts, 900)
    assert {len(p) for p in parts} == {90}
    per_class = np.array([np.bincount(labels[p], minlength=10) for p in parts])
    assert (per_class.max(axis=0) - per_class.min(axis=0) <= 1).all()
    assert (per_class[:, 0] == 10).all()
    assert _same(parts, P.iid(900, 10, seed=0, labels=torch.from_numpy(labels)))


def test_iid_errors():
    with pytest.raises(ValueError, match=r"n_clients \(4\) must not exceed n_samples \(3\)"):
        P.iid(3, 4, 0)
    with pytest.raises(ValueError, match="n_clients"):
        P.iid(3, 0, 0)
    with pytest.raises(ValueError, match="n_samples"):
        P.iid(-1, 1, 0)
    with pytest.raises(ValueError, match="seed"):
        P.iid(3, 1, None)
    with pytest.raises(ValueError, match="labels has 2 entries"):
        P.iid(3, 1, 0, labels=[0, 1])


# ------------------------------------------------------------------ dirichlet


def test_dirichlet_covers_and_is_seeded():
    labels = np.random.default_rng(0).integers(0, 10, 3000)
    parts = P.dirichlet(labels, 20, alpha=0.5, seed=1)
    assert len(parts) == 20
    _check_partition(parts, 3000)
    assert min(len(p) for p in parts) >= 10
    assert _same(parts, P.dirichlet(labels, 20, alpha=0.5, seed=1))
    assert _same(parts, P.dirichlet(torch.from_numpy(labels), 20, alpha=0.5, seed=np.random.default_rng(1)))
    assert not _same(parts, P.dirichlet(labels, 20, alpha=0.5, seed=2))


def test_dirichlet_alpha_controls_skew():
    labels = np.repeat(np.arange(10), 500)

    def mean_classes(alpha):
        parts = P.dirichlet(labels, 10, alpha=alpha, seed=0, min_size=1)
        return np.mean([len(np.unique(labels[p])) for p in parts])

    assert mean_classes(0.05) < 4 < 9.5 < mean_classes(1000.0)


def test_dirichlet_exact_tiny():
    labels = [0, 1, 0, 1, 2]
    assert [p.tolist() for p in P.dirichlet(labels, 1, alpha=0.1, seed=0, min_size=0)] == [[0, 1, 2, 3, 4]]
    # huge alpha: every class is split (almost) evenly
    parts = P.dirichlet(np.repeat([0, 1], 4), 2, alpha=1e9, seed=0, min_size=1)
    assert sorted(np.bincount(np.repeat([0, 1], 4)[p], minlength=2).tolist() for p in parts) == [[2, 2], [2, 2]]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 300), k=st.integers(1, 12), c=st.integers(1, 8), alpha=st.floats(0.05, 100.0),
       seed=st.integers(0, 2**32 - 1))
def test_dirichlet_property(n, k, c, alpha, seed):
    labels = np.random.default_rng(seed).integers(0, c, n)
    if k > n:
        with pytest.raises(ValueError):
            P.dirichlet(labels, k, alpha, seed, min_size=0)
        return
    parts = P.dirichlet(labels, k, alpha, seed, min_size=0)
    assert len(parts) == k
    _check_partition(parts, n)


def test_dirichlet_errors():
    labels = np.arange(100) % 10
    for alpha in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            P.dirichlet(labels, 5, alpha, 0)
    with pytest.raises(ValueError, match=r"n_clients \(101\) must not exceed n_samples \(100\)"):
        P.dirichlet(labels, 101, 1.0, 0, min_size=0)
    with pytest.raises(ValueError, match="min_size"):
        P.dirichlet(labels, 11, 1.0, 0, min_size=10)
    with pytest.raises(ValueError, match="min_size"):
        P.dirichlet(labels, 5, 1.0, 0, min_size=-1)
    with pytest.raises(ValueError, match="tries"):
        P.dirichlet(labels, 10, 0.01, 0, min_size=10, max_tries=3)
    with pytest.raises(ValueError, match="one-dimensional"):
        P.dirichlet(labels.reshape(10, 10), 5, 1.0, 0)
    with pytest.raises(ValueError, match="integers"):
        P.dirichlet(labels.astype(float), 5, 1.0, 0)


# ------------------------------------------------------------------ shards


def test_shards_exact_tiny():
    labels = [1, 0, 1, 0]
    parts = P.shards(labels, 2, 1, seed=0)  # two shards, one per class
    assert sorted(p.tolist() for p in parts) == [[0, 2], [1, 3]]
    labels = [2, 2, 0, 0, 1, 1]
    parts = P.shards(labels, 3, 1, seed=5)
    assert sorted(p.tolist() for p in parts) == [[0, 1], [2, 3], [4, 5]]
    assert [p.tolist() for p in P.shards(labels, 1, 3, seed=0)] == [[0, 1, 2, 3, 4, 5]]


def test_shards_two_classes_per_client():
    labels = np.repeat(np.arange(10), 60)  # 600 samples, 20 shards of 30
    parts = P.shards(labels, 10, 2, seed=0)
    _check_partition(parts, 600)
    assert {len(p) for p in parts} == {60}
    assert all(1 <= len(np.unique(labels[p])) <= 2 for p in parts)
    assert _same(parts, P.shards(labels, 10, 2, seed=0))
    assert not _same(parts, P.shards(labels, 10, 2, seed=1))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), k=st.integers(1, 20), s=st.integers(1, 5), c=st.integers(1, 10),
       seed=st.integers(0, 2**32 - 1))
def test_shards_property(n, k, s, c, seed):
    labels = np.random.default_rng(seed).integers(0, c, n)
    if k * s > n:
        with pytest.raises(ValueError, match="shards exceed n_samples"):
            P.shards(labels, k, s, seed)
        return
    parts = P.shards(labels, k, s, seed)
    assert len(parts) == k
    _check_partition(parts, n)
    size = n / (k * s)
    assert all(s * np.floor(size) <= len(p) <= s * np.ceil(size) for p in parts)


def test_shards_errors():
    with pytest.raises(ValueError, match="classes_per_client"):
        P.shards([0, 1], 1, 0, 0)
    with pytest.raises(ValueError, match="n_clients"):
        P.shards([0, 1], 0, 1, 0)
    with pytest.raises(ValueError, match=r"2 \* 2 = 4 shards exceed n_samples \(3\)"):
        P.shards([0, 1, 0], 2, 2, 0)
