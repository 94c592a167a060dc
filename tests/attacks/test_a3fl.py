"""A3FL's trigger optimisation: its step and the search on hand-worked models, and the simulator's use
of the trigger (tiny generated data for the code paths)."""

import pytest
import torch
from torch import nn

from robustlr.attacks.a3fl import A3FLSettings, adversarial_model, draw, optimise_trigger, quantise, similarity
from robustlr.errors import ConfigError
from robustlr.sim.config import make_config
from robustlr.sim.federation import build_federation, normalise
from robustlr.sim.loop import Simulation

BASE = {"dataset": "fashion-mnist", "rounds": 2, "num_agents": 4, "corrupt_fraction": 0.5, "poison_fraction": 0.5,
        "local_epochs": 1, "batch_size": 16, "eval_every": 1, "seed": 2, "train_mode": "sequential",
        "checkpoint_every": 1, "trigger_optimisation": "a3fl", "a3fl_iterations": 2, "a3fl_adv_epochs": 1,
        "a3fl_lr": 0.05}


def test_draw_puts_the_pattern_on_the_region_only():
    x = torch.zeros(2, 1, 2, 2)
    m = torch.tensor([[True, False], [False, True]])
    out = draw(x, m, torch.tensor([[[7.0, 8.0], [9.0, 10.0]]]))
    assert out[1, 0].tolist() == [[7.0, 0.0], [0.0, 10.0]]


def test_quantise_rounds_the_normalised_trigger_to_pixels():
    t = torch.tensor([[[-0.5, 0.0], [1.0, 9.0]]])  # mean 0.5, std 0.5: pixel = (t * 0.5 + 0.5) * 255
    assert quantise(t, (0.5,), (0.5,)).tolist() == [[[64, 128], [255, 255]]]  # 63.75 -> 64, 127.5 -> 128, clipped


class _Linear(nn.Module):
    """logit_1 - logit_0 = the sum of the pixels: raising any pixel raises the target's probability."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[0.0] * 4, [1.0] * 4]))

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_without_the_adversarial_model_each_batch_moves_the_region_one_step_towards_the_target():
    model = _Linear()
    images = torch.zeros(5, 1, 2, 2)
    mask = torch.tensor([[True, True], [False, False]])
    settings = A3FLSettings(iterations=3, lr=0.1, adv_epochs=0, batch_size=2)  # 3 batches per iteration
    t = optimise_trigger(model, images, torch.zeros(5, dtype=torch.int64), mask, torch.zeros(1, 2, 2), 1,
                         torch.tensor([-1.0]), torch.tensor([0.75]), settings, torch.Generator().manual_seed(0))
    # 3 iterations x 3 batches = 9 steps of +0.1 on the region, clipped at 0.75; untouched elsewhere
    assert t.tolist() == [[[0.75, 0.75], [0.0, 0.0]]]
    assert all(p.grad is None for p in model.parameters()) and model.training  # left as it was found


def test_the_adversarial_model_unlearns_the_trigger_and_the_search_is_deterministic():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    images = torch.randn(12, 1, 4, 4)
    labels = torch.zeros(12, dtype=torch.int64)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, :2] = True
    pattern = torch.full((1, 4, 4), 2.0)
    x = draw(images, mask, pattern)
    before = nn.functional.cross_entropy(model(x), labels)
    adv = adversarial_model(model, images, labels, mask, pattern, A3FLSettings(adv_epochs=20, batch_size=4),
                            torch.Generator().manual_seed(1))
    assert nn.functional.cross_entropy(adv(x), labels) < before  # the true class on triggered images
    assert not any(torch.equal(a, b) for a, b in zip(adv.parameters(), model.parameters()))
    tgt = torch.full((12,), 2, dtype=torch.int64)
    assert similarity(model, model, x, tgt) == pytest.approx(1.0)
    runs = [optimise_trigger(model, images, labels, mask, pattern, 2, torch.tensor([-3.0]), torch.tensor([3.0]),
                             A3FLSettings(iterations=3, adv_epochs=1, batch_size=4, lr=0.05),
                             torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0][:, ~mask], pattern[:, ~mask]) and not torch.equal(runs[0], pattern)


def test_a_run_redraws_the_trigger_each_round_on_the_poisoned_rows_and_the_backdoor_set(tiny, resume_check):
    cfg = make_config(BASE)
    ds = tiny()
    sim = Simulation(cfg, build_federation(cfg, ds))
    fed = sim.fed
    start = sim.trigger.clone()
    assert torch.equal(quantise(start, ds.mean, ds.std)[:, fed.trigger_mask],
                       torch.full_like(quantise(start, ds.mean, ds.std)[:, fed.trigger_mask], ds.ink))
    sim.run_round(1)
    assert not torch.equal(sim.trigger, start)
    u8 = quantise(sim.trigger, ds.mean, ds.std)
    rows = torch.from_numpy(fed.poisoned_rows)
    assert len(rows) > 0
    drawn = fed.train_x.images[rows]
    assert torch.equal(drawn[:, :, fed.trigger_mask], u8[:, fed.trigger_mask].expand(len(rows), -1, -1))
    assert torch.equal(drawn[:, :, ~fed.trigger_mask], ds.train_x[rows][:, :, ~fed.trigger_mask])  # the rest clean
    base_u8 = ds.test_x[ds.test_y == cfg.base_class]
    want = normalise(torch.where(fed.trigger_mask, u8, base_u8), ds.mean, ds.std)
    assert torch.equal(fed.backdoor_x, want)
    sim.close()

    # a run stopped after round 1 and resumed gives the uninterrupted run's numbers (the checkpoint
    # carries the trigger; the rebuilt federation is redrawn with it)
    resume_check(cfg, lambda part, resumed: torch.equal(resumed.trigger, part.trigger) or
                 pytest.fail("the resumed run's trigger differs"))


@pytest.mark.parametrize("override, message", [
    ({"attack": "dba"}, "needs attack = 'trojan'"),
    ({"attack": "label-flip"}, "needs attack = 'trojan'"),
    ({"corrupt_fraction": 0.0}, "trigger_optimisation set but corrupt_fraction = 0"),
    ({"a3fl_iterations": 0}, "a3fl_iterations"),
    ({"a3fl_lr": 0.0}, "a3fl_lr"),
])
def test_bad_a3fl_settings_are_refused_before_work(override, message):
    with pytest.raises(ConfigError, match=message):
        make_config({**BASE, **override})


def test_flower_refuses_a3fl():
    from robustlr.integrations.flower.apps import check_flower_config

    with pytest.raises(ConfigError, match="optimise one trigger together"):
        check_flower_config(make_config(BASE))
