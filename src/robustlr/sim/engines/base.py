"""The one interface every local-training engine implements, and what engines share.

An engine trains the agents of a round from the global weights and returns their updates::

    engine.train_round(global_params, agent_ids, round_) -> RoundUpdates

``global_params`` is the flat global vector (:class:`robustlr.aggregation.ParamLayout`),
``agent_ids`` the agents sampled in the round, ``round_`` the round number (1-based),
``grad_mask`` (optional, ``(numel,)`` float 0/1) the round's Neurotoxin mask, which multiplies the
gradients of the agents :meth:`EngineContext.masked` names at every step. Row i
of ``RoundUpdates.updates`` is agent ``agent_ids[i]``'s update, its local weights minus the
global ones. ``engine.close()`` releases what the engine holds (worker processes).

Every engine implements the same local training, step for step: SGD with momentum,
cross-entropy (times the agent's loss sign, plus a corrupt agent's proximity penalty
``mu/2 ||w - w_global||^2`` where the config sets ``stealth_penalty``), gradient-norm clipping, ``E`` epochs of shuffled
mini-batches from :func:`batch_plan` (the last one may be short), the PGD projection onto the
L2 ball of :meth:`EngineContext.radius` after every step when it is set (``clip_norm``, or a
corrupt agent's PGD radius), the round's gradient mask for Neurotoxin agents, and dropout masks drawn
from ``(seed, round, agent)``. So an agent's update does not depend on the engine's order of
work or on which agents were trained before it.

To add an engine: a module in this package with a class that takes an :class:`EngineContext`
and implements :class:`Engine`, and an entry in :data:`robustlr.sim.engines.select.ENGINES`
(the config's ``train_mode`` names it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, get_args, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from robustlr.sim import seeding
from robustlr.sim.config import Precision


@dataclass(frozen=True)
class LocalSettings:
    """How an agent trains locally (from the config)."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    grad_clip: float  # 0 = off
    clip_norm: float  # PGD radius, 0 = off
    seed: int
    precision: Precision = "fp32"  # or "bf16": autocast of the forward pass

    def __post_init__(self) -> None:
        if self.precision not in get_args(Precision):
            raise ValueError(f"precision={self.precision!r}: choose one of {', '.join(get_args(Precision))}")

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The forward pass's autocast for this precision (bf16: ``torch.autocast``; fp32: none)."""
        if self.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def mask_dtype(self) -> torch.dtype:
        """The dtype of explicit dropout masks: the activations' (bf16 under autocast)."""
        return torch.bfloat16 if self.precision == "bf16" else torch.float32


@dataclass
class EngineContext:
    """Everything an engine needs, fixed for a run."""

    model_name: str
    num_classes: int
    settings: LocalSettings
    train_x: Any  # indexes to normalised float32 images (NormalisedImages or a Tensor)
    train_y: Tensor  # int64 labels, poisoned rows relabelled
    agent_indices: Sequence[np.ndarray]  # per agent, indices into train_x
    device: torch.device
    max_agents: int  # the most agents one round trains
    workers: int = 1  # worker processes (processes engine)
    loss_signs: Mapping[int, float] = field(default_factory=dict)  # agent -> sign of its loss (default +1)
    # corrupt agents behave honestly before attack_from_round: these rows, the standard loss
    honest_indices: Mapping[int, np.ndarray] = field(default_factory=dict)
    attack_from_round: int = 1
    attack_until_round: int | None = None  # and after this round (None: to the end)
    # attacks that need the corrupt agents' clean updates: corrupt agent -> the id under which it
    # trains on its clean rows (appended to agent_indices; the standard loss)
    clean_twins: Mapping[int, int] = field(default_factory=dict)
    # stealth by a penalty: agent -> mu of the term mu/2 ||w - w_global||^2 added to its loss
    penalties: Mapping[int, float] = field(default_factory=dict)
    # a model that is not built in (registered, an entry point, an import string): its spec, which
    # worker processes receive with the context instead of looking the name up
    model_spec: Any = None
    # attacks on the corrupt agents' own training (robustlr.attacks.local), while they attack:
    # agent -> the radius of its PGD projection onto ||w - w_global|| <= eps after every step
    pgd_radii: Mapping[int, float] = field(default_factory=dict)
    # Neurotoxin: the agents whose gradients the round's mask (train_round's grad_mask) restricts
    masked_agents: frozenset[int] = frozenset()
    # FLTrust: the id under which the server trains on its root dataset (None: no root set)
    root_agent: int | None = None

    def attacking(self, round_: int | None) -> bool:
        """Whether corrupt agents attack in ``round_``: within [attack_from_round, attack_until_round]."""
        if round_ is None:
            return True
        return round_ >= self.attack_from_round and (self.attack_until_round is None
                                                     or round_ <= self.attack_until_round)

    def indices(self, agent: int, round_: int) -> np.ndarray:
        """The rows ``agent`` trains on in round ``round_``."""
        if not self.attacking(round_) and int(agent) in self.honest_indices:
            return self.honest_indices[int(agent)]
        return self.agent_indices[agent]

    def penalty(self, agent: int, round_: int | None = None) -> float:
        """mu of ``agent``'s proximity penalty in round ``round_`` (0: none; 0 before the attack starts)."""
        if not self.attacking(round_):
            return 0.0
        return float(self.penalties.get(int(agent), 0.0))

    def radius(self, agent: int, round_: int | None = None) -> float:
        """The radius of the L2 ball ``agent`` projects its weights onto after every step in
        ``round_`` (0: none): the smaller of ``clip_norm`` (every agent) and its PGD radius (a
        corrupt agent while it attacks)."""
        radii = [r for r in (self.settings.clip_norm,
                             self.pgd_radii.get(int(agent), 0.0) if self.attacking(round_) else 0.0) if r > 0]
        return float(min(radii)) if radii else 0.0

    def masked(self, agent: int, round_: int | None = None) -> bool:
        """Whether the round's gradient mask (Neurotoxin) restricts ``agent``'s gradients in ``round_``."""
        return int(agent) in self.masked_agents and self.attacking(round_)

    def loss_sign(self, agent: int, round_: int | None = None) -> float:
        """The sign of ``agent``'s loss in round ``round_`` (+1 before the attack starts)."""
        if not self.attacking(round_):
            return 1.0
        return float(self.loss_signs.get(int(agent), 1.0))


@dataclass
class RoundUpdates:
    """The updates of one round: row i belongs to ``agent_ids[i]``.

    ``updates`` may be a view into a buffer the engine reuses: it is valid until the
    engine's next ``train_round``.
    """

    updates: Tensor  # (n_agents, n_params) float32, on the run's device
    agent_ids: np.ndarray  # int64, (n_agents,)
    seconds: float  # wall time of the local training


@runtime_checkable
class Engine(Protocol):
    name: str

    def train_round(self, global_params: Tensor, agent_ids: Sequence[int], round_: int,
                    grad_mask: Tensor | None = None) -> RoundUpdates:
        ...

    def close(self) -> None:
        ...


def batch_plan(settings: LocalSettings, n: int, round_: int, agent: int) -> list[Tensor]:
    """The agent's mini-batches (positions into its index array) for all its epochs, in order."""
    g = seeding.torch_generator(settings.seed, seeding.BATCHES, round_, agent)
    out: list[Tensor] = []
    for _ in range(settings.epochs):
        out.extend(torch.randperm(n, generator=g).split(settings.batch_size))
    return out
