"""The update attacks, label flipping, trojan placement and norm screening in the round loop
(tiny generated data: code paths, not science)."""

import logging

import numpy as np
import pytest
import torch

from robustlr.errors import ConfigError
from robustlr.sim.config import make_config
from robustlr.sim.federation import build_federation
from robustlr.sim.loop import Simulation

BASE = {"dataset": "fashion-mnist", "rounds": 1, "num_agents": 5, "corrupt_fraction": 0.4, "poison_fraction": 0.5,
        "local_epochs": 1, "batch_size": 16, "eval_every": 1, "seed": 3, "train_mode": "sequential"}


class Keep:
    def __init__(self):
        self.views = []

    def after_step(self, view):
        self.views.append((view.updates.clone(), view.corrupt.clone()))


def round_one(ds, **kw):
    cfg = make_config({**BASE, **kw})
    fed = build_federation(cfg, ds)
    obs = Keep()
    sim = Simulation(cfg, fed, observers=[obs])
    rec = sim.run_round(1)
    sim.engine.close()
    return sim, rec, obs.views[0] if obs.views else None


def test_boosting_multiplies_the_corrupt_rows_exactly(tiny):
    ds = tiny()
    _, _, (plain, corrupt) = round_one(ds)
    _, rec, (boosted, corrupt_b) = round_one(ds, boost_factor=5.0)
    assert torch.equal(corrupt, corrupt_b) and int(corrupt.sum()) == 2
    assert torch.equal(boosted[corrupt], plain[corrupt] * 5.0)
    assert torch.equal(boosted[~corrupt], plain[~corrupt])
    assert rec.corrupt_norm > 4 * rec.honest_norm


def test_norm_screening_rejects_boosted_updates_and_records_why(tiny, caplog):
    ds = tiny()
    with caplog.at_level(logging.WARNING, logger="robustlr"):
        sim, rec, (kept, corrupt) = round_one(ds, boost_factor=20.0, screen_norm_multiple=3.0)
    rejected = sorted(int(a) for a in sim.fed.corrupt)
    assert rec.rejected == rejected and rec.agents == 3 and rec.corrupt_in_round == 0
    assert [r["reason"] for r in rec.rejections] == ["norm", "norm"]
    assert rec.screen_median_norm is not None and rec.screen_median_norm > 0
    assert "(norm: norm" in caplog.text and not bool(corrupt.any())
    # screening off: the same boosted rows are averaged in
    _, rec_off, _ = round_one(ds, boost_factor=20.0)
    assert rec_off.rejected == [] and rec_off.agents == 5


def clean_twin_updates(ds, **kw):
    """The round-1 rows sent, which rows are corrupt, and the corrupt agents' clean-twin updates."""
    cfg = make_config({**BASE, **kw})
    sim = Simulation(cfg, build_federation(cfg, ds), observers=[obs := Keep()])
    g0 = sim.global_params.clone()
    sim.run_round(1)
    ctx = sim.engine_ctx
    clean = torch.stack([sim.engine.train_agent(g0, ctx.indices(ctx.clean_twins[int(a)], 1), 1,
                                                ctx.clean_twins[int(a)]) for a in sim.fed.corrupt])
    sent, corrupt = obs.views[0]
    return sim, sent, corrupt, clean


def test_stealth_sends_the_boosted_direction_at_the_clean_norm(tiny):
    ds = tiny()
    sim, sent, corrupt, clean = clean_twin_updates(ds, boost_factor=20.0, stealth="project")
    _, _, (plain, _) = round_one(ds)
    for row, poisoned, c in zip(sent[corrupt], plain[corrupt], clean):
        torch.testing.assert_close(torch.linalg.vector_norm(row), torch.linalg.vector_norm(c), rtol=1e-5, atol=0)
        assert float(torch.nn.functional.cosine_similarity(row, poisoned, dim=0)) > 0.9999
    # the twins train on the corrupt agents' rows with every poisoned one replaced by its clean copy
    for agent in sim.fed.corrupt:
        twin_rows = sim.engine_ctx.agent_indices[sim.engine_ctx.clean_twins[int(agent)]]
        own = sim.fed.agent_indices[int(agent)]
        assert len(twin_rows) == len(own) and int((twin_rows != own).sum()) == sim.fed.poisoned_per_agent[int(agent)]


def test_adaptive_sign_agrees_with_the_clean_update_off_the_chosen_coordinates(tiny):
    ds = tiny()
    sim, sent, corrupt, clean = clean_twin_updates(ds, adaptive="sign", adaptive_top_fraction=0.05)
    rows = sent[corrupt]
    differs = (rows != clean).any(dim=0)
    n_top = int(np.ceil(0.05 * int(sim.layout.trainable_mask().sum())))
    assert 0 < int(differs.sum()) <= n_top
    # on the chosen coordinates every corrupt agent sends the same value
    assert torch.equal(rows[0, differs], rows[1, differs])


def test_label_flip_relabels_without_drawing_and_tests_on_clean_images(tiny):
    ds = tiny()
    cfg = make_config({**BASE, "attack": "label-flip"})
    fed = build_federation(cfg, ds)
    assert torch.equal(fed.backdoor_x, fed.base_x)
    poisoned = torch.nonzero(fed.train_y != ds.train_y).flatten()
    assert len(poisoned) == sum(fed.poisoned_per_agent.values()) > 0
    assert torch.equal(fed.train_x.images[poisoned], ds.train_x[poisoned])  # the pixels are untouched
    assert "trojan_contrast" not in fed.notes
    with pytest.raises(ValueError, match="label-flip' draws no trojan"):
        make_config({**BASE, "attack": "label-flip", "trojan": "square"})


def test_trojan_position_moves_the_poisoned_pixels_and_the_test_trojan(tiny):
    ds = tiny()
    cfg = make_config({**BASE, "trojan_position": "20,20"})
    fed = build_federation(cfg, ds)
    changed = (fed.backdoor_x != fed.base_x).any(dim=(0, 1))
    rows, cols = torch.nonzero(changed, as_tuple=True)
    assert (int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())) == (20, 20, 24, 24)
    with pytest.raises(ConfigError, match="does not fit a 28x28 image"):  # refused before the data loads
        make_config({**BASE, "trojan_position": "25,0"})
    with pytest.raises(ConfigError):
        make_config({**BASE, "trojan_position": "middle"})


def test_low_trojan_contrast_is_recorded_and_warned(tiny, caplog):
    ds = tiny()  # a dark background of 0..59: a trojan drawn at 30 hardly changes it
    with caplog.at_level(logging.WARNING, logger="robustlr"):
        fed = build_federation(make_config({**BASE, "trojan_value": 30}), ds)
    assert fed.notes["trojan_contrast"] < 0.15 and "may never take" in fed.notes["warnings"][0]
    assert "may never take" in caplog.text
    bright = build_federation(make_config(BASE), ds)
    assert bright.notes["trojan_contrast"] > 0.7 and "warnings" not in bright.notes


def test_update_attacks_are_refused_without_corrupt_agents_and_adaptive_on_flower():
    with pytest.raises(ConfigError, match="boost_factor set but corrupt_fraction = 0"):
        make_config({**BASE, "corrupt_fraction": 0, "boost_factor": 3.0})
    pytest.importorskip("flwr")
    from robustlr.integrations.flower.apps import check_flower_config

    with pytest.raises(ConfigError, match="adaptive attacks need colluding agents"):
        check_flower_config(make_config({**BASE, "adaptive": "sign"}))
    check_flower_config(make_config({**BASE, "boost_factor": 3.0, "stealth": "project"}))


def test_rlr_threshold_follows_the_voters_left_after_screening(tiny):
    ds = tiny()
    # theta 4 of a full round of 5; the two boosted corrupt agents are rejected: ceil(4 x 3 / 5) = 3 votes
    _, rec, _ = round_one(ds, boost_factor=20.0, screen_norm_multiple=3.0, rlr_threshold=4)
    assert rec.agents == 3 and rec.threshold == 3
    _, rec_all, _ = round_one(ds, boost_factor=20.0, rlr_threshold=4)
    assert rec_all.agents == 5 and rec_all.threshold == 4


def test_stealth_penalty_pulls_only_the_corrupt_updates_towards_the_global_model(tiny):
    ds = tiny()
    _, _, (plain, corrupt) = round_one(ds)
    _, _, (pen, _) = round_one(ds, stealth_penalty=5.0)
    assert torch.equal(pen[~corrupt], plain[~corrupt])
    shrink = torch.linalg.vector_norm(pen[corrupt], dim=1) / torch.linalg.vector_norm(plain[corrupt], dim=1)
    assert bool((shrink < 0.9).all()), shrink
    # the processes engine (workers run the same local training) gives the same rows, bit for bit
    _, _, (pen_p, _) = round_one(ds, stealth_penalty=5.0, train_mode="processes", threads=2)
    assert torch.equal(pen_p, pen)
    with pytest.raises(ConfigError, match="stealth_penalty is not implemented in the vectorized engine"):
        make_config({**BASE, "stealth_penalty": 1.0, "train_mode": "vectorized"})


@pytest.mark.parametrize("aggregator", ["multikrum", "flame", "signguard", "fedavg"])
def test_the_agents_a_rule_leaves_out_are_recorded(tiny, aggregator):
    ds = tiny()
    sim, rec, _ = round_one(ds, aggregator=aggregator, boost_factor=50.0, corrupt_fraction=0.2, rlr_threshold=2)
    if aggregator == "fedavg":
        assert rec.excluded is None and rec.corrupt_excluded is None
        return
    corrupt = [int(a) for a in sim.fed.corrupt]
    assert set(corrupt) <= set(rec.excluded) and rec.corrupt_excluded == len(corrupt) == 1
    if aggregator == "multikrum":  # n - f = 4 of 5 kept: exactly the boosted one left out
        assert rec.excluded == corrupt


def test_too_few_updates_left_for_krum_stops_the_run_with_a_clear_error(tiny):
    from robustlr.errors import TrainingError

    ds = tiny()
    # 5 agents, f = 1: Krum needs 5 > 4; the norm screen rejects both boosted corrupt agents, 3 are left
    with pytest.raises(TrainingError, match=r"round 1: the aggregation rule refused the 3 updates left after "
                                            r"screening \(2 rejected\): .*n > 2f \+ 2"):
        round_one(ds, aggregator="krum", assumed_corrupt=1, boost_factor=20.0, screen_norm_multiple=3.0)
