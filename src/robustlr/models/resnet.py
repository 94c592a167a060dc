"""ResNets for 32x32 images: the models users bring to CIFAR-10, with batch norm or group norm.

- **ResNet-20**: He, Zhang, Ren, Sun, *Deep Residual Learning for Image Recognition*, CVPR 2016,
  section 4.2 (the CIFAR-10 networks): a 3x3 convolution with 16 filters, then three stages of
  n = 3 basic blocks (two 3x3 convolutions each) with 16, 32 and 64 filters, the second and third
  starting with stride 2, then global average pooling and a linear layer: 6n + 2 = 20 layers.
  Shortcuts are identities; where the shape changes, the paper's option A: subsample by 2 and pad
  the new channels with zeros (no parameters). **269,722** trainable parameters with 10 classes
  (the paper: 0.27 M).
- **ResNet-18, CIFAR variant**: the ImageNet ResNet-18 (He et al., table 1: four stages of two
  basic blocks, 64/128/256/512 filters) with the stem changed for 32x32 inputs, as in the
  CIFAR-10 code most papers use: one 3x3 convolution, stride 1, and no max pooling; projection
  shortcuts (1x1 convolution + norm) where the shape changes (option B). **11,173,962**
  trainable parameters with 10 classes.

Normalisation: ``norm="bn"`` puts ``BatchNorm2d`` (eps 1e-5, momentum 0.1) after every
convolution, as in the papers; ``norm="gn"`` puts ``GroupNorm`` with 2 groups there instead, the
replacement federated-learning papers use because it keeps no running statistics and does not
depend on a client's batch (Hsieh, Phanishayee, Mutlu, Gibbons, *The Non-IID Data Quagmire of
Decentralized Machine Learning*, ICML 2020; Reddi et al., *Adaptive Federated Optimization*,
ICLR 2021: "group norm layers with two groups"). Group norm has the same affine parameters as
batch norm, so both variants have the same trainable parameter count; batch norm adds running
statistics (buffers), which robustlr averages plainly (see ``buffer_aggregation``).
Convolutions have no bias (a following norm cancels it). Initialisation: PyTorch's defaults,
except Kaiming-normal (fan-out, ReLU) for convolutions, as torchvision's ResNets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResNet", "resnet20", "resnet18", "RESNETS"]

#: the registry names: (depth, norm)
RESNETS = {"resnet20-bn": (20, "bn"), "resnet20-gn": (20, "gn"), "resnet18-bn": (18, "bn"), "resnet18-gn": (18, "gn")}

GN_GROUPS = 2


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(GN_GROUPS, channels)
    raise ValueError(f"norm must be 'bn' or 'gn', got {kind!r}")


class _PadShortcut(nn.Module):
    """Option A of He et al.: take every second pixel and pad the new channels with zeros."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.n1 = _norm(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.n2 = _norm(norm, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            if shortcut == "pad":
                self.shortcut = _PadShortcut(c_out - c_in)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm(norm, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.n1(self.conv1(x)))
        out = self.n2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet of basic blocks for (N, C, 32, 32) inputs; see the module docstring."""

    def __init__(self, widths: tuple[int, ...], blocks: int, num_classes: int = 10, norm: str = "bn",
                 shortcut: str = "pad", in_channels: int = 3) -> None:
        super().__init__()
        self.norm = norm
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.n0 = _norm(norm, widths[0])
        layers = []
        c = widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(c, w, 2 if (i > 0 and b == 0) else 1, norm, shortcut))
                c = w
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.n0(self.stem(x)))
        x = self.blocks(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def resnet20(num_classes: int = 10, norm: str = "bn", in_channels: int = 3) -> ResNet:
    """He et al.'s CIFAR ResNet-20 (3 stages x 3 blocks, 16/32/64 filters, option-A shortcuts)."""
    return ResNet((16, 32, 64), 3, num_classes, norm, shortcut="pad", in_channels=in_channels)


def resnet18(num_classes: int = 10, norm: str = "bn", in_channels: int = 3) -> ResNet:
    """ResNet-18 with a CIFAR stem (3x3 conv, no max pooling; 4 stages x 2 blocks, 64..512 filters,
    projection shortcuts)."""
    return ResNet((64, 128, 256, 512), 2, num_classes, norm, shortcut="conv", in_channels=in_channels)
