"""A defended cell is evidence only where the same attack took in its undefended twin: the twin's
config (hand-checked keys) and the report's note on hand-made store rows."""

import json

from robustlr.reports.report import TOOK, twin_index, twin_note
from robustlr.sim.config import config_hash, make_config


def _row(cfg, backdoor, status="done"):
    return {"config": json.dumps(cfg.model_dump(mode="json")), "config_hash": config_hash(cfg), "seed": cfg.seed,
            "backdoor_acc": backdoor, "status": status}


def test_the_undefended_twin_resets_the_defense_and_keeps_the_attack():
    cfg = make_config({"aggregator": "comed", "rlr_threshold": 4, "clip_norm": 2.0, "noise_sigma": 1e-3,
                       "trojan": "square", "boost_factor": 5.0, "seed": 2})
    twin = cfg.undefended()
    assert (twin.aggregator, twin.rlr_threshold, twin.clip_norm, twin.noise_sigma) == ("fedavg", 0, 0.0, 0.0)
    assert (twin.trojan, twin.boost_factor, twin.seed, twin.corrupt_fraction) == ("square", 5.0, 2, cfg.corrupt_fraction)
    assert make_config({"corrupt_fraction": 0.0, "rlr_threshold": 4}).undefended() is None  # no attack
    assert make_config({"trojan": "square"}).undefended() is None  # no defense
    assert make_config({"rlr_from_val_acc": 0.9}).undefended() is None  # a defense key that cannot act


def test_the_note_says_where_the_attack_took_where_it_did_not_and_where_no_twin_ran():
    defended = [make_config({"rlr_threshold": 4, "seed": s}) for s in (0, 1, 2)]
    twins = [make_config({"seed": s}) for s in (0, 1)]
    rows = [_row(twins[0], 0.95), _row(twins[1], TOOK - 0.1), _row(make_config({"seed": 2}), 0.99, status="running")]
    index = twin_index(rows)
    done = [_row(c, 0.05) for c in defended]
    note = twin_note(done, index)
    assert "NO EVIDENCE in 1 of 3 seeds" in note and "seed 1: 40.0 %" in note
    assert "no undefended twin run for seed 2" in note  # a running twin is not a finished one
    assert twin_note(done[:1], index) == "attack took in the undefended twin (1 of 1 seeds)"
    assert twin_note([_row(twins[0], 0.95)], index) == ""  # an undefended row needs no twin


def test_a_twin_trained_on_another_device_counts():
    rlr_on_gpu = make_config({"rlr_threshold": 4, "seed": 1, "device": "cuda"})
    fedavg_on_cpu = make_config({"seed": 1})
    index = twin_index([_row(fedavg_on_cpu, 0.9)])
    assert twin_note([_row(rlr_on_gpu, 0.05)], index) == "attack took in the undefended twin (1 of 1 seeds)"
    other_seed = twin_index([_row(make_config({"seed": 2}), 0.9)])
    assert "no undefended twin run for seed 1" in twin_note([_row(rlr_on_gpu, 0.05)], other_seed)
