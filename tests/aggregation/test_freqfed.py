"""FreqFed: the DCT features against scipy, hand-worked clusterings, the round inputs it needs, bad input."""

import pytest
import torch

pytest.importorskip("sklearn", reason="FreqFed clusters with scikit-learn (the 'flame' extra)")

from robustlr.aggregation import FedAvg, FreqFed, PlainBuffers, RobustLR, RoundInputs  # noqa: E402
from robustlr.aggregation.freqfed import dct_matrix, low_frequencies  # noqa: E402


def _rule(global_params, **kw):
    rule = FreqFed(weight=slice(0, 4), shape=(2, 2), **kw)
    rule.set_round_inputs(RoundInputs(global_params=torch.as_tensor(global_params, dtype=torch.float32)))
    return rule


def test_the_features_are_scipys_orthonormal_2d_dct_ii_in_the_upper_left_triangle():
    scipy_fft = pytest.importorskip("scipy.fft")
    W = torch.randn(3, 10, 128, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    full = torch.as_tensor(scipy_fft.dctn(W.numpy(), type=2, norm="ortho", axes=(1, 2)))
    # i < 5, j < 64, i + j <= (10 + 128) // 4 = 34: 35 + 34 + 33 + 32 + 31 = 165 coefficients, row by row
    expected = torch.cat([full[:, i, : 35 - i] for i in range(5)], dim=1)
    got = low_frequencies(W)
    assert got.shape == (3, 165)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    # a 1-row layer keeps row 0; C is orthonormal
    assert low_frequencies(torch.ones(1, 1, 4, dtype=torch.float64)).shape == (1, 2)
    torch.testing.assert_close(dct_matrix(7) @ dct_matrix(7).T, torch.eye(7, dtype=torch.float64))


def test_the_largest_cluster_of_local_models_is_averaged_by_size():
    G = [0.5, 0.0, 0.0, 0.5]
    U = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.1, 0.9, 1.0, 1.0], [0.9, 1.0, 1.1, 1.0], [-3.0, 2.0, -3.0, 2.0],
                      [7.0, 7.0, 7.0, 7.0]])
    rule = _rule(G)
    out = rule(U[:4], weights=torch.tensor([1.0, 2.0, 1.0, 5.0]))
    # min_cluster_size 3: agents 0-2 (their local models all point near (1.5, 1, 1, 1.5)) are the cluster
    assert rule.telemetry["admitted_rows"] == [0, 1, 2] and rule.telemetry["rejected_rows"] == [3]
    torch.testing.assert_close(out, (U[0] + 2 * U[1] + U[2]) / 4)
    # the fifth update has the cluster's direction but 7x its size: cosine sees no difference
    out = rule(U, agent_ids=list("abcde"))
    assert rule.telemetry["rejected_agents"] == ["d"]
    torch.testing.assert_close(out, U[[0, 1, 2, 4]].mean(0))


def test_all_noise_admits_everyone_and_one_agent_is_its_own_cluster(monkeypatch):
    import robustlr.aggregation.freqfed as freqfed

    class AllNoise:  # an HDBSCAN that finds no cluster (with allow_single_cluster it rarely happens)
        def __init__(self, **kw):
            assert kw == {"min_cluster_size": 2, "min_samples": 1, "metric": "precomputed",
                          "allow_single_cluster": True, "copy": True}

        def fit_predict(self, d):
            return [-1] * len(d)

    monkeypatch.setattr(freqfed, "_hdbscan_class", lambda: AllNoise)
    rule = _rule([0.0] * 4)
    U = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    out = rule(U, weights=torch.tensor([1.0, 1.0, 2.0]))
    assert rule.telemetry["all_noise"] and rule.telemetry["admitted_rows"] == [0, 1, 2]
    torch.testing.assert_close(out, torch.tensor([0.25, 0.25, 0.0, 0.5]))
    torch.testing.assert_close(rule(U[:1]), U[0])


def test_it_reads_the_global_model_through_the_wrappers():
    rule = RobustLR(PlainBuffers(FreqFed(weight=slice(0, 4), shape=(2, 2)), torch.tensor([True] * 4 + [False])),
                    threshold=1)
    assert rule.round_inputs == {"global_params"} and not FedAvg().round_inputs
    rule.set_round_inputs(RoundInputs(global_params=torch.tensor([0.5, 0.0, 0.0, 0.5, 99.0])))
    U = torch.tensor([[1.0, 1.0, 1.0, 1.0, 3.0], [1.1, 0.9, 1.0, 1.0, 5.0], [0.9, 1.0, 1.1, 1.0, 7.0],
                      [-3.0, 2.0, -3.0, 2.0, 9.0]])
    out = rule(U)
    # threshold 1 flips nothing; the buffer column is the plain mean
    torch.testing.assert_close(out, torch.cat([U[:3, :4].mean(0), torch.tensor([6.0])]))


def test_bad_input_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="shape \\(3, 2\\) does not fit the output layer's 4 coordinates"):
        FreqFed(weight=slice(0, 4), shape=(3, 2))
    with pytest.raises(ValueError, match="slice\\(start, stop\\)"):
        FreqFed(weight=[0, 1], shape=(1, 2))
    with pytest.raises(ValueError, match="min_cluster_size must be an integer >= 2"):
        FreqFed(weight=slice(0, 4), shape=(2, 2), min_cluster_size=1)
    U = torch.ones(3, 4)
    with pytest.raises(ValueError, match=r"call rule.set_round_inputs\(RoundInputs\(global_params=w\)\)"):
        FreqFed(weight=slice(0, 4), shape=(2, 2))(U)
    with pytest.raises(ValueError, match="ends at coordinate 6 but the updates have 4 columns"):
        FreqFed(weight=slice(2, 6), shape=(2, 2))(U)
    with pytest.raises(ValueError, match="global model given has shape \\(3,\\) but the updates have 4 columns"):
        _rule([0.0] * 3)(U)
    bad = U.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[2\]"):
        _rule([0.0] * 4)(bad)
