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

import contextlib
import errno
import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from robustlr.errors import ResumeError

FORMAT = "robustlr-checkpoint"
VERSION = 2
NAME = "checkpoint.pt"


def _fsync_folder(folder: Path) -> None:
    try:  # the rename itself reaches the disk with the folder's entry
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - folders cannot be opened on some OSes
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_path(path: Path) -> Path:
    """The temporary file beside ``path`` that an atomic write renames over it."""
    return path.with_name(path.name + ".tmp")


def atomic_write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to a temporary file, fsync, rename over ``path``: a kill at any instant leaves
    the old file or the new. A failed write (disk full, file too large, read-only folder) raises the
    ``OSError``, removes the temporary file and leaves ``path`` as it was."""
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_folder(path.parent)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` ``obj`` atomically (see :func:`atomic_write_bytes`).

    The object is serialised in memory first: ``torch.save`` writing to a file reports a failed
    write (disk full) as a ``RuntimeError`` from its zip writer, with no errno and its temporary
    file left behind; written by Python, a failed write is the ``OSError`` it is."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getbuffer())


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_text_if_changed(path: Path, text: str) -> bool:
    """:func:`atomic_write_text` unless ``path`` already holds exactly ``text`` (then the file, its
    mtime included, is left alone); whether it wrote."""
    try:
        if path.read_bytes() == text.encode("utf-8"):
            return False
    except OSError:  # missing or unreadable: write it
        pass
    atomic_write_text(path, text)
    return True


def write_fix(exc: OSError) -> str:
    """What to do about a failed write, by its errno."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "Free space on its disk (or raise the quota)"
    if exc.errno == errno.EFBIG:
        return "Raise the file size limit (ulimit -f) or write to another filesystem"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "Make the folder writable (permissions, a read-only mount)"
    return "Free space or fix the folder's permissions"


def append_line(path: Path, line: str) -> None:
    """Append one line and fsync. A failed append (disk full) cuts the file back to its length before
    it and raises the ``OSError``; a kill mid-append leaves a partial last line, which a resume
    rewrites from the checkpoint (see :meth:`robustlr.sim.loop.Simulation`)."""
    with open(path, "ab") as fh:
        start = fh.tell()
        try:
            fh.write((line + "\n").encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fh.fileno(), start)
            raise


def save_checkpoint(path: Path, *, round_: int, global_params: torch.Tensor, rule_state: dict,
                    records: list[dict], elapsed: float, identity: dict | None = None,
                    attack_state: dict | None = None) -> None:
    """``identity``: what the run is made of beyond its config (the data's fingerprint, the model's
    factory); a resume compares it (:func:`check_identity`). ``attack_state``: what an attack carries
    from round to round (Neurotoxin's last global update), so that a resumed run attacks as an
    uninterrupted one."""
    atomic_save({"format": FORMAT, "version": VERSION, "round": round_, "global_params": global_params.cpu(),
                 "rule_state": rule_state, "records": records, "elapsed": elapsed, "identity": identity or {},
                 "attack_state": attack_state or {}}, path)


def check_identity(path: Path, state: dict, identity: dict) -> None:
    """A :class:`ResumeError` if the checkpoint was written by a run on other data or another model
    factory than this one (a checkpoint from before robustlr 0.3 has no identity and passes)."""
    stored = state.get("identity") or {}
    for key, what in (("dataset_fingerprint", "data"), ("model_factory", "model factory")):
        if key in stored and key in identity and stored[key] != identity[key]:
            raise ResumeError(
                f"{path} was written by a run on other {what} ({key} {stored[key]}, this run: {identity[key]}): the "
                f"config is the same but what it names is not (a re-registered dataset or model, or dataset= given "
                f"to run). Resuming would mix two experiments: choose another --out, or delete the folder to rerun")


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
