"""The run folder: checks made before any work starts, and what may change on resume.

A run folder holds ``config.json``, ``partition.json``, ``metrics.jsonl``, ``checkpoint.pt`` and, once finished,
``summary.json`` and ``model.pt`` (see :mod:`robustlr.sim.records`). A folder is accepted when it
is writable and holds nothing, or a run that the config may resume: the same config up to the
keys of :data:`robustlr.sim.config.NEUTRAL_KEYS`, with ``rounds`` allowed to grow.

While a run writes its folder it holds an exclusive lock on the folder's ``.robustlr.lock``
(:func:`lock_run_dir`, ``fcntl.flock``; the file names the holder's pid and host): a second run
on the same folder is refused before any work. The kernel releases a flock when its process
dies, however it dies, so the lock of a killed run never blocks the run that resumes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import IO

from robustlr.errors import ConfigError, OutputError, ResumeError
from robustlr.sim import checkpoint
from robustlr.sim.config import NEUTRAL_KEYS, ExperimentConfig, config_hash, make_config
from robustlr.sim.records import RecordError, RunSummary, read_summary

__all__ = ["LOCK_NAME", "RESULT_FILES", "RunLock", "blocking_differences", "check_out_dir", "check_run",
           "finished_summary", "lock_run_dir", "open_run_dir", "prepare_out_dir", "read_run_config"]

log = logging.getLogger("robustlr")

LOCK_NAME = ".robustlr.lock"
#: the files a run writes atomically (each through a ``.tmp`` beside it)
RESULT_FILES = ("config.json", "partition.json", "metrics.jsonl", checkpoint.NAME, "model.pt", "summary.json")
# flock is not supported here (some network filesystems): the run goes on unlocked, with a warning
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def blocking_differences(old: ExperimentConfig, new: ExperimentConfig) -> dict:
    """The keys in which ``new`` differs from the run ``old`` so that resuming would change its numbers.

    ``rounds`` may grow (extending a run); the keys of :data:`NEUTRAL_KEYS` may change; a key that
    cannot act in the old run (setting it to the new value leaves its :func:`config_hash` the same:
    e.g. a run stored at an old default of a key its aggregator never reads) does not block."""
    out = {}
    for k in type(new).model_fields:
        a, b = getattr(old, k), getattr(new, k)
        if a == b or k in NEUTRAL_KEYS or (k == "rounds" and b >= a):
            continue
        out[k] = (a, b)
    if out:  # a key whose value cannot act in the old run (its hash is the same either way) does not block
        base = config_hash(old)
        out = {k: v for k, v in out.items() if k == "rounds" or config_hash(old.model_copy(update={k: v[1]})) != base}
    return out


def read_run_config(path: Path, fix: str = "delete the run folder or choose another --out") -> ExperimentConfig:
    """The config of a run folder's ``config.json`` (a :class:`ResumeError` when it is damaged, its
    message ending in ``fix``: what the caller's user can do)."""
    try:
        return make_config(json.loads(Path(path).read_text()), str(path))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        if isinstance(exc, ConfigError):
            raise ResumeError(f"{path} is not a config this robustlr can resume: {exc}") from None
        raise ResumeError(f"{path} is damaged ({exc}); {fix}") from None


#: the longest name of one folder or file (bytes) that Linux, macOS and Windows file systems accept
NAME_MAX = 255


def prepare_out_dir(out: Path, what: str = "run folder", option: str = "--out") -> None:
    """Create ``out`` and check that it is a writable folder (before any work starts); ``what`` and
    ``option`` name it in the errors (a sweep's results folder is ``--results``)."""
    long = next((p for p in out.parts if len(p.encode("utf-8", "surrogateescape")) > NAME_MAX), None)
    if long is not None:  # else exists() raises "File name too long"
        raise OutputError(f"{option} {out}: the name {long[:20]}... is {len(long.encode('utf-8', 'surrogateescape'))} "
                          f"bytes long; a folder or file name may have at most {NAME_MAX} bytes; choose a shorter "
                          f"{option}")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{option} {out} is a file, not a folder; choose a folder for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".robustlr-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write the {what} {out}: {exc.strerror or exc}; choose another {option}") from None


class RunLock:
    """The exclusive lock of a run folder (see :func:`lock_run_dir`); :meth:`release` it, or use it
    as a context manager. Released by the kernel if the process dies holding it."""

    def __init__(self, folder: Path, fh: IO[str] | None) -> None:
        self.folder = folder
        self._fh = fh

    @property
    def held(self) -> bool:
        return self._fh is not None

    def release(self) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            with contextlib.suppress(OSError):
                fh.truncate(0)  # no stale pid for a reader to mistake for a holder
            fcntl.flock(fh, fcntl.LOCK_UN)
        finally:
            fh.close()

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fh: IO[str]) -> str:
    for _ in range(20):  # the holder writes its pid right after it takes the lock
        try:
            fh.seek(0)
            info = json.loads(fh.read() or "{}")
            return f"pid {int(info['pid'])} on {info['host']}"
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.01)
    return "its pid not written yet"


def lock_run_dir(out: Path) -> RunLock:
    """Take ``out``'s exclusive lock, or refuse with an :class:`OutputError` naming the folder and the
    holder's pid when another run (another process, or another Simulation of this one) holds it."""
    path = out / LOCK_NAME
    try:
        fh = open(path, "a+")  # never truncated before the lock is ours: the holder's pid stays readable
    except OSError as exc:
        fix = "remove that folder" if isinstance(exc, IsADirectoryError) else "fix the folder's permissions"
        raise OutputError(f"cannot write the run folder {out}: cannot create its lock file {path}: "
                          f"{exc.strerror or exc}; {fix} or choose another --out") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            holder = _holder(fh)
            fh.close()
            raise OutputError(f"the run folder {out} is in use by another robustlr run ({holder}); wait for it to "
                              f"end or stop it, or choose another --out") from None
        fh.close()
        if exc.errno in _NO_FLOCK:
            log.warning("cannot lock the run folder %s (%s): nothing keeps a second run from writing it",
                        out, exc.strerror or exc)
            return RunLock(out, None)
        raise OutputError(f"cannot lock the run folder {out} ({path}): {exc.strerror or exc}; "
                          f"choose another --out") from None
    try:
        fh.truncate(0)
        fh.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
        fh.flush()
    except OSError as exc:
        RunLock(out, fh).release()
        raise OutputError(f"cannot write the run folder {out}: {path}: {exc.strerror or exc}; free space or fix "
                          f"the folder's permissions, or choose another --out") from None
    return RunLock(out, fh)


def check_run(out: Path, cfg: ExperimentConfig) -> None:
    """``out`` holds nothing, or a run that ``cfg`` may resume."""
    if (out / "config.json").exists():
        diff = blocking_differences(read_run_config(out / "config.json"), cfg)
        if diff:
            raise ResumeError(
                f"{out} holds a run of a different config (differs in {diff}); choose another --out folder, or "
                f"delete it to start over. Keys that cannot change the numbers may differ: "
                f"{', '.join(NEUTRAL_KEYS)}, and rounds (to extend a run)")
    elif (out / checkpoint.NAME).exists():
        raise ResumeError(f"{out} holds a checkpoint but no config.json; delete the folder or choose another --out")


def check_out_dir(out: Path, cfg: ExperimentConfig) -> None:
    """A writable folder, not in use by another run, that holds nothing or a run ``cfg`` may resume
    (the checks made before the data loads; the run itself then takes the lock, :func:`open_run_dir`)."""
    prepare_out_dir(out)
    with lock_run_dir(out):
        check_run(out, cfg)


def open_run_dir(out: Path, cfg: ExperimentConfig) -> RunLock:
    """:func:`check_out_dir`, keeping the lock: the caller writes the folder and releases it. The
    temporary files that a killed run may have left beside its result files are removed."""
    prepare_out_dir(out)
    lock = lock_run_dir(out)
    try:
        check_run(out, cfg)
        for name in RESULT_FILES:
            tmp = checkpoint.tmp_path(out / name)
            try:
                tmp.unlink(missing_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot remove {tmp}, left by a killed run: {exc.strerror or exc}; fix the "
                                  f"folder's permissions, or choose another --out") from None
    except BaseException:
        lock.release()
        raise
    return lock


def finished_summary(out: Path, rounds: int) -> RunSummary | None:
    """The summary of ``out``'s run when it is finished at ``rounds`` rounds (``model.pt`` and a
    readable ``summary.json`` of that many rounds), else None."""
    if not (out / "model.pt").is_file():
        return None
    try:
        summary = read_summary(out / "summary.json")
    except (OSError, ValueError, RecordError):  # missing or damaged: the run writes it again
        return None
    return summary if summary.rounds == rounds else None
