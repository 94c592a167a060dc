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
        size = (batch, *shape)
        if p == 0.5:
            # a fair coin per unit: randint is about 5x faster than bernoulli_ on the CPU
            m = torch.randint(0, 2, size, generator=generator, dtype=torch.float32)
        else:
            m = (torch.rand(size, generator=generator) < keep).to(torch.float32)
        out.append(m.mul_(1.0 / keep).to(device) if keep > 0 else m.to(device))
    return out
