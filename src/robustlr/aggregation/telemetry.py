"""Vote telemetry: who won the sign vote of a round, from the stacked update matrix.

Beyond the paper: RLR's argument is that honest agents outvote the corrupt ones coordinate by
coordinate. These numbers show it per round, for any rule (with RLR or without):

- ``honest_agreement`` / ``corrupt_agreement``: the mean, over the honest (corrupt) agents, of
  the fraction of coordinates on which the agent's update has the sign of the applied step
  (counted over the coordinates where the step is non-zero; an agent's zero entry disagrees);
- ``honest_outvoted`` / ``corrupt_outvoted``: the fraction of coordinates on which the group's
  collective vote, ``sgn(sum of its agents' sgn(update))``, is opposite to the applied step's
  sign (over the coordinates where both are non-zero);
- ``flipped_per_layer``: with a layout and RLR's flip mask, the fraction of each layer's
  coordinates that RLR flipped;
- ``layer_telemetry``: with a layout, per array (buffers included), each group's agreement with
  the step and its agents' mean update norm on that array.

The step is what the server applies (the rule's output; its sign is the server step's sign for
a positive eta). A group with no agent in the round gives ``None``. One pass over the matrix in
blocks of columns, so the extra memory is a few columns' worth.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .layout import ParamLayout

__all__ = ["vote_telemetry", "flipped_per_layer", "layer_telemetry"]

_BLOCK = 1 << 16


def vote_telemetry(updates: Tensor, corrupt: Tensor, step: Tensor) -> dict[str, float | None]:
    """Agreement of each group with the applied step, and how often each group's vote lost.

    >>> import torch
    >>> U = torch.tensor([[1.0, 1.0, -1.0], [1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]])
    >>> t = vote_telemetry(U, torch.tensor([False, False, True]), torch.tensor([0.5, -0.2, -0.1]))
    >>> [round(t[k], 4) for k in ("honest_agreement", "corrupt_agreement", "corrupt_outvoted", "honest_outvoted")]
    [0.8333, 0.3333, 0.6667, 0.0]
    """
    if updates.ndim != 2 or corrupt.shape != (updates.shape[0],) or step.shape != (updates.shape[1],):
        raise ValueError(f"updates (n, p), corrupt (n,) and step (p,) expected; got {tuple(updates.shape)}, "
                         f"{tuple(corrupt.shape)}, {tuple(step.shape)}")
    corrupt = corrupt.to(device=updates.device, dtype=torch.bool)
    n, p = updates.shape
    agree = torch.zeros(n, dtype=torch.float64, device=updates.device)
    nonzero_step = 0
    lost = {"honest": 0, "corrupt": 0}
    voted = {"honest": 0, "corrupt": 0}
    groups = {"honest": ~corrupt, "corrupt": corrupt}
    for start in range(0, p, _BLOCK):
        s = torch.sign(step[start:start + _BLOCK]).to(torch.int8)
        signs = torch.sign(updates[:, start:start + _BLOCK]).to(torch.int8)
        agree += (signs * s > 0).sum(dim=1, dtype=torch.float64)
        nonzero_step += int(torch.count_nonzero(s))
        for g, rows in groups.items():
            if rows.any():
                vote = torch.sign(signs[rows].sum(dim=0, dtype=torch.int32))
                prod = vote * s
                lost[g] += int((prod < 0).sum())
                voted[g] += int((prod != 0).sum())
    frac = agree / nonzero_step if nonzero_step else torch.zeros_like(agree)
    out: dict[str, float | None] = {}
    for g, rows in groups.items():
        out[f"{g}_agreement"] = float(frac[rows].mean()) if rows.any() else None
        out[f"{g}_outvoted"] = (lost[g] / voted[g] if voted[g] else 0.0) if rows.any() else None
    return out


def flipped_per_layer(flipped: Tensor, layout: ParamLayout) -> dict[str, float]:
    """The fraction of each trainable layout entry's coordinates that RLR flipped (buffers are never flipped).

    >>> import torch
    >>> lay = ParamLayout.from_module(torch.nn.Linear(2, 1))
    >>> flipped_per_layer(torch.tensor([True, False, True]), lay)
    {'weight': 0.5, 'bias': 1.0}
    """
    if flipped.shape != (layout.numel,):
        raise ValueError(f"flipped has {tuple(flipped.shape)} entries, the layout {layout.numel}")
    return {name: float(flipped[o:o + k].float().mean())
            for name, o, k, trainable in zip(layout.names, layout.offsets, layout.numels, layout.is_trainable)
            if k and trainable}


def layer_telemetry(updates: Tensor, corrupt: Tensor, step: Tensor,
                    layout: ParamLayout) -> dict[str, dict[str, float | None]]:
    """Per array of ``layout`` (parameters and buffers): each group's agreement with the step and
    mean update norm.

    For an array with coordinates ``c``: ``honest_agreement`` / ``corrupt_agreement`` is the mean
    over the group's agents of the share of ``c`` (where the step is non-zero) on which the agent's
    update has the step's sign (None when the step is zero on the whole array);
    ``honest_norm`` / ``corrupt_norm`` the mean over the group's agents of ``||update[c]||_2``. A
    group with no agent in the round gives None. Values are rounded to 5 significant digits (they
    are written for every array of every round).

    >>> import torch
    >>> lay = ParamLayout.from_module(torch.nn.Linear(2, 1))
    >>> U = torch.tensor([[3.0, 4.0, 1.0], [-3.0, 4.0, 0.0]])
    >>> t = layer_telemetry(U, torch.tensor([False, True]), torch.tensor([1.0, 1.0, 0.0]), lay)
    >>> t["weight"]
    {'honest_agreement': 1.0, 'corrupt_agreement': 0.5, 'honest_norm': 5.0, 'corrupt_norm': 5.0}
    >>> t["bias"]
    {'honest_agreement': None, 'corrupt_agreement': None, 'honest_norm': 1.0, 'corrupt_norm': 0.0}
    """
    if updates.ndim != 2 or corrupt.shape != (updates.shape[0],) or step.shape != (updates.shape[1],) \
            or updates.shape[1] != layout.numel:
        raise ValueError(f"updates (n, {layout.numel}), corrupt (n,) and step ({layout.numel},) expected; got "
                         f"{tuple(updates.shape)}, {tuple(corrupt.shape)}, {tuple(step.shape)}")
    corrupt = corrupt.to(device=updates.device, dtype=torch.bool)
    groups = {"honest": ~corrupt, "corrupt": corrupt}
    out: dict[str, dict[str, float | None]] = {}
    for name, o, k in zip(layout.names, layout.offsets, layout.numels):
        if not k:
            continue
        block = updates[:, o:o + k].float()
        s = torch.sign(step[o:o + k].float())
        nonzero = int(torch.count_nonzero(s))
        agree = (torch.sign(block) * s > 0).sum(dim=1, dtype=torch.float64) / nonzero if nonzero else None
        norms = torch.linalg.vector_norm(block, dim=1).double()
        row: dict[str, float | None] = {}
        for g, rows in groups.items():  # 5 significant digits: a record per array and round stays small
            row[f"{g}_agreement"] = _sig(float(agree[rows].mean())) if agree is not None and rows.any() else None
        for g, rows in groups.items():
            row[f"{g}_norm"] = _sig(float(norms[rows].mean())) if rows.any() else None
        out[name] = row
    return out


def _sig(x: float, digits: int = 5) -> float:
    return float(f"{x:.{digits}g}")
