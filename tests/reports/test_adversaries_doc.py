"""docs/adversaries.md's defense x attack tables hold the committed results' numbers (read only).

The iid table is seed 0 (one run per cell); the non-iid table's cells are over every seed the store
holds: backdoor % / validation %, mean +- sd and the count of seeds where more than one.
``python tests/reports/test_adversaries_doc.py`` prints the non-iid table (how the page's was written).
"""

import statistics
import sys
from pathlib import Path

from robustlr.experiments import store

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "adversaries" / "results"


def _tables(text: str) -> dict[str, list[list[str]]]:
    out, suite = {}, None
    for line in text.splitlines():
        if line.startswith("## Results, iid"):
            suite = "adversaries-iid"
        elif line.startswith("## Results, non-iid"):
            suite = "adversaries-noniid"
        elif line.startswith("## "):
            suite = None
        elif suite and line.startswith("| ") and "---" not in line:
            out.setdefault(suite, []).append([c.strip() for c in line.strip("|").split("|")])
    return out


def _pct(vals: list[float]) -> str:
    vals = [100 * v for v in vals]
    return f"{vals[0]:.1f}" if len(vals) == 1 else f"{statistics.fmean(vals):.1f} +- {statistics.stdev(vals):.1f}"


def cell(runs: list[dict]) -> str:
    """backdoor % / validation %, over the seeds (mean +- sd, and their count where more than one)."""
    if not runs:
        return "-"
    n = f" ({len(runs)})" if len(runs) > 1 else ""
    return f"{_pct([r['backdoor_acc'] for r in runs])} / {_pct([r['val_acc'] for r in runs])}{n}"


def _stored(results: Path) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for r in sorted(store.query(results), key=lambda r: r["seed"]):
        if r["status"] == "done" and r["suite"] in ("adversaries-iid", "adversaries-noniid"):
            out.setdefault((r["suite"], r["label"]), []).append(r)
    return out


NONIID_DEFENSES = ["fedavg", "rlr", "screen", "rlr-theta045", "multikrum"]
NONIID_ATTACKS = ["trojan", "boost", "adaptive-sign-f03", "trojan-f03"]


def noniid_table(results: Path) -> list[str]:
    rows = _stored(results)
    lines = ["| defense \\ attack | " + " | ".join(NONIID_ATTACKS) + " |", "|---" * (len(NONIID_ATTACKS) + 1) + "|"]
    for d in NONIID_DEFENSES:
        lines.append(f"| {d} | " + " | ".join(cell(rows.get(("adversaries-noniid", f"{d}.{a}"), []))
                                             for a in NONIID_ATTACKS) + " |")
    return lines


def test_every_cell_is_the_stored_runs(tmp_path):
    import shutil

    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)  # the store may be migrated on open: never touch the committed one
    rows = _stored(results)
    page = (ROOT / "docs" / "adversaries.md").read_text()
    tables = _tables(page)
    assert set(tables) == {"adversaries-iid", "adversaries-noniid"}
    checked = 0
    lines = tables["adversaries-iid"]
    attacks = lines[0][1:]
    for line in lines[1:]:
        for attack, text in zip(attacks, line[1:]):
            runs = rows.get(("adversaries-iid", f"{line[0]}.{attack}"), [])
            assert text == cell(runs[:1]), ("adversaries-iid", line[0], attack)  # the iid table is seed 0
            checked += bool(runs)
    assert checked == sum(1 for (suite, _) in rows if suite == "adversaries-iid") == 60
    for line in noniid_table(results):
        assert line in page, line
    noniid = [label for (suite, label) in rows if suite == "adversaries-noniid"]
    assert all(label.split(".")[0] in NONIID_DEFENSES and label.split(".")[1] in NONIID_ATTACKS for label in noniid)


if __name__ == "__main__":
    import shutil
    import tempfile

    copy = Path(tempfile.mkdtemp()) / "results"
    shutil.copytree(Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS, copy)
    print("\n".join(noniid_table(copy)))
