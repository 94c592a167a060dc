"""The paper's network for 28x28 grayscale images (Fashion-MNIST, FEMNIST)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


class MnistCNN(nn.Module):
    """conv(1->32, 3x3) ReLU, conv(32->64, 3x3) ReLU, max-pool 2, dropout 0.5,
    linear 9216->128 ReLU, dropout 0.5, linear 128->num_classes.

    With 10 classes it has 1,199,882 parameters, as in the paper.

    Dropout can be driven by explicit masks (``dropout_masks``: one tensor per dropout layer,
    of shape ``(batch, *shape)`` for each shape in :meth:`dropout_shapes`, holding 0 or
    ``1 / (1 - p)``), so that the simulator can draw them from each agent's own generator and
    the sequential and vectorised engines see the same masks. Without masks it uses
    ``nn.Dropout`` as usual.

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

    def dropout_shapes(self) -> list[tuple[tuple[int, ...], float]]:
        """Per-sample mask shape and drop probability of each dropout layer, in forward order."""
        return [((64, 12, 12), self.drop1.p), ((128,), self.drop2.p)]

    def forward(self, x: torch.Tensor, dropout_masks: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        # max-pool before ReLU: the two commute (both monotone), with identical outputs and
        # gradients, and the ReLU then runs on a 4x smaller tensor
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = self.drop1(x) if dropout_masks is None or not self.training else x * dropout_masks[0]
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.drop2(x) if dropout_masks is None or not self.training else x * dropout_masks[1]
        return self.fc2(x)
