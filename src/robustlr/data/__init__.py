"""Datasets held in memory once, the registry that loads them by name, and partitioners.

A new dataset goes in :mod:`robustlr.data.registry` (one entry) with its loader in its own
module here.
"""

from robustlr.data.base import ImageDataset
from robustlr.data.registry import DATASETS, DatasetSpec, dataset_spec, load_dataset
from robustlr.data.store import DataFile, DataNotFoundError, locate

__all__ = ["DATASETS", "DataFile", "DataNotFoundError", "DatasetSpec", "ImageDataset", "dataset_spec",
           "load_dataset", "locate"]
