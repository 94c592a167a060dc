"""The Byzantine-robust baselines: TrimmedMean, Krum, Bulyan, GeometricMedian, NormBounding, Flame.

Exact values on small hand-computed matrices (the arithmetic is in the comments), argument and
requirement errors, composition with RobustLR and ClipAndNoise, and robustness to one huge update.
"""

import math

import pytest
import torch

from robustlr.aggregation import (
    Bulyan,
    ClipAndNoise,
    CoordinateMedian,
    FedAvg,
    Flame,
    GeometricMedian,
    Krum,
    NormBounding,
    RobustLR,
    TrimmedMean,
)
from robustlr.aggregation.flame import cosine_distances
from robustlr.aggregation.robust import gram_matrix, pairwise_sq_distances

# the four corners of the unit square and one far point (Krum's doctest)
CORNERS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [10.0, 10.0]])


# ---------------------------------------------------------------- distances


def test_pairwise_distances_and_gram_are_exact_on_small_integers():
    U = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    # |r0-r1|^2 = 9+16 = 25, |r0-r2|^2 = 1, |r1-r2|^2 = 9+9 = 18
    expected = torch.tensor([[0.0, 25.0, 1.0], [25.0, 0.0, 18.0], [1.0, 18.0, 0.0]], dtype=torch.float64)
    assert torch.equal(pairwise_sq_distances(U), expected)
    assert torch.equal(gram_matrix(U), torch.tensor([[0.0, 0, 0], [0, 25, 4], [0, 4, 1]], dtype=torch.float64))


def test_pairwise_distances_do_not_cancel_for_close_updates_far_from_the_origin():
    g = torch.Generator().manual_seed(0)
    base = torch.full((1, 5000), 1e3, dtype=torch.float64)
    U = base + 1e-6 * torch.randn(6, 5000, generator=g, dtype=torch.float64)
    direct = torch.cdist(U - base, U - base) ** 2  # the same distances, without the offset
    torch.testing.assert_close(pairwise_sq_distances(U), direct, rtol=1e-8, atol=1e-20)


def test_distances_are_accumulated_over_many_column_blocks():
    g = torch.Generator().manual_seed(1)
    U = torch.randn(5, 700_001, generator=g)
    direct = torch.cdist(U.double(), U.double()) ** 2
    torch.testing.assert_close(pairwise_sq_distances(U), direct, rtol=1e-10, atol=1e-6)


# ---------------------------------------------------------------- TrimmedMean


def test_trimmed_mean_exact_values():
    U = torch.tensor([[1.0, -5.0], [2.0, 0.0], [3.0, 1.0], [4.0, 2.0], [100.0, 3.0]])
    # b = floor(0.2 * 5) = 1 per side: column 0 keeps [2, 3, 4] -> 3, column 1 keeps [0, 1, 2] -> 1
    rule = TrimmedMean(0.2)
    assert torch.equal(rule(U), torch.tensor([3.0, 1.0]))
    assert rule.telemetry == {"n_trimmed": 1}
    # b = floor(0.1 * 5) = 0: the plain mean, (1+2+3+4+100)/5 = 22 and (-5+0+1+2+3)/5 = 0.2
    torch.testing.assert_close(TrimmedMean(0.1)(U), torch.tensor([22.0, 0.2]))
    # b = floor(0.45 * 5) = 2 per side: the median, 3 and 1
    assert torch.equal(TrimmedMean(0.45)(U), torch.tensor([3.0, 1.0]))


def test_trimmed_mean_counts_per_side_and_rounds_before_the_floor():
    assert TrimmedMean(0.25).n_trimmed(10) == 2  # floor(2.5) from each end, 4 in all, 6 kept
    assert TrimmedMean(0.3).n_trimmed(10) == 3  # 0.3 * 10 = 3.0000000000000004 in binary
    assert TrimmedMean(0.29).n_trimmed(100) == 29  # 0.29 * 100 = 28.999999999999996; Flower: 28
    assert TrimmedMean(0.49).n_trimmed(3) == 1  # floor(1.47)
    assert TrimmedMean(0.0).n_trimmed(1) == 0
    U = torch.arange(10.0).unsqueeze(1)  # 0..9
    # b = 2: mean of 2..7 = 27 / 6 = 4.5 (the same as the plain mean for a symmetric column)
    assert torch.equal(TrimmedMean(0.25)(U), torch.tensor([4.5]))
    V = torch.tensor([[0.0], [0.0], [0.0], [1.0], [2.0], [3.0], [4.0], [90.0], [90.0], [90.0]])
    # b = 3: keeps [1, 2, 3, 4] -> 2.5
    assert torch.equal(TrimmedMean(0.3)(V), torch.tensor([2.5]))


def test_trimmed_mean_ignores_weights_and_keeps_float64():
    U = torch.tensor([[1.0], [2.0], [30.0]], dtype=torch.float64)
    out = TrimmedMean(0.34)(U, weights=[100, 1, 1])  # b = 1: the middle value
    assert out.dtype == torch.float64 and torch.equal(out, torch.tensor([2.0], dtype=torch.float64))


def test_trimmed_mean_matches_a_sort_over_many_blocks():
    g = torch.Generator().manual_seed(2)
    U = torch.randn(9, 300_001, generator=g)
    ref = torch.sort(U, dim=0).values[2:7].mean(dim=0)  # b = floor(0.25 * 9) = 2
    torch.testing.assert_close(TrimmedMean(0.25)(U), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7, float("nan"), "a", True, None])
def test_trimmed_mean_rejects_bad_beta(beta):
    with pytest.raises(ValueError, match="beta"):
        TrimmedMean(beta)


# ---------------------------------------------------------------- Krum


def test_krum_scores_and_selection():
    rule = Krum(f=1)
    # n = 5, f = 1: n - f - 2 = 2 neighbours. (0,0): 1 + 1 (to (1,0) and (0,1)) = 2, and so on
    # for each corner; (10,10): 162 (to (1,1)) + 181 (to (1,0)) = 343. Ties go to the lower row.
    assert torch.equal(rule(CORNERS, agent_ids=["a", "b", "c", "d", "e"]), torch.tensor([0.0, 0.0]))
    assert rule.telemetry["scores"] == [2.0, 2.0, 2.0, 2.0, 343.0]
    assert rule.telemetry["selected_rows"] == [0]
    assert rule.telemetry["selected_agents"] == ["a"]
    assert rule.telemetry["n_neighbours"] == 2


def test_krum_picks_the_most_central_update():
    U = torch.tensor([[2.0, 0.5], [2.0, -1.0], [3.0, 0.0], [1.0, 0.0], [-20.0, 20.0]])
    # squared distances: r0-r1 2.25, r0-r2 1.25, r0-r3 1.25, r1-r2 2, r1-r3 2, r2-r3 4, r4 > 800
    # scores (2 nearest): r0 1.25+1.25 = 2.5, r1 2+2 = 4, r2 1.25+2 = 3.25, r3 3.25, r4 > 1600
    rule = Krum(f=1)
    out = rule(U)
    assert torch.equal(out, U[0]) and rule.telemetry["scores"][:4] == [2.5, 4.0, 3.25, 3.25]
    out[0] = 99.0  # the result is a copy, not a view of the updates
    assert U[0, 0] == 2.0


def test_multi_krum_weighted_and_uniform():
    # the four corners score 2, the far point 343: m = 4 selects the corners
    rule = Krum(f=1, m=4)
    # uniform: (0+1+0+1)/4, (0+0+1+1)/4
    assert torch.equal(rule(CORNERS), torch.tensor([0.5, 0.5]))
    assert rule.telemetry["selected_rows"] == [0, 1, 2, 3]
    # weighted 1:1:1:5 (the far point's weight does not matter): (1 + 5) / 8 = 0.75 in both coordinates
    assert torch.equal(rule(CORNERS, weights=[1, 1, 1, 5, 100]), torch.tensor([0.75, 0.75]))
    # m = 2: the two lowest scores, rows 0 and 1 (ties to the lower rows): (0+1)/2, 0
    assert torch.equal(Krum(f=1, m=2)(CORNERS.double()), torch.tensor([0.5, 0.0], dtype=torch.float64))
    # m = n: every update, i.e. FedAvg
    torch.testing.assert_close(Krum(f=1, m=5)(CORNERS, weights=[1, 2, 3, 4, 5]), FedAvg()(CORNERS, weights=[1, 2, 3, 4, 5]))


def test_multi_krum_falls_back_to_the_plain_mean_when_the_selected_weigh_nothing():
    rule = Krum(f=1, m=2)
    assert torch.equal(rule(CORNERS, weights=[0, 0, 1, 1, 1]), torch.tensor([0.5, 0.0]))
    assert rule.telemetry["zero_weight_fallback"] is True


def test_krum_requires_n_above_2f_plus_2():
    with pytest.raises(ValueError, match=r"n > 2f \+ 2 agents, got n=4 with f=1 \(it needs at least 5\); lower f to at most 0"):
        Krum(f=1)(CORNERS[:4])
    with pytest.raises(ValueError, match=r"n=5 with f=2"):
        Krum(f=2)(CORNERS)
    with pytest.raises(ValueError, match="at least 3 agents"):
        Krum(f=0)(CORNERS[:2])
    Krum(f=0)(CORNERS[:3])  # 3 > 2
    with pytest.raises(ValueError, match=r"m=6.*n=5.*at most 5"):
        Krum(f=1, m=6)(CORNERS)


@pytest.mark.parametrize("kwargs, match", [
    ({"f": -1}, r"f must be an integer >= 0, got -1"),
    ({"f": 1.5}, r"f must be an integer >= 0, got 1.5"),
    ({"f": True}, r"f must be an integer"),
    ({"f": 1, "m": 0}, r"m must be an integer >= 1, got 0"),
    ({"f": 1, "m": 2.0}, r"m must be an integer"),
])
def test_krum_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Krum(**kwargs)


# ---------------------------------------------------------------- Bulyan


def test_bulyan_exact_selection_and_trimmed_average():
    U = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [100.0]])
    # n = 7, f = 1: theta = 5 selected by Krum, beta = 3 averaged.
    # step 1 (4 neighbours): scores 30, 15, 10, 10, 15, 30, huge -> row 2 (tie with row 3: lower row)
    # step 2 (3 neighbours) on rows 0,1,3,4,5,6: 26, 14, 9, 11, 21, huge -> row 3
    # step 3 (2) on 0,1,4,5,6: 17, 10, 10, 17, huge -> row 1; step 4 (1) on 0,4,5,6: 16, 1, 1 -> row 4
    # step 5 (max(1, 0) = 1) on 0,5,6: 25, 25, 9025 -> row 0
    # selected values 2, 3, 1, 4, 0: median 2, the 3 closest 1, 2, 3 -> 2
    rule = Bulyan(f=1)
    assert torch.equal(rule(U, agent_ids=list("abcdefg")), torch.tensor([2.0]))
    assert rule.telemetry == {
        "selected_rows": [2, 3, 1, 4, 0], "selected_agents": ["c", "d", "b", "e", "a"], "theta": 5, "beta": 3,
    }


def test_bulyan_takes_the_lower_window_on_a_tie():
    U = torch.tensor([[0.0], [1.0], [2.0], [4.0], [5.0], [100.0], [-100.0]])
    # selects rows 2, 1, 3, 0, 4 (values 2, 1, 4, 0, 5), median 2; windows of 3 sorted values:
    # [0,1,2] at most 2 from the median, [1,2,4] at most 2, [2,4,5] 3: a tie, the lower -> mean 1
    rule = Bulyan(f=1)
    assert torch.equal(rule(U), torch.tensor([1.0]))
    assert sorted(rule.telemetry["selected_rows"]) == [0, 1, 2, 3, 4]


def test_bulyan_with_f_0_is_the_mean_and_even_theta_uses_the_mean_of_the_middle_two():
    U = torch.tensor([[1.0, 8.0], [2.0, 0.0], [4.0, 1.0], [5.0, 3.0]])
    # f = 0: theta = beta = n, every value averaged
    assert torch.equal(Bulyan(f=0)(U), torch.tensor([3.0, 3.0]))
    g = torch.Generator().manual_seed(3)
    V = torch.randn(8, 40, generator=g, dtype=torch.float64)
    V[7] += 50.0
    # n = 8, f = 1: theta = 6 (even), beta = 4; the reference below spells the definition out
    torch.testing.assert_close(Bulyan(f=1)(V), _bulyan_reference(V, 1), rtol=1e-13, atol=1e-13)


def _bulyan_reference(U, f):
    """Bulyan written out directly: repeated Krum on direct distances, then per coordinate the
    beta values closest to numpy's median, averaged (no ties in random data)."""
    remaining, selected = list(range(U.shape[0])), []
    for _ in range(U.shape[0] - 2 * f):
        R = U[remaining]
        d = torch.cdist(R, R) ** 2
        k = max(1, len(remaining) - f - 2)
        scores = [sorted(d[i, j].item() for j in range(len(remaining)) if j != i)[:k] for i in range(len(remaining))]
        best = min(range(len(remaining)), key=lambda i: (sum(scores[i]), i))
        selected.append(remaining.pop(best))
    S = U[selected]
    med = torch.from_numpy(__import__("numpy").median(S.numpy(), axis=0))
    beta = len(selected) - 2 * f
    closest = torch.argsort((S - med).abs(), dim=0)[:beta]
    return torch.gather(S, 0, closest).mean(dim=0)


def test_bulyan_matches_the_reference_on_random_inputs():
    g = torch.Generator().manual_seed(4)
    for n, f in ((7, 1), (11, 2), (12, 2), (9, 0)):
        U = torch.randn(n, 60, generator=g, dtype=torch.float64)
        torch.testing.assert_close(Bulyan(f)(U), _bulyan_reference(U, f), rtol=1e-13, atol=1e-13)


def test_bulyan_requires_n_at_least_4f_plus_3():
    U = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"n >= 4f \+ 3 agents, got n=10 with f=2 \(it needs at least 11\); lower f to at most 1"):
        Bulyan(f=2)(U)
    with pytest.raises(ValueError, match=r"n=6 with f=1"):
        Bulyan(f=1)(U[:6])
    Bulyan(f=1)(U[:7])
    with pytest.raises(ValueError, match=r"f must be an integer >= 0, got -1"):
        Bulyan(f=-1)


# ---------------------------------------------------------------- GeometricMedian


def test_geometric_median_of_symmetric_points_is_their_centre():
    U = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    rule = GeometricMedian()
    # the mean (0, 0) is the fixed point: every corner at distance sqrt(2), weights stay 1/4
    assert torch.equal(rule(U), torch.tensor([0.0, 0.0]))
    assert rule.telemetry["iterations"] == 1 and rule.telemetry["converged"]
    assert rule.telemetry["objective"] == pytest.approx(math.sqrt(2), rel=1e-15)


def test_geometric_median_in_one_dimension_is_the_weighted_median():
    U = torch.tensor([[0.0], [1.0], [2.0], [3.0], [1000.0]], dtype=torch.float64)
    torch.testing.assert_close(GeometricMedian()(U), torch.tensor([2.0], dtype=torch.float64), rtol=0, atol=1e-8)
    # weights 1, 1, 1, 10, 1: row 3 holds more than half the weight, so the median is 3, up to
    # the smoothing: within nu of 3, row 3 weighs 10 / nu = 1e7 and the others pull with
    # sum_k alpha_k (u_k - 3) / |u_k - 3| = -1 - 1 - 1 + 1 = -2, so z = 3 - 2e-7
    out = GeometricMedian()(U, weights=[1, 1, 1, 10, 1])
    torch.testing.assert_close(out, torch.tensor([3.0 - 2e-7], dtype=torch.float64), rtol=0, atol=1e-9)
    # weight 0 takes no part: the median of 0, 1, 2, 3 is anywhere in [1, 2]
    out = GeometricMedian()(U, weights=[1, 1, 1, 1, 0]).item()
    assert 1.0 - 1e-8 <= out <= 2.0 + 1e-8


def _weiszfeld_reference(U, alpha, nu, max_iter, tol):
    """Smoothed Weiszfeld on the vectors themselves (what the Gram-matrix version must match)."""
    z = (alpha[:, None] * U).sum(0)
    obj = float((alpha * torch.linalg.vector_norm(U - z, dim=1)).sum())
    for it in range(1, max_iter + 1):
        beta = alpha / torch.linalg.vector_norm(U - z, dim=1).clamp(min=nu)
        z = (beta[:, None] * U).sum(0) / beta.sum()
        prev, obj = obj, float((alpha * torch.linalg.vector_norm(U - z, dim=1)).sum())
        if abs(prev - obj) <= tol * obj:
            break
    return z, it, obj


def test_geometric_median_matches_weiszfeld_on_the_vectors():
    g = torch.Generator().manual_seed(5)
    U = torch.randn(9, 500, generator=g, dtype=torch.float64) + 3.0
    U[0] *= 40.0
    w = torch.arange(1, 10, dtype=torch.float64)
    for weights, alpha in ((None, torch.full((9,), 1 / 9, dtype=torch.float64)), (w, w / w.sum())):
        for max_iter, tol in ((3, 0.0), (1000, 1e-10)):
            rule = GeometricMedian(max_iter=max_iter, tol=tol)
            ref, iterations, objective = _weiszfeld_reference(U, alpha, 1e-6, max_iter, tol)
            torch.testing.assert_close(rule(U, weights=weights), ref, rtol=1e-9, atol=1e-9)
            assert rule.telemetry["iterations"] == iterations
            assert rule.telemetry["objective"] == pytest.approx(objective, rel=1e-9)


def test_geometric_median_float32_is_computed_in_float64_and_deterministic():
    g = torch.Generator().manual_seed(6)
    U = torch.randn(7, 1000, generator=g)
    a, b = GeometricMedian()(U), GeometricMedian()(U)
    assert a.dtype == torch.float32 and torch.equal(a, b)
    torch.testing.assert_close(a, GeometricMedian()(U.double()).float(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kwargs, match", [
    ({"nu": 0}, r"nu must be a finite number > 0, got 0"),
    ({"nu": -1e-6}, "nu must be"),
    ({"nu": float("inf")}, "nu must be"),
    ({"max_iter": 0}, r"max_iter must be an integer >= 1, got 0"),
    ({"max_iter": 2.5}, "max_iter must be an integer"),
    ({"tol": -1.0}, r"tol must be a finite number >= 0, got -1.0"),
    ({"tol": float("nan")}, "tol must be"),
])
def test_geometric_median_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GeometricMedian(**kwargs)


# ---------------------------------------------------------------- NormBounding


def test_norm_bounding_clips_then_aggregates():
    U = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, -2.0]])
    rule = NormBounding(bound=1.0)
    # clipped to norm 1: [0.6, 0.8], [0.3, 0.4] (unchanged), [0, -1]; mean [0.3, 0.0667]
    torch.testing.assert_close(rule(U), torch.tensor([0.3, 0.2 / 3]))
    assert rule.telemetry == {"n_clipped": 2, "bound": 1.0, "inner": {}}
    median = NormBounding(CoordinateMedian(), bound=1.0)
    torch.testing.assert_close(median(U), torch.tensor([0.3, 0.4]))  # median of the clipped columns
    assert torch.equal(median(U), ClipAndNoise(CoordinateMedian(), clip_norm=1.0)(U))
    assert repr(median) == "NormBounding(CoordinateMedian(), bound=1.0)"


@pytest.mark.parametrize("args, kwargs, match", [
    ((), {}, "needs bound"),
    ((FedAvg(),), {"bound": 0}, r"bound must be a finite number > 0 \(an L2 norm bound\), got 0"),
    ((FedAvg(),), {"bound": -1}, r"bound must be a finite number > 0 .*got -1"),
    ((FedAvg(),), {"bound": float("inf")}, r"bound must be a finite number > 0 .*got inf"),
    ((3.0,), {}, r"first argument is the rule.*NormBounding\(bound=3.0\)"),
    (("fedavg",), {"bound": 1.0}, "rule must be an aggregation rule"),
])
def test_norm_bounding_rejects_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        NormBounding(*args, **kwargs)


# ---------------------------------------------------------------- Flame


def _flame_round(seed=0, n_honest=7, n_attack=3, d=200):
    g = torch.Generator().manual_seed(seed)
    direction = torch.zeros(d)
    direction[0] = 1.0
    honest = direction + 0.1 * torch.randn(n_honest, d, generator=g) / math.sqrt(d)
    attack = -3.0 * direction + 0.01 * torch.randn(n_attack, d, generator=g) / math.sqrt(d)
    return torch.cat([honest, attack])


def test_flame_admits_the_honest_cluster_and_rejects_a_far_direction():
    U = _flame_round()
    rule = Flame(noise_lambda=0.0)
    out = rule(U, agent_ids=[f"a{k}" for k in range(10)])
    t = rule.telemetry
    assert t["rejected_rows"][-3:] == [7, 8, 9] and set(t["admitted_rows"]) <= set(range(7))
    assert t["rejected_agents"][-3:] == ["a7", "a8", "a9"] and not t["all_noise"]
    assert t["min_cluster_size"] == 6 and len(t["admitted_rows"]) >= 6  # n // 2 + 1
    norms = torch.linalg.vector_norm(U.double(), dim=1)
    S = float(torch.sort(norms).values[4:6].mean())  # median of 10 norms: mean of the middle two
    assert t["clip_bound"] == pytest.approx(S, rel=1e-12) and t["noise_std"] == 0.0
    admitted = U[t["admitted_rows"]].double()
    clipped = admitted * torch.clamp(S / torch.linalg.vector_norm(admitted, dim=1), max=1.0)[:, None]
    torch.testing.assert_close(out, clipped.mean(0).float(), rtol=1e-6, atol=1e-7)
    assert t["n_clipped"] == int((torch.linalg.vector_norm(admitted, dim=1) > S).sum())
    assert out[0] > 0.9  # along the honest direction, not pulled back towards -3


def test_flame_exact_values_and_deterministic_noise():
    U = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.5, 0.0], [1.0, 0.0], [-5.0, 5.0]])
    # the first four point the same way (cosine distance 0), the fifth 135 degrees off.
    # norms 1, 2, 0.5, 1, 7.07: S = 1; clipped 1, 1, 0.5, 1 -> mean 3.5 / 4 = 0.875
    rule = Flame(noise_lambda=0.0)
    assert torch.equal(rule(U), torch.tensor([0.875, 0.0]))
    t = rule.telemetry
    assert (t["admitted_rows"], t["rejected_rows"], t["clip_bound"], t["n_clipped"]) == ([0, 1, 2, 3], [4], 1.0, 1)
    # noise N(0, (0.01 * S)^2) drawn after the aggregate: n_params numbers from the generator
    noisy = Flame(noise_lambda=0.01, generator=torch.Generator().manual_seed(3))(U)
    expected = torch.tensor([0.875, 0.0]) + 0.01 * torch.randn(2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(noisy, expected)
    again = Flame(noise_lambda=0.01, generator=torch.Generator().manual_seed(3))(U)
    assert torch.equal(noisy, again)


def test_flame_admits_all_when_hdbscan_finds_only_noise(monkeypatch):
    import robustlr.aggregation.flame as flame_module

    class AllNoise:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def fit_predict(self, distances):
            assert distances.shape == (3, 3)
            assert self.kwargs == {"min_cluster_size": 2, "min_samples": 1, "metric": "precomputed",
                                   "allow_single_cluster": True, "copy": True}
            return [-1, -1, -1]

    monkeypatch.setattr(flame_module, "_hdbscan_class", lambda: AllNoise)
    U = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    rule = Flame(noise_lambda=0.0)
    # S = 2; clipped: [1, 0], [0, 2], [-2, 0] -> mean [-1/3, 2/3]
    torch.testing.assert_close(rule(U), torch.tensor([-1.0 / 3.0, 2.0 / 3.0]))
    assert rule.telemetry["all_noise"] is True and rule.telemetry["admitted_rows"] == [0, 1, 2]
    assert rule.telemetry["rejected_rows"] == []


def test_flame_names_the_extra_when_scikit_learn_is_missing(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install 'robustlr\[flame\]'"):
        Flame()(torch.eye(3))


def test_flame_single_agent_and_zero_updates():
    rule = Flame(noise_lambda=0.0)
    assert torch.equal(rule(torch.tensor([[3.0, 4.0]])), torch.tensor([3.0, 4.0]))  # S = its own norm
    assert rule.telemetry["admitted_rows"] == [0]
    out = rule(torch.zeros(4, 3, dtype=torch.float64))
    assert out.dtype == torch.float64 and torch.equal(out, torch.zeros(3, dtype=torch.float64))


def test_cosine_distances():
    U = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [0.0, 0.0]])
    D = cosine_distances(U)
    # same direction 0, orthogonal 1, opposite 2, a zero row 1 from everything
    assert D[0].tolist() == [0.0, 0.0, 1.0, 2.0, 1.0] and D[4].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("kwargs, match", [
    ({"noise_lambda": -0.1}, r"noise_lambda must be a finite number >= 0, got -0.1"),
    ({"min_cluster_size": 1}, r"min_cluster_size must be an integer >= 2, got 1"),
    ({"generator": 0}, "generator must be a torch.Generator"),
])
def test_flame_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Flame(**kwargs)


# ---------------------------------------------------------------- composition


def test_robust_lr_over_krum():
    U = torch.tensor([[2.0, 0.5], [2.0, -1.0], [3.0, 0.0], [1.0, 0.0], [-20.0, 20.0]])
    # Krum(f=1) returns row 0, [2, 0.5] (see test_krum_picks_the_most_central_update).
    # votes: column 0 signs + + + + - = 3 >= 2 kept; column 1 + - 0 0 + = 1 < 2 flipped
    rlr = RobustLR(Krum(f=1), threshold=2)
    assert torch.equal(rlr(U), torch.tensor([2.0, -0.5]))
    assert rlr.telemetry["n_flipped"] == 1 and rlr.telemetry["inner"]["selected_rows"] == [0]


def test_clip_and_noise_over_trimmed_mean():
    U = torch.tensor([[3.0, 4.0], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0], [-30.0, 40.0]])
    # clipped to norm 1: [0.6, 0.8], [0.6, 0.8], [0, 1], [1, 0], [-0.6, 0.8]
    # b = 1: column 0 sorted -0.6, 0, 0.6, 0.6, 1 keeps 0, 0.6, 0.6 -> 0.4;
    #        column 1 sorted 0, 0.8, 0.8, 0.8, 1 keeps 0.8 three times -> 0.8
    rule = ClipAndNoise(TrimmedMean(0.2), clip_norm=1.0)
    torch.testing.assert_close(rule(U), torch.tensor([0.4, 0.8]))
    assert rule.telemetry["n_clipped"] == 2 and rule.telemetry["inner"] == {"n_trimmed": 1}
    # TrimmedMean is column-separable, so RobustLR runs it inside its vote's pass. Unclipped:
    # column 0 sorted -30, 0, 0.6, 1, 3 keeps 0, 0.6, 1 -> 1.6/3; vote + + 0 + - = 2 < 3: flipped
    # column 1 sorted 0, 0.8, 1, 4, 40 keeps 0.8, 1, 4 -> 5.8/3; vote + + + 0 + = 4 >= 3: kept
    rlr = RobustLR(TrimmedMean(0.2), threshold=3)
    torch.testing.assert_close(rlr(U), torch.tensor([-1.6 / 3, 5.8 / 3]))
    assert rlr.telemetry["n_flipped"] == 1


def test_wrappers_transform_their_inner_rules_output_exactly():
    # RobustLR, theta 2 of 4: column 0 signs + + + - (|sum| 2, kept), column 1 + - + - (0, flipped)
    U = torch.tensor([[1.0, 2.0], [2.0, -1.0], [4.0, 6.0], [-3.0, -3.0]])
    # FedAvg: (1 + 2 + 4 - 3) / 4 = 1, (2 - 1 + 6 - 3) / 4 = 1 -> [1, -1]
    assert torch.equal(RobustLR(FedAvg(), threshold=2)(U), torch.tensor([1.0, -1.0]))
    # median, even count: column 0 sorted -3 1 2 4 -> 1.5; column 1 sorted -3 -1 2 6 -> 0.5 -> [1.5, -0.5]
    assert torch.equal(RobustLR(CoordinateMedian(), threshold=2)(U), torch.tensor([1.5, -0.5]))
    # ClipAndNoise at M = 5: norms 5, 10, 5, 1, so only row 1 is scaled (by 1/2) to [3, 4]
    V = torch.tensor([[3.0, 4.0], [6.0, 8.0], [0.0, -5.0], [-1.0, 0.0]])
    # FedAvg of the clipped rows: (3 + 3 + 0 - 1) / 4 = 1.25, (4 + 4 - 5 + 0) / 4 = 0.75 (unclipped: 2, 1.75)
    torch.testing.assert_close(ClipAndNoise(FedAvg(), clip_norm=5.0)(V), torch.tensor([1.25, 0.75]), rtol=0, atol=1e-7)
    # median of the clipped rows: column 0 sorted -1 0 3 3 -> 1.5; column 1 sorted -5 0 4 4 -> 2
    assert torch.equal(ClipAndNoise(CoordinateMedian(), clip_norm=5.0)(V), torch.tensor([1.5, 2.0]))
    # with noise: the median plus sigma * M = 0.1 * 5 times the seeded generator's two standard normals
    noisy = ClipAndNoise(CoordinateMedian(), clip_norm=5.0, noise_sigma=0.1, generator=torch.Generator().manual_seed(3))
    draws = torch.randn(2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(noisy(V), torch.tensor([1.5, 2.0]) + 0.5 * draws, rtol=0, atol=1e-6)


def _reference_rlr(inner_out: torch.Tensor, U: torch.Tensor, theta: int) -> torch.Tensor:
    """Paper eq. 5-6 written out: keep the inner rule's coordinate where |sum_k sgn(u_ki)| >= theta, else negate it."""
    votes = torch.sign(U).sum(dim=0).abs()
    return torch.where(votes >= theta, inner_out, -inner_out)


def _reference_clip(U: torch.Tensor, M: float) -> torch.Tensor:
    """Every row scaled to L2 norm at most M: u / max(1, ||u|| / M)."""
    return U / torch.clamp(torch.linalg.vector_norm(U, dim=1, keepdim=True) / M, min=1.0)


WRAPPED = {
    # name: (wrapper, the inner rule's factory, noise sigma for ClipAndNoise)
    "rlr-bulyan": ("rlr", lambda: Bulyan(f=1), 0.0),
    "rlr-geomed": ("rlr", lambda: GeometricMedian(), 0.0),
    "rlr-flame": ("rlr", lambda: Flame(generator=torch.Generator().manual_seed(0)), 0.0),
    "rlr-normbounding-multikrum": ("rlr", lambda: NormBounding(Krum(f=2, m=3), bound=1.0), 0.0),
    "clip-noise-bulyan": ("clip", lambda: Bulyan(f=1), 1e-3),
    "clip-flame": ("clip", lambda: Flame(noise_lambda=0.0), 0.0),
    "clip-geomed": ("clip", lambda: GeometricMedian(), 0.0),
}


@pytest.mark.parametrize("name", sorted(WRAPPED))
def test_wrappers_compose_with_every_rule(name):
    """The wrapper's output is its inner rule's own output, transformed as the wrapper documents
    (computed here apart: the sign vote, the clipping, the seeded noise), and it differs from the
    same wrapper over FedAvg, so a wrapper that ignored its rule would fail."""
    kind, make_inner, sigma = WRAPPED[name]
    U = torch.randn(8, 50, generator=torch.Generator().manual_seed(1))
    if kind == "rlr":
        rule = RobustLR(make_inner(), threshold=3)
        expected = _reference_rlr(make_inner()(U), U, 3)
        over_fedavg = _reference_rlr(FedAvg()(U), U, 3)
    else:
        gen = torch.Generator().manual_seed(0) if sigma else None
        rule = ClipAndNoise(make_inner(), clip_norm=1.0, noise_sigma=sigma, generator=gen)
        clipped = _reference_clip(U, 1.0)
        noise = sigma * 1.0 * torch.randn(50, generator=torch.Generator().manual_seed(0)) if sigma else 0.0
        expected = make_inner()(clipped) + noise
        over_fedavg = clipped.mean(0) + noise
    out = rule(U)
    assert out.shape == (50,) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert (expected - over_fedavg).abs().max() > 1e-3  # the inner rule matters on this matrix
    if kind == "rlr":
        flipped = int((torch.sign(U).sum(0).abs() < 3).sum())  # |sum of 8 signs| is 0 or 2 here
        assert 0 < flipped < 50 and rule.telemetry["n_flipped"] == flipped
    else:
        assert rule.telemetry["n_clipped"] == 8  # every row of 50 standard normals has norm about 7 > 1
        assert rule.telemetry["noise_std"] == sigma


# ---------------------------------------------------------------- common behaviour

RULES = {
    "TrimmedMean": lambda: TrimmedMean(0.1),
    "Krum": lambda: Krum(f=2),
    "MultiKrum": lambda: Krum(f=2, m=4),
    "Bulyan": lambda: Bulyan(f=2),
    "GeometricMedian": lambda: GeometricMedian(),
    "NormBounding": lambda: NormBounding(bound=1.0),
    "Flame": lambda: Flame(generator=torch.Generator().manual_seed(0)),
}


@pytest.mark.parametrize("name", sorted(RULES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_weights_none_and_determinism(name, dtype):
    U = torch.randn(11, 300, generator=torch.Generator().manual_seed(2), dtype=dtype)
    a, b = RULES[name]()(U), RULES[name]()(U, weights=None)
    assert a.dtype == dtype and a.shape == (300,) and torch.equal(a, b)
    assert torch.isfinite(RULES[name]()(U, weights=torch.arange(1.0, 12.0))).all()


@pytest.mark.parametrize("name", sorted(RULES))
def test_rejects_non_finite_rows(name):
    U = torch.ones(11, 5)
    U[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite.*rows \[3\]"):
        RULES[name]()(U)


@pytest.mark.parametrize("name", sorted(set(RULES) - {"NormBounding"}))
def test_one_huge_update_barely_moves_the_robust_rules(name):
    g = torch.Generator().manual_seed(7)
    honest = 1.0 + 0.1 * torch.randn(10, 40, generator=g, dtype=torch.float64)
    U = torch.cat([honest, torch.full((1, 40), -1e4, dtype=torch.float64)])
    rule = RULES[name]()
    if name == "Flame":
        rule = Flame(noise_lambda=0.0)
    shift = torch.linalg.vector_norm(rule(U) - honest.mean(0)).item()
    assert shift < 1.0, shift  # the honest updates alone spread about 0.1 * sqrt(40 / 10) = 0.2
    fedavg_shift = torch.linalg.vector_norm(FedAvg()(U) - honest.mean(0)).item()
    assert fedavg_shift > 5000.0  # (1e4 + 1) * sqrt(40) / 11


def test_krum_and_bulyan_reject_the_outlier_row():
    g = torch.Generator().manual_seed(8)
    U = torch.randn(11, 30, generator=g)
    U[5] = 1e4
    krum, bulyan = Krum(f=2, m=6), Bulyan(f=2)
    krum(U)
    bulyan(U)
    assert 5 not in krum.telemetry["selected_rows"] and 5 not in bulyan.telemetry["selected_rows"]


def test_bulyan_breaks_a_tie_of_krum_scores_by_the_lower_index_whatever_the_rounding():
    from robustlr.aggregation.robust import _first_min

    # two scores equal but for the last bits (the Gram matrix's rounding differs by machine)
    assert _first_min(torch.tensor([3.0, 6.30382399, 6.30382399 - 1e-14], dtype=torch.float64)[1:]) == 0
    assert _first_min(torch.tensor([2.0, 1.0, 1.0 + 1e-6], dtype=torch.float64)) == 1
    assert _first_min(torch.tensor([0.0, 0.0], dtype=torch.float64)) == 0
