"""Vote telemetry on hand-made rounds, the answers worked out by hand."""

import pytest
import torch

from robustlr.aggregation import (
    FedAvg,
    ParamLayout,
    RobustLR,
    flipped_per_layer,
    vote_telemetry,
)


def test_a_hand_made_round_with_zeros_and_ties():
    # 4 agents x 4 coordinates; agents 2 and 3 corrupt
    U = torch.tensor([[1.0, 0.0, -2.0, 1.0],
                      [2.0, -1.0, -1.0, 0.0],
                      [-1.0, 1.0, 3.0, 0.0],
                      [-1.0, 1.0, -1.0, 0.0]])
    step = torch.tensor([0.3, -0.1, 0.0, 0.2])  # coordinate 2 does not move: it counts nowhere
    t = vote_telemetry(U, torch.tensor([False, False, True, True]), step)
    # agreement over coordinates 0, 1, 3 (3 of them): agent 0: +,0,+ vs +,-,+ -> 2/3 (a zero disagrees);
    # agent 1: +,-,0 -> 2/3; agent 2: -,+,0 -> 0; agent 3: -,+,0 -> 0
    assert t["honest_agreement"] == pytest.approx(2 / 3)
    assert t["corrupt_agreement"] == 0.0
    # honest vote sgn(sum sgn) on coords 0,1,3: +, -, + -> agrees everywhere it votes (3 of 3)
    assert t["honest_outvoted"] == 0.0
    # corrupt vote: -, +, 0 -> loses on coordinates 0 and 1, abstains on 3: 2 of 2
    assert t["corrupt_outvoted"] == 1.0


def test_a_round_without_corrupt_agents_and_shape_errors():
    t = vote_telemetry(torch.ones(2, 3), torch.tensor([False, False]), torch.ones(3))
    assert t == {"honest_agreement": 1.0, "honest_outvoted": 0.0, "corrupt_agreement": None, "corrupt_outvoted": None}
    with pytest.raises(ValueError, match="updates"):
        vote_telemetry(torch.ones(2, 3), torch.tensor([False]), torch.ones(3))


def test_rlr_exposes_its_flip_mask_and_the_per_layer_fractions():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    layout = ParamLayout.from_module(model)  # 0.weight 4, 0.bias 2, 1.weight 2, 1.bias 1
    U = torch.tensor([[1.0] * 9, [1.0] * 4 + [-1.0] * 5])  # the agents disagree on the last 5 coordinates
    rlr = RobustLR(FedAvg(), threshold=2, layout=layout)
    rlr(U)
    assert rlr.flipped.tolist() == [False] * 4 + [True] * 5
    assert flipped_per_layer(rlr.flipped, layout) == {"0.weight": 0.0, "0.bias": 1.0, "1.weight": 1.0, "1.bias": 1.0}
    off = RobustLR(FedAvg(), threshold=0)
    off(U)
    assert off.flipped is None
