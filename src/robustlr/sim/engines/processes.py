"""The processes engine: the agents of a round train side by side in worker processes (the CPU default).

Each worker holds its own copy of the model and trains whole agents with the reference
engine (:class:`robustlr.sim.engines.sequential.SequentialEngine`) on **one** intra-op thread. The training
data, the global weights and the output matrix live in shared memory, so nothing
agent-sized is pickled per round: a task is ``(row, agent, round, indices)``.

Why processes and one thread per agent:

- Speed. A small CNN on a batch of 64 keeps one core busy but scales poorly to two threads
  inside one process (synchronisation per operator, and a collapse when the machine is
  oversubscribed); two single-threaded workers keep both cores busy.
- Determinism. oneDNN's backward convolutions sum in a thread-count-dependent order, so an
  agent trained on two threads differs from the same agent trained on one in the last bits
  (about 1e-4 after ten steps). Training every agent on exactly one thread, here and in the
  in-process engine, makes a run's numbers independent of the number of cores or workers
  and of the order in which agents finish.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace

import numpy as np
import torch
import torch.multiprocessing as tmp

from robustlr.aggregation import ParamLayout
from robustlr.errors import EngineError
from robustlr.models import build_model
from robustlr.sim.engines.allocator import tune_allocator
from robustlr.sim.engines.base import EngineContext, RoundUpdates
from robustlr.sim.engines.sequential import SequentialEngine
from robustlr.sim.lifecycle import die_with_parent

log = logging.getLogger("robustlr")

# per-worker state, set by _init_worker
_W: dict = {}


def _start_method() -> str:
    """``fork`` where the OS has it: workers start in milliseconds and, unlike ``spawn``, do not
    re-import the user's main script (which would need an ``if __name__ == "__main__"`` guard).
    Workers only train (no printing, no logging), so locks held by other threads of the parent
    at fork time are never needed in a child. ``ROBUSTLR_START_METHOD`` overrides it."""
    import multiprocessing

    forced = os.environ.get("ROBUSTLR_START_METHOD")
    if forced:
        return forced
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _init_worker(ctx: EngineContext, global_flat: torch.Tensor, out: torch.Tensor, grad_mask: torch.Tensor,
                 parent_pid: int) -> None:
    die_with_parent(parent_pid)
    # the run's SIGTERM handler is inherited through fork: a worker just ends on SIGTERM; Ctrl-C
    # reaches the whole process group, and the parent, not each worker, handles it
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    _W["engine"] = SequentialEngine(ctx)
    _W["global"] = global_flat
    _W["out"] = out
    _W["mask"] = grad_mask


def _train_task(row: int, indices: np.ndarray, round_: int, agent: int, loss_sign: float, masked: bool) -> int:
    upd = _W["engine"].train_agent(_W["global"], indices, round_, agent, loss_sign, _W["mask"] if masked else None)
    _W["out"][row].copy_(upd)
    return row


class ProcessesEngine:
    """Trains the agents of a round in ``ctx.workers`` processes, one thread each.

    Gives bit-for-bit the updates of :class:`SequentialEngine` run on one thread. Call
    :meth:`close` (or use it as a context manager) to stop the workers; they also stop at
    interpreter exit.
    """

    name = "processes"

    def __init__(self, ctx: EngineContext) -> None:
        if ctx.device.type != "cpu":
            raise EngineError(f"train_mode 'processes' runs on the CPU, not on {ctx.device}; use vectorized or sequential")
        if ctx.workers < 1:
            raise EngineError(f"workers must be >= 1, got {ctx.workers}")
        if ctx.model_spec is not None:  # the workers get the model's factory by reference: it must pickle
            import pickle

            try:
                pickle.dumps(ctx.model_spec)
            except Exception as exc:  # noqa: BLE001 - pickling raises many types
                raise EngineError(f"model {ctx.model_name!r}: the processes engine sends its factory "
                                  f"{ctx.model_spec.factory} to worker processes, which needs a module-level "
                                  f"function (not a lambda or a local function; {type(exc).__name__}): define it at "
                                  f"module level, or use train_mode = 'sequential'") from None
        self.ctx = ctx
        self.workers = ctx.workers
        tune_allocator()  # this process evaluates; the workers build a SequentialEngine, which tunes theirs
        numel = ParamLayout.from_module(build_model(ctx.model_name, num_classes=ctx.num_classes,
                                                    spec=ctx.model_spec)).numel
        # shared memory: the data once, the global weights and the output rows reused every round
        ctx.train_x.share_memory_()
        ctx.train_y.share_memory_()
        self.global_flat = torch.zeros(numel, dtype=torch.float32).share_memory_()
        self.out = torch.zeros((ctx.max_agents, numel), dtype=torch.float32).share_memory_()
        # the round's Neurotoxin mask (only for a context with masked agents)
        self.grad_mask = torch.ones(numel if ctx.masked_agents else 1, dtype=torch.float32).share_memory_()
        # the workers need no agent table: each task carries its agent's indices
        self._worker_ctx = replace(ctx, agent_indices=(), honest_indices={})
        self._pool: ProcessPoolExecutor | None = None

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            mp_ctx = tmp.get_context(_start_method())
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=mp_ctx, initializer=_init_worker,
                initargs=(self._worker_ctx, self.global_flat, self.out, self.grad_mask, os.getpid()),
            )
            atexit.register(self.close)
        return self._pool

    def train_round(self, global_params: torch.Tensor, agent_ids: Sequence[int], round_: int,
                    grad_mask: torch.Tensor | None = None) -> RoundUpdates:
        """Train the agents; row i of the result is agent i's update (as the sequential engine).

        The updates are a view into shared memory, valid until the next call."""
        t0 = time.perf_counter()
        ids = np.asarray(agent_ids, dtype=np.int64)
        n = len(ids)
        if n > self.out.shape[0]:
            raise EngineError(f"{n} agents in a round but the engine was sized for {self.out.shape[0]}")
        self.global_flat.copy_(global_params)
        masked = grad_mask is not None and bool(self.ctx.masked_agents)
        if masked:
            self.grad_mask.copy_(grad_mask)
        pool = self._ensure_pool()
        indices = [self.ctx.indices(a, round_) for a in ids]
        # largest agents first, so that the last task to finish is a short one
        order = sorted(range(n), key=lambda i: -len(indices[i]))
        try:
            futures = [pool.submit(_train_task, i, np.asarray(indices[i]), round_, int(ids[i]),
                                   self.ctx.loss_sign(ids[i], round_), masked) for i in order]
            for f in futures:
                f.result()
        except BrokenProcessPool as exc:
            self.kill()
            raise RuntimeError(
                "a training worker process died (out of memory?); rerun with threads = 1 to train in-process"
            ) from exc
        except BaseException:
            # interrupted mid-round (SIGTERM, Ctrl-C, an error): the workers' tasks are moot
            self.kill()
            raise
        return RoundUpdates(self.out[:n], ids, time.perf_counter() - t0)

    def kill(self) -> None:
        """Stop the workers now, without waiting for their tasks."""
        if self._pool is not None:
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                if proc.is_alive():
                    proc.kill()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "ProcessesEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
