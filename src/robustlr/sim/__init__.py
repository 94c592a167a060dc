"""The simulator: config, presets, federation, engines, the server step, the round loop,
records, checkpoints and evaluation.

It needs the ``sim`` extra (pydantic for the config; tomli before Python 3.11); a missing one
raises :class:`robustlr.errors.MissingDependencyError` naming it, before anything else runs."""

import sys

from robustlr._optional import require

require("pydantic", *(("tomli",) if sys.version_info < (3, 11) else ()), extra="sim",
        feature="robustlr's simulator (robustlr.sim, robustlr.run, the robustlr command)")

from robustlr.sim.config import ExperimentConfig, load_config, make_config  # noqa: E402
from robustlr.sim.loop import RunResult, Simulation, run_experiment  # noqa: E402
from robustlr.sim.records import RoundRecord, RunSummary  # noqa: E402

__all__ = ["ExperimentConfig", "RoundRecord", "RunResult", "RunSummary", "Simulation", "load_config", "make_config",
           "run_experiment"]
