"""FLDetector: the L-BFGS Hessian-vector product on quadratics, the gap statistic, detection on a
toy federation whose honest agents follow a linear update map, the state through a checkpoint, and
bad input."""

import numpy as np
import pytest
import torch

from robustlr.aggregation import FedAvg, FLDetector, RobustLR, RoundInputs
from robustlr.aggregation.fldetector import gap_statistic_k, kmeans_1d, lbfgs_hvp


def _bfgs(S, Y, v):
    """The BFGS recursion from B0 = sigma I (sigma from the last pair) over the pairs in order, dense."""
    sigma = float(Y[:, -1] @ S[:, -1]) / float(S[:, -1] @ S[:, -1])
    B = sigma * torch.eye(S.shape[0], dtype=torch.float64)
    for i in range(S.shape[1]):
        s, y = S[:, i], Y[:, i]
        B = B - torch.outer(B @ s, B @ s) / (s @ B @ s) + torch.outer(y, y) / (y @ s)
    return B @ v


def test_lbfgs_is_the_bfgs_recursion_and_meets_the_last_secant_equation():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(5, 5, generator=g, dtype=torch.float64)
    A = M @ M.t() + 3 * torch.eye(5, dtype=torch.float64)  # symmetric positive definite
    S = torch.randn(5, 3, generator=g, dtype=torch.float64)
    Y = A @ S
    v = torch.randn(5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(lbfgs_hvp(S, Y, v), _bfgs(S, Y, v))
    torch.testing.assert_close(lbfgs_hvp(S, Y, S[:, -1]), Y[:, -1])  # B s_m = y_m
    # update maps are minus a learning rate times gradients: the estimate scales with Y, sign included
    torch.testing.assert_close(lbfgs_hvp(S, -0.01 * Y, v), -0.01 * lbfgs_hvp(S, Y, v))
    # one pair by hand: s = (1, 0), y = (2, 1), v = (1, 1); sigma = y.s / s.s = 2
    # B v = sigma v - sigma s (s.v) / (s.s) + y (y.v) / (y.s) = (2, 2) - (2, 0) + (2, 1) x 3 / 2 = (3, 3.5)
    s, y = torch.tensor([[1.0], [0.0]], dtype=torch.float64), torch.tensor([[2.0], [1.0]], dtype=torch.float64)
    torch.testing.assert_close(lbfgs_hvp(s, y, torch.tensor([1.0, 1.0], dtype=torch.float64)),
                               torch.tensor([3.0, 3.5], dtype=torch.float64))


def test_one_dimensional_kmeans_is_the_best_split_into_intervals():
    import itertools

    rng = np.random.default_rng(4)
    for n, k in ((6, 2), (7, 3), (8, 4)):
        x = rng.uniform(0.0, 1.0, n)
        v = np.sort(x)
        best = min(sum(((v[a:b] - v[a:b].mean()) ** 2).sum() for a, b in zip((0, *cuts), (*cuts, n)))
                   for cuts in itertools.combinations(range(1, n), k - 1))
        sse, labels = kmeans_1d(x, k)
        assert sse == pytest.approx(best, abs=1e-12)
        assert sorted(set(labels.tolist())) == list(range(k))
        # labels number the intervals from the smallest values up
        assert all(x[labels == i].max() < x[labels == i + 1].min() for i in range(k - 1))
    assert kmeans_1d(np.array([3.0, 3.0]), 5) == (0.0, pytest.approx(np.array([0, 1])))


def test_the_gap_statistic_finds_two_groups_and_one():
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    assert gap_statistic_k(np.array([0.1] * 8 + [0.9] * 2), rng()) >= 2
    assert gap_statistic_k(np.full(6, 0.3), rng()) == 1
    assert gap_statistic_k(np.linspace(0.0, 1.0, 10), rng()) == 1


def _toy(rounds: int, window: int, bad: int | None = 3, rule=None):
    """Four agents on a 4-coordinate quadratic: honest agent i sends -0.1 A (w - c_i) (a gradient
    step towards its optimum c_i); agent ``bad`` sends a fresh random vector of the same size."""
    g = torch.Generator().manual_seed(1)
    A = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    centres = torch.randn(4, 4, generator=g)
    rule = rule or FLDetector(window=window, generator=torch.Generator().manual_seed(2))
    w = torch.zeros(4)
    tel = []
    for _ in range(rounds):
        U = torch.stack([-0.1 * (A @ (w - centres[i])) for i in range(4)])
        if bad is not None:
            U[bad] = torch.randn(4, generator=g) * U[:bad].norm(dim=1).mean()
        rule.set_round_inputs(RoundInputs(global_params=w))
        w = w + rule(U, agent_ids=[10, 11, 12, 13])
        tel.append(dict(rule.telemetry))
    return rule, w, tel


def test_an_agent_whose_updates_do_not_follow_the_model_is_detected_and_left_out():
    rule, _, tel = _toy(rounds=12, window=3)
    # predictions from round window + 2 = 5, detection possible from round 2 window + 1 = 7
    assert [t["predicted"] for t in tel] == [False] * 4 + [True] * 8
    assert rule.detected == [13]
    first = next(i for i, t in enumerate(tel) if t["detected"])
    assert first >= 6 and all(t["rejected_agents"] == [13] for t in tel[first:])
    scores = tel[-1]["scores"]
    assert scores[13] > max(scores[a] for a in (10, 11, 12))


def test_agents_that_are_predicted_equally_well_are_not_detected():
    # identical honest agents: equal distances, equal scores, one cluster, nobody left out
    rule = FLDetector(window=2, generator=torch.Generator().manual_seed(2))
    w = torch.zeros(3)
    for _ in range(8):
        U = (-0.1 * (w - torch.tensor([1.0, 2.0, 3.0])))[None].repeat(4, 1)
        rule.set_global(w)
        w = w + rule(U, agent_ids=[0, 1, 2, 3])
        assert rule.telemetry["rejected_rows"] == []
    assert rule.detected == [] and rule.telemetry.get("gap_k") == 1


def test_the_state_survives_a_checkpoint_and_resets():
    a, w_a, _ = _toy(rounds=8, window=2)
    b = FLDetector(window=2, generator=torch.Generator().manual_seed(2))
    b.load_state_dict(a.state_dict())
    assert b.detected == a.detected and len(b._S) == len(a._S) == 2
    U = torch.randn(4, 4, generator=torch.Generator().manual_seed(5))
    for rule in (a, b):
        rule.set_global(w_a)
    torch.testing.assert_close(a(U, agent_ids=[10, 11, 12, 13]), b(U, agent_ids=[10, 11, 12, 13]))
    assert a.telemetry["scores"] == b.telemetry["scores"]
    a.reset()
    assert a.detected == [] and a._S == [] and a._last == {}


def test_it_composes_with_the_robust_learning_rate_and_passes_the_global_model_through():
    rule = RobustLR(FLDetector(window=3, generator=torch.Generator().manual_seed(2)), threshold=2)
    assert rule.round_inputs == {"global_params"} and not FedAvg().round_inputs
    _, _, tel = _toy(rounds=12, window=3, rule=rule)
    assert rule.rule.detected == [13]


def test_bad_input_is_refused_with_the_fix():
    U = torch.ones(3, 2)
    with pytest.raises(ValueError, match="needs agent_ids"):
        FLDetector()(U)
    with pytest.raises(ValueError, match=r"call rule.set_round_inputs\(RoundInputs\(global_params=w\)\)"):
        FLDetector()(U, agent_ids=[0, 1, 2])
    with pytest.raises(ValueError, match="window must be an integer >= 1"):
        FLDetector(window=0)
    rule = FLDetector()
    rule.set_global(torch.zeros(5))
    with pytest.raises(ValueError, match="global model has 5 entries but the updates have 2 columns"):
        rule(U, agent_ids=[0, 1, 2])
