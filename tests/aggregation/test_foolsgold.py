"""FoolsGold: hand-computed weights, pardoning, history state, reset, errors."""

import math

import pytest
import torch

from robustlr.aggregation import FoolsGold, foolsgold_weights


def test_two_sybils_two_honest_exact():
    U = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    fg = FoolsGold()
    out = fg(U, agent_ids=["s1", "s2", "a", "b"])
    # sum(alpha_k * u_k) / 4 with alpha = [0, 0, 1, 1]
    assert torch.equal(out, torch.tensor([0.0, 0.25, 0.5, 0.25]))
    assert fg.telemetry["weights"] == {"s1": 0.0, "s2": 0.0, "a": 1.0, "b": 1.0}


def test_weights_follow_eq3_without_renormalising():
    U = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
    out = FoolsGold()(U, weights=[1, 1, 2, 4], agent_ids=range(4))
    # (2*[0,1,1,0] + 4*[0,0,1,1]) / 8
    assert torch.equal(out, torch.tensor([0.0, 0.25, 0.75, 0.5]))


def test_logit_and_pardoning_by_hand():
    # cos(h0, h1) = 0.8, cos(h0, h2) = 0.6, cos(h1, h2) = 0
    H = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, -0.8]], dtype=torch.float64)
    # v = [0.8, 0.8, 0.6]; pardoning scales row 2 by 0.6/0.8: cs[2,0] = 0.45, cs[2,1] = 0
    # w = 1 - max = [0.2, 0.2, 0.55] -> / 0.55 -> [4/11, 4/11, 1 -> 0.99]
    w = 4.0 / 11.0
    a = math.log(w / (1 - w)) + 0.5  # = ln(4/7) + 0.5 = -0.0596 -> clipped to 0
    assert a < 0
    assert torch.equal(foolsgold_weights(H), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    # a middle weight: cos(h0, h1) = 0.5, h2 orthogonal to both -> w = [0.5, 0.5, 1 -> 0.99];
    # logit(0.5) = 0, so alpha = kappa * 0.5 for agents 0 and 1
    H = torch.tensor([[1.0, 0.0, 0.0], [0.5, math.sqrt(0.75), 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert torch.allclose(foolsgold_weights(H), torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64))
    assert torch.allclose(foolsgold_weights(H, kappa=0.5), torch.tensor([0.25, 0.25, 1.0], dtype=torch.float64))


def test_history_accumulates_and_reset_clears():
    fg = FoolsGold()
    # round 1: a and b agree; c differs
    fg(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), agent_ids=["a", "b", "c"])
    assert fg.telemetry["weights"] == {"a": 0.0, "b": 0.0, "c": 1.0}
    # round 2: b and c send swapped directions; both histories become [1, 1], exact copies
    fg(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), agent_ids=["b", "c"])
    assert torch.equal(fg.history["b"], torch.tensor([1.0, 1.0]))
    assert torch.equal(fg.history["c"], torch.tensor([1.0, 1.0]))
    assert fg.telemetry["weights"] == {"b": 0.0, "c": 0.0}
    assert torch.equal(fg.history["a"], torch.tensor([1.0, 0.0]))
    fg.reset()
    assert fg.history == {} and fg.telemetry == {}
    fg(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), agent_ids=["b", "c"])
    assert fg.telemetry["weights"] == {"b": 1.0, "c": 1.0}


def test_single_agent_and_zero_update():
    fg = FoolsGold()
    assert torch.equal(fg(torch.tensor([[2.0, -1.0]]), agent_ids=[0]), torch.tensor([2.0, -1.0]))
    fg.reset()
    out = fg(torch.tensor([[0.0, 0.0], [1.0, 2.0]]), agent_ids=[0, 1])
    assert fg.telemetry["weights"] == {0: 1.0, 1: 1.0}
    assert torch.equal(out, torch.tensor([0.5, 1.0]))


def test_all_identical_agents_get_zero():
    fg = FoolsGold()
    out = fg(torch.ones(3, 4), agent_ids=[0, 1, 2])
    assert torch.equal(out, torch.zeros(4))
    assert set(fg.telemetry["weights"].values()) == {0.0}


def test_similarity_mask_restricts_history():
    mask = torch.tensor([False, True, True])
    U = torch.tensor([[5.0, 1.0, 0.0], [-5.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    fg = FoolsGold(similarity_mask=mask)
    fg(U, agent_ids=[0, 1, 2])
    # agents 0 and 1 differ only outside the mask: identical there
    assert fg.telemetry["weights"] == {0: 0.0, 1: 0.0, 2: 1.0}
    assert fg.history[0].shape == (2,)
    with pytest.raises(ValueError, match="similarity_mask has 3 entries"):
        fg(torch.ones(2, 4), agent_ids=[0, 1])


def test_errors():
    with pytest.raises(ValueError, match="agent_ids"):
        FoolsGold()(torch.ones(2, 3))
    with pytest.raises(ValueError, match="kappa"):
        FoolsGold(kappa=0)
    fg = FoolsGold()
    fg(torch.ones(2, 3), agent_ids=[0, 1])
    with pytest.raises(ValueError, match="reset"):
        fg(torch.ones(2, 4), agent_ids=[0, 1])
    fg.reset()
    x = torch.ones(2, 3)
    x[1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        fg(x, agent_ids=[0, 1])
    assert fg.history == {}


def test_resetting_a_wrapper_resets_the_wrapped_rules_history():
    from robustlr.aggregation import ClipAndNoise, PlainBuffers, RobustLR

    fg = FoolsGold()
    wrapped = RobustLR(PlainBuffers(ClipAndNoise(fg, clip_norm=10.0), torch.tensor([True, True, False])), threshold=1)
    wrapped(torch.tensor([[1.0, 2.0, 0.5], [2.0, 1.0, 0.5]]), agent_ids=["a", "b"])
    assert set(fg.history) == {"a", "b"}
    wrapped.reset()
    assert fg.history == {} and wrapped.telemetry == {}
