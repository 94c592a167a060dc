"""ClipAndNoise: exact clipping, noise scale and reproducibility."""

import pytest
import torch

from robustlr.aggregation import ClipAndNoise, CoordinateMedian, FedAvg, clip_updates


def test_clip_exact():
    U = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    rule = ClipAndNoise(FedAvg(), clip_norm=1.0)
    # [0.6, 0.8] + [0.3, 0.4] + 0, over 3
    assert torch.allclose(rule(U), torch.tensor([0.3, 0.4]), atol=1e-7)
    assert rule.telemetry == {"n_clipped": 1, "noise_std": 0.0, "inner": {}}


def test_weighted_fedavg_folding_matches_clipped_copy():
    g = torch.Generator().manual_seed(0)
    U = torch.randn(6, 50, generator=g) * torch.arange(1, 7).unsqueeze(1)
    w = torch.tensor([1.0, 2.0, 3.0, 0.0, 5.0, 1.0])
    clipped, n = clip_updates(U, 5.0)
    assert n > 0
    assert torch.allclose(ClipAndNoise(FedAvg(), 5.0)(U, weights=w), FedAvg()(clipped, weights=w), atol=1e-6)
    assert torch.allclose(ClipAndNoise(CoordinateMedian(), 5.0)(U), CoordinateMedian()(clipped))


def test_bound_equal_to_norm_is_not_clipped():
    rule = ClipAndNoise(FedAvg(), clip_norm=5.0)
    assert torch.equal(rule(torch.tensor([[3.0, 4.0]])), torch.tensor([3.0, 4.0]))
    assert rule.telemetry["n_clipped"] == 0


def test_clip_norm_zero_disables_clipping():
    U = torch.tensor([[30.0, 40.0], [1.0, 0.0]])
    rule = ClipAndNoise(FedAvg(), clip_norm=0.0)
    assert torch.equal(rule(U), torch.tensor([15.5, 20.0]))
    assert rule.telemetry["n_clipped"] == 0
    assert clip_updates(U, 0.0)[0] is U


def test_noise_std_and_reproducibility():
    U = torch.zeros(2, 200_000)
    rule = ClipAndNoise(FedAvg(), clip_norm=4.0, noise_sigma=0.5, generator=torch.Generator().manual_seed(7))
    a = rule(U)
    assert rule.telemetry["noise_std"] == 2.0
    assert a.std().item() == pytest.approx(2.0, rel=0.01)
    assert abs(a.mean().item()) < 0.02
    again = ClipAndNoise(FedAvg(), clip_norm=4.0, noise_sigma=0.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(again(U), a)
    assert not torch.equal(rule(U), a)  # the generator advanced
    # without clipping the std is noise_sigma itself
    bare = ClipAndNoise(FedAvg(), clip_norm=0.0, noise_sigma=0.5, generator=torch.Generator().manual_seed(7))
    assert bare.noise_std == 0.5
    assert torch.allclose(bare(U), a / 4.0)


def test_noise_keeps_dtype():
    U = torch.zeros(2, 10, dtype=torch.float64)
    out = ClipAndNoise(FedAvg(), 1.0, 0.1, torch.Generator().manual_seed(0))(U)
    assert out.dtype == torch.float64 and out.abs().sum() > 0


def test_errors():
    with pytest.raises(ValueError, match="clip_norm"):
        ClipAndNoise(FedAvg(), clip_norm=-1.0)
    with pytest.raises(ValueError, match="noise_sigma"):
        ClipAndNoise(FedAvg(), clip_norm=1.0, noise_sigma=float("nan"))
    with pytest.raises(ValueError, match="generator"):
        ClipAndNoise(FedAvg(), clip_norm=1.0, generator=42)
    with pytest.raises(ValueError, match="rule"):
        ClipAndNoise("fedavg", clip_norm=1.0)
