"""Process-parallel local training on the CPU: the agents of a round spread over worker processes.

Each worker holds its own copy of the model and trains whole agents with the reference
engine (:class:`robustlr.client.SequentialTrainer`) on **one** intra-op thread. The training
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
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import torch
import torch.multiprocessing as tmp

from robustlr.aggregation import ParamLayout
from robustlr.client import LocalSettings, SequentialTrainer

log = logging.getLogger("robustlr")

# per-worker state, set by _init_worker
_W: dict = {}


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


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


def _init_worker(model_name: str, num_classes: int, settings: LocalSettings, train_x: torch.Tensor,
                 train_y: torch.Tensor, global_flat: torch.Tensor, out: torch.Tensor) -> None:
    torch.set_num_threads(1)
    from robustlr.models import build_model

    model = build_model(model_name, num_classes=num_classes)
    layout = ParamLayout.from_module(model)
    _W["trainer"] = SequentialTrainer(model, layout, settings, train_x, train_y, torch.device("cpu"))
    _W["global"] = global_flat
    _W["out"] = out


def _train_task(row: int, indices: np.ndarray, round_: int, agent: int, loss_sign: float) -> int:
    upd = _W["trainer"].train(_W["global"], indices, round_, agent, loss_sign)
    _W["out"][row].copy_(upd)
    return row


class ProcessTrainer:
    """Trains the agents of a round in ``workers`` processes, one thread each.

    Gives bit-for-bit the updates of :class:`SequentialTrainer` run on one thread. Call
    :meth:`close` (or use it as a context manager) to stop the workers; they also stop at
    interpreter exit.
    """

    name = "processes"

    def __init__(self, model_name: str, num_classes: int, layout: ParamLayout, settings: LocalSettings,
                 train_x: torch.Tensor, train_y: torch.Tensor, workers: int, max_agents: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.s = settings
        self.layout = layout
        self.workers = workers
        self.model_name = model_name
        self.num_classes = num_classes
        # shared memory: the data once, the global weights and the output rows reused every round
        self.x = train_x.share_memory_()
        self.y = train_y.share_memory_()
        self.global_flat = torch.zeros(layout.numel, dtype=torch.float32).share_memory_()
        self.out = torch.zeros((max_agents, layout.numel), dtype=torch.float32).share_memory_()
        self._pool: ProcessPoolExecutor | None = None

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ctx = tmp.get_context(_start_method())
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=ctx, initializer=_init_worker,
                initargs=(self.model_name, self.num_classes, self.s, self.x, self.y, self.global_flat, self.out),
            )
            atexit.register(self.close)
        return self._pool

    def train_into(self, out: torch.Tensor, global_flat: torch.Tensor, indices: list[np.ndarray], round_: int,
                   agents: list[int], loss_signs: list[float] | None = None) -> None:
        """Train the agents; row i of ``out`` receives agent i's update (as the sequential engine)."""
        n = len(agents)
        if n > self.out.shape[0]:
            raise ValueError(f"{n} agents in a round but the engine was sized for {self.out.shape[0]}")
        self.global_flat.copy_(global_flat)
        pool = self._ensure_pool()
        # largest agents first, so that the last task to finish is a short one
        order = sorted(range(n), key=lambda i: -len(indices[i]))
        try:
            futures = [pool.submit(_train_task, i, np.asarray(indices[i]), round_, int(agents[i]),
                                   1.0 if loss_signs is None else float(loss_signs[i])) for i in order]
            for f in futures:
                f.result()
        except BrokenProcessPool as exc:
            self.close()
            raise RuntimeError(
                "a training worker process died (out of memory?); rerun with threads = 1 to train in-process"
            ) from exc
        out[:n].copy_(self.out[:n])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "ProcessTrainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
