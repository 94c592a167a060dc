"""Data poisoning for trojan backdoors: the one place samples get poisoned.

A corrupt agent adds the trojan to a fraction P of its *base-class* samples and relabels them
to the target class (paper, section 5). The same :func:`poison` builds the backdoor test set:
every base-class test image with the full trojan, labelled target.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from robustlr.attacks.trojans import apply_trojan


def select_poisoned(
    labels: torch.Tensor,
    indices: np.ndarray,
    base_class: int,
    fraction: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """The samples of ``indices`` to poison: ``floor(fraction * n_base)`` of its base-class ones.

    Args:
        labels: int labels of the whole split, shape (N,).
        indices: the agent's samples, as indices into ``labels``.
        base_class: the class whose samples get the trojan.
        fraction: P, in [0, 1].
        rng: the only source of randomness; the same generator state gives the same choice.

    Returns:
        A sorted int64 array: a subset, drawn without replacement, of the entries of
        ``indices`` whose label is ``base_class``. The count is the floor of
        ``fraction * n_base`` (computed with a 1e-9 tolerance, so 0.29 of 100 is 29, not 28).

    Example:
        >>> labels = torch.tensor([5, 1, 5, 5, 2, 5])
        >>> select_poisoned(labels, np.arange(6), 5, 0.5, np.random.default_rng(0)).size
        2
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating, np.integer)) or not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be a number in [0, 1], got {fraction!r}")
    if isinstance(base_class, bool) or not isinstance(base_class, (int, np.integer)) or base_class < 0:
        raise ValueError(f"base_class must be a non-negative integer, got {base_class!r}")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    indices = np.asarray(indices)
    if indices.ndim != 1 or not (indices.size == 0 or np.issubdtype(indices.dtype, np.integer)):
        raise ValueError(f"indices must be a 1-D integer array, got {indices.dtype} of shape {indices.shape}")
    label_array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    base = indices[label_array[indices] == base_class].astype(np.int64)
    count = math.floor(fraction * base.size + 1e-9)
    chosen = rng.choice(base, size=count, replace=False)
    return np.sort(chosen)


def poison(
    x_uint8: torch.Tensor,
    y: torch.Tensor,
    poisoned_idx: np.ndarray,
    mask: torch.Tensor,
    value: int,
    target_class: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trojaned, relabelled copies of the rows ``poisoned_idx`` of ``(x_uint8, y)``.

    Args:
        x_uint8: uint8 images (N, C, H, W); not modified.
        y: labels (N,); only its dtype and device are used.
        poisoned_idx: the rows to poison, e.g. from :func:`select_poisoned`.
        mask: the trojan, bool (H, W).
        value: the trojan's pixel value (the dataset's ink).
        target_class: the label the poisoned rows get.

    Returns:
        ``(x_new, y_new)``: ``x_new`` has shape (len(poisoned_idx), C, H, W) with the trojan
        drawn in every channel, ``y_new`` is ``target_class`` repeated, in ``y``'s dtype.
        Put them back with ``x[poisoned_idx] = x_new`` on a copy, or concatenate them.
    """
    if isinstance(target_class, bool) or not isinstance(target_class, (int, np.integer)) or target_class < 0:
        raise ValueError(f"target_class must be a non-negative integer, got {target_class!r}")
    rows = torch.as_tensor(np.asarray(poisoned_idx, dtype=np.int64), device=x_uint8.device)
    x_new = apply_trojan(x_uint8[rows], mask, value)
    y_new = torch.full((rows.numel(),), int(target_class), dtype=y.dtype, device=y.device)
    return x_new, y_new


def poison_agents(
    x_uint8: torch.Tensor,
    y: torch.Tensor,
    agent_indices: list[np.ndarray],
    corrupt: np.ndarray,
    masks: list[torch.Tensor | None],
    value: int,
    base_class: int,
    target_class: int,
    fraction: float,
    rng_for: Callable[[int], np.random.Generator],
) -> tuple[torch.Tensor, torch.Tensor, dict[int, int]]:
    """The training set with every corrupt agent's poisoned samples trojaned and relabelled.

    Corrupt agent ``corrupt[i]`` poisons :func:`select_poisoned` of its samples (drawn from
    ``rng_for(agent)``) with ``masks[i % len(masks)]``: one mask is the plain trojan attack,
    the parts of :func:`robustlr.attacks.dba.dba_parts` a distributed backdoor.

    Returns ``(x, y, poisoned_per_agent)``: copies of ``x_uint8`` and ``y`` (the inputs are not
    modified) and, per corrupt agent id, how many of its samples were poisoned (0 for an agent
    without base-class samples, which then trains honestly).
    """
    if not masks:
        raise ValueError("masks must hold at least one trojan mask")
    x_out = x_uint8.clone()
    y_out = y.clone()
    poisoned: dict[int, int] = {}
    for i, agent in enumerate(corrupt):
        idx = select_poisoned(y, agent_indices[agent], base_class, fraction, rng_for(int(agent)))
        poisoned[int(agent)] = len(idx)
        if len(idx):
            rows = torch.from_numpy(np.asarray(idx, dtype=np.int64))
            mask = masks[i % len(masks)]
            if mask is None:  # a semantic backdoor (label flip): relabelled, nothing drawn; any kind of sample
                y_out[rows] = target_class
                continue
            x_new, y_new = poison(x_uint8, y, idx, mask, value, target_class)
            x_out[rows] = x_new
            y_out[rows] = y_new
    return x_out, y_out, poisoned
