"""Datasets held in memory once, the registry that loads them by name, and partitioners.

A new built-in dataset goes in :mod:`robustlr.data.registry` (one entry) with its loader in its own
module here; a user's own is registered (``robustlr.register_dataset``), an entry point or an import
string: see :mod:`robustlr.data.registry`.
"""

from robustlr.data.base import ImageDataset
from robustlr.data.registry import (
    DATASETS,
    DatasetSpec,
    dataset_names,
    dataset_spec,
    fingerprint,
    load_dataset,
    register_dataset,
    unregister_dataset,
)
from robustlr.data.store import DataFile, DataNotFoundError, locate

__all__ = ["DATASETS", "DataFile", "DataNotFoundError", "DatasetSpec", "ImageDataset", "dataset_names",
           "dataset_spec", "fingerprint", "load_dataset", "locate", "register_dataset", "unregister_dataset"]
