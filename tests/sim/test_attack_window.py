"""The attack window (attack_from_round .. attack_until_round) and the backdoor's durability after
it (tiny generated data for the code paths; hand-worked records for the metric)."""

import pytest

from robustlr.errors import ConfigError
from robustlr.sim.config import make_config
from robustlr.sim.federation import build_federation
from robustlr.sim.loop import Simulation
from robustlr.sim.records import RoundRecord, backdoor_durability

BASE = {"dataset": "fashion-mnist", "rounds": 3, "num_agents": 5, "corrupt_fraction": 0.4, "poison_fraction": 0.5,
        "local_epochs": 1, "batch_size": 16, "eval_every": 1, "seed": 3, "train_mode": "sequential"}


def _records(values, evaluated=None):
    return [RoundRecord(round=r, agents=1, corrupt_in_round=0, evaluated=evaluated is None or r in evaluated,
                        backdoor_acc=b if evaluated is None or r in evaluated else None)
            for r, b in enumerate(values, start=1)]


def test_durability_counts_rounds_after_the_window_to_half_the_peak():
    recs = _records([0.1, 0.9, 0.7, 0.5, 0.44, 0.2])
    out = backdoor_durability(recs, until=3, rounds=6)
    # peak 0.9 within rounds 1-3; round 5 (0.44 < 0.45) is the first below half of it: 2 rounds after
    assert (out["backdoor_peak"], out["backdoor_durability"], out["backdoor_durability_censored"]) == (0.9, 2, False)
    assert out["backdoor_auc"] == pytest.approx((0.1 + 0.9 + 0.7 + 0.5 + 0.44 + 0.2) / 6)
    # a backdoor that outlives the run: durability is the rounds left, flagged as a lower bound
    held = backdoor_durability(_records([0.8, 0.8, 0.6, 0.5]), until=2, rounds=4)
    assert (held["backdoor_durability"], held["backdoor_durability_censored"]) == (2, True)
    # evaluated every other round: the first evaluation below half the peak counts
    sparse = backdoor_durability(_records([0.0, 0.6, 0.0, 0.4, 0.0, 0.2], evaluated={2, 4, 6}), until=2, rounds=6)
    assert sparse["backdoor_durability"] == 4 and sparse["backdoor_auc"] == pytest.approx(0.4)
    # no window: the area only
    assert backdoor_durability(recs, until=None, rounds=6).keys() == {"backdoor_auc"}


def test_corrupt_agents_behave_after_the_window(tiny):
    cfg = make_config({**BASE, "boost_factor": 20.0, "attack_until_round": 1})
    sim = Simulation(cfg, build_federation(cfg, tiny()))
    assert sim.engine_ctx.attacking(1) and not sim.engine_ctx.attacking(2)
    first, second = sim.run_round(1), sim.run_round(2)
    sim.engine.close()
    assert first.corrupt_norm > 4 * first.honest_norm  # boosted inside the window
    assert second.corrupt_norm < 2 * second.honest_norm  # honest after it: no boosting, clean rows
    # the corrupt agents train on their clean copies after the window, as before attack_from_round
    for agent in sim.fed.corrupt:
        assert (sim.engine_ctx.indices(int(agent), 2) == sim.fed.honest_indices[int(agent)]).all()
        assert (sim.engine_ctx.indices(int(agent), 1) == sim.fed.agent_indices[int(agent)]).all()


def test_a_run_with_a_window_records_its_durability(tiny, tmp_path):
    cfg = make_config({**BASE, "attack_until_round": 2})
    res = Simulation(cfg, build_federation(cfg, tiny()), out_dir=tmp_path / "run").run()
    s = res.summary
    assert s.backdoor_peak == max(r.backdoor_acc for r in res.records if r.round <= 2)
    assert s.backdoor_durability in (1,) and isinstance(s.backdoor_durability_censored, bool)
    assert s.backdoor_auc == pytest.approx(sum(r.backdoor_acc for r in res.records) / 3)
    assert s.federation["attack_until_round"] == 2


@pytest.mark.parametrize("override, message", [
    ({"attack_until_round": 1, "attack_from_round": 2}, "ends the attack window before it starts"),
    ({"attack_until_round": 3}, "is not before the last round"),
])
def test_bad_windows_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        make_config({**BASE, **override})
