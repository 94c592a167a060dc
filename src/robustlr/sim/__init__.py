"""The simulator: config, presets, federation, engines, the server step, the round loop,
records, checkpoints and evaluation."""

from robustlr.sim.config import ExperimentConfig, load_config, make_config
from robustlr.sim.loop import RunResult, Simulation, run_experiment
from robustlr.sim.records import RoundRecord, RunSummary

__all__ = ["ExperimentConfig", "RoundRecord", "RunResult", "RunSummary", "Simulation", "load_config", "make_config",
           "run_experiment"]
