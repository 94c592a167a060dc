"""Why it works: watch the vote, round by round, and the parameters the backdoor needs.

RLR reverses the server's step on every coordinate where fewer than theta agents agree on the
sign. Every round record says what that did (``flipped_fraction``, per layer in
``flipped_per_layer``) and how the vote went for each side: ``honest_agreement`` and
``corrupt_agreement`` (the share of coordinates on which a side's agents agree among themselves)
and ``corrupt_outvoted`` (the share of coordinates on which the corrupt agents' collective sign
lost the vote). The paper's appendix B adds parameter attribution: the Fisher information of the
backdoor mapping picks the 100 parameters the backdoor needs most, and the round's step on them
says whether the model moved towards the backdoor or away from it
(``robustlr.analysis.attribution``, also ``robustlr attribute RUN``).

This tutorial runs FedAvg and FedAvg + RLR under the paper's iid attack on a 12,000-image subset (Table 1's lite budget),
with an attribution observer, and prints per round: the backdoor accuracy, the flipped share,
the corrupt vote's losses, and the cumulative net influence (positive: the step helped the
honest mapping more than the backdoor's)::

    python examples/why_it_works.py                    # 2 runs of 10 rounds, ~5 min on 2 cores
    python examples/why_it_works.py --rounds 2 --train-limit 3000      # a smoke run (CI runs this)
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--train-limit", type=int, default=12000, help="the stratified subset of Fashion-MNIST's training images")
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args(argv)

    import robustlr
    from robustlr.analysis.attribution import AttributionObserver
    from robustlr.sim.loop import run_experiment

    for name, theta in (("FedAvg", 0), ("FedAvg + RLR (theta 4)", 4)):
        cfg = robustlr.load_config("iid-fedavg", [
            "partition='iid'", f"train_limit={args.train_limit}", f"rounds={args.rounds}", "local_epochs=1", "batch_size=64",
            "precision='fp32'", "eval_every=1", "checkpoint_every=0", f"rlr_threshold={theta}"])
        obs = AttributionObserver(k=100, samples=128)
        result = run_experiment(cfg, data_dir=args.data_dir, observers=[obs])
        print(f"\n{name}: final validation {100 * result.summary.val_acc:.1f} %, backdoor "
              f"{100 * result.summary.backdoor_acc:.1f} %")
        print(f"{'round':>5}{'backdoor %':>12}{'flipped %':>11}{'corrupt outvoted %':>20}{'net influence':>15}")
        net = 0.0
        attribution = {r["round"]: r for r in obs.records}
        for rec in result.records:
            a = attribution.get(rec.round)
            net += a["net_diff"] if a else 0.0
            flipped = "-" if rec.flipped_fraction is None else f"{100 * rec.flipped_fraction:.1f}"
            outvoted = "-" if rec.corrupt_outvoted is None else f"{100 * rec.corrupt_outvoted:.1f}"
            print(f"{rec.round:>5}{100 * rec.backdoor_acc:>12.1f}{flipped:>11}{outvoted:>20}{net:>15.3f}")


if __name__ == "__main__":
    main()
