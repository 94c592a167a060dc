"""Speed, measured as ratios taken in one run: ``robustlr bench engines | aggregation | scale | profile | levers``.

- :mod:`~robustlr.bench.engines`: local-training engines vs the naive baseline and the compute floor;
- :mod:`~robustlr.bench.aggregation`: each aggregation rule vs a plain mean;
- :mod:`~robustlr.bench.scale`: memory and per-round overhead at the paper's non-iid scale;
- :mod:`~robustlr.bench.profile`: one agent's time per operator, and each speed lever on its own;
- :mod:`~robustlr.bench.naive`: the naive baseline; :mod:`~robustlr.bench.common`: timing helpers.

A new benchmark is a module here and a command in :mod:`robustlr.cli.bench`.
"""
