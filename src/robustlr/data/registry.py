"""The datasets, by name: the one place a new dataset is registered.

Each entry says how to load the dataset (a function of the data folder, the config's
``data_sources`` and ``digits_only``), which trojan geometry fits its images (see
:mod:`robustlr.attacks.trojans`), and its nominal training-set size (what ``robustlr bench``
assumes without loading the files).

To add a dataset: write a loader that returns an :class:`~robustlr.data.base.ImageDataset`
(uint8 pixels, its normalisation, its ink), add a :class:`DatasetSpec` below, and add its
name to the config's ``dataset`` field.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from robustlr.data.base import ImageDataset
from robustlr.data.store import ENV_DATA_DIR
from robustlr.errors import DataError, DataNotFoundError

PathLike = str | os.PathLike

TFF_EMNIST_HOWTO = (
    "How to get the files: TensorFlow Federated's Federated EMNIST digits are the archive "
    "https://storage.googleapis.com/tff-datasets-public/fed_emnist_digitsonly.tar.bz2 (what "
    "tff.simulation.datasets.emnist.load_data(only_digits=True) downloads into ~/.keras/datasets/); "
    "unpack fed_emnist_digitsonly_train.h5 and fed_emnist_digitsonly_test.h5 into <data dir>/femnist-tff/, "
    "or point data_sources at them. Without them, the femnist-leaf dataset (LEAF json shards) runs the "
    "same setting on fewer writers (preset demo-noniid)."
)


LEAF_FEMNIST_HOWTO = (
    "How to get the files: FEMNIST comes from the LEAF benchmark (https://github.com/TalwalkarLab/leaf, "
    "folder data/femnist): its preprocess.sh downloads NIST Special Database 19 and writes the writers' "
    "images as json shards, e.g. `./preprocess.sh -s niid --sf 0.05 -k 0 -t sample`. Put its "
    "data/train and data/test folders (.json or .json.gz shards) in <data dir>/femnist-leaf/<any name>/, "
    "or point data_sources at them; `robustlr data femnist-leaf` shows what is found. The paper's full "
    "set (3,383 writers) is TFF's copy: dataset femnist-tff."
)


def resolve_sources(dataset: str, sources: Sequence[str], data_dir: PathLike | None) -> list[Path]:
    """``sources`` as paths: absolute ones as given, relative ones under the data folder."""
    roots = [Path(p) for p in (data_dir, os.environ.get(ENV_DATA_DIR)) if p]
    out = []
    for src in sources:
        p = Path(src).expanduser()
        if p.is_absolute():
            if not p.exists():
                raise DataNotFoundError(f"data source {src!r} of dataset {dataset} not found: {p} does not exist. "
                                        f"Fix: correct the path in data_sources, or give a path relative to --data-dir")
            out.append(p)
            continue
        for root in roots:
            if (root / p).exists():
                out.append(root / p)
                break
        else:
            searched = ", ".join(str(r / p) for r in roots) or "(no --data-dir and no $" + ENV_DATA_DIR + ")"
            raise DataNotFoundError(
                f"data source {src!r} of dataset {dataset} not found; searched: {searched}. "
                f"Fix: pass --data-dir pointing at the folder that contains it, or set {ENV_DATA_DIR}, "
                f"or give an absolute path in data_sources"
            )
    return out


def _fashion_mnist(data_dir: PathLike | None, sources: Sequence[str], digits_only: bool,
                   exact_only: bool = False) -> ImageDataset:
    from robustlr.data.fashion_mnist import load_fashion_mnist

    return load_fashion_mnist(data_dir=data_dir)


def _cifar10(data_dir: PathLike | None, sources: Sequence[str], digits_only: bool,
             exact_only: bool = False) -> ImageDataset:
    from robustlr.data.cifar import load_cifar10

    return load_cifar10(data_dir=data_dir, exact_only=exact_only)


def _femnist_leaf(data_dir: PathLike | None, sources: Sequence[str], digits_only: bool,
                  exact_only: bool = False) -> ImageDataset:
    from robustlr.data.femnist import load_leaf_femnist

    try:
        paths = resolve_sources("femnist-leaf", list(sources) or ["femnist-leaf"], data_dir)
    except DataNotFoundError as exc:
        raise DataNotFoundError(f"{exc}\n{LEAF_FEMNIST_HOWTO}") from None
    return load_leaf_femnist(paths, digits_only=digits_only)


def _femnist_tff(data_dir: PathLike | None, sources: Sequence[str], digits_only: bool,
                 exact_only: bool = False) -> ImageDataset:
    from robustlr.data.femnist import load_tff_emnist

    if len(sources) != 2:
        raise DataError("dataset femnist-tff needs data_sources = [train.h5, test.h5]")
    try:
        train_h5, test_h5 = resolve_sources("femnist-tff", sources, data_dir)
        for given, path in zip(sources, (train_h5, test_h5)):
            if not path.is_file():
                raise DataNotFoundError(f"data source {given!r} of dataset femnist-tff not found: {path} does not exist")
    except DataNotFoundError as exc:
        raise DataNotFoundError(f"{exc}\n{TFF_EMNIST_HOWTO}") from None
    return load_tff_emnist(train_h5, test_h5, digits_only=digits_only)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load: Callable[[PathLike | None, Sequence[str], bool, bool], ImageDataset]  # dir, sources, digits_only, exact_only
    trojan_family: str  # the trojan geometry of robustlr.attacks.trojans that fits the images
    nominal_train_size: int  # training images (digits only for FEMNIST), without loading the files
    nominal_writers: int | None = None  # writers of the natural partition, if any


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec("fashion-mnist", _fashion_mnist, "fashion-mnist", 60_000),
    "cifar10": DatasetSpec("cifar10", _cifar10, "cifar10", 50_000),
    # the shared LEAF shards: 293 writers with digit samples, about 100 each
    "femnist-leaf": DatasetSpec("femnist-leaf", _femnist_leaf, "femnist", 29_300, 293),
    # TFF's digits-only Federated EMNIST: 3,383 writers, 341,873 training images
    "femnist-tff": DatasetSpec("femnist-tff", _femnist_tff, "femnist", 341_873, 3_383),
}


def dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


def load_dataset(name: str, data_dir: PathLike | None = None, sources: Sequence[str] = (),
                 digits_only: bool = True, exact_only: bool = False) -> ImageDataset:
    """Load dataset ``name`` from the documented search order (see :mod:`robustlr.data.store`)."""
    return dataset_spec(name).load(data_dir, sources, digits_only, exact_only)
