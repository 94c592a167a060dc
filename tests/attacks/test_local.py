"""Attacks on a corrupt agent's own training: Neurotoxin's mask and PGD's projection (hand-worked
cases for the core steps; tiny generated data for the engines' code paths)."""

import numpy as np
import pytest
import torch

from robustlr.attacks.local import neurotoxin_count, neurotoxin_mask
from robustlr.errors import ConfigError
from robustlr.sim.config import make_config
from robustlr.sim.engines import build_engine, engine_context
from robustlr.sim.federation import build_federation
from robustlr.sim.loop import Simulation

BASE = {"dataset": "fashion-mnist", "rounds": 2, "num_agents": 4, "corrupt_fraction": 0.5, "poison_fraction": 0.5,
        "local_epochs": 1, "batch_size": 16, "eval_every": 1, "seed": 5, "train_mode": "sequential",
        "checkpoint_every": 1}


def test_neurotoxin_masks_the_top_k_percent_of_trainable_coordinates_by_last_update():
    update = torch.tensor([0.5, -4.0, 0.0, 3.0, -3.0, 100.0, 0.25, 1.0])
    trainable = torch.tensor([True, True, True, True, True, False, True, True])
    # 7 trainable coordinates, k 30 % -> ceil(2.1) = 3 masked: |-4|, |3| and |-3| (the tie in order);
    # coordinate 5 is a buffer: never masked, whatever its size
    assert neurotoxin_mask(update, trainable, 30).tolist() == [1, 0, 1, 0, 0, 1, 1, 1]
    # a tie at the boundary goes to the earlier coordinate
    assert neurotoxin_mask(torch.tensor([2.0, 1.0, 2.0]), torch.ones(3, dtype=torch.bool), 10).tolist() == [0, 1, 1]
    assert (neurotoxin_count(5, 1_200_000), neurotoxin_count(99.9, 10)) == (60_000, 10)


@pytest.mark.parametrize("bad", [0, 100, -1, 150])
def test_neurotoxin_refuses_a_k_outside_0_100(bad):
    with pytest.raises(ValueError, match=r"top_percent must be in \(0, 100\)"):
        neurotoxin_mask(torch.ones(3), torch.ones(3, dtype=torch.bool), bad)
    with pytest.raises(ConfigError, match="neurotoxin_top_percent"):
        make_config({**BASE, "neurotoxin_top_percent": bad})


def test_neurotoxin_refuses_a_non_finite_update():
    with pytest.raises(ValueError, match="NaN or infinite"):
        neurotoxin_mask(torch.tensor([1.0, float("nan")]), torch.ones(2, dtype=torch.bool), 50)


@pytest.mark.parametrize("override, message", [
    ({"pgd_radius": 0.0}, "pgd_radius"),
    ({"pgd_radius": -1.0}, "pgd_radius"),
    ({"pgd_radius": 1.0, "corrupt_fraction": 0.0}, "pgd_radius set but corrupt_fraction = 0"),
    ({"neurotoxin_top_percent": 5, "corrupt_fraction": 0.0}, "neurotoxin_top_percent set but corrupt_fraction = 0"),
    ({"neurotoxin_top_percent": 5, "byzantine": "ipm"}, "cannot act on them"),
])
def test_bad_local_attack_settings_are_refused_before_work(override, message):
    with pytest.raises(ConfigError, match=message):
        make_config({**BASE, **override})


def _engine(tiny, mode, **override):
    cfg = make_config({**BASE, "train_mode": mode, **override})
    fed = build_federation(cfg, tiny())
    return cfg, fed, build_engine(engine_context(cfg, fed, torch.device("cpu")), mode)


def _mask(engine, fraction=0.5, seed=0):
    numel = engine.layout.numel
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(numel, generator=g) > fraction).float()


def test_a_masked_agent_changes_only_the_unmasked_coordinates_and_the_others_ignore_the_mask(tiny):
    cfg, fed, eng = _engine(tiny, "sequential", neurotoxin_top_percent=50)
    glob = eng.layout.flatten(eng.model)
    mask = _mask(eng)
    agents = list(range(fed.num_agents))
    masked = eng.train_round(glob, agents, 1, grad_mask=mask).updates.clone()
    plain = eng.train_round(glob, agents, 1).updates.clone()
    trainable = eng.layout.trainable_mask()
    for i, a in enumerate(agents):
        if a in fed.corrupt:
            assert (masked[i][(mask == 0) & trainable] == 0).all()  # exactly zero where masked
            assert (masked[i][(mask == 1) & trainable] != 0).float().mean() > 0.5
        else:
            assert torch.equal(masked[i], plain[i])  # an honest agent trains as without the mask


def test_pgd_bounds_the_corrupt_updates_and_leaves_the_honest_ones_alone(tiny):
    cfg, fed, eng = _engine(tiny, "sequential", pgd_radius=0.05)
    _, _, plain_eng = _engine(tiny, "sequential")
    glob = eng.layout.flatten(eng.model)
    agents = list(range(fed.num_agents))
    pgd, plain = eng.train_round(glob, agents, 1).updates, plain_eng.train_round(glob, agents, 1).updates
    norms = pgd.norm(dim=1)
    for i, a in enumerate(agents):
        if a in fed.corrupt:
            assert plain[i].norm() > 0.1 and norms[i] <= 0.05 * (1 + 1e-5)
        else:
            assert torch.equal(pgd[i], plain[i])
    # with clip_norm too, the corrupt agents project onto the smaller ball, the honest ones onto clip_norm's
    cfg2, fed2, both = _engine(tiny, "sequential", pgd_radius=0.05, clip_norm=0.08)
    ctx = both.ctx
    assert [ctx.radius(a, 1) for a in agents] == [0.05 if a in fed2.corrupt else 0.08 for a in agents]
    # outside the attack window a corrupt agent projects like any other
    _, fed3, late = _engine(tiny, "sequential", pgd_radius=0.05, clip_norm=0.08, attack_from_round=2)
    assert [late.ctx.radius(a, 1) for a in agents] == [0.08] * len(agents)
    assert not any(late.ctx.masked(a, 1) for a in agents)


@pytest.mark.parametrize("mode", ["processes", "vectorized"])
def test_every_engine_applies_the_local_attacks_as_the_reference(tiny, mode):
    over = {"neurotoxin_top_percent": 30, "pgd_radius": 0.2}
    torch.manual_seed(0)  # the engine's model starts from torch's global generator: the same weights every run
    _, fed, ref = _engine(tiny, "sequential", **over)
    _, _, eng = _engine(tiny, mode, **over)
    try:
        glob = ref.layout.flatten(ref.model)
        mask = _mask(ref, 0.3, seed=1)
        agents = list(range(fed.num_agents))
        want = ref.train_round(glob, agents, 1, grad_mask=mask).updates.clone()
        got = eng.train_round(glob, agents, 1, grad_mask=mask).updates.clone()
        trainable = ref.layout.trainable_mask()
        if mode == "processes":
            assert torch.equal(got, want)  # bit for bit: the same code on one thread
        else:
            # other kernels, other summation order: tests/sim/engines/test_vectorized.py's tolerance (the
            # largest coordinate difference within 0.2 % of the largest update); a per-element atol of 1e-5
            # failed for about one random initial model in two (5e-5 on near-zero coordinates)
            assert (got - want).abs().max() <= 2e-3 * want.abs().max()
        for i in np.flatnonzero(np.isin(agents, fed.corrupt)):
            assert (got[i][(mask == 0) & trainable] == 0).all() and got[i].norm() <= 0.2 * (1 + 1e-5)
    finally:
        eng.close()


def test_a_neurotoxin_run_masks_with_the_last_global_update_and_resumes_bit_identically(tiny, tmp_path):
    cfg = make_config({**BASE, "neurotoxin_top_percent": 10})
    seen = []

    class Spy:
        def __init__(self, engine):
            self.engine, self.name = engine, engine.name

        def train_round(self, g, agents, round_, grad_mask=None):
            seen.append((round_, None if grad_mask is None else grad_mask.clone()))
            return self.engine.train_round(g, agents, round_, grad_mask=grad_mask)

        def close(self):
            self.engine.close()

    sim = Simulation(cfg, build_federation(cfg, tiny()))
    sim.engine = Spy(sim.engine)
    before = sim.global_params.clone()
    sim.run_round(1)
    update_1 = sim.global_params - before
    sim.run_round(2)
    assert seen[0][1] is None  # round 1: no previous global model, the agents train unmasked
    trainable = sim.layout.trainable_mask()
    assert torch.equal(seen[1][1], neurotoxin_mask(update_1, trainable, 10))
    assert int((seen[1][1][trainable] == 0).sum()) == neurotoxin_count(10, int(trainable.sum()))

    # a run stopped after round 1 and resumed gives the uninterrupted run's numbers (the checkpoint
    # carries the last global update)
    whole = Simulation(cfg, build_federation(cfg, tiny()), out_dir=tmp_path / "whole").run()
    cut = make_config({**BASE, "neurotoxin_top_percent": 10})
    part = Simulation(cut, build_federation(cut, tiny()), out_dir=tmp_path / "cut")
    part.records.append(part.run_round(1))
    part._checkpoint(1)
    part.close()
    resumed = Simulation(cut, build_federation(cut, tiny()), out_dir=tmp_path / "cut")
    assert resumed.start_round == 2 and resumed.last_update is not None
    res = resumed.run()
    assert torch.equal(res.global_params, whole.global_params)
    assert res.records[-1].val_acc == whole.records[-1].val_acc


def test_flower_takes_the_corrupt_agents_own_training_attacks():
    from robustlr.integrations.flower.apps import check_flower_config

    check_flower_config(make_config({**BASE, "neurotoxin_top_percent": 5}))  # the node keeps what it received
    check_flower_config(make_config({**BASE, "pgd_radius": 1.0}))


@pytest.mark.parametrize("module, examples", [("robustlr.attacks.local", 2), ("robustlr.attacks.a3fl", 1),
                                             ("robustlr.attacks.f3ba", 3)])
def test_the_docstring_examples_hold(module, examples):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= examples and result.failed == 0
