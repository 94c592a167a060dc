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
