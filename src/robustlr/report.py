"""Tables and plots of results. Reads result dicts; knows nothing about training."""

from __future__ import annotations

from pathlib import Path

# The paper's final-round numbers (percent) that the demos are compared with.
# Keys: setting -> run -> metric. None = not reported in the paper.
PAPER = {
    "iid": {
        "source": "Table 1, iid (Fashion-MNIST, R=200)",
        "fedavg_clean": {"val_acc": 93.5, "base_acc": 98.5, "backdoor_acc": 1.0},
        "fedavg_attack": {"val_acc": 93.4, "base_acc": 98.5, "backdoor_acc": 100.0},
        "rlr_attack": {"val_acc": 92.9, "base_acc": 98.3, "backdoor_acc": 0.0},
    },
    "noniid": {
        # Table 1's non-iid rows are garbled in our copy of the paper; Table 11 (plus trojan,
        # M 0, sigma 0) repeats them in full, including FedAvg's base-class accuracy under attack
        "source": "Table 1 / Table 11, non-iid (FEMNIST digits, 3,383 writers, R=500)",
        "fedavg_clean": {"val_acc": 98.5, "base_acc": 99.0, "backdoor_acc": 0.0},
        "fedavg_attack": {"val_acc": 98.5, "base_acc": 98.9, "backdoor_acc": 99.5},
        "rlr_attack": {"val_acc": 95.2, "base_acc": 97.7, "backdoor_acc": 0.0},
    },
    "cifar": {
        # Table 2 has two blocks (its caption: regular backdoor on top, DBA below). Our copy of the
        # paper shows the top block in full and the DBA block garbled; these are the top block's
        # rows, which the project's experiments.md quotes as the DBA result. The garbled DBA block
        # reads "FedAvg-No Attack 6.3 / 76.6 / 87.7" for backdoor / validation / base.
        "source": "Table 2 (CIFAR-10, K=40, R=100)",
        "fedavg_clean": {"val_acc": 79.0, "base_acc": 89.4, "backdoor_acc": 6.6},
        "fedavg_attack": {"val_acc": 79.4, "base_acc": 87.5, "backdoor_acc": 88.6},
        "rlr_attack": {"val_acc": 77.5, "base_acc": 87.8, "backdoor_acc": 9.0},
    },
}

RUN_LABELS = {
    "fedavg_clean": "FedAvg, no attack",
    "fedavg_attack": "FedAvg, attack",
    "rlr_attack": "FedAvg + RLR, attack",
}


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _paper(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def comparison_table(setting: str, runs: dict[str, dict], title: str | None = None):
    """A rich Table: each run's final validation / base-class / backdoor accuracy (percent) beside the paper's."""
    from rich.table import Table

    paper = PAPER.get(setting, {})
    table = Table(title=title or f"robustlr demo ({setting}) vs the paper's {paper.get('source', '')}",
                  caption="ours (paper's, at the paper's full budget); '-' = not reported")
    table.add_column("run", no_wrap=True)
    for m in ("validation %", "base class %", "backdoor %"):
        table.add_column(m, justify="right", no_wrap=True)
    table.add_column("seconds", justify="right")
    for key, res in runs.items():
        p = paper.get(key, {})
        cells = [f"{_pct(res.get(k))} ({_paper(p.get(k))})" for k in ("val_acc", "base_acc", "backdoor_acc")]
        table.add_row(RUN_LABELS.get(key, key), *cells, f"{res.get('seconds', 0):.0f}")
    return table


def summary_table(summary: dict, title: str = "final metrics"):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("val_acc", "base_acc", "backdoor_acc"):
        table.add_row(key, _pct(summary.get(key)) + " %")
    table.add_row("val_loss", f"{summary.get('val_loss', float('nan')):.4f}")
    table.add_row("rounds", str(summary.get("rounds")))
    table.add_row("seconds per round", f"{summary.get('seconds_per_round', 0):.2f}")
    table.add_row("wall seconds", f"{summary.get('seconds', 0):.1f}")
    return table


def plot_runs(runs: dict[str, list[dict]], path: str | Path, title: str = "") -> Path:
    """Backdoor and validation accuracy per round, one line per run, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for key, metrics in runs.items():
        rounds = [m["round"] for m in metrics]
        label = RUN_LABELS.get(key, key)
        axes[0].plot(rounds, [100 * m["backdoor_acc"] for m in metrics], marker="o", ms=3, label=label)
        axes[1].plot(rounds, [100 * m["val_acc"] for m in metrics], marker="o", ms=3, label=label)
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
