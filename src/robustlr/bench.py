"""``robustlr bench``: how fast local training is, as ratios measured in one run.

For the iid preset (K 10, E 2, B 256, the paper's CNN) it measures, on the current machine and
in the same process, the training throughput (samples/s) of

- our engines: ``processes`` (agents side by side in one single-threaded worker process per
  core: the CPU default), ``sequential`` (one agent after another on one thread: the
  reference), ``sequential-mt`` (one agent after another on all cores' threads; not
  bit-reproducible across core counts, shown to explain the choice), ``vectorized``
  (``torch.func.vmap`` over agents: the CUDA default) and ``sequential-bf16`` (opt-in bf16
  autocast);
- a naive reference-style loop: one ``DataLoader`` per agent over a dataset that converts and
  normalises every sample in Python (``__getitem__``), a deep copy of the model per agent, as
  a typical research codebase does it;

and the compute floor: the model's training FLOPs per sample (counted by PyTorch's
``FlopCounterMode``) divided by a large fp32 matrix product's throughput measured on the spot.
Seconds per round are extrapolated from the measured throughput to the preset's samples per
round. Timings are medians over repeats; only ratios taken in the same run are meaningful.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from robustlr.aggregation import FedAvg, ParamLayout, RobustLR
from robustlr.client import LocalSettings, SequentialTrainer
from robustlr.config import ExperimentConfig, load_config
from robustlr.models import build_model


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 5, dtype=torch.float32) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for i in range(repeats + 2):
        _sync(device)
        t = time.perf_counter()
        (a @ b).sum().item() if device.type == "cuda" else a @ b
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_flops_per_sample(model: nn.Module, shape: tuple[int, ...], batch: int = 32) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(model).cpu().train()
    x = torch.randn(batch, *shape)
    y = torch.zeros(batch, dtype=torch.int64)
    with FlopCounterMode(display=False) as fc:
        F.cross_entropy(m(x), y).backward()
    return fc.get_total_flops() / batch


class _PerSampleDataset(torch.utils.data.Dataset):
    """What a typical research codebase does: convert and normalise every sample in Python."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: float, std: float) -> None:
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = torch.from_numpy(self.images[i].astype(np.float32) / 255.0).unsqueeze(0)
        return (x - self.mean) / self.std, int(self.labels[i])


def naive_train(model: nn.Module, loader, epochs: int, lr: float, momentum: float, max_steps: int) -> int:
    """The reference-style loop; returns samples seen."""
    local = copy.deepcopy(model)
    local.train()
    opt = torch.optim.SGD(local.parameters(), lr=lr, momentum=momentum)
    seen = steps = 0
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(local(xb), yb).backward()
            nn.utils.clip_grad_norm_(local.parameters(), 10)
            opt.step()
            seen += len(yb)
            steps += 1
            if steps >= max_steps:
                return seen
    return seen


@dataclass
class EngineTiming:
    name: str
    samples_per_s: float


def _time_engine(trainer, layout, global_flat, indices, n_agents, repeats) -> float:
    out = torch.empty((n_agents, layout.numel), dtype=torch.float32, device=global_flat.device)
    samples = sum(len(i) for i in indices) * trainer.s.epochs
    rates = []
    for r in range(repeats + 1):
        _sync(global_flat.device)
        t = time.perf_counter()
        trainer.train_into(out, global_flat, indices, r + 1, list(range(n_agents)))
        _sync(global_flat.device)
        if r > 0:  # the first is a warm-up
            rates.append(samples / (time.perf_counter() - t))
    return statistics.median(rates)


def run_bench(preset: str = "iid-fedavg", device: str = "cpu", steps: int = 6, repeats: int = 3,
              agents: int | None = None, precision_bf16: bool = True, progress=print) -> dict:
    """Measure the engines on ``preset`` (default: the paper's iid setting).

    Each engine trains ``agents`` agents (default: the preset's K) for ``steps`` full batches
    each, ``repeats`` times after a warm-up; the throughput is extrapolated to a round.
    """
    from robustlr.vectorized import VectorizedTrainer, has_batch_norm

    cfg: ExperimentConfig = load_config(preset, [f"device={device}"])
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(cfg.model).to(dev)
    layout = ParamLayout.from_module(model)
    k = agents or cfg.num_agents or 10
    b = cfg.batch_size
    shape = (1, 28, 28) if cfg.model == "mnist-cnn" else (3, 32, 32)
    n_train = 60000 if cfg.dataset == "fashion-mnist" else 50000
    per_agent_round = n_train // (cfg.num_agents or 10)
    samples_per_round = per_agent_round * cfg.local_epochs * (cfg.num_agents or 10)

    # synthetic inputs of the right shape: speed does not depend on pixel values
    n = k * steps * b
    x = torch.randn(n, *shape)
    y = torch.randint(0, 10, (n,))
    indices = [np.arange(i * steps * b, (i + 1) * steps * b) for i in range(k)]
    flat = layout.flatten(model).to(dev)
    res: dict = {"preset": preset, "device": str(dev), "agents": k, "batch_size": b, "steps_per_agent": steps,
                 "threads": torch.get_num_threads()}

    def settings(precision="fp32"):
        return LocalSettings(epochs=1, batch_size=b, lr=cfg.client_lr, momentum=cfg.client_momentum,
                             grad_clip=cfg.grad_clip, clip_norm=0.0, seed=0, precision=precision)

    engines: dict[str, float] = {}
    if dev.type == "cpu":
        from robustlr.parallel import ProcessTrainer, available_cores

        workers = min(available_cores(), k)
        res["workers"] = workers
        progress(f"timing the processes engine ({workers} workers)")
        with ProcessTrainer(cfg.model, 10, layout, settings(), x.clone(), y.clone(), workers=workers,
                            max_agents=k) as par:
            engines["processes"] = _time_engine(par, layout, flat, indices, k, repeats)
    progress("timing the sequential engine")
    seq = SequentialTrainer(model, layout, settings(), x.to(dev), y.to(dev), dev)
    engines["sequential"] = _time_engine(seq, layout, flat, indices, k, repeats)
    if dev.type == "cpu" and torch.get_num_threads() > 1:
        progress(f"timing the sequential engine on {torch.get_num_threads()} threads")
        seq_mt = SequentialTrainer(model, layout, settings(), x.to(dev), y.to(dev), dev, threads=None)
        engines["sequential-mt"] = _time_engine(seq_mt, layout, flat, indices, k, repeats)
    if not has_batch_norm(model):
        progress("timing the vectorized engine")
        vec = VectorizedTrainer(model, layout, settings(), x.to(dev), y.to(dev), dev)
        engines["vectorized"] = _time_engine(vec, layout, flat, indices, k, repeats)
    if precision_bf16 and (dev.type == "cuda" or torch.backends.mkldnn.is_available()):
        progress("timing the sequential engine with bf16 autocast")
        seq16 = SequentialTrainer(model, layout, settings("bf16"), x.to(dev), y.to(dev), dev)
        engines["sequential-bf16"] = _time_engine(seq16, layout, flat, indices, k, repeats)
        if dev.type == "cpu":
            progress(f"timing the processes engine with bf16 autocast ({res['workers']} workers)")
            with ProcessTrainer(cfg.model, 10, layout, settings("bf16"), x.clone(), y.clone(),
                                workers=res["workers"], max_agents=k) as par16:
                engines["processes-bf16"] = _time_engine(par16, layout, flat, indices, k, repeats)

    progress("timing the naive reference loop")
    imgs = (torch.rand(n, *shape[1:]) * 255).to(torch.uint8).numpy() if shape[0] == 1 else None
    naive_rates = []
    if imgs is not None:
        for r in range(repeats + 1):
            t = time.perf_counter()
            seen = 0
            for i in range(k):
                ds = _PerSampleDataset(imgs[indices[i]], y.numpy()[indices[i]], 0.2860, 0.3530)
                loader = torch.utils.data.DataLoader(ds, batch_size=b, shuffle=True)
                seen += naive_train(model.cpu(), loader, 1, cfg.client_lr, cfg.client_momentum, steps)
            if r > 0:
                naive_rates.append(seen / (time.perf_counter() - t))
        model.to(dev)
        engines["naive"] = statistics.median(naive_rates)

    progress("measuring the compute floor")
    flops = training_flops_per_sample(model, shape)
    gflops = matmul_gflops(dev)
    floor = gflops * 1e9 / flops

    progress("timing aggregation")
    upd = torch.randn(cfg.num_agents or 10, layout.numel, device=dev)
    rule = RobustLR(FedAvg(), threshold=4)
    times = []
    for i in range(repeats + 1):
        _sync(dev)
        t = time.perf_counter()
        rule(upd)
        _sync(dev)
        if i:
            times.append(time.perf_counter() - t)
    agg_s = statistics.median(times)

    fp32 = {k_: v for k_, v in engines.items() if k_ in ("processes", "sequential", "vectorized")}
    fastest = max(fp32, key=fp32.get)
    ours = fp32[fastest]
    round_s = samples_per_round / ours
    res.update({
        "samples_per_s": engines,
        "seconds_per_round": {k_: samples_per_round / v for k_, v in engines.items()},
        "samples_per_round": samples_per_round,
        "fastest_fp32_engine": fastest,
        "training_mflop_per_sample": flops / 1e6,
        "matmul_gflops": gflops,
        "floor_samples_per_s": floor,
        "floor_fraction": ours / floor,
        "speedup_vs_naive": ours / engines["naive"] if "naive" in engines else None,
        "speedup_vs_sequential": ours / engines["sequential"],
        "vectorized_vs_sequential": engines.get("vectorized", float("nan")) / engines["sequential"],
        "bf16_speedup": engines["sequential-bf16"] / engines["sequential"] if "sequential-bf16" in engines else None,
        "bf16_fastest_vs_naive": (engines["processes-bf16"] / engines["naive"]
                                  if "processes-bf16" in engines and "naive" in engines else None),
        "aggregation_seconds": agg_s,
        "aggregation_share": agg_s / (round_s + agg_s),
    })
    return res


def format_bench(res: dict) -> str:
    lines = [f"robustlr bench: preset {res['preset']} on {res['device']} ({res['threads']} threads), "
             f"{res['agents']} agents x {res['steps_per_agent']} batches of {res['batch_size']}",
             f"{'engine':<18}{'samples/s':>12}{'s/round (extrap.)':>20}"]
    for k, v in res["samples_per_s"].items():
        lines.append(f"{k:<18}{v:>12.0f}{res['seconds_per_round'][k]:>20.1f}")
    lines += [
        f"compute floor: {res['training_mflop_per_sample']:.1f} MFLOP/sample at {res['matmul_gflops']:.0f} GFLOP/s "
        f"(fp32 matmul, measured) = {res['floor_samples_per_s']:.0f} samples/s",
        f"fastest fp32 engine: {res['fastest_fp32_engine']}, {100 * res['floor_fraction']:.1f} % of the floor",
        f"speed-up vs naive loop: {res['speedup_vs_naive']:.2f}x; vs sequential: {res['speedup_vs_sequential']:.2f}x; "
        f"vectorized/sequential: {res['vectorized_vs_sequential']:.2f}x",
    ]
    if "sequential-mt" in res["samples_per_s"]:
        lines.append(f"sequential on {res['threads']} threads / on 1 thread: "
                     f"{res['samples_per_s']['sequential-mt'] / res['samples_per_s']['sequential']:.2f}x")
    if res.get("bf16_speedup"):
        lines.append(f"bf16 autocast (opt-in) vs fp32 sequential: {res['bf16_speedup']:.2f}x")
    if res.get("bf16_fastest_vs_naive"):
        lines.append(f"processes engine in bf16 (opt-in) vs naive fp32 loop: {res['bf16_fastest_vs_naive']:.2f}x")
    lines.append(f"aggregation (RLR over FedAvg, {res['aggregation_seconds'] * 1e3:.1f} ms) share of a round: "
                 f"{100 * res['aggregation_share']:.2f} %")
    return "\n".join(lines)
