"""Local training of agents.

The reference engine trains one agent after another on one model instance, exactly as the
paper's code does: SGD with momentum, cross-entropy, gradient-norm clipping, ``E`` epochs of
shuffled mini-batches (the last one may be short), and, when a clip norm ``M`` is set, a
projection of the update onto the L2 ball of radius ``M`` after every step (PGD).

Every random choice (batch order, dropout) comes from generators derived from
``(seed, round, agent)``, so an agent's update does not depend on which agents were trained
before it.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from robustlr import seeding
from robustlr.aggregation import ParamLayout
from robustlr.models.common import make_dropout_masks


@dataclass(frozen=True)
class LocalSettings:
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    grad_clip: float  # 0 = off
    clip_norm: float  # PGD radius, 0 = off
    seed: int
    precision: str = "fp32"


class SequentialTrainer:
    """Trains agents one at a time on a single model (the reference engine)."""

    name = "sequential"

    def __init__(self, model: nn.Module, layout: ParamLayout, settings: LocalSettings,
                 train_x: torch.Tensor, train_y: torch.Tensor, device: torch.device,
                 threads: int | None = 1) -> None:
        #: intra-op threads per agent on the CPU: 1 (the default) makes the numbers independent of
        #: the machine; None leaves torch's setting (faster alone on a quiet multi-core machine,
        #: but not bit-reproducible across core counts)
        self.threads = threads
        # channels-last activations: oneDNN's convolutions run about 1.4x faster on the CPU
        self.model = model.to(device=device, memory_format=torch.channels_last)
        self.layout = layout
        self.s = settings
        self.x = train_x
        self.y = train_y
        self.device = device
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def _load(self, flat: torch.Tensor) -> None:
        state = self.layout.unflatten(flat)
        with torch.no_grad():
            self.model.load_state_dict(state, strict=True)

    def batches(self, n: int, round_: int, agent: int) -> list[torch.Tensor]:
        """The agent's mini-batches (positions into its index array) for all epochs, in order."""
        g = seeding.torch_generator(self.s.seed, seeding.BATCHES, round_, agent)
        out = []
        for _ in range(self.s.epochs):
            perm = torch.randperm(n, generator=g)
            out.extend(perm.split(self.s.batch_size))
        return out

    def train_into(self, out: torch.Tensor, global_flat: torch.Tensor, indices: list[np.ndarray], round_: int,
                   agents: list[int], loss_signs: list[float] | None = None) -> None:
        """Train each agent in turn; row i of ``out`` receives agent i's update."""
        for i, (idx, agent) in enumerate(zip(indices, agents)):
            out[i].copy_(self.train(global_flat, idx, round_, agent, 1.0 if loss_signs is None else loss_signs[i]))

    def train(self, global_flat: torch.Tensor, indices: np.ndarray, round_: int, agent: int,
              loss_sign: float = 1.0) -> torch.Tensor:
        """Train one agent from the global weights; return its update (local minus global).

        On the CPU the agent trains on exactly one intra-op thread (restored afterwards): the
        backward convolutions sum in a thread-count-dependent order, and one thread per agent
        makes the numbers independent of the machine's core count (parallelism comes from
        training agents side by side, see :mod:`robustlr.parallel`).
        """
        if self.device.type == "cpu" and self.threads is not None and torch.get_num_threads() != self.threads:
            before = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                return self._train(global_flat, indices, round_, agent, loss_sign)
            finally:
                torch.set_num_threads(before)
        return self._train(global_flat, indices, round_, agent, loss_sign)

    def _train(self, global_flat: torch.Tensor, indices: np.ndarray, round_: int, agent: int,
               loss_sign: float) -> torch.Tensor:
        self._load(global_flat)
        model = self.model
        model.train()
        opt = torch.optim.SGD(self.params, lr=self.s.lr, momentum=self.s.momentum)
        idx = torch.as_tensor(indices, dtype=torch.int64)
        start = [p.detach().clone() for p in self.params] if self.s.clip_norm > 0 else None
        drop_gen = seeding.torch_generator(self.s.seed, seeding.DROPOUT, round_, agent)
        shapes = model.dropout_shapes() if hasattr(model, "dropout_shapes") else None
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.s.precision == "bf16" else nullcontext()
        # models without explicit dropout masks draw from torch's default generator: seed a fork of it
        with torch.random.fork_rng(devices=[] if self.device.type == "cpu" else [self.device]):
            torch.manual_seed(seeding.seed_of(self.s.seed, seeding.DROPOUT, round_, agent))
            for pos in self.batches(len(indices), round_, agent):
                rows = idx[pos]
                xb = self.x[rows].to(self.device, non_blocking=True)
                yb = self.y[rows].to(self.device, non_blocking=True)
                opt.zero_grad(set_to_none=True)
                with autocast:
                    if shapes is not None:
                        out = model(xb, make_dropout_masks(shapes, len(rows), drop_gen, self.device))
                    else:
                        out = model(xb)
                loss = F.cross_entropy(out.float(), yb)
                if loss_sign != 1.0:
                    loss = loss * loss_sign
                loss.backward()
                if self.s.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.params, self.s.grad_clip)
                opt.step()
                if start is not None:
                    project_(self.params, start, self.s.clip_norm)
        return self.layout.flatten(model).sub_(global_flat)


@torch.no_grad()
def project_(params: list[torch.Tensor], start: list[torch.Tensor], radius: float) -> None:
    """Project ``params`` onto the L2 ball of ``radius`` around ``start`` (in place)."""
    diffs = torch._foreach_sub(params, start)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(d) for d in diffs]))
    if norm > radius:
        scale = radius / float(norm)
        torch._foreach_mul_(diffs, scale)
        for p, s0, d in zip(params, start, diffs):
            p.copy_(s0).add_(d)
