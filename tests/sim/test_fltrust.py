"""FLTrust in the simulator: the root dataset (drawn, seeded, recorded), the server's own update
trained each round as one more agent, handed to the rule, and what is refused (tiny generated
data: code paths only)."""

import numpy as np
import pytest
import torch

from robustlr.aggregation import FLTrust
from robustlr.errors import DataError, TrainingError
from robustlr.sim.config import make_config
from robustlr.sim.federation import build_federation
from robustlr.sim.loop import Simulation

BASE = {"dataset": "fashion-mnist", "rounds": 2, "num_agents": 4, "corrupt_fraction": 0.25, "poison_fraction": 0.5,
        "local_epochs": 1, "batch_size": 16, "eval_every": 1, "seed": 3, "train_mode": "sequential",
        "aggregator": "fltrust", "fltrust_root_size": 20, "rlr_threshold": 0}


def test_the_root_set_is_held_out_when_it_can_be_else_clean_agents_rows(tiny):
    ds = tiny(n_train=240)
    held = build_federation(make_config({**BASE, "train_limit": 200}), ds)
    holders = np.concatenate(held.agent_indices)
    assert len(held.root_indices) == 20 and not np.isin(held.root_indices, holders).any()
    assert held.notes["fltrust_root"]["source"].startswith("held-out")
    assert sum(held.notes["fltrust_root"]["label_counts"]) == 20
    # the same seed draws the same rows; another seed others
    again = build_federation(make_config({**BASE, "train_limit": 200}), ds)
    other = build_federation(make_config({**BASE, "train_limit": 200, "seed": 4}), ds)
    assert np.array_equal(held.root_indices, again.root_indices)
    assert not np.array_equal(held.root_indices, other.root_indices)
    # every row with an agent: the root comes from the agents' rows that are not poisoned
    fed = build_federation(make_config(BASE), ds)
    assert fed.notes["fltrust_root"]["source"].startswith("the agents' clean")
    assert not np.isin(fed.root_indices, fed.poisoned_rows).any() and len(fed.poisoned_rows) > 0
    assert torch.equal(fed.train_y[torch.from_numpy(fed.root_indices)], ds.train_y[torch.from_numpy(fed.root_indices)])
    assert build_federation(make_config({**BASE, "aggregator": "fedavg"}), ds).root_indices is None


def test_a_root_set_larger_than_the_clean_rows_is_refused_with_the_fix(tiny):
    with pytest.raises(DataError, match="lower fltrust_root_size"):
        build_federation(make_config({**BASE, "fltrust_root_size": 239}), tiny(n_train=240))


def test_the_server_trains_on_its_root_set_and_the_rule_gets_that_update(tiny):
    cfg = make_config(BASE)
    sim = Simulation(cfg, build_federation(cfg, tiny()))
    ctx = sim.engine_ctx
    assert ctx.root_agent == cfg.num_agents + len(ctx.clean_twins)
    assert np.array_equal(ctx.agent_indices[ctx.root_agent], sim.fed.root_indices)
    before = sim.global_params.clone()
    updates, agents, _ = sim._train_round(1)
    # the reference is the root set's own training from the same global model, seeded as an agent
    expected = sim.engine.train_round(before, [ctx.root_agent], 1).updates[0]
    torch.testing.assert_close(sim.reference, expected, rtol=0, atol=0)
    step = sim.server.step(1, sim.global_params, updates, agents, [], reference=sim.reference)
    rule = FLTrust()
    rule.set_reference(expected)
    torch.testing.assert_close(step.aggregate, rule(updates))
    torch.testing.assert_close(sim.global_params, before + step.aggregate)
    sim.engine.close()


def test_a_run_records_who_was_left_out_and_repeats_exactly(tiny, tmp_path):
    cfg = make_config(BASE)
    a = Simulation(cfg, build_federation(cfg, tiny()), out_dir=tmp_path / "a").run()
    b = Simulation(cfg, build_federation(cfg, tiny()), out_dir=tmp_path / "b").run()
    assert [r.excluded for r in a.records] == [r.excluded for r in b.records]
    assert all(r.excluded is not None for r in a.records)
    assert torch.equal(a.global_params, b.global_params)
    assert a.summary.federation["fltrust_root"]["size"] == 20


def test_the_server_step_refuses_a_round_without_the_reference(tiny):
    cfg = make_config(BASE)
    sim = Simulation(cfg, build_federation(cfg, tiny()))
    updates, agents, _ = sim._train_round(1)
    sim.engine.close()
    with pytest.raises(TrainingError, match="needs the server's own update on its root dataset"):
        sim.server.step(1, sim.global_params, updates, agents, [])
    with pytest.raises(TrainingError, match="NaN or inf"):
        sim.server.step(1, sim.global_params, updates, agents, [], reference=torch.full_like(updates[0], float("nan")))


def test_fltrust_root_size_is_inert_elsewhere_and_checked():
    assert "fltrust_root_size" in make_config({"fltrust_root_size": 50}).inert_keys()
    with pytest.raises(ValueError, match="fltrust_root_size"):
        make_config({"aggregator": "fltrust", "fltrust_root_size": 0})


def test_a_root_set_missing_classes_is_warned_and_recorded(tiny, caplog):
    fed = build_federation(make_config({**BASE, "fltrust_root_size": 3}), tiny())
    assert len(fed.root_indices) == 3
    assert "holds no example of class(es)" in fed.notes["fltrust_root"]["warnings"][0]
    assert "Raise fltrust_root_size" in caplog.text
