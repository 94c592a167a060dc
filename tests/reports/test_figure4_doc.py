"""docs/reproduction/README.md's Figure 4 table holds the committed attribution replays' numbers.

The replays (``robustlr attribute RUN --samples 1000``) of the FedAvg and RLR trojan runs of the
defenses suites, iid (Fashion-MNIST) and non-iid (FEMNIST), seeds 0-2, are committed in compact
form under docs/reproduction/figure4/ (each run's attribution.json, config.json and summary.json).
``python tests/reports/test_figure4_doc.py --write`` rewrites the table after the page's
``<!-- TABLE:figure4 -->`` marker and draws docs/reproduction/figure4-seed0.png; the test checks the
page quotes the table verbatim. The paper's Figure 4: without RLR the cumulative net influence
"quickly becomes negative", with RLR it is positive; a seed "as the paper" has the final cumulative
value of that sign.
"""

from __future__ import annotations

import json
import statistics
import sys
from itertools import accumulate
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "reproduction" / "figure4"
PAGE = ROOT / "docs" / "reproduction" / "README.md"
#: the definitions: column title -> how a round's net influence is read from a record
DEFINITIONS = {
    "as printed (products)": lambda r: r["net"],
    "as differences": lambda r: r["net_diff"],
    "authors' code": lambda r: r["authors"]["net"],
    "authors' code, Fisher fixed": lambda r: r["authors_corrected"]["net"],
}
SETTINGS = {"iid": "Fashion-MNIST iid", "noniid": "FEMNIST non-iid"}


def runs(results: Path = RESULTS) -> list[dict]:
    """Every committed replay: setting, method (fedavg/rlr), seed, and its curves."""
    out = []
    for path in sorted(results.glob("*/attribution.json")):
        doc = json.loads(path.read_text())
        cfg = json.loads((path.parent / "config.json").read_text())
        rounds = doc["rounds"]
        out.append({"name": path.parent.name, "setting": "iid" if cfg["dataset"] == "fashion-mnist" else "noniid",
                    "method": "rlr" if cfg["rlr_threshold"] > 0 else "fedavg", "seed": cfg["seed"],
                    "matches": doc["replay_matches_run"], "rounds": [r["round"] for r in rounds],
                    "curves": {k: list(accumulate(get(r) for r in rounds)) for k, get in DEFINITIONS.items()}})
    return out


def table(results: Path = RESULTS) -> list[str]:
    lines = ["| setting | run | seeds | " + " | ".join(DEFINITIONS) + " |", "|---" * (3 + len(DEFINITIONS)) + "|"]
    found = runs(results)
    for setting in SETTINGS:
        for method, sign in (("fedavg", -1), ("rlr", 1)):
            group = [r for r in found if r["setting"] == setting and r["method"] == method]
            if not group:
                continue
            cells = []
            for key in DEFINITIONS:
                finals = [r["curves"][key][-1] for r in group]
                mean = statistics.fmean(finals)
                sd = statistics.stdev(finals) if len(finals) > 1 else 0.0
                agree = sum(1 for v in finals if v * sign > 0)
                cells.append(f"{mean:+.3g} +- {sd:.2g} ({agree}/{len(finals)})")
            run = "FedAvg" if method == "fedavg" else "FedAvg + RLR"
            lines.append(f"| {SETTINGS[setting]} | {run} | {len(group)} | " + " | ".join(cells) + " |")
    return lines


def test_the_figure4_table_is_the_committed_replays():
    text = PAGE.read_text()
    start = text.index("<!-- TABLE:figure4 -->")
    body = text[start:].splitlines()[1:]
    page_table = []
    for line in body:
        if not line.startswith("|"):
            break
        page_table.append(line)
    assert page_table == table()
    assert all(r["matches"] for r in runs()), "a replay did not end with its run's numbers"


def draw(results: Path, path: Path) -> Path:
    """The paper's four panels at seed 0: (a) FedAvg, (b) RLR iid, (c) FedAvg, (d) RLR non-iid; every
    definition a row, the backdoor loss on the right axis."""
    from robustlr.reports.plots import plot_influence
    from robustlr.sim.records import read_metrics

    order = {("iid", "fedavg"): "(a) FedAvg, iid", ("iid", "rlr"): "(b) FedAvg + RLR, iid",
             ("noniid", "fedavg"): "(c) FedAvg, non-iid", ("noniid", "rlr"): "(d) FedAvg + RLR, non-iid"}
    panels = []
    for (setting, method), title in order.items():
        r = next(x for x in runs(results) if x["setting"] == setting and x["method"] == method and x["seed"] == 0)
        recs = [x for x in read_metrics(results / r["name"] / "metrics.jsonl") if x.evaluated
                and x.backdoor_loss is not None]
        keys = ("net", "net_diff", "authors", "authors_corrected")
        panels.append((title, {"rounds": r["rounds"], **dict(zip(keys, r["curves"].values())),
                               "loss_rounds": [x.round for x in recs], "backdoor_loss": [x.backdoor_loss for x in recs]}))
    return plot_influence(panels, path, "Figure 4 in four definitions (seed 0; k 100, 1,000 trojaned images)")


if __name__ == "__main__":  # print the table; --write: put it into the page and draw the figure
    lines = table()
    if "--write" in sys.argv:
        text = PAGE.read_text().splitlines()
        i = text.index("<!-- TABLE:figure4 -->")
        j = i + 1
        while j < len(text) and text[j].startswith("|"):
            j += 1
        PAGE.write_text("\n".join(text[:i + 1] + lines + text[j:]) + "\n")
        print(draw(RESULTS, ROOT / "docs" / "reproduction" / "figure4-seed0.png"))
    print("\n".join(lines))
