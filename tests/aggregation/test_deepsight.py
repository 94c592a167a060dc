"""DeepSight: its inspections on hand-worked values, a round worked by hand with a fake probe, the
model probe, the round inputs through wrappers, bad input."""

import math

import pytest
import torch
from torch import nn

pytest.importorskip("sklearn", reason="DeepSight clusters with scikit-learn (the 'flame' extra)")

from robustlr.aggregation import DeepSight, FedAvg, ModelProbe, ParamLayout, PlainBuffers, RobustLR  # noqa: E402
from robustlr.aggregation import RoundInputs  # noqa: E402
from robustlr.aggregation.deepsight import comembership, ddifs, neups, suspicious, threshold_exceedings  # noqa: E402

# 4 classes, a (4, 2) output weight at columns 0-7, its bias at 8-11, two other coordinates at 12-13
W, B = slice(0, 8), slice(8, 12)


def _round():
    rows = []
    for k in range(3):  # A: energy 3 in every class; their norms differ by the last coordinates
        rows.append([1.0] * 8 + [1.0] * 4 + [float(k), 0.0])
    for _ in range(2):  # B: all energy on class 0 (2 + 2 + 1 = 5): few threshold exceedings
        rows.append([2.0, 2.0] + [0.0] * 6 + [1.0, 0.0, 0.0, 0.0] + [0.0, 0.0])
    rows.append([-1.0] * 8 + [-1.0] * 4 + [0.0, 3.0])  # C: energy 3 everywhere, against A
    return torch.tensor(rows)


def _probe(rows, x):  # a model whose logits are its output bias (the global model's: 0), on every input
    return rows[:, B].unsqueeze(1).expand(rows.shape[0], x.shape[0], 4).clone()


def _rule(**kw):
    rule = DeepSight(W, (4, 2), B, (1, 2, 2), samples=5, **kw)
    rule.set_round_inputs(RoundInputs(probe=_probe))
    return rule


def test_the_inspections_on_hand_worked_values():
    U = _round()
    n = neups(U[:, W].reshape(6, 4, 2), U[:, B])
    torch.testing.assert_close(n[0], torch.full((4,), 0.25, dtype=torch.float64))
    torch.testing.assert_close(n[3], torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    te = threshold_exceedings(n)
    assert te.tolist() == [4, 4, 4, 1, 1, 4]  # xi = 0.25 x max NEUP: 0.0625 for A and C, 0.25 for B
    assert suspicious(te).tolist() == [False, False, False, True, True, False]  # below median 4 / 2
    # even n: numpy's median (mean of the middle two); "below" is strict
    assert suspicious(torch.tensor([4, 4, 2, 1])).tolist() == [False, False, False, True]
    assert neups(torch.zeros(1, 2, 3), None).tolist() == [[0.0, 0.0]]
    # P = 200 classes: xi = max(0.01, 1/200) x max
    assert threshold_exceedings(torch.tensor([[0.5, 0.006, 0.004] + [0.0] * 197], dtype=torch.float64)).tolist() == [2]
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # softmax (1/4, 3/4) vs the global's (1/2, 1/2)
    torch.testing.assert_close(ddifs(logits, torch.zeros(1, 2)), torch.tensor([[0.5, 1.5]], dtype=torch.float64))
    assert comembership([1, 1, 0]).tolist() == [[0, 0, 1], [0, 0, 1], [1, 1, 0]]


def test_a_round_worked_by_hand_rejects_the_suspicious_cluster_and_clips_to_the_median_norm():
    U = _round()
    rule = _rule(min_cluster_size=2)
    out = rule(U, agent_ids=list("abcdef"))
    assert rule.telemetry["suspicious_rows"] == [3, 4]
    assert rule.telemetry["admitted_rows"] == [0, 1, 2, 5] and rule.telemetry["rejected_agents"] == ["d", "e"]
    norms = U.double().norm(dim=1)  # sqrt(12), sqrt(13), 4, 3, 3, sqrt(21)
    S = (math.sqrt(12) + math.sqrt(13)) / 2
    assert rule.telemetry["clip_bound"] == pytest.approx(S)
    expected = sum(U[k].double() * min(1.0, S / float(norms[k])) for k in (0, 1, 2, 5)) / 4
    torch.testing.assert_close(out, expected.float())
    # with HDBSCAN's default minimum of 5, six agents form no cluster: every agent is its own, and
    # the labels alone decide
    rule = _rule()
    torch.testing.assert_close(rule(U), expected.float())
    assert rule.telemetry["clusters"] == [-1] * 6


def test_a_cluster_at_tau_is_rejected_nobody_admitted_gives_zeros_and_rlr_wraps_it(monkeypatch):
    import robustlr.aggregation.deepsight as deepsight

    U = _round()
    # alone, B's exceedings are the median: nobody is suspicious, both are admitted (norm 3 = S: unclipped)
    rule = _rule(min_cluster_size=2)
    torch.testing.assert_close(rule(U[3:5]), U[3:5].mean(0))
    assert rule.telemetry["suspicious_rows"] == []
    # one cluster of all six holds 2 suspicious of 6 = tau: not below it, so nobody is admitted
    monkeypatch.setattr(deepsight, "_cluster", lambda d, f, m: [0] * (d if d is not None else f).shape[0])
    rule = _rule()
    assert torch.equal(rule(U), torch.zeros(14)) and rule.telemetry["rejected_rows"] == list(range(6))
    rule = _rule(tau=0.34)  # just above 1/3: the cluster passes, every update clipped to S and averaged
    S = (math.sqrt(12) + math.sqrt(13)) / 2
    expected = sum(U[k].double() * min(1.0, S / float(U[k].double().norm())) for k in range(6)) / 6
    torch.testing.assert_close(rule(U), expected.float())
    monkeypatch.undo()
    wrapped = RobustLR(DeepSight(W, (4, 2), B, (1, 2, 2), samples=5, min_cluster_size=2), threshold=1)
    assert wrapped.round_inputs == {"probe"} and not FedAvg().round_inputs
    wrapped.set_round_inputs(RoundInputs(probe=_probe))
    plain = _rule(min_cluster_size=2)
    torch.testing.assert_close(wrapped(U), plain(U))  # theta 1 flips no coordinate
    assert wrapped.rule.telemetry["admitted_rows"] == [0, 1, 2, 5]


def test_the_model_probe_runs_global_plus_row_and_wrappers_place_the_rules_rows():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2))
    layout = ParamLayout.from_module(model)
    g = layout.flatten(model)
    rows = torch.randn(2, layout.numel)
    x = torch.randn(7, 3)
    got = ModelProbe(model, layout, batch_size=3).bound(g)(rows, x)
    for k in range(2):
        v = g + rows[k]
        expected = x @ v[:6].reshape(2, 3).T + v[6:]
        torch.testing.assert_close(got[k], expected)
    # a rule behind PlainBuffers sees some coordinates: its rows are placed among all of them (zeros elsewhere)
    seen = []
    inputs = RoundInputs(probe=lambda r, xx: seen.append(r.clone()) or torch.zeros(r.shape[0], len(xx), 2))
    inputs.restricted(torch.tensor([True, False, True])).probe(torch.tensor([[1.0, 2.0]]), x)
    assert seen[0].tolist() == [[1.0, 0.0, 2.0]]
    buffers = PlainBuffers(DeepSight(slice(0, 4), (2, 2), None, (3,), samples=2), torch.tensor([True] * 4 + [False]))
    assert buffers.round_inputs == {"probe"}


def test_bad_input_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="shape \\(3, 2\\) does not fit the output layer's 8 coordinates"):
        DeepSight(W, (3, 2), B, (1, 2, 2))
    with pytest.raises(ValueError, match="bias must be a slice of the output layer's 4 bias coordinates"):
        DeepSight(W, (4, 2), slice(8, 10), (1, 2, 2))
    with pytest.raises(ValueError, match="tau must be in \\(0, 1\\]"):
        DeepSight(W, (4, 2), B, (1, 2, 2), tau=1.5)
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        DeepSight(W, (4, 2), B, (1, 2, 2), samples=0)
    with pytest.raises(ValueError, match="input_shape must be the model's input shape"):
        DeepSight(W, (4, 2), B, ())
    U = _round()
    with pytest.raises(ValueError, match=r"call rule.set_round_inputs\(RoundInputs\(probe=...\)\)"):
        DeepSight(W, (4, 2), B, (1, 2, 2))(U)
    with pytest.raises(ValueError, match="ends at coordinate 12 but the updates have 10 columns"):
        _rule()(U[:, :10])
    rule = DeepSight(W, (4, 2), B, (1, 2, 2), samples=5)
    rule.set_round_inputs(RoundInputs(probe=lambda r, x: torch.zeros(r.shape[0], 3, 4)))
    with pytest.raises(ValueError, match="the probe returned logits of shape \\(6, 3, 4\\), expected \\(6, 5, 4\\)"):
        rule(U)
    with pytest.raises(ValueError, match="ModelProbe needs the model's layout or state_of"):
        ModelProbe(nn.Linear(2, 2))
