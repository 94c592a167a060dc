"""Attacks on the update itself (model poisoning): what corrupt agents send instead of their update.

The data attacks (:mod:`robustlr.attacks.poison`) decide what a corrupt agent trains on; the
attacks here take the updates the corrupt agents of a round trained (their *poisoned* updates)
and, where the attack needs it, the updates the same agents get by training the same round on
their clean data (their *clean* updates: the attacker's own estimate of what an honest agent
sends), and return what they submit. :func:`craft_updates` is the one entry point; the
simulator calls it on the corrupt rows of every attacked round, the Flower ClientApp on one
agent's update.

Threat models:

boosting (``boost``, Bagdasaryan et al. 2020, "model replacement")
    Each corrupt agent scales its update by ``boost`` (on trainable coordinates; batch-norm
    statistics are left alone, a scaled variance could turn negative). Needs no knowledge of
    the others. Against FedAvg with K agents, ``boost = K`` replaces the global model.
norm-constrained stealth (``stealth = "project"``)
    Each corrupt agent knows that servers screen or clip large updates, so it projects what it
    sends onto the L2 ball of radius ``stealth_multiple x ||its clean update||``: its norm is
    what an honest agent's would be. Applied last (after boosting: "constrain and scale" then
    amounts to using the norm budget fully). The projection is of the final update, not after
    every local step.
adaptive sign-vote attacks (``adaptive``), against vote-based defenses (RLR, sign aggregation)
    The corrupt agents collude: they share their poisoned and clean updates and know the
    defense. They rank the coordinates by how much the backdoor moves them,
    ``|mean(poisoned) - mean(clean)|``, and pick the top ``top_fraction`` of the trainable
    coordinates.

    - ``"sign"``: everywhere else every corrupt agent sends its clean update, so its signs agree
      with the expected honest majority and it looks honest to any sign or similarity
      statistic; on the chosen coordinates all of them send the mean poisoned update times
      ``boost``, so their votes are unanimous where they matter.
    - ``"scale"``: each agent sends its own poisoned update with only the chosen coordinates
      multiplied by ``boost`` (the rest unscaled: a norm much closer to an honest one than
      boosting the whole update).

    Coordination needs several corrupt agents: study it at F 0.2-0.4 as well as 0.1.

Everything here is deterministic (no random draws) and works on any float dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["UpdateAttack", "craft_updates"]

STEALTH = ("none", "project")
ADAPTIVE = ("none", "sign", "scale")


@dataclass(frozen=True)
class UpdateAttack:
    """What corrupt agents do to their updates (see the module docstring for each threat model)."""

    boost: float = 1.0
    stealth: str = "none"
    stealth_multiple: float = 1.0
    adaptive: str = "none"
    top_fraction: float = 0.01

    def __post_init__(self) -> None:
        if not (math.isfinite(self.boost) and self.boost > 0):
            raise ValueError(f"boost must be a finite number > 0 (1 = no boosting), got {self.boost!r}")
        if self.stealth not in STEALTH:
            raise ValueError(f"stealth must be one of {', '.join(STEALTH)}, got {self.stealth!r}")
        if not (math.isfinite(self.stealth_multiple) and self.stealth_multiple > 0):
            raise ValueError(f"stealth_multiple must be a finite number > 0, got {self.stealth_multiple!r}")
        if self.adaptive not in ADAPTIVE:
            raise ValueError(f"adaptive must be one of {', '.join(ADAPTIVE)}, got {self.adaptive!r}")
        if not 0 < self.top_fraction <= 1:
            raise ValueError(f"top_fraction must lie in (0, 1], got {self.top_fraction!r}")
        if self.adaptive == "scale" and self.boost == 1.0:
            raise ValueError("adaptive = 'scale' multiplies the chosen coordinates by boost: set boost != 1")

    @property
    def active(self) -> bool:
        """Whether the attack changes anything (False: the poisoned updates are sent as they are)."""
        return self.boost != 1.0 or self.stealth != "none" or self.adaptive != "none"

    @property
    def needs_clean(self) -> bool:
        """Whether the corrupt agents also train on their clean data each round."""
        return self.stealth != "none" or self.adaptive != "none"


def top_coordinates(poisoned: Tensor, clean: Tensor, fraction: float, trainable: Tensor | None = None) -> Tensor:
    """Indices of the ``ceil(fraction x trainable)`` coordinates where ``|mean(poisoned) - mean(clean)|``
    is largest (ties broken by the lower index), sorted ascending."""
    diff = (poisoned.mean(0) - clean.mean(0)).abs()
    if trainable is not None:
        diff = torch.where(trainable.to(diff.device), diff, torch.full_like(diff, -1.0))
        n = int(trainable.sum())
    else:
        n = diff.numel()
    k = max(1, math.ceil(round(fraction * n, 9)))
    # a stable descending sort: equal scores keep index order, so the choice is deterministic
    order = torch.sort(diff, descending=True, stable=True).indices[:k]
    return order.sort().values


def craft_updates(poisoned: Tensor, attack: UpdateAttack, clean: Tensor | None = None,
                  trainable: Tensor | None = None) -> Tensor:
    """What the corrupt agents send: ``(m, P)`` from their poisoned updates ``(m, P)``.

    Args:
        poisoned: the updates the corrupt agents trained on their (poisoned) data, one row each.
        attack: the attack.
        clean: the same agents' updates trained on their clean data, same shape (needed when
            ``attack.needs_clean``).
        trainable: a bool ``(P,)`` mask of the trainable coordinates (batch-norm buffers are
            never boosted or chosen); None = all.

    Returns a new tensor; the inputs are not modified.

    Example:
        >>> P = torch.tensor([[3.0, 4.0, 0.0]])
        >>> craft_updates(P, UpdateAttack(boost=2.0))
        tensor([[6., 8., 0.]])
        >>> C = torch.tensor([[0.3, 0.0, 0.4]])        # clean norm 0.5
        >>> craft_updates(P, UpdateAttack(stealth="project"), clean=C)
        tensor([[0.3000, 0.4000, 0.0000]])
        >>> craft_updates(P, UpdateAttack(adaptive="sign", top_fraction=0.3), clean=C)  # 1 coordinate of 3
        tensor([[0.3000, 4.0000, 0.4000]])
    """
    if poisoned.ndim != 2:
        raise ValueError(f"poisoned must be an (m, P) matrix of the corrupt agents' updates, got {tuple(poisoned.shape)}")
    if attack.needs_clean:
        if clean is None or clean.shape != poisoned.shape:
            raise ValueError(f"this attack needs the corrupt agents' clean updates of shape {tuple(poisoned.shape)}, "
                             f"got {None if clean is None else tuple(clean.shape)}")
    if trainable is not None:
        trainable = trainable.to(device=poisoned.device, dtype=torch.bool)
    out = poisoned.clone()
    if attack.adaptive != "none":
        top = top_coordinates(poisoned, clean, attack.top_fraction, trainable)
        if attack.adaptive == "sign":
            out = clean.clone()
            out[:, top] = (poisoned[:, top].mean(0) * attack.boost).to(out.dtype)
        else:  # scale
            out[:, top] *= attack.boost
    elif attack.boost != 1.0:
        if trainable is None:
            out *= attack.boost
        else:
            out[:, trainable] *= attack.boost
    if attack.stealth == "project":
        radius = attack.stealth_multiple * torch.linalg.vector_norm(clean.double(), dim=1)
        norms = torch.linalg.vector_norm(out.double(), dim=1)
        scale = torch.where(norms > radius, radius / norms.clamp_min(1e-300), torch.ones_like(norms))
        out *= scale.to(out.dtype)[:, None]
    return out
