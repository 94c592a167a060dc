"""Vectorised local training: the agents of a round train together, as one batched computation.

``torch.func.vmap`` over ``grad`` of a ``functional_call`` runs every agent's forward and
backward pass at once on stacked per-agent parameters, batches and dropout masks; SGD with
momentum, per-agent gradient-norm clipping and the PGD projection are then applied to the
stacked tensors. The semantics are those of :class:`robustlr.sim.engines.sequential.SequentialEngine` step for
step (same batches, same dropout masks, same optimiser), so the two engines give the same
updates up to floating-point summation order.

Agents with unequal data sizes take different numbers of steps: at every step the agents that
still train are grouped by their current batch size, and each group is one batched call.

Models with batch normalisation are not supported here (running statistics are updated in
place, which ``vmap`` forbids); they use the sequential engine. ``precision = "bf16"`` runs
the batched forward pass under bf16 autocast, as the other engines do.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from robustlr.aggregation import ParamLayout
from robustlr.errors import EngineError
from robustlr.models import build_model, has_batch_norm
from robustlr.models.common import call_with_masks, explicit_dropout, make_dropout_masks
from robustlr.sim import seeding
from robustlr.sim.engines.base import EngineContext, RoundUpdates, batch_plan


class VectorizedEngine:
    """Trains all agents of a round together with ``vmap``."""

    name = "vectorized"

    def __init__(self, ctx: EngineContext) -> None:
        model = build_model(ctx.model_name, num_classes=ctx.num_classes, spec=ctx.model_spec)
        if has_batch_norm(model):
            raise EngineError("the vectorized engine does not support batch-norm models; use train_mode = 'sequential'")
        try:  # a plugged model's nn.Dropout layers take explicit masks (vmap cannot draw them itself)
            shapes = (model.dropout_shapes() if hasattr(model, "dropout_shapes")
                      else explicit_dropout(model, ctx.train_x[:2]))
        except ValueError as exc:
            raise EngineError(f"the vectorized engine cannot train model {ctx.model_name!r}: {exc}; use train_mode = "
                              f"'sequential' or 'processes', or plain nn.Dropout") from None
        self.ctx = ctx
        self.device = device = ctx.device
        self.model = model.to(device)
        self.layout = ParamLayout.from_module(model)
        self.s = ctx.settings
        self.x = ctx.train_x
        self.y = ctx.train_y
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.shapes = shapes or []
        self._mask_dtype = self.s.mask_dtype
        self._autocast = lambda: self.s.autocast(device)

        def loss_fn(params, xb, yb, masks, sign):
            out = call_with_masks(self.model, xb, masks, lambda *args: functional_call(self.model, params, args))
            return F.cross_entropy(out.float(), yb) * sign

        self._grad = vmap(grad(loss_fn), in_dims=(0, 0, 0, 0, 0))

    def _stack_global(self, global_flat: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        state = self.layout.unflatten(global_flat)
        return {n: state[n].to(self.device, torch.float32).unsqueeze(0).repeat(k, *[1] * state[n].ndim)
                for n in self.names}

    def close(self) -> None:
        pass

    def train_round(self, global_params: torch.Tensor, agent_ids: Sequence[int], round_: int,
                    grad_mask: torch.Tensor | None = None) -> RoundUpdates:
        t0 = time.perf_counter()
        ids = np.asarray(agent_ids, dtype=np.int64)
        out = torch.empty((len(ids), self.layout.numel), dtype=torch.float32, device=self.device)
        self._train_into(out, global_params, [self.ctx.indices(a, round_) for a in ids], round_, [int(a) for a in ids],
                         [self.ctx.loss_sign(a, round_) for a in ids], grad_mask)
        return RoundUpdates(out, ids, time.perf_counter() - t0)

    def _train_into(self, out: torch.Tensor, global_flat: torch.Tensor, indices: list[np.ndarray], round_: int,
                    agents: list[int], loss_signs: list[float] | None = None,
                    grad_mask: torch.Tensor | None = None) -> None:
        k = len(agents)
        s = self.s
        self.model.train()
        params = self._stack_global(global_flat, k)
        # per agent: the radius of its projection after every step (inf: none), and whether the
        # round's Neurotoxin mask restricts its gradients
        radii = torch.tensor([self.ctx.radius(a, round_) or float("inf") for a in agents], dtype=torch.float32,
                             device=self.device)
        start = {n: p.clone() for n, p in params.items()} if bool(torch.isfinite(radii).any()) else None
        masked = torch.tensor([grad_mask is not None and self.ctx.masked(a, round_) for a in agents], device=self.device)
        grad_masks = None
        if bool(masked.any()):
            state = self.layout.unflatten(grad_mask.to(self.device, torch.float32))
            grad_masks = {n: state[n].to(torch.float32) for n in self.names}
        self._bufs: dict[str, torch.Tensor] | None = None  # momentum, created at the first step
        plans = [batch_plan(s, len(idx), round_, a) for idx, a in zip(indices, agents)]
        idx_t = [torch.as_tensor(idx, dtype=torch.int64) for idx in indices]
        gens = [seeding.torch_generator(s.seed, seeding.DROPOUT, round_, a) for a in agents]
        signs = torch.tensor(loss_signs if loss_signs is not None else [1.0] * k, dtype=torch.float32, device=self.device)
        n_steps = max(len(p) for p in plans)
        for t in range(n_steps):
            groups: dict[int, list[int]] = {}
            for i, plan in enumerate(plans):
                if t < len(plan):
                    groups.setdefault(len(plan[t]), []).append(i)
            for bsz, members in groups.items():
                # on the params' device: index_copy_ into the momentum buffers refuses a CPU index on CUDA
                g_idx = torch.tensor(members, dtype=torch.int64, device=self.device)
                whole = len(members) == k
                xb = torch.stack([self.x[idx_t[i][plans[i][t]]] for i in members]).to(self.device)
                yb = torch.stack([self.y[idx_t[i][plans[i][t]]] for i in members]).to(self.device)
                masks_per = [make_dropout_masks(self.shapes, bsz, gens[i], self.device, self._mask_dtype) for i in members]
                masks = [torch.stack([m[j] for m in masks_per]) for j in range(len(self.shapes))]
                p_g = params if whole else {n: v[g_idx] for n, v in params.items()}
                try:
                    with self._autocast():
                        grads = self._grad(p_g, xb, yb, masks, signs[g_idx] if not whole else signs)
                except RuntimeError as exc:
                    if "randomness" not in str(exc):
                        raise
                    raise EngineError(f"the vectorized engine cannot train model {self.ctx.model_name!r}: it draws "
                                      f"random numbers in its forward pass outside nn.Dropout (e.g. F.dropout), "
                                      f"which vmap cannot replay; use nn.Dropout layers, or train_mode = "
                                      f"'sequential' or 'processes'") from exc
                if grad_masks is not None:  # Neurotoxin: the masked agents' gradients on their coordinates only
                    rows = masked if whole else masked[g_idx]
                    if bool(rows.any()):
                        for n in self.names:
                            grads[n][rows] *= grad_masks[n]
                self._sgd_step(params, p_g, grads, g_idx, whole)
                if start is not None:
                    self._project(params, start, g_idx, whole, radii if whole else radii[g_idx])
        with torch.no_grad():
            state = self.layout.unflatten(global_flat)
            for i in range(k):
                for n in self.names:
                    state[n] = params[n][i]
                out[i].copy_(self.layout.flatten(state)).sub_(global_flat)

    @torch.no_grad()
    def _sgd_step(self, params, p_g, grads, g_idx, whole) -> None:
        s = self.s
        names = self.names
        g_list = [grads[n] for n in names]
        if s.grad_clip > 0:
            # per agent: the norm over all its gradients, as torch.nn.utils.clip_grad_norm_
            sq = torch.stack([g.flatten(1).pow(2).sum(1) for g in g_list]).sum(0)
            coef = (s.grad_clip / (sq.sqrt() + 1e-6)).clamp(max=1.0)
            for g in g_list:
                g.mul_(coef.view(-1, *[1] * (g.ndim - 1)))
        if self._bufs is None and s.momentum > 0:
            self._bufs = {n: torch.zeros_like(params[n]) for n in names}
        bufs = self._bufs
        for n, g in zip(names, g_list):
            if s.momentum > 0:
                if whole:
                    b = bufs[n].mul_(s.momentum).add_(g)
                else:
                    b = bufs[n][g_idx].mul_(s.momentum).add_(g)
                    bufs[n].index_copy_(0, g_idx, b)
                step = b
            else:
                step = g
            if whole:
                params[n].sub_(step, alpha=s.lr)
            else:
                params[n].index_copy_(0, g_idx, p_g[n].sub_(step, alpha=s.lr))

    @torch.no_grad()
    def _project(self, params, start, g_idx, whole, r) -> None:
        sel = (lambda v: v) if whole else (lambda v: v[g_idx])
        diffs = {n: sel(params[n]) - sel(start[n]) for n in self.names}
        norm = torch.stack([d.flatten(1).pow(2).sum(1) for d in diffs.values()]).sum(0).sqrt()
        scale = torch.where(norm > r, r / norm, torch.ones_like(norm))
        for n, d in diffs.items():
            new = sel(start[n]) + d * scale.view(-1, *[1] * (d.ndim - 1))
            if whole:
                params[n].copy_(new)
            else:
                params[n].index_copy_(0, g_idx, new)
