"""The demo: FedAvg without attack, FedAvg under attack, FedAvg + RLR under attack; on CIFAR-10 the
attacked pair twice, for the regular backdoor and for the distributed backdoor (DBA)."""

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
#: CIFAR-10 (Table 2): the regular backdoor, then the same pair under DBA, from preset demo-cifar-dba (its own
#: no-attack row would repeat fedavg_clean: a clean run does not depend on the attack)
CIFAR_RUNS: dict[str, tuple[str, list[str]]] = {
    **{key: ("demo-cifar", overrides) for key, overrides in RUNS.items()},
    "fedavg_dba": ("demo-cifar-dba", ["rlr_threshold=0"]),
    "rlr_dba": ("demo-cifar-dba", []),
}
DEMO_RUNS: dict[str, dict[str, tuple[str, list[str]]]] = {"cifar": CIFAR_RUNS}


def demo_configs(setting: str, extra: list[str] | None = None) -> dict[str, ExperimentConfig]:
    if setting not in DEMOS:
        raise ConfigError(f"unknown demo setting {setting!r}; choose one of {', '.join(DEMOS)}")
    runs = DEMO_RUNS.get(setting) or {key: (DEMOS[setting], overrides) for key, overrides in RUNS.items()}
    cfgs = {}
    for key, (preset, overrides) in runs.items():
        cfgs[key] = load_config(preset, [*overrides, f"name={setting}-{key}", *(extra or [])])
    return cfgs


def run_demo(setting: str, out_dir: str | Path, data_dir: str | None = None, extra: list[str] | None = None,
             on_round: Callable[[str, dict], None] | None = None) -> dict:
    """Run the runs of ``setting``; write ``summary.json`` and ``demo.png`` into ``out_dir``.

    A warm-started setting (``init_model = "pretrained:..."``, CIFAR-10) builds its starting model
    first if it is not cached; that time is reported apart (``pretrain_seconds``)."""
    from robustlr.reports.plots import plot_runs
    from robustlr.sim.federation import load_dataset
    from robustlr.sim.loop import pretrain, run_experiment
    from robustlr.sim.pretrain import resolve_init_model
    from robustlr.sim.rundir import prepare_out_dir

    out = Path(out_dir)
    prepare_out_dir(out)  # a clear error, before the data loads, for a folder that cannot be written
    cfgs = demo_configs(setting, extra)
    t0 = time.perf_counter()
    first = next(iter(cfgs.values()))
    dataset = load_dataset(first, data_dir)
    t_pre = time.perf_counter()
    init = resolve_init_model(first, data_dir, dataset=dataset,
                              build=lambda pcfg, d, ds: pretrain(pcfg, d, dataset=ds))
    pretrain_seconds = time.perf_counter() - t_pre
    t0 = time.perf_counter()
    results, curves = {}, {}
    for key, cfg in cfgs.items():
        res = run_experiment(cfg, out / key, data_dir=data_dir, dataset=dataset,
                             on_round=(lambda rec, k=key: on_round(k, rec)) if on_round else None)
        results[key] = res.summary.model_dump(include={"val_acc", "val_loss", "base_acc", "backdoor_acc", "seconds",
                                                       "seconds_per_round", "rounds"})
        curves[key] = res.records
    summary = {"setting": setting, "data_source": dataset.source or dataset.name, "runs": results,
               "wall_seconds": time.perf_counter() - t0, "pretrain_seconds": pretrain_seconds,
               "init_model": init.record() if init is not None else None}
    (out / "summary.json").write_text(dumps(summary, indent=2))
    plot_runs(curves, out / "demo.png", title=f"robustlr demo, {setting}: {dataset.source or dataset.name}")
    return summary
