"""FreqFed (Fereidooni et al., NDSS 2024): the local models' low frequencies, clustered.

Needs scikit-learn (``pip install 'robustlr[flame]'``, the clustering extra) for its HDBSCAN,
imported at the first call.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import torch
from torch import Tensor

from .base import AggregationRule, RoundInputs
from .flame import _hdbscan_class, cosine_distances
from .robust import _check_int, _combine, _rows_telemetry

__all__ = ["FreqFed", "dct_matrix", "low_frequencies"]


def dct_matrix(n: int, rows: int | None = None) -> Tensor:
    r"""The orthonormal DCT-II basis of length ``n``: float64 ``(rows, n)`` (``rows`` defaults to
    ``n``; fewer rows give only the lowest frequencies),

    .. math:: C_{kj} = s_k \cos\frac{\pi (2j + 1) k}{2n}, \quad s_0 = \sqrt{1/n},\ s_{k>0} = \sqrt{2/n}

    (scipy's ``dct(type=2, norm="ortho")``: ``C @ x``).

    >>> C = dct_matrix(4)
    >>> torch.allclose(C @ C.T, torch.eye(4, dtype=torch.float64))
    True
    >>> x = dct_matrix(4) @ torch.ones(4, dtype=torch.float64)    # a constant has only frequency 0
    >>> torch.allclose(x, torch.tensor([2.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    True
    """
    rows = n if rows is None else rows
    k = torch.arange(rows, dtype=torch.float64).unsqueeze(1)
    j = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    basis = torch.cos(math.pi * (2 * j + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis


def low_frequencies(matrices: Tensor) -> Tensor:
    r"""FreqFed's low-frequency features of each ``(M, N)`` matrix in ``matrices`` (``(n, M, N)``):
    the orthonormal 2-D DCT-II :math:`V = C_M W C_N^\top`, and of it the entries with
    ``i < max(1, M // 2)``, ``j < max(1, N // 2)`` and ``i + j <= (M + N) // 4`` (the upper-left
    triangle), flattened row by row: float64 ``(n, K)``.

    >>> W = torch.zeros(1, 4, 4, dtype=torch.float64); W[0] = 1.0
    >>> low_frequencies(W)          # i < 2, j < 2, i + j <= 2: (0,0), (0,1), (1,0), (1,1); only (0,0) is not 0
    tensor([[4., 0., 0., 0.]], dtype=torch.float64)
    """
    _, m, n = matrices.shape
    top, left = max(1, m // 2), max(1, n // 2)
    v = dct_matrix(m, top).to(matrices.device) @ matrices.to(torch.float64) @ dct_matrix(n, left).to(matrices.device).T
    i = torch.arange(top).unsqueeze(1)
    j = torch.arange(left).unsqueeze(0)
    keep = (i + j <= (m + n) // 4).to(matrices.device)
    return v[:, keep]


class FreqFed(AggregationRule):
    r"""FreqFed (Fereidooni, Pegoraro, Rieger, Dmitrienko, Sadeghi, "FreqFed: A Frequency
    Analysis-Based Approach for Mitigating Poisoning Attacks in Federated Learning", NDSS 2024).

    Threat model: a minority of agents send poisoned models (backdoor or untargeted); the server
    holds the global model and the round's updates, no data. The steps of one call:

    1. **Transform.** Each agent's local model of the output layer, :math:`W_k = G + \Delta^k`
       restricted to the output layer's ``(M, N)`` weight matrix, goes to the frequency domain
       with the orthonormal 2-D DCT-II, and its low frequencies are kept: the upper-left triangle
       ``i < M/2, j < N/2, i + j <= (M + N)/4`` (:func:`low_frequencies`).
    2. **Cluster.** Cosine distances between the agents' low-frequency vectors, clustered by
       HDBSCAN on the precomputed matrix with ``min_cluster_size = n // 2 + 1`` (at least 2),
       ``min_samples = 1``, ``allow_single_cluster = True``.
    3. **Aggregate** the updates of the largest cluster (HDBSCAN's noise points are never a
       cluster), weighted by the agents' sizes (FedAvg; equal without ``weights``). If every
       agent is noise, all are admitted (telemetry ``all_noise``); a round of one agent admits it.

    **Where the defaults come from.** The paper's text was not available to us; its abstract
    and Figure 1 give the pipeline (local weights -> DCT -> low frequencies -> HDBSCAN on cosine
    distances -> FedAvg of the largest cluster). The choices it leaves open follow
    secretflow's ``agg_freqfed.py`` (the one reimplementation merged into a maintained framework,
    whose docstring calls the output layer's weight matrix the paper's matrix V): the output
    layer's weights, the 2-D orthonormal DCT-II, the triangle above, a sample-weighted mean; and
    HDBSCAN's ``n // 2 + 1`` / ``min_samples 1`` / single cluster allowed as most other
    reimplementations (and FLAME, by the same group) set it. Reimplementations differ on every one of
    these (some transform the whole model, some the updates, some keep the first half of a 1-D DCT).

    Composes with RLR: ``RobustLR(FreqFed(...))`` votes on all updates' signs and flips the
    cluster's mean where the vote is weak.

    Args:
        weight: the output layer's coordinates among the updates' columns (row-major), e.g.
            ``ParamLayout.output_layer(num_classes).weight``.
        shape: its ``(M, N)`` (classes x inputs).
        min_cluster_size: overrides ``n // 2 + 1``, an integer >= 2.

    Telemetry: ``admitted_rows`` / ``rejected_rows`` (``_agents`` with ``agent_ids``),
    ``all_noise``, ``n_clusters``, ``min_cluster_size`` (as used), ``n_features`` (K).

    Example (three agents move the output layer one way, the fourth against them):
        >>> G = torch.zeros(4)
        >>> U = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.1, 0.9, 1.0, 1.0], [0.9, 1.0, 1.1, 1.0], [-1.0, 1.0, -1.0, 1.0]])
        >>> rule = FreqFed(weight=slice(0, 4), shape=(2, 2))
        >>> rule.set_round_inputs(RoundInputs(global_params=G))
        >>> rule(U)
        tensor([1.0000, 0.9667, 1.0333, 1.0000])
        >>> rule.telemetry["rejected_rows"]
        [3]
    """

    def __init__(self, weight: slice, shape: tuple[int, int], min_cluster_size: int | None = None) -> None:
        super().__init__()
        if not isinstance(weight, slice) or weight.step not in (None, 1) or weight.start is None or weight.stop is None:
            raise ValueError(f"weight must be a slice(start, stop) of the output layer's coordinates, got {weight!r}; "
                             "e.g. ParamLayout.from_module(model).output_layer(num_classes).weight")
        if len(shape) != 2 or shape[0] * shape[1] != weight.stop - weight.start or min(shape) < 1:
            raise ValueError(f"shape {tuple(shape)} does not fit the output layer's {weight.stop - weight.start} "
                             f"coordinates: pass its (classes, inputs), e.g. ParamLayout.output_layer(...).shape")
        self.weight = weight
        self.shape = (int(shape[0]), int(shape[1]))
        if min_cluster_size is not None:
            min_cluster_size = _check_int("min_cluster_size", min_cluster_size, 2,
                                          "FreqFed(..., min_cluster_size=6), or None for n // 2 + 1")
        self.min_cluster_size = min_cluster_size
        self._global: Tensor | None = None

    @property
    def round_inputs(self) -> frozenset[str]:
        return frozenset({"global_params"})

    def set_round_inputs(self, inputs: RoundInputs) -> None:
        """Takes ``inputs.global_params``: FreqFed transforms the local models, global + update."""
        g = inputs.global_params
        self._global = None if g is None else g.detach().clone()

    def aggregate_validated(self, updates: Tensor, weights: Tensor | None,
                            agent_ids: list[Hashable] | None) -> Tensor:
        n, n_params = updates.shape
        if self.weight.stop > n_params:
            raise ValueError(f"FreqFed's output layer ends at coordinate {self.weight.stop} but the updates have "
                             f"{n_params} columns: build it from the same model's layout")
        g = self._global
        if g is None:
            raise ValueError("FreqFed needs the round's global model: call "
                             "rule.set_round_inputs(RoundInputs(global_params=w)) before aggregating (the simulator "
                             "and the Flower ServerApp do)")
        if g.ndim != 1 or g.shape[0] != n_params:
            raise ValueError(f"the global model given has shape {tuple(g.shape)} but the updates have {n_params} "
                             f"columns: pass the global vector over the same coordinates")
        mcs = self.min_cluster_size if self.min_cluster_size is not None else max(2, n // 2 + 1)
        models = g[self.weight].to(device=updates.device, dtype=torch.float64) + updates[:, self.weight].to(torch.float64)
        features = low_frequencies(models.reshape(n, *self.shape))
        all_noise, n_clusters = False, 0
        if n == 1:
            admitted = [0]
        else:
            labels = [int(x) for x in _hdbscan_class()(min_cluster_size=mcs, min_samples=1, metric="precomputed",
                                                      allow_single_cluster=True, copy=True)
                      .fit_predict(cosine_distances(features).cpu().numpy())]
            clusters = sorted({x for x in labels if x >= 0})
            n_clusters = len(clusters)
            if clusters:
                majority = max(clusters, key=lambda c: (labels.count(c), -c))
                admitted = [k for k in range(n) if labels[k] == majority]
            else:
                all_noise = True
                admitted = list(range(n))
        admitted_set = set(admitted)
        rejected = [k for k in range(n) if k not in admitted_set]
        coef = torch.zeros(n, dtype=torch.float64)
        w = torch.ones(n, dtype=torch.float64) if weights is None else weights.detach().cpu().to(torch.float64)
        idx = torch.tensor(admitted)
        coef[idx] = w[idx]
        out = _combine(updates, coef, float(coef.sum()))
        telemetry: dict[str, Any] = {}
        telemetry.update(_rows_telemetry("admitted", admitted, agent_ids))
        telemetry.update(_rows_telemetry("rejected", rejected, agent_ids))
        telemetry.update(all_noise=all_noise, n_clusters=n_clusters, min_cluster_size=mcs,
                         n_features=int(features.shape[1]))
        self.telemetry = telemetry
        return out

    def __repr__(self) -> str:
        mcs = "" if self.min_cluster_size is None else f", min_cluster_size={self.min_cluster_size}"
        return f"FreqFed(weight={self.weight!r}, shape={self.shape!r}{mcs})"
