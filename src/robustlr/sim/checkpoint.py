"""Checkpoints: state dicts and tensors only, loaded with ``torch.load(weights_only=True)``.

A checkpoint holds the round it was taken after, the global parameters, the aggregation
rule's state (:meth:`robustlr.aggregation.AggregationRule.state_dict`: FoolsGold's history;
empty for stateless rules), the round records so far (plain dicts) and the elapsed seconds.
No random-generator state is needed: every random stream of a run is derived from
``(seed, purpose, round, agent)`` (:mod:`robustlr.sim.seeding`), so a resumed run draws what
the uninterrupted one would. The local optimiser's momentum restarts with every agent and
round, as in the paper, so there is none to keep.

Nothing is unpickled: a checkpoint of the old format (robustlr 0.1, which pickled rule
objects) is refused with a message, never loaded.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from robustlr.errors import ResumeError

FORMAT = "robustlr-checkpoint"
VERSION = 2
NAME = "checkpoint.pt"


def _fsync_replace(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:  # the rename itself reaches the disk with the folder's entry
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - folders cannot be opened on some OSes
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, fsync, rename: a kill at any instant leaves the old file or the new."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    _fsync_replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file, fsync, rename over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    _fsync_replace(tmp, path)


def append_line(path: Path, line: str) -> None:
    """Append one line and fsync; a kill mid-append leaves a partial last line, which a resume
    rewrites from the checkpoint (see :meth:`robustlr.sim.loop.Simulation`)."""
    with open(path, "a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def save_checkpoint(path: Path, *, round_: int, global_params: torch.Tensor, rule_state: dict,
                    records: list[dict], elapsed: float) -> None:
    atomic_save({"format": FORMAT, "version": VERSION, "round": round_, "global_params": global_params.cpu(),
                 "rule_state": rule_state, "records": records, "elapsed": elapsed}, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, OSError, ValueError) as exc:
        raise ResumeError(
            f"{path} is a checkpoint of an older robustlr (format 1, robustlr 0.1, which pickled rule objects) or is "
            f"damaged; this robustlr reads checkpoint format {VERSION} only and will not unpickle it. Rerun: delete "
            f"the run folder or choose another --out ({type(exc).__name__})"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ResumeError(f"{path} is not a robustlr checkpoint; delete it or choose another --out folder")
    if state.get("version") != VERSION:
        raise ResumeError(
            f"{path}: checkpoint format {state.get('version')}; this robustlr reads format {VERSION}. "
            f"Rerun: delete the run folder or choose another --out"
        )
    return state
