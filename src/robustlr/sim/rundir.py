"""The run folder: checks made before any work starts, and what may change on resume.

A run folder holds ``config.json``, ``metrics.jsonl``, ``checkpoint.pt`` and, once finished,
``summary.json`` and ``model.pt`` (see :mod:`robustlr.sim.records`). A folder is accepted when it
is writable and holds nothing, or a run that the config may resume: the same config up to the
keys of :data:`robustlr.sim.config.NEUTRAL_KEYS`, with ``rounds`` allowed to grow.
"""

from __future__ import annotations

import json
from pathlib import Path

from robustlr.errors import ConfigError, OutputError, ResumeError
from robustlr.sim import checkpoint
from robustlr.sim.config import NEUTRAL_KEYS, ExperimentConfig, make_config

__all__ = ["blocking_differences", "check_out_dir", "prepare_out_dir", "read_run_config"]


def blocking_differences(old: ExperimentConfig, new: ExperimentConfig) -> dict:
    """The keys in which ``new`` differs from the run ``old`` so that resuming would change its numbers.

    ``rounds`` may grow (extending a run); the keys of :data:`NEUTRAL_KEYS` may change."""
    out = {}
    for k in type(new).model_fields:
        a, b = getattr(old, k), getattr(new, k)
        if a == b or k in NEUTRAL_KEYS or (k == "rounds" and b >= a):
            continue
        out[k] = (a, b)
    return out


def read_run_config(path: Path) -> ExperimentConfig:
    """The config of a run folder's ``config.json`` (a :class:`ResumeError` when it is damaged)."""
    try:
        return make_config(json.loads(Path(path).read_text()), str(path))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        if isinstance(exc, ConfigError):
            raise ResumeError(f"{path} is not a config this robustlr can resume: {exc}") from None
        raise ResumeError(f"{path} is damaged ({exc}); delete the run folder or choose another --out") from None


#: the longest name of one folder or file (bytes) that Linux, macOS and Windows file systems accept
NAME_MAX = 255


def prepare_out_dir(out: Path) -> None:
    """Create ``out`` and check that it is a writable folder (before any work starts)."""
    long = next((p for p in out.parts if len(p.encode("utf-8", "surrogateescape")) > NAME_MAX), None)
    if long is not None:  # else exists() raises "File name too long"
        raise OutputError(f"--out {out}: the name {long[:20]}... is {len(long.encode('utf-8', 'surrogateescape'))} "
                          f"bytes long; a folder or file name may have at most {NAME_MAX} bytes; choose a shorter --out")
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder; choose a folder for the run's results")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".robustlr-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write the run folder {out}: {exc.strerror or exc}; choose another --out") from None


def check_out_dir(out: Path, cfg: ExperimentConfig) -> None:
    """A writable folder that holds nothing, or a run that ``cfg`` may resume."""
    prepare_out_dir(out)
    if (out / "config.json").exists():
        diff = blocking_differences(read_run_config(out / "config.json"), cfg)
        if diff:
            raise ResumeError(
                f"{out} holds a run of a different config (differs in {diff}); choose another --out folder, or "
                f"delete it to start over. Keys that cannot change the numbers may differ: "
                f"{', '.join(NEUTRAL_KEYS)}, and rounds (to extend a run)")
    elif (out / checkpoint.NAME).exists():
        raise ResumeError(f"{out} holds a checkpoint but no config.json; delete the folder or choose another --out")
