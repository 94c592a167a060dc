"""The naive baseline: local training as a typical research codebase writes it.

One ``DataLoader`` per agent over a dataset that converts and normalises every sample in
Python (``__getitem__``), a deep copy of the model per agent, ``torch.optim.SGD`` with
momentum and gradient clipping. ``robustlr bench engines`` times it beside our engines.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class PerSampleDataset(torch.utils.data.Dataset):
    """uint8 images (N, C, H, W) converted and normalised one sample at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: float, std: float) -> None:
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = torch.from_numpy(self.images[i].astype(np.float32) / 255.0)
        return (x - self.mean) / self.std, int(self.labels[i])


def naive_train(model: nn.Module, loader, epochs: int, lr: float, momentum: float, max_steps: int,
                grad_clip: float = 10.0) -> int:
    """The reference-style loop on a copy of ``model``; returns the samples seen."""
    local = copy.deepcopy(model)
    local.train()
    opt = torch.optim.SGD(local.parameters(), lr=lr, momentum=momentum)
    seen = steps = 0
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(local(xb), yb).backward()
            nn.utils.clip_grad_norm_(local.parameters(), grad_clip)
            opt.step()
            seen += len(yb)
            steps += 1
            if steps >= max_steps:
                return seen
    return seen
