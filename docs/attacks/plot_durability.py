"""docs/attacks.md's durability figure: backdoor accuracy per round in attacks-local-iid (attack in
rounds 1-12, honest after), mean over the seeds stored with their range shaded.

    python docs/attacks/plot_durability.py [RESULTS]   # default docs/attacks/results; writes attacks/durability.png
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
SUITE = "attacks-local-iid"
ATTACKS = {"trojan-window": ("plain trojan", "tab:red"), "neurotoxin-window": ("Neurotoxin", "tab:purple"),
           "a3fl-window": ("A3FL (K 20)", "tab:orange"), "f3ba-window": ("F3BA", "tab:brown")}

fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), constrained_layout=True, sharey=True)
for ax, defense, title in zip(axes, ("fedavg", "rlr"), ("FedAvg", "RLR (theta 4 of 10)")):
    for attack, (name, colour) in ATTACKS.items():
        runs = sorted((RESULTS / SUITE).glob(f"{SUITE}-{defense}.{attack}-seed=*"))
        runs = [r for r in runs if (r / "summary.json").exists()]
        if not runs:
            continue
        per_round: dict[int, list[float]] = {}
        for run in runs:
            for line in (run / "metrics.jsonl").read_text().splitlines():
                rec = json.loads(line)
                if rec.get("backdoor_acc") is not None:
                    per_round.setdefault(rec["round"], []).append(100 * rec["backdoor_acc"])
        rounds = sorted(per_round)
        mean = [statistics.fmean(per_round[r]) for r in rounds]
        ax.plot(rounds, mean, marker="o", ms=3, color=colour, label=f"{name} ({len(runs)} seed{'s' * (len(runs) > 1)})")
        if len(runs) > 1:
            ax.fill_between(rounds, [min(per_round[r]) for r in rounds], [max(per_round[r]) for r in rounds],
                            color=colour, alpha=0.15)
    ax.axvline(12.5, color="grey", ls="--", lw=1)
    ax.text(12.7, 95, "attack stops", fontsize=8, color="grey", va="top")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("round")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, loc="center right")
axes[0].set_ylabel("backdoor accuracy (%)")
fig.suptitle("Backdoor accuracy with an attack window (rounds 1-12), F 0.2, Fashion-MNIST iid, lite budget "
             "(mean over seeds, range shaded)", fontsize=10)
fig.savefig(HERE / "durability.png", dpi=100)
print(HERE / "durability.png")
