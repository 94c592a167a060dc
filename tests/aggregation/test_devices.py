"""CUDA gives the CPU's results (skipped without a GPU)."""

import pytest
import torch

from robustlr.aggregation import (
    Bulyan,
    ClipAndNoise,
    CoordinateMedian,
    FedAvg,
    Flame,
    FoolsGold,
    GeometricMedian,
    Krum,
    NormBounding,
    ParamLayout,
    RobustLR,
    SignAggregation,
    SignGuard,
    TrimmedMean,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

RULES = {
    "FedAvg": lambda: FedAvg(),
    "CoordinateMedian": lambda: CoordinateMedian(),
    "SignAggregation": lambda: SignAggregation(),
    "FoolsGold": lambda: FoolsGold(),
    "ClipAndNoise": lambda: ClipAndNoise(FedAvg(), 1.0, 1e-3, torch.Generator().manual_seed(0)),
    "RobustLR": lambda: RobustLR(FedAvg(), threshold=4),
    "RobustLR(clip)": lambda: RobustLR(ClipAndNoise(CoordinateMedian(), 1.0, 1e-2, torch.Generator().manual_seed(1)), threshold=3),
    "TrimmedMean": lambda: TrimmedMean(0.25),
    "Krum": lambda: Krum(f=2),
    "MultiKrum": lambda: Krum(f=2, m=4),
    "Bulyan": lambda: Bulyan(f=1),
    "GeometricMedian": lambda: GeometricMedian(),
    "NormBounding": lambda: NormBounding(CoordinateMedian(), bound=1.0),
    "Flame": lambda: Flame(generator=torch.Generator().manual_seed(2)),
    "SignGuard": lambda: SignGuard(generator=torch.Generator().manual_seed(3)),
    "RobustLR(Krum)": lambda: RobustLR(Krum(f=1), threshold=4),
}


@cuda
@pytest.mark.parametrize("name", sorted(RULES))
def test_cuda_matches_cpu(name):
    g = torch.Generator().manual_seed(0)
    U = torch.randn(8, 100_003, generator=g) * 0.01
    U[:, ::7] = 0.0
    w = torch.arange(1, 9, dtype=torch.float32)
    ids = list(range(8))
    cpu_rule, gpu_rule = RULES[name](), RULES[name]()
    a = cpu_rule(U, weights=w, agent_ids=ids)
    b = gpu_rule(U.cuda(), weights=w.cuda(), agent_ids=ids)
    assert b.device.type == "cuda" and b.dtype == a.dtype
    assert torch.allclose(a, b.cpu(), rtol=1e-4, atol=1e-6)
    if "n_flipped" in cpu_rule.telemetry:
        assert cpu_rule.telemetry["n_flipped"] == gpu_rule.telemetry["n_flipped"]


@cuda
def test_cuda_layout_and_errors():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)).cuda()
    layout = ParamLayout.from_module(model)
    vec = layout.flatten(model)
    assert vec.is_cuda
    state = layout.unflatten(vec)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    U = torch.randn(3, layout.numel, device="cuda")
    out = RobustLR(FedAvg(), threshold=3, layout=layout)(U)
    assert out.is_cuda
    U[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[2\]"):
        RobustLR(FedAvg(), threshold=3)(U)
