"""How robustlr's processes live and die: children die with their parent, SIGTERM stops cleanly.

The process tree of a run is: the run (the ``robustlr`` command, or a script calling
:func:`robustlr.run`), and the worker processes of the ``processes`` engine; a sweep runner
adds a level above. At every level the same two rules hold:

- a child dies with its parent: :func:`die_with_parent` (called first thing in every child)
  asks Linux to SIGKILL it when the parent dies (``prctl(PR_SET_PDEATHSIG)``) and starts a
  watchdog thread that exits when the parent's pid changes (every OS; it also covers the
  instant between fork and prctl). So ``kill -9`` of the top process leaves nothing behind;
- SIGTERM stops a level cleanly: :func:`sigterm_raises` turns it into a :class:`Terminated`
  exception in the main thread, which unwinds through ``finally`` blocks: the engine kills
  its workers, files being written are left as their last good version (writes are atomic),
  and the run resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from robustlr.errors import RobustlrError

PR_SET_PDEATHSIG = 1
WATCHDOG_SECONDS = 0.5


class Terminated(RobustlrError):
    """The run received SIGTERM and stopped; it resumes from its last checkpoint."""


def child_pids(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def descendant_pids(pid: int) -> list[int]:
    """``pid``'s children, their children, and so on."""
    out, todo = [], child_pids(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += child_pids(p)
    return out


def is_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, is not alive)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _watch(parent_pid: int) -> None:
    while True:
        time.sleep(WATCHDOG_SECONDS)
        if os.getppid() != parent_pid:
            os._exit(1)


def die_with_parent(parent_pid: int) -> None:
    """Make the calling process exit when ``parent_pid`` (its parent) dies."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the watchdog alone
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid,), name="robustlr-parent-watchdog", daemon=True).start()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated("terminated by SIGTERM; run the same command again to resume from the last checkpoint")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
