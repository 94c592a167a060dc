"""``robustlr report RESULTS``: every suite of a results folder as a table beside the paper's
numbers, with training curves, in Markdown and in one self-contained HTML page.

For each suite: a table with one line per row of the suite (its label), our final validation,
base-class and backdoor accuracy (mean +- sd over seeds, with the number of seeds), the paper's
value (``reports/paper.toml``, the setting the suite names in ``paper``) and the difference;
then one figure: validation, base-class and backdoor accuracy per evaluated round and RLR's
flipped fraction per round, one colour per row (mean over seeds). Reads the results store and
the run folders; knows nothing about training.
"""

from __future__ import annotations

import base64
import html
import json
import statistics
from pathlib import Path

from robustlr.experiments import store
from robustlr.experiments.suite import list_suites, load_suite
from robustlr.reports.reference import PAPER
from robustlr.sim.records import read_metrics

METRICS = (("val_acc", "validation %"), ("base_acc", "base class %"), ("backdoor_acc", "backdoor %"))


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    m = 100 * statistics.fmean(values)
    return f"{m:.1f}" if len(values) == 1 else f"{m:.1f} +- {100 * statistics.stdev(values):.1f}"


def _suite_meta(name: str):
    return load_suite(name) if name in list_suites() else None


def _curves(rows: list[dict], suite: str, out: Path, results: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({r["label"] for r in rows})
    colours = {lab: plt.get_cmap("tab10")(i % 10) for i, lab in enumerate(labels)}
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.0), constrained_layout=True)
    for lab in labels:
        per_round: dict[int, dict[str, list[float]]] = {}
        for r in (r for r in rows if r["label"] == lab and r["status"] == "done"):
            for rec in read_metrics(results / r["path"] / "metrics.jsonl"):
                d = per_round.setdefault(rec.round, {})
                if rec.evaluated:
                    for key, _ in METRICS:
                        d.setdefault(key, []).append(getattr(rec, key))
                if rec.flipped_fraction is not None:
                    d.setdefault("flipped_fraction", []).append(rec.flipped_fraction)
        for ax, key in zip(axes, [m[0] for m in METRICS] + ["flipped_fraction"]):
            pts = sorted((k, statistics.fmean(v[key])) for k, v in per_round.items() if key in v)
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", ms=3, color=colours[lab],
                        label=lab)
    for ax, title in zip(axes, [m[1] for m in METRICS] + ["RLR: coordinates flipped %"]):
        ax.set_title(title)
        ax.set_xlabel("round")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    axes[2].set_ylim(-2, 102)
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(f"suite {suite}: mean over seeds")
    path = out / f"{suite}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def suite_table(rows: list[dict], paper_setting: str) -> tuple[list[str], list[list[str]]]:
    paper = PAPER.get(paper_setting, {})
    header = ["row", "seeds"] + [h for _, h in METRICS] + [f"paper {h}" for _, h in METRICS] + \
        [f"diff {h}" for _, h in METRICS]
    lines = []
    for lab in sorted({r["label"] for r in rows}, key=lambda x: list(paper).index(x) if x in paper else 99):
        done = [r for r in rows if r["label"] == lab and r["status"] == "done"]
        ours = [_mean_sd([r[k] for r in done if r[k] is not None]) for k, _ in METRICS]
        ref = paper.get(lab, {})
        theirs = ["-" if ref.get(k) is None else f"{ref[k]:.1f}" for k, _ in METRICS]
        diffs = []
        for k, _ in METRICS:
            vals = [r[k] for r in done if r[k] is not None]
            diffs.append("-" if not vals or ref.get(k) is None else f"{100 * statistics.fmean(vals) - ref[k]:+.1f}")
        lines.append([lab, str(len(done)), *ours, *theirs, *diffs])
    return header, lines


def build_report(results: Path, out: Path) -> tuple[Path, Path]:
    """Write ``out/report.md`` and ``out/report.html`` (and one PNG per suite); returns both paths."""
    rows = store.query(results)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# robustlr report: {results}", ""]
    body = [f"<h1>robustlr report: {html.escape(str(results))}</h1>"]
    for suite in sorted({r["suite"] for r in rows}):
        srows = [r for r in rows if r["suite"] == suite]
        meta = _suite_meta(suite)
        setting = meta.paper if meta else ""
        source = PAPER.get(setting, {}).get("source", "")
        budgets = sorted({json.loads(r["config"]).get("rounds") for r in srows})
        title = f"{suite}" + (f": {meta.description}" if meta and meta.description else "")
        header, lines = suite_table(srows, setting)
        png = _curves(srows, suite, out, results)
        md += [f"## {title}", "", f"Rounds: {', '.join(map(str, budgets))}. Paper: {source or 'no reference'}"
               " (at the paper's budget). Ours: mean +- sd over seeds, percent.", "",
               "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(line) + " |" for line in lines]
        md += ["", f"![{suite}]({png.name})", ""]
        data = base64.b64encode(png.read_bytes()).decode()
        body += [f"<h2>{html.escape(title)}</h2>",
                 f"<p>Rounds: {', '.join(map(str, budgets))}. Paper: {html.escape(source or 'no reference')}.</p>",
                 "<table border=1 cellpadding=4><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
        body += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>" for line in lines]
        body += ["</table>", f'<img alt="{html.escape(suite)}" src="data:image/png;base64,{data}">']
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text("\n".join(md) + "\n")
    html_path.write_text("<!doctype html><html><head><meta charset='utf-8'><title>robustlr report</title></head>"
                         "<body>" + "\n".join(body) + "</body></html>\n")
    return md_path, html_path
