"""The datasets, by name: the one place a new dataset is registered.

Each built-in entry says how to load the dataset (a function of the data folder, the config's
``data_sources`` and ``digits_only``), which trojan geometry fits its images (see
:mod:`robustlr.attacks.trojans`), its input shape and classes, and its nominal training-set size
(what ``robustlr bench`` and the config's checks assume without loading the files).

A dataset of your own needs no edit here. Write a loader that returns a
:class:`~robustlr.data.base.ImageDataset` (uint8 images (N, C, H, W) with their normalisation, or
float32 features / int64 token ids of any shape), and name it in one of three ways:

- at run time, from Python: ``robustlr.register_dataset("my-data", load)``;
- as an entry point of an installed package, group ``robustlr.datasets``
  (``my-data = "mypkg.data:load"``): installing the package is enough;
- as an import string in the config: ``dataset = "mypkg.data:load"``.

``load`` is called with the keyword arguments it accepts among ``data_dir`` (the run's
``--data-dir``, else None) and ``data_sources`` (the config's list). It is called once, when a
config naming it is validated (the config's checks need its shape, classes and size), and the
result is kept for the run in the same process. Images get the trojan geometry scaled to their
size (family ``generic``); data that is not images runs the attacks that draw nothing
(``label-flip``, with boosting, stealth or the adaptive attacks) and the config refuses the rest.
A run records the dataset's name, origin, loader and a fingerprint of its arrays
(``summary.json``: ``dataset``; the results store: ``data_fingerprint``), and a resume refuses a
checkpoint written on other data.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import robustlr._plugins as _plugins
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


#: the entry-point group through which installed packages add datasets
ENTRY_POINT_GROUP = "robustlr.datasets"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load: Callable[[PathLike | None, Sequence[str], bool, bool], ImageDataset]  # dir, sources, digits_only, exact_only
    trojan_family: str  # the trojan geometry of robustlr.attacks.trojans that fits the images
    nominal_train_size: int | None  # training images (digits only for FEMNIST), without loading the files
    nominal_writers: int | None = None  # writers of the natural partition, if any
    input_shape: tuple[int, ...] | None = None  # (C, H, W) of the built-in ones; a plugged one's is read from it
    origin: str = "built in"  # built in, registered, entry point (its distribution), import string
    loader: Callable | None = None  # a plugged dataset's own loader

    @property
    def plugged(self) -> bool:
        return self.origin != "built in"

    @property
    def loader_name(self) -> str:
        return _plugins.callable_name(self.loader or self.load)


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec("fashion-mnist", _fashion_mnist, "fashion-mnist", 60_000, input_shape=(1, 28, 28)),
    "cifar10": DatasetSpec("cifar10", _cifar10, "cifar10", 50_000, input_shape=(3, 32, 32)),
    # the shared LEAF shards: 293 writers with digit samples, about 100 each
    "femnist-leaf": DatasetSpec("femnist-leaf", _femnist_leaf, "femnist", 29_300, 293, input_shape=(1, 28, 28)),
    # TFF's digits-only Federated EMNIST: 3,383 writers, 341,873 training images
    "femnist-tff": DatasetSpec("femnist-tff", _femnist_tff, "femnist", 341_873, 3_383, input_shape=(1, 28, 28)),
}

_REGISTERED: dict[str, DatasetSpec] = {}
#: plugged datasets loaded in this process: (name, loader, data_dir, sources) -> the dataset
_LOADED: dict[tuple, ImageDataset] = {}


def _plugged_load(name: str, loader: Callable) -> Callable[..., ImageDataset]:
    """The registry's load signature around a user's loader (called with the keywords it accepts)."""
    try:
        params = inspect.signature(loader).parameters
    except (TypeError, ValueError):  # a builtin or C callable: call it without arguments
        params = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    def load(data_dir: PathLike | None, sources: Sequence[str], digits_only: bool = True,
             exact_only: bool = False) -> ImageDataset:
        key = (name, loader, str(data_dir) if data_dir else None, tuple(sources))
        if key in _LOADED:
            return _LOADED[key]
        kwargs: dict = {}
        if takes_all or "data_dir" in params:
            kwargs["data_dir"] = data_dir
        if takes_all or "data_sources" in params:
            kwargs["data_sources"] = list(sources)
        where = f"dataset {name!r}: its loader {_plugins.callable_name(loader)}"
        try:
            ds = loader(**kwargs)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from exc
        except Exception as exc:
            raise DataError(f"{where} raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(ds, ImageDataset):
            raise DataError(f"{where} returned a {type(ds).__name__}, not a robustlr.data.ImageDataset (build one "
                            f"from your arrays: ImageDataset(name, train_x, train_y, test_x, test_y, classes, ...))")
        if ds.name != name:  # the records name what the config names
            ds = replace(ds, name=name)
        _LOADED[key] = ds
        return ds

    return load


def _spec_of(name: str, obj, origin: str) -> DatasetSpec:
    if isinstance(obj, DatasetSpec):
        return replace(obj, name=name, origin=origin)
    if not callable(obj):
        raise DataError(f"dataset {name!r} ({origin}) is a {type(obj).__name__}, not a loader (a function returning "
                        f"a robustlr.data.ImageDataset)")
    return DatasetSpec(name, _plugged_load(name, obj), "generic", None, origin=origin, loader=obj)


def register_dataset(name: str, load: Callable[..., ImageDataset], *, replace: bool = False) -> DatasetSpec:
    """Make ``load() -> ImageDataset`` available as ``dataset = name`` in configs.

    ``load`` may take ``data_dir`` and ``data_sources`` keyword arguments (the run's data folder and
    the config's list); it is called once per process and setting. Registering a name again with
    another loader needs ``replace=True``; a built-in name cannot be replaced."""
    _plugins.check_name("dataset", name, DataError)
    if not callable(load):
        raise DataError(f"register_dataset({name!r}, ...): load must be a callable returning a "
                        f"robustlr.data.ImageDataset, got {type(load).__name__}")
    if name in DATASETS:
        raise DataError(f"{name!r} is a built-in dataset and cannot be replaced; register yours under another name")
    old = _REGISTERED.get(name)
    if old is not None and old.loader is not load and not replace:
        raise DataError(f"dataset {name!r} is already registered (loader {old.loader_name}); pass replace=True")
    spec = _spec_of(name, load, "registered")
    _REGISTERED[name] = spec
    return spec


def unregister_dataset(name: str) -> None:
    """Forget a dataset registered with :func:`register_dataset` (nothing if it was not)."""
    spec = _REGISTERED.pop(name, None)
    if spec is not None:
        for key in [k for k in _LOADED if k[0] == name]:
            del _LOADED[key]


def _entry_points():
    return _plugins.entry_points(ENTRY_POINT_GROUP)


def _from_import_string(name: str) -> DatasetSpec:
    return _spec_of(name, _plugins.import_object("dataset", name, "loader", DataError), "import string")


def dataset_names() -> list[str]:
    """Every dataset a config may name without an import string: built in, registered, entry points."""
    return [*DATASETS, *_REGISTERED, *(n for n in _entry_points() if n not in DATASETS and n not in _REGISTERED)]


def dataset_spec(name: str) -> DatasetSpec:
    """The dataset called ``name``: built in, registered, an entry point, or an import string
    (``module:loader``); a :class:`DataError` naming the choices otherwise."""
    if name in DATASETS:
        return DATASETS[name]
    if name in _REGISTERED:
        return _REGISTERED[name]
    if ":" in name:
        return _from_import_string(name)
    eps = _entry_points()
    if name in eps:
        obj, origin = _plugins.load_entry_point("dataset", name, eps[name], ENTRY_POINT_GROUP, DataError)
        return _spec_of(name, obj, origin)
    raise _plugins.unknown("dataset", name, dataset_names(), "robustlr.register_dataset", ENTRY_POINT_GROUP, "loader",
                           DataError)


def load_dataset(name: str, data_dir: PathLike | None = None, sources: Sequence[str] = (),
                 digits_only: bool = True, exact_only: bool = False) -> ImageDataset:
    """Load dataset ``name`` from the documented search order (see :mod:`robustlr.data.store`)."""
    return dataset_spec(name).load(data_dir, sources, digits_only, exact_only)


@dataclass(frozen=True)
class DatasetFacts:
    """What a config's checks need to know about a dataset before a run loads it."""

    input_shape: tuple[int, ...]  # one sample: (C, H, W) for images
    num_classes: int
    train_size: int | None  # None: known only once loaded (FEMNIST's shards)
    has_writers: bool  # a natural partition exists
    image: bool  # uint8 (C, H, W) images a trojan can be drawn on
    trojan_family: str
    token_ids: bool = False  # int64 samples (a model takes them as they are, not as float32)


def dataset_facts(name: str, sources: Sequence[str] = (), digits_only: bool = True,
                  exact_only: bool = False) -> DatasetFacts:
    """:class:`DatasetFacts` of a setting: declared for the built-in datasets, read from a plugged
    one (loading it once; :func:`load_dataset` then returns the same object)."""
    spec = dataset_spec(name)
    if not spec.plugged:
        femnist = spec.trojan_family == "femnist"
        size = spec.nominal_train_size if name in ("fashion-mnist", "cifar10") else None
        if size is not None and exact_only:
            size -= 77
        return DatasetFacts(spec.input_shape or (1, 28, 28), 62 if femnist and not digits_only else 10, size,
                            femnist, True, spec.trojan_family)
    ds = spec.load(None, sources, digits_only, exact_only)
    return DatasetFacts(tuple(ds.train_x.shape[1:]), ds.num_classes, int(ds.train_x.shape[0]),
                        ds.train_writers is not None, ds.is_image, spec.trojan_family,
                        token_ids=ds.train_x.dtype == torch.int64)


def fingerprint(ds: ImageDataset) -> str:
    """16 hex digits of sha256 over the dataset's arrays, classes and writers: the same data gives
    the same fingerprint on every machine. Computed once per dataset object."""
    cached = ds.extra.get("_fingerprint")
    if cached is not None:
        return cached
    h = hashlib.sha256()
    h.update(repr((ds.classes, tuple(ds.train_x.shape), str(ds.train_x.dtype), tuple(ds.test_x.shape))).encode())
    for t in (ds.train_x, ds.train_y, ds.test_x, ds.test_y):
        h.update(t.contiguous().numpy().tobytes())
    for w in ds.train_writers or []:
        h.update(w.astype("int64").tobytes())
    ds.extra["_fingerprint"] = out = h.hexdigest()[:16]
    return out


def dataset_record(name: str, ds: ImageDataset) -> dict:
    """What a run records about its data: the config's name, where the dataset came from, the
    loaded object's own name and source, and its :func:`fingerprint`."""
    try:
        spec = dataset_spec(name)
        origin, loader = spec.origin, spec.loader_name
    except DataError:
        origin, loader = "unknown", None
    if ds.name != name:  # run(cfg, dataset=...) with an object the config does not name
        origin = "passed to run (dataset=)"
        loader = None
    return {"name": name, "loaded": ds.name, "origin": origin, "loader": loader, "source": ds.source,
            "fingerprint": fingerprint(ds), "train_samples": int(ds.train_x.shape[0]),
            "test_samples": int(ds.test_x.shape[0])}
