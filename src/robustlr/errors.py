"""robustlr's own error types: the ones the command line turns into a one-line message.

Anything else that escapes a command is a bug and keeps its traceback. Each class also
derives from the built-in type a caller would expect (``ValueError``, ``FileNotFoundError``),
so library users can catch either.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RobustlrError(Exception):
    """Base of the errors that name a problem of the user's input and its fix."""


class ConfigError(RobustlrError, ValueError):
    """A configuration that cannot run; the message names each problem and its fix."""


class DataError(RobustlrError, ValueError):
    """A dataset that cannot be used as configured (too few samples, too few writers, ...)."""


class DataNotFoundError(RobustlrError, FileNotFoundError):
    """A dataset file that is missing or corrupt; the message names every place searched."""


class ResumeError(RobustlrError):
    """An output folder that cannot be resumed (another config, an old checkpoint format)."""


class EngineError(RobustlrError, ValueError):
    """A training engine that cannot run this configuration (device, model, precision)."""


class TrainingError(RobustlrError):
    """A run that stopped because its training went wrong (a non-finite model, no valid update);
    its last good checkpoint is kept."""


class OutputError(RobustlrError, OSError):
    """An output folder or file that cannot be written."""


class MissingDependencyError(RobustlrError, ImportError):
    """An optional package that a feature needs is not installed; the message names the extra
    that brings it (``pip install 'robustlr[EXTRA]'``). Raised by :func:`robustlr._optional.require`."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'iid-rlr'?)"`` for the closest of ``choices`` to a misspelt ``word`` (difflib's
    ratio >= 0.6), else ``""``: the hint that follows an unknown name in an error message."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
