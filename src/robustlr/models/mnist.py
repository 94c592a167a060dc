"""The paper's network for 28x28 grayscale images (Fashion-MNIST, FEMNIST)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MnistCNN(nn.Module):
    """conv(1->32, 3x3) ReLU, conv(32->64, 3x3) ReLU, max-pool 2, dropout 0.5,
    linear 9216->128 ReLU, dropout 0.5, linear 128->num_classes.

    With 10 classes it has 1,199,882 parameters, as in the paper.

    >>> sum(p.numel() for p in MnistCNN().parameters())
    1199882
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.drop1 = nn.Dropout(dropout)
        self.fc1 = nn.Linear(9216, 128)
        self.drop2 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.drop1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.drop2(x)
        return self.fc2(x)
