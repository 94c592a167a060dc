"""The ``robustlr`` command."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Federated learning under backdoor attack, and the robust learning rate defense (Ozdayi et al., AAAI 2021).",
)
console = Console(stderr=False)
err = Console(stderr=True)

DataDirOpt = typer.Option(None, "--data-dir", help="folder holding the datasets (else $ROBUSTLR_DATA_DIR, "
                          "~/.cache/robustlr, system packages, download)")


def _fail(msg: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {msg}", highlight=False, markup=True)
    raise typer.Exit(code)


def _progress_callback(progress, task, prefix: str = ""):
    def on_round(rec: dict) -> None:
        parts = []
        if "val_acc" in rec:
            parts.append(f"val {100 * rec['val_acc']:.1f}%  backdoor {100 * rec['backdoor_acc']:.1f}%")
        if "flipped_fraction" in rec:
            parts.append(f"flipped {100 * rec['flipped_fraction']:.1f}%")
        parts.append(f"{rec['seconds']:.1f}s/round")
        progress.update(task, advance=1, description=f"{prefix}round {rec['round']}", status="  ".join(parts))

    return on_round


def _make_progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[status]}"), console=console, transient=False)


@app.command()
def run(
    config: str = typer.Argument(..., help="a TOML config file or a preset name (see `robustlr presets`)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="override a key: --set rounds=20 (repeatable)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output folder (default runs/<name>); "
                                       "an existing folder of the same config resumes from its checkpoint"),
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """Run one experiment: writes config.json, metrics.jsonl, summary.json and model.pt to the output folder."""
    from robustlr.config import ConfigError, load_config
    from robustlr.report import summary_table
    from robustlr.simulation import ResumeError, run_experiment

    try:
        cfg = load_config(config, set_)
    except ConfigError as exc:
        _fail(str(exc))
    out = out or Path("runs") / cfg.name
    console.print(f"[bold]{cfg.name}[/]: {cfg.dataset}, {cfg.aggregator}"
                  f"{' + RLR θ=' + str(cfg.rlr_threshold) if cfg.rlr_threshold else ''}, R={cfg.rounds} -> {out}")
    try:
        with _make_progress() as progress:
            task = progress.add_task("starting", total=cfg.rounds, status="")
            res = run_experiment(cfg, out, data_dir=str(data_dir) if data_dir else None,
                                 on_round=_progress_callback(progress, task))
    except (ResumeError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    console.print(summary_table(res.summary, title=f"{cfg.name}: final metrics"))
    console.print(f"results in {out}/")


@app.command()
def demo(
    setting: str = typer.Option("iid", "--setting", help="iid (Fashion-MNIST), noniid (FEMNIST LEAF), cifar (CIFAR-10 DBA)"),
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="output folder"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="override a key in all three runs"),
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """The paper's headline in minutes: FedAvg without attack, FedAvg under attack, FedAvg + RLR under attack.

    Prints the three runs' final accuracies beside the paper's, writes OUT/summary.json and OUT/demo.png.
    """
    from robustlr.config import ConfigError
    from robustlr.demo import DEMOS, demo_configs, run_demo
    from robustlr.report import comparison_table

    if setting not in DEMOS:
        _fail(f"unknown setting {setting!r}; choose one of {', '.join(DEMOS)}")
    try:
        cfgs = demo_configs(setting, set_)
    except ConfigError as exc:
        _fail(str(exc))
    first = next(iter(cfgs.values()))
    console.print(f"[bold]robustlr demo ({setting})[/]: 3 runs x {first.rounds} rounds on {first.dataset} -> {out}")
    try:
        with _make_progress() as progress:
            tasks = {k: progress.add_task(k, total=c.rounds, status="") for k, c in cfgs.items()}
            cbs = {k: _progress_callback(progress, t, prefix=f"{k}: ") for k, t in tasks.items()}
            summary = run_demo(setting, out, data_dir=str(data_dir) if data_dir else None, extra=set_,
                               on_round=lambda k, rec: cbs[k](rec))
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    console.print(comparison_table(setting, summary["runs"]))
    console.print(f"data: {summary['data_source']}; wall time {summary['wall_seconds']:.0f} s; "
                  f"paper numbers are at the paper's full budget. Plot: {out / 'demo.png'}; summary: {out / 'summary.json'}")


@app.command()
def presets() -> None:
    """List the preset configs (usable by name in `robustlr run`)."""
    from rich.table import Table

    from robustlr.config import PRESETS_DIR, list_presets

    table = Table(title=f"presets ({PRESETS_DIR})")
    table.add_column("name")
    table.add_column("description")
    for name in list_presets():
        first = (PRESETS_DIR / f"{name}.toml").read_text().splitlines()
        desc = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
        table.add_row(name, desc)
    console.print(table)


@app.command("config")
def show_config(
    config: str = typer.Argument(..., help="a TOML config file or a preset name"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="override a key (repeatable)"),
) -> None:
    """Validate a config and print it resolved, as JSON (nothing is run)."""
    from robustlr.config import ConfigError, load_config

    try:
        cfg = load_config(config, set_)
    except ConfigError as exc:
        _fail(str(exc))
    console.print_json(cfg.to_json())


@app.command()
def data(
    dataset: str = typer.Argument("fashion-mnist", help="fashion-mnist (more datasets: see the README)"),
    data_dir: Optional[Path] = DataDirOpt,
    download: bool = typer.Option(False, "--download", help="download missing files into the cache when online"),
) -> None:
    """Show where each file of a dataset is found (verified by sha256); exit 1 if one is missing."""
    from robustlr.data.store import DataNotFoundError, locate

    if dataset != "fashion-mnist":
        _fail(f"unknown dataset {dataset!r}; `robustlr data` checks: fashion-mnist")
    from robustlr.data.fashion_mnist import DATASET_FILES

    missing = False
    for key, spec in DATASET_FILES.items():
        try:
            path = locate(spec, data_dir=data_dir, allow_download=download)
            console.print(f"{key:<13} {path}")
        except DataNotFoundError as exc:
            missing = True
            err.print(f"{key:<13} [red]missing[/]\n{exc}", highlight=False)
    if missing:
        raise typer.Exit(1)


@app.command()
def bench(
    preset: str = typer.Option("iid-fedavg", "--preset", help="the setting to time (the paper's iid setting by default)"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    steps: int = typer.Option(6, "--steps", help="batches per agent per timed repeat"),
    repeats: int = typer.Option(3, "--repeats", help="timed repeats after one warm-up (median reported)"),
    agents: Optional[int] = typer.Option(None, "--agents", help="agents per timed round (default: the preset's K)"),
    aggregation: bool = typer.Option(False, "--aggregation", help="time the aggregation rules instead "
                                     "(n = 10, 40, 100 agents x 1.2 M parameters)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a table"),
) -> None:
    """Measure speed as ratios taken in one run: our engines vs a naive loop and vs the compute floor."""
    say = (lambda m: err.print(f"[dim]{m}[/]")) if not as_json else (lambda m: None)
    if aggregation:
        from robustlr.aggregation.bench import format_table, run_benchmark

        rows = run_benchmark(device=device)
        console.print_json(json.dumps(rows)) if as_json else console.print(format_table(rows), highlight=False)
        return
    from robustlr.bench import format_bench, run_bench

    res = run_bench(preset=preset, device=device, steps=steps, repeats=repeats, agents=agents, progress=say)
    if as_json:
        print(json.dumps(res, indent=2))
    else:
        console.print(format_bench(res), highlight=False)


@app.command("bench-scale")
def bench_scale(
    writers: int = typer.Option(3383, "--writers", help="writers in the synthetic file (the paper's 3,383)"),
    samples: int = typer.Option(100, "--samples", help="training samples per writer"),
    test_samples: int = typer.Option(12, "--test-samples", help="test samples per writer"),
    rounds: int = typer.Option(3, "--rounds", help="timed rounds"),
    epochs: int = typer.Option(1, "--epochs", help="local epochs E (the paper's 10; 1 keeps it short, "
                               "the report also extrapolates the overhead to E 10)"),
    participation: float = typer.Option(0.01, "--participation", help="C (0.01 of 3,383 = 34 agents per round)"),
    theta: float = typer.Option(7, "--theta", help="RLR threshold (0 = plain FedAvg)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: all cores)"),
    keep_data: Optional[Path] = typer.Option(None, "--keep-data", help="keep the synthetic files in this folder "
                                             "and reuse them next time (default: a temporary folder, deleted)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a report"),
) -> None:
    """Scale check of the paper's non-iid setting: peak memory and per-round overhead.

    Writes a SYNTHETIC file in TensorFlow Federated's Federated EMNIST layout (3,383 writers x
    100 samples, about 1.2 GB), runs a few rounds of the noniid-paper-rlr preset on it (C 0.01 ->
    34 agents, B 64, FedAvg + RLR theta 7; E 1 by default) and prints the peak resident memory
    after each stage and the share of each round spent outside local training
    (targets: < 2 GB, < 5 %).
    """
    from robustlr.bench_scale import format_scale_bench, run_scale_bench

    say = (lambda m: err.print(f"[dim]{m}[/]")) if not as_json else (lambda m: None)
    res = run_scale_bench(writers=writers, samples=samples, test_samples=test_samples, rounds=rounds,
                          local_epochs=epochs, participation=participation, rlr_threshold=theta, threads=threads,
                          data_folder=keep_data, progress=say)
    if as_json:
        print(json.dumps(res, indent=2))
    else:
        console.print(format_scale_bench(res), highlight=False)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
