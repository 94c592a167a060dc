"""Our robust rules give Flower's aggregation functions' results on the same inputs.

Flower's functions in ``flwr.server.strategy.aggregate`` take a list of ``(list of numpy arrays,
num_examples)`` holding *model weights*; ours take the stacked updates. Each client's weights
are the global weights plus its update, split into two layers; we compare Flower's result with
the global weights plus our aggregate (float64, random inputs, a few seeds, n = 7..12). Adding
the global weights back costs a rounding or two, hence the tolerance of 1e-12 instead of equality.

Where the definitions differ:

* TrimmedMean: Flower cuts ``int(beta * n)`` per side, we ``floor(round(beta * n, 9))``: equal
  except where ``beta * n`` is an integer that binary floating point lands just below (0.29 *
  100); the betas here avoid that, and one test pins the difference.
* Krum: Flower uses ``max(1, n - f - 2)`` neighbours and allows ``n <= 2f + 2``; we require
  ``n > 2f + 2``, where the two agree. Flower's multi-Krum (``to_keep = m``) is weighted by
  ``num_examples``, so we pass the same sizes as ``weights``; its ``to_keep = 0`` is our ``m = 1``.
* Bulyan: Flower's ``aggregate_bulyan`` takes the selection rule; with ``aggregate_krum`` and
  ``to_keep = 0`` it is ours (``max(1, |R| - f - 2)`` neighbours in the selection, numpy's median).
  Both are unweighted.
"""

import numpy as np
import pytest
import torch

pytest.importorskip("flwr", reason="the Flower extra: pip install 'robustlr[flower]'")

from flwr.server.strategy.aggregate import (  # noqa: E402
    aggregate_bulyan,
    aggregate_krum,
    aggregate_median,
    aggregate_trimmed_avg,
)

from robustlr.aggregation import Bulyan, CoordinateMedian, Krum, TrimmedMean  # noqa: E402

N_PARAMS = 300
CASES = [(0, 7), (1, 8), (2, 9), (3, 10), (4, 11), (5, 12)]  # (seed, n)


def _round(seed, n):
    """Global weights, the updates (one outlier among them) and dataset sizes."""
    rng = np.random.default_rng(seed)
    global_w = rng.standard_normal(N_PARAMS)
    updates = 0.1 * rng.standard_normal((n, N_PARAMS))
    updates[n // 2] *= 20.0  # one agent far off, so that the selections are not arbitrary
    sizes = rng.integers(1, 60, size=n)
    return global_w, updates, sizes


def _results(global_w, updates, sizes):
    """Flower's input: per client the two layers of (global + update), and num_examples."""
    out = []
    for update, size in zip(updates, sizes):
        w = global_w + update
        out.append(([w[:200].reshape(10, 20), w[200:]], int(size)))
    return out


def _flat(arrays):
    return torch.from_numpy(np.concatenate([a.ravel() for a in arrays]))


def _check(flower_arrays, global_w, ours):
    torch.testing.assert_close(_flat(flower_arrays), torch.from_numpy(global_w) + ours, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed, n", CASES)
def test_coordinate_median_matches_aggregate_median(seed, n):
    g, U, sizes = _round(seed, n)
    _check(aggregate_median(_results(g, U, sizes)), g, CoordinateMedian()(torch.from_numpy(U)))


@pytest.mark.parametrize("seed, n", CASES)
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.2, 0.25, 0.4, 0.45])
def test_trimmed_mean_matches_aggregate_trimmed_avg(seed, n, beta):
    g, U, sizes = _round(seed, n)
    assert TrimmedMean(beta).n_trimmed(n) == int(beta * n)  # these betas: the same count as Flower
    # both unweighted: Flower ignores num_examples, we ignore weights
    _check(aggregate_trimmed_avg(_results(g, U, sizes), beta), g, TrimmedMean(beta)(torch.from_numpy(U), weights=sizes))


def test_trimmed_mean_count_differs_from_flower_only_by_rounding():
    # 0.29 * 100 = 28.999999999999996: Flower cuts int() of it, 28 per side; we cut 29
    assert int(0.29 * 100) == 28 and TrimmedMean(0.29).n_trimmed(100) == 29


@pytest.mark.parametrize("seed, n", CASES)
def test_krum_matches_aggregate_krum(seed, n):
    g, U, sizes = _round(seed, n)
    Ut = torch.from_numpy(U)
    for f in range(0, (n - 3) // 2 + 1):  # every f with n > 2f + 2, where the neighbour counts agree
        # Krum: Flower's to_keep = 0 returns the selected client's weights themselves
        rule = Krum(f)
        ours = rule(Ut)
        _check(aggregate_krum(_results(g, U, sizes), f, 0), g, ours)
        assert rule.telemetry["selected_rows"][0] != n // 2  # never the outlier
        # multi-Krum: Flower averages the to_keep best, weighted by num_examples
        for m in (1, 3, n - f):
            _check(aggregate_krum(_results(g, U, sizes), f, m), g, Krum(f, m=m)(Ut, weights=sizes))


@pytest.mark.parametrize("seed, n", CASES)
def test_bulyan_matches_aggregate_bulyan(seed, n):
    g, U, sizes = _round(seed, n)
    for f in range(0, (n - 3) // 4 + 1):  # every f with n >= 4f + 3
        flower = aggregate_bulyan(_results(g, U, sizes), f, aggregate_krum, to_keep=0)
        rule = Bulyan(f)
        _check(flower, g, rule(torch.from_numpy(U), weights=sizes))
        assert rule.telemetry["theta"] == n - 2 * f and rule.telemetry["beta"] == n - 4 * f


def test_flower_and_we_both_reject_bulyan_below_4f_plus_3():
    g, U, sizes = _round(0, 10)
    with pytest.raises(ValueError, match="4 \\* num_malicious \\+ 3"):
        aggregate_bulyan(_results(g, U, sizes), 2, aggregate_krum, to_keep=0)
    with pytest.raises(ValueError, match=r"n >= 4f \+ 3"):
        Bulyan(2)(torch.from_numpy(U))
