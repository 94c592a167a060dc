"""What the command groups share: consoles, the error policy, options, progress.

User text (paths, names, a config's values) is printed as it is: both consoles have rich markup
off, so ``/data[v2]`` keeps its brackets and ``[/x]`` is no closing tag. A styled line is built
with :func:`styled` (a rich ``Text``), never by pasting user text into markup. Typer reads help
strings as markup: one with brackets goes through :func:`plain`.

Progress goes to a terminal as rich's live bars; to a file or pipe (``nohup``, a cluster job's
log, CI) as plain lines, one per event, each with an ETA (:class:`LineProgress`).
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from robustlr.errors import RobustlrError
from robustlr.sim.lifecycle import Terminated

console = Console(stderr=False, markup=False)
err = Console(stderr=True, markup=False)

DataDirOpt = typer.Option(None, "--data-dir", help="folder holding the datasets (else $ROBUSTLR_DATA_DIR, "
                          "~/.cache/robustlr, system packages, download)")
ConfigArg = typer.Argument(..., help="a TOML config file or a preset name (see `robustlr presets`)")
SetOpt = typer.Option(None, "--set", "-s", help="override a key: --set rounds=20 (repeatable)")

F = TypeVar("F", bound=Callable[..., Any])


def plain(help_text: str) -> str:
    """A help string shown as written: typer renders help as rich markup, where ``robustlr[tensorboard]``
    would lose its brackets."""
    from rich.markup import escape

    return escape(help_text)


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line of plain text with styled pieces: ``styled(("error:", "bold red"), " ", msg)``;
    no piece is read as markup."""
    return Text.assemble(*parts)


def fail(msg: str, code: int = 2) -> None:
    # the message is plain text: "pip install 'robustlr[flower]'" is no markup tag
    err.print(styled(("error:", "bold red"), " ", msg), highlight=False)
    raise typer.Exit(code)


def command_line(*words: str | os.PathLike | None, options: dict[str, Any] | None = None) -> str:
    """A shell-quoted ``robustlr`` command line: the words, then each option whose value is not None
    (a list value repeats the option)."""
    import shlex

    argv = ["robustlr", *(str(w) for w in words if w is not None)]
    for flag, value in (options or {}).items():
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if v is not None:
                argv += [flag, str(v)]
    return shlex.join(argv)


def stopped(exc: BaseException, what: str, command: str) -> None:
    """Ctrl-C (exit 130) or SIGTERM (exit 143) during a long command: one line saying what is kept
    and the command that goes on from there."""
    how = "interrupted" if isinstance(exc, KeyboardInterrupt) else "terminated by SIGTERM"
    err.print(f"{how}; {what}: {command}", highlight=False, soft_wrap=True)
    raise typer.Exit(130 if isinstance(exc, KeyboardInterrupt) else 128 + signal.SIGTERM) from None


def user_errors(fn: F) -> F:
    """Turn robustlr's own errors (bad config, missing data, ...) into a one-line message and exit 2.

    Only :class:`robustlr.errors.RobustlrError` is caught: any other exception is a bug and
    keeps its traceback.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Terminated as exc:
            fail(str(exc), code=128 + signal.SIGTERM)
        except RobustlrError as exc:
            fail(str(exc))
        except EOFError as exc:  # typer would print only "Aborted."; an unexpected one is a bug
            raise RuntimeError(f"unexpected end of file: {exc}") from exc

    return wrapper  # type: ignore[return-value]


def is_live(con: Console | None = None) -> bool:
    """Whether live displays (bars, tables redrawn in place) show: stdout is a terminal, not a dumb
    one (rich shows nothing of them elsewhere until they stop). FORCE_COLOR keeps colours in a log
    but not the live bars; TTY_INTERACTIVE=1 or 0 (rich's switch) decides outright."""
    con = con or console
    forced = os.environ.get("TTY_INTERACTIVE")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        return bool(con.file.isatty()) and not con.is_dumb_terminal
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def fmt_eta(seconds: float | None) -> str:
    """``h:mm:ss`` as rich's TimeRemainingColumn shows it; ``-:--:--`` when unknown."""
    if seconds is None:
        return "-:--:--"
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class LineProgress:
    """Progress as plain lines, for a stdout that is no terminal; the subset of rich's ``Progress``
    that the commands use. Each update prints ``DESCRIPTION  DONE/TOTAL  STATUS  ETA h:mm:ss``; the
    ETA is the wall time per step measured in this process (tasks run one after another: a step's
    time runs from the previous event of any task) times the steps left."""

    def __init__(self, con: Console, clock: Callable[[], float] = time.monotonic):
        self.con = con
        self.clock = clock
        self.tasks: list[dict[str, Any]] = []
        self._last = clock()

    def __enter__(self) -> LineProgress:
        self._last = self.clock()
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, description: str, total: int, status: str = "", completed: int = 0) -> int:
        self.tasks.append({"description": description, "total": total, "completed": completed, "steps": 0,
                           "seconds": 0.0})
        return len(self.tasks) - 1

    def update(self, task: int, *, advance: int = 0, completed: int | None = None, description: str | None = None,
               status: str = "") -> None:
        now = self.clock()
        t = self.tasks[task]
        new = completed if completed is not None else t["completed"] + advance
        t["steps"] += max(0, new - t["completed"])
        t["seconds"] += now - self._last
        self._last = now
        t["completed"] = new
        if description is not None:
            t["description"] = description
        left = t["total"] - new
        eta = t["seconds"] / t["steps"] * left if t["steps"] else None
        line = "  ".join(p for p in (t["description"], f"{new}/{t['total']}", status, f"ETA {fmt_eta(eta)}") if p)
        self.con.print(line, highlight=False, soft_wrap=True)


def progress_callback(progress, task, prefix: str = ""):
    def on_round(rec) -> None:
        parts = []
        if rec.evaluated:
            parts.append(f"val {100 * rec.val_acc:.1f}%  backdoor {100 * rec.backdoor_acc:.1f}%")
        if rec.flipped_fraction is not None:
            parts.append(f"flipped {100 * rec.flipped_fraction:.1f}%")
        parts.append(f"{rec.seconds:.1f}s/round")
        # completed = the rounds done (rounds count from 1): a resumed run's bar starts where it stands
        progress.update(task, completed=rec.round, description=f"{prefix}round {rec.round}", status="  ".join(parts))

    return on_round


def make_progress():
    """Rich's live bars on a terminal; else :class:`LineProgress` (plain lines with an ETA)."""
    if not is_live():
        return LineProgress(console)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    # the description and status hold no markup (a run's name is user text)
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[status]}", markup=False), console=console,
                    transient=False)
