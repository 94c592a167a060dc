"""FLTrust on hand-worked rounds: trust = ReLU(cosine) to the server update, rescaling to its norm,
the trust-weighted mean, the zero cases, the reference passed through wrappers, bad input."""

import math

import pytest
import torch

from robustlr.aggregation import RoundInputs, ClipAndNoise, FedAvg, FLTrust, PlainBuffers, RobustLR, fltrust_weights


def _with(reference) -> FLTrust:
    rule = FLTrust()
    rule.set_reference(torch.as_tensor(reference, dtype=torch.float32))
    return rule


def test_trust_is_the_relu_of_the_cosine_and_every_update_is_rescaled_to_the_server_norm():
    # g0 = (3, 4), norm 5. Rows: (6, 8) cos 1; (4, -3) cos 0 (orthogonal); (-3, -4) cos -1; (1, 0) cos 0.6
    U = torch.tensor([[6.0, 8.0], [4.0, -3.0], [-3.0, -4.0], [1.0, 0.0]])
    trust, scale, ref = fltrust_weights(U, torch.tensor([3.0, 4.0]))
    assert ref == 5.0
    torch.testing.assert_close(trust, torch.tensor([1.0, 0.0, 0.0, 0.6], dtype=torch.float64))
    torch.testing.assert_close(scale, torch.tensor([0.5, 1.0, 5.0 / 5.0, 5.0], dtype=torch.float64))
    rule = _with([3.0, 4.0])
    out = rule(U)
    # (1 x (3, 4) + 0.6 x (5, 0)) / 1.6 = (6, 4) / 1.6
    torch.testing.assert_close(out, torch.tensor([3.75, 2.5]))
    assert rule.telemetry["rejected_rows"] == [1, 2]
    assert rule.telemetry["reference_norm"] == 5.0 and rule.telemetry["trust_sum"] == pytest.approx(1.6)


def test_a_boosted_update_in_the_server_direction_counts_no_more_than_an_honest_one():
    # the same direction 1000x longer: rescaled onto the server's sphere, it weighs as the short one
    U = torch.tensor([[1.0, 1.0], [1000.0, 1000.0], [1.0, -1.0]])
    out = _with([2.0, 0.0])(U)
    # trust 1/sqrt2, 1/sqrt2, 1/sqrt2; each rescaled to norm 2: (sqrt2, sqrt2), (sqrt2, sqrt2), (sqrt2, -sqrt2)
    s = math.sqrt(2)
    torch.testing.assert_close(out, torch.tensor([s, s / 3]))


def test_sizes_are_ignored_and_rows_may_come_in_any_order():
    U = torch.randn(7, 50, generator=torch.Generator().manual_seed(1))
    ref = torch.randn(50, generator=torch.Generator().manual_seed(2))
    a = _with(ref)(U)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    b = _with(ref)(U[perm], weights=torch.arange(1.0, 8.0))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_nobody_trusted_or_a_zero_server_update_leaves_the_model_where_it_is():
    U = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    rule = _with([-1.0, 0.0])
    assert torch.equal(rule(U), torch.zeros(2)) and rule.telemetry["rejected_rows"] == [0, 1]
    rule = _with([0.0, 0.0])
    assert torch.equal(rule(U), torch.zeros(2)) and rule.telemetry["trust_sum"] == 0.0
    # a zero update gets trust 0 (its cosine is undefined), not NaN
    rule = _with([1.0, 0.0])
    torch.testing.assert_close(rule(U), torch.tensor([1.0, 0.0]))
    assert rule.telemetry["trust"] == [1.0, 0.0]


def test_with_the_robust_learning_rate_the_vote_flips_the_trusted_mean_where_it_is_weak():
    U = torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    rule = RobustLR(FLTrust(), threshold=3)
    assert RobustLR(rule, threshold=1).round_inputs == {"reference"}
    rule.set_round_inputs(RoundInputs(reference=torch.tensor([1.0, 0.0])))
    inner = _with([1.0, 0.0])(U)
    out = rule(U)
    # coordinate 0: all three agree (kept); coordinate 1: 1 of 3 net, below 3 (flipped)
    torch.testing.assert_close(out, torch.tensor([inner[0], -inner[1]]))


def test_the_reference_reaches_the_rule_through_the_wrappers_on_the_same_coordinates():
    trainable = torch.tensor([True, False, True])
    rule = PlainBuffers(ClipAndNoise(FLTrust(), clip_norm=100.0, noise_sigma=0.0), trainable)
    assert rule.round_inputs == {"reference"} and not FedAvg().round_inputs
    rule.set_round_inputs(RoundInputs(reference=torch.tensor([1.0, 99.0, 0.0])))
    U = torch.tensor([[2.0, 5.0, 0.0], [0.0, 7.0, 1.0]])
    out = rule(U, weights=torch.tensor([1.0, 1.0]))
    # parameters (columns 0, 2): row 0 trust 1 rescaled to (1, 0); row 1 orthogonal, trust 0.
    # the buffer (column 1): the plain mean 6
    torch.testing.assert_close(out, torch.tensor([1.0, 6.0, 0.0]))


def test_bad_input_is_refused_with_the_fix():
    U = torch.ones(3, 4)
    with pytest.raises(ValueError, match=r"call rule.set_round_inputs\(RoundInputs\(reference=g0\)\)"):
        FLTrust()(U)
    with pytest.raises(ValueError, match="reference has 3 entries but the updates have 4 columns"):
        _with([1.0, 2.0, 3.0])(U)
    with pytest.raises(ValueError, match="NaN or inf"):
        FLTrust().set_reference(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="1-D floating-point"):
        FLTrust().set_reference(torch.ones(2, 2))
    wrapped = PlainBuffers(FLTrust(), torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match=r"reference \(server update\) has shape \(2,\), but the model has 3 coordinates"):
        wrapped.set_round_inputs(RoundInputs(reference=torch.ones(2)))
    bad = U.clone()
    bad[1, 2] = float("inf")
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        _with([1.0, 0.0, 0.0, 0.0])(bad)
