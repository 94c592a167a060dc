"""Update screening: the checks a server makes on each update before any rule sees it.

One module serves the simulator (:mod:`robustlr.sim.loop`) and the Flower strategies
(:mod:`robustlr.integrations.flower`). An update is rejected, for one reason each, when

``shape``
    its arrays do not have the model's shapes (or a flat row has the wrong length);
``dtype``
    its arrays are not floating point of the model's dtypes (an int or float16 copy of the
    weights is not what the clients were asked to send);
``non-finite``
    it holds NaN or an infinity;
``norm``
    its L2 norm exceeds ``norm_multiple`` times the median norm of the round's other
    well-formed updates (off with ``norm_multiple = 0``). The median is taken over the updates
    that passed the checks above, so one huge update cannot move it much, and a round of one
    update has nothing to compare against and keeps it.

A rejected update is recorded (:class:`Rejection`: the row, the agent, the reason and a
detail), logged by the caller, and left out; the round goes on with the rest. The robust
learning rate's threshold then follows :class:`robustlr.aggregation.Threshold` (a count of a full round):
theta scales with the voters left.

Norm screening alone is a defense against boosted (model-replacement) updates; an attacker
who knows the multiple stays under it (see :mod:`robustlr.attacks.model`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = ["REASONS", "Rejection", "Screening", "array_problem", "screen_updates"]

REASONS = ("shape", "dtype", "non-finite", "norm")


@dataclass(frozen=True)
class Rejection:
    """One rejected update: its row in the round's matrix, its agent, why, and the numbers."""

    row: int
    agent: Hashable
    reason: str  # one of REASONS
    detail: str

    def to_dict(self) -> dict:
        return {"agent": self.agent, "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True)
class Screening:
    """The outcome of :func:`screen_updates`: the rows kept (in order) and the rejections."""

    keep: list[int]
    rejections: list[Rejection] = field(default_factory=list)
    median_norm: float | None = None  # the norm screen's reference (None when off or nothing to compare)
    norms: Tensor | None = None  # every row's L2 norm (inf for non-finite rows), as float32

    @property
    def rejected_agents(self) -> list:
        return [r.agent for r in self.rejections]


def array_problem(arrays: Sequence[np.ndarray | Tensor], shapes: Sequence[tuple[int, ...]],
                  dtypes: Sequence[np.dtype | torch.dtype] | None = None) -> tuple[str, str] | None:
    """``(reason, detail)`` when one of ``arrays`` has another shape than ``shapes``, another dtype
    than ``dtypes`` (without ``dtypes``: is not floating point), or holds NaN/inf; None when all is well.

    For updates that arrive as separate arrays (one per tensor of the model), as Flower's do.
    """
    if len(arrays) != len(shapes):
        return "shape", f"{len(arrays)} arrays, the model has {len(shapes)}"
    for i, (a, shape) in enumerate(zip(arrays, shapes)):
        a_np = a.detach().cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)
        if tuple(a_np.shape) != tuple(shape):
            return "shape", f"array {i} has shape {tuple(a_np.shape)}, the model's is {tuple(shape)}"
        if dtypes is not None:
            want = dtypes[i]
            want_np = torch.empty(0, dtype=want).numpy().dtype if isinstance(want, torch.dtype) else np.dtype(want)
            if a_np.dtype != want_np:
                return "dtype", f"array {i} is {a_np.dtype}, the model's is {want_np}"
        elif not np.issubdtype(a_np.dtype, np.floating):
            return "dtype", f"array {i} is {a_np.dtype}, not floating point"
        if np.issubdtype(a_np.dtype, np.floating) and not np.isfinite(a_np).all():
            return "non-finite", f"array {i} holds NaN or inf"
    return None


def screen_updates(updates: Tensor | Sequence[Tensor], agent_ids: Sequence[Hashable] | None = None, *,
                   numel: int | None = None, dtype: torch.dtype | None = None,
                   norm_multiple: float = 0.0, norms: Tensor | None = None) -> Screening:
    """Screen the round's flat updates (an ``(n, P)`` matrix or a sequence of 1-D tensors).

    Args:
        updates: row k is agent ``agent_ids[k]``'s update.
        agent_ids: the agents (default: the row numbers).
        numel: the expected length of each row (default: the first row's, or the matrix's width).
        dtype: the expected dtype (default: any floating-point dtype).
        norm_multiple: reject rows whose norm exceeds this multiple of the median norm of the
            other well-formed rows; 0 turns the norm screen off.
        norms: the rows' L2 norms if the caller has them already (one pass saved).

    Returns a :class:`Screening`. Nothing is modified.

    Example:
        >>> U = torch.tensor([[1.0, 0.0], [0.0, 1.0], [30.0, 40.0], [float("nan"), 0.0]])
        >>> s = screen_updates(U, ["a", "b", "c", "d"], norm_multiple=3)
        >>> s.keep, [(r.agent, r.reason) for r in s.rejections], s.median_norm
        ([0, 1], [('d', 'non-finite'), ('c', 'norm')], 1.0)
    """
    norm_multiple = float(norm_multiple)
    if not np.isfinite(norm_multiple) or norm_multiple < 0:
        raise ValueError(f"norm_multiple must be a finite number >= 0 (0 = off), got {norm_multiple!r}")
    rows = list(updates) if not isinstance(updates, Tensor) else None
    n = len(rows) if rows is not None else int(updates.shape[0])
    ids = list(range(n)) if agent_ids is None else list(agent_ids)
    if len(ids) != n:
        raise ValueError(f"agent_ids has {len(ids)} entries for {n} updates; pass one id per update")
    rejections: list[Rejection] = []
    ok = np.ones(n, dtype=bool)
    if rows is not None:  # separate rows: check each one's length and dtype
        want = numel if numel is not None else (int(rows[0].numel()) if n else 0)
        norm_list = []
        for k, row in enumerate(rows):
            if not isinstance(row, Tensor) or row.ndim != 1 or int(row.numel()) != want:
                got = tuple(row.shape) if isinstance(row, Tensor) else type(row).__name__
                rejections.append(Rejection(k, ids[k], "shape", f"shape {got}, expected ({want},)"))
                ok[k] = False
            elif not row.is_floating_point() or (dtype is not None and row.dtype != dtype):
                rejections.append(Rejection(k, ids[k], "dtype", f"{row.dtype}, expected {dtype or 'floating point'}"))
                ok[k] = False
            norm_list.append(torch.linalg.vector_norm(row.float()) if ok[k] else torch.tensor(float("inf")))
        norms_t = torch.stack(norm_list) if norm_list else torch.zeros(0)
    else:
        if updates.ndim != 2 or (numel is not None and int(updates.shape[1]) != numel):
            raise ValueError(f"updates must be an (n_agents, {numel or 'n_params'}) matrix, got {tuple(updates.shape)}")
        if not updates.is_floating_point() or (dtype is not None and updates.dtype != dtype):
            for k in range(n):
                rejections.append(Rejection(k, ids[k], "dtype", f"{updates.dtype}, expected {dtype or 'floating point'}"))
            return Screening([], rejections, None, None)
        norms_t = norms if norms is not None else torch.linalg.vector_norm(updates, dim=1)
    norms_t = norms_t.detach().float().cpu()
    # a finite norm proves finite entries; a non-finite one may be an overflow: check exactly
    for k in np.flatnonzero(ok & ~torch.isfinite(norms_t).numpy()):
        row = rows[k] if rows is not None else updates[k]
        if not bool(torch.isfinite(row).all()):
            rejections.append(Rejection(int(k), ids[k], "non-finite", "holds NaN or inf"))
            ok[k] = False
    median = None
    if norm_multiple > 0 and ok.sum() >= 2:
        good = norms_t[torch.from_numpy(ok)]
        median = float(good.median()) if ok.sum() % 2 else float(good.sort().values[int(ok.sum()) // 2 - 1:
                                                                                 int(ok.sum()) // 2 + 1].mean())
        limit = norm_multiple * median
        for k in np.flatnonzero(ok):
            if float(norms_t[k]) > limit:
                rejections.append(Rejection(int(k), ids[k], "norm",
                                            f"norm {float(norms_t[k]):.4g} > {norm_multiple:g} x median {median:.4g}"))
                ok[k] = False
    return Screening([int(k) for k in np.flatnonzero(ok)], rejections, median, norms_t)
