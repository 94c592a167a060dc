"""The three-way demo: FedAvg without attack, FedAvg under attack, FedAvg + RLR under attack."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from robustlr.errors import ConfigError
from robustlr.sim.config import ExperimentConfig, load_config
from robustlr.sim.records import dumps

#: the three runs of every demo; the preset describes the attacked run with RLR
RUNS: dict[str, list[str]] = {
    "fedavg_clean": ["corrupt_fraction=0.0", "rlr_threshold=0"],
    "fedavg_attack": ["rlr_threshold=0"],
    "rlr_attack": [],
}
#: setting -> preset
DEMOS: dict[str, str] = {"iid": "demo-iid", "noniid": "demo-noniid", "cifar": "demo-cifar"}


def demo_configs(setting: str, extra: list[str] | None = None) -> dict[str, ExperimentConfig]:
    if setting not in DEMOS:
        raise ConfigError(f"unknown demo setting {setting!r}; choose one of {', '.join(DEMOS)}")
    preset = DEMOS[setting]
    cfgs = {}
    for key, overrides in RUNS.items():
        cfgs[key] = load_config(preset, [*overrides, f"name={setting}-{key}", *(extra or [])])
    return cfgs


def run_demo(setting: str, out_dir: str | Path, data_dir: str | None = None, extra: list[str] | None = None,
             on_round: Callable[[str, dict], None] | None = None) -> dict:
    """Run the three runs of ``setting``; write ``summary.json`` and ``demo.png`` into ``out_dir``."""
    from robustlr.reports.plots import plot_runs
    from robustlr.sim.federation import load_dataset
    from robustlr.sim.loop import run_experiment

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfgs = demo_configs(setting, extra)
    t0 = time.perf_counter()
    dataset = load_dataset(next(iter(cfgs.values())), data_dir)
    results, curves = {}, {}
    for key, cfg in cfgs.items():
        res = run_experiment(cfg, out / key, data_dir=data_dir, dataset=dataset,
                             on_round=(lambda rec, k=key: on_round(k, rec)) if on_round else None)
        results[key] = res.summary.model_dump(include={"val_acc", "val_loss", "base_acc", "backdoor_acc", "seconds",
                                                       "seconds_per_round", "rounds"})
        curves[key] = res.records
    summary = {"setting": setting, "data_source": dataset.source or dataset.name, "runs": results,
               "wall_seconds": time.perf_counter() - t0}
    (out / "summary.json").write_text(dumps(summary, indent=2))
    plot_runs(curves, out / "demo.png", title=f"robustlr demo, {setting}: {dataset.source or dataset.name}")
    return summary
