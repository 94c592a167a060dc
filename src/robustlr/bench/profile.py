"""``robustlr bench profile`` and ``robustlr bench levers``: where one agent's time goes, and
what each speed lever buys, on one thread.

``profile`` trains one agent of a preset's model with the reference engine
(:class:`~robustlr.sim.engines.sequential.SequentialEngine`, one intra-op thread) on synthetic
inputs of the model's shape, under PyTorch's profiler, in fp32 and in bf16, and prints the
operators by self time (ms per batch, share), beside the one-thread matmul rate of each
precision (the per-thread floor).

``levers`` times variants of the same local training step against each other, interleaved
in one process (round-robin repeats, medians), so that the ratios survive a noisy machine:
the layout (channels-last vs default), ``torch.compile`` (inductor; opt-in, its compile time
reported apart), the fused SGD step, bf16 dropout masks under autocast, bf16 weights with fp32
master copies instead of autocast, and a cheaper mask draw (one random byte per 8 mask
entries). Variants that are not what the engines do are here only to be measured: their
ratios are why they were (not) adopted (see ``docs/speed.md``).

Both run with the allocator tuned as the engines run (:mod:`robustlr.sim.engines.allocator`);
that lever is measured across processes: the same command with ``ROBUSTLR_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from robustlr.bench.common import matmul_gflops, training_flops_per_sample
from robustlr.models import build_model, make_dropout_masks, model_spec
from robustlr.sim.config import load_config
from robustlr.sim.engines.allocator import tune_allocator


def _one_thread(fn: Callable[[], object]) -> object:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def run_profile(preset: str = "iid-fedavg", steps: int = 8, precisions: tuple[str, ...] = ("fp32", "bf16"),
                top: int = 14, progress=print) -> dict:
    """Per-operator self time of one agent's ``steps`` batches, one thread, per precision."""
    from torch.profiler import ProfilerActivity, profile

    from robustlr.sim.engines import EngineContext, LocalSettings
    from robustlr.sim.engines.sequential import SequentialEngine

    from robustlr.sim.engines.select import bf16_is_native

    cfg = load_config(preset)
    # a CPU without native bf16 emulates it (~75x slower than fp32): profiling it there shows nothing
    skipped = [p for p in precisions if p == "bf16" and not bf16_is_native(torch.device("cpu"))]
    precisions = tuple(p for p in precisions if p not in skipped)
    tuned = tune_allocator()
    shape = model_spec(cfg.model).input_shape or cfg.input_shape
    b = cfg.batch_size
    n = steps * b
    torch.manual_seed(0)
    x, y = torch.randn(n, *shape), torch.randint(0, cfg.num_classes, (n,))
    rows = np.arange(n)
    flops = training_flops_per_sample(build_model(cfg.model, num_classes=cfg.num_classes), shape)
    res: dict = {"preset": preset, "model": cfg.model, "batch_size": b, "steps": steps,
                 "training_mflop_per_sample": flops / 1e6, "allocator_tuned": tuned, "precisions": {},
           "skipped": {p: "no native bf16 on this CPU (emulated)" for p in skipped}}

    def measure(prec: str) -> dict:
        settings = LocalSettings(epochs=1, batch_size=b, lr=cfg.client_lr, momentum=cfg.client_momentum,
                                 grad_clip=cfg.grad_clip, clip_norm=0.0, seed=0, precision=prec)
        eng = SequentialEngine(EngineContext(cfg.model, cfg.num_classes, settings, x, y, [rows],
                                             torch.device("cpu"), max_agents=1))
        flat = eng.layout.flatten(eng.model).clone()
        eng.train_agent(flat, rows, 1, 0)  # warm-up
        times = []
        for _ in range(3):
            t = time.perf_counter()
            eng.train_agent(flat, rows, 1, 0)
            times.append(time.perf_counter() - t)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            eng.train_agent(flat, rows, 1, 0)
        events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        total = sum(e.self_cpu_time_total for e in events)
        ops = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
        gflops = matmul_gflops(torch.device("cpu"), dtype=torch.float32 if prec == "fp32" else torch.bfloat16)
        sps = n / statistics.median(times)
        return {"samples_per_s": sps, "matmul_gflops_1thread": gflops,
                "floor_samples_per_s_1thread": gflops * 1e9 / flops, "floor_share_1thread": sps / (gflops * 1e9 / flops),
                "profiled_ms_per_batch": total / 1e3 / steps,
                "ops": [{"op": e.key, "calls_per_batch": e.count / steps, "ms_per_batch": e.self_cpu_time_total / 1e3 / steps,
                         "share": e.self_cpu_time_total / total} for e in ops]}

    for prec in precisions:
        progress(f"profiling one agent in {prec} on one thread")
        res["precisions"][prec] = _one_thread(lambda: measure(prec))
    return res


def format_profile(res: dict) -> str:
    lines = [f"robustlr bench profile: one agent of {res['preset']} ({res['model']}), {res['steps']} batches of "
             f"{res['batch_size']}, one thread; {res['training_mflop_per_sample']:.1f} MFLOP per training sample"]
    for prec, why in res.get("skipped", {}).items():
        lines.append(f"{prec}: not profiled: {why}")
    for prec, r in res["precisions"].items():
        lines += ["", f"{prec}: {r['samples_per_s']:.0f} samples/s = {100 * r['floor_share_1thread']:.1f} % of the one-thread "
                  f"{prec} floor ({r['matmul_gflops_1thread']:.0f} GFLOP/s matmul, {r['floor_samples_per_s_1thread']:.0f} "
                  f"samples/s); profiled {r['profiled_ms_per_batch']:.1f} ms per batch",
                  f"  {'operator':<44}{'calls/batch':>12}{'ms/batch':>10}{'share %':>9}"]
        for o in r["ops"]:
            lines.append(f"  {o['op'][:43]:<44}{o['calls_per_batch']:>12.1f}{o['ms_per_batch']:>10.2f}{100 * o['share']:>9.1f}")
    return "\n".join(lines)


# -- levers

def _masks(shapes, b: int, g: torch.Generator, dtype: torch.dtype, packed: bool) -> list[torch.Tensor]:
    if not packed:
        return make_dropout_masks(shapes, b, g, dtype=dtype)  # what the engines draw
    out = []
    for shape, p in shapes:  # one random byte per 8 entries, unpacked to bits (a different draw)
        size = (b, *shape)
        n = int(np.prod(size))
        r = torch.randint(0, 256, ((n + 7) // 8,), generator=g, dtype=torch.uint8)
        bits = (r.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1
        out.append(bits.view(-1)[:n].view(size).to(dtype).mul_(1.0 / (1.0 - p)))  # keep probability 1/2
    return out


LEVERS: dict[str, dict] = {
    "fp32 (engines)": {"prec": "fp32"},
    "fp32 default layout": {"prec": "fp32", "layout": "default"},
    "fp32 fused SGD": {"prec": "fp32", "fused": True},
    "fp32 packed mask draw": {"prec": "fp32", "packed": True},
    "fp32 torch.compile": {"prec": "fp32", "compile": True},
    "bf16 autocast, fp32 masks (0.2)": {"prec": "bf16", "mask_bf16": False},
    "bf16 autocast, bf16 masks (engines)": {"prec": "bf16"},
    "bf16 weights + fp32 master": {"prec": "bf16", "master": True},
    "bf16 + fused SGD": {"prec": "bf16", "fused": True},
    "bf16 + packed mask draw": {"prec": "bf16", "packed": True},
    "bf16 torch.compile": {"prec": "bf16", "compile": True},
}


def _lever_step(model_name: str, num_classes: int, x: torch.Tensor, y: torch.Tensor, b: int, steps: int, lr: float,
                momentum: float, grad_clip: float, prec: str = "fp32", layout: str = "cl", fused: bool = False,
                packed: bool = False, mask_bf16: bool = True, master: bool = False, compile: bool = False):
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=num_classes)
    if layout == "cl":
        model = model.to(memory_format=torch.channels_last)
    shapes = model.dropout_shapes()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, **({"fused": True} if fused else {}))
    low = copy.deepcopy(model).to(torch.bfloat16) if master else None
    low_params = [p for p in low.parameters() if p.requires_grad] if low is not None else []
    fwd = torch.compile(model, dynamic=False) if compile else model
    mask_dtype = torch.bfloat16 if prec == "bf16" and (mask_bf16 or master) else torch.float32
    g = torch.Generator().manual_seed(0)

    def run() -> None:
        for s in range(steps):
            xb, yb = x[s * b:(s + 1) * b], y[s * b:(s + 1) * b]
            opt.zero_grad(set_to_none=True)
            masks = _masks(shapes, b, g, mask_dtype, packed)
            if low is not None:
                with torch.no_grad():
                    torch._foreach_copy_(low_params, params)
                for q in low_params:
                    q.grad = None
                F.cross_entropy(low(xb.to(torch.bfloat16), masks).float(), yb).backward()
                for p, q in zip(params, low_params):
                    p.grad = q.grad.float()
            elif prec == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = fwd(xb, masks)
                F.cross_entropy(out.float(), yb).backward()
            else:
                F.cross_entropy(fwd(xb, masks).float(), yb).backward()
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(params, grad_clip)
            opt.step()

    return run


def run_levers(preset: str = "iid-fedavg", steps: int = 6, repeats: int = 5, with_compile: bool = False,
               progress=print) -> dict:
    """Each lever's samples/s and its ratio to the engines' step of the same precision, one thread."""
    cfg = load_config(preset)
    tuned = tune_allocator()
    shape = model_spec(cfg.model).input_shape or cfg.input_shape
    b = cfg.batch_size
    torch.manual_seed(0)
    x, y = torch.randn(steps * b, *shape), torch.randint(0, cfg.num_classes, (steps * b,))
    if not hasattr(build_model(cfg.model, num_classes=cfg.num_classes), "dropout_shapes"):
        raise ValueError(f"bench levers needs a model with explicit dropout masks; {cfg.model} has none")
    from robustlr.sim.engines.select import bf16_is_native

    native = bf16_is_native(torch.device("cpu"))  # without it bf16 is emulated: its levers are not timed
    chosen = {k: v for k, v in LEVERS.items()
              if (with_compile or not v.get("compile")) and (native or v["prec"] != "bf16")}

    def measure() -> dict:
        fns, setup = {}, {}
        for label, kw in chosen.items():
            fns[label] = _lever_step(cfg.model, cfg.num_classes, x, y, b, steps, cfg.client_lr, cfg.client_momentum,
                                     cfg.grad_clip, **kw)
            progress(f"warming up: {label}")
            t = time.perf_counter()
            fns[label]()  # warm-up (and compilation)
            setup[label] = time.perf_counter() - t
        times: dict[str, list[float]] = {k: [] for k in fns}
        for r in range(repeats):
            progress(f"repeat {r + 1} of {repeats}")
            for label, fn in fns.items():
                t = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - t)
        return {"setup": setup, "times": times}

    out = _one_thread(measure)
    med = {k: statistics.median(v) for k, v in out["times"].items()}
    base = {"fp32": med["fp32 (engines)"]}
    if "bf16 autocast, bf16 masks (engines)" in med:
        base["bf16"] = med["bf16 autocast, bf16 masks (engines)"]
    rows = [{"lever": k, "precision": chosen[k]["prec"], "samples_per_s": steps * b / med[k],
             "vs_engines": base[chosen[k]["prec"]] / med[k], "first_call_s": out["setup"][k]} for k in chosen]
    return {"preset": preset, "model": cfg.model, "batch_size": b, "steps": steps, "repeats": repeats,
            "allocator_tuned": tuned, "rows": rows}


def format_levers(res: dict) -> str:
    lines = [f"robustlr bench levers: {res['model']}, {res['steps']} batches of {res['batch_size']} per timing, one "
             f"thread, {res['repeats']} interleaved repeats (medians); ratio to the engines' step of the same precision; "
             f"allocator {'tuned' if res['allocator_tuned'] else 'not tuned'}",
             f"{'lever':<38}{'samples/s':>11}{'vs engines':>12}{'first call s':>14}"]
    for r in res["rows"]:
        lines.append(f"{r['lever']:<38}{r['samples_per_s']:>11.0f}{r['vs_engines']:>11.3f}x{r['first_call_s']:>14.1f}")
    return "\n".join(lines)
