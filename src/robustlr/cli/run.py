"""``robustlr run`` and ``robustlr demo``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from robustlr.cli._common import (
    ConfigArg,
    DataDirOpt,
    SetOpt,
    command_line,
    console,
    fail,
    make_progress,
    progress_callback,
    stopped,
    styled,
    user_errors,
)
from robustlr.sim.lifecycle import Terminated


def _rounds_checkpointed(out: Path) -> int:
    """The rounds a run folder's checkpoint holds (0: none, or unreadable: the run itself says why)."""
    from robustlr.errors import ResumeError
    from robustlr.sim import checkpoint

    path = out / checkpoint.NAME
    try:
        if not path.is_file():
            return 0
    except OSError:  # e.g. a name over 255 bytes: the run's own checks say so
        return 0
    try:
        return int(checkpoint.load_checkpoint(path)["round"])
    except ResumeError:
        return 0


def _resume_command(config: str, set_: Optional[List[str]], out: Path, data_dir: Optional[Path]) -> str:
    return command_line("run", config, options={"--set": set_, "--out": out, "--data-dir": data_dir})


@user_errors
def run(
    config: str = ConfigArg,
    set_: Optional[List[str]] = SetOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="output folder (default runs/<name>); "
                                       "an existing folder of the same config resumes from its checkpoint"),
    data_dir: Optional[Path] = DataDirOpt,
    engine: str = typer.Option("builtin", "--engine", help="builtin (robustlr's simulator: checkpoints, resume) or "
                               "flower (Flower's simulation runtime on Ray, one virtual node per agent; no resume)"),
) -> None:
    """Run one experiment: writes config.json, metrics.jsonl, summary.json and model.pt to the output folder."""
    from robustlr.reports.tables import summary_table
    from robustlr.sim.config import load_config
    from robustlr.sim.loop import run_experiment

    if engine not in ("builtin", "flower"):
        fail(f"unknown --engine {engine!r}; choose builtin or flower")
    cfg = load_config(config, set_)
    out = out or Path("runs") / cfg.name
    if engine == "flower":
        _run_on_flower(cfg, out, data_dir)
        return
    console.print(styled((cfg.name, "bold"), f": {cfg.dataset}, {cfg.aggregator}"
                         f"{' + RLR θ=' + str(cfg.rlr_threshold) if cfg.rlr_threshold else ''}, R={cfg.rounds} -> {out}"))
    done = _rounds_checkpointed(out)
    try:
        with make_progress() as progress:
            task = progress.add_task(f"resuming after round {done}" if done else "starting", total=cfg.rounds,
                                     completed=done, status="")
            res = run_experiment(cfg, out, data_dir=str(data_dir) if data_dir else None,
                                 on_round=progress_callback(progress, task))
    except (KeyboardInterrupt, Terminated) as exc:
        kept = _rounds_checkpointed(out)
        where = (f"its checkpoint holds {kept} of {cfg.rounds} rounds. To resume, run the same command again"
                 if kept else "before its first checkpoint. To start it again, run the same command")
        stopped(exc, where, _resume_command(config, set_, out, data_dir))
    console.print(summary_table(res.summary, title=f"{cfg.name}: final metrics"))
    console.print(f"results in {out}/", highlight=False)


@user_errors
def pretrain(
    config: str = typer.Argument(..., help="a clean config: a preset name (e.g. cifar-pretrain) or a TOML file"),
    set_: Optional[List[str]] = SetOpt,
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """Train a clean starting model once and cache it by config hash; runs use it with
    init_model = "pretrained:CONFIG". Prints the cached model.pt.

    --set overrides make another model (another hash): to start runs from it, write the changed
    config to a TOML file and give init_model = "pretrained:FILE.toml".
    """
    from robustlr.reports.tables import summary_table
    from robustlr.sim.loop import pretrain as build
    from robustlr.sim.pretrain import pretrain_config, pretrained_dir
    from robustlr.sim.records import read_summary

    cfg = pretrain_config(config, set_)
    folder = pretrained_dir(cfg)
    cached = (folder / "model.pt").is_file() and (folder / "summary.json").is_file()
    if not cached:
        console.print(styled((f"pretraining {cfg.name}", "bold"), f": {cfg.dataset}, {cfg.model}, R={cfg.rounds} -> {folder}"))
        with make_progress() as progress:
            task = progress.add_task("starting", total=cfg.rounds, status="")
            build(cfg, str(data_dir) if data_dir else None, on_round=progress_callback(progress, task))
    else:
        console.print(f"{cfg.name}: already pretrained (config hash {folder.name.rsplit('-', 1)[1]})")
    console.print(summary_table(read_summary(folder / "summary.json"), title=f"{cfg.name}: the starting model"))
    typer.echo(str(folder / "model.pt"))


def _run_on_flower(cfg, out: Path, data_dir) -> None:
    from robustlr.reports.tables import summary_table
    from robustlr.sim.engines import check_device
    from robustlr.sim.records import read_summary
    from robustlr.sim.rundir import open_run_dir

    # without flwr (or Ray) this raises MissingDependencyError, a RobustlrError naming the `flower` extra
    from robustlr.integrations.flower.simulation import run_on_flower
    check_device(cfg.device)
    # the folder is locked for the whole run, as for the builtin engine: a second writer is refused
    with open_run_dir(out, cfg):
        console.print(styled((cfg.name, "bold"), f" on Flower's simulation runtime: {cfg.num_agents} virtual "
                             f"nodes, R={cfg.rounds} -> {out}"))
        run_on_flower(cfg, out, str(data_dir) if data_dir else None)
    console.print(summary_table(read_summary(out / "summary.json"), title=f"{cfg.name}: final metrics (Flower)"))
    console.print(f"results in {out}/", highlight=False)


@user_errors
def demo(
    setting: str = typer.Option("iid", "--setting", help="iid (Fashion-MNIST), noniid (FEMNIST LEAF), cifar (CIFAR-10, regular backdoor and DBA)"),
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="output folder"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="override a key in every run"),
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """The paper's headline in minutes: FedAvg without attack, FedAvg under attack, FedAvg + RLR under attack.

    On CIFAR-10 the attacked pair runs twice (regular backdoor, then DBA), warm-started from a cached clean
    model (built first if missing). Prints the final accuracies beside the paper's, writes OUT/summary.json
    and OUT/demo.png.
    """
    from robustlr.reports.demo import DEMOS, demo_configs, run_demo
    from robustlr.reports.tables import comparison_table

    if setting not in DEMOS:
        fail(f"unknown setting {setting!r}; choose one of {', '.join(DEMOS)}")
    cfgs = demo_configs(setting, set_)
    first = next(iter(cfgs.values()))
    rounds = "/".join(str(r) for r in sorted({c.rounds for c in cfgs.values()}))
    console.print(styled((f"robustlr demo ({setting})", "bold"), f": {len(cfgs)} runs x {rounds} rounds on {first.dataset} "
                         f"-> {out}" + (f" (starting from {first.init_model})" if first.init_model else "")))
    try:
        with make_progress() as progress:
            tasks = {k: progress.add_task(k, total=c.rounds, status="") for k, c in cfgs.items()}
            cbs = {k: progress_callback(progress, t, prefix=f"{k}: ") for k, t in tasks.items()}
            summary = run_demo(setting, out, data_dir=str(data_dir) if data_dir else None, extra=set_,
                               on_round=lambda k, rec: cbs[k](rec))
    except (KeyboardInterrupt, Terminated) as exc:
        stopped(exc, "the runs that finished are kept, the interrupted one goes on from its last checkpoint (if it "
                "had one). To go on, run the same command again",
                command_line("demo", options={"--setting": setting, "--out": out, "--set": set_, "--data-dir": data_dir}))
    console.print(comparison_table(setting, summary["runs"]))
    if summary.get("init_model"):
        console.print(f"Warm-started from {summary['init_model']['spec']} (sha256 {summary['init_model']['sha256'][:12]}...): "
                      "these runs attack a model trained beforehand, not the paper's training from scratch.")
    pre = f" (+ {summary['pretrain_seconds']:.0f} s building the starting model)" if summary["pretrain_seconds"] > 1 else ""
    console.print(f"data: {summary['data_source']}; wall time {summary['wall_seconds']:.0f} s{pre}; "
                  f"paper numbers are at the paper's full budget. Plot: {out / 'demo.png'}; summary: {out / 'summary.json'}")
