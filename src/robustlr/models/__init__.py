"""The paper's networks (see :mod:`robustlr.models.registry` for the table and how to add one)."""

from robustlr.models.common import make_dropout_masks
from robustlr.models.mnist import MnistCNN
from robustlr.models.registry import (
    MODELS,
    ModelError,
    ModelSpec,
    build_model,
    has_batch_norm,
    model_names,
    model_spec,
    register_model,
    unregister_model,
)

__all__ = ["MODELS", "ModelError", "ModelSpec", "MnistCNN", "build_model", "has_batch_norm", "make_dropout_masks",
           "model_names", "model_spec", "register_model", "unregister_model"]
