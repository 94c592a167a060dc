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
    norms = torch.linalg.vector_norm(U, dim=1)
    over = norms > 10.0
    assert 0 < int(over.sum()) < 6  # rows k of 50 normals times k: norms about 7k, some under 10, some over
    clipped, n = clip_updates(U, 10.0)
    assert n == int(over.sum())
    # rows over the bound: the same direction at norm exactly the bound; the others untouched
    torch.testing.assert_close(torch.linalg.vector_norm(clipped[over], dim=1), torch.full((n,), 10.0), rtol=1e-6, atol=0)
    torch.testing.assert_close(clipped[over], U[over] * (10.0 / norms[over]).unsqueeze(1), rtol=1e-6, atol=1e-7)
    assert torch.equal(clipped[~over], U[~over])
    # the weighted mean written out: sum_k w_k c_k / sum_k w_k
    expected = (w.unsqueeze(1) * clipped).sum(0) / w.sum()
    torch.testing.assert_close(ClipAndNoise(FedAvg(), 10.0)(U, weights=w), expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(ClipAndNoise(FedAvg(), 10.0)(U, weights=w), FedAvg()(clipped, weights=w), atol=1e-6)
    assert torch.allclose(ClipAndNoise(CoordinateMedian(), 10.0)(U), CoordinateMedian()(clipped))


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
    # zero updates: the output is the noise alone, std noise_sigma * clip_norm = 2 times the seeded draws
    assert torch.equal(a, 2.0 * torch.randn(200_000, generator=torch.Generator().manual_seed(7)))
    assert a.std().item() == pytest.approx(2.0, rel=0.01)
    assert abs(a.mean().item()) < 0.02
    again = ClipAndNoise(FedAvg(), clip_norm=4.0, noise_sigma=0.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(again(U), a)
    assert not torch.equal(rule(U), a)  # the generator advanced
    # without clipping there is no noise either: its std is sigma * M = 0 (the authors' code), and
    # the generator is not drawn from
    gen = torch.Generator().manual_seed(7)
    bare = ClipAndNoise(FedAvg(), clip_norm=0.0, noise_sigma=0.5, generator=gen)
    assert bare.noise_std == 0.0
    assert torch.equal(bare(U), FedAvg()(U)) and bare.telemetry["noise_std"] == 0.0
    assert torch.equal(gen.get_state(), torch.Generator().manual_seed(7).get_state())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_noise_keeps_dtype(dtype):
    U = torch.zeros(2, 10, dtype=dtype)
    out = ClipAndNoise(FedAvg(), 1.0, 0.1, torch.Generator().manual_seed(0))(U)
    # drawn in the updates' precision (float64 for float64) from the seeded generator, times sigma * M = 0.1
    draws = torch.randn(10, generator=torch.Generator().manual_seed(0), dtype=dtype)
    assert out.dtype == dtype and torch.equal(out, 0.1 * draws)


def test_errors():
    with pytest.raises(ValueError, match="clip_norm"):
        ClipAndNoise(FedAvg(), clip_norm=-1.0)
    with pytest.raises(ValueError, match="noise_sigma"):
        ClipAndNoise(FedAvg(), clip_norm=1.0, noise_sigma=float("nan"))
    with pytest.raises(ValueError, match="generator"):
        ClipAndNoise(FedAvg(), clip_norm=1.0, generator=42)
    with pytest.raises(ValueError, match="rule"):
        ClipAndNoise("fedavg", clip_norm=1.0)
