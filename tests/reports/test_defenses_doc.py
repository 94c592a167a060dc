"""docs/defenses.md's tables are the committed results' numbers (read only).

The tables are built here from docs/defenses/results (the defenses suites' sweeps, compact: no
checkpoints or models) and docs/defenses/bench-aggregation.json (``robustlr bench aggregation
--json``), and the test checks that each line appears in the page verbatim.
``python tests/reports/test_defenses_doc.py [RESULTS] [--write]`` prints them and with ``--write`` puts them into the
page after their ``<!-- TABLE:name -->`` markers (how the page's tables were written).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "defenses" / "results"
BENCH = ROOT / "docs" / "defenses" / "bench-aggregation.json"
#: table -> (its suites, defenses, attacks): a row's runs are its label's over the suites (seeds apart)
SUITES = {"defenses-noniid": (["defenses-noniid", "defenses-noniid-2"],
                              ["fedavg", "rlr", "fltrust", "signguard", "freqfed", "deepsight", "crfl"],
                              ["trojan", "boost", "stealth", "adaptive-sign-f03"]),
          "defenses-iid": (["defenses-iid", "defenses-iid-seeds", "defenses-iid-2", "defenses-iid-crfl", "defenses-iid-boost"],
                           ["fedavg", "rlr", "fltrust", "signguard", "freqfed", "deepsight", "crfl", "fldetector"],
                           ["trojan", "boost", "stealth", "adaptive-sign-f03"])}
#: an attack "took" in a seed when the undefended twin's backdoor accuracy reached this
TOOK = 0.5


def _mean_sd(vals: list[float], scale: float = 100.0, digits: int = 1) -> str:
    vals = [scale * v for v in vals]
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.fmean(vals):.{digits}f} +- {statistics.stdev(vals):.{digits}f}"


def _runs(results: Path, suites: list[str]) -> dict[str, list[dict]]:
    from robustlr.experiments import store

    out: dict[str, list[dict]] = {}
    for r in sorted(store.query(results), key=lambda r: (r["label"], r["seed"])):
        if r["suite"] in suites and r["status"] == "done":
            out.setdefault(r["label"], []).append(r)
    for label, rs in out.items():
        seeds = [r["seed"] for r in rs]
        assert len(seeds) == len(set(seeds)), f"{label}: seed twice in {suites}"
    return out


def _records(results: Path, run: dict) -> list[dict]:
    path = results / run["suite"] / run["name"] / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _left_out(results: Path, runs: list[dict]) -> tuple[str, str]:
    """The shares of corrupt and of honest updates the defense left out (rejected by the rule or the
    screen), over every round of every seed."""
    corrupt = corrupt_out = honest = honest_out = 0
    for run in runs:
        for rec in _records(results, run):
            c = rec["corrupt_in_round"]
            c_out = rec.get("corrupt_excluded") or 0
            excluded = len(rec.get("excluded") or [])
            corrupt, corrupt_out = corrupt + c, corrupt_out + c_out
            honest, honest_out = honest + rec["agents"] - c, honest_out + excluded - c_out
    pct = lambda a, b: f"{100 * a / b:.0f}" if b else "-"  # noqa: E731
    return pct(corrupt_out, corrupt), pct(honest_out, honest)


def tables(results: Path, bench: Path | None = BENCH) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for suite, (suites, defenses, attacks) in SUITES.items():
        runs = _runs(results, suites)
        if not runs:
            continue
        lines = ["| defense \\ attack | " + " | ".join(attacks) + " |", "|---" * (len(attacks) + 1) + "|"]
        took_row = []
        for a in attacks:
            twin = runs.get(f"fedavg.{a}", [])
            took = [r["seed"] for r in twin if r["backdoor_acc"] >= TOOK]
            took_row.append(f"{len(took)} of {len(twin)}" if twin else "-")
        for d in defenses:
            cells = []
            for a in attacks:
                rs = runs.get(f"{d}.{a}", [])
                n = f" ({len(rs)})" if len(rs) > 1 else ""
                cells.append("-" if not rs else f"{_mean_sd([r['backdoor_acc'] for r in rs])} / "
                                                f"{_mean_sd([r['val_acc'] for r in rs])}{n}")
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
        lines.append(f"| attack took in fedavg (backdoor >= {100 * TOOK:.0f} %), seeds | " + " | ".join(took_row) + " |")
        out[suite] = lines

        lines = ["| defense | attack | corrupt updates left out % | honest updates left out % | server s / round |",
                 "|---|---|---|---|---|"]
        for d in defenses:
            for a in attacks:
                rs = runs.get(f"{d}.{a}", [])
                if not rs:
                    continue
                corrupt, honest = _left_out(results, rs)
                secs = [rec["seconds_aggregation"] for run in rs for rec in _records(results, run)]
                lines.append(f"| {d} | {a} | {corrupt} | {honest} | {statistics.fmean(secs):.3f} |")
        out[f"{suite}-left-out"] = lines

    # CRFL's certification of its final models (robustlr certify: certify.json beside the run)
    lines = ["| suite | run | seed | smoothed val % | smoothed backdoor % | median radius | trigger norm | certified acc. % at r 0.01 / 0.1 / 1 |",
             "|---|---|---|---|---|---|---|---|"]
    for suite in ("defenses-iid-crfl", "defenses-iid-boost", "defenses-noniid-2"):
        for r in [r for rs in _runs(results, [suite]).values() for r in rs]:
            path = results / r["suite"] / r["name"] / "certify.json"
            if not path.exists():
                continue
            c = json.loads(path.read_text())
            acc = c["certified_accuracy"]
            lines.append(f"| {suite} | {r['label']} | {r['seed']} | {100 * c['smoothed_val_acc']:.1f} | "
                         f"{100 * c['smoothed_backdoor_acc']:.1f} | {c['radius_median']:.2g} | "
                         f"{c['trigger_norm_mean']:.2g} | {100 * acc['0.01']:.1f} / {100 * acc['0.1']:.1f} / "
                         f"{100 * acc['1.0']:.1f} |")
    if len(lines) > 2:
        out["crfl-certify"] = lines

    if bench is not None and bench.exists():
        rows = json.loads(bench.read_text())
        agents = sorted({r["n_agents"] for r in rows})
        rules = list(dict.fromkeys(r["rule"] for r in rows))
        by = {(r["rule"], r["n_agents"]): r for r in rows}
        lines = ["| rule | " + " | ".join(f"{n} agents: ms (x mean)" for n in agents) + " |",
                 "|---" * (len(agents) + 1) + "|"]
        for rule in rules:
            cells = [f"{1e3 * by[(rule, n)]['seconds']:.1f} ({by[(rule, n)]['ratio']:.1f})" if (rule, n) in by else "-"
                     for n in agents]
            lines.append(f"| {rule} | " + " | ".join(cells) + " |")
        out["bench"] = lines
    return out


def test_every_table_of_the_page_is_the_stored_results(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)  # the store may be migrated on open: never touch the committed one
    page = (ROOT / "docs" / "defenses.md").read_text()
    built = tables(results)
    assert {"defenses-noniid", "defenses-noniid-left-out", "bench"} <= set(built)
    for suite, (_, defenses, _) in SUITES.items():
        if suite in built:
            assert len(built[suite]) == 2 + len(defenses) + 1
    for name, lines in built.items():
        for line in lines:
            assert line in page, (name, line)


def write_page(page: Path, built: dict[str, list[str]]) -> None:
    """Replace the table after each ``<!-- TABLE:name -->`` marker of the page with the built one."""
    lines, out, i = page.read_text().splitlines(), [], 0
    while i < len(lines):
        out.append(lines[i])
        name = lines[i].removeprefix("<!-- TABLE:").removesuffix(" -->") if lines[i].startswith("<!-- TABLE:") else None
        i += 1
        if name in built:
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            out.extend(built[name])
    page.write_text("\n".join(out) + "\n")


if __name__ == "__main__":  # print the tables of a results folder; --write: put them into docs/defenses.md
    import tempfile

    args = [a for a in sys.argv[1:] if a != "--write"]
    src = Path(args[0]) if args else RESULTS
    copy = Path(tempfile.mkdtemp()) / "results"
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("*.pt"))  # opening a store may migrate it
    built = tables(copy)
    if "--write" in sys.argv:
        write_page(ROOT / "docs" / "defenses.md", built)
    for name, lines in built.items():
        print(f"<!-- {name} -->")
        print("\n".join(lines))
        print()
