"""``robustlr bench attacks``: what each attack costs the corrupt agents, beside a plain trojan round.

For a preset (by default ``iid-fedavg`` at the lite budget's local settings: K 10, F 0.1, E 1,
B 64, the paper's CNN) it times, in one process and alternately with the plain trojan round, one
round of the simulator's attack side (:meth:`robustlr.sim.loop.Simulation._train_round`: local
training of every sampled agent, plus whatever the attack adds: a corrupt agent's clean twin, the
Neurotoxin mask and its per-step multiply, the PGD projection after every step, the colluding
attacks' crafting from the honest updates). Each row reports seconds per round (median over
repeats) and its ratio to the trojan round measured beside it. The data are random images of the
dataset's shape and the preset's sizes (``train_limit`` images split among the agents): the cost
of an attack does not depend on what the pixels show. Training runs on the sequential engine with
one thread, the reference engine, so the ratio is the attack's own work, not a scheduling effect.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
import torch

from robustlr.bench.common import time_pair
from robustlr.data.base import ImageDataset
from robustlr.data.registry import dataset_facts
from robustlr.sim.config import load_config, make_config

#: name -> config overrides of the preset (the trojan row is the baseline)
ATTACKS: dict[str, dict[str, Any]] = {
    "trojan": {},
    "neurotoxin": {"neurotoxin_top_percent": 5.0},
    "pgd": {"pgd_radius": 0.4},
    "a3fl (K 20)": {"trigger_optimisation": "a3fl", "a3fl_iterations": 20},
    "a3fl (K 200, the authors')": {"trigger_optimisation": "a3fl"},
    "f3ba": {"trigger_optimisation": "f3ba"},
    "iba": {"trigger_optimisation": "iba"},
    "pgd-boost": {"pgd_radius": 0.4, "boost_factor": 10.0},
    "stealth (clean twin)": {"boost_factor": 10.0, "stealth": "project"},
    "adaptive-sign (twins)": {"adaptive": "sign", "corrupt_fraction": 0.3},
    "alie": {"byzantine": "alie", "corrupt_fraction": 0.2},
    "ipm": {"byzantine": "ipm", "corrupt_fraction": 0.2},
    "min-max": {"byzantine": "min-max", "corrupt_fraction": 0.2},
    "min-sum": {"byzantine": "min-sum", "corrupt_fraction": 0.2},
}

LITE = {"train_limit": 6000, "local_epochs": 1, "batch_size": 64, "precision": "fp32", "train_mode": "sequential",
        "threads": 1, "checkpoint_every": 0}


def synthetic_dataset(dataset: str, n_train: int, n_test: int = 100, seed: int = 0) -> ImageDataset:
    """Random uint8 images of ``dataset``'s shape and classes (for timing only)."""
    facts = dataset_facts(dataset)
    g = np.random.default_rng(seed)
    c, h, w = facts.input_shape

    def make(n):
        return (torch.from_numpy(g.integers(0, 256, size=(n, c, h, w), dtype=np.uint8)),
                torch.from_numpy((np.arange(n) % facts.num_classes).astype(np.int64)))

    tx, ty = make(n_train)
    vx, vy = make(n_test)
    return ImageDataset(dataset, tx, ty, vx, vy, classes=tuple(str(i) for i in range(facts.num_classes)),
                        mean=(0.5,) * c, std=(0.25,) * c, ink=255, source="random (benchmark only)")


def _simulation(base: dict, overrides: dict, ds: ImageDataset):
    from robustlr.sim.federation import build_federation
    from robustlr.sim.loop import Simulation

    cfg = make_config({**base, **overrides, "name": "bench-attacks"})
    sim = Simulation(cfg, build_federation(cfg, ds))
    if cfg.neurotoxin_top_percent or cfg.trigger_optimisation == "f3ba":  # as from round 2: a last global update
        g = torch.Generator().manual_seed(0)
        sim.last_update = torch.randn(sim.layout.numel, generator=g) * 1e-3
    return sim


def run_benchmark(preset: str = "iid-fedavg", attacks: list[str] | None = None, repeats: int = 3,
                  overrides: dict | None = None) -> list[dict[str, Any]]:
    """One row per attack: seconds per round of the attack side, and the ratio to the trojan round."""
    names = attacks or list(ATTACKS)
    unknown = [a for a in names if a not in ATTACKS]
    if unknown:
        from robustlr.errors import ConfigError

        raise ConfigError(f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACKS)}")
    base = {**load_config(preset).model_dump(mode="json"), **LITE, **(overrides or {})}
    base.pop("init_model", None)
    ds = synthetic_dataset(base["dataset"], int(base["train_limit"]))
    base["train_limit"] = None
    plain = _simulation(base, ATTACKS["trojan"], ds)
    rows = []
    try:
        for name in names:
            sim = _simulation(base, ATTACKS[name], ds)
            try:
                r = iter(range(2, 10_000))
                fn_t, base_t = time_pair(lambda: sim._train_round(next(r)), lambda: plain._train_round(2), repeats,
                                         torch.device("cpu"))
            finally:
                sim.close()
            med, ref = statistics.median(fn_t), statistics.median(base_t)
            rows.append({"attack": name, "seconds_per_round": med, "trojan_seconds_per_round": ref,
                         "ratio": med / ref, "extra_seconds": med - ref, "agents": plain.cfg.agents_per_round(
                             plain.fed.num_agents), "corrupt": int(sim.fed.corrupt.size), "repeats": repeats,
                         "preset": preset})
    finally:
        plain.close()
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'attack':<24}{'corrupt':>8}{'s/round':>10}{'trojan s/round':>16}{'ratio':>8}{'extra s':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['attack']:<24}{r['corrupt']:>8}{r['seconds_per_round']:>10.2f}"
                     f"{r['trojan_seconds_per_round']:>16.2f}{r['ratio']:>8.2f}{r['extra_seconds']:>+9.2f}")
    return "\n".join(lines)
