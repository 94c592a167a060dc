"""Partitioners: split a training set among clients.

Every partitioner is a pure function that returns one sorted ``int64`` numpy array of indices
into the training split per client. The randomised ones take an explicit ``seed`` (an ``int``
or a ``numpy.random.Generator``): the same seed gives the same partition, and nothing reads or
changes global random state.

- :func:`natural`: one client per writer (FEMNIST), as the dataset defines it.
- :func:`iid`: a uniform random split into equal parts (sizes differ by at most one).
- :func:`dirichlet`: label skew; each class is spread over the clients in Dirichlet(alpha)
  proportions (Hsu et al. 2019).
- :func:`shards`: sort by label, cut into ``n_clients * k`` equal shards, deal ``k`` to each
  client (McMahan et al. 2017).
"""

from __future__ import annotations

import numbers

import numpy as np

from robustlr.data.base import ImageDataset
from robustlr.errors import DataError

Seed = int | np.random.Generator


def _rng(seed: Seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise DataError(f"seed must be an int or a numpy.random.Generator, got {seed!r}")
    return np.random.default_rng(int(seed))


def _count(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _labels(labels) -> np.ndarray:
    if hasattr(labels, "detach"):  # torch tensor
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DataError(f"labels must be one-dimensional, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels must be integers, got dtype {y.dtype}")
    return y.astype(np.int64, copy=False)


def _sorted_parts(parts) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def natural(dataset: ImageDataset) -> list[np.ndarray]:
    """The dataset's own clients (FEMNIST: one per writer), as sorted int64 index arrays.

    Raises:
        ValueError: if the dataset has no natural partition (``train_writers`` is None).
    """
    if dataset.train_writers is None:
        raise DataError(
            f"dataset {dataset.name!r} has no natural partition (train_writers is None); "
            "use iid, dirichlet or shards"
        )
    return _sorted_parts(dataset.train_writers)


def iid(n_samples: int, n_clients: int, seed: Seed, labels=None) -> list[np.ndarray]:
    """Equal uniform random split of ``range(n_samples)`` among ``n_clients``.

    No sample is dropped: the ``n_samples % n_clients`` leftovers go one each to the first
    clients, so sizes differ by at most one and the parts cover every index exactly once.

    With ``labels``, the split is also stratified: every client gets each class's share up to
    one sample. This is closer to the paper's published code, whose iid split gives every agent
    the same number of images of every class (and drops what does not divide evenly, which
    does not happen for Fashion-MNIST with 10 agents).

    Example:
        >>> [p.tolist() for p in iid(5, 2, seed=0)]
        [[1, 2, 3], [0, 4]]
    """
    n_samples = _count("n_samples", n_samples, 0)
    n_clients = _count("n_clients", n_clients)
    if n_clients > n_samples:
        raise DataError(f"n_clients ({n_clients}) must not exceed n_samples ({n_samples})")
    rng = _rng(seed)
    if labels is None:
        order = rng.permutation(n_samples)
    else:
        y = _labels(labels)
        if y.shape[0] != n_samples:
            raise DataError(f"labels has {y.shape[0]} entries, n_samples is {n_samples}")
        shuffled = rng.permutation(n_samples)
        order = shuffled[np.argsort(y[shuffled], kind="stable")]  # by class, random within
    # deal the order round-robin: client c gets positions c, c + n_clients, ...
    return _sorted_parts(order[c::n_clients] for c in range(n_clients))


def dirichlet(
    labels,
    n_clients: int,
    alpha: float,
    seed: Seed,
    min_size: int = 10,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Label-skewed split: each class's samples are divided among the clients in proportions
    drawn from Dirichlet(alpha, ..., alpha).

    Small ``alpha`` (0.1) gives each client few classes; large ``alpha`` (100) approaches an
    iid split. Every sample goes to exactly one client. Draws in which some client gets fewer
    than ``min_size`` samples are rejected and redrawn, as in NIID-Bench (Li et al. 2022),
    whose default of 10 we keep.

    Args:
        labels: (n_samples,) integer labels of the training split.
        n_clients: number of clients (>= 1).
        alpha: concentration, > 0.
        seed: an int or a numpy Generator.
        min_size: fewest samples any client may get (>= 0); needs
            ``n_clients * min_size <= n_samples``.
        max_tries: draws before giving up.

    Raises:
        ValueError: on bad parameters, or when ``max_tries`` draws all leave some client with
            fewer than ``min_size`` samples (raise alpha or lower min_size).

    How it differs from flwr-datasets' ``DirichletPartitioner`` (read from its source, flwr-datasets
    of the Flower repository at commit 02411f7; not installed here, so no test compares them): the
    same seed gives different splits, and the two are not the same distribution either.

    - Balancing: Flower's default ``self_balancing=True`` gives a client that already holds more
      than the average number of samples no share of the later classes (their proportions are
      renormalised over the others). We never rebalance (Flower with ``self_balancing=False``).
    - Cuts: Flower truncates the cumulative shares (``astype(int)``), we round them to the nearest
      integer; a class's samples go to the clients in dataset order there, in a random order here
      (we permute each class before cutting).
    - Classes are taken in order of first appearance there, in sorted order here; the random draws
      (one Dirichlet vector per class there; a permutation and a Dirichlet vector per class here)
      come from different streams.
    - Minimum size: Flower redraws at most 10 more times, then raises; we redraw up to
      ``max_tries`` (1,000) times. Flower also shuffles the indices inside each client (order only).
    """
    y = _labels(labels)
    n_samples = y.shape[0]
    n_clients = _count("n_clients", n_clients)
    min_size = _count("min_size", min_size, 0)
    max_tries = _count("max_tries", max_tries)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not np.isfinite(alpha) or alpha <= 0:
        raise DataError(f"alpha must be a finite number > 0, got {alpha!r}")
    if n_clients > n_samples:
        raise DataError(f"n_clients ({n_clients}) must not exceed n_samples ({n_samples})")
    if n_clients * min_size > n_samples:
        raise DataError(
            f"n_clients * min_size = {n_clients} * {min_size} exceeds n_samples ({n_samples}); lower min_size"
        )
    rng = _rng(seed)
    classes = np.unique(y)
    by_class = [np.flatnonzero(y == c) for c in classes]
    for _ in range(max_tries):
        owner = np.empty(n_samples, dtype=np.int64)
        for idx in by_class:
            idx = rng.permutation(idx)
            share = rng.dirichlet(np.full(n_clients, float(alpha)))
            cuts = np.rint(np.cumsum(share)[:-1] * len(idx)).astype(np.int64)
            counts = np.diff(np.concatenate([[0], cuts, [len(idx)]]))
            owner[idx] = np.repeat(np.arange(n_clients), counts)
        sizes = np.bincount(owner, minlength=n_clients)
        if sizes.min() >= min_size:
            order = np.argsort(owner, kind="stable")  # indices ascending within each client
            return [part.astype(np.int64) for part in np.split(order, np.cumsum(sizes)[:-1])]
    raise DataError(
        f"no Dirichlet(alpha={alpha}) draw in {max_tries} tries gave every one of {n_clients} clients "
        f"at least min_size={min_size} samples; raise alpha, lower min_size or use fewer clients"
    )


def shards(labels, n_clients: int, classes_per_client: int, seed: Seed) -> list[np.ndarray]:
    """Pathological non-iid split of McMahan et al. (2017): sort the samples by label, cut the
    sorted list into ``n_clients * classes_per_client`` shards of equal size (sizes differ by at
    most one), and give each client ``classes_per_client`` shards at random.

    A client therefore sees about ``classes_per_client`` classes: fewer when two of its shards
    come from the same class, more when a shard straddles a class boundary. Samples of one
    class are shuffled before cutting, so a shard is a random subset of its class. Every sample
    goes to exactly one client.

    Raises:
        ValueError: if a parameter is out of range or there are fewer samples than shards.
    """
    y = _labels(labels)
    n_samples = y.shape[0]
    n_clients = _count("n_clients", n_clients)
    k = _count("classes_per_client", classes_per_client)
    n_shards = n_clients * k
    if n_shards > n_samples:
        raise DataError(
            f"n_clients * classes_per_client = {n_clients} * {k} = {n_shards} shards exceed n_samples ({n_samples})"
        )
    rng = _rng(seed)
    shuffled = rng.permutation(n_samples)
    order = shuffled[np.argsort(y[shuffled], kind="stable")]
    pieces = np.array_split(order, n_shards)
    dealt = rng.permutation(n_shards).reshape(n_clients, k)
    return _sorted_parts(np.concatenate([pieces[s] for s in row]) for row in dealt)


def label_counts(parts, labels, num_classes: int) -> np.ndarray:
    """The (clients, classes) table of how many samples of each class each client holds.

    Example:
        >>> label_counts([np.array([0, 1]), np.array([2])], np.array([1, 1, 0]), 2).tolist()
        [[0, 2], [1, 0]]
    """
    y = _labels(labels)
    num_classes = _count("num_classes", num_classes)
    out = np.zeros((len(parts), num_classes), dtype=np.int64)
    for i, part in enumerate(parts):
        got = np.bincount(y[np.asarray(part, dtype=np.int64)], minlength=num_classes)
        if got.shape[0] > num_classes:
            raise DataError(f"client {i} holds a label >= num_classes ({num_classes})")
        out[i] = got
    return out
