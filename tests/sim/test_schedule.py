"""What the paper's experiments need from the simulator: the RLR schedule (from a round, or
from a validation accuracy), the negated-loss attack, server-only clipping, comed's lower
median, floor(C*K) agents per round."""

import pytest
import torch

from robustlr.aggregation import ClipAndNoise, CoordinateMedian, RobustLR
from robustlr.sim.config import make_config
from robustlr.sim.engines.select import engine_context
from robustlr.sim.federation import build_federation
from robustlr.sim.loop import Simulation, run_experiment

BASE = {"rounds": 4, "num_agents": 4, "corrupt_fraction": 0.25, "local_epochs": 1, "batch_size": 16,
        "rlr_threshold": 2, "seed": 3, "checkpoint_every": 0, "train_mode": "sequential", "threads": 1}


def cfg_of(**kw):
    return make_config({**BASE, **kw})


def _strip(records):
    return [r.model_dump(exclude={"seconds", "seconds_training", "seconds_aggregation", "seconds_telemetry", "rlr_on", "threshold",
                                  "flipped_fraction"}) for r in records]


def test_rlr_from_a_round_aggregates_without_it_before(tiny):
    ds = tiny()
    plain = run_experiment(cfg_of(rlr_threshold=0), dataset=ds)
    always = run_experiment(cfg_of(), dataset=ds)
    late = run_experiment(cfg_of(rlr_from_round=3), dataset=ds)
    assert [r.rlr_on for r in late.records] == [False, False, True, True]
    assert [r.threshold for r in late.records] == [None, None, 2, 2]
    assert late.records[0].flipped_fraction is None and late.records[2].flipped_fraction > 0
    assert late.summary.rlr_switch_round == 3 and always.summary.rlr_switch_round == 1
    assert plain.summary.rlr_switch_round is None and all(r.rlr_on is None for r in plain.records)
    # Theorem 1's p0: the flipped shares of the rounds RLR was on only
    shares = [r.flipped_fraction for r in late.records[2:]]
    assert late.summary.rlr_p0_mean == pytest.approx(sum(shares) / 2) and late.summary.rlr_p0_max == max(shares)
    assert late.summary.theorem1_premise == (max(shares) < 0.25)
    assert plain.summary.rlr_p0_mean is None and plain.summary.theorem1_premise is None
    # before the switch the run is the plain FedAvg run, after it it is not
    assert _strip(late.records[:2]) == _strip(plain.records[:2])
    assert _strip(late.records[2:]) != _strip(plain.records[2:])


def test_rlr_from_a_validation_accuracy_switches_after_the_first_round_that_reaches_it(tiny, tmp_path):
    ds = tiny()
    plain = run_experiment(cfg_of(rlr_threshold=0), dataset=ds)
    first = plain.records[0].val_acc
    on = run_experiment(cfg_of(rlr_from_val_acc=first), tmp_path / "on", dataset=ds)
    assert [r.rlr_on for r in on.records] == [False, True, True, True]
    assert on.summary.rlr_switch_round == 2
    # only evaluated rounds count: evaluated only at the last round, it never switches on
    never = run_experiment(cfg_of(rlr_from_val_acc=first, eval_every=10), dataset=ds)
    assert [r.rlr_on for r in never.records] == [False] * 4 and never.summary.rlr_switch_round is None
    # the switch survives a resume: it is derived from the records in the checkpoint
    resumed = run_experiment(cfg_of(rlr_from_val_acc=first, rounds=5), tmp_path / "on", dataset=ds)
    assert [r.rlr_on for r in resumed.records] == [False, True, True, True, True]


def test_negated_loss_flips_the_loss_of_corrupt_agents_only(tiny):
    ds = tiny()
    cfg = cfg_of(corrupt_loss="negated")
    fed = build_federation(cfg, ds)
    ctx = engine_context(cfg, fed, torch.device("cpu"))
    assert ctx.loss_signs == {int(a): -1.0 for a in fed.corrupt} and len(fed.corrupt) == 1
    negated = Simulation(cfg, fed).engine
    standard = Simulation(cfg_of(), build_federation(cfg_of(), ds)).engine
    g = Simulation(cfg, fed).global_params
    for agent in range(4):
        a = negated.train_agent(g, fed.agent_indices[agent], 1, agent, negated.ctx.loss_sign(agent))
        b = standard.train_agent(g, fed.agent_indices[agent], 1, agent, standard.ctx.loss_sign(agent))
        assert torch.equal(a, b) == (agent not in fed.corrupt), agent


@pytest.mark.parametrize("scope, agents_project, server_clips", [
    ("both", True, True), ("server", False, True), ("agents", True, False)])
def test_clip_scope_separates_agent_projection_and_server_clipping(tiny, scope, agents_project, server_clips):
    cfg = cfg_of(clip_norm=0.05, clip_scope=scope, rlr_threshold=0, rounds=1)
    sim = Simulation(cfg, build_federation(cfg, tiny()))
    assert sim.engine.s.clip_norm == (0.05 if agents_project else 0.0)
    assert isinstance(sim.server.rule, ClipAndNoise) == server_clips
    rec = sim.run_round(1)
    # unprojected updates of this tiny model are far larger than 0.05
    assert (rec.honest_norm <= 0.05 * (1 + 1e-5)) == agents_project


def test_noise_needs_the_server_to_clip():
    with pytest.raises(ValueError, match="needs the server to clip"):
        cfg_of(clip_norm=1.0, noise_sigma=1e-3, clip_scope="agents")
    with pytest.raises(ValueError, match="rlr_from_round or rlr_from_val_acc"):
        cfg_of(rlr_from_round=3, rlr_from_val_acc=0.5)


def test_comed_lower_median_for_the_authors_code(tiny):
    cfg = cfg_of(aggregator="comed", comed_even="lower")
    rule = Simulation(cfg, build_federation(cfg, tiny())).server.rule
    assert isinstance(rule, RobustLR) and isinstance(rule.rule, CoordinateMedian) and rule.rule.even == "lower"
    U = torch.randn(6, 50)
    assert torch.equal(rule.rule(U), torch.median(U, 0).values)


def test_agents_per_round_is_floor_of_c_times_k():
    cfg = make_config({"participation": 0.01, "num_agents": 3383, "partition": "iid"})
    assert cfg.agents_per_round(3383) == 33 and cfg.agents_per_round(293) == 2
    assert make_config({"participation": 0.05}).agents_per_round(293) == 14
    assert make_config({"participation": 0.3}).agents_per_round(10) == 3  # 0.3 * 10 = 2.9999999999999996


def test_every_round_records_the_vote_telemetry_and_rlr_rounds_their_flips_per_layer(tiny):
    ds = tiny()
    res = run_experiment(cfg_of(rlr_from_round=3), dataset=ds)
    from robustlr.aggregation import ParamLayout
    from robustlr.models import build_model

    layout = ParamLayout.from_module(build_model(res.config.model, num_classes=ds.num_classes))
    sizes = dict(zip(layout.names, layout.numels))
    for rec in res.records:
        assert 0.0 <= rec.honest_agreement <= 1.0 and 0.0 <= rec.honest_outvoted <= 1.0
        if rec.rlr_on:
            # the per-layer fractions, weighted by layer size, give the round's flipped fraction
            total = sum(sizes[k] * v for k, v in rec.flipped_per_layer.items()) / sum(sizes.values())
            assert set(rec.flipped_per_layer) == set(layout.names)
            assert total == pytest.approx(rec.flipped_fraction, rel=1e-5)
        else:
            assert rec.flipped_per_layer is None
