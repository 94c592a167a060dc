"""Timing helpers shared by the benchmarks: device sync, alternating pairs, the matmul floor."""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_pair(fn: Callable[[], Any], base: Callable[[], Any], repeats: int,
              device: torch.device) -> tuple[list[float], list[float]]:
    """Times of ``fn`` and of ``base``, measured alternately after a warm-up of each.

    Alternating makes the ratio of the two medians robust to the machine's speed drifting
    during the run (other jobs, frequency changes).
    """

    def once(f: Callable[[], Any]) -> float:
        start = time.perf_counter()
        f()
        sync(device)
        return time.perf_counter() - start

    base()  # warm-up: allocator, thread pool, kernels
    fn()
    sync(device)
    fn_times, base_times = [], []
    for _ in range(repeats):
        base_times.append(once(base))
        fn_times.append(once(fn))
    return fn_times, base_times


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 5, dtype=torch.float32) -> float:
    """Throughput of a large square matrix product, measured now: the compute floor's rate."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for i in range(repeats + 2):
        sync(device)
        t = time.perf_counter()
        (a @ b).sum().item() if device.type == "cuda" else a @ b
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def training_flops_per_sample(model: nn.Module, shape: tuple[int, ...], batch: int = 32) -> float:
    """Forward + backward FLOPs of one training sample, counted by PyTorch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(model).cpu().train()
    x = torch.randn(batch, *shape)
    y = torch.zeros(batch, dtype=torch.int64)
    with FlopCounterMode(display=False) as fc:
        F.cross_entropy(m(x), y).backward()
    return fc.get_total_flops() / batch
