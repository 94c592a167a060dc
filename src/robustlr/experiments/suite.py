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

    [budget.lite.grid]       # optional: a budget may narrow grid keys (a reduced M x sigma grid)

    [notes]                  # optional: how a budget maps the paper's settings (the report prints it)
    lite = "..."

    pivot = true             # optional: labels are <defense>.<attack>; the report shows one table per
                             # metric with a row per defense and a column per attack

    [[figure]]               # optional: a figure of one panel per table row (the paper's Figures 2, 3)
    title = "Figure 2"
    rows = ["fedavg-clean", "rlr-attack"]
    titles = ["(a) FedAvg", "(b) FedAvg + RLR"]

    [[row]]                  # one row of the table: a label and its overrides
    label = "fedavg-clean"
    corrupt_fraction = 0.0
    [[row]]
    label = "rlr-attack"
    rlr_threshold = 4

    [grid]                   # crossed with every row: lists of values
    seed = [0, 1, 2]

A run is ``preset + budget + row + grid point``, named ``<suite>-<label>[-key=value...]``. Its
table row (the store's ``label``) is the row's label followed by the grid point's keys other
than ``seed`` (``rlr clip_norm=2 noise_sigma=0.001``): the seeds of one row are averaged, and
every other grid key makes rows of its own. A key that a row sets is not crossed with the grid
for that row (``fedavg_clean`` can pin ``clip_norm = 0`` in a suite that grids over it). A row
key named like a budget holds overrides for that budget only (``lite = {rlr_threshold = 0.2}``:
the paper's theta 7 of 33 agents as a fraction of a smaller round; ``paper = {rlr_from_val_acc =
0.93}``: the paper's absolute trigger at the paper's budget, in place of a relative one).

Two suite-only row keys give a relative RLR trigger (the paper's absolute thresholds, such as
Figure 6's 93 %, never fire at a small budget)::

    rlr_from_val_acc_of = "fedavg_clean"    # a row above this one, at the same grid point
    rlr_from_val_acc_fraction = 0.97        # RLR is on from the first round whose validation
                                            # accuracy reaches 0.97 x that run's final one

The sweep runs the referenced run first and writes the resolved ``rlr_from_val_acc`` into the
dependent run's config, so the config saved with the result is absolute and self-contained. (A
relative *round* trigger needs no suite support: ``rlr_from_round`` in the budget.)

``noise_without_clip = "zero"`` (top level) runs a grid point with ``clip_norm = 0`` and
``noise_sigma > 0`` as ``noise_sigma = 0``, as the authors' code does (its noise std is
sigma * M); robustlr's config keeps refusing noise without clipping. Grid points that end up
with the same config run once; the others become aliases of that run (the report lists them).

Suites shipped with robustlr live in ``experiments/suites/``; a file path works too.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from robustlr.errors import ConfigError, did_you_mean
from robustlr.sim.config import ExperimentConfig, make_config
from robustlr.sim.presets import read_config_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SUITES_DIR = Path(__file__).resolve().parent / "suites"
BUDGETS = ("lite", "paper")
SUITE_ONLY_ROW_KEYS = ("label", "rlr_from_val_acc_of", "rlr_from_val_acc_fraction")
TOP_LEVEL_KEYS = ("name", "preset", "paper", "budget", "notes", "noise_without_clip", "figure", "row", "grid", "pivot")


def fmt_value(v: Any) -> str:
    """A grid value as it appears in run names and table rows (floats in the shortest form: 0.001, 2)."""
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass
class SuiteRun:
    label: str  # the row's label
    point: dict[str, Any]  # the grid point (the keys this row crosses)
    config: ExperimentConfig
    key: str = ""  # the table row: the label and the grid point's keys other than seed
    after: str | None = None  # the run (its name) whose final validation accuracy sets rlr_from_val_acc
    val_acc_fraction: float | None = None
    aliases: list[str] = field(default_factory=list)  # other table rows this run stands for
    notes: list[str] = field(default_factory=list)
    alias_notes: dict[str, list[str]] = field(default_factory=dict)  # why an alias shares this run

    def __post_init__(self):
        self.key = self.key or self.label

    def resolved(self, reference_val_acc: float) -> ExperimentConfig:
        """The config with the relative trigger made absolute: fraction x the reference's final accuracy."""
        if self.val_acc_fraction is None:
            return self.config
        value = round(self.val_acc_fraction * reference_val_acc, 6)
        return make_config({**self.config.model_dump(mode="json"), "rlr_from_val_acc": value},
                           f"suite run {self.config.name}")

    def meta(self) -> dict[str, Any]:
        """What the sweep writes beside the run (``suite-run.json``): the table row it belongs to."""
        return {"label": self.label, "key": self.key, "point": self.point, "after": self.after,
                "val_acc_fraction": self.val_acc_fraction, "aliases": self.aliases, "notes": self.notes,
                "alias_notes": self.alias_notes}


@dataclass
class Suite:
    name: str
    preset: str
    description: str
    budgets: dict[str, dict[str, Any]]
    rows: list[dict[str, Any]]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    paper: str = ""  # a setting of robustlr/reports/paper.toml
    noise_without_clip: str = "refuse"  # or "zero"
    notes: dict[str, str] = field(default_factory=dict)  # budget -> how it maps the paper's settings
    figures: list[dict[str, Any]] = field(default_factory=list)  # [[figure]]: title, rows (table rows), titles
    pivot: bool = False  # row labels are <defense>.<attack>: the report shows defense x attack tables

    def runs(self, budget: str = "lite") -> list[SuiteRun]:
        if budget not in self.budgets:
            raise ConfigError(f"suite {self.name} has no budget {budget!r}; it has {', '.join(self.budgets)}")
        base, _ = read_config_file(self.preset)
        settings = dict(self.budgets[budget])
        grid = {**self.grid, **settings.pop("grid", {})}  # a budget may narrow the grid ([budget.lite.grid])
        labels = [r["label"] for r in self.rows]
        out: list[SuiteRun] = []
        by_identity: dict[str, SuiteRun] = {}
        names: dict[tuple[str, tuple], str] = {}  # (row label, grid point) -> run name
        for row in self.rows:
            label = row["label"]
            where = f"suite {self.name}, row {label}"
            per_budget = row.get(budget, {})
            if not isinstance(per_budget, dict):
                raise ConfigError(f"{where}: {budget} = ... must be a table of overrides for that budget")
            overrides = {k: v for k, v in row.items() if k not in SUITE_ONLY_ROW_KEYS and k not in self.budgets
                         and k not in BUDGETS}
            overrides.update(per_budget)
            keys = [k for k in grid if k not in overrides]
            merged = {**row, **per_budget}
            ref, fraction = merged.get("rlr_from_val_acc_of"), merged.get("rlr_from_val_acc_fraction")
            if "rlr_from_val_acc" in per_budget:  # an absolute trigger for this budget replaces the relative one
                ref = fraction = None
            overrides = {k: v for k, v in overrides.items() if k not in SUITE_ONLY_ROW_KEYS}
            if (ref is None) != (fraction is None):
                raise ConfigError(f"{where}: give rlr_from_val_acc_of and rlr_from_val_acc_fraction together")
            if ref is not None:
                if ref not in labels or labels.index(ref) >= labels.index(label):
                    raise ConfigError(f"{where}: rlr_from_val_acc_of {ref!r} must name a row above it "
                                      f"(rows: {', '.join(labels)})")
                if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
                    raise ConfigError(f"{where}: rlr_from_val_acc_fraction must be a number in (0, 1], "
                                      f"not {fraction!r}")
            for values in itertools.product(*(grid[k] for k in keys)):
                point = dict(zip(keys, values))
                key = " ".join([label] + [f"{k}={fmt_value(v)}" for k, v in point.items() if k != "seed"])
                data = {**base, **settings, **overrides, **point}
                notes = []
                named = dict(point)
                if self.noise_without_clip == "zero" and data.get("clip_norm", 0) == 0 \
                        and data.get("noise_sigma", 0) > 0:
                    notes.append("run as noise_sigma 0: with M 0 the authors' code adds no noise (std sigma * M)")
                    data["noise_sigma"] = 0.0
                    if "noise_sigma" in named:
                        named["noise_sigma"] = 0.0
                data["name"] = f"{self.name}-{label}" + "".join(f"-{k}={fmt_value(v)}" for k, v in named.items())
                after = None
                if ref is not None:
                    ref_row = self.rows[labels.index(ref)]
                    pinned = set(ref_row) | set(ref_row.get(budget, {}))
                    ref_point = tuple((k, v) for k, v in point.items() if k in grid and k not in pinned)
                    after = names.get((ref, ref_point))
                    if after is None:
                        raise ConfigError(f"{where}: row {ref!r} has no run at the grid point {point}; the "
                                          "referenced row must be crossed with this row's grid keys")
                    data["rlr_from_val_acc"] = float(fraction)  # a placeholder that validates; the sweep resolves it
                cfg = make_config(data, f"{where}, grid point {point}")
                names[(label, tuple(point.items()))] = cfg.name
                identity = json.dumps({**cfg.model_dump(mode="json"), "name": None}, sort_keys=True) + str(after)
                if identity in by_identity:
                    by_identity[identity].aliases.append(key)
                    by_identity[identity].alias_notes[key] = notes
                    continue
                run = SuiteRun(label, point, cfg, key, after, None if fraction is None else float(fraction), [],
                               notes)
                by_identity[identity] = run
                out.append(run)
        return out

    def only(self, labels: Sequence[str]) -> "Suite":
        """This suite with only the rows ``labels`` (``robustlr sweep --rows``): the same run names, so the
        runs land beside the other rows' in one results folder and table. A row whose RLR trigger is
        relative to another row (``rlr_from_val_acc_of``) needs that row chosen too."""
        have = [r["label"] for r in self.rows]
        unknown = [lb for lb in labels if lb not in have]
        if unknown:
            raise ConfigError(f"suite {self.name} has no row {', '.join(map(repr, unknown))}"
                              f"{did_you_mean(unknown[0], have)}; its rows: {', '.join(have)}")
        rows = [r for r in self.rows if r["label"] in labels]
        for r in rows:
            refs = {r.get("rlr_from_val_acc_of")} | {v.get("rlr_from_val_acc_of") for k, v in r.items()
                                                       if k in BUDGETS and isinstance(v, dict)}
            missing = sorted(x for x in refs if x is not None and x not in labels)
            if missing:
                raise ConfigError(f"suite {self.name}, row {r['label']}: its RLR trigger is relative to row(s) "
                                  f"{', '.join(missing)} (rlr_from_val_acc_of): add them to --rows")
        return replace(self, rows=rows, figures=[f for f in self.figures if set(f["rows"]) <= set(labels)])

    def row_keys(self, budget: str = "lite") -> list[str]:
        """The table rows in suite order (aliases right after the run they share)."""
        keys: list[str] = []
        for run in self.runs(budget):
            for k in [run.key, *run.aliases]:
                if k not in keys:
                    keys.append(k)
        return keys


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def load_suite(name_or_path: str | Path) -> Suite:
    path = Path(name_or_path)
    if not path.is_file():
        path = SUITES_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise ConfigError(f"suite {str(name_or_path)!r} not found{did_you_mean(name_or_path, list_suites())}; "
                              f"give a TOML file or one of: "
                              f"{', '.join(list_suites())}")
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid suite file: {exc}") from None
    unknown = set(data) - set(TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; a suite has {', '.join(TOP_LEVEL_KEYS)}")
    for key in ("name", "preset", "row"):
        if key not in data:
            raise ConfigError(f"{path}: a suite needs {key!r}")
    if data.get("noise_without_clip", "refuse") not in ("refuse", "zero"):
        raise ConfigError(f"{path}: noise_without_clip must be 'refuse' or 'zero', "
                          f"not {data['noise_without_clip']!r}")
    rows = data["row"]
    if not all(isinstance(r, dict) and "label" in r for r in rows):
        raise ConfigError(f"{path}: every [[row]] needs a label")
    dup = sorted({r["label"] for r in rows if [x["label"] for x in rows].count(r["label"]) > 1})
    if dup:
        raise ConfigError(f"{path}: row labels must be unique; repeated: {', '.join(dup)}")
    figures = data.get("figure", [])
    if not all(isinstance(f, dict) and isinstance(f.get("rows"), list) and f["rows"] for f in figures):
        raise ConfigError(f"{path}: every [[figure]] needs rows = [table rows]")
    grid = data.get("grid", {})
    bad = [k for k, v in grid.items() if not isinstance(v, list) or not v]
    for name, b in data.get("budget", {}).items():
        bgrid = b.get("grid", {}) if isinstance(b, dict) else {}
        bad += [f"budget.{name}.grid.{k}" for k, v in bgrid.items() if not isinstance(v, list) or not v]
    if bad:
        raise ConfigError(f"{path}: grid keys {bad} must be non-empty lists of values")
    pivot = data.get("pivot", False)
    if not isinstance(pivot, bool):
        raise ConfigError(f"{path}: pivot must be true or false, not {pivot!r}")
    if pivot:
        bad_labels = [r["label"] for r in rows if r["label"].count(".") != 1]
        if bad_labels:
            raise ConfigError(f"{path}: with pivot = true every row label is <defense>.<attack> (one dot); "
                              f"not: {', '.join(bad_labels)}")
    first = text.splitlines()[0] if text else ""
    return Suite(data["name"], data["preset"], first.lstrip("# ").strip() if first.startswith("#") else "",
                 data.get("budget", {"paper": {}}), rows, grid, str(data.get("paper", "")),
                 data.get("noise_without_clip", "refuse"), {k: str(v) for k, v in data.get("notes", {}).items()},
                 figures, pivot)
