"""Experiment suites: a small TOML file that names a preset, budgets, rows and a grid.

::

    # Table 1 iid: FedAvg without and under attack, FedAvg + RLR under attack
    name = "table1-iid"
    preset = "iid-fedavg"
    paper = "iid"            # the paper's numbers to compare with (reports/paper.toml)

    [budget.lite]            # overrides of the lite budget (minutes on 2 cores)
    train_limit = 12000
    rounds = 16

    [budget.paper]           # the preset as it is (the paper's R, E, B)

    [[row]]                  # one row of the table: a label and its overrides
    label = "fedavg-clean"
    corrupt_fraction = 0.0
    [[row]]
    label = "rlr-attack"
    rlr_threshold = 4

    [grid]                   # crossed with every row: lists of values
    seed = [0, 1, 2]

A run is ``preset + budget + row + grid point``, named ``<suite>-<label>[-key=value...]``.
Suites shipped with robustlr live in ``experiments/suites/``; a file path works too.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustlr.errors import ConfigError
from robustlr.sim.config import ExperimentConfig, make_config
from robustlr.sim.presets import read_config_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SUITES_DIR = Path(__file__).resolve().parent / "suites"
BUDGETS = ("lite", "paper")


@dataclass
class SuiteRun:
    label: str  # the row's label
    point: dict[str, Any]  # the grid point
    config: ExperimentConfig


@dataclass
class Suite:
    name: str
    preset: str
    description: str
    budgets: dict[str, dict[str, Any]]
    rows: list[dict[str, Any]]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    paper: str = ""  # a setting of robustlr/reports/paper.toml

    def runs(self, budget: str = "lite") -> list[SuiteRun]:
        if budget not in self.budgets:
            raise ConfigError(f"suite {self.name} has no budget {budget!r}; it has {', '.join(self.budgets)}")
        base, _ = read_config_file(self.preset)
        keys = list(self.grid)
        out = []
        for row in self.rows:
            label = row["label"]
            for values in itertools.product(*(self.grid[k] for k in keys)):
                point = dict(zip(keys, values))
                suffix = "".join(f"-{k}={v}" for k, v in point.items())
                data = {**base, **self.budgets[budget], **{k: v for k, v in row.items() if k != "label"}, **point,
                        "name": f"{self.name}-{label}{suffix}"}
                out.append(SuiteRun(label, point, make_config(data, f"suite {self.name}, row {label}{suffix}")))
        return out


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def load_suite(name_or_path: str | Path) -> Suite:
    path = Path(name_or_path)
    if not path.is_file():
        path = SUITES_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise ConfigError(f"suite {str(name_or_path)!r} not found; give a TOML file or one of: "
                              f"{', '.join(list_suites())}")
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid suite file: {exc}") from None
    unknown = set(data) - {"name", "preset", "budget", "row", "grid", "paper"}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; a suite has name, preset, paper, budget, row, grid")
    for key in ("name", "preset", "row"):
        if key not in data:
            raise ConfigError(f"{path}: a suite needs {key!r}")
    rows = data["row"]
    if not all(isinstance(r, dict) and "label" in r for r in rows):
        raise ConfigError(f"{path}: every [[row]] needs a label")
    grid = data.get("grid", {})
    bad = [k for k, v in grid.items() if not isinstance(v, list) or not v]
    if bad:
        raise ConfigError(f"{path}: grid keys {bad} must be non-empty lists of values")
    first = text.splitlines()[0] if text else ""
    return Suite(data["name"], data["preset"], first.lstrip("# ").strip() if first.startswith("#") else "",
                 data.get("budget", {"paper": {}}), rows, grid, str(data.get("paper", "")))
