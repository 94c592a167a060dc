"""``robustlr report RESULTS``: every suite of a results folder as a table beside the paper's
numbers, with figures, in Markdown and in one self-contained HTML page.

For each suite: how its budget maps the paper's settings (the suite's ``[notes]``), the command
that reruns it and the runs' wall time; a table with one line per table row of the suite (its
label and non-seed grid point), our final validation, base-class and backdoor accuracy (mean +-
sd over seeds, with the number of seeds), the round RLR was switched on where it was, the
paper's value (``reports/paper.toml``, the setting the suite names in ``paper``) and the
difference, and how many seeds collapsed to chance (the summary's flag: under attack a result,
not a failure); grid points that share a run (the suite's aliases) get a line each, marked. Then
the figures: training curves (validation, base-class, backdoor accuracy and RLR's flipped
fraction per round, one colour per method, a dashed line where RLR was switched on) for suites
of a few rows, final accuracies per grid point for larger grids, and the panels a suite asks for
in ``[[figure]]`` (the paper's Figures 2 and 3). A suite with ``pivot = true`` (labels
``<defense>.<attack>``, e.g. ``adversaries-iid``) gets a defense x attack table per metric and a
heatmap instead of the long table. Reads the results store and the run folders;
knows nothing about training.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import logging
import statistics
from collections.abc import Callable
from pathlib import Path

from robustlr.experiments import store
from robustlr.experiments.suite import Suite, list_suites, load_suite
from robustlr.reports.plots import (
    label_in_words,
    plot_curves,
    plot_grid_finals,
    plot_row_finals,
    plot_influence,
    plot_panels,
    plot_pivot,
)
from robustlr.reports.reference import PAPER
from robustlr.sim.records import RecordError, read_metrics

log = logging.getLogger("robustlr")

METRICS = (("val_acc", "validation %"), ("base_acc", "base class %"), ("backdoor_acc", "backdoor %"))
CURVE_KEYS = ("val_acc", "base_acc", "backdoor_acc", "flipped_fraction")
MAX_CURVE_ROWS = 8  # more table rows than this: a plot of final values per grid point instead of curves


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    m = 100 * statistics.fmean(values)
    return f"{m:.1f}" if len(values) == 1 else f"{m:.1f} +- {100 * statistics.stdev(values):.1f}"


def _collapses(done: list[dict]) -> int:
    """How many of the finished runs collapsed (final validation at or below 1.5 x chance: the
    summary's flag, kept in the store)."""
    return sum(1 for r in done if r.get("collapsed"))


COLLAPSE_NOTE = ("collapsed: the final validation accuracy is at or below 1.5 x chance; under attack that is "
                 "a result (the attack wrecked the model), not a failed run")


def _suite_meta(name: str) -> Suite | None:
    return load_suite(name) if name in list_suites() else None


def _budget_of(meta: Suite, rows: list[dict]) -> str | None:
    """The suite budget whose runs these are (matched on the stored configs' rounds and batch size)."""
    stored = {(json.loads(r["config"])["rounds"], json.loads(r["config"])["batch_size"]) for r in rows}
    for budget in meta.budgets:
        try:
            runs = meta.runs(budget)
        except Exception:  # noqa: BLE001 - a budget that no longer validates matches nothing
            continue
        if stored <= {(r.config.rounds, r.config.batch_size) for r in runs}:
            return budget
    return None


class _RunFiles:
    """The run folders' round records, read once each; a run whose ``metrics.jsonl`` is missing or
    damaged gives no records and is remembered (``skipped``: path -> why), so the report names it
    instead of stopping."""

    def __init__(self, results: Path) -> None:
        self.results = results
        self.skipped: dict[str, str] = {}
        self._cache: dict[str, list] = {}

    def records(self, row: dict) -> list:
        path = row["path"]
        if path not in self._cache:
            try:
                self._cache[path] = read_metrics(self.results / path / "metrics.jsonl")
            except FileNotFoundError:
                self._cache[path] = []
                self.skipped[path] = "metrics.jsonl is missing"
            except (OSError, RecordError) as exc:
                self._cache[path] = []
                self.skipped[path] = "metrics.jsonl cannot be read (" + " ".join(str(exc).split()) + ")"  # one line
        return self._cache[path]


def _per_round(rows: list[dict], files: _RunFiles) -> dict[str, list[tuple[int, float]]]:
    """Mean over the given runs of each metric per round."""
    acc: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        for rec in files.records(r):
            if rec.evaluated:
                for key, _ in METRICS:
                    acc.setdefault(key, {}).setdefault(rec.round, []).append(getattr(rec, key))
            for key in ("flipped_fraction", "corrupt_outvoted", "honest_outvoted"):
                if getattr(rec, key) is not None:
                    acc.setdefault(key, {}).setdefault(rec.round, []).append(getattr(rec, key))
    return {k: sorted((rnd, statistics.fmean(v)) for rnd, v in per.items()) for k, per in acc.items()}


def _switch_round(r: dict) -> int | None:
    """The round RLR was switched on, for a run with an RLR schedule (None for RLR on throughout)."""
    cfg = json.loads(r["config"])
    scheduled = cfg.get("rlr_from_val_acc") is not None or cfg.get("rlr_from_round", 1) > 1
    return r["rlr_switch_round"] if scheduled else None


def _aliases(meta: Suite | None, budget: str | None) -> dict[str, tuple[str, list[str]]]:
    """alias table row -> (the table row whose run it shares, that run's notes)."""
    if meta is None or budget is None:
        return {}
    out = {}
    for run in meta.runs(budget):
        for a in run.aliases:
            out[a] = (run.key, run.alias_notes.get(a, []))
    return out


#: report.html looks like the documentation site (MkDocs Material's default palette and type)
REPORT_CSS = (
    "body{margin:0;font-family:Roboto,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#222;"
    "line-height:1.6;font-size:15px}header{background:#3f51b5;color:#fff;padding:.8rem 1.5rem;font-size:1.2rem;"
    "font-weight:500}main{max-width:61rem;margin:0 auto;padding:1rem 1.5rem}h1{font-weight:300;font-size:2rem}"
    "h2{font-weight:400;font-size:1.5rem;margin-top:2.2rem}table{border-collapse:collapse;font-size:.8rem;"
    "display:block;overflow-x:auto;margin:1rem 0}th{background:#f5f5f5;font-weight:600}th,td{border-bottom:1px "
    "solid #e0e0e0;padding:.4rem .7rem;text-align:left;vertical-align:top}img{max-width:100%;height:auto}"
    "code{background:#f5f5f5;padding:.1rem .3rem;border-radius:.2rem;font-size:.85em}"
)
#: a defended cell is evidence only where its undefended twin's backdoor accuracy reached this
TOOK = 0.5


def _twin_key(cfg) -> str:
    """The hash a twin is looked up by: the config's, with the device left out. Whether an attack
    took is a property of the attack and the setting; a twin trained on another device (a GPU's
    kernels round differently from a CPU's) answers it as well as one from this machine."""
    from robustlr.sim.config import config_hash

    return config_hash(cfg.model_copy(update={"device": "cpu"}))


def twin_index(rows: list[dict]) -> dict[str, list[dict]]:
    """The store's finished runs by their config's hash without the device (where :func:`twin_note`
    looks for undefended twins)."""
    from robustlr.sim.config import make_config

    out: dict[str, list[dict]] = {}
    for r in rows:
        if r["status"] == "done":
            try:
                key = _twin_key(make_config(json.loads(r["config"])))
            except ValueError:  # a config this version no longer reads: its stored hash
                key = r["config_hash"]
            out.setdefault(key, []).append(r)
    return out


def twin_note(done: list[dict], twins: dict[str, list[dict]]) -> str:
    """Whether the attack took in each defended run's undefended twin (the same config with the
    defense keys at their defaults, :meth:`ExperimentConfig.undefended`, found anywhere in the
    store): "" for undefended or clean rows, else a note; a cell whose twin's backdoor accuracy
    stayed below :data:`TOOK`, or that has no twin, is no evidence for the defense."""
    from robustlr.sim.config import make_config

    took, low, missing = [], [], []
    for r in done:
        try:
            twin = make_config(json.loads(r["config"])).undefended()
        except ValueError:
            twin = None
            missing.append(r["seed"])
            continue
        if twin is None:
            return ""
        found = [t for t in twins.get(_twin_key(twin), []) if t["backdoor_acc"] is not None]
        if not found:
            missing.append(r["seed"])
        elif found[0]["backdoor_acc"] >= TOOK:
            took.append(r["seed"])
        else:
            low.append((r["seed"], found[0]["backdoor_acc"]))
    if not (low or missing):
        return f"attack took in the undefended twin ({len(took)} of {len(done)} seeds)"
    parts = []
    if low:
        parts.append(f"NO EVIDENCE in {len(low)} of {len(done)} seeds: the undefended twin's backdoor stayed below "
                     f"{100 * TOOK:.0f} % (" + ", ".join(f"seed {s}: {100 * b:.1f} %" for s, b in low) + ")")
    if missing:
        parts.append(f"no undefended twin run for seed {', '.join(map(str, missing))}: no evidence there")
    return "; ".join(parts)


def suite_table(rows: list[dict], paper_setting: str, order: list[str] | None = None,
                aliases: dict[str, tuple[str, list[str]]] | None = None,
                twins: dict[str, list[dict]] | None = None) -> tuple[list[str], list[list[str]]]:
    paper = PAPER.get(paper_setting, {})
    aliases = aliases or {}
    keys = list(order or [])
    for lab in sorted({r["label"] for r in rows}, key=lambda x: list(paper).index(x) if x in paper else 99):
        if lab not in keys:
            keys.append(lab)
    keys += [k for k, v in paper.items() if isinstance(v, dict) and k not in keys]  # the paper's rows we did not run
    switch = any(_switch_round(r) is not None for r in rows) or \
        any(isinstance(v, dict) and "rlr_switch_round" in v for v in paper.values())
    header = ["row", "seeds"] + [h for _, h in METRICS] + (["RLR on from round"] if switch else []) + \
        [f"paper {h}" for _, h in METRICS] + (["paper: RLR on from"] if switch else []) + \
        [f"diff {h}" for _, h in METRICS] + ["note"]
    lines = []
    for key in keys:
        source = aliases.get(key, (key, []))[0]
        done = [r for r in rows if r["label"] == source and r["status"] == "done"]
        if not done and key not in paper:
            continue
        ours = [_mean_sd([r[k] for r in done if r[k] is not None]) for k, _ in METRICS]
        ref = paper.get(key, {})
        theirs = ["-" if ref.get(k) is None else f"{ref[k]:.1f}" for k, _ in METRICS]
        diffs = []
        for k, _ in METRICS:
            vals = [r[k] for r in done if r[k] is not None]
            diffs.append("-" if not vals or ref.get(k) is None else f"{100 * statistics.fmean(vals) - ref[k]:+.1f}")
        notes = []
        if key in aliases:
            notes.append(f"the run of row '{source}': " + "; ".join(aliases[key][1]))
        if not done:
            notes.append("not run")
        if _collapses(done):
            notes.append(f"collapsed in {_collapses(done)} of {len(done)} seeds")
        if done and twins is not None and (twin := twin_note(done, twins)):
            notes.append(twin)
        if ref.get("note"):
            notes.append(f"paper: {ref['note']}")
        extra, extra_paper = [], []
        if switch:
            rounds = sorted({_switch_round(r) for r in done if _switch_round(r) is not None})
            extra = [", ".join(map(str, rounds)) or "-"]
            extra_paper = [str(ref.get("rlr_switch_round", "-"))]
        lines.append([key, str(len(done)), *ours, *extra, *theirs, *extra_paper, *diffs, "; ".join(notes)])
    return header, lines


def pivot_tables(rows: list[dict], order: list[str]) -> tuple[list[str], list[str], list[tuple[str, list[str], list[list[str]]]]]:
    """For a suite whose labels are ``<defense>.<attack>``: the defenses and attacks in the suite's
    order, and per metric a table with a line per defense and a column per attack (mean +- sd over
    seeds; "-" where not run; "(collapsed k/n)" where k of the n seeds collapsed to chance)."""
    labels = list(order) + sorted({r["label"] for r in rows} - set(order))
    defenses, attacks = [], []
    for lab in labels:
        d, _, a = lab.partition(".")
        defenses += [d] if d not in defenses else []
        attacks += [a] if a not in attacks else []
    tables = []
    for key, name in (("backdoor_acc", "backdoor %"), ("val_acc", "validation %")):
        lines = []
        for d in defenses:
            cells = []
            for a in attacks:
                runs = [r for r in rows if r["label"] == f"{d}.{a}" and r["status"] == "done"]
                cell = _mean_sd([r[key] for r in runs if r[key] is not None])
                n = _collapses(runs)
                cells.append(cell + (f" (collapsed {n}/{len(runs)})" if n else ""))
            lines.append([d, *cells])
        tables.append((name, ["defense \\ attack", *attacks], lines))
    return defenses, attacks, tables


def _pivot_figure(rows: list[dict], defenses: list[str], attacks: list[str], suite: str, out: Path) -> Path:
    values: dict[str, dict[str, float | None]] = {"backdoor_acc": {}, "val_acc": {}}
    for key in values:
        for d in defenses:
            for a in attacks:
                done = [r[key] for r in rows if r["label"] == f"{d}.{a}" and r["status"] == "done" and r[key] is not None]
                values[key][f"{d}.{a}"] = statistics.fmean(done) if done else None
    return plot_pivot(values, defenses, attacks, out / f"{suite}.png",
                      f"suite {suite}: final accuracy, defense x attack (mean over seeds)")


def _figures(srows: list[dict], suite: str, meta: Suite | None, order: list[str], out: Path,
             files: _RunFiles, curves: bool = True) -> list[Path]:
    results = files.results
    done = [r for r in srows if r["status"] == "done"]
    keys = [k for k in order if any(r["label"] == k for r in done)]
    keys += sorted({r["label"] for r in done} - set(keys))
    pngs = []
    if not curves:
        pass
    elif len(keys) <= MAX_CURVE_ROWS:
        series = {k: _per_round([r for r in done if r["label"] == k], files) for k in keys}
        switches = {}
        for k in keys:
            rounds = [_switch_round(r) for r in done if r["label"] == k and _switch_round(r) is not None]
            if rounds:
                switches[k] = round(statistics.fmean(rounds))
        metrics = CURVE_KEYS + (("corrupt_outvoted",) if any("corrupt_outvoted" in v for v in series.values()) else ())
        pngs.append(plot_curves(series, out / f"{suite}.png", f"suite {suite}: mean over seeds", metrics=metrics,
                                switch_rounds=switches or None))
    else:
        finals, spreads = {}, {}
        for k in keys:
            runs = [r for r in done if r["label"] == k]
            vals = {m: [r[m] for r in runs if r[m] is not None] for m, _ in METRICS}
            finals[k] = {m: statistics.fmean(v) if v else None for m, v in vals.items()}
            spreads[k] = {m: statistics.stdev(v) if len(v) > 1 else None for m, v in vals.items()}
        setting = PAPER.get(meta.paper, {}) if meta else {}
        paper = {k: {m: v[m] / 100 for m, _ in METRICS if m in v} for k, v in setting.items() if isinstance(v, dict)}
        if any(" " in k for k in keys):
            pngs.append(plot_grid_finals(finals, out / f"{suite}.png", f"suite {suite}: final accuracy per grid "
                                         "point (filled: ours; hollow: the paper's, at its budget)", paper=paper))
        else:  # many rows and no grid: one bar per row
            pngs.append(plot_row_finals(finals, spreads, out / f"{suite}.png", f"suite {suite}: final accuracy "
                                        "per row", paper=paper))
    attributed = [r for r in done if (results / r["path"] / "attribution.json").exists()]
    if attributed:
        panels = []
        for r in attributed:
            doc = json.loads((results / r["path"] / "attribution.json").read_text())
            rounds = [x["round"] for x in doc["rounds"]]
            curves = {}
            for key, get in (("net", lambda x: x["net"]), ("net_diff", lambda x: x["net_diff"]),
                             ("authors", lambda x: x["authors"]["net"]),
                             ("authors_corrected", lambda x: x["authors_corrected"]["net"])):
                if all(key in x or key.startswith("net") for x in doc["rounds"]):  # older files lack authors'
                    curves[key] = list(itertools.accumulate(get(x) for x in doc["rounds"]))
            recs = [x for x in files.records(r)
                    if x.evaluated and x.backdoor_loss is not None]
            panels.append((f"{label_in_words(r['label'])} (seed {r['seed']}, k {doc['k']})",
                           {"rounds": rounds, **curves,
                            "loss_rounds": [x.round for x in recs], "backdoor_loss": [x.backdoor_loss for x in recs]}))
        pngs.append(plot_influence(panels, out / f"{suite}-influence.png",
                                   f"suite {suite}: parameter attribution (the paper's Figure 4)"))
    for p in sorted((results / suite).glob("explain*/explain.png")):
        target = out / f"{suite}-{p.parent.name}.png"
        target.write_bytes(p.read_bytes())
        pngs.append(target)
    for i, fig in enumerate(meta.figures if meta else []):
        titles = list(fig.get("titles", [])) + [label_in_words(k) for k in list(fig["rows"])[len(fig.get("titles", [])):]]
        panels = [(t, _per_round([r for r in done if r["label"] == k], files)) for k, t in zip(fig["rows"], titles)]
        pngs.append(plot_panels(panels, out / f"{suite}-figure{i + 1}.png", fig.get("title", suite)))
    return pngs


def build_report(results: Path, out: Path, warn: Callable[[str], None] | None = None) -> tuple[Path, Path]:
    """Write ``out/report.md`` and ``out/report.html`` (and the suites' PNGs); returns both paths.

    A run whose ``metrics.jsonl`` is missing or damaged is left out of the curves (its final numbers
    come from the store): ``warn`` (default: the ``robustlr`` logger) gets one line per such run, and
    the report lists them."""
    warn = warn or log.warning
    files = _RunFiles(results)
    rows = store.query(results)
    twins = twin_index(rows)
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# robustlr report: {results.name}", ""]
    body = [f"<h1>robustlr report: {html.escape(results.name)}</h1>"]
    for suite in sorted({r["suite"] for r in rows}):
        srows = [r for r in rows if r["suite"] == suite]
        meta = _suite_meta(suite)
        budget = _budget_of(meta, srows) if meta else None
        setting = meta.paper if meta else ""
        source = PAPER.get(setting, {}).get("source", "")
        order = meta.row_keys(budget) if meta and budget else []
        budgets = sorted({json.loads(r["config"]).get("rounds") for r in srows})
        title = f"{suite}" + (f": {meta.description}" if meta and meta.description else "")
        if meta is not None and meta.pivot:
            defenses, attacks, tables = pivot_tables(srows, order)
            pngs = [_pivot_figure(srows, defenses, attacks, suite, out)] + _figures(
                srows, suite, meta, order, out, files, curves=False)
        else:
            tables = [("", *suite_table(srows, setting, order, _aliases(meta, budget), twins))]
            pngs = _figures(srows, suite, meta, order, out, files)
        done = [r for r in srows if r["status"] == "done"]
        seconds = sum(r["seconds"] or 0 for r in done)
        facts = [f"Budget: {budget or 'unknown'}, {', '.join(map(str, budgets))} rounds; {len(done)} runs done"
                 f" ({seconds / 60:.1f} min of run time, summed over runs).",
                 f"Paper: {source or 'no reference'} (at the paper's budget). Ours: mean +- sd over seeds, percent."]
        if _collapses(done):
            facts.append(f"{_collapses(done)} of {len(done)} runs {COLLAPSE_NOTE}.")
        warm = sorted({c for c in (json.loads(r["config"]).get("init_model") for r in done) if c})
        if warm:
            facts.append(f"Warm-started from {', '.join(warm)}: these runs attack a model trained beforehand, not the "
                         "paper's training from scratch.")
        if meta:
            facts.append(f"Rerun: `robustlr sweep {suite} --budget {budget or 'lite'} -r RESULTS -j 2`")
        mapping = meta.notes.get(budget or "", "") if meta else ""
        md += [f"## {title}", "", *[f + "  " for f in facts], ""]
        if mapping:
            md += [f"How the {budget} budget maps the paper's settings: " + " ".join(mapping.split()), ""]
        for name, header, lines in tables:
            if name:
                md += [f"Final {name}, one line per defense, one column per attack:", ""]
            md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            md += ["| " + " | ".join(line) + " |" for line in lines]
            md += [""]
        md += [f"![{p.stem}]({p.name})" for p in pngs] + [""]
        body += [f"<h2>{html.escape(title)}</h2>"] + [f"<p>{html.escape(f)}</p>" for f in facts]
        if mapping:
            body.append(f"<p>How the {html.escape(budget or '')} budget maps the paper's settings: "
                        f"{html.escape(' '.join(mapping.split()))}</p>")
        for name, header, lines in tables:
            if name:
                body.append(f"<p>Final {html.escape(name)}, one line per defense, one column per attack:</p>")
            body.append("<table border=1 cellpadding=4><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                        + "</tr>")
            body += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>" for line in lines]
            body.append("</table>")
        for p in pngs:
            data = base64.b64encode(p.read_bytes()).decode()
            body.append(f'<p><img alt="{html.escape(p.stem)}" src="data:image/png;base64,{data}"></p>')
    if files.skipped:
        lines = [f"{path}: {why}" for path, why in sorted(files.skipped.items())]
        for line in lines:
            warn(f"the curves leave out the run folder {line}; its final numbers are the store's "
                 f"(rerun it with `robustlr sweep`, or delete the folder and rebuild the store)")
        md += ["## Runs left out of the curves", "",
               "Their round records are missing or damaged; their final numbers above are the store's.", "",
               *[f"- {line}" for line in lines], ""]
        body += ["<h2>Runs left out of the curves</h2>",
                 "<p>Their round records are missing or damaged; their final numbers above are the store's.</p>",
                 "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"]
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text("\n".join(md) + "\n")
    html_path.write_text("<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
                         "content='width=device-width, initial-scale=1'><title>robustlr report</title>"
                         f"<style>{REPORT_CSS}</style></head><body><header>robustlr</header><main>"
                         + "\n".join(body) + "</main></body></html>\n")
    return md_path, html_path
