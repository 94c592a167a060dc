"""Attacks and defenses side by side: one defense x attack table from one suite.

Rows named ``<defense>.<attack>`` (``pivot = true``) make a suite a table: each row sets the keys
of its defense (an aggregator, RLR's theta) and of its attack (a trojan, model replacement, a
norm-bounded stealth attack). This tutorial crosses FedAvg, FedAvg + RLR and SignGuard with the
plain trojan and with model replacement (the corrupt update boosted x 10), on a 12,000-image subset (Table 1's lite budget)
of Fashion-MNIST, and prints the final backdoor / validation accuracy of each cell::

    python examples/attacks_and_defenses.py --out runs/tutorial-pivot     # 6 runs of 10 rounds, ~8 min on 2 cores
    python examples/attacks_and_defenses.py --rounds 2 --train-limit 3000     # a smoke run (CI runs this)

Read a cell against its column's FedAvg row: a defended cell is evidence only where the attack
took in FedAvg (its backdoor accuracy is high there). The full tables of robustlr's defenses and
attacks, at 3 seeds, are in docs/defenses.md and docs/attacks.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFENSES = {"fedavg": {}, "rlr": {"rlr_threshold": 4}, "signguard": {"aggregator": "signguard"}}
ATTACKS = {"trojan": {}, "boost": {"boost_factor": 10.0}}


def suite_text(rounds: int, seed: int, train_limit: int) -> str:
    lines = ['name = "tutorial-pivot"', 'preset = "iid-fedavg"', "pivot = true", "",
             "[budget.lite]", 'partition = "iid"', f"train_limit = {train_limit}", f"rounds = {rounds}", "local_epochs = 1",
             "batch_size = 64", 'precision = "fp32"', f"eval_every = {rounds}", "checkpoint_every = 0", "",
             "[budget.paper]", ""]
    for d, dkeys in DEFENSES.items():
        for a, akeys in ATTACKS.items():
            lines.append("[[row]]")
            lines.append(f'label = "{d}.{a}"')
            lines += [f"{k} = {v!r}".replace("'", '"') for k, v in {**dkeys, **akeys}.items()]
            lines.append("")
    lines += ["[grid]", f"seed = [{seed}]"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/tutorial-pivot"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--train-limit", type=int, default=12000, help="the stratified subset of Fashion-MNIST's training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    from robustlr.experiments import store
    from robustlr.experiments.suite import load_suite
    from robustlr.experiments.sweep import sweep

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "tutorial-pivot.toml"
    path.write_text(suite_text(args.rounds, args.seed, args.train_limit))
    results = args.out / "results"
    sweep(load_suite(path), results, jobs=args.jobs, data_dir=args.data_dir)
    done = {r["label"]: r for r in store.query(results) if r["suite"] == "tutorial-pivot" and r["status"] == "done"}
    print("backdoor % / validation % after", args.rounds, "rounds (seed", f"{args.seed})")
    print(f"{'defense':<12}" + "".join(f"{a:>18}" for a in ATTACKS))
    for d in DEFENSES:
        cells = []
        for a in ATTACKS:
            r = done.get(f"{d}.{a}")
            cells.append(f"{100 * r['backdoor_acc']:6.1f} / {100 * r['val_acc']:5.1f}" if r else "not run")
        print(f"{d:<12}" + "".join(f"{c:>18}" for c in cells))


if __name__ == "__main__":
    main()
