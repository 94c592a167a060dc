"""Stateless aggregation rules: FedAvg, coordinate-wise median, sign aggregation."""

from __future__ import annotations

import math
from collections.abc import Hashable

import torch
from torch import Tensor

from .base import (
    AggregationRule,
    check_finite_rows,
    overflowed,
    wider,
    column_chunk,
    sign_vote,
)

__all__ = ["FedAvg", "CoordinateMedian", "SignAggregation"]


class FedAvg(AggregationRule):
    r"""Federated averaging: the size-weighted mean of the updates (paper eq. 1).

    .. math:: g(\Delta) = \frac{\sum_k n_k \Delta^k}{\sum_k n_k}

    With ``weights=None`` every ``n_k = 1``, i.e. the plain mean ``sum_k Delta^k / K``.
    Agents with weight 0 take no part. Telemetry: none.

    Example:
        >>> import torch
        >>> U = torch.tensor([[1.0, -2.0, 3.0], [1.0, 2.0, -3.0], [1.0, 2.0, 3.0]])
        >>> FedAvg()(U)
        tensor([1.0000, 0.6667, 1.0000])
        >>> FedAvg()(U, weights=[2, 1, 1])
        tensor([1.0000, 0.0000, 1.5000])
    """

    column_separable = True

    def aggregate_validated(
        self, updates: Tensor, weights: Tensor | None, agent_ids: list[Hashable] | None
    ) -> Tensor:
        self.telemetry = {}
        return self._mean(updates, weights)

    @staticmethod
    def _mean(updates: Tensor, weights: Tensor | None) -> Tensor:
        # Measured on CPU: a reduction over dim 0 is fastest without weights (as fast as
        # updates.mean(0)), a matrix-vector product with them; dividing by the total
        # afterwards keeps small integer examples exact.
        if weights is None:
            out = updates.sum(dim=0).div_(updates.shape[0])
        else:
            out = torch.mv(updates.t(), weights).div_(weights.sum())
        if overflowed(out):
            # finite updates whose sum overflows although their mean is representable (float32 near
            # 1e38, float16 near 6e4): redo it in a wider type, or (float64) weight each row by its
            # share first, so that no partial sum exceeds the largest update
            wide = wider(updates.dtype)
            if wide is not None:
                out = FedAvg._mean(updates.to(wide), None if weights is None else weights.to(wide)).to(updates.dtype)
            else:
                n = updates.shape[0]
                share = (torch.full((n,), 1.0 / n, dtype=updates.dtype, device=updates.device) if weights is None
                         else weights / weights.sum())
                out = torch.mv(updates.t(), share)
        return out

    def aggregate_checking_finite(
        self, updates: Tensor, weights: Tensor | None, agent_ids: list[Hashable] | None
    ) -> Tensor:
        # NaN and inf propagate through the weighted sum, so a finite result proves finite
        # inputs, except in rows of weight 0, which a BLAS may skip: check those directly.
        out = self.aggregate_validated(updates, weights, agent_ids)
        # the sum of the output is non-finite iff an entry is (or the sum overflows, which
        # the exact check then clears); torch.isfinite(out).all() measured 50x slower
        if not math.isfinite(float(out.sum(dtype=torch.float64 if out.dtype == torch.float64 else torch.float32))):
            check_finite_rows(updates)  # names the rows (or passes if only a sum overflowed)
        elif weights is not None:
            zero = (weights == 0).nonzero().flatten()
            if zero.numel():
                stats = torch.zeros(updates.shape[0], dtype=updates.dtype, device=updates.device)
                stats[zero] = updates[zero].sum(dim=1)
                check_finite_rows(updates, stats)
        return out

    def aggregate_row_scaled(self, updates: Tensor, row_scale: Tensor, weights: Tensor | None) -> Tensor:
        """``FedAvg`` of ``updates * row_scale[:, None]`` without materialising that matrix."""
        self.telemetry = {}
        scale = row_scale.to(updates.dtype)
        if weights is None:
            return torch.mv(updates.t(), scale).div_(updates.shape[0])
        return torch.mv(updates.t(), weights * scale).div_(weights.sum())


class CoordinateMedian(AggregationRule):
    r"""Coordinate-wise median of the updates ("comed").

    .. math:: g(\Delta)_i = \operatorname{median}_k \Delta^k_i

    For an even number of agents the median is the **mean of the two middle values**, as in
    ``numpy.median``, or with ``even="lower"`` the lower of the two, as ``torch.median`` (and
    the authors' code) gives. Weights are accepted for a uniform interface but ignored: the
    median is unweighted. Telemetry: none.

    Cost: a partial sort per coordinate; tens of times a plain mean on CPU (see
    ``robustlr bench aggregation``).

    Example:
        >>> import torch
        >>> CoordinateMedian()(torch.tensor([[1.0, 5.0], [3.0, -1.0], [2.0, 0.0]]))
        tensor([2., 0.])
        >>> CoordinateMedian()(torch.tensor([[1.0, 5.0], [4.0, -1.0]]))   # even: mean of the middle two
        tensor([2.5000, 2.0000])
        >>> CoordinateMedian(even="lower")(torch.tensor([[1.0, 5.0], [4.0, -1.0]]))
        tensor([ 1., -1.])
    """

    column_separable = True

    def __init__(self, even: str = "mean") -> None:
        super().__init__()
        if even not in ("mean", "lower"):
            raise ValueError(f"even must be 'mean' (numpy's median) or 'lower' (torch.median's), got {even!r}")
        self.even = even

    def aggregate_validated(
        self, updates: Tensor, weights: Tensor | None, agent_ids: list[Hashable] | None
    ) -> Tensor:
        self.telemetry = {}
        n_agents, n_params = updates.shape
        k = n_agents // 2 + 1  # the k smallest values hold the middle one (two when even)
        out = torch.empty(n_params, dtype=updates.dtype, device=updates.device)
        step = column_chunk(n_agents, updates.device)
        for start in range(0, n_params, step):
            block = updates[:, start : start + step]
            smallest = torch.topk(block, k, dim=0, largest=False, sorted=True).values
            target = out[start : start + step]
            if n_agents % 2 or self.even == "lower":
                target.copy_(smallest[-1] if n_agents % 2 else smallest[-2])
            else:
                # halve before adding so that two huge values cannot overflow
                torch.add(smallest[-2] * 0.5, smallest[-1], alpha=0.5, out=target)
        return out


class SignAggregation(AggregationRule):
    r"""Sign aggregation, signSGD with majority vote (Bernstein et al. 2018; paper eq. 4).

    .. math:: g(\Delta)_i = \operatorname{sgn}\Big(\sum_k \operatorname{sgn}(\Delta^k_i)\Big)

    with ``sgn(0) = 0``: a tied vote gives 0. Weights are ignored (one agent, one vote).
    The rule is pure: the step size ``eta`` of eq. 4 (the paper uses 1e-3, the config's
    default for ``aggregator = "sign"``) is the server learning rate, applied by the
    simulator (:func:`robustlr.aggregation.step.apply_server_lr`). Telemetry: none. (The
    ``server_lr`` argument deprecated in 0.2 is gone in 0.3: scale the output, or let the
    server step do it.)

    Example:
        >>> import torch
        >>> U = torch.tensor([[1.0, -2.0, 3.0, 0.0], [1.0, 2.0, -3.0, 0.0], [1.0, 2.0, 3.0, -1.0]])
        >>> SignAggregation()(U)
        tensor([ 1.,  1.,  1., -1.])
        >>> SignAggregation()(torch.tensor([[1.0], [-1.0]]))   # tie
        tensor([0.])
    """

    column_separable = True

    def aggregate_validated(
        self, updates: Tensor, weights: Tensor | None, agent_ids: list[Hashable] | None
    ) -> Tensor:
        self.telemetry = {}
        return self._from_vote(sign_vote(updates), updates.dtype)

    def aggregate_checking_finite(
        self, updates: Tensor, weights: Tensor | None, agent_ids: list[Hashable] | None
    ) -> Tensor:
        self.telemetry = {}
        row_sums = torch.zeros(updates.shape[0], dtype=torch.float32, device=updates.device)
        vote = sign_vote(updates, row_sums)  # the row sums come from the same pass
        check_finite_rows(updates, row_sums)
        return self._from_vote(vote, updates.dtype)

    def _from_vote(self, vote: Tensor, dtype: torch.dtype) -> Tensor:
        return torch.sign(vote).to(dtype)

    def __repr__(self) -> str:
        return "SignAggregation()"
