"""Exact values of the stateless rules on hand-computed matrices, and input validation."""

import math

import pytest
import torch

from robustlr.aggregation import (
    ClipAndNoise,
    CoordinateMedian,
    FedAvg,
    FoolsGold,
    RobustLR,
    SignAggregation,
    TrimmedMean,
)
from robustlr.aggregation.base import sign_vote


def test_fedavg_plain_mean(paper_U):
    assert torch.equal(FedAvg()(paper_U), torch.tensor([1.0, 2.0 / 3.0, 1.0]))


def test_fedavg_weighted_is_eq1():
    U = torch.tensor([[1.0, -2.0, 3.0], [1.0, 2.0, -3.0], [1.0, 2.0, 3.0]])
    # (2*[1,-2,3] + 1*[1,2,-3] + 1*[1,2,3]) / 4
    assert torch.equal(FedAvg()(U, weights=[2, 1, 1]), torch.tensor([1.0, 0.0, 1.5]))
    assert torch.equal(FedAvg()(U, weights=torch.tensor([0.0, 0.0, 5.0])), U[2])


def test_fedavg_keeps_dtype_and_shape():
    U = torch.arange(6, dtype=torch.float64).reshape(2, 3)
    out = FedAvg()(U)
    assert out.dtype == torch.float64 and out.shape == (3,)
    assert torch.equal(out, torch.tensor([1.5, 2.5, 3.5], dtype=torch.float64))


def test_median_odd():
    U = torch.tensor([[1.0, 5.0, 0.0], [3.0, -1.0, 0.0], [2.0, 0.0, 7.0]])
    assert torch.equal(CoordinateMedian()(U), torch.tensor([2.0, 0.0, 0.0]))


def test_median_even_is_mean_of_middle_two():
    U = torch.tensor([[1.0, 5.0, 2.0], [4.0, -1.0, 2.0], [0.0, 3.0, 2.0], [10.0, 3.0, -8.0]])
    # sorted columns: [0,1,4,10] -> 2.5; [-1,3,3,5] -> 3 (tie in the middle); [-8,2,2,2] -> 2
    # (torch.median would give the lower middle value, 1.0, in the first column)
    assert torch.equal(CoordinateMedian()(U), torch.tensor([2.5, 3.0, 2.0]))


def test_median_two_agents_and_one_agent():
    assert torch.equal(CoordinateMedian()(torch.tensor([[1.0, -3.0], [2.0, 3.0]])), torch.tensor([1.5, 0.0]))
    assert torch.equal(CoordinateMedian()(torch.tensor([[1.0, -3.0]])), torch.tensor([1.0, -3.0]))


def test_median_ignores_weights_and_does_not_overflow():
    U = torch.tensor([[3e38], [3e38]])
    assert torch.equal(CoordinateMedian()(U, weights=[1, 100]), torch.tensor([3e38]))


def test_median_matches_numpy_on_random_even_and_odd():
    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 5, 6, 11, 12):
        U = torch.randn(n, 2000, generator=g, dtype=torch.float64)
        ref = torch.from_numpy(__import__("numpy").median(U.numpy(), axis=0))
        assert torch.allclose(CoordinateMedian()(U), ref, rtol=0, atol=1e-15)


def test_sign_aggregation_with_ties(paper_U):
    # votes: 3, 1, 1 -> all positive
    assert torch.equal(SignAggregation()(paper_U), torch.ones(3))
    U = torch.tensor([[1.0, -1.0, 0.0, 2.0], [-1.0, -1.0, 0.0, 0.0]])
    # votes: 0 (tie), -2, 0 (all zero), 1 (zero does not vote); the rule is pure (no eta)
    out = SignAggregation()(U)
    assert torch.equal(out, torch.tensor([0.0, -1.0, 0.0, 1.0]))


def test_the_rules_take_no_server_lr_in_0_3(paper_U):
    """The ``server_lr`` arguments deprecated in 0.2 are gone: eta lives in the server step only."""
    from robustlr.aggregation import FedAvg, RobustLR, apply_server_lr

    with pytest.raises(TypeError, match="server_lr"):
        SignAggregation(server_lr=0.5)
    with pytest.raises(TypeError, match="server_lr"):
        RobustLR(FedAvg(), threshold=2, server_lr=2.0)
    # the 0.2 result of SignAggregation(server_lr=0.5) is the server step with eta 0.5
    g = torch.zeros(3)
    assert torch.equal(apply_server_lr(g, SignAggregation()(paper_U), 0.5), torch.full((3,), 0.5))


def test_sign_vote_counts_zero_as_no_vote():
    U = torch.tensor([[0.0, -0.0, 1.0], [0.0, 2.0, -3.0], [-1.0, 2.0, -1.0]])
    assert torch.equal(sign_vote(U), torch.tensor([-1.0, 2.0, -1.0]))


def test_sign_vote_across_many_blocks():
    g = torch.Generator().manual_seed(1)
    U = torch.randn(7, 300_001, generator=g)
    U[:, ::5] = 0.0
    assert torch.equal(sign_vote(U), torch.sign(U).sum(0))


# ---------------------------------------------------------------- validation

ALL_RULES = [
    FedAvg,
    CoordinateMedian,
    SignAggregation,
    FoolsGold,
    lambda: ClipAndNoise(FedAvg(), clip_norm=1.0),
    lambda: ClipAndNoise(FedAvg(), clip_norm=0.0),
    lambda: RobustLR(FedAvg(), threshold=1),
    lambda: RobustLR(FedAvg(), threshold=0),
]


def _call(rule, U, **kw):
    kw.setdefault("agent_ids", list(range(U.shape[0])) if U.ndim == 2 else None)
    return rule(U, **kw)


@pytest.mark.parametrize("make", ALL_RULES)
def test_rejects_wrong_ndim(make):
    with pytest.raises(ValueError, match=r"2-D \(n_agents, n_params\)"):
        make()(torch.ones(3))
    with pytest.raises(ValueError, match="2-D"):
        make()(torch.ones(2, 3, 4))


@pytest.mark.parametrize("make", ALL_RULES)
def test_rejects_non_finite_rows_by_index(make):
    U = torch.ones(4, 5)
    U[1, 2] = float("nan")
    U[3, 0] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite.*rows \[1, 3\]"):
        _call(make(), U)


@pytest.mark.parametrize("make", ALL_RULES)
def test_rejects_weights_of_wrong_length(make):
    with pytest.raises(ValueError, match="weights has 2 entries but updates has 3 agents"):
        _call(make(), torch.ones(3, 2), weights=[1, 2])


@pytest.mark.parametrize("make", ALL_RULES)
def test_rejects_bad_weights(make):
    U = torch.ones(3, 2)
    with pytest.raises(ValueError, match=r"non-negative.*rows \[1\]"):
        _call(make(), U, weights=[1, -1, 2])
    with pytest.raises(ValueError, match="sum to zero"):
        _call(make(), U, weights=[0, 0, 0])
    with pytest.raises(ValueError, match="finite"):
        _call(make(), U, weights=[1, math.nan, 2])
    with pytest.raises(ValueError, match="1-D"):
        _call(make(), U, weights=[[1, 1, 1]])


def test_rejects_other_bad_inputs():
    with pytest.raises(ValueError, match="floating-point"):
        FedAvg()(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="no agents"):
        FedAvg()(torch.ones(0, 3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        FedAvg()([[1.0, 2.0]])
    with pytest.raises(ValueError, match="agent_ids has 1 entries"):
        FedAvg()(torch.ones(2, 3), agent_ids=["a"])
    with pytest.raises(ValueError, match="distinct"):
        FedAvg()(torch.ones(2, 3), agent_ids=["a", "a"])


def test_finite_rows_whose_sum_overflows_are_accepted():
    U = torch.tensor([[3e38, 3e38], [1.0, 1.0]])
    assert torch.isfinite(CoordinateMedian()(U)).all()


def test_large_weights_in_half_precision_do_not_overflow():
    U = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float16)
    out = FedAvg()(U, weights=[60000, 60000])
    assert torch.equal(out, torch.tensor([2.0, 3.0], dtype=torch.float16))


def test_fedavg_finds_non_finite_rows_of_weight_zero():
    U = torch.ones(4, 3)
    U[2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"rows \[2\]"):
        FedAvg()(U, weights=[1, 1, 0, 1])
    U[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[0, 2\]"):
        FedAvg()(U, weights=[1, 1, 0, 1])
    with pytest.raises(ValueError, match=r"rows \[0, 2\]"):
        FedAvg()(U, weights=[0, 1, 0, 1])


def test_fedavg_of_finite_rows_whose_sum_overflows_is_the_representable_mean():
    # 3e38 + 3e38 overflows float32, the mean 3e38 does not (robustlr 0.1 returned inf)
    U = torch.tensor([[3e38, 1.0], [3e38, 1.0]])
    for w in (None, [1, 1], [2, 1]):
        out = FedAvg()(U, weights=w)
        assert out.dtype == torch.float32 and out[1] == 1.0 and out[0] == torch.tensor(3e38), (w, out)


def test_clipping_scales_a_row_whose_norm_overflows_instead_of_zeroing_it():
    from robustlr.aggregation import clip_updates

    V = torch.tensor([[3e38, 3e38], [0.3, 0.4]])
    clipped, n = clip_updates(V, 1.0)
    assert n == 1
    torch.testing.assert_close(clipped[0], torch.tensor([0.7071068, 0.7071068]))
    assert torch.equal(clipped[1], V[1])


@pytest.mark.parametrize("dtype, big", [(torch.float32, 1e38), (torch.float16, 6e4)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("make", [lambda: FedAvg(), lambda: RobustLR(FedAvg(), threshold=2),
                                  lambda: TrimmedMean(0.2), lambda: TrimmedMean(0.0)],
                         ids=["fedavg", "rlr-fedavg", "trimmed-mean", "trimmed-mean-b0"])
def test_a_sum_that_overflows_gives_the_representable_mean(make, weighted, dtype, big):
    """Six finite updates near the largest float: the plain sum overflows, the mean does not. The
    rules weight each row by its share instead (as comed never sums), so the result is the mean
    computed in float64, not inf."""
    U = torch.full((6, 4), big, dtype=dtype)
    U[:, 1] = -big
    U[:, 2] = big / 2
    w = torch.tensor([1.0, 2, 3, 4, 5, 6]) if weighted else None
    rule = make()
    out = rule(U, weights=w)
    assert out.dtype == dtype and bool(torch.isfinite(out).all())
    # every row equal per column: any mean, weighted or trimmed, is that value
    expected = U[0].double()
    assert torch.allclose(out.double(), expected, rtol=2e-3 if dtype == torch.float16 else 1e-6)
