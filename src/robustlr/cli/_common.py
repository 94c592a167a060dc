"""What the command groups share: consoles, the error policy, options, progress bars."""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from robustlr.errors import RobustlrError
from robustlr.sim.lifecycle import Terminated

console = Console(stderr=False)
err = Console(stderr=True)

DataDirOpt = typer.Option(None, "--data-dir", help="folder holding the datasets (else $ROBUSTLR_DATA_DIR, "
                          "~/.cache/robustlr, system packages, download)")
SetOpt = typer.Option(None, "--set", "-s", help="override a key: --set rounds=20 (repeatable)")

F = TypeVar("F", bound=Callable[..., Any])


def fail(msg: str, code: int = 2) -> None:
    from rich.markup import escape

    # the message is plain text: "pip install 'robustlr[flower]'" is no markup tag
    err.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, markup=True)
    raise typer.Exit(code)


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


def progress_callback(progress, task, prefix: str = ""):
    def on_round(rec) -> None:
        parts = []
        if rec.evaluated:
            parts.append(f"val {100 * rec.val_acc:.1f}%  backdoor {100 * rec.backdoor_acc:.1f}%")
        if rec.flipped_fraction is not None:
            parts.append(f"flipped {100 * rec.flipped_fraction:.1f}%")
        parts.append(f"{rec.seconds:.1f}s/round")
        progress.update(task, advance=1, description=f"{prefix}round {rec.round}", status="  ".join(parts))

    return on_round


def make_progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[status]}"), console=console, transient=False)
