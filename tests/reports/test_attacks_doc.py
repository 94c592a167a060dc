"""docs/attacks.md's tables are the committed results' numbers (read only).

The tables are built here from the results folder, and the test checks that each appears in the
page verbatim. ``python tests/reports/test_attacks_doc.py RESULTS`` prints them (how the page's
tables were written).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "attacks" / "results"

BYZ_DEFENSES = ["fedavg", "rlr", "comed", "trimmed-mean", "multikrum", "flame"]
BYZ_ATTACKS = ["clean", "alie", "ipm", "min-max"]
WINDOW_ROWS = [f"{d}.{a}-window" for d in ("fedavg", "rlr") for a in ("trojan", "neurotoxin", "a3fl", "f3ba")]
TARGET_DEFENSES = ["fedavg", "rlr", "rlr-clip-noise", "comed", "trimmed-mean", "multikrum", "flame", "screen"]
TARGET_ATTACKS = ["trojan", "neurotoxin", "pgd-boost", "f3ba", "a3fl"]
IBA_ROWS = ["fedavg.iba", "rlr.iba", "fedavg.iba-strong-f03", "rlr.iba-strong-f03"]
NONIID_DEFENSES = ["fedavg", "rlr", "multikrum", "screen"]
NONIID_ATTACKS = ["trojan", "neurotoxin", "pgd-boost", "f3ba", "iba"]
#: the plain trojan's twins of the targeted rows (same setting) are adversaries-iid's, in docs/adversaries.md's store
TWINS = ROOT / "docs" / "adversaries" / "results"


def _pct(vals: list[float]) -> str:
    vals = [100 * v for v in vals]
    if len(vals) == 1:
        return f"{vals[0]:.1f}"
    return f"{statistics.fmean(vals):.1f} +- {statistics.stdev(vals):.1f}"


def _rows(results: Path) -> list[dict]:
    from robustlr.experiments import store

    return [r for r in store.query(results) if r["status"] == "done"]


def _by_label(rows: list[dict], suites: set[str]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["label"], r["seed"])):
        if r["suite"] in suites:
            out.setdefault(r["label"], []).append(r)
    return out


def _cell(rs: list[dict]) -> str:
    """backdoor % / validation % (mean +- sd and the seeds' count where more than one)."""
    if not rs:
        return "-"
    n = f" ({len(rs)})" if len(rs) > 1 else ""
    return f"{_pct([r['backdoor_acc'] for r in rs])} / {_pct([r['val_acc'] for r in rs])}{n}"


def tables(results: Path, twins: Path | None = None) -> dict[str, list[str]]:
    """The page's tables, as Markdown lines, by name; ``twins``: the adversaries store (the trojan column)."""
    rows = _rows(results)
    out: dict[str, list[str]] = {}

    g = _by_label(rows, {"attacks-byzantine-iid", "attacks-byzantine-iid-seeds"})
    lines = ["| defense \\ attack | " + " | ".join(BYZ_ATTACKS) + " |", "|---" * (len(BYZ_ATTACKS) + 1) + "|"]
    for d in BYZ_DEFENSES:
        cells = []
        for a in BYZ_ATTACKS:
            rs = g.get(f"{d}.{a}", [])
            cells.append("-" if not rs else _pct([r["val_acc"] for r in rs]) + (f" ({len(rs)})" if len(rs) > 1 else ""))
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    out["byzantine"] = lines

    g = _by_label(rows, {"attacks-local-iid"})
    lines = ["| row | seeds | backdoor peak % (rounds 1-12) | backdoor % at round 24 | durability (rounds after 12, "
             "per seed) | backdoor AUC % | validation % |", "|---|---|---|---|---|---|---|"]
    for label in WINDOW_ROWS:
        rs = g.get(label, [])
        if not rs:
            continue
        ss = [json.loads((results / r["path"] / "summary.json").read_text()) for r in rs]
        dur = ", ".join(f"{s['backdoor_durability']}{'+' if s['backdoor_durability_censored'] else ''}" for s in ss)
        lines.append(f"| {label} | {len(rs)} | {_pct([s['backdoor_peak'] for s in ss])} | "
                     f"{_pct([r['backdoor_acc'] for r in rs])} | {dur} | {_pct([s['backdoor_auc'] for s in ss])} | "
                     f"{_pct([r['val_acc'] for r in rs])} |")
    out["durability"] = lines

    g = _by_label(rows, {"attacks-targeted-iid", "attacks-targeted-iid-seeds", "attacks-targeted-iid-a3fl"})
    if twins is not None and (twins / "results.sqlite").exists():
        for label, rs in _by_label(_rows(twins), {"adversaries-iid"}).items():
            if label.endswith(".trojan"):
                g.setdefault(label, rs)
    lines = ["| defense \\ attack | " + " | ".join(TARGET_ATTACKS) + " |", "|---" * (len(TARGET_ATTACKS) + 1) + "|"]
    for d in TARGET_DEFENSES:
        lines.append(f"| {d} | " + " | ".join(_cell(g.get(f"{d}.{a}", [])) for a in TARGET_ATTACKS) + " |")
    out["targeted"] = lines
    lines = ["| row | backdoor % / validation % |", "|---|---|"]
    lines += [f"| {label} | {_cell(g[label])} |" for label in IBA_ROWS if label in g]
    out["iba"] = lines

    g = _by_label(rows, {"attacks-targeted-noniid", "attacks-targeted-noniid-seeds"})
    if twins is not None and (twins / "results.sqlite").exists():
        for label, rs in _by_label(_rows(twins), {"adversaries-noniid"}).items():
            if label.endswith(".trojan"):
                g.setdefault(label, rs)
    lines = ["| defense \\ attack (FEMNIST) | " + " | ".join(NONIID_ATTACKS) + " |",
             "|---" * (len(NONIID_ATTACKS) + 1) + "|"]
    for d in NONIID_DEFENSES:
        lines.append(f"| {d} | " + " | ".join(_cell(g.get(f"{d}.{a}", [])) for a in NONIID_ATTACKS) + " |")
    out["targeted-noniid"] = lines

    bench = ROOT / "docs" / "attacks" / "bench-attacks.json"  # `robustlr bench attacks --json`
    if bench.exists():
        lines = ["| attack | corrupt agents | s/round | trojan s/round (beside it) | ratio | extra s |",
                 "|---|---|---|---|---|---|"]
        for r in json.loads(bench.read_text()):
            lines.append(f"| {r['attack']} | {r['corrupt']} | {r['seconds_per_round']:.2f} | "
                         f"{r['trojan_seconds_per_round']:.2f} | {r['ratio']:.2f} | {r['extra_seconds']:+.2f} |")
        out["bench"] = lines

    for table, suite, key in (("breakpoints", "adversaries-iid", "corrupt_fraction"),
                              ("breakpoints-fp32", "breakpoints-iid-fp32", "corrupt_fraction"),
                              ("breakpoints-pgd", "breakpoints-noniid-pgd", "pgd_radius")):
        bp = results / suite / f"breakpoints-{key}.json"
        if bp.exists():
            out[table] = _breakpoint_lines(bp)
    return out


def _breakpoint_lines(bp: Path) -> list[str]:
    from robustlr.experiments.breakpoint import BreakpointReport
    from robustlr.experiments.suite import fmt_value

    rep = BreakpointReport.read(bp)
    what = "F" if rep.key == "corrupt_fraction" else rep.key
    lines = [f"| row | breakpoint {what} (mean +- sd) | " + " | ".join(f"seed {s}" for s in rep.seeds)
             + f" | probes ({what}: backdoor %) |",
             "|---" * (len(rep.seeds) + 3) + "|"]
    for row in rep.rows:
        probes = "; ".join(f"seed {r['seed']}: " + ", ".join(f"{k}: {100 * v:.1f}" for k, v in r["probes"].items())
                           for r in rep.rows[row])
        found = rep.by_seed(row)
        lines.append(f"| {row} | {rep.summary(row)} | "
                     + " | ".join("-" if sd not in found else "held" if found[sd] is None else fmt_value(found[sd])
                                  for sd in rep.seeds)
                     + f" | {probes} |")
    return lines


def test_every_table_of_the_page_is_the_stored_results(tmp_path):
    results, twins = tmp_path / "results", tmp_path / "twins"
    shutil.copytree(RESULTS, results)  # the store may be migrated on open: never touch the committed one
    shutil.copytree(TWINS, twins)
    page = (ROOT / "docs" / "attacks.md").read_text()
    built = {name: lines for name, lines in tables(results, twins).items() if len(lines) > 2}  # tables with rows
    assert {"byzantine", "durability", "bench"} <= set(built)
    for name, lines in built.items():
        for line in lines:
            assert line in page, (name, line)
    # and the page quotes no table the results do not hold
    for name in {"targeted", "iba", "targeted-noniid", "breakpoints", "breakpoints-fp32", "breakpoints-pgd"} - set(built):
        assert f"TABLE:{name}" not in page


if __name__ == "__main__":  # print the tables of a results folder
    import tempfile

    twins = Path(tempfile.mkdtemp()) / "twins"
    shutil.copytree(TWINS, twins)  # opening a store may migrate it: never touch the committed one
    for name, lines in tables(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS, twins).items():
        print(f"<!-- {name} -->")
        print("\n".join(lines))
        print()
