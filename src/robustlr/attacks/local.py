"""Attacks on a corrupt agent's own local training: PGD onto a norm ball, and Neurotoxin.

Both change how a corrupt agent trains on its poisoned data, step by step; every engine applies
them (:mod:`robustlr.sim.engines`), and so does the Flower ClientApp (an agent's own behaviour: for
Neurotoxin a corrupt node keeps the global model it received in its context state, so its mask is
the simulator's when it trains every round, and comes from an older difference when participation
< 1 skipped it). They act only while the corrupt agents attack (``attack_from_round`` ..
``attack_until_round``), and compose with the update attacks of :mod:`robustlr.attacks.model`
(``boost_factor`` after PGD is the "PGD with model replacement" of Wang et al.).

PGD with a norm ball (Sun et al. 2019, "Can you really backdoor federated learning?", section 3;
Wang et al., NeurIPS 2020, "Attack of the tails", section 4, "PGD attack")
    After every local SGD step the corrupt agent projects its weights onto the L2 ball
    ``||w - w_global|| <= eps`` around the global model it started from
    (:func:`robustlr.sim.engines.sequential.project_`), so its update passes a norm bound of
    ``eps`` (a server's clipping at ``M >= eps``, or a norm screen) unchanged. Threat model: the
    agent controls its own training and data; it knows (or guesses) the norm bound the server
    enforces, nothing of the other agents. ``eps`` (config ``pgd_radius``) has no default: the
    papers set it to the defense's bound (Sun et al.: the clipping norm; Wang et al.: a radius
    chosen so the update escapes norm-difference clipping), so robustlr asks for it. Where the
    honest agents also project (``clip_norm`` with ``clip_scope`` 'both' or 'agents'), the corrupt
    agent projects onto the smaller of the two balls.

Neurotoxin (Zhang, Panda, Song, Yang, Mahoney, Mittal, Ramchandran and Gonzalez, ICML 2022,
"Neurotoxin: Durable Backdoors in Federated Learning", Algorithm 1)
    The attacker estimates the honest agents' update from the last global update
    ``delta = w_t - w_{t-1}`` (the paper's "benign gradient" observed by the attacker between two
    rounds), and restricts its own gradient, at every local step, to the coordinates the honest
    agents change *least*: the top-k % of trainable coordinates by ``|delta|`` are masked out
    (:func:`neurotoxin_mask`), so the honest agents' later updates, which live mostly on those
    top coordinates, overwrite the backdoor slowly: the backdoor is durable. The mask multiplies
    the gradient before gradient clipping and momentum, so the agent's update is exactly zero on
    the masked coordinates. ``k`` (config ``neurotoxin_top_percent``) defaults to 5 %: the
    authors' published command for their Neurotoxin runs passes ``--gradmask_ratio 0.95`` (keep
    the bottom 95 %). Threat model: the agent controls its own training and data and sees the
    global model of every round (robustlr gives it the last global update even where participation
    < 1 left it out of the previous round: a slightly stronger attacker than one that only sees
    the rounds it trains in). In the first round of a run there is no previous global model and
    the agent trains unmasked. Note that the authors' image code computes the mask from gradients on
    the attacker's own clean data instead of ``delta``; robustlr follows the paper's Algorithm 1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["neurotoxin_mask", "neurotoxin_count"]


def neurotoxin_count(top_percent: float, n_trainable: int) -> int:
    """How many coordinates Neurotoxin masks: ``ceil(top_percent / 100 * n_trainable)`` (at least 1).

    Example:
        >>> neurotoxin_count(5, 100), neurotoxin_count(5, 101), neurotoxin_count(0.001, 10)
        (5, 6, 1)
    """
    if not 0 < top_percent < 100:
        raise ValueError(f"top_percent must be in (0, 100), got {top_percent!r}")
    if n_trainable < 1:
        raise ValueError(f"need at least one trainable coordinate, got {n_trainable}")
    return max(1, math.ceil(top_percent / 100 * n_trainable - 1e-9))


def neurotoxin_mask(last_update: Tensor, trainable: Tensor, top_percent: float) -> Tensor:
    """Neurotoxin's gradient mask over the flat layout: float32 1/0, 0 on the ``top_percent`` % of
    trainable coordinates with the largest ``|last_update|`` (ties broken by position: the earlier
    coordinate counts as larger), 1 on every other coordinate (non-trainable ones included: they
    take no gradient).

    Args:
        last_update: the last global update ``w_t - w_{t-1}``, ``(numel,)``.
        trainable: bool ``(numel,)``, the trainable coordinates
            (:meth:`robustlr.aggregation.ParamLayout.trainable_mask`).
        top_percent: k, in (0, 100).

    Example:
        >>> m = neurotoxin_mask(torch.tensor([0.1, -3.0, 0.2, 2.0, 9.0]),
        ...                     torch.tensor([True, True, True, True, False]), 50)
        >>> m.tolist()   # 2 of the 4 trainable coordinates: |-3| and |2| (coordinate 4 is a buffer)
        [1.0, 0.0, 1.0, 0.0, 1.0]
    """
    if last_update.ndim != 1 or trainable.shape != last_update.shape or trainable.dtype != torch.bool:
        raise ValueError(f"last_update must be (numel,) and trainable a bool mask of the same shape, got "
                         f"{tuple(last_update.shape)} and {tuple(trainable.shape)} {trainable.dtype}")
    if not torch.isfinite(last_update[trainable]).all():
        raise ValueError("the last global update holds NaN or infinite values")
    where = torch.nonzero(trainable.to(last_update.device)).flatten()
    k = neurotoxin_count(top_percent, where.numel())
    order = torch.sort(last_update[where].abs(), descending=True, stable=True).indices
    mask = torch.ones(last_update.shape, dtype=torch.float32, device=last_update.device)
    mask[where[order[:k]]] = 0.0
    return mask
