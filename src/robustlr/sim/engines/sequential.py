"""The sequential engine: one agent after another, in-process (the reference).

It trains one agent after another on one model instance, exactly as the
paper's code does: SGD with momentum, cross-entropy, gradient-norm clipping, ``E`` epochs of
shuffled mini-batches (the last one may be short), and, when a clip norm ``M`` is set, a
projection of the update onto the L2 ball of radius ``M`` after every step (PGD).

Every random choice (batch order, dropout) comes from generators derived from
``(seed, round, agent)``, so an agent's update does not depend on which agents were trained
before it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from robustlr.aggregation import ParamLayout
from robustlr.errors import EngineError
from robustlr.models import build_model
from robustlr.models.common import call_with_masks, explicit_dropout, make_dropout_masks
from robustlr.sim import seeding
from robustlr.sim.engines.allocator import tune_allocator
from robustlr.sim.engines.base import EngineContext, RoundUpdates, batch_plan


class SequentialEngine:
    """Trains the agents of a round one after another on one model (the reference engine).

    ``threads``: intra-op threads per agent on the CPU. 1 (the default) makes the numbers
    independent of the machine; None leaves torch's setting (faster alone on a quiet
    multi-core machine, but not bit-reproducible across core counts).
    """

    name = "sequential"

    def __init__(self, ctx: EngineContext, threads: int | None = 1) -> None:
        self.ctx = ctx
        self.threads = threads
        self.s = ctx.settings
        self.device = ctx.device
        if self.s.precision == "bf16" and self.device.type not in ("cpu", "cuda"):
            raise EngineError(f"precision 'bf16' needs a CPU or CUDA device, not {self.device}")
        if self.device.type == "cpu":
            tune_allocator()  # keep activation buffers between steps (robustlr.sim.engines.allocator)
        model = build_model(ctx.model_name, num_classes=ctx.num_classes, spec=ctx.model_spec)
        # a plugged model's nn.Dropout layers take masks drawn like the built-in models' (every engine the same)
        self.shapes = (model.dropout_shapes() if hasattr(model, "dropout_shapes")
                       else explicit_dropout(model, ctx.train_x[:2]))
        # channels-last activations: oneDNN's convolutions run about 1.4x faster on the CPU
        self.model = model.to(device=self.device, memory_format=torch.channels_last)
        self.layout = ParamLayout.from_module(self.model)
        self.x = ctx.train_x
        self.y = ctx.train_y
        self.param_names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def train_round(self, global_params: torch.Tensor, agent_ids: Sequence[int], round_: int,
                    grad_mask: torch.Tensor | None = None) -> RoundUpdates:
        t0 = time.perf_counter()
        ids = np.asarray(agent_ids, dtype=np.int64)
        out = torch.empty((len(ids), self.layout.numel), dtype=torch.float32, device=self.device)
        for i, agent in enumerate(ids):
            args = (global_params, self.ctx.indices(agent, round_), round_, int(agent), self.ctx.loss_sign(agent, round_))
            # the mask only when there is one: a train_agent wrapped or overridden with the older signature still works
            out[i].copy_(self.train_agent(*args) if grad_mask is None else self.train_agent(*args, grad_mask))
        return RoundUpdates(out, ids, time.perf_counter() - t0)

    def close(self) -> None:
        pass

    def _load(self, flat: torch.Tensor) -> None:
        state = self.layout.unflatten(flat)
        with torch.no_grad():
            self.model.load_state_dict(state, strict=True)

    def train_agent(self, global_flat: torch.Tensor, indices: np.ndarray, round_: int, agent: int,
                    loss_sign: float = 1.0, grad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Train one agent from the global weights; return its update (local minus global).

        ``grad_mask``: the round's Neurotoxin mask over the flat layout; it restricts the gradients
        of an agent the context names (:meth:`EngineContext.masked`) and is ignored for the others.

        On the CPU the agent trains on exactly ``threads`` intra-op threads (restored
        afterwards): the backward convolutions sum in a thread-count-dependent order, and one
        thread per agent makes the numbers independent of the machine's core count
        (parallelism comes from training agents side by side, see
        :mod:`robustlr.sim.engines.processes`).
        """
        if self.device.type == "cpu" and self.threads is not None and torch.get_num_threads() != self.threads:
            before = torch.get_num_threads()
            torch.set_num_threads(self.threads)
            try:
                return self._train(global_flat, indices, round_, agent, loss_sign, grad_mask)
            finally:
                torch.set_num_threads(before)
        return self._train(global_flat, indices, round_, agent, loss_sign, grad_mask)

    def _param_masks(self, grad_mask: torch.Tensor) -> list[torch.Tensor]:
        state = self.layout.unflatten(grad_mask.to(self.device, torch.float32))
        return [state[n].to(p.dtype) for n, p in zip(self.param_names, self.params)]

    def _train(self, global_flat: torch.Tensor, indices: np.ndarray, round_: int, agent: int,
               loss_sign: float, grad_mask: torch.Tensor | None = None) -> torch.Tensor:
        self._load(global_flat)
        model = self.model
        model.train()
        # not fused=True: measured in one run beside the default step it gained -2 to +7 % per agent
        # (the step is ~2 % of a batch here) and it changes the updates' last bits
        opt = torch.optim.SGD(self.params, lr=self.s.lr, momentum=self.s.momentum)
        idx = torch.as_tensor(indices, dtype=torch.int64)
        mu = self.ctx.penalty(agent, round_)
        radius = self.ctx.radius(agent, round_)
        masks = self._param_masks(grad_mask) if grad_mask is not None and self.ctx.masked(agent, round_) else None
        start = [p.detach().clone() for p in self.params] if radius > 0 or mu > 0 else None
        drop_gen = seeding.torch_generator(self.s.seed, seeding.DROPOUT, round_, agent)
        shapes = self.shapes
        autocast = self.s.autocast(self.device)
        mask_dtype = self.s.mask_dtype
        # dropout other than nn.Dropout draws from torch's default generator: seed a fork of it
        with torch.random.fork_rng(devices=[] if self.device.type == "cpu" else [self.device]):
            torch.manual_seed(seeding.seed_of(self.s.seed, seeding.DROPOUT, round_, agent))
            for pos in batch_plan(self.s, len(indices), round_, agent):
                rows = idx[pos]
                xb = self.x[rows].to(self.device, non_blocking=True)
                yb = self.y[rows].to(self.device, non_blocking=True)
                opt.zero_grad(set_to_none=True)
                with autocast:
                    if shapes is not None:
                        out = call_with_masks(model, xb, make_dropout_masks(shapes, len(rows), drop_gen, self.device,
                                                                            mask_dtype))
                    else:
                        out = model(xb)
                loss = F.cross_entropy(out.float(), yb)
                if loss_sign != 1.0:
                    loss = loss * loss_sign
                if mu > 0:  # stealth: stay close to the global model (start holds its parameters)
                    loss = loss + 0.5 * mu * sum(((p - s0) ** 2).sum() for p, s0 in zip(self.params, start))
                loss.backward()
                if masks is not None:  # Neurotoxin: only the coordinates the honest agents change least
                    torch._foreach_mul_([p.grad for p in self.params], masks)
                if self.s.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.params, self.s.grad_clip)
                opt.step()
                if radius > 0:
                    project_(self.params, start, radius)
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
