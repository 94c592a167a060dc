"""Where a sweep's runs execute: a backend starts one run and hands back a handle to poll.

The sweep (:func:`robustlr.experiments.sweep.sweep`) owns the grid, the skip/resume decisions and
the results store; a backend only executes runs. Two ship with robustlr:

- :class:`LocalBackend` (the default): each run a child process of this machine
  (``python -m robustlr.experiments.child``), ``cores // jobs`` threads each;
- :class:`robustlr.experiments.ray_backend.RayBackend`: each run a Ray task on a cluster
  (``robustlr sweep SUITE --backend ray``).

A new backend implements :class:`Backend`: ``open`` (check what it needs before any run starts,
raising a :class:`robustlr.errors.RobustlrError` that names the fix), ``slots`` (runs at once by
default), ``threads`` (each run's threads), ``start`` (one run, returning a :class:`RunHandle`) and
``close``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from robustlr.sim.config import ExperimentConfig
from robustlr.sim.engines.select import available_cores

__all__ = ["Backend", "RunHandle", "LocalBackend"]


class RunHandle(Protocol):
    """One started run: ``poll`` is None while it runs, else its exit code (0 done, other failed)."""

    def poll(self) -> int | None: ...

    def terminate(self) -> None:
        """Stop the run (it resumes from its last checkpoint when the sweep is run again)."""

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a terminated run to be gone."""


class Backend(Protocol):
    name: str

    def open(self, results: Path, configs: list[ExperimentConfig]) -> None: ...

    def slots(self) -> int: ...

    def threads(self, jobs: int) -> int: ...

    def start(self, cfg: ExperimentConfig, folder: Path, data_dir: str | None) -> RunHandle: ...

    def close(self) -> None: ...


class _Process:
    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def poll(self) -> int | None:
        return self.proc.poll()

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the run stops cleanly

    def wait(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()


class LocalBackend:
    """Each run a child process here; it dies with the sweep (and its engine workers with it)."""

    name = "local"

    def open(self, results: Path, configs: list[ExperimentConfig]) -> None:
        pass

    def slots(self) -> int:
        return available_cores()

    def threads(self, jobs: int) -> int:
        return max(1, available_cores() // jobs)  # each run's share of the cores

    def start(self, cfg: ExperimentConfig, folder: Path, data_dir: str | None) -> RunHandle:
        from robustlr.sim.checkpoint import atomic_write_text

        request = folder / "sweep-request.json"
        atomic_write_text(request, cfg.to_json())
        env = {**os.environ, "ROBUSTLR_PARENT_PID": str(os.getpid())}
        with open(folder / "sweep.log", "a") as log:
            proc = subprocess.Popen([sys.executable, "-m", "robustlr.experiments.child", str(request), str(folder),
                                     data_dir or ""], env=env, stdout=log, stderr=log)
        return _Process(proc)

    def close(self) -> None:
        pass
