"""What ``robustlr run`` checks before loading data, beyond the config's own validation; shared with
``robustlr config`` so that it accepts what a run accepts.

(A module of its own: :mod:`robustlr.sim.pretrain` and the engines import :mod:`robustlr.sim.config`.)
"""

from __future__ import annotations

import torch

from robustlr.errors import ConfigError, EngineError
from robustlr.sim.config import ExperimentConfig
from robustlr.sim.engines import check_device
from robustlr.sim.pretrain import PREFIX, check_init_model, pretrain_config

__all__ = ["check_runnable"]


def check_runnable(cfg: ExperimentConfig) -> None:
    """What ``robustlr run`` checks before loading data, beyond the config's own validation: the device
    exists on this machine and ``init_model`` names a model that exists (or a valid pretraining config of
    the same dataset and model). ``robustlr config`` calls it, so that it accepts what a run accepts."""
    check_device(cfg.device)  # the same check run_experiment makes first
    if cfg.device.startswith("cuda:") and int(cfg.device[5:]) >= torch.cuda.device_count():
        raise EngineError(f"device={cfg.device!r} but this machine has {torch.cuda.device_count()} CUDA device(s) "
                          f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    check_init_model(cfg)  # the same check run_experiment makes before loading the data
    if cfg.init_model is not None and cfg.init_model.startswith(PREFIX):
        pcfg = pretrain_config(cfg.init_model[len(PREFIX):])
        if (pcfg.dataset, pcfg.model) != (cfg.dataset, cfg.model):
            raise ConfigError(f"init_model={cfg.init_model!r} trains {pcfg.model} on {pcfg.dataset}, but this run is "
                              f"{cfg.model} on {cfg.dataset}; pretrain a config of the same dataset and model")
