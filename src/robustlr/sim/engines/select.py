"""Which engine trains a run: ``train_mode`` names a module of this package, ``auto`` picks one."""

from __future__ import annotations

import os

import numpy as np
import torch

from robustlr.models import model_spec
from robustlr.sim.config import ExperimentConfig
from robustlr.sim.engines.base import Engine, EngineContext, LocalSettings

# auto mode spreads agents over processes only when a round's local training is at least this
# many sample-epochs: below it, handing tasks to workers costs more than it saves
PROCESS_MIN_WORK = 1000


def _sequential(ctx: EngineContext) -> Engine:
    from robustlr.sim.engines.sequential import SequentialEngine

    return SequentialEngine(ctx)


def _processes(ctx: EngineContext) -> Engine:
    from robustlr.sim.engines.processes import ProcessesEngine

    return ProcessesEngine(ctx)


def _vectorized(ctx: EngineContext) -> Engine:
    from robustlr.sim.engines.vectorized import VectorizedEngine

    return VectorizedEngine(ctx)


#: train_mode -> a constructor taking an EngineContext
ENGINES = {"sequential": _sequential, "processes": _processes, "vectorized": _vectorized}


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def local_settings(cfg: ExperimentConfig) -> LocalSettings:
    return LocalSettings(
        epochs=cfg.local_epochs, batch_size=cfg.batch_size, lr=cfg.client_lr, momentum=cfg.client_momentum,
        grad_clip=cfg.grad_clip, clip_norm=cfg.agent_clip_norm, seed=cfg.seed, precision=cfg.precision,
    )


def check_device(device: str) -> None:
    """Refuse a CUDA device on a machine without one, before any work starts."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        from robustlr.errors import EngineError

        raise EngineError(f"device={device!r} but this machine has no CUDA device (torch {torch.__version__}); "
                          f"use device = 'cpu'")


def bf16_is_native(device: torch.device) -> bool:
    """Whether bf16 matrix products have fast kernels on ``device``: on the CPU, oneDNN's bf16 path
    (AVX-512 BF16 or AMX); an unknown answer counts as yes (no warning)."""
    if device.type != "cpu":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - a torch without the probe
        return True


def bf16_warning(precision: str, device: torch.device) -> str | None:
    """The warning a run in ``precision`` on ``device`` gets, or None: bf16 autocast on a CPU without
    native bf16 (AVX2 only, as some AMD EPYC machines) is emulated, and slower than fp32, not faster
    (a bf16 matrix product measured 0.6 GFLOP/s against fp32's 45 on one thread of such a machine)."""
    if precision != "bf16" or bf16_is_native(device):
        return None
    return (f"precision = 'bf16' on a CPU without native bf16 ({torch.backends.cpu.get_cpu_capability()}; no "
            "AVX-512 BF16 or AMX): bf16 is emulated there and far slower than fp32 (75x for a matrix product on "
            "such a machine). Use precision = 'fp32' (--set precision=fp32) unless you must match bf16 numbers "
            "(`robustlr bench engines` measures both here)")


def select_mode(cfg: ExperimentConfig, agent_sizes: np.ndarray, device: torch.device) -> str:
    """``cfg.train_mode``, with ``auto`` resolved: vectorized on CUDA (sequential for batch-norm
    models), processes on a multi-core CPU when a round is worth spreading, else sequential."""
    if cfg.train_mode != "auto":
        return cfg.train_mode
    if device.type == "cuda":
        # the vectorized engine has no stealth penalty term
        return "sequential" if cfg.batch_norm or cfg.stealth_penalty > 0 else "vectorized"
    per_round = cfg.agents_per_round(len(agent_sizes))
    work = float(np.sort(agent_sizes)[-per_round:].sum()) * cfg.local_epochs
    cores = cfg.threads or available_cores()
    return "processes" if cores >= 2 and per_round >= 2 and work >= PROCESS_MIN_WORK else "sequential"


def build_engine(ctx: EngineContext, mode: str) -> Engine:
    return ENGINES[mode](ctx)


def engine_context(cfg: ExperimentConfig, fed, device: torch.device) -> EngineContext:
    """The context of ``cfg`` on federation ``fed`` (a :class:`robustlr.sim.federation.Federation`)."""
    per_round = cfg.agents_per_round(fed.num_agents)
    agent_indices, twins = list(fed.agent_indices), {}
    if cfg.update_attack().needs_clean:
        # the attacker's clean estimate: corrupt agent c also trains as agent K + j on its clean rows
        for j, c in enumerate(fed.corrupt):
            twins[int(c)] = fed.num_agents + j
            agent_indices.append(fed.honest_indices[int(c)])
    root_agent = None
    if fed.root_indices is not None:
        # FLTrust: the server trains on its root set as one more agent, after the twins
        root_agent = len(agent_indices)
        agent_indices.append(fed.root_indices)
    return EngineContext(
        model_name=cfg.model, num_classes=fed.dataset.num_classes, settings=local_settings(cfg),
        train_x=fed.train_x, train_y=fed.train_y, agent_indices=agent_indices, device=device,
        max_agents=per_round + min(len(twins), per_round) + (root_agent is not None), clean_twins=twins,
        root_agent=root_agent,
        workers=max(1, min(cfg.threads or available_cores(), per_round)),
        # the negated-loss attack (Table 7): corrupt agents minimise minus the loss
        loss_signs={int(a): -1.0 for a in fed.corrupt} if cfg.corrupt_loss == "negated" else {},
        honest_indices=fed.honest_indices, attack_from_round=fed.attack_from_round,
        attack_until_round=fed.attack_until_round,
        penalties={int(a): cfg.stealth_penalty for a in fed.corrupt} if cfg.stealth_penalty > 0 else {},
        pgd_radii={int(a): cfg.pgd_radius for a in fed.corrupt} if cfg.pgd_radius else {},
        masked_agents=frozenset(int(a) for a in fed.corrupt) if cfg.neurotoxin_top_percent else frozenset(),
        model_spec=None if model_spec(cfg.model).origin == "built in" else model_spec(cfg.model),
    )
