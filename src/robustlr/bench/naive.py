"""The naive baseline: local training as a typical research codebase writes it.

What a reference implementation of the paper's experiments runs, and nothing of ours:

- its own model, built fresh in PyTorch's default (contiguous) memory layout: for the paper's
  28x28 CNN the usual layer order (conv, ReLU, conv, ReLU, max-pool, ``nn.Dropout``, ...; ours
  pools before the second ReLU and uses explicit masks); other models are our architectures,
  freshly built, in the default layout;
- a per-sample ``Dataset`` that converts and normalises every uint8 image in Python
  (``__getitem__``, the job of a torchvision transform) and a shuffling ``DataLoader``;
- a deep copy of the global model per agent, ``torch.optim.SGD`` with momentum (the default,
  unfused step) and gradient clipping, one agent after another.

``robustlr bench engines`` times it beside our engines, on the same weights.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from robustlr.models import build_model


class PerSampleDataset(torch.utils.data.Dataset):
    """uint8 images (N, C, H, W) converted and normalised one sample at a time."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: float, std: float) -> None:
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = torch.from_numpy(self.images[i].astype(np.float32) / 255.0)
        return (x - self.mean) / self.std, int(self.labels[i])


class ReferenceMnistCNN(nn.Module):
    """The paper's 28x28 CNN as reference code writes it (same parameters and names as
    :class:`robustlr.models.MnistCNN`, so it loads the same weights)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.drop1 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.drop2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = self.drop1(F.max_pool2d(x, 2))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(self.drop2(x))


def naive_model(name: str, num_classes: int, weights: nn.Module | None = None) -> nn.Module:
    """The baseline's own model for ``name``, in the default layout, with ``weights``' values."""
    model = ReferenceMnistCNN(num_classes) if name == "mnist-cnn" else build_model(name, num_classes=num_classes)
    if weights is not None:
        model.load_state_dict({k: v.detach().cpu().contiguous() for k, v in weights.state_dict().items()})
    return model.to(memory_format=torch.contiguous_format)


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
