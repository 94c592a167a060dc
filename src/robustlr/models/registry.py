"""The models, by name: the one place a new model is registered.

| name | for | notes |
|---|---|---|
| ``mnist-cnn`` | Fashion-MNIST, FEMNIST (1x28x28) | 1,199,882 parameters with 10 classes |
| ``cifar-cnn`` | CIFAR-10 (3x32x32) | three conv blocks (64/128/256), three linear layers |
| ``cifar-cnn-bn`` | CIFAR-10 | the same with batch normalisation after each conv |

To add a model: write its module in ``models/``, then add a :class:`ModelSpec` to ``MODELS``
(and its name to the config's ``model`` field).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_shape: tuple[int, int, int]  # (C, H, W) of one input image
    build: Callable[[int], nn.Module]  # num_classes -> a fresh model


def _mnist(num_classes: int) -> nn.Module:
    from robustlr.models.mnist import MnistCNN

    return MnistCNN(num_classes=num_classes)


def _cifar(batch_norm: bool) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        from robustlr.models.cifar import CifarCNN

        return CifarCNN(num_classes, batch_norm=batch_norm)

    return build


MODELS: dict[str, ModelSpec] = {
    "mnist-cnn": ModelSpec("mnist-cnn", (1, 28, 28), _mnist),
    "cifar-cnn": ModelSpec("cifar-cnn", (3, 32, 32), _cifar(False)),
    "cifar-cnn-bn": ModelSpec("cifar-cnn-bn", (3, 32, 32), _cifar(True)),
}


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """Build a fresh, randomly initialised model by name (see the table above)."""
    return model_spec(name).build(num_classes)


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
