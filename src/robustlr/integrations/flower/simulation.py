"""``robustlr run CONFIG --engine flower``: an experiment on Flower's simulation runtime (Ray).

One virtual SuperNode per agent (``num_supernodes = K``), each a Ray actor with one CPU; the
ServerApp runs the config's rule with robustlr's seeded sampling (see
:mod:`robustlr.integrations.flower.apps`) and writes the run folder of the built-in simulator
(``config.json``, ``metrics.jsonl``, ``summary.json`` with ``engine = "flower"``, ``model.pt``),
so reports read it unchanged.

Guarantees on this engine, compared with the built-in runner: determinism holds (every agent
trains on one thread from its own seeded streams, and the replies are aggregated in agent
order, whatever order they arrive in); the result files are written atomically, but only at
the end: there are no checkpoints, so a killed Flower run does not resume (it starts over).
"""

from __future__ import annotations

from pathlib import Path

from robustlr._optional import require
from robustlr.sim.config import ExperimentConfig
from robustlr.sim.engines.select import available_cores


def run_on_flower(cfg: ExperimentConfig, out_dir: str | Path, data_dir: str | None = None) -> Path:
    run_simulation = require("ray", "flwr.simulation", extra="flower",
                             feature="Flower's simulation runtime (--engine flower)").run_simulation

    from robustlr.integrations.flower.apps import (
        CONFIG_KEY,
        DATA_DIR_KEY,
        OUT_KEY,
        check_flower_config,
        make_client_app,
        make_server_app,
    )
    from robustlr.sim.federation import build_federation, load_dataset

    check_flower_config(cfg)
    out = Path(out_dir)
    num_agents = cfg.num_agents or build_federation(cfg, load_dataset(cfg, data_dir)).num_agents
    defaults = {CONFIG_KEY: cfg.to_json(), DATA_DIR_KEY: str(data_dir or ""), OUT_KEY: str(out)}
    cpus = cfg.threads or available_cores()
    run_simulation(make_server_app(defaults), make_client_app(defaults), num_supernodes=num_agents,
                   backend_config={"client_resources": {"num_cpus": 1},
                                   "init_args": {"num_cpus": cpus, "include_dashboard": False}})
    if not (out / "summary.json").exists():
        from robustlr.errors import TrainingError

        raise TrainingError(f"the Flower run ended without writing {out / 'summary.json'}; see Flower's log above")
    return out
