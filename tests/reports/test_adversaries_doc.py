"""docs/adversaries.md's defense x attack tables hold the committed results' numbers (read only)."""

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


def test_every_cell_is_the_stored_run(tmp_path):
    import shutil

    results = tmp_path / "results"
    shutil.copytree(RESULTS, results)  # the store may be migrated on open: never touch the committed one
    rows = {(r["suite"], r["label"]): r for r in store.query(results)
            if r["status"] == "done" and r["suite"] in ("adversaries-iid", "adversaries-noniid")}
    tables = _tables((ROOT / "docs" / "adversaries.md").read_text())
    assert set(tables) == {"adversaries-iid", "adversaries-noniid"}
    checked = 0
    for suite, lines in tables.items():
        attacks = lines[0][1:]
        for line in lines[1:]:
            for attack, cell in zip(attacks, line[1:]):
                run = rows.get((suite, f"{line[0]}.{attack}"))
                if cell == "-":
                    assert run is None, (suite, line[0], attack)
                    continue
                assert cell == f"{100 * run['backdoor_acc']:.1f} / {100 * run['val_acc']:.1f}", (suite, line[0], attack)
                checked += 1
    assert checked == len(rows) == 75
