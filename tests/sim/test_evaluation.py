import torch
from torch import nn

from robustlr.sim.evaluation import evaluate


class Fixed(nn.Module):
    """Predicts class = first pixel value (an exact, hand-made model)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        cls = x[:, 0, 0, 0].long()
        return nn.functional.one_hot(cls, 10).float() * 10 + self.dummy


def test_metrics_on_a_hand_made_model():
    # 6 validation images: labels 0,5,5,5,7,3; the model predicts 0,5,5,7,7,1
    pred = torch.tensor([0, 5, 5, 7, 7, 1])
    val_y = torch.tensor([0, 5, 5, 5, 7, 3])
    val_x = pred.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    # 4 backdoored base-class images: predicted 7, 7, 5, 7 -> 3/4 hit the target
    bd_x = torch.tensor([7, 7, 5, 7]).float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    m = evaluate(Fixed(), val_x, val_y, base_class=5, backdoor_x=bd_x, target_class=7)
    assert m["val_acc"] == 4 / 6
    assert m["base_acc"] == 2 / 3
    assert m["backdoor_acc"] == 3 / 4
    logits = nn.functional.one_hot(pred, 10).float() * 10
    assert abs(m["val_loss"] - float(nn.functional.cross_entropy(logits, val_y))) < 1e-6
    # backdoor loss: cross-entropy of the backdoored images against the target class, by hand:
    # logits 10 on the predicted class, 0 elsewhere; -log softmax = log(e^10 + 9) - (10 if hit else 0)
    import math

    per = [math.log(math.exp(10) + 9) - (10 if p == 7 else 0) for p in (7, 7, 5, 7)]
    assert abs(m["backdoor_loss"] - sum(per) / 4) < 1e-5
