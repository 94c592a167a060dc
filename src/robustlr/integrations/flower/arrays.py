"""Flower's ``ArrayRecord`` and robustlr's flat vectors, both ways, and the screening of replies.

An ``ArrayRecord`` holds named arrays (a model's state dict); robustlr's rules work on one flat
float vector per agent. :class:`ArrayLayout` fixes the order (the global record's keys), the
shapes and the dtypes, and converts between the two.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message

from robustlr.aggregation.screening import array_problem

log = logging.getLogger("robustlr")


@dataclass(frozen=True)
class ArrayLayout:
    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]

    @classmethod
    def of(cls, record: ArrayRecord) -> "ArrayLayout":
        arrays = [record[k].numpy() for k in record.keys()]
        return cls(tuple(record.keys()), tuple(a.shape for a in arrays), tuple(a.dtype for a in arrays))

    @property
    def numel(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.shapes))

    def flatten(self, record: ArrayRecord) -> torch.Tensor:
        """The record's arrays as one float32 vector, in this layout's order."""
        return torch.from_numpy(np.concatenate([np.asarray(record[k].numpy(), dtype=np.float32).ravel()
                                                for k in self.keys]))

    def unflatten(self, flat: torch.Tensor) -> ArrayRecord:
        out, offset = {}, 0
        values = flat.detach().cpu().numpy()
        for key, shape, dtype in zip(self.keys, self.shapes, self.dtypes):
            n = int(np.prod(shape))
            chunk = values[offset: offset + n].reshape(shape)
            if np.issubdtype(dtype, np.integer):
                chunk = np.rint(chunk)
            out[key] = Array(np.ascontiguousarray(chunk.astype(dtype)))
            offset += n
        return ArrayRecord(out)

    def mask(self, keys: Iterable[str] | None) -> torch.Tensor:
        """True on the coordinates of ``keys`` (all when None)."""
        if keys is None:
            return torch.ones(self.numel, dtype=torch.bool)
        wanted = set(keys)
        unknown = wanted - set(self.keys)
        if unknown:
            raise ValueError(f"keys {sorted(unknown)} are not arrays of the model; its arrays: {list(self.keys)}")
        return torch.cat([torch.full((int(np.prod(s)),), k in wanted, dtype=torch.bool)
                          for k, s in zip(self.keys, self.shapes)])


def trainable_keys(model: torch.nn.Module) -> list[str]:
    """The state-dict keys of ``model`` that are trainable parameters (not batch-norm buffers):
    what the robust learning rate may flip and ``eta`` scales."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def screen_replies(replies: Iterable[Message], layout: ArrayLayout, arrayrecord_key: str,
                   weight_key: str | None, rejected: list | None = None) -> tuple[list[Message], Counter]:
    """The replies that can be aggregated, and why the others were dropped.

    A reply is dropped (and counted, never averaged in) when it carries an error, misses the
    array record or the weight (unless ``weight_key`` is None), has other arrays, shapes or dtypes than the model sent, or holds
    NaN or infinite values; ``rejected``, when given, gets ``(message, reason)`` for each (the per-array checks are :func:`robustlr.aggregation.screening.array_problem`,
    the simulator's screening; the norm screen runs on the updates, in the strategies)."""
    kept: list[Message] = []
    dropped: Counter = Counter()
    for msg in replies:
        reason = _problem(msg, layout, arrayrecord_key, weight_key)
        if reason is None:
            kept.append(msg)
        else:
            dropped[reason] += 1
            if rejected is not None:
                rejected.append((msg, reason))
            src = getattr(msg.metadata, "src_node_id", "?")
            log.warning("dropped the reply of node %s: %s", src, reason)
    return kept, dropped


def _problem(msg: Message, layout: ArrayLayout, arrayrecord_key: str, weight_key: str | None) -> str | None:
    if msg.has_error():
        return "error"
    content = msg.content
    if arrayrecord_key not in content.array_records:
        return "no arrays"
    record = content.array_records[arrayrecord_key]
    if tuple(record.keys()) != layout.keys:
        return "other arrays"
    problem = array_problem([record[key].numpy() for key in layout.keys], layout.shapes, layout.dtypes)
    if problem is not None:
        reason, detail = problem
        return {"shape": "wrong shape", "dtype": "wrong dtype"}.get(reason, reason)
    if weight_key is None:  # the server knows the sizes itself (ExperimentStrategy): no claim is read
        return None
    metrics = list(content.metric_records.values())
    if len(metrics) != 1 or weight_key not in metrics[0]:
        return "no weight"
    w = metrics[0][weight_key]
    if not isinstance(w, (int, float)) or not np.isfinite(w) or w <= 0:
        return "bad weight"
    return None


def updates_of(replies: Sequence[Message], layout: ArrayLayout, global_flat: torch.Tensor,
               arrayrecord_key: str, weight_key: str) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The replies' updates (reply weights minus the global ones), their weights and node ids."""
    rows = [layout.flatten(m.content.array_records[arrayrecord_key]) - global_flat for m in replies]
    weights = torch.tensor([float(next(iter(m.content.metric_records.values()))[weight_key]) for m in replies])
    return torch.stack(rows), weights, [int(m.metadata.src_node_id) for m in replies]
