"""Metrics of a global model: validation accuracy and loss, base-class accuracy, backdoor accuracy."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 512, device: torch.device | None = None) -> torch.Tensor:
    """Logits of ``model`` on ``x`` (eval mode, in batches)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


def mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy, summed exactly (``math.fsum`` over the per-sample losses) and rounded
    to float32 (the precision of the logits it comes from).

    ``F.cross_entropy``'s own mean reduces in parallel, so its last bits move with the thread
    count; an exact sum does not. Rounding to float32 keeps the numbers of earlier results (a
    float32 mean) and absorbs last-bit differences of the logits themselves: bf16 emulated on a
    CPU without native bf16 rounds a convolution's sums differently on 1 and 2 threads.
    """
    if labels.numel() == 0:
        return float("nan")
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    return float(torch.tensor(math.fsum(per_sample.tolist()) / labels.numel(), dtype=torch.float32))


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    if labels.numel() == 0:
        return float("nan")
    return float((logits.argmax(1) == labels).to(torch.float64).mean())


@torch.no_grad()
def evaluate(model: nn.Module, val_x: torch.Tensor, val_y: torch.Tensor, base_class: int,
             backdoor_x: torch.Tensor, target_class: int) -> dict[str, float]:
    """The paper's three numbers, as fractions in [0, 1]:

    - ``val_acc`` / ``val_loss``: on the dataset's own test split;
    - ``base_acc``: accuracy on the clean test images of the base class;
    - ``backdoor_acc``: share of the base-class test images *with the trojan* classified as
      the target class; ``backdoor_loss``: their cross-entropy against the target class
      (Figure 4 plots it).
    """
    logits = predict(model, val_x)
    base_rows = val_y == base_class
    bd_logits = predict(model, backdoor_x)
    bd_target = torch.full((bd_logits.shape[0],), target_class, dtype=torch.int64)
    return {
        "val_acc": accuracy(logits, val_y),
        "val_loss": mean_cross_entropy(logits, val_y),
        "base_acc": accuracy(logits[base_rows], val_y[base_rows]),
        "backdoor_acc": accuracy(bd_logits, bd_target),
        "backdoor_loss": mean_cross_entropy(bd_logits, bd_target),
    }
