"""The paper's networks, built by name.

| name | for | notes |
|---|---|---|
| ``mnist-cnn`` | Fashion-MNIST, FEMNIST (1x28x28) | 1,199,882 parameters with 10 classes |
| ``cifar-cnn`` | CIFAR-10 (3x32x32) | three conv blocks (64/128/256), three linear layers |
| ``cifar-cnn-bn`` | CIFAR-10 | the same with batch normalisation after each conv |
"""

from __future__ import annotations

from torch import nn

from robustlr.models.common import make_dropout_masks
from robustlr.models.mnist import MnistCNN

MODELS = ("mnist-cnn", "cifar-cnn", "cifar-cnn-bn")


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """Build a fresh, randomly initialised model by name (see the table above)."""
    if name == "mnist-cnn":
        return MnistCNN(num_classes=num_classes)
    if name in ("cifar-cnn", "cifar-cnn-bn"):
        from robustlr.models.cifar import build_cifar_model

        return build_cifar_model(name, num_classes)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


__all__ = ["MODELS", "MnistCNN", "build_model", "make_dropout_masks"]
