"""Time every aggregation rule against a plain ``updates.mean(0)`` in the same run.

``robustlr bench aggregation`` prints the table; ``--help`` lists the options.
Each time is the median of ``repeats`` calls after one warm-up call, on random normal
updates. The ratio is that median over the median of the plain mean's times, measured
alternately with the rule's on the same matrix, so ratios are comparable across machines
(and robust to a machine whose speed drifts) even when absolute times are not.

Measure on an otherwise idle machine. When more threads are busy than there are cores
(another job running, or torch's threads set above the core count), every multi-threaded
torch operation waits for descheduled threads, and rules that make many operations over
cache-sized column blocks (the sign vote, the median) slow down far more than one large
operation such as the baseline; ``--threads 1`` then gives the more faithful ratios.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch

from robustlr.aggregation import (Bulyan, RoundInputs, ClipAndNoise, CoordinateMedian, FedAvg, FLDetector, FLTrust, FoolsGold,
                                  GeometricMedian,
                                  Krum, RobustLR, SignAggregation, TrimmedMean, threshold_range)
from robustlr.bench.common import time_pair
from robustlr.errors import ConfigError, did_you_mean

__all__ = ["run_benchmark", "format_table"]


def run_benchmark(
    n_agents_list: Sequence[int] = (10, 40, 100),
    n_params: int = 1_200_000,
    repeats: int = 5,
    device: str | torch.device = "cpu",
    seed: int = 0,
    rules: Sequence[str] | None = None,
    threads: int | None = None,
    model: str | None = None,
) -> list[dict[str, Any]]:
    """Time each rule for each number of agents; one row per (n_agents, rule).

    Rows: ``n_agents``, ``n_params``, ``rule``, ``seconds`` (median of ``repeats``),
    ``ratio`` (over ``updates.mean(0)`` on the same matrix, timed alternately with the rule;
    the baseline row has 1.0 and the median of all its times),
    ``device``, ``threads`` (torch's intra-op threads).

    ``rules`` restricts the rules timed (names as in the rows); the baseline always runs. The
    defenses (trimmed mean, multi-Krum, Bulyan, RFA, FLTrust, FLDetector with its window of 10
    full; FLAME, SignGuard and FreqFed where
    scikit-learn is installed; DeepSight's time is its models' forward passes, measured in the runs) assume f = ceil(0.1 n) corrupt agents; multi-Krum and Bulyan are
    timed only at agent counts they accept (n > 2f + 2, n >= 4f + 3).
    ``threads`` sets torch's intra-op threads for the run (restored afterwards).
    The RLR threshold is the low end of :func:`threshold_range` at F = 0.1; the clipping
    bound is the median update norm, so about half of the agents are clipped.

    RLR's variants (issue 30; see :class:`RobustLR`) are timed beside the paper's rule:
    ``RobustLR(FedAvg, soft)``, ``RobustLR(FedAvg, max_flip 0.25)`` (a threshold per array) and,
    with ``model``, ``RobustLR(FedAvg, weights)`` (the vote on convolution and linear weights
    only). ``model`` (a name of the model registry, e.g. ``resnet18-bn``) sets ``n_params`` to the
    model's state (parameters and buffers) and gives the variants its layout (the default
    scope then leaves the buffers unvoted, as in a run); without it the vector is one array.
    """
    dev = torch.device(device)
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if threads is not None:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return run_benchmark(n_agents_list, n_params, repeats, device, seed, rules, model=model)
        finally:
            torch.set_num_threads(previous)
    layout = None
    if model is not None:
        from robustlr.aggregation import ParamLayout
        from robustlr.models import MODELS, build_model

        if model not in MODELS:
            raise ConfigError(f"unknown model {model!r}{did_you_mean(model, MODELS)} for --model; choose from "
                              f"{', '.join(MODELS)}")
        layout = ParamLayout.from_module(build_model(model))
        n_params = layout.numel
    gen = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    for n_agents in n_agents_list:
        updates = torch.randn(n_agents, n_params, generator=gen).mul_(1e-3).to(dev)
        ids = list(range(n_agents))
        clip_norm = float(torch.linalg.vector_norm(updates, dim=1).median())
        theta = threshold_range(n_agents, 0.1)[0] if n_agents >= 3 else 1
        fg = FoolsGold()
        f = max(1, -(-n_agents // 10))  # ceil(0.1 n), as the simulator's assumed_corrupt at F = 0.1
        fltrust = FLTrust()  # the server update: one more random update (its training is not the rule's time)
        fltrust.set_round_inputs(RoundInputs(reference=torch.randn(n_params, generator=gen).mul_(1e-3).to(dev)))
        # FLDetector with its window full (the paper's 10 rounds): every timed call predicts and scores
        fldetector = FLDetector(window=10, generator=torch.Generator().manual_seed(seed))
        w = torch.zeros(n_params, device=dev)
        if rules is None or "fldetector" in {r.lower() for r in rules}:
            for _ in range(12):
                fldetector.set_round_inputs(RoundInputs(global_params=w))
                w = w + fldetector(updates * (1.0 + 0.1 * torch.rand((), generator=gen).item()), agent_ids=ids)
        fldetector.set_round_inputs(RoundInputs(global_params=w))
        candidates: dict[str, Callable[[], Any]] = {
            "FedAvg": lambda: FedAvg()(updates),
            "CoordinateMedian": lambda: CoordinateMedian()(updates),
            "SignAggregation": lambda: SignAggregation()(updates),
            "FoolsGold": lambda: fg(updates, agent_ids=ids),
            "ClipAndNoise(FedAvg)": lambda: ClipAndNoise(
                FedAvg(), clip_norm, 1e-3, torch.Generator().manual_seed(seed)
            )(updates),
            "RobustLR(FedAvg)": lambda: RobustLR(FedAvg(), threshold=theta, layout=layout)(updates),
            "RobustLR(FedAvg, soft)": lambda: RobustLR(FedAvg(), threshold=theta, layout=layout, soft=True)(updates),
            "RobustLR(FedAvg, max_flip 0.25)": lambda: RobustLR(FedAvg(), threshold=theta, layout=layout,
                                                                max_flip=0.25)(updates),
            # the defenses RLR is compared with (docs/defenses.md), with the simulator's defaults at F = 0.1
            "TrimmedMean": lambda: TrimmedMean(0.1)(updates),
            "MultiKrum": lambda: Krum(f, m=n_agents - f)(updates),
            "Bulyan": lambda: Bulyan(f)(updates),
            "RFA": lambda: GeometricMedian()(updates),
            "FLTrust": lambda: fltrust(updates),
            "FLDetector": lambda: fldetector(updates, agent_ids=ids),
        }
        if layout is not None:
            candidates["RobustLR(FedAvg, weights)"] = lambda: RobustLR(FedAvg(), threshold=theta, layout=layout,
                                                                       mask=layout.weight_mask())(updates)
        if n_agents <= 2 * f + 2:  # Krum needs n > 2f + 2, Bulyan n >= 4f + 3: not timed below that
            del candidates["MultiKrum"]
        if n_agents < 4 * f + 3:
            del candidates["Bulyan"]
        if _have_sklearn():  # FLAME and SignGuard cluster with scikit-learn (the 'flame' extra)
            from robustlr.aggregation import Flame, FreqFed, SignGuard

            candidates["Flame"] = lambda: Flame(generator=torch.Generator().manual_seed(seed))(updates)
            candidates["SignGuard"] = lambda: SignGuard(generator=torch.Generator().manual_seed(seed))(updates)
            # FreqFed: an output layer of 10 classes x 128 inputs at the end of the vector, as the paper's CNN
            freqfed = FreqFed(slice(n_params - 1290, n_params - 10), (10, 128))
            freqfed.set_round_inputs(RoundInputs(global_params=torch.zeros(n_params, device=dev)))
            candidates["FreqFed"] = lambda: freqfed(updates)
        by_lower = {name.lower(): name for name in candidates}  # names match case-insensitively
        unknown = [r for r in rules or () if r.lower() not in by_lower]
        if unknown:
            raise ConfigError(f"unknown rule {unknown[0]!r}{did_you_mean(unknown[0], candidates)} for --rule; choose "
                              f"from {', '.join(candidates)}")
        wanted = None if rules is None else {by_lower[r.lower()] for r in rules}
        selected = [(name, fn) for name, fn in candidates.items() if wanted is None or name in wanted]
        baseline = lambda: updates.mean(0)  # noqa: E731
        common = {"n_agents": n_agents, "n_params": n_params, "device": str(dev), "threads": torch.get_num_threads()}
        base_row = {**common, "rule": "mean(0) baseline", "seconds": 0.0, "ratio": 1.0}
        rows.append(base_row)
        all_base: list[float] = []
        for name, fn in selected:
            fn_times, base_times = time_pair(fn, baseline, repeats, dev)
            all_base += base_times
            seconds = statistics.median(fn_times)
            rows.append({**common, "rule": name, "seconds": seconds, "ratio": seconds / statistics.median(base_times)})
        if not all_base:
            all_base = time_pair(baseline, baseline, repeats, dev)[0]
        base_row["seconds"] = statistics.median(all_base)
        del updates, fg, fltrust, fldetector
    return rows


def _have_sklearn() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width text table of :func:`run_benchmark`'s rows."""
    w = max([22, *(len(r["rule"]) for r in rows)])
    header = f"{'agents':>6}  {'params':>9}  {'rule':<{w}}  {'ms':>10}  {'x mean':>7}"
    lines = [header, "-" * len(header)]
    last = None
    for r in rows:
        if last is not None and r["n_agents"] != last:
            lines.append("")
        last = r["n_agents"]
        lines.append(
            f"{r['n_agents']:>6}  {r['n_params']:>9}  {r['rule']:<{w}}  "
            f"{r['seconds'] * 1e3:>10.2f}  {r['ratio']:>7.2f}"
        )
    return "\n".join(lines)
