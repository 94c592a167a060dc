"""Pieces shared by the models."""

from __future__ import annotations

from typing import Sequence

import torch


def make_dropout_masks(shapes: Sequence[tuple[tuple[int, ...], float]], batch: int,
                       generator: torch.Generator, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Inverted-dropout masks (0 or 1/(1-p)) for one batch, drawn from ``generator``.

    ``dtype``: the activations' dtype (bf16 under autocast), so that the multiplication by
    the mask neither promotes the activations to fp32 nor mixes dtypes in its backward
    pass (both slow). The draws do not depend on ``dtype``, and 0 and 2 (p = 0.5) are exact in
    bf16, so the masks' values do not either; for other p, 1/(1-p) is rounded to ``dtype``.
    """
    out = []
    for shape, p in shapes:
        keep = 1.0 - p
        size = (batch, *shape)
        if p == 0.5:
            # a fair coin per unit: randint is about 5x faster than bernoulli_ on the CPU
            m = torch.randint(0, 2, size, generator=generator, dtype=dtype)
        else:
            m = (torch.rand(size, generator=generator) < keep).to(dtype)
        out.append(m.mul_(1.0 / keep).to(device) if keep > 0 else m.to(device))
    return out
