"""``robustlr bench flower``: time per round and peak memory of the whole process tree, for the
same config on the built-in simulator and on Flower's simulation runtime (Ray).

The default setting is the lite non-iid preset on 100 LEAF writers with C 0.1 (10 agents per
round). Peak memory is the largest sum, over this process and all its descendants (Ray's
raylet, GCS, workers; the engine's workers), of their resident set sizes, sampled every
0.2 s from ``/proc``: the largest single process would hide most of Ray's footprint.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

from robustlr.sim.lifecycle import descendant_pids


def tree_rss_mb(root: int | None = None) -> float:
    """The summed resident memory (MiB) of ``root`` (default: this process) and its descendants."""
    root = root or os.getpid()
    total = 0
    for pid in [root, *descendant_pids(root)]:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


class PeakSampler:
    def __init__(self, every: float = 0.2) -> None:
        self.every, self.peak, self._stop = every, 0.0, threading.Event()

    def __enter__(self) -> "PeakSampler":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mb())
            time.sleep(self.every)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_mb())


def run_flower_bench(preset: str = "demo-noniid", overrides: list[str] | None = None, data_dir: str | None = None,
                     progress=print) -> dict:
    from robustlr.integrations.flower.simulation import run_on_flower
    from robustlr.sim.config import load_config
    from robustlr.sim.loop import run_experiment
    from robustlr.sim.records import read_summary

    cfg = load_config(preset, overrides if overrides is not None else
                      ["num_agents=100", "participation=0.1", "rounds=3", "checkpoint_every=0", "eval_every=3"])
    res = {"preset": preset, "agents": cfg.num_agents, "agents_per_round": cfg.agents_per_round(cfg.num_agents),
           "rounds": cfg.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        progress("built-in simulator")
        with PeakSampler() as peak:
            t = time.perf_counter()
            builtin = run_experiment(cfg, Path(tmp) / "builtin", data_dir=data_dir)
            wall = time.perf_counter() - t
        res["builtin"] = {"seconds_per_round": builtin.summary.seconds_per_round, "wall_seconds": wall,
                          "peak_tree_rss_mb": peak.peak, "engine": builtin.summary.engine,
                          "val_acc": builtin.summary.val_acc}
        progress("Flower simulation runtime (Ray)")
        with PeakSampler() as peak:
            t = time.perf_counter()
            run_on_flower(cfg, Path(tmp) / "flower", data_dir)
            wall = time.perf_counter() - t
        s = read_summary(Path(tmp) / "flower" / "summary.json")
        res["flower"] = {"seconds_per_round": s.seconds_per_round, "wall_seconds": wall,
                         "peak_tree_rss_mb": peak.peak, "val_acc": s.val_acc}
    res["flower_vs_builtin_seconds_per_round"] = res["flower"]["seconds_per_round"] / res["builtin"]["seconds_per_round"]
    res["flower_vs_builtin_peak_memory"] = res["flower"]["peak_tree_rss_mb"] / res["builtin"]["peak_tree_rss_mb"]
    return res


def format_flower_bench(res: dict) -> str:
    lines = [f"robustlr bench flower: {res['preset']}, {res['agents']} agents ({res['agents_per_round']} per round), "
             f"{res['rounds']} rounds",
             f"{'engine':<10}{'s/round':>10}{'wall s':>10}{'peak MiB (tree)':>18}{'val acc':>10}"]
    for k in ("builtin", "flower"):
        r = res[k]
        lines.append(f"{k:<10}{r['seconds_per_round']:>10.2f}{r['wall_seconds']:>10.1f}{r['peak_tree_rss_mb']:>18.0f}"
                     f"{100 * (r['val_acc'] or 0):>9.1f}%")
    lines.append(f"Flower / built-in: {res['flower_vs_builtin_seconds_per_round']:.2f}x seconds per round, "
                 f"{res['flower_vs_builtin_peak_memory']:.2f}x peak memory")
    return "\n".join(lines)
