"""The ``robustlr`` command (``robustlr.cli:main``); the Typer app is :mod:`robustlr.cli.commands`.

This module imports nothing optional, so that the console script of a core install (without the
``sim`` extra) ends with one line naming the extra instead of a traceback. ``from robustlr.cli
import app`` still gives the Typer app.
"""

from __future__ import annotations

import sys
from typing import Any

from robustlr.errors import MissingDependencyError

__all__ = ["app", "main"]


def main() -> None:
    try:
        from robustlr.cli.commands import main as _main
    except MissingDependencyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    _main()


def __getattr__(name: str) -> Any:
    if name == "app":
        from robustlr.cli.commands import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
