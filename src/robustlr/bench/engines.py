"""``robustlr bench engines``: how fast local training is, as ratios measured in one run.

For any preset (by default the iid one: K 10, E 2, B 256, the paper's CNN) it measures, on
the current machine and in the same process, the training throughput (samples/s) of

- our engines: ``processes`` (agents side by side in one single-threaded worker process per
  core: the CPU default), ``sequential`` (one agent after another on one thread: the
  reference), ``sequential-mt`` (one agent after another on all cores' threads; not
  bit-reproducible across core counts, shown to explain the choice), ``vectorized``
  (``torch.func.vmap`` over agents: the CUDA default) and ``sequential-bf16`` (opt-in bf16
  autocast);
- a naive reference-style loop (:mod:`robustlr.bench.naive`): its own model in the default
  layout (for the paper's CNN the usual layer order), a per-sample dataset that converts and
  normalises every image in Python, a shuffling ``DataLoader``, a deep copy of the model per
  agent, the default SGD step, one agent after another, as a typical research codebase does it
  (timed first, before our engines tune the process's allocator);

and the compute floors: the model's training FLOPs per sample (counted by PyTorch's
``FlopCounterMode``) divided by the throughput of a large fp32 matrix product (the fp32 floor)
and of a large bf16 one (the bf16 floor: AMX or AVX-512 BF16 where the CPU has them), both
measured on the spot, before and after the engines, alternately, and taken as medians. Each
engine is reported as a share of the floor of its own precision.
Inputs are synthetic, of the preset's model's input shape; the agents timed are the preset's
agents per round (``round(C*K)``). Seconds per round are extrapolated from the measured
throughput to the preset's samples per round (its dataset's nominal size, see
:mod:`robustlr.data.registry`). Timings are medians over repeats; only ratios taken in the
same run are meaningful.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from robustlr.aggregation import FedAvg, ParamLayout, RobustLR
from robustlr.bench.common import matmul_gflops, sync, training_flops_per_sample
from robustlr.bench.naive import PerSampleDataset, naive_model, naive_train
from robustlr.data.registry import dataset_spec
from robustlr.errors import ConfigError
from robustlr.models import build_model, has_batch_norm, model_spec
from robustlr.sim.config import ExperimentConfig, load_config
from robustlr.sim.engines import EngineContext, LocalSettings, build_engine


def _time_engine(engine, global_flat, samples: int, n_agents: int, repeats: int) -> float:
    rates = []
    for r in range(repeats + 1):
        sync(global_flat.device)
        t = time.perf_counter()
        engine.train_round(global_flat, list(range(n_agents)), r + 1)
        sync(global_flat.device)
        if r > 0:  # the first is a warm-up
            rates.append(samples / (time.perf_counter() - t))
    return statistics.median(rates)


def round_size(cfg: ExperimentConfig) -> tuple[int, int, int]:
    """(agents K, agents per round, samples per agent) of ``cfg``, from the dataset's nominal size."""
    spec = dataset_spec(cfg.dataset)
    k = cfg.num_agents or spec.nominal_writers or 10
    # a plugged dataset's size is read from it (the config loaded it once already)
    n_train = cfg.train_limit or spec.nominal_train_size or cfg.facts.train_size or 0
    if cfg.partition == "natural" and spec.nominal_writers:
        n_train = spec.nominal_train_size * k // spec.nominal_writers
    return k, cfg.agents_per_round(k), max(1, n_train // k)


def run_bench(preset: str = "iid-fedavg", device: str = "cpu", steps: int = 6, repeats: int = 3,
              agents: int | None = None, precision_bf16: bool = True, progress=print) -> dict:
    """Measure the engines on ``preset`` (any preset; default the paper's iid setting).

    Each engine trains ``agents`` agents (default: the preset's agents per round) for
    ``steps`` full batches each on synthetic inputs of the preset's shape, ``repeats`` times
    after a warm-up; the throughput is extrapolated to the preset's round.
    """
    cfg: ExperimentConfig = load_config(preset, [f"device={device}"])
    if not cfg.facts.image:
        raise ConfigError(f"bench engines times image models (its naive baseline reads uint8 images); {cfg.dataset} "
                          f"is not images (samples of shape {cfg.input_shape}): time a run of it instead "
                          f"(seconds_per_round in its summary.json)")
    dev = torch.device(device)
    torch.manual_seed(0)
    shape = model_spec(cfg.model).input_shape or cfg.input_shape
    model = build_model(cfg.model, num_classes=cfg.num_classes).to(dev)
    layout = ParamLayout.from_module(model)
    k_total, per_round, per_agent = round_size(cfg)
    k = agents or per_round
    b = cfg.batch_size
    samples_per_round = per_agent * cfg.local_epochs * per_round

    # synthetic inputs of the right shape: speed does not depend on pixel values
    n = k * steps * b
    x = torch.randn(n, *shape)
    y = torch.randint(0, cfg.num_classes, (n,))
    indices = [np.arange(i * steps * b, (i + 1) * steps * b) for i in range(k)]
    samples = n  # one epoch of `steps` batches per agent
    flat = layout.flatten(model).to(dev)
    res: dict = {"preset": preset, "device": str(dev), "agents": k, "batch_size": b, "steps_per_agent": steps,
                 "threads": torch.get_num_threads(), "model": cfg.model, "input_shape": list(shape),
                 "agents_per_round": per_round, "samples_per_agent": per_agent}

    def ctx(precision: str = "fp32", workers: int = 1) -> EngineContext:
        settings = LocalSettings(epochs=1, batch_size=b, lr=cfg.client_lr, momentum=cfg.client_momentum,
                                 grad_clip=cfg.grad_clip, clip_norm=0.0, seed=0, precision=precision)
        return EngineContext(cfg.model, cfg.num_classes, settings, x.to(dev), y.to(dev), indices, dev,
                             max_agents=k, workers=workers,
                             model_spec=None if model_spec(cfg.model).origin == "built in" else model_spec(cfg.model))

    engines: dict[str, float] = {}
    from robustlr.sim.engines.select import bf16_is_native

    # a CPU without native bf16 (AVX2 only) emulates it, 75x slower than fp32 for a matrix product
    # measured on one: timing the bf16 engines there would take most of the bench and show nothing
    bf16_native = bf16_is_native(dev)
    bf16_wanted = precision_bf16 and bf16_native and (dev.type == "cuda" or torch.backends.mkldnn.is_available())
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}

    def measure_floors(repeats_: int = 2) -> None:
        for _ in range(repeats_):  # alternately, so that a drift of the machine's speed hits both
            rates["fp32"].append(matmul_gflops(dev))
            if bf16_wanted:
                rates["bf16"].append(matmul_gflops(dev, dtype=torch.bfloat16))

    progress("measuring the compute floors (matrix products)")
    measure_floors()

    # the naive loop first: our engines tune the process's allocator (robustlr.sim.engines.allocator),
    # which a research codebase does not have
    from robustlr.sim.engines import allocator

    res["naive_allocator_default"] = not allocator.is_tuned()
    progress("timing the naive reference loop")
    imgs = (torch.rand(n, *shape) * 255).to(torch.uint8).numpy()
    naive_rates = []
    cpu_model = naive_model(cfg.model, cfg.num_classes, weights=model)
    for r in range(repeats + 1):
        t = time.perf_counter()
        seen = 0
        for i in range(k):
            ds = PerSampleDataset(imgs[indices[i]], y.numpy()[indices[i]], 0.5, 0.25)
            loader = torch.utils.data.DataLoader(ds, batch_size=b, shuffle=True)
            seen += naive_train(cpu_model, loader, 1, cfg.client_lr, cfg.client_momentum, steps, cfg.grad_clip)
        if r > 0:
            naive_rates.append(seen / (time.perf_counter() - t))
    engines["naive"] = statistics.median(naive_rates)

    def time_mode(label: str, mode: str, precision: str = "fp32", workers: int = 1, **kw) -> None:
        progress(f"timing the {label} engine")
        engine = build_engine(ctx(precision, workers), mode) if not kw else kw["make"](ctx(precision, workers))
        try:
            engines[label] = _time_engine(engine, flat, samples, k, repeats)
        finally:
            engine.close()

    if dev.type == "cpu":
        from robustlr.sim.engines.select import available_cores

        workers = min(available_cores(), k)
        res["workers"] = workers
        time_mode("processes", "processes", workers=workers)
    time_mode("sequential", "sequential")
    if dev.type == "cpu" and torch.get_num_threads() > 1:
        from robustlr.sim.engines.sequential import SequentialEngine

        time_mode("sequential-mt", "sequential", make=lambda c: SequentialEngine(c, threads=None))
    if not has_batch_norm(model):
        time_mode("vectorized", "vectorized")
    if bf16_wanted:
        time_mode("sequential-bf16", "sequential", "bf16")
        if dev.type == "cpu":
            time_mode("processes-bf16", "processes", "bf16", workers=res["workers"])

    progress("measuring the compute floors again")
    measure_floors()
    flops = training_flops_per_sample(model, shape)
    gflops = statistics.median(rates["fp32"])
    floor = gflops * 1e9 / flops
    gflops_bf16 = statistics.median(rates["bf16"]) if rates["bf16"] else None
    floor_bf16 = gflops_bf16 * 1e9 / flops if gflops_bf16 else None

    progress("timing aggregation")
    upd = torch.randn(per_round, layout.numel, device=dev)
    rule = RobustLR(FedAvg(), threshold=max(1, per_round // 2))
    times = []
    for i in range(repeats + 1):
        sync(dev)
        t = time.perf_counter()
        rule(upd)
        sync(dev)
        if i:
            times.append(time.perf_counter() - t)
    agg_s = statistics.median(times)

    def own_floor(label: str) -> float | None:
        return floor_bf16 if label.endswith("-bf16") else floor

    fp32 = {k_: v for k_, v in engines.items() if k_ in ("processes", "sequential", "vectorized")}
    bf16 = {k_: v for k_, v in engines.items() if k_.endswith("-bf16")}
    fastest_bf16 = max(bf16, key=bf16.get) if bf16 else None
    fastest = max(fp32, key=fp32.get)
    ours = fp32[fastest]
    round_s = samples_per_round / ours
    engines = {k_: v for k_, v in engines.items() if k_ != "naive"} | {"naive": engines["naive"]}  # naive shown last
    res.update({
        "samples_per_s": engines,
        "seconds_per_round": {k_: samples_per_round / v for k_, v in engines.items()},
        "samples_per_round": samples_per_round,
        "fastest_fp32_engine": fastest,
        "training_mflop_per_sample": flops / 1e6,
        "matmul_gflops": gflops,
        "floor_samples_per_s": floor,
        "floor_fraction": ours / floor,
        "matmul_gflops_bf16": gflops_bf16,
        "bf16_skipped": ("this CPU has no native bf16 (AVX-512 BF16 or AMX): bf16 is emulated there"
                         if precision_bf16 and not bf16_native else None),
        "matmul_gflops_samples": rates,
        "floor_samples_per_s_bf16": floor_bf16,
        "fastest_bf16_engine": fastest_bf16,
        "floor_fraction_bf16": bf16[fastest_bf16] / floor_bf16 if fastest_bf16 and floor_bf16 else None,
        "floor_share": {k_: v / own_floor(k_) for k_, v in engines.items() if own_floor(k_)},
        "speedup_vs_naive": ours / engines["naive"],
        "speedup_vs_sequential": ours / engines["sequential"],
        "vectorized_vs_sequential": engines.get("vectorized", float("nan")) / engines["sequential"],
        "bf16_speedup": engines["sequential-bf16"] / engines["sequential"] if "sequential-bf16" in engines else None,
        "bf16_fastest_vs_naive": (engines["processes-bf16"] / engines["naive"]
                                  if "processes-bf16" in engines else None),
        "aggregation_seconds": agg_s,
        "aggregation_share": agg_s / (round_s + agg_s),
    })
    return res


def format_bench(res: dict) -> str:
    lines = [f"robustlr bench engines: preset {res['preset']} on {res['device']} ({res['threads']} threads), "
             f"{res['agents']} agents x {res['steps_per_agent']} batches of {res['batch_size']}",
             f"{'engine':<18}{'samples/s':>12}{'s/round (extrap.)':>20}{'% of own floor':>16}"]
    for k, v in res["samples_per_s"].items():
        share = res.get("floor_share", {}).get(k)
        lines.append(f"{k:<18}{v:>12.0f}{res['seconds_per_round'][k]:>20.1f}"
                     f"{'' if share is None else f'{100 * share:.1f}':>16}")
    lines.append(f"fp32 floor: {res['training_mflop_per_sample']:.1f} MFLOP/sample at {res['matmul_gflops']:.0f} GFLOP/s "
                 f"(fp32 matmul, measured) = {res['floor_samples_per_s']:.0f} samples/s")
    if res.get("bf16_skipped"):
        lines.append(f"bf16 engines not timed: {res['bf16_skipped']}; use precision = 'fp32' on this machine")
    if res.get("floor_samples_per_s_bf16"):
        lines.append(f"bf16 floor: {res['training_mflop_per_sample']:.1f} MFLOP/sample at "
                     f"{res['matmul_gflops_bf16']:.0f} GFLOP/s (bf16 matmul, measured) = "
                     f"{res['floor_samples_per_s_bf16']:.0f} samples/s")
    lines += [
        f"fastest fp32 engine: {res['fastest_fp32_engine']}, {100 * res['floor_fraction']:.1f} % of the fp32 floor",
        f"speed-up vs naive loop: {res['speedup_vs_naive']:.2f}x; vs sequential: {res['speedup_vs_sequential']:.2f}x; "
        f"vectorized/sequential: {res['vectorized_vs_sequential']:.2f}x",
    ]
    if "sequential-mt" in res["samples_per_s"]:
        lines.append(f"sequential on {res['threads']} threads / on 1 thread: "
                     f"{res['samples_per_s']['sequential-mt'] / res['samples_per_s']['sequential']:.2f}x")
    if res.get("floor_fraction_bf16"):
        lines.append(f"fastest bf16 engine: {res['fastest_bf16_engine']}, "
                     f"{100 * res['floor_fraction_bf16']:.1f} % of the bf16 floor")
    if res.get("bf16_speedup"):
        lines.append(f"bf16 autocast (opt-in) vs fp32 sequential: {res['bf16_speedup']:.2f}x")
    if res.get("bf16_fastest_vs_naive"):
        lines.append(f"processes engine in bf16 (opt-in) vs naive fp32 loop: {res['bf16_fastest_vs_naive']:.2f}x")
    if res.get("naive_allocator_default") is False:
        lines.append("note: this process had tuned its allocator before the naive loop ran (robustlr.sim.engines."
                     "allocator), which makes it faster than a research codebase: run the bench in a fresh process")
    lines.append(f"aggregation (RLR over FedAvg, {res['aggregation_seconds'] * 1e3:.1f} ms) share of a round: "
                 f"{100 * res['aggregation_share']:.2f} %")
    return "\n".join(lines)
