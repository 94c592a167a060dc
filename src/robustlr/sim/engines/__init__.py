"""Local-training engines behind one interface (:class:`robustlr.sim.engines.base.Engine`).

- ``sequential``: one agent after another, in-process (the reference);
- ``processes``: agents side by side in worker processes, one thread each (the CPU default);
- ``vectorized``: all agents of a round as one ``torch.func.vmap`` computation (the CUDA default).

:mod:`~robustlr.sim.engines.allocator` tunes glibc's allocator for the CPU engines (speed only).
"""

from robustlr.sim.engines.base import Engine, EngineContext, LocalSettings, RoundUpdates, batch_plan
from robustlr.sim.engines.select import (ENGINES, available_cores, build_engine, check_device, engine_context,
                                         select_mode)

__all__ = ["ENGINES", "Engine", "EngineContext", "LocalSettings", "RoundUpdates", "available_cores", "batch_plan",
           "build_engine", "check_device", "engine_context", "select_mode"]
