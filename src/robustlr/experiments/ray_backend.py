"""``robustlr sweep SUITE --backend ray``: each run of the grid a Ray task on a cluster.

The driver (the ``robustlr sweep`` process) keeps everything a local sweep keeps: the grid, the
skip-finished / resume-interrupted decisions, the live display and the results store, which it
alone writes. A run is a Ray task holding ``cpus_per_run`` CPUs (and a GPU when the run's
``device`` is cuda); on its node it starts the same child process a local sweep starts
(:mod:`robustlr.experiments.child`), with as many threads as it holds CPUs.

Where the run folder lives (``storage``):

- ``ship`` (the default): the task runs in a temporary folder on its node, seeded with the
  driver's copy of the run folder (so an interrupted run resumes from its checkpoint), and streams
  every changed result file (the checkpoint, ``metrics.jsonl``, ``sweep.log``, at the end
  ``model.pt`` and ``summary.json``) back to the driver as a Ray generator task, every
  ``sync_seconds``. Nothing needs to be shared between the machines but the data.
- ``shared``: the results folder is on storage every node mounts at the same path (NFS, a
  cluster file system); the task writes the run folder there directly. ``open`` checks that every
  node sees it.

Faults: a task whose worker process or node dies (``WorkerCrashedError``, ``NodeDiedError``, an
object lost with it, ...) is started again, up to ``retries`` times, from the driver's copy of the
run folder, that is from the last checkpoint the driver received (``ship``) or the last one written
(``shared``); each attempt is noted in ``sweep.log``. A run that fails by itself (a robustlr error,
exit code 2) is not retried: it would fail again. A half run is never recorded as finished: the
driver records a run only when its task reports exit code 0 and the final files are in place.
Ctrl-C or SIGTERM on the driver cancels every task (``ray.cancel(force=True)``: the worker dies and
the run's process dies with it); running the same sweep again goes on from the checkpoints.

Before any run starts, ``open`` refuses: an address with no Ray cluster listening, a cluster with
fewer CPUs (or GPUs) than one run needs, and nodes that run another robustlr or torch than the
driver (their numbers would differ). Ray is the one that ``robustlr[flower]`` (Flower's simulation
runtime) or ``robustlr[ray]`` installs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

from robustlr.errors import ConfigError, OutputError, RobustlrError
from robustlr.sim.checkpoint import atomic_write_bytes
from robustlr.sim.config import ExperimentConfig
from robustlr.sim.rundir import RESULT_FILES

__all__ = ["RayBackend", "STORAGES", "SYNC_FILES"]

STORAGES = ("ship", "shared")
#: the files of a run folder that travel between the driver and a task's node (``ship`` storage)
SYNC_FILES = (*RESULT_FILES, "sweep.log")
#: the exit code a run's task reports when its own code failed (not the run: that is 2)
TASK_FAILED = 3


def _ray():
    from robustlr._optional import require

    return require("ray", extra="ray", feature="robustlr sweep --backend ray")


def _node_facts(marker: str | None) -> dict:
    """What a node runs (checked against the driver's) and whether it sees the shared marker file."""
    import platform

    import torch

    from robustlr._version import __version__

    return {"host": platform.node(), "robustlr": __version__, "torch": torch.__version__,
            "python": platform.python_version(), "sees_results": marker is None or os.path.exists(marker)}


def _changed(folder: Path, seen: dict[str, tuple[int, int]]) -> dict[str, bytes]:
    """The sync files of ``folder`` changed since ``seen`` (updated), with their bytes."""
    out: dict[str, bytes] = {}
    for name in SYNC_FILES:
        path = folder / name
        try:
            st = path.stat()
            key = (st.st_size, st.st_mtime_ns)
            if seen.get(name) == key:
                continue
            data = path.read_bytes()
        except OSError:  # not written yet, or replaced between stat and read: the next pass has it
            continue
        seen[name] = key
        out[name] = data
    return out


def run_task(config_json: str, files: dict[str, bytes] | None, shared_folder: str | None, data_dir: str | None,
             sync_seconds: float, attempt: int):
    """The body of one run's Ray task (a generator: see the module's text). Yields dicts:
    ``{"files": {name: bytes}}`` as the run writes them (``ship``), then ``{"rc": code}``."""
    import ray

    if shared_folder is not None:
        folder, scratch = Path(shared_folder), None
        folder.mkdir(parents=True, exist_ok=True)
    else:
        scratch = Path(tempfile.mkdtemp(prefix="robustlr-ray-run-"))
        folder = scratch
        for name, data in (files or {}).items():
            (folder / name).write_bytes(data)
    try:
        request = folder / "sweep-request.json"
        request.write_text(config_json)
        seen: dict[str, tuple[int, int]] = {}
        if files:
            _changed(folder, seen)  # what the driver sent is not sent back
        env = {**os.environ, "ROBUSTLR_PARENT_PID": str(os.getpid())}
        with open(folder / "sweep.log", "a") as log:
            proc = subprocess.Popen([sys.executable, "-m", "robustlr.experiments.child", str(request), str(folder),
                                     data_dir or ""], env=env, stdout=log, stderr=log)
            node = ray.get_runtime_context().get_node_id()
            log.write(f"attempt {attempt}: ray worker pid {os.getpid()} on {socket.gethostname()} (node {node[:12]}), "
                      f"run pid {proc.pid}, folder {folder}\n")
        while True:
            rc = proc.poll()
            if scratch is not None:
                changed = _changed(folder, seen)
                if changed:
                    yield {"files": changed}
            if rc is not None:
                break
            time.sleep(sync_seconds)
        yield {"rc": rc}
    except Exception:  # our own code failed, not the run: say it with its traceback
        yield {"rc": TASK_FAILED, "error": traceback.format_exc()}
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _probe_address(address: str, timeout: float = 5.0) -> None:
    """Refuse an address where nothing listens, in seconds (``ray.init`` would wait a minute)."""
    if address in ("auto", "local") or address.startswith(("ray://", "anyscale://")):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--address {address!r} is not HOST:PORT (the head node's GCS address, 6379 by default; "
                          f"`ray status` on the head prints it) nor 'auto'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(f"no Ray cluster at {address} ({exc.strerror or exc}): start one with "
                          f"`ray start --head --port {port}` on {host}, or pass its head node's address; "
                          f"without --address the sweep starts a Ray cluster on this machine") from exc


class _RayRun:
    """One run on Ray: a generator task, started again from the driver's folder when its worker or node dies."""

    def __init__(self, backend: RayBackend, cfg: ExperimentConfig, folder: Path, data_dir: str | None) -> None:
        self.backend, self.cfg, self.folder, self.data_dir = backend, cfg, folder, data_dir
        self.attempt = 0
        self.rc: int | None = None
        self.gen = None
        self._submit()

    def _note(self, line: str) -> None:
        with open(self.folder / "sweep.log", "a") as log:
            log.write(line + "\n")

    def _submit(self) -> None:
        b = self.backend
        self.attempt += 1
        shared = b.storage == "shared"
        files = None
        if not shared:
            files = {}
            for name in SYNC_FILES:
                try:
                    files[name] = (self.folder / name).read_bytes()
                except FileNotFoundError:
                    pass
        self.gen = b.task.options(num_cpus=b.cpus_per_run, num_gpus=1 if self.cfg.device.startswith("cuda") else 0,
                                  max_retries=0, retry_exceptions=False).remote(
            self.cfg.to_json(), files, str(self.folder.resolve()) if shared else None, self.data_dir,
            b.sync_seconds, self.attempt)

    def _receive(self, message: dict) -> None:
        for name, data in message.get("files", {}).items():
            atomic_write_bytes(self.folder / name, data)
        if "error" in message:
            self._note(f"the run's Ray task failed:\n{message['error']}")
        if "rc" in message:
            self.rc = int(message["rc"])

    def poll(self) -> int | None:
        if self.rc is not None:
            return self.rc
        ray = self.backend.ray
        while self.rc is None:
            ready, _ = ray.wait([self.gen], timeout=0)
            if not ready:
                return None
            try:
                message = ray.get(next(self.gen))
            except StopIteration:  # ended without its exit code: cannot happen unless killed in between
                self._lost("its Ray task ended without an exit code")
                continue
            except ray.exceptions.TaskCancelledError:
                self.rc = 143
                self._note("cancelled (the sweep stopped)")
                continue
            except ray.exceptions.RayTaskError as exc:  # our task's own code raised: not a lost node
                self._note(f"the run's Ray task failed: {exc}")
                self.rc = TASK_FAILED
                continue
            except ray.exceptions.RayError as exc:  # the worker, its node or an object was lost
                self._lost(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
                continue
            self._receive(message)
        return self.rc

    def _lost(self, why: str) -> None:
        retries = self.backend.retries
        if self.attempt <= retries:
            self._note(f"attempt {self.attempt} lost ({why}); starting attempt {self.attempt + 1} of {retries + 1} "
                       f"from the last checkpoint the driver has")
            self._submit()
        else:
            self._note(f"attempt {self.attempt} lost ({why}); no retries left (--retries {retries})")
            self.rc = TASK_FAILED

    def terminate(self) -> None:
        if self.rc is None and self.gen is not None:
            try:
                self.backend.ray.cancel(self.gen, force=True)
            except Exception:  # pragma: no cover - already gone
                pass

    def wait(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while self.rc is None and time.monotonic() < end:
            self.poll()
            time.sleep(0.1)


class RayBackend:
    """Runs a sweep's grid as Ray tasks (see the module's text).

    ``address``: a running cluster's head (``HOST:PORT``, ``auto``: the one this machine is part
    of, ``ray://HOST:PORT``: Ray Client); None starts a Ray cluster on this machine for the sweep.
    ``cpus_per_run``: the CPUs (and threads) of each run. ``retries``: how often a run whose worker
    or node died is started again. ``sync_seconds``: how often a ``ship`` run sends its changed
    files."""

    name = "ray"

    def __init__(self, address: str | None = None, cpus_per_run: int = 1, storage: str = "ship", retries: int = 2,
                 sync_seconds: float = 2.0) -> None:
        if storage not in STORAGES:
            raise ConfigError(f"--storage {storage!r}: choose ship (run folders travel back to the driver) or shared "
                              f"(the results folder is mounted at the same path on every node)")
        if cpus_per_run < 1:
            raise ConfigError(f"--cpus-per-run {cpus_per_run}: a run needs at least 1 CPU")
        if retries < 0:
            raise ConfigError(f"--retries {retries}: must be 0 or more")
        if sync_seconds <= 0:
            raise ConfigError(f"sync_seconds {sync_seconds}: must be positive")
        self.address, self.cpus_per_run, self.storage = address, cpus_per_run, storage
        self.retries, self.sync_seconds = retries, sync_seconds
        self.ray = None
        self.task = None
        self._started_ray = False
        self._cpus = 0

    def open(self, results: Path, configs: list[ExperimentConfig]) -> None:
        ray = self.ray = _ray()
        if self.address:
            _probe_address(self.address)
        # Ray 2.55 warns that a later Ray stops overriding CUDA_VISIBLE_DEVICES for tasks without GPUs;
        # robustlr asks for a GPU exactly when a run's device is cuda, so it takes the later behaviour now
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        if not ray.is_initialized():
            kwargs = {"logging_level": "WARNING", "log_to_driver": False}
            try:
                if self.address:
                    ray.init(address=self.address, **kwargs)
                else:
                    from robustlr.sim.engines.select import available_cores

                    ray.init(num_cpus=available_cores(), include_dashboard=False, **kwargs)
            except (ConnectionError, RuntimeError) as exc:
                raise ConfigError(f"could not join the Ray cluster at {self.address or 'this machine'}: {exc}") from exc
            self._started_ray = True
        try:
            self._check(ray, results, configs)
        except BaseException:
            self.close()
            raise
        self.task = ray.remote(run_task)

    def _check(self, ray, results: Path, configs: list[ExperimentConfig]) -> None:
        where = self.address or "this machine"
        resources = ray.cluster_resources()
        self._cpus = int(resources.get("CPU", 0))
        if self._cpus < self.cpus_per_run:
            raise ConfigError(f"the Ray cluster at {where} has {self._cpus} CPU(s); one run needs {self.cpus_per_run} "
                              f"(--cpus-per-run): add a node or lower --cpus-per-run")
        if any(c.device.startswith("cuda") for c in configs) and resources.get("GPU", 0) < 1:
            raise ConfigError(f"the suite's runs use device cuda and the Ray cluster at {where} has no GPU: add a GPU "
                              f"node, or run on the CPU with --set device=cpu in the suite")
        marker = None
        if self.storage == "shared":
            marker = results.resolve() / f".robustlr-shared-{uuid.uuid4().hex[:12]}"
            marker.write_text("robustlr checks that every Ray node sees this folder\n")
        try:
            self._check_nodes(ray, marker, where)
        finally:
            if marker is not None:
                marker.unlink(missing_ok=True)

    def _check_nodes(self, ray, marker: Path | None, where: str) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = _node_facts(None)
        probe = ray.remote(num_cpus=0)(_node_facts)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        facts = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                         .remote(str(marker) if marker else None) for n in nodes])
        for node, got in zip(nodes, facts):
            for key in ("robustlr", "torch", "python"):
                if got[key] != here[key]:
                    raise ConfigError(f"Ray node {got['host']} ({node['NodeManagerAddress']}) runs {key} {got[key]}, "
                                      f"this driver {here[key]}: their numbers would differ; install the same "
                                      f"versions on every node")
            if not got["sees_results"]:
                raise OutputError(f"--storage shared: Ray node {got['host']} ({node['NodeManagerAddress']}) does not "
                                  f"see the results folder {marker.parent if marker else ''} at the same path; mount "
                                  f"it there, or use --storage ship (run folders travel back to the driver)")

    def slots(self) -> int:
        return max(1, self._cpus // self.cpus_per_run)

    def threads(self, jobs: int) -> int:
        return self.cpus_per_run

    def start(self, cfg: ExperimentConfig, folder: Path, data_dir: str | None) -> _RayRun:
        if self.task is None:
            raise RobustlrError("RayBackend.start before open")  # pragma: no cover - the sweep opens it
        return _RayRun(self, cfg, folder, data_dir)

    def close(self) -> None:
        if self._started_ray:  # a cluster this backend joined or started: leave it
            self.ray.shutdown()
            self._started_ray = False
