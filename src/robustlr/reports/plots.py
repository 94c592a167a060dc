"""Figures of results (matplotlib, saved as PNG). Reads round records; knows nothing about training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from robustlr.reports.tables import RUN_LABELS
from robustlr.sim.records import RoundRecord


def plot_runs(runs: dict[str, Sequence[RoundRecord]], path: str | Path, title: str = "") -> Path:
    """Backdoor and validation accuracy per evaluated round, one line per run, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for key, records in runs.items():
        evaluated = [r for r in records if r.evaluated]
        rounds = [r.round for r in evaluated]
        label = RUN_LABELS.get(key, key)
        axes[0].plot(rounds, [100 * r.backdoor_acc for r in evaluated], marker="o", ms=3, label=label)
        axes[1].plot(rounds, [100 * r.val_acc for r in evaluated], marker="o", ms=3, label=label)
    axes[0].set_title("backdoor accuracy")
    axes[1].set_title("validation accuracy")
    for ax in axes:
        ax.set_xlabel("round")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-2, 102)
    axes[0].legend(loc="best", fontsize=9)
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
