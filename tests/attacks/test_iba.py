"""IBA's generator trigger: the bound's schedule, the perturbation, the generator's training on a
hand-worked model, and the simulator's use of it (tiny generated data for the code paths)."""

import pytest
import torch
from torch import nn

from robustlr.attacks.a3fl import quantise
from robustlr.attacks.iba import Generator, IBASettings, perturb, round_eps, train_generator
from robustlr.errors import ConfigError
from robustlr.sim.config import make_config
from robustlr.sim.federation import build_federation, normalise
from robustlr.sim.loop import Simulation

BASE = {"dataset": "fashion-mnist", "rounds": 2, "num_agents": 4, "corrupt_fraction": 0.5, "poison_fraction": 0.5,
        "local_epochs": 1, "batch_size": 16, "eval_every": 1, "seed": 2, "train_mode": "sequential",
        "checkpoint_every": 1, "trigger_optimisation": "iba", "iba_generator_epochs": 2, "iba_eps": 0.2,
        "iba_test_eps": 0.1, "iba_eps_decay": 0.5}


def test_the_bound_decays_geometrically_to_the_test_bound():
    assert [round_eps(0.2, 0.03, 0.5, t) for t in range(4)] == [0.2, 0.1, 0.05, 0.03]
    assert round_eps(0.15, 0.025, 0.0, 100) == 0.15  # no decay
    assert round_eps(0.15, 0.025, 0.001, 1) == pytest.approx(0.15 * 0.999)


def test_perturb_moves_each_channel_by_eps_over_its_std_and_clips_to_the_pixel_range():
    x = torch.tensor([[[[0.0, 0.5]], [[0.0, -0.9]]]])  # 1 image, 2 channels, 1 x 2 pixels
    g = torch.tensor([[[[1.0, 1.0]], [[-1.0, -0.5]]]])
    out = perturb(x, g, 0.25, torch.tensor([0.5, 0.25]), torch.tensor([-1.0, -1.0]), torch.tensor([0.75, 2.0]))
    # channel 0: +0.25 / 0.5 = +0.5, 1.0 clipped to 0.75; channel 1: -1.0 and -0.5, -1.4 clipped to -1
    assert out.tolist() == [[[[0.5, 0.75]], [[-1.0, -1.0]]]]


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 30, 30)])
def test_the_generator_keeps_the_image_shape_and_its_output_in_minus_one_to_one(shape):
    g = Generator(*shape)
    with torch.no_grad():
        out = g(torch.randn(5, *shape) * 10)
    assert out.shape == (5, *shape) and float(out.abs().max()) <= 1.0


class _Linear(nn.Module):
    """logit_1 - logit_0 = the sum of the pixels: raising any pixel raises the target's probability."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.cat([torch.zeros(1, 16), torch.ones(1, 16)]))

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_the_generator_learns_to_push_the_model_to_the_target_and_training_is_deterministic():
    model = _Linear()
    images = torch.zeros(8, 1, 4, 4)
    std, low, high = torch.tensor([1.0]), torch.tensor([-1.0]), torch.tensor([1.0])

    def trained():
        torch.manual_seed(0)
        g = Generator(1, 4, 4)
        losses = train_generator(g, model, images, 1, 0.5, std, low, high, IBASettings(epochs=30, lr=0.05, batch_size=4),
                                 torch.Generator().manual_seed(3))
        return g, losses

    g, losses = trained()
    assert losses[-1] < losses[0]
    # the target's logit minus the other is the sum of the perturbation: it must have grown towards +16 x 0.5
    with torch.no_grad():
        moved = perturb(images, g(images), 0.5, std, low, high)
    assert float(moved.sum(dim=(1, 2, 3)).mean()) > 4.0
    assert float(moved.abs().max()) <= 0.5 + 1e-6  # never more than eps from the clean image
    assert all(p.grad is None for p in model.parameters()) and model.training  # the model left as it was
    assert not g.training
    g2, losses2 = trained()
    assert losses == losses2 and all(torch.equal(a, b) for a, b in zip(g.state_dict().values(),
                                                                          g2.state_dict().values()))


def test_a_run_draws_the_generators_trigger_on_the_poisoned_rows_and_the_backdoor_set(tiny, resume_check):
    cfg = make_config(BASE)
    ds = tiny()
    sim = Simulation(cfg, build_federation(cfg, ds))
    fed = sim.fed
    assert sim.trigger is None and sim.generator is not None
    before = {k: v.clone() for k, v in sim.generator.state_dict().items()}
    sim.run_round(1)
    assert sim._iba_eps_drawn == 0.2  # round one: the starting bound
    assert any(not torch.equal(before[k], v) for k, v in sim.generator.state_dict().items())
    rows = torch.from_numpy(fed.poisoned_rows)
    assert len(rows) > 0
    drawn = fed.train_x.images[rows].float()
    clean = ds.train_x[rows].float()
    diff = (drawn - clean).abs()
    # every pixel within the bound (0.2 of 255, plus rounding), and the images changed
    assert float(diff.max()) <= 0.2 * 255 + 1 and float(diff.mean()) > 1.0
    x = normalise(ds.train_x[rows], ds.mean, ds.std)
    std = torch.tensor(ds.std)
    low = normalise(torch.zeros((1, 1, 1, 1), dtype=torch.uint8), ds.mean, ds.std).flatten()
    high = normalise(torch.full((1, 1, 1, 1), 255, dtype=torch.uint8), ds.mean, ds.std).flatten()
    with torch.no_grad():
        want = quantise(perturb(x, sim.generator(x), 0.2, std, low, high), ds.mean, ds.std)
    assert torch.equal(fed.train_x.images[rows], want)
    base = fed.base_x
    with torch.no_grad():
        want_test = normalise(quantise(perturb(base, sim.generator(base), 0.1, std, low, high), ds.mean, ds.std),
                              ds.mean, ds.std)
    assert torch.equal(fed.backdoor_x, want_test)  # drawn at the test bound
    sim.run_round(2)
    assert sim._iba_eps_drawn == 0.1  # decayed by half, floored at the test bound
    sim.close()

    # a run stopped after round 1 and resumed gives the uninterrupted run's numbers (the checkpoint
    # carries the generator; the rebuilt federation is redrawn with it)
    resume_check(cfg, lambda part, resumed: torch.equal(resumed.fed.backdoor_x, part.fed.backdoor_x) or
                 pytest.fail("the resumed run's backdoor set differs"))


@pytest.mark.parametrize("override, message", [
    ({"attack": "dba"}, "needs attack = 'trojan'"),
    ({"attack": "label-flip"}, "needs attack = 'trojan'"),
    ({"corrupt_fraction": 0.0}, "trigger_optimisation set but corrupt_fraction = 0"),
    ({"iba_eps": 0.0}, "iba_eps"),
    ({"iba_eps": 1.5}, "iba_eps"),
    ({"iba_test_eps": -0.1}, "iba_test_eps"),
    ({"iba_eps_decay": 1.0}, "iba_eps_decay"),
    ({"iba_generator_epochs": 0}, "iba_generator_epochs"),
    ({"iba_generator_lr": 0.0}, "iba_generator_lr"),
])
def test_bad_iba_settings_are_refused_before_work(override, message):
    with pytest.raises(ConfigError, match=message):
        make_config({**BASE, **override})


def test_flower_refuses_iba():
    from robustlr.integrations.flower.apps import check_flower_config

    with pytest.raises(ConfigError, match="optimise one trigger together"):
        check_flower_config(make_config(BASE))
