"""docs/speed.md's bf16 vs fp32 table holds the committed results' numbers (read only)."""

import shutil
import statistics
from pathlib import Path

from robustlr.experiments import store

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "speed" / "results"


def _cell(values: list[float]) -> str:
    v = [100 * x for x in values]
    return f"{statistics.mean(v):.1f} +- {statistics.stdev(v):.1f}" if len(v) > 1 else f"{v[0]:.1f}"


def _table() -> list[list[str]]:
    text = (ROOT / "docs" / "speed.md").read_text()
    section = text[text.index("## bf16 vs fp32 accuracy"):]
    return [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| precision-") and "---" not in line]


def test_every_fidelity_cell_is_the_stored_runs(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)  # the store may be migrated on open: never touch the committed one
    runs = [r for r in store.query(results) if r["status"] == "done"]
    lines = _table()
    assert {line[0] for line in lines} >= {"precision-iid", "precision-noniid"}
    for suite, label, seeds, *cells in lines:
        by = {p: sorted((r for r in runs if r["suite"] == suite and r["label"] == f"{label} precision={p}"),
                        key=lambda r: r["seed"]) for p in ("fp32", "bf16")}
        assert len(by["fp32"]) == len(by["bf16"]) == int(seeds), (suite, label)
        assert [r["seed"] for r in by["fp32"]] == [r["seed"] for r in by["bf16"]]
        expected = []
        for key in ("val_acc", "base_acc", "backdoor_acc"):
            expected += [_cell([r[key] for r in by["fp32"]]), _cell([r[key] for r in by["bf16"]])]
        assert cells == expected, (suite, label)
