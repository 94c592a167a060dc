"""A sweep and its report: a suite of your own, run in parallel and resumably, stored, reported.

A *suite* is a TOML file: rows (each a few config keys over a preset) times a grid (here, seeds).
``robustlr.experiments.sweep`` runs every point as its own process, skips the finished ones when
started again (a killed sweep resumes), and records each run in the results store
(``RESULTS/results.sqlite``); ``robustlr.reports.report.build_report`` turns the store into
``report.md`` / ``report.html`` with the tables and figures. This tutorial writes a two-row suite
(FedAvg and FedAvg + RLR under the paper's iid attack, on a 12,000-image subset (Table 1's lite budget) of Fashion-MNIST),
sweeps it over seeds, prints the table from the store and writes the report::

    python examples/sweep_and_report.py --out runs/tutorial-sweep          # 4 runs of 10 rounds, ~6 min on 2 cores
    python examples/sweep_and_report.py --rounds 2 --seeds 1 --train-limit 3000   # a smoke run (CI runs this)

The command line does the same: ``robustlr sweep SUITE.toml -r RESULTS -j 2`` and ``robustlr
report RESULTS --out REPORT``.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

SUITE = """# FedAvg and FedAvg + RLR under the paper's iid attack, on a small subset (a tutorial)
name = "tutorial"
preset = "iid-fedavg"

[budget.lite]
partition = "iid"
train_limit = {train_limit}
rounds = {rounds}
local_epochs = 1
batch_size = 64
precision = "fp32"
eval_every = 2
checkpoint_every = 2

[budget.paper]

[[row]]
label = "fedavg_attack"

[[row]]
label = "rlr_attack"
rlr_threshold = 4

[grid]
seed = {seeds}
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/tutorial-sweep"))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--train-limit", type=int, default=12000, help="the stratified subset of Fashion-MNIST's training images")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    from robustlr.experiments import store
    from robustlr.experiments.suite import load_suite
    from robustlr.experiments.sweep import sweep
    from robustlr.reports.report import build_report

    args.out.mkdir(parents=True, exist_ok=True)
    suite_file = args.out / "tutorial.toml"
    suite_file.write_text(SUITE.format(rounds=args.rounds, seeds=list(range(args.seeds)), train_limit=args.train_limit))
    suite = load_suite(suite_file)  # validated before any run starts: a bad key stops here
    results = args.out / "results"
    state = sweep(suite, results, jobs=args.jobs, data_dir=args.data_dir)
    print(f"{state.done} runs done, {len(state.failed)} failed; the store: {results / 'results.sqlite'}")

    rows = [r for r in store.query(results) if r["suite"] == "tutorial" and r["status"] == "done"]
    print(f"{'row':<16}{'seeds':>6}{'validation %':>16}{'backdoor %':>14}")
    for label in ("fedavg_attack", "rlr_attack"):
        runs = [r for r in rows if r["label"] == label]
        val = [100 * r["val_acc"] for r in runs]
        bd = [100 * r["backdoor_acc"] for r in runs]
        sd = (lambda v: f" +- {statistics.stdev(v):.1f}" if len(v) > 1 else "")  # noqa: E731
        print(f"{label:<16}{len(runs):>6}{statistics.fmean(val):>10.1f}{sd(val):<6}{statistics.fmean(bd):>8.1f}{sd(bd)}")
    md, html = build_report(results, args.out / "report")
    print(f"report: {md} and {html}")


if __name__ == "__main__":
    main()
