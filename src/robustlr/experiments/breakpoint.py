"""``robustlr breakpoint SUITE``: where a defense breaks, found by bisection over a grid.

For every row of a suite (a defense against an attack, ``<defense>.<attack>`` in a pivot suite)
and every seed, the smallest value of one config key (``corrupt_fraction`` by default; for a
norm-bounded attack its budget, e.g. ``pgd_radius`` or ``boost_factor``) on a sorted grid at
which the run's final metric passes a level: backdoor accuracy >= 50 % by default ("the backdoor
took"), or, with ``direction = "below"``, e.g. validation accuracy <= a level for the untargeted
attacks. The search assumes the metric is monotone in the key along the grid (more corrupt agents
never help the defense) and bisects: a grid of ``n`` values costs about ``log2(n + 1)`` runs per
row and seed instead of ``n``. Rows and seeds search independently, so the seeds' breakpoints
give the spread; all probes of one bisection step run together, as one sweep.

The probes are ordinary suite runs: the row crossed with the grid point ``{key: value, seed: s}``,
named as a sweep with that grid would name them (``<suite>-<label>-<key>=<value>-seed=<s>``),
run by :func:`robustlr.experiments.sweep.sweep` in ``RESULTS/<suite>`` and recorded in the
results store. So the search is resumable (a finished probe is read back, not run again; an
interrupted one resumes from its checkpoint) and its runs are stored like any sweep's. The
outcome is written to ``RESULTS/<suite>/breakpoints-<key>.json`` (:class:`BreakpointReport`).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from robustlr.errors import ConfigError
from robustlr.experiments.backends import Backend
from robustlr.experiments.suite import Suite, SuiteRun, fmt_value
from robustlr.experiments.sweep import sweep
from robustlr.sim.checkpoint import atomic_write_text
from robustlr.sim.records import read_summary

__all__ = ["BreakpointReport", "Search", "find_breakpoints", "METRICS"]

#: the run summary's metrics a breakpoint can be defined on (all in [0, 1])
METRICS = ("backdoor_acc", "val_acc", "base_acc", "backdoor_auc")


@dataclass
class Search:
    """One row and seed's bisection: ``probes`` maps a grid index to the metric measured there."""

    row: str
    seed: int
    n: int  # grid size
    lo: int = 0
    hi: int = -1  # -1: set to n (not broken anywhere on the grid) in __post_init__
    probes: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hi < 0:
            self.hi = self.n

    @property
    def done(self) -> bool:
        return self.lo >= self.hi

    @property
    def next_index(self) -> int:
        return (self.lo + self.hi) // 2

    def observe(self, index: int, broken: bool) -> None:
        if broken:
            self.hi = index
        else:
            self.lo = index + 1

    @property
    def index(self) -> int | None:
        """The breakpoint's grid index (None: the defense held at every value of the grid)."""
        return self.lo if self.lo < self.n else None


@dataclass
class BreakpointReport:
    """What ``breakpoints-<key>.json`` holds."""

    suite: str
    budget: str
    key: str
    values: list[float]
    metric: str
    level: float
    direction: Literal["above", "below"]
    seeds: list[int]
    # per row: per seed its breakpoint (None: held on the whole grid) and its probes {value: metric}
    rows: dict[str, list[dict[str, Any]]]

    def breakpoints(self, row: str) -> list[float | None]:
        return [r["breakpoint"] for r in self.rows[row]]

    def by_seed(self, row: str) -> dict[int, float | None]:
        """The row's breakpoint per seed searched (a merged report's rows may hold different seeds)."""
        return {r["seed"]: r["breakpoint"] for r in self.rows[row]}

    def summary(self, row: str) -> str:
        """``0.3 +- 0.1`` over the seeds, ``> 0.5`` where every seed held, ``0.3 +- 0.1 (1 of 3 held)``."""
        points = self.breakpoints(row)
        found = [p for p in points if p is not None]
        if not found:
            return f"> {fmt_value(self.values[-1])}"
        mean = statistics.fmean(found)
        sd = statistics.stdev(found) if len(found) > 1 else 0.0  # exact rational arithmetic: 0 for equal values
        text = f"{mean:.3g} +- {sd:.2g}" if len(found) > 1 else f"{mean:.3g}"
        held = len(points) - len(found)
        return text + (f" ({held} of {len(points)} held)" if held else "")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def read(cls, path: str | Path) -> "BreakpointReport":
        return cls(**json.loads(Path(path).read_text()))

    def merged_into(self, old: "BreakpointReport") -> "BreakpointReport":
        """This report with what an earlier search of the same grid, level and direction found that
        this one did not search: other rows, and other seeds of the same rows (a search of seeds 1-2
        adds them to seed 0's file instead of replacing it; a row and seed searched again takes the
        new answer). An earlier report of other settings is replaced."""
        same = (old.suite, old.budget, old.key, list(old.values), old.metric, old.level, old.direction) == (
            self.suite, self.budget, self.key, list(self.values), self.metric, self.level, self.direction)
        if not same:
            return self
        rows: dict[str, list[dict[str, Any]]] = {}
        for label in [*old.rows, *(k for k in self.rows if k not in old.rows)]:
            by_seed = {e["seed"]: e for e in old.rows.get(label, [])}
            by_seed.update({e["seed"]: e for e in self.rows.get(label, [])})
            rows[label] = [by_seed[k] for k in sorted(by_seed)]
        seeds = sorted({*old.seeds, *self.seeds})
        return BreakpointReport(self.suite, self.budget, self.key, list(self.values), self.metric, self.level,
                                self.direction, seeds, rows)


class _Probes(Suite):
    """The suite's rows at the probes of one bisection step (a sweep runs them as any suite's)."""

    def __init__(self, base: Suite, runs: list[SuiteRun]) -> None:
        super().__init__(base.name, base.preset, base.description, base.budgets, base.rows, {}, base.paper,
                         base.noise_without_clip, base.notes, [], base.pivot)
        self._runs = runs

    def runs(self, budget: str = "lite") -> list[SuiteRun]:
        return list(self._runs)


def _check(suite: Suite, key: str, values: Sequence[float], metric: str, level: float, budget: str,
           rows: Sequence[str] | None) -> list[str]:
    if metric not in METRICS:
        raise ConfigError(f"--metric {metric!r}: choose one of {', '.join(METRICS)}")
    if not 0 <= level <= 1:
        raise ConfigError(f"--level {level}: the metrics are shares in [0, 1] (0.5 for 50 %)")
    if len(values) < 1 or list(values) != sorted(set(values)):
        raise ConfigError(f"--values {', '.join(map(str, values))}: give distinct values in increasing order")
    if key == "seed":
        raise ConfigError("the breakpoint searches over a config key; seeds are given with --seeds")
    labels = [r["label"] for r in suite.rows]
    chosen = list(rows) if rows else labels
    unknown = [r for r in chosen if r not in labels]
    if unknown:
        raise ConfigError(f"suite {suite.name} has no row {', '.join(map(repr, unknown))}; its rows: {', '.join(labels)}")
    pinned = [r["label"] for r in suite.rows if r["label"] in chosen and (key in r or key in r.get(budget, {}))]
    if pinned:
        raise ConfigError(f"row(s) {', '.join(pinned)} of suite {suite.name} set {key} themselves, so it cannot be "
                          f"searched over for them: leave them out with --rows, or remove {key} from them")
    # every probe's config must validate (e.g. corrupt_fraction 0.05 of 10 agents is no corrupt agent at all)
    for value in (values[0], values[-1]):
        _runs_at(suite, budget, [(label, value, 0) for label in chosen], key)
    return chosen


def _runs_at(suite: Suite, budget: str, probes: list[tuple[str, float, int]], key: str) -> list[SuiteRun]:
    """The suite runs of ``(row label, value, seed)`` probes, named as a sweep with that grid names them."""
    out = []
    by_point: dict[tuple[float, int], list[str]] = {}
    for label, value, seed in probes:
        by_point.setdefault((value, seed), []).append(label)
    for (value, seed), labels in by_point.items():
        sub = Suite(suite.name, suite.preset, suite.description, suite.budgets,
                    [r for r in suite.rows if r["label"] in labels], {key: [value], "seed": [seed]}, suite.paper,
                    suite.noise_without_clip, suite.notes, [], suite.pivot)
        try:
            out.extend(sub.runs(budget))
        except ConfigError as exc:
            raise ConfigError(f"{key} = {fmt_value(value)}: {exc}") from None
    return out


def find_breakpoints(suite: Suite, results: Path, key: str = "corrupt_fraction",
                     values: Sequence[float] = (0.1, 0.2, 0.3, 0.4), seeds: Sequence[int] = (0, 1, 2),
                     level: float = 0.5, metric: str = "backdoor_acc", direction: Literal["above", "below"] = "above",
                     rows: Sequence[str] | None = None, budget: str = "lite", jobs: int | None = None,
                     data_dir: str | None = None, backend: Backend | None = None,
                     on_step: Callable[[int, list[SuiteRun]], None] | None = None) -> BreakpointReport:
    """Bisect every row and seed of ``suite`` (see the module's text); return and write the report.

    ``on_step(step, runs)`` hears of each bisection step before it runs. A failed probe stops the
    search with a :class:`robustlr.errors.RobustlrError` naming it (its folder's ``sweep.log``)."""
    from robustlr.errors import RobustlrError

    if direction not in ("above", "below"):
        raise ConfigError(f"--direction {direction!r}: above (the metric reaches the level) or below")
    chosen = _check(suite, key, list(values), metric, level, budget, rows)
    values = list(values)
    searches = [Search(label, int(seed), len(values)) for label in chosen for seed in seeds]
    step = 0
    while True:
        active = [s for s in searches if not s.done]
        if not active:
            break
        step += 1
        probes = [(s.row, values[s.next_index], s.seed) for s in active]
        runs = _runs_at(suite, budget, probes, key)
        if on_step is not None:
            on_step(step, runs)
        state = sweep(_Probes(suite, runs), results, budget, jobs, data_dir, backend=backend)
        if state.failed:
            raise RobustlrError(f"breakpoint: {len(state.failed)} probe run(s) failed ({', '.join(state.failed)}); see "
                                f"sweep.log in their folders under {results / suite.name}. Run the same command "
                                f"again to go on (finished probes are kept)")
        by_name = {r.config.name: r for r in runs}
        for s, (label, value, seed) in zip(active, probes):
            run = next(r for r in by_name.values() if r.label == label and r.point == {key: value, "seed": seed})
            summary = read_summary(results / suite.name / run.config.name / "summary.json")
            measured = getattr(summary, metric)
            if measured is None:
                raise RobustlrError(f"breakpoint: run {run.config.name} has no {metric} in its summary")
            s.probes[s.next_index] = float(measured)
            s.observe(s.next_index, measured >= level if direction == "above" else measured <= level)
    report = BreakpointReport(
        suite.name, budget, key, list(values), metric, level, direction, [int(s) for s in seeds],
        {label: [{"seed": s.seed, "breakpoint": None if s.index is None else values[s.index],
                  "probes": {fmt_value(values[i]): v for i, v in sorted(s.probes.items())}}
                 for s in searches if s.row == label] for label in chosen})
    out = results / suite.name / f"breakpoints-{key}.json"
    if out.exists():
        report = report.merged_into(BreakpointReport.read(out))
    atomic_write_text(out, report.to_json())
    return report
