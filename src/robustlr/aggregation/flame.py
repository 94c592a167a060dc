"""FLAME (Nguyen et al., USENIX Security 2022): clustering, adaptive clipping and noise.

Needs scikit-learn (``pip install 'robustlr[flame]'``) for its HDBSCAN, imported at the first call.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import torch
from torch import Tensor

from .base import AggregationRule
from .clip import check_generator, clip_scale, gaussian_noise
from .robust import (
    _check_int,
    _check_positive_float,
    _combine,
    _rows_telemetry,
    gram_matrix,
)

__all__ = ["Flame", "cosine_distances"]


def cosine_distances(updates: Tensor) -> Tensor:
    """``1 - cos(u_i, u_j)`` between the rows, float64 ``(n, n)``, from the Gram matrix.

    A zero row has no direction: its distance to every other row is 1. The diagonal is 0 and
    every entry lies in ``[0, 2]``.

    >>> cosine_distances(torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]))
    tensor([[0., 0., 1., 2.],
            [0., 0., 1., 2.],
            [1., 1., 0., 1.],
            [2., 2., 1., 0.]], dtype=torch.float64)
    """
    return _cosine_from_gram(gram_matrix(updates))


def _cosine_from_gram(gram: Tensor) -> Tensor:
    norms = gram.diagonal().clamp(min=0).sqrt()
    denom = norms.unsqueeze(0) * norms.unsqueeze(1)
    cos = torch.where(denom > 0, gram / denom.clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(gram))
    dist = (1.0 - cos).clamp_(0.0, 2.0)
    dist.fill_diagonal_(0.0)
    return dist


def _hdbscan_class() -> Any:
    from robustlr._optional import require

    return require("sklearn.cluster", extra="flame",
                   feature="Flame (it clusters the updates with scikit-learn >= 1.3's HDBSCAN)").HDBSCAN


class Flame(AggregationRule):
    r"""FLAME (Nguyen et al., "FLAME: Taming backdoors in federated learning", USENIX Security 2022).

    The steps of one call, in this order (so that, given the generator's state, the result is
    deterministic):

    1. **Cluster.** Pairwise cosine distances ``c_ij = 1 - cos(Delta^i, Delta^j)`` (from the
       float64 Gram matrix; a zero update is at distance 1 from all others), clustered by
       HDBSCAN (scikit-learn's ``sklearn.cluster.HDBSCAN``) on the precomputed matrix with
       ``min_cluster_size = n // 2 + 1`` (at least 2), ``min_samples = 1`` and
       ``allow_single_cluster = True`` (with a minimum cluster size above ``n / 2`` there is at
       most one cluster, which HDBSCAN only reports with that flag, as FLAME's code sets it).
       The admitted agents are the largest cluster (ties: the lower label); the rest, HDBSCAN's
       noise points included, are rejected. If HDBSCAN labels every update noise, all are
       admitted (telemetry ``all_noise``). A round of one agent admits it without clustering.
    2. **Clip.** ``S = median_k ||Delta^k||_2`` over *all* the round's updates (the mean of the
       middle two for even ``n``, as ``numpy.median``); every admitted update is scaled to norm
       at most ``S``: ``Delta^k min(1, S / ||Delta^k||_2)``.
    3. **Average** the clipped admitted updates, unweighted (FLAME's plain mean; ``weights``
       are ignored):

       .. math:: g(\Delta) = \frac{1}{|A|} \sum_{k \in A} \Delta^k \min\Big(1, \frac{S}{\|\Delta^k\|_2}\Big)
                 + \mathcal{N}\big(0, (\lambda S)^2 I\big)

    4. **Noise.** Add ``N(0, (lambda S)^2)`` per coordinate, ``lambda = noise_lambda`` (the
       paper's 0.001 for image classification, 0.01 for word prediction). The noise is
       ``n_params`` numbers drawn on the CPU from ``generator`` (torch's global CPU generator
       if None), in float32 (float64 for float64 updates), exactly once per call whenever
       ``noise_lambda > 0`` (also when ``S = 0``), then moved to the updates' device, as
       :class:`ClipAndNoise` draws its noise. ``noise_lambda = 0`` draws nothing.

    The clustering and the clipping see the updates ``W_i - G`` (the paper writes them as
    distances of local models ``W_i`` to the global ``G``; cosine distances between models
    and between updates differ, and FLAME's analysis is of the updates).

    Args:
        noise_lambda: ``lambda``, the noise level relative to ``S``, >= 0.
        min_cluster_size: overrides ``n // 2 + 1``, an integer >= 2 (HDBSCAN's minimum).
        generator: a CPU ``torch.Generator`` for the noise.

    Telemetry: ``admitted_rows`` and ``rejected_rows`` (``admitted_agents`` and
    ``rejected_agents`` with ``agent_ids``), ``clip_bound`` (``S``), ``noise_std``
    (``lambda * S``), ``n_clipped`` (admitted updates scaled down), ``all_noise``,
    ``min_cluster_size`` (as used).

    Example:
        >>> import torch
        >>> U = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.5, 0.0], [1.0, 0.0], [-5.0, 5.0]])
        >>> flame = Flame(noise_lambda=0.0)
        >>> flame(U)       # S = 1, the median norm; the mean of 1, 1 (clipped from 2), 0.5, 1
        tensor([0.8750, 0.0000])
        >>> flame.telemetry["admitted_rows"], flame.telemetry["rejected_rows"]
        ([0, 1, 2, 3], [4])
    """

    def __init__(
        self,
        noise_lambda: float = 0.001,
        min_cluster_size: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.noise_lambda = _check_positive_float("noise_lambda", noise_lambda, allow_zero=True)
        if min_cluster_size is not None:
            min_cluster_size = _check_int(
                "min_cluster_size", min_cluster_size, 2, "Flame(min_cluster_size=6), or None for n // 2 + 1"
            )
        self.min_cluster_size = min_cluster_size
        self.generator = check_generator(generator)

    def cluster_size(self, n_agents: int) -> int:
        """HDBSCAN's ``min_cluster_size`` for a round of ``n_agents`` agents."""
        return self.min_cluster_size if self.min_cluster_size is not None else max(2, n_agents // 2 + 1)

    def aggregate_validated(
        self, updates: Tensor, weights: Tensor | None, agent_ids: list[Hashable] | None
    ) -> Tensor:
        n, n_params = updates.shape
        gram = gram_matrix(updates).cpu()
        mcs = self.cluster_size(n)

        # 1. cluster
        all_noise = False
        if n == 1:
            admitted = [0]
        else:
            distances = _cosine_from_gram(gram).numpy()
            hdbscan = _hdbscan_class()(
                min_cluster_size=mcs, min_samples=1, metric="precomputed", allow_single_cluster=True, copy=True
            )
            labels = [int(x) for x in hdbscan.fit_predict(distances)]
            clusters = sorted({x for x in labels if x >= 0})
            if clusters:
                majority = max(clusters, key=lambda c: (labels.count(c), -c))
                admitted = [k for k in range(n) if labels[k] == majority]
            else:
                all_noise = True
                admitted = list(range(n))
        admitted_set = set(admitted)
        rejected = [k for k in range(n) if k not in admitted_set]

        # 2. clip to the median norm of all updates
        norms = gram.diagonal().clamp(min=0).sqrt()
        ordered = torch.sort(norms).values
        median = float(ordered[n // 2]) if n % 2 else 0.5 * (float(ordered[n // 2 - 1]) + float(ordered[n // 2]))
        idx = torch.tensor(admitted)
        coef = torch.zeros(n, dtype=torch.float64)
        n_clipped = int((norms[idx] > median).sum())
        if median > 0:
            scale, _ = clip_scale(updates, median, norms)
            coef[idx] = 1.0 if scale is None else scale.detach().cpu().to(torch.float64)[idx]
        # else every admitted update is clipped to 0 (norm bound S = 0)

        # 3. the mean of the clipped admitted updates
        out = _combine(updates, coef, float(len(admitted)))

        # 4. noise
        std = self.noise_lambda * median
        if self.noise_lambda > 0:
            out = out + gaussian_noise(out, std, self.generator)

        telemetry: dict[str, Any] = {}
        telemetry.update(_rows_telemetry("admitted", admitted, agent_ids))
        telemetry.update(_rows_telemetry("rejected", rejected, agent_ids))
        telemetry.update(
            clip_bound=median, noise_std=std, n_clipped=n_clipped, all_noise=all_noise, min_cluster_size=mcs
        )
        self.telemetry = telemetry
        return out

    def __repr__(self) -> str:
        mcs = "" if self.min_cluster_size is None else f", min_cluster_size={self.min_cluster_size}"
        return f"Flame(noise_lambda={self.noise_lambda!r}{mcs})"

