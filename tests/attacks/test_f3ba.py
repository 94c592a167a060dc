"""F3BA: the candidates, the flips and the flipped model on hand-worked and small cases, and the
simulator's corrupt agents starting from the flipped model (tiny generated data for the code paths)."""

import pytest
import torch
from torch import nn

from robustlr.attacks.f3ba import F3BASettings, candidates, flip_filters, handcraft
from robustlr.errors import ConfigError
from robustlr.sim.config import make_config
from robustlr.sim.federation import build_federation
from robustlr.sim.loop import Simulation

BASE = {"dataset": "fashion-mnist", "rounds": 2, "num_agents": 4, "corrupt_fraction": 0.5, "poison_fraction": 0.5,
        "local_epochs": 1, "batch_size": 16, "eval_every": 1, "seed": 4, "train_mode": "sequential",
        "checkpoint_every": 1, "trigger_optimisation": "f3ba", "f3ba_conv_rate": 0.1, "f3ba_fc_rate": 0.01,
        "trojan_value": 128}  # a mid-grey start, so that the ascent can move the trigger either way


def test_a_filter_flips_only_its_candidates_to_the_pattern_sign():
    w = torch.tensor([[[[0.5, -1.0], [2.0, -0.25]]], [[[1.0, 1.0], [1.0, -1.0]]]])  # 2 filters, 1 channel, 2x2
    cand = torch.zeros_like(w, dtype=torch.bool)
    cand[0, 0, 1, :] = True  # the second row of filter 0 only
    pattern = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # filter 0's range [-1, 2]: signs + - / - +
    out = flip_filters(w, cand, pattern)
    assert out[0].tolist() == [[[0.5, -1.0], [-2.0, 0.25]]] and torch.equal(out[1], w[1])


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.fc1 = nn.Linear(6 * 4 * 4, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def test_the_flipped_model_changes_only_candidate_weights_keeping_their_magnitude():
    torch.manual_seed(0)
    model = _Net()
    previous = {k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.rand(10, 1, 8, 8)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:3, :3] = True
    settings = F3BASettings(conv_rate=0.2, fc_rate=0.1, batch_size=4)
    low, high = torch.tensor([0.0]), torch.tensor([1.0])
    state, trigger = handcraft(model, previous, images, mask, torch.full((1, 8, 8), 0.5), low, high, settings,
                               torch.Generator().manual_seed(0))
    for k, v in model.state_dict().items():  # the global model is left as it was
        assert torch.equal(v, before[k])
    changed_any = False
    for name, rate in (("conv1.weight", 0.2), ("conv2.weight", 0.2), ("fc1.weight", 0.1)):
        cand = candidates(before[name], previous[name], rate)
        assert int(cand.sum()) <= int(cand.numel() * rate)
        assert torch.equal(state[name][~cand], before[name][~cand])  # non-candidates untouched
        # flip_factor 1: magnitudes kept, or 0 where the pattern or the feature difference is exactly 0 (a
        # feature the trigger does not move: no sign to copy; the authors' code zeroes it too)
        kept = state[name].abs() == before[name].abs()
        assert bool((kept | (state[name] == 0)).all()) and kept.float().mean() > 0.9
        changed_any |= not torch.equal(state[name], before[name])
    assert changed_any
    for name in ("fc2.weight", "fc2.bias", "conv1.bias", "fc1.bias"):  # output layer and biases untouched
        assert torch.equal(state[name], before[name])
    # the trigger moved on its region only, within the pixel range
    assert torch.equal(trigger[:, ~mask], torch.full((1, 8, 8), 0.5)[:, ~mask])
    assert float(trigger.min()) >= 0.0 and float(trigger.max()) <= 1.0
    again, trigger2 = handcraft(model, previous, images, mask, torch.full((1, 8, 8), 0.5), low, high, settings,
                                torch.Generator().manual_seed(0))
    assert all(torch.equal(again[k], state[k]) for k in state) and torch.equal(trigger, trigger2)


def test_corrupt_agents_start_from_the_flipped_model_from_round_two(tiny, resume_check):
    cfg = make_config(BASE)
    sim = Simulation(cfg, build_federation(cfg, tiny()))
    calls = []
    real = sim.engine.train_round

    def spy(g, agents, round_, grad_mask=None):
        calls.append((round_, list(agents), g.clone()))
        out = real(g, agents, round_, grad_mask=grad_mask)
        calls[-1] += (out.updates.clone(),)
        return out

    sim.engine.train_round = spy
    sim.run_round(1)
    assert len(calls) == 1  # round 1: no previous global model, the plain trojan
    start = sim.trigger.clone()
    before = sim.global_params.clone()
    updates, agents, _ = sim._train_round(2)
    _, honest, g_honest, _ = calls[1]
    _, bad, crafted, bad_updates = calls[2]
    assert sorted(bad) == sorted(int(a) for a in sim.fed.corrupt) and torch.equal(g_honest, before)
    assert not torch.equal(crafted, before) and not torch.equal(sim.trigger, start)
    for j, a in enumerate(bad):  # what a corrupt agent sends: its local model minus the global one
        i = list(agents).index(a)
        torch.testing.assert_close(updates[i], bad_updates[j] + (crafted - before), rtol=0, atol=1e-6)
    sim.close()

    # resumed after round 1 it gives the uninterrupted run's numbers (trigger and last update in the checkpoint)
    resume_check(cfg)


def test_f3ba_is_refused_with_pgd_and_on_a_model_without_a_first_convolution(tiny):
    with pytest.raises(ConfigError, match="leave pgd_radius unset"):
        make_config({**BASE, "pgd_radius": 1.0})
    import robustlr
    from robustlr.models.registry import unregister_model

    robustlr.register_model("f3ba-mlp", _mlp, input_shape=(1, 28, 28), replace=True)
    try:
        cfg = make_config({**BASE, "model": "f3ba-mlp"})
        with pytest.raises(ConfigError, match="no Conv2d on its input images first"):
            Simulation(cfg, build_federation(cfg, tiny()))
    finally:
        unregister_model("f3ba-mlp")


def _mlp(num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, num_classes))
