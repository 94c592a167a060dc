"""Federated EMNIST (FEMNIST): handwritten characters grouped by writer, one client per writer.

Two on-disk formats are read into the same :class:`~robustlr.data.base.ImageDataset`:

- LEAF's json shards (:func:`load_leaf_femnist`, in :mod:`~robustlr.data.femnist.leaf`), e.g.
  the partial samples in ``shared/data/femnist-leaf``;
- TensorFlow Federated's h5 files (:func:`load_tff_emnist`, in
  :mod:`~robustlr.data.femnist.tff`), the exact data of the paper
  (``fed_emnist_digitsonly_{train,test}.h5``: 3,383 writers, 341,873 / 40,832 samples).

:mod:`~robustlr.data.femnist.synthetic` writes SYNTHETIC files in TFF's layout for scale tests
(:func:`make_synthetic_tff_emnist`), and :mod:`~robustlr.data.femnist.common` holds the pixel,
normalisation and label conventions both readers share.

Clients. A writer is a client when it has at least ``min_train_samples`` training samples
after the digit filter. Clients are ordered by writer id (string order); client ``i``'s
samples are the contiguous block ``train_writers[i]`` of the training split. The test split is
the union of the *clients'* test parts, in the same order (``extra["test_writers"]`` has the
per-client index arrays into it); test parts of writers that are not clients are left out, so
the validation set is drawn from the same population as the training data.
"""

from __future__ import annotations

from robustlr.data.base import ImageDataset  # noqa: F401  (importable from the old module)
from robustlr.data.femnist.common import (
    ALL_CLASSES,
    DIGIT_CLASSES,
    FEMNIST_BACKGROUND,
    FEMNIST_INK,
    FEMNIST_MEAN,
    FEMNIST_STD,
    IMAGE_SIDE,
    PIXELS,
    PathLike,
)
from robustlr.data.femnist.leaf import load_leaf_femnist
from robustlr.data.femnist.synthetic import make_synthetic_tff_emnist
from robustlr.data.femnist.tff import (
    SYNTHETIC_ATTR,
    load_tff_emnist,
    write_tff_emnist_h5,
)

# Private, but tests/data/test_femnist.py reaches the shard parsers through the package.
from robustlr.data.femnist.leaf import (  # noqa: F401  isort: skip
    _FastPathUnsupported,
    _parse_shard,
    _parse_shard_fast,
    _parse_shard_json,
)

__all__ = [
    "ALL_CLASSES",
    "DIGIT_CLASSES",
    "FEMNIST_BACKGROUND",
    "FEMNIST_INK",
    "FEMNIST_MEAN",
    "FEMNIST_STD",
    "IMAGE_SIDE",
    "PIXELS",
    "PathLike",
    "SYNTHETIC_ATTR",
    "load_leaf_femnist",
    "load_tff_emnist",
    "make_synthetic_tff_emnist",
    "write_tff_emnist_h5",
]
