"""``robustlr sweep SUITE``: run a suite's grid in parallel processes, skip what is done, resume
what was interrupted, and keep the results store up to date.

Each run is a child process (:mod:`robustlr.experiments.child`) with one thread (``threads = 1``,
a key that cannot change the numbers), and ``jobs`` of them run at once (default: the cores),
so cores are never oversubscribed. A run whose folder holds a finished run of the same config is
skipped; one that was interrupted resumes from its checkpoint. Only this process writes the
results store, after a run's files are atomically in place. Killing the sweep kills every run
and every run's workers (each level dies with its parent); SIGTERM stops the runs cleanly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from robustlr.experiments import store
from robustlr.experiments.suite import Suite, SuiteRun
from robustlr.sim.checkpoint import atomic_write_text
from robustlr.sim.engines.select import available_cores
from robustlr.sim.lifecycle import sigterm_raises
from robustlr.sim.loop import read_run_config
from robustlr.sim.records import RecordError, read_summary


@dataclass
class SweepState:
    total: int
    done: int = 0  # finished now or before
    skipped: int = 0  # finished before this sweep
    failed: list[str] = field(default_factory=list)
    running: dict[str, tuple[Path, int, float]] = field(default_factory=dict)  # name -> (folder, rounds, start)

    @property
    def left(self) -> int:
        return self.total - self.done - len(self.failed) - len(self.running)


def _finished(folder: Path, run: SuiteRun) -> bool:
    if not (folder / "summary.json").exists() or not (folder / "config.json").exists():
        return False
    try:
        return read_run_config(folder / "config.json").model_dump(exclude={"threads"}) == \
            run.config.model_dump(exclude={"threads"}) and read_summary(folder / "summary.json").rounds == run.config.rounds
    except (RecordError, ValueError):
        return False


def rounds_done(folder: Path) -> int:
    f = folder / "metrics.jsonl"
    try:
        return sum(1 for line in f.read_text().splitlines() if line.strip())
    except OSError:
        return 0


def sweep(suite: Suite, results: Path, budget: str = "lite", jobs: int | None = None, data_dir: str | None = None,
          on_update=None) -> SweepState:
    runs = suite.runs(budget)
    base = results / suite.name
    base.mkdir(parents=True, exist_ok=True)
    jobs = max(1, jobs or available_cores())
    state = SweepState(total=len(runs))
    pending: list[tuple[SuiteRun, Path]] = []
    for run in runs:
        folder = base / run.config.name
        if _finished(folder, run):
            state.done += 1
            state.skipped += 1
            store.record_run(results, folder, run.config, "done", suite.name, run.label)
        else:
            pending.append((run, folder))
    procs: dict[str, tuple[subprocess.Popen, SuiteRun, Path]] = {}
    env = {**os.environ, "ROBUSTLR_PARENT_PID": str(os.getpid())}
    try:
        with sigterm_raises():
            while pending or procs:
                while pending and len(procs) < jobs:
                    run, folder = pending.pop(0)
                    cfg = run.config.model_copy(update={"threads": 1})
                    folder.mkdir(parents=True, exist_ok=True)
                    request = folder / "sweep-request.json"
                    atomic_write_text(request, cfg.to_json())
                    log = open(folder / "sweep.log", "a")
                    procs[cfg.name] = (subprocess.Popen(
                        [sys.executable, "-m", "robustlr.experiments.child", str(request), str(folder), data_dir or ""],
                        env=env, stdout=log, stderr=log), run, folder)
                    state.running[cfg.name] = (folder, cfg.rounds, time.time())
                for name, (proc, run, folder) in list(procs.items()):
                    rc = proc.poll()
                    if rc is None:
                        continue
                    del procs[name], state.running[name]
                    if rc == 0:
                        state.done += 1
                        store.record_run(results, folder, run.config.model_copy(update={"threads": 1}), "done",
                                         suite.name, run.label)
                    else:
                        state.failed.append(name)
                        store.record_run(results, folder, run.config, "failed", suite.name, run.label)
                if on_update is not None:
                    on_update(state)
                time.sleep(0.2)
    finally:
        for proc, _, _ in procs.values():  # SIGTERM, Ctrl-C or an error: stop every run cleanly
            if proc.poll() is None:
                proc.terminate()
        for proc, _, _ in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:  # pragma: no cover
                proc.kill()
    return state
