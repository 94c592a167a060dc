"""Batch-norm buffers beside any rule: the rule sees the trainable coordinates only.

A model with batch norm carries running statistics (``running_mean``, ``running_var``) and a
step counter (``num_batches_tracked``) in its state. They are not parameters: a sign vote would
move a running variance by +-1, a clipping norm would count ``num_batches_tracked`` (which
grows by the number of local steps every round), noise would be added to it, and FoolsGold's
similarities would mix them in. :class:`PlainBuffers` keeps them out of the rule.

.. math::

    g(\\Delta)_T = \\mathrm{rule}(\\Delta_{:,T}), \\qquad
    g(\\Delta)_B = \\frac{\\sum_k n_k \\Delta^k_B}{\\sum_k n_k}

where ``T`` are the trainable coordinates and ``B`` the buffers. The server then applies
``eta`` to ``T`` only (see :mod:`robustlr.sim.server`), so the global buffers are the agents'
size-weighted average.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch
from torch import Tensor

from .base import (
    AggregationRule,
    FusedCheckRule,
    RoundInputs,
    call_inner,
    check_finite_rows,
    check_rule,
    inner_telemetry,
)
from .rules import FedAvg

__all__ = ["PlainBuffers"]


class PlainBuffers(FusedCheckRule):
    """``rule`` on the coordinates where ``trainable`` is True, the weighted mean elsewhere.

    Args:
        rule: the rule for the trainable coordinates (any rule or wrapper, e.g.
            ``ClipAndNoise(SignAggregation(), clip_norm=4)``).
        trainable: a bool ``(n_params,)`` mask, e.g. ``ParamLayout.trainable_mask()``.

    Telemetry: the wrapped rule's, as is (so a wrapper above reads it unchanged).

    Example:
        >>> import torch
        >>> from robustlr.aggregation import SignAggregation
        >>> U = torch.tensor([[1.0, -2.0, 4.0], [3.0, -1.0, 8.0]])
        >>> PlainBuffers(SignAggregation(), torch.tensor([True, True, False]))(U)
        tensor([ 1., -1.,  6.])
    """

    def __init__(self, rule: AggregationRule | Callable[..., Tensor], trainable: Tensor) -> None:
        super().__init__()
        check_rule(rule)
        if not isinstance(trainable, Tensor) or trainable.dtype != torch.bool or trainable.ndim != 1:
            raise ValueError("trainable must be a 1-D bool tensor (ParamLayout.trainable_mask())")
        if not bool(trainable.any()):
            raise ValueError("trainable selects no coordinate: there is nothing for the rule to aggregate")
        self.rule = rule
        self.trainable = trainable
        self._index: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self._mean = FedAvg()

    # its mask is over the whole vector, so it cannot run on column blocks
    column_separable = False

    def _indices(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._index:
            mask = self.trainable.to(device)
            self._index[device] = (mask.nonzero().flatten(), (~mask).nonzero().flatten())
        return self._index[device]

    def set_round_inputs(self, inputs: RoundInputs) -> None:
        """The rule sees the trainable coordinates only: so do the round's inputs (FLTrust's ``g0``,
        FLDetector's global model)."""
        if isinstance(self.rule, AggregationRule):
            self.rule.set_round_inputs(inputs.restricted(self.trainable))

    def aggregate_fused(self, updates: Tensor, weights: Tensor | None, agent_ids: list[Hashable] | None,
                   check_finite: bool) -> Tensor:
        if updates.shape[1] != self.trainable.shape[0]:
            raise ValueError(f"trainable has {self.trainable.shape[0]} entries but updates have {updates.shape[1]} "
                             "(n_params)")
        train_idx, buffer_idx = self._indices(updates.device)
        out = torch.empty(updates.shape[1], dtype=updates.dtype, device=updates.device)
        if check_finite:
            # the buffers' mean first: a non-finite row shows in it or in the rule's own check
            buffers = self._mean.aggregate_checking_finite(updates[:, buffer_idx], weights, agent_ids)
        else:
            buffers = self._mean.aggregate_validated(updates[:, buffer_idx], weights, agent_ids)
        trainable = updates[:, train_idx]
        if check_finite and isinstance(self.rule, AggregationRule):
            out[train_idx] = self.rule.aggregate_checking_finite(trainable, weights, agent_ids)
        else:
            if check_finite:
                check_finite_rows(trainable)
            out[train_idx] = call_inner(self.rule, trainable, weights, agent_ids)
        out[buffer_idx] = buffers
        self.telemetry = inner_telemetry(self.rule)
        return out

    def __repr__(self) -> str:
        return f"PlainBuffers({self.rule!r}, {int(self.trainable.sum())} of {self.trainable.shape[0]} trainable)"
