"""Warm starts: the model a run starts from (``init_model``) and the cache of clean pretrained models.

``init_model`` takes one of:

- a ``model.pt`` (a state dict, as every run writes at its end);
- a run folder: its final ``model.pt``;
- ``pretrained:PRESET`` (or ``pretrained:path/to/config.toml``): the final model of a *clean* run
  of that config, built once by :func:`robustlr.sim.loop.pretrain` (``robustlr pretrain PRESET``) and cached in
  ``<cache>/pretrained/<name>-<config hash>/`` (``<cache>`` is ``~/.cache/robustlr`` or
  ``$ROBUSTLR_CACHE_DIR``). The cached folder is an ordinary run folder (config, round records,
  summary, model), so an interrupted pretraining resumes from its checkpoint, and a config
  changed in any number-changing key gets a new folder. A lock file keeps two processes from
  building the same model at once.

The weights are checked against the run's model (names and shapes) before the run starts, and
:func:`resolve_init_model` returns what the run records in its summary: the spec as given, the
sha256 of the weights and, for a pretrained model, its config hash.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from robustlr.data import store
from robustlr.data.store import cache_dir
from robustlr.errors import ConfigError
from robustlr.sim.config import ExperimentConfig, config_hash, load_config

log = logging.getLogger("robustlr")

PREFIX = "pretrained:"
SUBDIR = "pretrained"


@dataclass(frozen=True)
class InitModel:
    """A resolved ``init_model``: where its weights are and what the run records about them."""

    spec: str
    path: Path
    sha256: str
    config_hash: str | None = None  # of the pretraining config, for pretrained:PRESET

    def record(self) -> dict:
        out = {"spec": self.spec, "sha256": self.sha256}
        if self.config_hash is not None:
            out["pretrain_config_hash"] = self.config_hash
        return out


def pretrain_config(name: str, overrides: list[str] | None = None) -> ExperimentConfig:
    """The config of preset or file ``name`` as a pretraining config: it must be clean."""
    cfg = load_config(name, overrides)
    if cfg.corrupt_fraction > 0:
        raise ConfigError(f"pretraining config {name!r} has corrupt_fraction={cfg.corrupt_fraction}: a starting model "
                          "must be trained without attack; set corrupt_fraction = 0")
    if cfg.init_model is not None and cfg.init_model.startswith(PREFIX):
        raise ConfigError(f"pretraining config {name!r} starts from {cfg.init_model!r}: a pretrained model cannot "
                          "start from another cached one; give a model.pt or run folder, or none")
    return cfg


def pretrained_dir(cfg: ExperimentConfig) -> Path:
    """The cache folder of ``cfg``'s pretrained model."""
    return cache_dir() / SUBDIR / f"{cfg.name}-{config_hash(cfg)}"


def file_sha256(path: Path) -> str:
    """The sha256 of a weights file (the data store's checksum, without decompression)."""
    return store.file_sha256(path, decompress=False)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def pretrain_into_cache(cfg: ExperimentConfig, train: Callable[[Path], object]) -> Path:
    """``cfg``'s cached ``model.pt``, trained by ``train(folder)`` into its cache folder unless it is
    there (under a lock, so two processes never build it at once). The training itself is the
    simulator's (:func:`robustlr.sim.loop.pretrain`); this module only finds and caches."""
    folder = pretrained_dir(cfg)
    model = folder / "model.pt"
    with _locked(folder):
        if model.is_file() and (folder / "summary.json").is_file():
            return model
        log.info("pretraining %s into %s", cfg.name, folder)
        train(folder)
    return model


#: builds a pretrained model that is not cached: ``build(pretrain_cfg, data_dir, dataset) -> model.pt``
Builder = Callable[[ExperimentConfig, "str | None", object], Path]


def _model_file(spec: str) -> Path:
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "model.pt"
        if not path.is_file():
            raise ConfigError(f"init_model={spec!r}: the folder holds no model.pt (is the run finished?); give a "
                              "finished run's folder, a model.pt, or pretrained:PRESET")
    elif not path.is_file():
        raise ConfigError(f"init_model={spec!r}: no such file or folder; give a model.pt, a finished run's folder, "
                          "or pretrained:PRESET (see `robustlr pretrain --help`)")
    return path


def check_init_model(cfg: ExperimentConfig) -> None:
    """What can be checked before any work: the file exists, or the pretraining config is valid."""
    if cfg.init_model is None:
        return
    if cfg.init_model.startswith(PREFIX):
        pretrain_config(cfg.init_model[len(PREFIX):])
    else:
        _model_file(cfg.init_model)


def _same_data(a: ExperimentConfig, b: ExperimentConfig) -> bool:
    keys = ("dataset", "data_sources", "digits_only", "exact_only")
    return all(getattr(a, k) == getattr(b, k) for k in keys)


def resolve_init_model(cfg: ExperimentConfig, data_dir: str | None = None, build: Builder | None = None,
                       dataset=None) -> InitModel | None:
    """Where ``cfg.init_model``'s weights are; a ``pretrained:`` model that is not cached yet is
    built by ``build`` (the simulator passes :func:`robustlr.sim.loop.pretrain`), or refused when
    ``build`` is None. ``dataset``, the run's loaded data, is reused when the pretraining reads the
    same."""
    spec = cfg.init_model
    if spec is None:
        return None
    if spec.startswith(PREFIX):
        pcfg = pretrain_config(spec[len(PREFIX):])
        if (pcfg.dataset, pcfg.model) != (cfg.dataset, cfg.model):
            raise ConfigError(f"init_model={spec!r} trains {pcfg.model} on {pcfg.dataset}, but this run is "
                              f"{cfg.model} on {cfg.dataset}; pretrain a config of the same dataset and model")
        path = pretrained_dir(pcfg) / "model.pt"
        if not path.is_file():
            if build is None:
                raise ConfigError(f"init_model={spec!r} is not pretrained yet; run `robustlr pretrain "
                                  f"{spec[len(PREFIX):]}`")
            path = build(pcfg, data_dir, dataset if _same_data(pcfg, cfg) else None)
        return InitModel(spec, path, file_sha256(path), config_hash(pcfg))
    path = _model_file(spec)
    return InitModel(spec, path, file_sha256(path))


def load_init_state(init: InitModel, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``init``, checked against ``model``'s names and shapes."""
    try:
        state = torch.load(init.path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged or non-tensor file
        raise ConfigError(f"init_model={init.spec!r}: {init.path} is not a state dict torch can read safely ({exc}); "
                          "give a model.pt written by robustlr") from exc
    if not isinstance(state, dict):
        raise ConfigError(f"init_model={init.spec!r}: {init.path} holds a {type(state).__name__}, not a state dict")
    want = model.state_dict()
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(want[k].shape)}" for k in want
             if k in state and tuple(state[k].shape) != tuple(want[k].shape)]
    if missing or extra or wrong:
        detail = "; ".join(x for x in (f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else "",
                                       f"shapes {wrong}" if wrong else "") if x)
        raise ConfigError(f"init_model={init.spec!r} does not fit model {type(model).__name__}: {detail}; "
                          "start from a model of the same architecture and number of classes")
    return state
