"""RLR's variants for models where the plain rule costs accuracy (issue 30): the scope of the vote
(convolution and linear weights only) and the soft rule (scale by the vote's margin), on
hand-worked cases."""

import pytest
import torch
from torch import nn

from robustlr.aggregation import FedAvg, ParamLayout, RobustLR

#: 4 agents x 5 coordinates; |sum of signs| per coordinate: 4, 2, 0, 3 (one agent sends 0), 1
U = torch.tensor([[1.0, 1.0, 2.0, 1.0, 1.0],
                  [1.0, 1.0, -1.0, 1.0, 1.0],
                  [1.0, 1.0, 2.0, 1.0, -1.0],
                  [1.0, -1.0, -1.0, 0.0, 0.0]])
MEAN = torch.tensor([1.0, 0.5, 0.5, 0.75, 0.25])


def test_soft_scales_each_coordinate_by_its_margin():
    rlr = RobustLR(FedAvg(), threshold=2, soft=True)
    # theta 2 of n 4: above, (a - 2) / 2 -> 1, 0, 0.5 for a = 4, 2, 3; below, (a - 2) / 2 -> -1, -0.5 for a = 0, 1
    torch.testing.assert_close(rlr(U), MEAN * torch.tensor([1.0, 0.0, -1.0, 0.5, -0.5]))
    assert rlr.telemetry["n_flipped"] == 2 and rlr.flipped.tolist() == [False, False, True, False, True]
    assert rlr.telemetry["mean_scale"] == pytest.approx(0.0)
    # the hard rule flips the same coordinates by a full step
    torch.testing.assert_close(RobustLR(FedAvg(), threshold=2)(U), MEAN * torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0]))


def test_soft_with_theta_equal_to_the_voters_keeps_only_unanimous_coordinates_whole():
    out = RobustLR(FedAvg(), threshold=4, soft=True)(U)
    # a = 4 >= theta = n: scale 1; below, (a - 4) / 4 -> -0.5, -1, -0.25, -0.75
    torch.testing.assert_close(out, MEAN * torch.tensor([1.0, -0.5, -1.0, -0.25, -0.75]))


def test_soft_leaves_coordinates_outside_the_mask_alone_and_theta_0_is_the_rule():
    mask = torch.tensor([True, True, False, True, False])
    rlr = RobustLR(FedAvg(), threshold=2, mask=mask, soft=True)
    torch.testing.assert_close(rlr(U), MEAN * torch.tensor([1.0, 0.0, 1.0, 0.5, 1.0]))
    assert rlr.telemetry["mean_scale"] == pytest.approx(0.5)  # (1 + 0 + 0.5) / 3
    torch.testing.assert_close(RobustLR(FedAvg(), threshold=0, soft=True)(U), MEAN)
    with pytest.raises(ValueError, match="soft must be True or False"):
        RobustLR(FedAvg(), threshold=2, soft="yes")


def test_the_weight_scope_flips_convolution_and_linear_weights_only():
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(1, 1))
    layout = ParamLayout.from_module(model)
    # 0.weight, 0.bias, 1.weight, 1.bias, 1.running_mean, 1.running_var, 1.num_batches_tracked, 3.weight, 3.bias
    assert layout.weight_mask().tolist() == [True, False, False, False, False, False, False, True, False]
    split = torch.tensor([[1.0] * 9, [-1.0] * 9, [1.0] * 9, [-2.0] * 9])  # no coordinate reaches theta 2
    mean = split.mean(0)  # -0.25 everywhere
    out = RobustLR(FedAvg(), threshold=2, layout=layout, mask=layout.weight_mask())(split)
    flipped = torch.tensor([True, False, False, False, False, False, False, True, False])
    torch.testing.assert_close(out, torch.where(flipped, -mean, mean))
    trainable = RobustLR(FedAvg(), threshold=2, layout=layout)(split)  # the default scope flips biases and BN too
    assert (trainable != mean).sum() == 6


# -- a threshold per layer (max_flip): U's agreements are 4, 2, 0, 3, 1


def test_max_flip_lowers_theta_until_the_cap_holds():
    # theta 4 of 4 flips a < 4: four of five coordinates. Cap 0.4 -> at most floor(2.0) = 2 flips:
    # coordinates with a < c for c = 0..4 number 0, 1, 2, 3, 4, so theta_l = 2 flips a = 0 and a = 1
    rlr = RobustLR(FedAvg(), threshold=4, max_flip=0.4)
    torch.testing.assert_close(rlr(U), MEAN * torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0]))
    assert rlr.flipped.tolist() == [False, False, True, False, True]
    assert rlr.telemetry["layer_thresholds"] == {"*": 2} and rlr.telemetry["n_flipped"] == 2
    # cap 0.2 -> one flip (a = 0, theta_l 1); cap 1 -> theta itself, the paper's rule
    torch.testing.assert_close(RobustLR(FedAvg(), threshold=4, max_flip=0.2)(U),
                               MEAN * torch.tensor([1.0, 1.0, -1.0, 1.0, 1.0]))
    full = RobustLR(FedAvg(), threshold=4, max_flip=1.0)
    torch.testing.assert_close(full(U), RobustLR(FedAvg(), threshold=4)(U))
    assert full.telemetry["layer_thresholds"] == {"*": 4}


def test_max_flip_is_all_or_nothing_on_tied_agreements():
    split = torch.tensor([[1.0] * 4, [-1.0] * 4])  # every coordinate a = 0
    rlr = RobustLR(FedAvg(), threshold=2, max_flip=0.75)  # flipping all 4 > 3: theta_l = 0, none flips
    torch.testing.assert_close(rlr(split), torch.zeros(4))
    assert rlr.telemetry["n_flipped"] == 0 and rlr.telemetry["layer_thresholds"] == {"*": 0}


def test_max_flip_sets_a_threshold_per_array_of_the_layout():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))  # 0.weight 4, 0.bias 2, 1.weight 2, 1.bias 1
    layout = ParamLayout.from_module(model)
    signs = torch.tensor([  # 3 agents; agreement per coordinate below
        [1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, -1, 1, -1, 1, -1, -1, 1],
        [1, -1, 1, -1, -1, 1, 1, -1, -1],
    ], dtype=torch.float32)
    # a = 3 1 1 1 | 1 3 | 1 1 | 1; theta 3 flips every a = 1 (6 of 9)
    rlr = RobustLR(FedAvg(), threshold=3, layout=layout, max_flip=0.5)
    out = rlr(signs)
    # 0.weight: 3 of 4 below 3 > cap 2, below 2: 3 > 2, below 1: 0 -> theta 1, no flip;
    # 0.bias: 1 of 2 below 3 <= cap 1 -> theta 3, flips its a = 1;
    # 1.weight: 2 of 2 below 3 and below 2 > cap 1 -> theta 1, no flip; 1.bias: cap floor(0.5) = 0 -> theta 1
    assert rlr.telemetry["layer_thresholds"] == {"0.weight": 1, "0.bias": 3, "1.weight": 1, "1.bias": 1}
    expected_flips = [False, False, False, False, True, False, False, False, False]
    assert rlr.flipped.tolist() == expected_flips
    mean = signs.mean(0)
    torch.testing.assert_close(out, torch.where(torch.tensor(expected_flips), -mean, mean))
    assert rlr.telemetry["per_layer"]["0.bias"] == (1, 2)


def test_max_flip_is_validated():
    for bad in (0, 0.0, 1.5, -0.1, True, "0.25"):
        with pytest.raises(ValueError, match="max_flip must be a share in"):
            RobustLR(FedAvg(), threshold=2, max_flip=bad)
    with pytest.raises(ValueError, match="not defined for soft=True"):
        RobustLR(FedAvg(), threshold=2, soft=True, max_flip=0.25)
