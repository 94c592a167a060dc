"""Typed run records: one :class:`RoundRecord` per round, one :class:`RunSummary` per run.

A run folder holds ``config.json`` (the validated config), ``metrics.jsonl`` (one round record
per line, every round once, in order), ``summary.json`` (the run record) and ``model.pt``.
Evaluation fields (``val_acc``, ``val_loss``, ``base_acc``, ``backdoor_acc``) are present only
on evaluated rounds (``evaluated`` true). JSON never holds a bare ``NaN`` or ``Infinity``: a
non-finite number is written as ``null``.

``summary.json`` carries ``schema_version``; readers (:func:`read_summary`,
:func:`read_metrics`) accept the versions they know and refuse the rest with a clear error.
Every summary also names the machine (CPU model, the ISA flags that change kernels), the
torch version and robustlr's version and commit, since kernels round differently between
machines. Later capabilities add fields here, not beside these records.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from robustlr.errors import RobustlrError

SCHEMA_VERSION = 2
KNOWN_SCHEMA_VERSIONS = (2,)
EVAL_FIELDS = ("val_acc", "val_loss", "base_acc", "backdoor_acc", "backdoor_loss")
# CPU flags that select different oneDNN/BLAS kernels (and so different rounding)
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8")


class RecordError(RobustlrError):
    """A run record that this robustlr cannot read (unknown schema version, malformed)."""


class RoundRecord(BaseModel):
    """What happened in one round."""

    model_config = ConfigDict(extra="forbid")

    round: int
    agents: int  # agents whose updates were aggregated
    corrupt_in_round: int
    rejected: list[int] = []  # agents whose update was rejected by the screening (logged, not aggregated)
    rejections: list[dict[str, Any]] = []  # per rejected update: agent, reason (shape/dtype/non-finite/norm), detail
    screen_median_norm: float | None = None  # the norm screen's reference: the round's median update norm
    excluded: list[int] | None = None  # agents the rule left out (Krum family: not selected; FLAME: not admitted)
    corrupt_excluded: int | None = None  # how many of them are corrupt
    honest_norm: float | None = None  # mean L2 norm of the honest agents' updates
    corrupt_norm: float | None = None
    corrupt_without_base_in_round: int = 0  # corrupt agents with no base-class sample (train honestly)
    corrupt_unpoisoned_in_round: int = 0  # ... or with floor(P x their base samples) = 0
    flipped_fraction: float | None = None  # RLR: share of the coordinates whose sign was flipped
    threshold: int | None = None  # RLR: theta used in the round
    rlr_mean_scale: float | None = None  # soft RLR (rlr_soft): the mean scale of the flippable coordinates
    rlr_layer_thresholds: dict[str, int] | None = None  # rlr_max_flip: theta per array after the cap
    crfl_rho: float | None = None  # CRFL: the round's bound on the global model's parameter norm
    crfl_clip_scale: float | None = None  # CRFL: the factor the clip applied (1.0 when the norm was within rho)
    rlr_on: bool | None = None  # RLR switched on in this round (None: the run has no RLR)
    # vote telemetry (robustlr.aggregation.telemetry): agreement of each group's update signs with
    # the applied step, how often each group's collective sign vote lost, RLR's flips per layer
    honest_agreement: float | None = None
    corrupt_agreement: float | None = None
    honest_outvoted: float | None = None
    corrupt_outvoted: float | None = None
    flipped_per_layer: dict[str, float] | None = None
    per_layer: dict[str, dict[str, float | None]] | None = None  # telemetry_per_layer: see layer_telemetry
    seconds_telemetry: float = 0.0
    seconds_training: float = 0.0
    seconds_aggregation: float = 0.0
    seconds: float = 0.0
    evaluated: bool = False
    val_acc: float | None = None
    val_loss: float | None = None
    base_acc: float | None = None
    backdoor_acc: float | None = None
    backdoor_loss: float | None = None

    def to_json_dict(self) -> dict[str, Any]:
        d = self.model_dump()
        if not self.evaluated:
            for k in EVAL_FIELDS:
                d.pop(k)
        return finite_or_none(d)


class RunSummary(BaseModel):
    """The run record: final metrics, cost, and what produced them."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    name: str
    rounds: int
    val_acc: float | None = None
    val_loss: float | None = None
    base_acc: float | None = None
    backdoor_acc: float | None = None
    rlr_switch_round: int | None = None  # the first round RLR was on (None: never, or no RLR)
    # the backdoor over time (robustlr.sim.records.backdoor_durability): the mean backdoor accuracy over
    # the evaluated rounds (the area under the backdoor curve per evaluated round); with an attack
    # window (attack_until_round b): its peak in rounds <= b, the rounds after b until it first falls
    # below half that peak, and whether it never did before the run ended (then durability = rounds - b
    # is a lower bound)
    backdoor_auc: float | None = None
    backdoor_peak: float | None = None
    backdoor_durability: int | None = None
    backdoor_durability_censored: bool | None = None
    # Theorem 1 of the paper assumes every coordinate fails the vote (|sum of signs| < theta) with a
    # probability p0 < 1/4 in every round. RLR's flipped share of a round estimates the mean of those
    # probabilities over the coordinates: a share above 1/4 means some coordinate's is above it. The
    # mean and largest share over the rounds RLR was on, and whether every round's share was below 1/4
    # (None without RLR)
    rlr_p0_mean: float | None = None
    rlr_p0_max: float | None = None
    theorem1_premise: bool | None = None
    # the final validation accuracy at or below 1.5 x chance (1 / classes): the model collapsed. Under
    # attack that is a result (the attack won), not a failure; None when nothing was evaluated
    collapsed: bool | None = None
    seconds: float
    seconds_per_round: float
    engine: str
    federation: dict[str, Any]
    init_model: dict[str, Any] | None = None  # the warm start: spec, sha256 (and pretraining config hash)
    # the network that ran: name, origin (built in, registered, entry point, import string), factory
    # (module:qualname), declared input shape; None in summaries written before robustlr 0.3
    model: dict[str, Any] | None = None
    # the data that ran: the config's name, origin, loader, source and a fingerprint of its arrays
    # (robustlr.data.registry.dataset_record); None in summaries written before robustlr 0.3
    dataset: dict[str, Any] | None = None
    machine: dict[str, Any]
    torch_version: str
    robustlr_version: str
    robustlr_commit: str | None = None


def backdoor_durability(records: Sequence[RoundRecord], until: int | None, rounds: int) -> dict[str, Any]:
    """The :class:`RunSummary` fields of the backdoor over time (see there) from the round records.

    Example: evaluated rounds 1-5 with backdoor 0.2, 0.8, 0.6, 0.3, 0.5 and the window ending at
    round 2: the peak is 0.8, round 4 (0.3 < 0.4) is the first below half of it, 2 rounds after.

        >>> recs = [RoundRecord(round=r, agents=1, corrupt_in_round=0, evaluated=True, backdoor_acc=b)
        ...         for r, b in enumerate([0.2, 0.8, 0.6, 0.3, 0.5], start=1)]
        >>> out = backdoor_durability(recs, until=2, rounds=5)
        >>> out["backdoor_peak"], out["backdoor_durability"], out["backdoor_durability_censored"]
        (0.8, 2, False)
        >>> round(out["backdoor_auc"], 4)
        0.48
    """
    seen = [(r.round, r.backdoor_acc) for r in records if r.evaluated and r.backdoor_acc is not None]
    out: dict[str, Any] = {"backdoor_auc": sum(b for _, b in seen) / len(seen) if seen else None}
    if until is None:
        return out
    window = [b for r, b in seen if r <= until]
    if not window:
        return out
    peak = max(window)
    out["backdoor_peak"] = peak
    below = next((r for r, b in seen if r > until and b < peak / 2), None)
    out["backdoor_durability"] = (below - until) if below is not None else rounds - until
    out["backdoor_durability_censored"] = below is None
    return out


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def dumps(obj: Any, **kw: Any) -> str:
    """JSON with non-finite floats as null (never a bare NaN token)."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kw)


@lru_cache(maxsize=1)
def machine_info() -> dict[str, Any]:
    """The CPU model, the ISA flags that change kernels, cores, OS and Python."""
    info: dict[str, str] = {}
    try:  # the first CPU's lines (Linux); elsewhere platform's names
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "kernel_flags": [f for f in KERNEL_FLAGS if f in flags],
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


@lru_cache(maxsize=1)
def robustlr_commit() -> str | None:
    """The git commit of the source tree robustlr runs from, if it is a git checkout."""
    package = Path(__file__).resolve().parents[1]
    try:
        top = subprocess.run(["git", "-C", str(package), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = top.stdout.split()
    # only a source checkout of robustlr itself (not a wheel installed in a venv inside some repo)
    if top.returncode != 0 or len(lines) != 2 or (Path(lines[0]) / "src" / "robustlr").resolve() != package:
        return None
    return lines[1]


def provenance() -> dict[str, Any]:
    import torch

    from robustlr._version import __version__

    return {"machine": machine_info(), "torch_version": torch.__version__, "robustlr_version": __version__,
            "robustlr_commit": robustlr_commit()}


#: a final validation accuracy at or below this multiple of chance (1 / classes) is a collapse
COLLAPSE_MULTIPLE = 1.5


def is_collapsed(val_acc: float | None, num_classes: int) -> bool | None:
    """Whether a final validation accuracy is a collapse (at or below ``COLLAPSE_MULTIPLE`` x chance);
    None when nothing was evaluated."""
    return None if val_acc is None else bool(val_acc <= COLLAPSE_MULTIPLE / num_classes)


def read_summary(path: str | os.PathLike) -> RunSummary:
    """Read a ``summary.json``; refuse schema versions this robustlr does not know."""
    path = Path(path)
    data = json.loads(path.read_text())
    if not isinstance(data, dict):  # `[]`, a number, null: no run record (was an AttributeError)
        raise RecordError(f"{path}: a JSON {type(data).__name__}, not a run record")
    version = data.get("schema_version", 1)
    if version not in KNOWN_SCHEMA_VERSIONS:
        raise RecordError(
            f"{path}: run record schema version {version}; this robustlr reads versions "
            f"{', '.join(map(str, KNOWN_SCHEMA_VERSIONS))}. Rerun the experiment with this version "
            f"(or read it with the robustlr that wrote it)"
        )
    return RunSummary.model_validate(data)


def read_metrics(path: str | os.PathLike) -> list[RoundRecord]:
    """Read a ``metrics.jsonl`` written by this schema."""
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(RoundRecord.model_validate_json(line))
            except ValueError as exc:
                raise RecordError(f"{path}:{i}: not a round record of schema version {SCHEMA_VERSION}: {exc}") from None
    return out
