"""Distributed backdoor (DBA, Xie et al. 2019), :func:`dba_parts`.

The plus in 4 parts is split into its four bar halves in the authors' order (upper vertical,
lower vertical, left horizontal, right horizontal), in one of two ways (``split``):

``"authors"`` (the default), as ``add_pattern_bd`` of the paper's code draws them. With the
centre at (r, c), bars of length L = 2h + 1 and s = L - 1 (the authors' ``size``):

- upper vertical: rows r-h .. r at column c (h + 1 pixels, the centre included);
- lower vertical: rows r+1 .. r+h (h pixels);
- left horizontal: row r, columns c-h .. c + s//4;
- right horizontal: row r, columns c - s//4 + 1 .. c+h.

So the parts overlap: on CIFAR-10's plus (L 7, centre (8, 5)) they have 4, 3, 5 and 4 pixels,
the horizontal halves share (8, 5) and (8, 6), and the centre is drawn by three parts; their
union is the whole plus (13 pixels).

``"disjoint"``: no pixel in two parts. The centre belongs to the upper vertical part only, the
horizontal halves are the pixels left and right of it (4, 3, 3, 3 pixels on CIFAR-10).

Any other trojan, or another number of parts, is split into ``n`` spatial pieces whatever
``split`` says: the mask's pixels sorted by column then row and cut into ``n`` contiguous
groups whose sizes differ by at most one (left-to-right strips).
"""

from __future__ import annotations

import numpy as np
import torch

from robustlr.attacks.trojans import AUTHORS_LOGOS, _mask_np, canonical_dataset, plus_geometry

__all__ = ["dba_parts"]


SPLITS = ("authors", "disjoint")


def _plus_halves(mask: np.ndarray, dataset: str, split: str) -> list[np.ndarray]:
    g = plus_geometry(mask.shape[0], mask.shape[1], dataset)
    rows, cols = np.nonzero(mask)
    vertical = cols == g.col
    if split == "authors":
        quarter = (g.length - 1) // 4
        horizontal = rows == g.row
        left = horizontal & (cols <= g.col + quarter)
        right = horizontal & (cols >= g.col - quarter + 1)
    else:
        horizontal = (rows == g.row) & ~vertical  # the centre pixel stays with the vertical bar
        left, right = horizontal & (cols < g.col), horizontal & (cols > g.col)
    groups = [
        vertical & (rows <= g.row),  # upper vertical, centre included
        vertical & (rows > g.row),  # lower vertical
        left,  # left horizontal
        right,  # right horizontal
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
    name: str, n_parts: int, height: int = 28, width: int = 28, dataset: str = "fashion-mnist",
    split: str = "authors",
) -> list[torch.Tensor]:
    """Split a trojan into ``n_parts`` non-empty masks whose union is the trojan.

    Corrupt agent ``i`` of a distributed backdoor uses part ``i % n_parts``; evaluation uses the
    full :func:`trojan_mask`. See the module docstring for how each trojan is split; only the
    plus in 4 parts with ``split="authors"`` has overlapping parts.

    Raises:
        ValueError: ``n_parts`` is not a positive integer or exceeds the trojan's pixel count,
            or ``split`` is not one of :data:`SPLITS`.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(map(repr, SPLITS))}, got {split!r}")
    if name in AUTHORS_LOGOS:
        raise ValueError(f"the {name} trojan (the authors' greyscale logo) is not split into parts (the authors "
                         f"split only the plus): use attack = 'trojan', or trojan = {name.removesuffix('-authors')!r} "
                         f"(drawn) for a distributed backdoor")
    mask = _mask_np(name, height, width, dataset)
    n_pixels = int(mask.sum())
    if isinstance(n_parts, bool) or not isinstance(n_parts, (int, np.integer)) or not 1 <= n_parts <= n_pixels:
        raise ValueError(f"n_parts must be an integer in 1..{n_pixels} (the {name} trojan's pixels), got {n_parts!r}")
    if name == "plus" and n_parts == 4:
        parts = _plus_halves(mask, canonical_dataset(dataset), split)
    else:
        parts = _strips(mask, n_parts)
    return [torch.from_numpy(p) for p in parts]
