"""The three-way demo: FedAvg without attack, FedAvg under attack, FedAvg + RLR under attack."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from robustlr.config import ExperimentConfig, load_config

# setting -> (preset, {run: overrides}); the preset describes the attacked run
DEMOS: dict[str, tuple[str, dict[str, list[str]]]] = {
    "iid": ("demo-iid", {
        "fedavg_clean": ["corrupt_fraction=0.0", "rlr_threshold=0"],
        "fedavg_attack": ["rlr_threshold=0"],
        "rlr_attack": [],
    }),
    "noniid": ("demo-noniid", {
        "fedavg_clean": ["corrupt_fraction=0.0", "rlr_threshold=0"],
        "fedavg_attack": ["rlr_threshold=0"],
        "rlr_attack": [],
    }),
    "cifar": ("demo-cifar", {
        "fedavg_clean": ["corrupt_fraction=0.0", "rlr_threshold=0"],
        "fedavg_attack": ["rlr_threshold=0"],
        "rlr_attack": [],
    }),
}


def demo_configs(setting: str, extra: list[str] | None = None) -> dict[str, ExperimentConfig]:
    if setting not in DEMOS:
        raise ValueError(f"unknown demo setting {setting!r}; choose one of {', '.join(DEMOS)}")
    preset, runs = DEMOS[setting]
    cfgs = {}
    for key, overrides in runs.items():
        cfgs[key] = load_config(preset, [*overrides, f"name={setting}-{key}", *(extra or [])])
    return cfgs


def run_demo(setting: str, out_dir: str | Path, data_dir: str | None = None, extra: list[str] | None = None,
             on_round: Callable[[str, dict], None] | None = None) -> dict:
    """Run the three runs of ``setting``; write ``summary.json`` and ``demo.png`` into ``out_dir``."""
    from robustlr.federation import load_dataset
    from robustlr.report import plot_runs
    from robustlr.simulation import run_experiment

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfgs = demo_configs(setting, extra)
    t0 = time.perf_counter()
    dataset = load_dataset(next(iter(cfgs.values())), data_dir)
    results, curves = {}, {}
    for key, cfg in cfgs.items():
        res = run_experiment(cfg, out / key, data_dir=data_dir, dataset=dataset,
                             on_round=(lambda rec, k=key: on_round(k, rec)) if on_round else None)
        s = res.summary
        results[key] = {k: s[k] for k in ("val_acc", "val_loss", "base_acc", "backdoor_acc", "seconds",
                                          "seconds_per_round", "rounds")}
        curves[key] = res.metrics
    summary = {"setting": setting, "data_source": dataset.source or dataset.name, "runs": results,
               "wall_seconds": time.perf_counter() - t0}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_runs(curves, out / "demo.png", title=f"robustlr demo, {setting}: {dataset.source or dataset.name}")
    return summary
