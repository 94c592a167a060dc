"""Tables of results (rich tables). Reads records and result dicts; knows nothing about training."""

from __future__ import annotations

from robustlr.reports.reference import PAPER
from robustlr.sim.records import RunSummary

RUN_LABELS = {
    "fedavg_clean": "FedAvg, no attack",
    "fedavg_attack": "FedAvg, attack",
    "rlr_attack": "FedAvg + RLR, attack",
    "fedavg_dba": "FedAvg, DBA",
    "rlr_dba": "FedAvg + RLR, DBA",
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


def summary_table(summary: RunSummary, title: str = "final metrics"):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("val_acc", "base_acc", "backdoor_acc"):
        table.add_row(key, _pct(getattr(summary, key)) + " %")
    table.add_row("val_loss", "-" if summary.val_loss is None else f"{summary.val_loss:.4f}")
    table.add_row("rounds", str(summary.rounds))
    table.add_row("seconds per round", f"{summary.seconds_per_round:.2f}")
    table.add_row("wall seconds", f"{summary.seconds:.1f}")
    return table
