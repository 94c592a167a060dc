"""``robustlr suites``, ``robustlr sweep``, ``robustlr runs`` and ``robustlr report``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from robustlr.cli._common import (DataDirOpt, command_line, console, fail, fmt_eta, is_live, plain, stopped, styled,
                                  user_errors)
from robustlr.experiments.suite import fmt_value
from robustlr.sim.lifecycle import Terminated

ResultsOpt = typer.Option(Path("results"), "--results", "-r", help="the results folder (run folders and results.sqlite)")


def _status_table(state, suite_name: str):
    from rich.table import Table

    from robustlr.experiments.sweep import rounds_done

    t = Table(title=f"sweep {suite_name}: {state.done} done ({state.skipped} before), {len(state.running)} running, "
                    f"{state.left} left, {len(state.failed)} failed")
    t.add_column("run")
    t.add_column("round", justify="right")
    t.add_column("ETA", justify="right")
    for name, (folder, rounds, start) in state.running.items():
        k = rounds_done(folder)
        eta = "-" if k == 0 else f"{(time.time() - start) / k * (rounds - k):.0f} s"
        t.add_row(name, f"{k}/{rounds}", eta)
    return t


def _warn(message: str, con=None) -> None:
    """One warning line (stderr; on the sweep's live display, above it), no piece read as markup."""
    from rich.text import Text

    from robustlr.cli._common import err

    (con or err).print(Text.assemble(("warning:", "yellow"), " ", message), highlight=False, soft_wrap=True)


class _SweepLines:
    """A sweep's progress as plain lines: the runs finished before, then one line per run that ends
    (done or failed) with the runs done and left and the sweep's ETA (the mean wall time per run
    finished here, shared by the runs at once, times the runs not finished)."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.start = clock()
        self.running: set[str] = set()
        self.finished_here = 0
        self.said_skipped = False

    def __call__(self, state) -> None:
        if not self.said_skipped:
            self.said_skipped = True
            if state.skipped:
                console.print(f"{state.skipped} of {state.total} runs finished before; {state.total - state.skipped} "
                              f"to run", highlight=False)
        ended = self.running - set(state.running)
        self.running = set(state.running)
        for name in sorted(ended):
            self.finished_here += 1
            what = "failed" if name in state.failed else "done"
            not_done = state.total - state.done - len(state.failed)
            eta = (self.clock() - self.start) / self.finished_here * not_done
            console.print(f"run {name} {what}: {state.done}/{state.total} done, {not_done} left"
                          f"{f', {len(state.failed)} failed' if state.failed else ''}, ETA {fmt_eta(eta)}",
                          highlight=False, soft_wrap=True)


@user_errors
def suites() -> None:
    """The suites shipped with robustlr: what each reproduces and how many runs each budget takes."""
    from rich.table import Table

    from robustlr.experiments.suite import list_suites, load_suite

    t = Table(title="suites (robustlr sweep NAME --budget lite|paper)")
    for col in ("suite", "reproduces", "lite runs", "paper runs"):
        t.add_column(col, justify="right" if col.endswith("runs") else "left")
    for name in list_suites():
        s = load_suite(name)
        t.add_row(name, s.description, *(str(len(s.runs(b))) if b in s.budgets else "-" for b in ("lite", "paper")))
    console.print(t)


@user_errors
def sweep(
    suite: str = typer.Argument(..., help="a suite name (see `robustlr suites`) or a suite TOML file"),
    budget: str = typer.Option("lite", "--budget", help="lite (minutes on 2 cores) or paper (the paper's R, E, B)"),
    results: Path = ResultsOpt,
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="runs at once (default: the cores, or on Ray the "
                                       "cluster's CPUs // --cpus-per-run); locally each run gets cores // jobs threads"),
    data_dir: Optional[Path] = DataDirOpt,
    backend: str = typer.Option("local", "--backend", help="local (child processes here) or ray (each run a Ray "
                                "task; see docs/ray.md)"),
    address: Optional[str] = typer.Option(None, "--address", help="ray: the cluster's head, HOST:PORT or auto "
                                          "(default: start a Ray cluster on this machine)"),
    cpus_per_run: int = typer.Option(1, "--cpus-per-run", help="ray: CPUs (and threads) each run holds"),
    storage: str = typer.Option("ship", "--storage", help="ray: ship (run folders stream back to this machine) or "
                                "shared (RESULTS is mounted at the same path on every node)"),
    retries: int = typer.Option(2, "--retries", help="ray: how often a run whose worker or node died starts again "
                                "from its last checkpoint"),
    rows: Optional[str] = typer.Option(None, "--rows", help="only these rows of the suite, comma-separated "
                                       "(default: all); their runs are named as in the whole suite"),
) -> None:
    """Run a suite's grid: finished runs are skipped, interrupted ones resume; results go to RESULTS/results.sqlite."""
    from robustlr.experiments.suite import load_suite

    runner = _backend(backend, address, cpus_per_run, storage, retries)
    s = load_suite(suite)
    if rows:
        s = s.only([r.strip() for r in rows.split(",") if r.strip()])
    console.print(styled((s.name, "bold"), f" ({budget}): {s.description}"))
    try:
        state = _sweep_shown(s, results, budget, jobs, data_dir, runner)
    except (KeyboardInterrupt, Terminated) as exc:
        stopped(exc, "finished runs are kept in the store, interrupted ones go on from their last checkpoint. "
                "To go on, run the same command again",
                command_line("sweep", suite, options={"--budget": budget, "-r": results, "-j": jobs,
                                                      "--data-dir": data_dir, "--rows": rows,
                                                      **({"--backend": backend, "--address": address,
                                                          "--cpus-per-run": cpus_per_run, "--storage": storage,
                                                          "--retries": retries} if backend == "ray" else {})}))
    if state.failed:
        fail(f"{len(state.failed)} run(s) failed: {', '.join(state.failed)}; see sweep.log in their folders")
    console.print(f"{state.done} runs done; the store: {results / 'results.sqlite'} (`robustlr runs -r {results}`)")


def _backend(backend: str, address: Optional[str], cpus_per_run: int, storage: str, retries: int):
    """The sweep's backend from the options, refusing Ray options without ``--backend ray``."""
    from robustlr.errors import ConfigError

    if backend == "local":
        given = [opt for opt, value, default in (("--address", address, None), ("--cpus-per-run", cpus_per_run, 1),
                                                 ("--storage", storage, "ship"), ("--retries", retries, 2))
                 if value != default]
        if given:
            raise ConfigError(f"{', '.join(given)} apply to --backend ray only; add --backend ray, or drop them")
        return None
    if backend != "ray":
        raise ConfigError(f"--backend {backend!r}: choose local (child processes here) or ray (a Ray cluster)")
    from robustlr.experiments.ray_backend import RayBackend

    return RayBackend(address=address, cpus_per_run=cpus_per_run, storage=storage, retries=retries)


def _sweep_shown(s, results: Path, budget: str, jobs: Optional[int], data_dir: Optional[Path], backend=None):
    """Run the sweep, showing its progress: a live table on a terminal, plain lines elsewhere."""
    from rich.live import Live

    from robustlr.experiments.sweep import sweep as run_sweep

    if not is_live():  # a file or a pipe: one line per run that ends (a live table shows only when it stops)
        state = run_sweep(s, results, budget, jobs, str(data_dir) if data_dir else None,
                          on_update=_SweepLines(), on_warning=_warn, backend=backend)
        console.print(_status_table(state, s.name))
    else:
        with Live(console=console, refresh_per_second=2, transient=False) as live:
            state = run_sweep(s, results, budget, jobs, str(data_dir) if data_dir else None,
                              on_update=lambda st: live.update(_status_table(st, s.name)),
                              on_warning=lambda m: _warn(m, live.console), backend=backend)
            live.update(_status_table(state, s.name))
    return state


def _floats(text: str, option: str) -> list[float]:
    from robustlr.errors import ConfigError

    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} {text!r}: give numbers separated by commas, e.g. 0.1,0.2,0.3") from None


@user_errors
def breakpoint_cmd(
    suite: str = typer.Argument(..., help="a suite name (see `robustlr suites`) or a suite TOML file"),
    key: str = typer.Option("corrupt_fraction", "--key", help="the config key searched over (corrupt_fraction; for "
                            "a norm-bounded attack e.g. pgd_radius or boost_factor)"),
    values: str = typer.Option("0.1,0.2,0.3,0.4", "--values", help="the grid, increasing, comma-separated"),
    seeds: str = typer.Option("0,1,2", "--seeds", help="seeds, comma-separated (each searches on its own: the spread)"),
    level: float = typer.Option(0.5, "--level", help="the level the metric must pass (0.5 = 50 %)"),
    metric: str = typer.Option("backdoor_acc", "--metric", help="backdoor_acc, val_acc, base_acc or backdoor_auc"),
    direction: str = typer.Option("above", "--direction", help="above: broken when metric >= level (a backdoor); "
                                  "below: when metric <= level (validation accuracy under an untargeted attack)"),
    rows: Optional[str] = typer.Option(None, "--rows", help="the suite's rows to search, comma-separated (default: all)"),
    budget: str = typer.Option("lite", "--budget", help="lite (minutes on 2 cores) or paper"),
    results: Path = ResultsOpt,
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="runs at once (default: the cores)"),
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """Find where each defense breaks: per row and seed, the smallest KEY on the grid at which the metric
    passes the level, by bisection (resumable; probes are stored like a sweep's runs). Writes
    RESULTS/SUITE/breakpoints-KEY.json and .png; a later search of other rows or seeds with the same grid
    adds to that file."""
    from rich.table import Table

    from robustlr.experiments.breakpoint import find_breakpoints
    from robustlr.experiments.suite import load_suite
    from robustlr.reports.plots import plot_breakpoints

    s = load_suite(suite)
    grid, seed_list = _floats(values, "--values"), [int(v) for v in _floats(seeds, "--seeds")]
    chosen = [r.strip() for r in rows.split(",")] if rows else None
    console.print(styled((s.name, "bold"), f": breakpoints over {key} in {values} ({metric} {direction} {level})"))
    try:
        rep = find_breakpoints(s, results, key, grid, seed_list, level, metric, direction, chosen, budget, jobs,
                               str(data_dir) if data_dir else None,
                               on_step=lambda step, runs: console.print(f"step {step}: {len(runs)} probe run(s)"))
    except (KeyboardInterrupt, Terminated) as exc:
        stopped(exc, "finished probes are kept. To go on, run the same command again",
                command_line("breakpoint", suite, options={"--key": key, "--values": values, "--seeds": seeds,
                                                           "--level": level, "--metric": metric,
                                                           "--direction": direction, "--rows": rows,
                                                           "--budget": budget, "-r": results, "-j": jobs,
                                                           "--data-dir": data_dir}))
    t = Table(title=f"{s.name}: smallest {key} at which {metric} {'>=' if direction == 'above' else '<='} {level}")
    t.add_column("row")
    t.add_column("breakpoint (mean +- sd)")
    for sd in rep.seeds:
        t.add_column(f"seed {sd}", justify="right")
    for row in rep.rows:
        found = rep.by_seed(row)
        t.add_row(row, rep.summary(row), *("-" if sd not in found else "held" if found[sd] is None
                                           else fmt_value(found[sd]) for sd in rep.seeds))
    console.print(t)
    png = plot_breakpoints(rep, results / s.name / f"breakpoints-{key}.png")
    console.print(f"written: {results / s.name / f'breakpoints-{key}.json'}, {png}")


@user_errors
def runs(
    results: Path = ResultsOpt,
    where: Optional[str] = typer.Option(None, "--where", help="an SQL condition, e.g. \"aggregator='comed' and rlr_threshold>0\""),
    rebuild: bool = typer.Option(False, "--rebuild", help="rebuild the store from the run folders first (damaged "
                                 "run folders are skipped, each named; the old store is replaced only when done)"),
    as_json: bool = typer.Option(False, "--json", help="print the rows as JSON"),
) -> None:
    """List the runs of a results folder (from its results store), optionally filtered."""
    from rich.table import Table

    from robustlr.experiments import store

    if rebuild:
        console.print(f"rebuilt the store from {store.rebuild(results, warn=_warn)} run folders")
    if not (results / store.DB_NAME).exists():
        fail(f"{results} holds no results store; run `robustlr sweep` or pass --rebuild")
    rows = store.query(results, where)
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    t = Table(title=f"{len(rows)} runs in {results}")
    for col in ("suite", "name", "seed", "status", "val_acc", "base_acc", "backdoor_acc"):
        t.add_column(col, justify="right" if col.endswith("acc") or col == "seed" else "left")
    for r in rows:
        t.add_row(*(f"{100 * r[c]:.1f}" if c.endswith("acc") and r[c] is not None else str(r[c])
                    for c in ("suite", "name", "seed", "status", "val_acc", "base_acc", "backdoor_acc")))
    console.print(t)


@user_errors
def report(
    results: Path = typer.Argument(Path("results"), help="a results folder (written by `robustlr sweep`)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="where report.md, report.html and the PNGs go "
                                       "(default: RESULTS/report)"),
    tensorboard: Optional[Path] = typer.Option(None, "--tensorboard", help=plain(
        "also write TensorBoard event files (one folder per run) here; needs robustlr[tensorboard]")),
) -> None:
    """Every suite of a results folder: tables beside the paper's numbers and figures (Markdown + HTML)."""
    from robustlr.experiments import store
    from robustlr.reports.report import build_report

    if not (results / store.DB_NAME).exists():
        fail(f"{results} holds no results store; run `robustlr sweep` first (or `robustlr runs --rebuild`)")
    md, page = build_report(results, out or results / "report", warn=_warn)
    console.print(f"wrote {md} and {page}")
    if tensorboard is not None:
        from robustlr.reports.tensorboard import export_tensorboard

        n = export_tensorboard(results, tensorboard, warn=_warn)
        console.print(f"wrote TensorBoard events of {n} runs under {tensorboard} (`tensorboard --logdir {tensorboard}`)")
