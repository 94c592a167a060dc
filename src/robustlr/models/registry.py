"""The models, by name: the one place a new model is registered.

| name | for | notes |
|---|---|---|
| ``mnist-cnn`` | Fashion-MNIST, FEMNIST (1x28x28) | 1,199,882 parameters with 10 classes |
| ``cifar-cnn`` | CIFAR-10 (3x32x32) | three conv blocks (64/128/256), three linear layers |
| ``cifar-cnn-bn`` | CIFAR-10 | the same with batch normalisation after each conv |
| ``resnet20-bn``, ``resnet20-gn`` | CIFAR-10 | He et al.'s CIFAR ResNet-20, batch / group norm; 269,722 parameters |
| ``resnet18-bn``, ``resnet18-gn`` | CIFAR-10 | ResNet-18, CIFAR stem, batch / group norm; 11,173,962 parameters |

To add a model: write its module in ``models/``, then add a :class:`ModelSpec` to ``MODELS``
(and its name to the config's ``model`` field).

A model of your own needs no edit here. Name it in one of three ways:

- at run time, from Python: ``robustlr.register_model("my-net", build, input_shape=(3, 32, 32))``,
  where ``build(num_classes) -> nn.Module``;
- as an entry point of an installed package, group ``robustlr.models`` (``my-net =
  "mypkg.nets:build"``): installing the package is enough;
- as an import string in the config: ``model = "mypkg.nets:build"``.

The config refuses a name that none of these resolves ("unknown model ..., choose one of ...").
A run records where its model came from (``summary.json``: ``model``, with the factory's
``module:qualname``). The ``processes`` engine sends the factory to its workers by reference, so it
must be importable (a module-level function, not a lambda).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

import robustlr._plugins as _plugins
from robustlr.errors import ConfigError

#: the entry-point group through which installed packages add models
ENTRY_POINT_GROUP = "robustlr.models"


class ModelError(ConfigError):
    """A model that cannot be used: an unknown name, a factory that raises or returns no module."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_shape: tuple[int, ...] | None  # one input sample, (C, H, W) for images; None: not declared
    build: Callable[[int], nn.Module]  # num_classes -> a fresh model
    origin: str = "built in"  # built in, registered, entry point (its distribution), import string
    batch_norm: bool | None = None  # known for the built-in models; None: build one to see

    @property
    def factory(self) -> str:
        """The factory as ``module:qualname``."""
        return _plugins.callable_name(self.build)

    def record(self) -> dict:
        """What a run records about its model."""
        return {"name": self.name, "origin": self.origin, "factory": self.factory,
                "input_shape": list(self.input_shape) if self.input_shape else None}


def _mnist(num_classes: int) -> nn.Module:
    from robustlr.models.mnist import MnistCNN

    return MnistCNN(num_classes=num_classes)


def _cifar(batch_norm: bool) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        from robustlr.models.cifar import CifarCNN

        return CifarCNN(num_classes, batch_norm=batch_norm)

    return build


def _resnet(depth: int, norm: str) -> Callable[[int], nn.Module]:
    def build(num_classes: int) -> nn.Module:
        from robustlr.models.resnet import resnet18, resnet20

        return (resnet20 if depth == 20 else resnet18)(num_classes, norm)

    build.__qualname__ = f"resnet{depth}[{norm}]"
    return build


MODELS: dict[str, ModelSpec] = {
    "mnist-cnn": ModelSpec("mnist-cnn", (1, 28, 28), _mnist, batch_norm=False),
    "cifar-cnn": ModelSpec("cifar-cnn", (3, 32, 32), _cifar(False), batch_norm=False),
    "cifar-cnn-bn": ModelSpec("cifar-cnn-bn", (3, 32, 32), _cifar(True), batch_norm=True),
    **{f"resnet{d}-{n}": ModelSpec(f"resnet{d}-{n}", (3, 32, 32), _resnet(d, n), batch_norm=n == "bn")
       for d in (20, 18) for n in ("bn", "gn")},
}


_REGISTERED: dict[str, ModelSpec] = {}


def _checked_shape(input_shape) -> tuple[int, ...] | None:
    if input_shape is None:
        return None
    shape = tuple(input_shape)
    if not shape or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise ModelError(f"input_shape must be the shape of one sample, positive integers ((channels, height, width) "
                         f"for images), got {input_shape!r}")
    return shape


def register_model(name: str, build: Callable[[int], nn.Module], *, input_shape=None,
                   replace: bool = False) -> ModelSpec:
    """Make ``build(num_classes) -> nn.Module`` available as ``model = name`` in configs.

    ``input_shape`` (one sample: (C, H, W) for images), if given, is checked against the dataset
    before any work. Registering
    a name again with another factory needs ``replace=True``; a built-in name cannot be replaced."""
    _plugins.check_name("model", name, ModelError)
    if not callable(build):
        raise ModelError(f"register_model({name!r}, ...): build must be a callable num_classes -> nn.Module, "
                         f"got {type(build).__name__}")
    if name in MODELS:
        raise ModelError(f"{name!r} is a built-in model and cannot be replaced; register yours under another name")
    old = _REGISTERED.get(name)
    if old is not None and old.build is not build and not replace:
        raise ModelError(f"model {name!r} is already registered (factory {old.factory}); pass replace=True")
    spec = ModelSpec(name, _checked_shape(input_shape), build, "registered")
    _REGISTERED[name] = spec
    return spec


def unregister_model(name: str) -> None:
    """Forget a model registered with :func:`register_model` (nothing if it was not)."""
    _REGISTERED.pop(name, None)


def _entry_points():
    return _plugins.entry_points(ENTRY_POINT_GROUP)


def _spec_of(name: str, obj, origin: str) -> ModelSpec:
    if isinstance(obj, ModelSpec):
        return ModelSpec(name, obj.input_shape, obj.build, origin, obj.batch_norm)
    if not callable(obj):
        raise ModelError(f"model {name!r} ({origin}) is a {type(obj).__name__}, not a factory num_classes -> nn.Module")
    return ModelSpec(name, _checked_shape(getattr(obj, "input_shape", None)), obj, origin)


def _from_import_string(name: str) -> ModelSpec:
    return _spec_of(name, _plugins.import_object("model", name, "factory", ModelError), "import string")


def model_names() -> list[str]:
    """Every model a config may name without an import string: built in, registered, entry points."""
    return [*MODELS, *_REGISTERED, *(n for n in _entry_points() if n not in MODELS and n not in _REGISTERED)]


def model_spec(name: str) -> ModelSpec:
    """The model called ``name``: built in, registered, an entry point, or an import string
    (``module:factory``); a :class:`ModelError` naming the choices otherwise."""
    if name in MODELS:
        return MODELS[name]
    if name in _REGISTERED:
        return _REGISTERED[name]
    if ":" in name:
        return _from_import_string(name)
    eps = _entry_points()
    if name in eps:
        obj, origin = _plugins.load_entry_point("model", name, eps[name], ENTRY_POINT_GROUP, ModelError)
        return _spec_of(name, obj, origin)
    raise _plugins.unknown("model", name, model_names(), "robustlr.register_model", ENTRY_POINT_GROUP, "factory",
                           ModelError)


def build_model(name: str, num_classes: int = 10, spec: ModelSpec | None = None) -> nn.Module:
    """Build a fresh, randomly initialised model by name (see the table above); ``spec``, when
    given, is used instead of looking the name up (worker processes get it from their parent)."""
    spec = spec or model_spec(name)
    try:
        model = spec.build(num_classes)
    except Exception as exc:
        raise ModelError(f"model {name!r}: its factory {spec.factory} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name!r}: its factory {spec.factory} returned a {type(model).__name__}, "
                         f"not a torch.nn.Module")
    return model


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_outputs(name: str, model: nn.Module, input_shape: tuple[int, ...], num_classes: int,
                  dtype=None) -> None:
    """A :class:`ModelError` unless ``model`` maps a batch of two inputs of ``input_shape`` (zeros of
    ``dtype``, float32 by default; int64 for token ids) to (2, num_classes) logits. Runs in eval mode
    without gradients and leaves the random state and the model's mode as they were."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng():
            out = model(torch.zeros((2, *input_shape), dtype=dtype or torch.float32))
    except Exception as exc:
        raise ModelError(f"model {name!r} fails on a batch of 2 samples of shape {tuple(input_shape)}: "
                         f"{type(exc).__name__}: {exc}") from exc
    finally:
        model.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (2, num_classes):
        raise ModelError(f"model {name!r} gives outputs of shape {shape} for 2 samples of shape {tuple(input_shape)}; "
                         f"it must give one logit per class: (2, {num_classes})")
