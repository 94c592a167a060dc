"""Choosing the samples to poison, and poisoning them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustlr.attacks.poison import poison, select_poisoned
from robustlr.attacks.trojans import trojan_mask


def _labels():
    # 6000 samples, 600 of each of 10 classes, shuffled
    rng = np.random.default_rng(123)
    return torch.from_numpy(rng.permutation(np.repeat(np.arange(10), 600)))


def test_counts_exact_and_all_base_class():
    labels = _labels()
    chosen = select_poisoned(labels, np.arange(6000), base_class=5, fraction=0.5, rng=np.random.default_rng(0))
    assert chosen.dtype == np.int64 and chosen.shape == (300,)
    assert (labels[torch.from_numpy(chosen)] == 5).all()
    assert np.array_equal(chosen, np.sort(chosen)) and len(np.unique(chosen)) == 300


def test_deterministic_for_a_seed_and_varies_with_it():
    labels = _labels()
    idx = np.arange(6000)
    a = select_poisoned(labels, idx, 5, 0.5, np.random.default_rng(7))
    b = select_poisoned(labels, idx, 5, 0.5, np.random.default_rng(7))
    c = select_poisoned(labels, idx, 5, 0.5, np.random.default_rng(8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_only_the_agents_own_samples():
    labels = _labels()
    agent = np.arange(1, 6000, 3)  # an arbitrary subset of indices
    n_base = int((labels[torch.from_numpy(agent)] == 5).sum())
    chosen = select_poisoned(labels, agent, 5, 0.5, np.random.default_rng(0))
    assert len(chosen) == n_base // 2
    assert set(chosen) <= set(agent)


@pytest.mark.parametrize("fraction,n_base,expected", [(0.0, 600, 0), (1.0, 600, 600), (0.29, 100, 29), (0.5, 7, 3), (0.1, 9, 0)])
def test_count_is_the_floor(fraction, n_base, expected):
    labels = torch.tensor([5] * n_base + [1] * 10)
    chosen = select_poisoned(labels, np.arange(len(labels)), 5, fraction, np.random.default_rng(1))
    assert len(chosen) == expected


def test_no_base_class_samples():
    labels = torch.tensor([1, 2, 3])
    assert select_poisoned(labels, np.arange(3), 5, 0.5, np.random.default_rng(0)).size == 0
    assert select_poisoned(labels, np.array([], dtype=np.int64), 5, 0.5, np.random.default_rng(0)).size == 0


def test_bad_arguments():
    labels = _labels()
    idx = np.arange(10)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"fraction must be a number in \[0, 1\], got 1.5"):
        select_poisoned(labels, idx, 5, 1.5, rng)
    with pytest.raises(ValueError, match=r"fraction must be a number in \[0, 1\], got -0.1"):
        select_poisoned(labels, idx, 5, -0.1, rng)
    with pytest.raises(ValueError, match="fraction must be a number"):
        select_poisoned(labels, idx, 5, "half", rng)
    with pytest.raises(ValueError, match="base_class must be a non-negative integer, got -1"):
        select_poisoned(labels, idx, -1, 0.5, rng)
    with pytest.raises(ValueError, match="rng must be a numpy.random.Generator"):
        select_poisoned(labels, idx, 5, 0.5, 42)
    with pytest.raises(ValueError, match="indices must be a 1-D integer array"):
        select_poisoned(labels, idx.astype(float), 5, 0.5, rng)


def test_poison_rows():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 200, (20, 1, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.arange(20) % 10
    x0, y0 = x.clone(), y.clone()
    rows = np.array([3, 5, 15])
    mask = trojan_mask("plus")
    x_new, y_new = poison(x, y, rows, mask, 255, target_class=7)
    assert torch.equal(x, x0) and torch.equal(y, y0)  # inputs untouched
    assert x_new.shape == (3, 1, 28, 28) and x_new.dtype == torch.uint8
    assert y_new.tolist() == [7, 7, 7] and y_new.dtype == y.dtype
    assert (x_new[:, :, mask] == 255).all()
    assert torch.equal(x_new[:, :, ~mask], x[rows][:, :, ~mask])


def test_poison_empty_selection_and_bad_target():
    x = torch.zeros((4, 3, 32, 32), dtype=torch.uint8)
    y = torch.zeros(4, dtype=torch.int64)
    x_new, y_new = poison(x, y, np.array([], dtype=np.int64), trojan_mask("plus", 32, 32, "cifar10"), 255, 7)
    assert x_new.shape == (0, 3, 32, 32) and y_new.shape == (0,)
    with pytest.raises(ValueError, match="target_class must be a non-negative integer"):
        poison(x, y, np.array([0]), trojan_mask("plus", 32, 32, "cifar10"), 255, -3)


def test_backdoor_test_set_recipe():
    # every base-class image with the full trojan, labelled target
    labels = _labels()[:1000]
    x = torch.zeros((1000, 1, 28, 28), dtype=torch.uint8)
    base = np.flatnonzero(labels.numpy() == 5)
    x_bd, y_bd = poison(x, labels, base, trojan_mask("square"), 255, 7)
    assert len(x_bd) == len(base) and (y_bd == 7).all()
    assert int(x_bd.sum()) == len(base) * 25 * 255
