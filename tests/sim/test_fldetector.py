"""FLDetector in the simulator: the server hands it the global model, its state is the rule's
(checkpointed: see test_loop's resume test), and configs it cannot act in are refused (tiny
generated data: code paths only)."""

import pytest
import torch

from robustlr.sim.config import make_config
from robustlr.sim.federation import build_federation
from robustlr.sim.loop import Simulation

BASE = {"dataset": "fashion-mnist", "rounds": 7, "num_agents": 4, "corrupt_fraction": 0.25, "poison_fraction": 0.5,
        "local_epochs": 1, "batch_size": 16, "eval_every": 7, "seed": 3, "train_mode": "sequential",
        "aggregator": "fldetector", "fldetector_window": 2, "rlr_threshold": 0, "boost_factor": 20.0}


def test_a_run_predicts_from_round_window_plus_two_and_records_who_it_leaves_out(tiny):
    cfg = make_config(BASE)
    sim = Simulation(cfg, build_federation(cfg, tiny()))
    rule = sim.server.rule
    predicted, excluded = [], []
    for r in range(1, 8):
        before = sim.global_params.clone()
        rec = sim.run_round(r)
        torch.testing.assert_close(rule._w_prev.float(), before)  # the global model the round started from
        predicted.append(rule.telemetry["predicted"])
        excluded.append(rec.excluded)
    sim.engine.close()
    assert predicted == [False, False, False, True, True, True, True]
    detected = sorted(rule.detected)
    first = next((i for i, e in enumerate(excluded) if e), None)
    assert all(e == [] for e in excluded[:4])  # no detection before round 2 x window + 1 = 5
    if first is not None:
        assert all(e == detected for e in excluded[first:])


def test_configs_fldetector_cannot_act_in_are_refused_before_work():
    with pytest.raises(ValueError, match="every agent must take part in every round; set participation = 1.0"):
        make_config({**BASE, "participation": 0.5})
    with pytest.raises(ValueError, match=r"fldetector_window = 4 with rounds = 7: .*round 9 at the earliest"):
        make_config({**BASE, "fldetector_window": 4})
    assert "fldetector_window" in make_config({"fldetector_window": 3}).inert_keys()
