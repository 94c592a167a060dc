"""The paper's small CNN for CIFAR-10, with an optional batch-normalised variant.

The paper says only "three convolutional blocks (64, 128, 256 channels) and three fully
connected layers". The layers below follow the authors' published code (``CNN_CIFAR`` in
``src/models.py`` of TinfoilHat0/Defending-Against-Backdoors-with-Robust-Learning-Rate),
written anew here; the two deliberate differences are listed in :class:`CifarCNN`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CifarCNN", "build_cifar_model", "CIFAR_MODELS"]

CIFAR_MODELS = ("cifar-cnn", "cifar-cnn-bn")


class CifarCNN(nn.Module):
    """Three conv blocks (64, 128, 256 channels) and three fully connected layers.

    Input: normalised float images of shape (N, 3, 32, 32). Output: (N, num_classes) logits.

    Layers, with the output shape for one 32x32 image and the parameter count::

        conv1  Conv2d(3 -> 64, 3x3, stride 1, no padding)   64 x 30 x 30      1,792
               ReLU, MaxPool2d(2)                            64 x 15 x 15
        conv2  Conv2d(64 -> 128, 3x3)                       128 x 13 x 13     73,856
               ReLU, MaxPool2d(2)                           128 x  6 x  6
        conv3  Conv2d(128 -> 256, 3x3)                      256 x  4 x  4    295,168
               ReLU, MaxPool2d(2)                           256 x  2 x  2
               flatten                                       1024
        drop1  Dropout(0.5)
        fc1    Linear(1024 -> 128), ReLU                     128             131,200
        drop2  Dropout(0.5)
        fc2    Linear(128 -> 256), ReLU                      256              33,024
        drop3  Dropout(0.5)
        fc3    Linear(256 -> num_classes)                    10                2,570

    Total with ``num_classes=10``: **537,610** trainable parameters, no buffers.

    ``batch_norm=True`` puts ``BatchNorm2d`` (affine, eps 1e-5, momentum 0.1) after each
    convolution, before its ReLU, and drops the convolutions' biases, which a following
    batch norm cancels exactly (in training mode their gradient is zero, so they would only
    add dead coordinates to every update): -448 bias + 896 BN weight/bias = **538,058**
    trainable parameters, plus buffers ``bn{1,2,3}.running_mean``, ``running_var`` (64 + 128
    + 256 values each) and ``num_batches_tracked``. Aggregation must treat those buffers
    separately from the parameters: robustlr averages them plainly (RLR and the server
    learning rate act on trainable parameters only). The authors' code aggregates parameters
    only and never updates buffers in the global model; their CIFAR CNN has no batch norm.

    Differences from the authors' code, neither changing the function computed:

    * They use ``nn.Dropout2d`` on the flattened (N, 1024) features. On a 2-D input that
      drops single elements (a deprecated path in current PyTorch), i.e. it *is*
      element-wise dropout, so ``nn.Dropout`` is used here.
    * They flatten with ``x.view(-1, 64 * 4 * 4)`` and declare ``Linear(64 * 4 * 4, 128)``;
      the map is really 256 x 2 x 2 = 1024 = 64 x 4 x 4 values per image, so that view is an
      ordinary per-image flatten and is written as one here.

    Parameters are plain leaves and the forward pass has no in-place operations, so the
    model works with ``torch.func.functional_call`` (and, without batch norm, ``vmap``).
    Dropout follows the simulator's protocol (as :class:`~robustlr.models.mnist.MnistCNN`):
    ``forward(x, dropout_masks)`` takes one mask per dropout layer, of shape
    ``(batch, *shape)`` for each shape in :meth:`dropout_shapes` and holding 0 or
    ``1 / (1 - p)``, so each agent's masks come from its own generator; without masks (or in
    eval mode) the ``nn.Dropout`` layers are used as usual.

    >>> sum(p.numel() for p in CifarCNN().parameters())
    537610
    >>> sum(p.numel() for p in CifarCNN(batch_norm=True).parameters())
    538058
    """

    def __init__(self, num_classes: int = 10, batch_norm: bool = False) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = num_classes
        self.batch_norm = batch_norm
        bias = not batch_norm
        norm = nn.BatchNorm2d if batch_norm else (lambda _channels: nn.Identity())
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, bias=bias)
        self.bn1 = norm(64)
        self.conv2 = nn.Conv2d(64, 128, kernel_size=3, bias=bias)
        self.bn2 = norm(128)
        self.conv3 = nn.Conv2d(128, 256, kernel_size=3, bias=bias)
        self.bn3 = norm(256)
        self.drop1 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(256 * 2 * 2, 128)
        self.drop2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, 256)
        self.drop3 = nn.Dropout(0.5)
        self.fc3 = nn.Linear(256, num_classes)

    def dropout_shapes(self) -> list[tuple[tuple[int, ...], float]]:
        """Per-sample mask shape and drop probability of each dropout layer, in forward order."""
        return [((256 * 2 * 2,), self.drop1.p), ((128,), self.drop2.p), ((256,), self.drop3.p)]

    def forward(self, x: torch.Tensor, dropout_masks: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = F.max_pool2d(F.relu(self.bn3(self.conv3(x))), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(self._drop(x, 0, self.drop1, dropout_masks)))
        x = F.relu(self.fc2(self._drop(x, 1, self.drop2, dropout_masks)))
        return self.fc3(self._drop(x, 2, self.drop3, dropout_masks))

    def _drop(self, x: torch.Tensor, i: int, layer: nn.Dropout, masks: Sequence[torch.Tensor] | None) -> torch.Tensor:
        if masks is None or not self.training:
            return layer(x)
        return x * masks[i]


def build_cifar_model(name: str, num_classes: int = 10) -> CifarCNN:
    """``"cifar-cnn"`` (the paper's CNN) or ``"cifar-cnn-bn"`` (with batch normalisation)."""
    if name == "cifar-cnn":
        return CifarCNN(num_classes, batch_norm=False)
    if name == "cifar-cnn-bn":
        return CifarCNN(num_classes, batch_norm=True)
    raise ValueError(f"unknown CIFAR model {name!r}; expected one of {', '.join(CIFAR_MODELS)}")
