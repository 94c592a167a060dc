"""Pieces shared by the models."""

from __future__ import annotations

from typing import Sequence

import torch


def make_dropout_masks(shapes: Sequence[tuple[tuple[int, ...], float]], batch: int,
                       generator: torch.Generator, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Inverted-dropout masks (0 or 1/(1-p)) for one batch, drawn from ``generator``."""
    out = []
    for shape, p in shapes:
        keep = 1.0 - p
        m = torch.empty((batch, *shape), device="cpu").bernoulli_(keep, generator=generator)
        out.append(m.mul_(1.0 / keep).to(device) if keep > 0 else m.to(device))
    return out
