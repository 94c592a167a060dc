"""TensorBoard event files from a results folder (the optional extra ``robustlr[tensorboard]``).

``robustlr report RESULTS --tensorboard DIR`` writes one event folder per run,
``DIR/<suite>/<run name>/``, with the run's round records as scalars (accuracies in percent,
losses, update norms, RLR's flipped fraction) and its config as text; then
``tensorboard --logdir DIR``. The events are written from the records after the fact, so
training never depends on TensorBoard and a result folder can be exported at any time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from robustlr._optional import require
from robustlr.experiments import store
from robustlr.sim.records import RecordError, read_metrics

#: record field -> (TensorBoard tag, scale)
SCALARS = {"val_acc": ("accuracy/validation %", 100.0), "base_acc": ("accuracy/base class %", 100.0),
           "backdoor_acc": ("accuracy/backdoor %", 100.0), "val_loss": ("loss/validation", 1.0),
           "backdoor_loss": ("loss/backdoor", 1.0), "flipped_fraction": ("rlr/flipped %", 100.0),
           "honest_norm": ("norm/honest update", 1.0), "corrupt_norm": ("norm/corrupt update", 1.0),
           "seconds": ("time/seconds per round", 1.0)}


def export_tensorboard(results: Path, out: Path, warn: Callable[[str], None] | None = None) -> int:
    """Write the event files of every run in ``results``'s store below ``out``; returns the number of runs.
    A run whose ``metrics.jsonl`` is missing is left out; one that is damaged too, with a line to ``warn``
    (default: the ``robustlr`` logger) naming it."""
    warn = warn or logging.getLogger("robustlr").warning
    SummaryWriter = require("tensorboard", "torch.utils.tensorboard", extra="tensorboard",
                            feature="TensorBoard output (robustlr report --tensorboard)").SummaryWriter
    n = 0
    for row in store.query(results):
        metrics = results / row["path"] / "metrics.jsonl"
        if not metrics.exists():
            continue
        try:
            records = read_metrics(metrics)
        except (OSError, RecordError) as exc:
            warn(f"TensorBoard leaves out the run folder {row['path']}: metrics.jsonl cannot be read ({exc})")
            continue
        with SummaryWriter(log_dir=str(out / (row["suite"] or "runs") / row["name"])) as writer:
            writer.add_text("config", "```\n" + row["config"] + "\n```", 0)
            for rec in records:
                for field, (tag, scale) in SCALARS.items():
                    value = getattr(rec, field, None)
                    if value is not None:
                        writer.add_scalar(tag, scale * value, rec.round)
        n += 1
    return n
