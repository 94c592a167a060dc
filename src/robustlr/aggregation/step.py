"""The server step, ``global += eta * aggregate``: the one place the server learning rate is applied.

Aggregation rules are pure (they flip signs, clip, add noise, but never scale by ``eta``); the
simulator's server (:class:`robustlr.sim.server.Server`) and the Flower strategies
(:mod:`robustlr.integrations.flower`) both end a round with :func:`apply_server_lr`. ``eta`` is a
float, or a per-coordinate tensor from :func:`server_lr_vector` that is ``eta`` on trainable
parameters and 1 on buffers (batch-norm running statistics and ``num_batches_tracked`` are
averaged plainly, never scaled).

>>> import torch
>>> g = torch.tensor([1.0, 2.0])
>>> apply_server_lr(g, torch.tensor([0.5, -0.5]), 0.5)
tensor([1.2500, 1.7500])
>>> server_lr_vector(0.5, torch.tensor([True, False]))
tensor([0.5000, 1.0000])
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["apply_server_lr", "server_lr_vector"]


def server_lr_vector(eta: float, trainable: Tensor) -> float | Tensor:
    """``eta`` where ``trainable`` is True, 1 elsewhere; a plain float when every coordinate is trainable."""
    if bool(trainable.all()):
        return float(eta)
    return torch.where(trainable, float(eta), 1.0)


def apply_server_lr(global_params: Tensor, aggregate: Tensor, eta: float | Tensor) -> Tensor:
    """The server step, in place: ``global_params += eta * aggregate``; returns ``global_params``.

    ``eta`` is a float or a per-coordinate tensor (see :func:`server_lr_vector`).
    """
    if isinstance(eta, Tensor):
        eta = eta.to(device=aggregate.device, dtype=aggregate.dtype)
    elif eta == 1.0:
        return global_params.add_(aggregate)
    # multiply, then add (not a fused add with alpha): the same rounding as the rule's own scaling
    return global_params.add_(aggregate * eta)
