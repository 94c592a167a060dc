"""Datasets held in memory once, and partitioners that split them among agents."""

from robustlr.data.base import ImageDataset
from robustlr.data.store import DataFile, DataNotFoundError, locate

__all__ = ["ImageDataset", "DataFile", "DataNotFoundError", "locate"]
