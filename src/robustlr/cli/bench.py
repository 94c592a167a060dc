"""``robustlr bench engines | aggregation | scale | flower | profile | levers``: speed as ratios measured in one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from robustlr.cli._common import console, err, styled, user_errors

app = typer.Typer(no_args_is_help=True, help="Measure speed as ratios taken in one run (ours vs a naive baseline, "
                  "vs the compute floor, vs a plain mean).")

JsonOpt = typer.Option(False, "--json", help="print one JSON object instead of a table")


def _say(as_json: bool):
    return (lambda m: None) if as_json else (lambda m: err.print(styled((m, "dim"))))


@app.command()
@user_errors
def engines(
    preset: str = typer.Option("iid-fedavg", "--preset", help="the setting to time (any preset; the paper's iid one by default)"),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda"),
    steps: int = typer.Option(6, "--steps", help="batches per agent per timed repeat"),
    repeats: int = typer.Option(3, "--repeats", help="timed repeats after one warm-up (median reported)"),
    agents: Optional[int] = typer.Option(None, "--agents", help="agents per timed round (default: the preset's agents per round)"),
    as_json: bool = JsonOpt,
) -> None:
    """Local-training engines vs a naive reference-style DataLoader loop and vs the fp32 and bf16 compute floors."""
    from robustlr.bench.engines import format_bench, run_bench

    res = run_bench(preset=preset, device=device, steps=steps, repeats=repeats, agents=agents, progress=_say(as_json))
    if as_json:
        print(json.dumps(res, indent=2))
    else:
        console.print(format_bench(res), highlight=False)


@app.command()
@user_errors
def attacks(
    preset: str = typer.Option("iid-fedavg", "--preset", help="the preset whose model, agents and F are used (at "
                               "the lite budget's local settings: 6,000 images, E 1, B 64)"),
    names: Optional[List[str]] = typer.Option(None, "--attack", help="only this attack (repeatable; names as in the "
                                              "table)"),
    repeats: int = typer.Option(3, "--repeats", help="timed rounds per attack (median reported)"),
    as_json: bool = JsonOpt,
) -> None:
    """What each attack adds to a round's local work, timed alternately with a plain trojan round."""
    from robustlr.bench.attacks import format_table, run_benchmark

    rows = run_benchmark(preset, names, repeats)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        console.print(f"preset {preset}, {rows[0]['agents']} agents per round, sequential engine on one thread; "
                      f"median of {repeats} rounds after a warm-up, each beside a trojan round")
        console.print(format_table(rows), highlight=False)


@app.command()
@user_errors
def aggregation(
    agents: Optional[List[int]] = typer.Option(None, "--agents", help="numbers of agents (repeatable; default 10, 40, 100)"),
    params: int = typer.Option(1_200_000, "--params", help="parameters per update"),
    repeats: int = typer.Option(5, "--repeats", help="timed calls per rule (median reported)"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    rules: Optional[List[str]] = typer.Option(None, "--rule", help="only this rule (repeatable; names as in the table)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch intra-op threads (default: torch's)"),
    model: Optional[str] = typer.Option(None, "--model", help="a model's size and layout instead of --params "
                                        "(e.g. resnet18-bn: 11.2 M; RLR's per-array variants use its layout)"),
    as_json: bool = JsonOpt,
) -> None:
    """Each aggregation rule vs a plain updates.mean(0) on the same matrix, timed alternately."""
    from robustlr.bench.aggregation import format_table, run_benchmark

    rows = run_benchmark(agents or [10, 40, 100], params, repeats, device, rules=rules, threads=threads, model=model)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        console.print(f"device {rows[0]['device']}, {rows[0]['threads']} threads; median of {repeats} calls after a warm-up")
        console.print(format_table(rows), highlight=False)


@app.command()
@user_errors
def scale(
    writers: int = typer.Option(3383, "--writers", help="writers in the synthetic file (the paper's 3,383)"),
    samples: int = typer.Option(100, "--samples", help="training samples per writer"),
    test_samples: int = typer.Option(12, "--test-samples", help="test samples per writer"),
    rounds: int = typer.Option(3, "--rounds", help="timed rounds"),
    epochs: int = typer.Option(1, "--epochs", help="local epochs E (the paper's 10; 1 keeps it short, "
                               "the report also extrapolates the overhead to E 10)"),
    participation: float = typer.Option(0.01, "--participation", help="C (floor(0.01 x 3,383) = 33 agents per round)"),
    theta: float = typer.Option(7, "--theta", help="RLR threshold (0 = plain FedAvg)"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads (default: all cores)"),
    keep_data: Optional[Path] = typer.Option(None, "--keep-data", help="keep the synthetic files in this folder "
                                             "and reuse them next time (default: a temporary folder, deleted)"),
    as_json: bool = JsonOpt,
) -> None:
    """Scale check of the paper's non-iid setting: peak memory and per-round overhead.

    Writes a SYNTHETIC file in TensorFlow Federated's Federated EMNIST layout (3,383 writers x
    100 samples, about 1.2 GB), runs a few rounds of the noniid-paper-rlr preset on it (C 0.01 ->
    34 agents, B 64, FedAvg + RLR theta 7; E 1 by default) and prints the peak resident memory
    after each stage and the share of each round spent outside local training
    (targets: < 2 GB, < 5 %).
    """
    from robustlr.bench.scale import format_scale_bench, run_scale_bench

    res = run_scale_bench(writers=writers, samples=samples, test_samples=test_samples, rounds=rounds,
                          local_epochs=epochs, participation=participation, rlr_threshold=theta, threads=threads,
                          data_folder=keep_data, progress=_say(as_json))
    if as_json:
        print(json.dumps(res, indent=2))
    else:
        console.print(format_scale_bench(res), highlight=False)


@app.command()
@user_errors
def flower(
    preset: str = typer.Option("demo-noniid", "--preset", help="the setting (default: the lite non-iid preset)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", "-s", help="override a key (default: num_agents=100, "
                                             "participation=0.1, rounds=3)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="folder holding the datasets"),
    as_json: bool = JsonOpt,
) -> None:
    """The same config on the built-in simulator and on Flower's simulation runtime: s/round, peak memory of the tree."""
    from robustlr.bench.flower import format_flower_bench, run_flower_bench

    res = run_flower_bench(preset, set_, str(data_dir) if data_dir else None, progress=_say(as_json))
    if as_json:
        print(json.dumps(res, indent=2))
    else:
        console.print(format_flower_bench(res), highlight=False)


@app.command()
@user_errors
def profile(
    preset: str = typer.Option("iid-fedavg", "--preset", help="the setting whose model and batch size to profile"),
    steps: int = typer.Option(8, "--steps", help="batches of the profiled agent"),
    top: int = typer.Option(14, "--top", help="operators shown per precision"),
    as_json: bool = JsonOpt,
) -> None:
    """Where one agent's local training spends its time, per operator, on one thread (fp32 and bf16)."""
    from robustlr.bench.profile import format_profile, run_profile

    res = run_profile(preset, steps=steps, top=top, progress=_say(as_json))
    if as_json:
        print(json.dumps(res, indent=2))
    else:
        console.print(format_profile(res), highlight=False)


@app.command()
@user_errors
def levers(
    preset: str = typer.Option("iid-fedavg", "--preset", help="the setting whose model and batch size to time"),
    steps: int = typer.Option(6, "--steps", help="batches per timing"),
    repeats: int = typer.Option(5, "--repeats", help="interleaved repeats (median reported)"),
    with_compile: bool = typer.Option(False, "--compile", help="also time torch.compile (inductor; about 30 s of compilation)"),
    as_json: bool = JsonOpt,
) -> None:
    """Each speed lever (layout, fused SGD, bf16 masks, bf16 master weights, mask draw, torch.compile) vs the engines' step."""
    from robustlr.bench.profile import format_levers, run_levers

    res = run_levers(preset, steps=steps, repeats=repeats, with_compile=with_compile, progress=_say(as_json))
    if as_json:
        print(json.dumps(res, indent=2))
    else:
        console.print(format_levers(res), highlight=False)
