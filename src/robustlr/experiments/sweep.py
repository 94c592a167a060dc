"""``robustlr sweep SUITE``: run a suite's grid in parallel, skip what is done, resume what was
interrupted, and keep the results store up to date.

Where the runs execute is a backend (:mod:`robustlr.experiments.backends`): by default each run is
a child process here (:mod:`robustlr.experiments.child`) with ``cores // jobs`` threads
(``threads``, a key that cannot change the numbers: one thread each at the default, two
training workers each at ``-j 1`` on two cores), and ``jobs`` of them run at once (default: the
cores), so cores are never oversubscribed; with
:class:`robustlr.experiments.ray_backend.RayBackend` each run is a task on a Ray cluster. A run
whose folder holds a finished run of the same config is
skipped; one that was interrupted resumes from its checkpoint. A run is finished when its
``summary.json`` is a run record this robustlr reads and its ``model.pt`` is a saved model
(:func:`robustlr.experiments.store.finished_run`); a run whose finished files are damaged (a
``summary.json`` that is no run record, a deleted ``model.pt``) is run again, with a warning: from
its checkpoint, which after the last round only rewrites the final files. Only this process writes the
results store, after a run's files are atomically in place; a damaged store or a results folder
this process cannot write stops the sweep before any run starts
(:class:`robustlr.experiments.store.StoreError`, :class:`robustlr.errors.OutputError`). Killing
the sweep kills every run and every run's workers (each level dies with its parent); SIGTERM
stops the runs cleanly.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from robustlr.errors import RobustlrError
from robustlr.experiments import store
from robustlr.experiments.backends import Backend, LocalBackend, RunHandle
from robustlr.experiments.suite import Suite, SuiteRun
from robustlr.sim.checkpoint import atomic_write_text
from robustlr.sim.config import ExperimentConfig
from robustlr.sim.lifecycle import sigterm_raises
from robustlr.sim.rundir import blocking_differences, prepare_out_dir, read_run_config

_logger = logging.getLogger("robustlr")


@dataclass
class SweepState:
    total: int
    done: int = 0  # finished now or before
    skipped: int = 0  # finished before this sweep
    failed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # finished runs whose files were damaged (run again)
    running: dict[str, tuple[Path, int, float]] = field(default_factory=dict)  # name -> (folder, rounds, start)

    @property
    def left(self) -> int:
        return self.total - self.done - len(self.failed) - len(self.running)


def _finished(folder: Path, cfg: ExperimentConfig, warn: Callable[[str], None]) -> bool:
    """Whether ``folder`` holds the finished run of ``cfg``; ``warn`` hears of finished files that are damaged."""
    if not (folder / "summary.json").exists() or not (folder / "config.json").exists():
        return False
    try:
        old = read_run_config(folder / "config.json")
        if old.rounds != cfg.rounds or blocking_differences(old, cfg):
            return False  # another config: the run's process says why it cannot resume
    except RobustlrError:
        return False  # a damaged config.json: the run's process fails with the message
    summary, why = store.finished_run(folder)
    if why is not None:
        warn(f"{folder.name}: {why}; running it again (from its checkpoint if it has one)")
        return False
    return summary is not None and summary.rounds == cfg.rounds


def rounds_done(folder: Path) -> int:
    f = folder / "metrics.jsonl"
    try:
        return sum(1 for line in f.read_text().splitlines() if line.strip())
    except OSError:
        return 0


def _reference_val_acc(base: Path, run: SuiteRun) -> float | None:
    """The final validation accuracy of the run this one's relative trigger refers to (None: not done)."""
    summary, _ = store.finished_run(base / str(run.after))
    return summary.val_acc if summary is not None else None


def sweep(suite: Suite, results: Path, budget: str = "lite", jobs: int | None = None, data_dir: str | None = None,
          on_update=None, on_warning: Callable[[str], None] | None = None, backend: Backend | None = None) -> SweepState:
    """Run ``suite``'s grid (see the module's text) on ``backend`` (default: :class:`LocalBackend`,
    child processes here; :class:`robustlr.experiments.ray_backend.RayBackend` for a Ray cluster).
    ``jobs``: runs at once (default: the backend's slots). ``on_warning`` hears of each finished run
    whose files are damaged and that is run again (default: the ``robustlr`` logger);
    ``state.warnings`` keeps them too."""
    runs = suite.runs(budget)
    prepare_out_dir(results, what="results folder", option="--results")
    store.check(results)  # a damaged store stops the sweep now, not when its first run is done
    backend = backend or LocalBackend()
    backend.open(results, [run.config for run in runs])  # an unreachable cluster stops the sweep before any run
    try:
        return _sweep(suite, runs, results, jobs, data_dir, on_update, on_warning, backend)
    finally:
        backend.close()


def _sweep(suite, runs, results, jobs, data_dir, on_update, on_warning, backend) -> SweepState:
    base = results / suite.name
    base.mkdir(parents=True, exist_ok=True)
    jobs = max(1, jobs or backend.slots())
    threads = backend.threads(jobs)
    state = SweepState(total=len(runs))

    def warn(message: str) -> None:
        if message in state.warnings:  # the scan below looks at a pending run more than once
            return
        state.warnings.append(message)
        (on_warning or _logger.warning)(message)
    pending: list[tuple[SuiteRun, Path]] = [(run, base / run.config.name) for run in runs]
    done_names: set[str] = set()
    failed_names: set[str] = set()

    def record(run: SuiteRun, folder: Path, cfg, status: str) -> None:
        atomic_write_text(folder / "suite-run.json", json.dumps(run.meta(), indent=1))
        store.record_run(results, folder, cfg, status, suite.name, run.key)

    def ready(run: SuiteRun):
        """The run's concrete config, None while it waits for its reference, or an error message."""
        if run.after is None:
            return run.config
        if run.after in failed_names:
            return f"its reference run {run.after} failed"
        if run.after not in done_names:
            return None
        acc = _reference_val_acc(base, run)
        if acc is None:
            return f"its reference run {run.after} has no final validation accuracy"
        return run.resolved(acc)

    # what finished before this sweep (a dependent run once its reference is known)
    progress = True
    while progress:
        progress = False
        for run, folder in list(pending):
            cfg = ready(run)
            if isinstance(cfg, ExperimentConfig) and _finished(folder, cfg, warn):
                pending.remove((run, folder))
                state.done += 1
                state.skipped += 1
                done_names.add(run.config.name)
                record(run, folder, cfg, "done")
                progress = True
    procs: dict[str, tuple[RunHandle, SuiteRun, Path, ExperimentConfig]] = {}
    try:
        with sigterm_raises():
            while pending or procs:
                for item in list(pending):
                    if len(procs) >= jobs:
                        break
                    run, folder = item
                    cfg = ready(run)
                    if cfg is None:
                        continue
                    pending.remove(item)
                    folder.mkdir(parents=True, exist_ok=True)
                    if isinstance(cfg, str):
                        (folder / "sweep.log").open("a").write(f"not started: {cfg}\n")
                        state.failed.append(run.config.name)
                        failed_names.add(run.config.name)
                        continue
                    cfg = cfg.model_copy(update={"threads": threads})
                    procs[cfg.name] = (backend.start(cfg, folder, data_dir), run, folder, cfg)
                    state.running[cfg.name] = (folder, cfg.rounds, time.time())
                for name, (proc, run, folder, cfg) in list(procs.items()):
                    rc = proc.poll()
                    if rc is None:
                        continue
                    del procs[name], state.running[name]
                    if rc == 0:
                        state.done += 1
                        done_names.add(name)
                        record(run, folder, cfg, "done")
                    else:
                        state.failed.append(name)
                        failed_names.add(name)
                        record(run, folder, cfg, "failed")
                if on_update is not None:
                    on_update(state)
                if pending and not procs and all(isinstance(ready(r), type(None)) for r, _ in pending):
                    raise RuntimeError("sweep: runs wait on references that will never run")  # pragma: no cover
                time.sleep(0.2)
    finally:
        for proc, _, _, _ in procs.values():  # SIGTERM, Ctrl-C or an error: stop every run cleanly
            if proc.poll() is None:
                proc.terminate()
        for proc, _, _, _ in procs.values():
            proc.wait(timeout=60)
    return state
