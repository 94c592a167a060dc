"""The paper's networks (see :mod:`robustlr.models.registry` for the table and how to add one)."""

from robustlr.models.common import make_dropout_masks
from robustlr.models.mnist import MnistCNN
from robustlr.models.registry import MODELS, ModelSpec, build_model, has_batch_norm, model_spec

__all__ = ["MODELS", "ModelSpec", "MnistCNN", "build_model", "has_batch_norm", "make_dropout_masks", "model_spec"]
