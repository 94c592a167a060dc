"""Distributed backdoor (DBA, Xie et al. 2019), :func:`dba_parts`: the plus in 4 parts is split
into its four bar halves in the authors' order (upper vertical, lower vertical, left
horizontal, right horizontal). The centre pixel belongs to the *upper vertical* part only; the
horizontal halves are the pixels left and right of the centre. (The authors' code lets the
parts overlap around the centre; ours are disjoint.) Any other trojan, or another number of
parts, is split into ``n`` spatial pieces: the mask's pixels sorted by column then row and cut
into ``n`` contiguous groups whose sizes differ by at most one (left-to-right strips).
"""

from __future__ import annotations

import numpy as np
import torch

from robustlr.attacks.trojans import _PLUS, _mask_np, canonical_dataset

__all__ = ["dba_parts"]


def _plus_halves(mask: np.ndarray, dataset: str) -> list[np.ndarray]:
    g = _PLUS[dataset]
    rows, cols = np.nonzero(mask)
    vertical = cols == g.col
    horizontal = (rows == g.row) & ~vertical  # the centre pixel stays with the vertical bar
    groups = [
        vertical & (rows <= g.row),  # upper vertical, centre included
        vertical & (rows > g.row),  # lower vertical
        horizontal & (cols < g.col),  # left horizontal
        horizontal & (cols > g.col),  # right horizontal
    ]
    parts = []
    for sel in groups:
        part = np.zeros_like(mask)
        part[rows[sel], cols[sel]] = True
        parts.append(part)
    return parts


def _strips(mask: np.ndarray, n_parts: int) -> list[np.ndarray]:
    rows, cols = np.nonzero(mask)
    order = np.lexsort((rows, cols))  # by column, then row
    parts = []
    for chunk in np.array_split(order, n_parts):
        part = np.zeros_like(mask)
        part[rows[chunk], cols[chunk]] = True
        parts.append(part)
    return parts


def dba_parts(
    name: str, n_parts: int, height: int = 28, width: int = 28, dataset: str = "fashion-mnist"
) -> list[torch.Tensor]:
    """Split a trojan into ``n_parts`` disjoint, non-empty masks whose union is the trojan.

    Corrupt agent ``i`` of a distributed backdoor uses part ``i % n_parts``; evaluation uses the
    full :func:`trojan_mask`. See the module docstring for how each trojan is split.

    Raises:
        ValueError: ``n_parts`` is not a positive integer or exceeds the trojan's pixel count.
    """
    mask = _mask_np(name, height, width, dataset)
    n_pixels = int(mask.sum())
    if isinstance(n_parts, bool) or not isinstance(n_parts, (int, np.integer)) or not 1 <= n_parts <= n_pixels:
        raise ValueError(f"n_parts must be an integer in 1..{n_pixels} (the {name} trojan's pixels), got {n_parts!r}")
    if name == "plus" and n_parts == 4:
        parts = _plus_halves(mask, canonical_dataset(dataset))
    else:
        parts = _strips(mask, n_parts)
    return [torch.from_numpy(p) for p in parts]
