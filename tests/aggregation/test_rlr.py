"""RobustLR: the issue's example, ties, thresholds, masks, layouts and telemetry."""

import pytest
import torch
from torch import nn

from robustlr.aggregation import (
    ClipAndNoise,
    CoordinateMedian,
    FedAvg,
    FoolsGold,
    ParamLayout,
    RobustLR,
    SignAggregation,
    Threshold,
    threshold_range,
)


def test_issue_example(paper_U):
    rlr = RobustLR(FedAvg(), threshold=2)
    out = rlr(paper_U)
    # votes |3|, |1|, |1|: coordinates 2 and 3 flip; FedAvg gives [1, 2/3, 1]
    assert torch.equal(out, torch.tensor([1.0, -2.0 / 3.0, -1.0]))
    t = rlr.telemetry
    assert (t["n_flipped"], t["n_coords"], t["threshold"], t["n_agents"]) == (2, 3, 2, 3)
    assert t["flipped_fraction"] == pytest.approx(2 / 3)
    assert "per_layer" not in t


def test_vote_equal_to_threshold_keeps_positive_rate(paper_U):
    # threshold 1: votes 3, 1, 1 all reach it
    assert torch.equal(RobustLR(FedAvg(), threshold=1)(paper_U), FedAvg()(paper_U))
    # threshold 3: only the first coordinate (vote 3 == 3) keeps its sign
    out = RobustLR(FedAvg(), threshold=3)(paper_U)
    assert torch.equal(out, torch.tensor([1.0, -2.0 / 3.0, -1.0]))


def test_zero_updates_do_not_vote():
    U = torch.tensor([[1.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 4.0, 1.0]])
    # votes 3, 1, 0
    rlr = RobustLR(FedAvg(), threshold=2)
    assert torch.equal(rlr(U), torch.tensor([0.75, -1.0, -0.0]))
    assert rlr.telemetry["n_flipped"] == 2


def test_threshold_zero_is_the_plain_rule(paper_U):
    rlr = RobustLR(FedAvg(), threshold=0)
    assert torch.equal(rlr(paper_U), FedAvg()(paper_U))
    assert rlr.telemetry["n_flipped"] == 0 and rlr.telemetry["flipped_fraction"] == 0.0


def test_weights_go_to_the_rule_not_the_vote(paper_U):
    out = RobustLR(FedAvg(), threshold=2)(paper_U, weights=[2, 1, 1])
    assert torch.equal(out, torch.tensor([1.0, -0.0, -1.5]))


@pytest.mark.parametrize(
    "inner, expected",
    [
        (CoordinateMedian(), [1.0, -2.0, -3.0]),
        (SignAggregation(), [1.0, -1.0, -1.0]),
    ],
)
def test_over_other_rules(paper_U, inner, expected):
    assert torch.equal(RobustLR(inner, threshold=2)(paper_U), torch.tensor(expected))


def test_over_clip_and_noise_clips_then_flips():
    U = torch.tensor([[3.0, 4.0], [0.3, -0.4]])
    rlr = RobustLR(ClipAndNoise(FedAvg(), clip_norm=1.0), threshold=2)
    # clipped rows [0.6, 0.8], [0.3, -0.4]; mean [0.45, 0.2]; votes 2, 0 -> second flips
    assert torch.allclose(rlr(U), torch.tensor([0.45, -0.2]))
    assert rlr.telemetry["inner"]["n_clipped"] == 1


def test_telemetry_of_stateful_inner_rule():
    U = torch.eye(3)
    rlr = RobustLR(FoolsGold(), threshold=1)
    rlr(U, agent_ids=["a", "b", "c"])
    assert rlr.telemetry["inner"]["weights"] == {"a": 1.0, "b": 1.0, "c": 1.0}


def test_threshold_fraction_is_ceil_of_share():
    U = torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, 1.0]])
    rlr = RobustLR(FedAvg(), threshold=0.5)
    rlr(U)  # ceil(2.5) = 3; votes 3, 3
    assert rlr.telemetry["threshold"] == 3 and rlr.telemetry["n_flipped"] == 0
    assert (rlr.threshold, rlr.threshold_fraction) == (None, 0.5)
    rlr = RobustLR(FedAvg(), threshold=0.7)
    rlr(U)  # ceil(3.5) = 4
    assert rlr.telemetry["threshold"] == 4 and rlr.telemetry["n_flipped"] == 2
    rlr = RobustLR(FedAvg(), threshold=0.2)
    rlr(U)  # 0.2 * 5 = 1.0000000000000002 in floats: still 1
    assert rlr.telemetry["threshold"] == 1
    rlr = RobustLR(FedAvg(), threshold=Threshold(fraction=1.0))  # unanimity: 5 of 5
    rlr(U)
    assert rlr.telemetry["threshold"] == 5 and rlr.telemetry["n_flipped"] == 2


def test_threshold_has_one_form():
    # integers and integral floats are counts, floats in (0, 1) fractions; validated once
    assert Threshold.of(4) == Threshold.of(4.0) == Threshold(count=4)
    assert Threshold.of(0.4) == Threshold(fraction=0.4)
    assert Threshold.of(0).off and Threshold.of(0.0).off and not Threshold.of(1).off
    assert RobustLR(FedAvg(), threshold=4.0).threshold == 4
    # a count of a full round scales with the voters left: ceil(theta * n / full)
    t = Threshold.of(4, full_round=10)
    assert [t.for_round(n) for n in (10, 9, 8, 5, 3, 1)] == [4, 4, 4, 2, 2, 1]
    t = Threshold.of(7, full_round=10)
    assert [t.for_round(n) for n in (10, 9, 7, 3)] == [7, 7, 5, 3]
    assert Threshold.of(Threshold.of(3), full_round=6) == Threshold(count=3, full_round=6)
    for bad, msg in [(2.5, "integer count"), (-1, "count of agents >= 0"), (float("nan"), "count of agents"),
                     ("4", "count of agents"), (True, "count of agents")]:
        with pytest.raises(ValueError, match=msg):
            Threshold.of(bad)
    with pytest.raises(ValueError, match="exceeds the 10 agents in a round"):
        Threshold.of(11, full_round=10)
    with pytest.raises(ValueError, match="exactly one"):
        Threshold(count=1, fraction=0.1)


def test_threshold_out_of_range():
    with pytest.raises(ValueError, match=r"threshold=-1 must be a count of agents >= 0"):
        RobustLR(FedAvg(), threshold=-1)
    rlr = RobustLR(FedAvg(), threshold=4)
    with pytest.raises(ValueError, match=r"threshold=4 is outside the range 0\.\.3"):
        rlr(torch.ones(3, 2))
    RobustLR(FedAvg(), threshold=3)(torch.ones(3, 2))  # == n_agents is allowed
    with pytest.raises(ValueError, match=r"threshold=1.5: use an integer count"):
        RobustLR(FedAvg(), threshold=1.5)
    with pytest.raises(TypeError):
        RobustLR(FedAvg())  # theta is required
    with pytest.raises(ValueError, match="integer"):
        RobustLR(FedAvg(), threshold=2.5)
    with pytest.raises(ValueError, match="rule"):
        RobustLR("fedavg", threshold=1)
    with pytest.raises(ValueError, match="no rule to wrap"):
        RobustLR(None, threshold=1)(torch.ones(3, 2))


def test_threshold_range():
    assert threshold_range(10, 0.1) == (2, 9)
    assert threshold_range(10, 0.0) == (1, 10)
    assert threshold_range(40, 0.3) == (13, 28)
    assert threshold_range(33, 0.1) == (5, 29)  # 3.3 corrupt expected: assume 4
    with pytest.raises(ValueError, match="empty"):
        threshold_range(10, 0.5)
    with pytest.raises(ValueError, match="corrupt_fraction"):
        threshold_range(10, 1.2)
    with pytest.raises(ValueError, match="n_agents"):
        threshold_range(0, 0.1)


def test_mask_leaves_other_coordinates_unchanged(paper_U):
    mask = torch.tensor([True, False, True])
    rlr = RobustLR(FedAvg(), threshold=2, mask=mask)
    # coordinate 2 is outside the mask: the plain mean 2/3, no flip
    assert torch.equal(rlr(paper_U), torch.tensor([1.0, 2.0 / 3.0, -1.0]))
    assert rlr.telemetry["n_flipped"] == 1 and rlr.telemetry["n_coords"] == 2
    assert rlr.telemetry["flipped_fraction"] == 0.5
    with pytest.raises(ValueError, match="covers 3 coordinates but updates have 4"):
        rlr(torch.ones(3, 4))


class TinyBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.bn = nn.BatchNorm2d(2)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def test_layout_default_never_flips_buffers():
    model = TinyBN()
    layout = ParamLayout.from_module(model)
    g = torch.Generator().manual_seed(0)
    U = torch.randn(5, layout.numel, generator=g)
    rlr = RobustLR(FedAvg(), threshold=5, layout=layout)
    out = rlr(U)
    plain = FedAvg()(U)
    for name, sl in layout.slices().items():
        if name.startswith("bn.running") or name.endswith("num_batches_tracked"):
            assert torch.equal(out[sl], plain[sl]), name
    per_layer = rlr.telemetry["per_layer"]
    assert set(per_layer) == {"conv.weight", "conv.bias", "bn.weight", "bn.bias", "fc.weight", "fc.bias"}
    assert sum(c for _, c in per_layer.values()) == rlr.telemetry["n_coords"]
    assert sum(f for f, _ in per_layer.values()) == rlr.telemetry["n_flipped"] > 0
    vote = torch.sign(U).sum(0).abs()
    sl = layout.slices()["fc.weight"]
    assert per_layer["fc.weight"] == (int((vote[sl] < 5).sum()), 24)


def test_param_names_restrict_to_layers(paper_U):
    model = nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 1, bias=False))  # 0.weight, 0.bias, 1.weight
    layout = ParamLayout.from_module(model)
    rlr = RobustLR(FedAvg(), threshold=2, layout=layout, param_names=["0.bias", "1"])
    assert torch.equal(rlr(paper_U), torch.tensor([1.0, -2.0 / 3.0, -1.0]))
    assert rlr.telemetry["per_layer"] == {"0.bias": (1, 1), "1.weight": (1, 1)}
    rlr = RobustLR(FedAvg(), threshold=2, layout=layout, param_names="0")
    assert torch.equal(rlr(paper_U), torch.tensor([1.0, -2.0 / 3.0, 1.0]))
    with pytest.raises(ValueError, match="unknown parameter names.*valid names"):
        RobustLR(FedAvg(), threshold=2, layout=layout, param_names=["2"])
    with pytest.raises(ValueError, match="needs a layout"):
        RobustLR(FedAvg(), threshold=2, param_names=["0"])
    with pytest.raises(ValueError, match="not both"):
        RobustLR(FedAvg(), threshold=2, layout=layout, param_names=["0"], mask=torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="layout"):
        rlr(torch.ones(3, 5))


def test_non_finite_rejected_before_stateful_inner_rule_records():
    fg = FoolsGold()
    rlr = RobustLR(fg, threshold=1)
    U = torch.ones(2, 3)
    U[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"rows \[0\]"):
        rlr(U, agent_ids=[0, 1])
    assert fg.history == {}


@pytest.mark.parametrize("inner", [FedAvg(), CoordinateMedian(), SignAggregation()])
def test_blockwise_inner_rule_matches_reference_over_many_blocks(inner):
    # column-separable rules run block by block inside the vote's pass; compare with the
    # formula applied to the whole matrix at once
    g = torch.Generator().manual_seed(3)
    U = torch.randn(6, 500_003, generator=g)
    U[:, ::11] = 0.0
    w = torch.tensor([1.0, 2.0, 3.0, 1.0, 1.0, 5.0])
    rlr = RobustLR(inner, threshold=4)
    out = rlr(U, weights=w)
    vote = torch.sign(U).sum(0).abs()
    expected = torch.where(vote >= 4, 1.0, -1.0) * inner(U, weights=w)
    assert torch.allclose(out, expected, rtol=1e-6, atol=1e-7)
    assert rlr.telemetry["n_flipped"] == int((vote < 4).sum())
    bad = U.clone()
    bad[4, 400_000] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[4\]"):
        rlr(bad, weights=w)


def test_flip_votes_on_the_updates_and_flips_an_aggregate_computed_elsewhere(paper_U):
    # the Flower wrapper's path: the inner strategy aggregated; RLR only votes and flips
    rlr = RobustLR(None, threshold=2)
    median = CoordinateMedian()(paper_U)  # [1, 2, 3]
    assert torch.equal(rlr.flip(paper_U, median), torch.tensor([1.0, -2.0, -3.0]))
    assert torch.equal(rlr.flipped, torch.tensor([False, True, True]))
    assert (rlr.telemetry["n_flipped"], rlr.telemetry["threshold"], rlr.telemetry["inner"]) == (2, 2, {})
    # per array of a (name, numel) layout: a 1-element and a 2-element array
    assert rlr.flipped_per_entry([("a", 1), ("b", 2)]) == {"a": 0.0, "b": 1.0}
    masked = RobustLR(None, threshold=2, mask=torch.tensor([True, False, True]))
    assert torch.equal(masked.flip(paper_U, median), torch.tensor([1.0, 2.0, -3.0]))
    assert masked.flipped_per_entry([("a", 1), ("b", 2)]) == {"a": 0.0, "b": 1.0}  # b: 1 of its 1 masked coordinate
    with pytest.raises(ValueError, match=r"aggregate must be a tensor of shape \(3,\)"):
        rlr.flip(paper_U, torch.zeros(2))
    bad = paper_U.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        rlr.flip(bad, median)
