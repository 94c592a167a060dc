"""docs/reproduction/README.md's Theorem 1 table is the committed runs' flipped shares (read only).

For every committed RLR run of the reproduction suites, the share of coordinates that failed the
vote (``flipped_fraction``, RLR's p0 estimate) over the rounds RLR was on: its mean, its smallest
and largest round, and how many rounds were below Theorem 1's 1/4. ``python
tests/reports/test_theorem1_doc.py`` prints the table.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "reproduction" / "results"
SUITES = ["table1-iid", "table1-noniid", "table7-iid", "table6-iid", "figure6-iid", "figure6-noniid"]


def table(results: Path = RESULTS) -> list[str]:
    lines = ["| suite | run | seed | RLR rounds | p0 mean | p0 min | p0 max | rounds with p0 < 1/4 |",
             "|---|---|---|---|---|---|---|---|"]
    for suite in SUITES:
        for run in sorted((results / suite).glob("*")):
            metrics = run / "metrics.jsonl"
            if not metrics.exists():
                continue
            shares = [r["flipped_fraction"] for r in map(json.loads, metrics.read_text().splitlines())
                      if r.get("flipped_fraction") is not None]
            if not shares:
                continue
            label, _, seed = run.name[len(suite) + 1:].rpartition("-seed=")
            lines.append(f"| {suite} | {label} | {seed} | {len(shares)} | {statistics.fmean(shares):.2f} | "
                         f"{min(shares):.2f} | {max(shares):.2f} | {sum(s < 0.25 for s in shares)} |")
    return lines


def test_the_theorem_table_is_the_committed_runs():
    page = (ROOT / "docs" / "reproduction" / "README.md").read_text()
    lines = table()
    assert len(lines) > 10  # every RLR run of those suites
    for line in lines:
        assert line in page, line


if __name__ == "__main__":
    print("\n".join(table()))
