"""SignGuard (Xu et al., ICDCS 2022): a norm filter, sign-statistics clustering, median clipping.

Needs scikit-learn (``pip install 'robustlr[flame]'``, the clustering extra) for its MeanShift,
imported at the first call.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable
from typing import Any

import torch
from torch import Tensor

from .base import AggregationRule
from .clip import check_generator
from .robust import _check_positive_float, _combine, _rows_telemetry

__all__ = ["SignGuard", "sign_features"]


def sign_features(block: Tensor) -> Tensor:
    """SignGuard's features of the rows of ``block`` (``(n, d)``): the shares of positive, zero and
    negative coordinates, each divided by its largest value over the rows (+ 1e-8), float64 ``(n, 3)``.

    >>> sign_features(torch.tensor([[1.0, 2.0, -1.0, 0.0], [1.0, -1.0, -1.0, -1.0]]))
    tensor([[1.0000, 1.0000, 0.3333],
            [0.5000, 0.0000, 1.0000]], dtype=torch.float64)
    """
    d = block.shape[1]
    shares = torch.stack([(block > 0).sum(1), (block == 0).sum(1), (block < 0).sum(1)], dim=1).to(torch.float64) / d
    return shares / (shares.max(dim=0).values + 1e-8)


def _meanshift() -> Any:
    from robustlr._optional import require

    return require("sklearn.cluster", extra="flame",
                   feature="SignGuard (it clusters the updates' sign statistics with scikit-learn's MeanShift)")


class SignGuard(AggregationRule):
    r"""SignGuard (Xu, Huang, Song, Lan, "Byzantine-robust Federated Learning through Collaborative
    Malicious Gradient Filtering", ICDCS 2022; Algorithm 1, the plain variant: sign statistics only,
    not SignGuard-Sim or -Dist), with the defaults of the authors' code (``aggregators/signguard.py``
    of their repository).

    Threat model: a minority of agents send arbitrary updates (Byzantine or backdoor); the server
    holds nothing but the round's updates. The steps of one call, in this order:

    1. **Norm filter.** With ``m = median_k ||Delta^k||_2`` (the mean of the middle two for even
       ``n``, as the authors' ``np.median``), the agents with ``lower m < ||Delta^k|| < upper m``
       pass (``lower = 0.1``, ``upper = 3.0``, the paper's L and R).
    2. **Sign clustering.** A window of ``d = max(1, floor(coord_fraction * n_params))`` consecutive
       coordinates (``coord_fraction = 0.1``, the authors' ``0.1 * num_param``) starting at an
       offset drawn uniformly from ``[0, n_params - d)`` (from ``generator``; offset 0 when
       ``d = n_params``). Each agent's features are the shares of its positive, zero and negative
       coordinates in the window, each divided by its largest value over the agents
       (:func:`sign_features`). scikit-learn's ``MeanShift(bandwidth, bin_seeding=True,
       cluster_all=False)`` clusters them, with ``bandwidth = estimate_bandwidth(features,
       quantile=0.5)`` on at most 50 of them (the authors' settings; ``random_state = 0``). The
       largest cluster passes (ties: the lower label). A round where the bandwidth is 0 (every
       agent has the same features) or where MeanShift leaves every agent an orphan passes
       everyone (telemetry ``one_cluster``).
    3. **Admit** the agents that passed both filters.
    4. **Clip and average.** With ``S`` the *lower* median of all the round's norms (the authors'
       ``torch.median``), each admitted update is scaled to norm at most ``S`` and the admitted
       updates are averaged, unweighted (``weights`` are ignored, as in the authors' code):

       .. math:: g(\Delta) = \frac{1}{|A|} \sum_{k \in A} \Delta^k \min\Big(1, \frac{S}{\|\Delta^k\|_2}\Big)

       A round with nobody admitted returns zeros (the authors' mean of nothing is NaN): the
       global model stays where it is.

    The comparison with RLR: both read the updates' signs, but SignGuard uses them to judge
    *agents* (an agent whose sign statistics differ from the majority's is dropped whole), RLR to
    judge *coordinates* (each coordinate's step is reversed where too few agents agree on its
    sign). A backdoor whose update has ordinary sign statistics passes SignGuard's filter; RLR
    does not ask who sent it.

    Args:
        lower: the norm filter's lower bound relative to the median norm, ``0 <= lower < upper``.
        upper: its upper bound relative to the median norm.
        coord_fraction: the share of coordinates whose signs are read, in (0, 1].
        generator: a CPU ``torch.Generator`` for the window's offset (torch's global one if None).

    Telemetry: ``admitted_rows`` / ``rejected_rows`` (``_agents`` with ``agent_ids``),
    ``norm_rejected_rows``, ``sign_rejected_rows``, ``clip_bound`` (``S``), ``median_norm``
    (``m``), ``window`` (offset, length), ``bandwidth``, ``n_clusters``, ``one_cluster``.

    Example (the last update is 19 times the median norm: the norm filter drops it; every update
    has the same signs, so the sign filter passes everyone):
        >>> U = torch.tensor([[1.0, 1.0], [1.0, 2.0], [2.0, 1.0], [1.0, 1.0], [3.0, 3.0], [30.0, 30.0]])
        >>> sg = SignGuard(coord_fraction=1.0)
        >>> sg(U)          # S = sqrt 5; (3, 3) is clipped to (1.58, 1.58); the mean of the first five
        tensor([1.3162, 1.3162])
        >>> sg.telemetry["admitted_rows"], sg.telemetry["norm_rejected_rows"], sg.telemetry["one_cluster"]
        ([0, 1, 2, 3, 4], [5], True)
    """

    def __init__(self, lower: float = 0.1, upper: float = 3.0, coord_fraction: float = 0.1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.lower = _check_positive_float("lower", lower, allow_zero=True)
        self.upper = _check_positive_float("upper", upper)
        if not self.lower < self.upper:
            raise ValueError(f"SignGuard needs lower < upper, got lower={lower!r}, upper={upper!r}; e.g. "
                             "SignGuard(lower=0.1, upper=3.0), the paper's bounds")
        self.coord_fraction = _check_positive_float("coord_fraction", coord_fraction)
        if self.coord_fraction > 1:
            raise ValueError(f"coord_fraction must be in (0, 1], got {coord_fraction!r}; e.g. 0.1, the authors' share")
        self.generator = check_generator(generator)

    def window(self, n_params: int) -> tuple[int, int]:
        """The (offset, length) of this call's window of coordinates: draws from the generator."""
        d = max(1, int(self.coord_fraction * n_params))
        span = n_params - d
        start = int(torch.randint(0, span, (1,), generator=self.generator)) if span > 0 else 0
        return start, d

    def aggregate_validated(self, updates: Tensor, weights: Tensor | None,
                            agent_ids: list[Hashable] | None) -> Tensor:
        import numpy as np

        n, n_params = updates.shape
        norms = torch.linalg.vector_norm(updates.to(torch.float64), dim=1).cpu()
        ordered = torch.sort(norms).values
        median = float(ordered[n // 2]) if n % 2 else 0.5 * (float(ordered[n // 2 - 1]) + float(ordered[n // 2]))
        lower_median = float(ordered[(n - 1) // 2])

        # 1. the norm filter
        by_norm = [k for k in range(n) if self.lower * median < float(norms[k]) < self.upper * median]

        # 2. the sign statistics of a window, clustered
        start, d = self.window(n_params)
        features = sign_features(updates[:, start:start + d]).cpu().numpy()
        cluster = _meanshift()
        bandwidth = float(cluster.estimate_bandwidth(features, quantile=0.5, n_samples=min(50, n), random_state=0)) \
            if n > 1 else 0.0
        one_cluster = True
        n_clusters = 1
        by_sign = list(range(n))
        if bandwidth > 0:
            with warnings.catch_warnings():
                # with few agents binning often finds no bin; MeanShift then seeds from the points themselves
                warnings.filterwarnings("ignore", message="Binning data failed", category=UserWarning)
                labels = cluster.MeanShift(bandwidth=bandwidth, bin_seeding=True,
                                           cluster_all=False).fit(features).labels_
            found = sorted(int(x) for x in np.unique(labels) if x >= 0)
            n_clusters = len(found)
            if found:
                one_cluster = False
                counts = [int((labels == c).sum()) for c in found]
                majority = found[counts.index(max(counts))]
                by_sign = [k for k in range(n) if labels[k] == majority]

        # 3. admitted: both filters
        norm_set, sign_set = set(by_norm), set(by_sign)
        admitted = [k for k in by_norm if k in sign_set]
        admitted_set = set(admitted)
        rejected = [k for k in range(n) if k not in admitted_set]

        # 4. clip to the lower median norm and average
        coef = torch.zeros(n, dtype=torch.float64)
        for k in admitted:
            coef[k] = 1.0 if norms[k] <= lower_median else lower_median / float(norms[k])
        out = _combine(updates, coef, float(max(1, len(admitted))))

        telemetry: dict[str, Any] = {}
        telemetry.update(_rows_telemetry("admitted", admitted, agent_ids))
        telemetry.update(_rows_telemetry("rejected", rejected, agent_ids))
        telemetry.update(norm_rejected_rows=[k for k in range(n) if k not in norm_set],
                         sign_rejected_rows=[k for k in range(n) if k not in sign_set],
                         clip_bound=lower_median, median_norm=median, window=(start, d), bandwidth=bandwidth,
                         n_clusters=n_clusters, one_cluster=one_cluster)
        self.telemetry = telemetry
        return out

    def __repr__(self) -> str:
        return f"SignGuard(lower={self.lower!r}, upper={self.upper!r}, coord_fraction={self.coord_fraction!r})"
