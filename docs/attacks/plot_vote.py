"""The figure of docs/attacks.md's "why IPM breaks RLR": RLR's sign vote per round under no attack,
ALIE and IPM (attacks-byzantine-iid[-seeds], mean over the seeds stored).

    python docs/attacks/plot_vote.py [RESULTS]   # default: docs/attacks/results; writes docs/attacks/rlr-vote.png
"""

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results"
ROWS = {"rlr.clean": ("no attack", "tab:green"), "rlr.alie": ("ALIE", "tab:blue"), "rlr.ipm": ("IPM", "tab:red"),
        "rlr.min-max": ("Min-Max", "tab:purple")}
PANELS = [("flipped_fraction", "coordinates flipped by RLR (share)"),
          ("honest_outvoted", "honest agents' sign outvoted (share)"),
          ("val_acc", "validation accuracy")]


def series(label: str) -> dict[str, list[tuple[int, float]]]:
    runs = sorted(p for suite in ("attacks-byzantine-iid", "attacks-byzantine-iid-seeds")
                  for p in (RESULTS / suite).glob(f"{suite}-{label}-seed=*"))
    per_key: dict[str, dict[int, list[float]]] = {}
    for run in runs:
        for line in (run / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            for key, _ in PANELS:
                if rec.get(key) is not None:
                    per_key.setdefault(key, {}).setdefault(rec["round"], []).append(rec[key])
    return {k: sorted((r, statistics.fmean(v)) for r, v in d.items()) for k, d in per_key.items()} | {
        "_seeds": len(runs)}


fig, axes = plt.subplots(1, len(PANELS), figsize=(13, 3.6), constrained_layout=True)
for label, (name, colour) in ROWS.items():
    s = series(label)
    if not s["_seeds"]:
        continue
    for ax, (key, title) in zip(axes, PANELS):
        pts = s.get(key, [])
        ax.plot([r for r, _ in pts], [v for _, v in pts], marker="o", ms=3, color=colour,
                label=f"{name} ({s['_seeds']} seed{'s' if s['_seeds'] > 1 else ''})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
axes[0].legend(fontsize=8)
fig.suptitle("RLR (theta 4 of 10) under the colluding untargeted attacks, F 0.2, Fashion-MNIST iid, lite budget "
             "(mean over seeds)", fontsize=10)
fig.savefig(HERE / "rlr-vote.png", dpi=100)
print(HERE / "rlr-vote.png")
