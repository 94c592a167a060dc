"""Code paths of the round loop on tiny generated data: determinism, resume, rejection."""

import json

import numpy as np
import pytest
import torch

from robustlr.config import make_config
from robustlr.federation import build_federation
from robustlr.simulation import ResumeError, Simulation, run_experiment, sample_agents


BASE = {"dataset": "fashion-mnist", "rounds": 3, "num_agents": 4, "corrupt_fraction": 0.25, "poison_fraction": 0.5,
        "local_epochs": 1, "batch_size": 16, "rlr_threshold": 2, "eval_every": 1, "seed": 3, "checkpoint_every": 1,
        "train_mode": "sequential"}


def cfg_of(**kw):
    return make_config({**BASE, **kw})


def test_same_seed_same_numbers_and_seed_matters(tiny):
    ds = tiny()
    a = run_experiment(cfg_of(), dataset=ds)
    b = run_experiment(cfg_of(), dataset=ds)
    strip = lambda ms: [{k: v for k, v in m.items() if not k.startswith("seconds")} for m in ms]
    assert strip(a.metrics) == strip(b.metrics)
    assert torch.equal(a.global_params, b.global_params)
    c = run_experiment(cfg_of(seed=4), dataset=ds)
    assert not torch.equal(a.global_params, c.global_params)


def test_agent_update_does_not_depend_on_training_order(tiny):
    ds = tiny()
    cfg = cfg_of()
    sim = Simulation(cfg, build_federation(cfg, ds))
    fed = sim.fed
    g = sim.global_params.clone()
    forward = [sim.trainer.train(g, fed.agent_indices[a], 1, a) for a in range(4)]
    backward = [sim.trainer.train(g, fed.agent_indices[a], 1, a) for a in reversed(range(4))][::-1]
    for u, v in zip(forward, backward):
        assert torch.equal(u, v)


def test_resume_gives_the_numbers_of_an_uninterrupted_run(tmp_path, tiny):
    ds = tiny()
    full = run_experiment(cfg_of(rounds=4), tmp_path / "full", dataset=ds)
    # a run that stops after round 2 (simulated crash), then resumes in the same folder
    cfg = cfg_of(rounds=4)
    sim = Simulation(cfg, build_federation(cfg, ds), tmp_path / "crash")
    for r in (1, 2):
        rec = sim.run_round(r)
        sim.metrics.append(rec)
        with open(tmp_path / "crash" / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        sim._checkpoint(r)
    rec3 = sim.run_round(3)  # round 3 ran but crashed before its checkpoint
    with open(tmp_path / "crash" / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(rec3) + "\n")
    resumed = Simulation(cfg, build_federation(cfg, ds), tmp_path / "crash")
    assert resumed.start_round == 3
    res = resumed.run()
    assert torch.equal(res.global_params, full.global_params)
    lines = (tmp_path / "crash" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(l)["round"] for l in lines] == [1, 2, 3, 4]
    assert [m["backdoor_acc"] for m in res.metrics] == [m["backdoor_acc"] for m in full.metrics]


def test_folder_of_another_config_is_refused(tmp_path, tiny):
    ds = tiny()
    run_experiment(cfg_of(rounds=1), tmp_path / "run", dataset=ds)
    with pytest.raises(ResumeError, match="different config"):
        run_experiment(cfg_of(rounds=1, seed=9), tmp_path / "run", dataset=ds)


def test_outputs_written(tmp_path, tiny):
    res = run_experiment(cfg_of(rounds=2), tmp_path, dataset=tiny())
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 3
    recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in recs] == [1, 2]
    for r in recs:
        for k in ("val_acc", "val_loss", "base_acc", "backdoor_acc"):
            assert 0 <= r[k] <= 1 or k == "val_loss"
        assert 0 <= r["flipped_fraction"] <= 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["val_acc"] == recs[-1]["val_acc"]
    assert (tmp_path / "model.pt").exists()
    assert res.summary["federation"]["num_corrupt"] == 1


def test_malformed_update_is_rejected_and_logged(caplog, tiny):
    ds = tiny()
    cfg = cfg_of(rounds=1, rlr_threshold=0)
    sim = Simulation(cfg, build_federation(cfg, ds))
    real = sim.trainer.train

    def poisoned_train(g, idx, r, agent, loss_sign=1.0):
        u = real(g, idx, r, agent, loss_sign)
        if agent == 2:
            u[5] = float("nan")
        return u

    sim.trainer.train = poisoned_train
    before = sim.global_params.clone()
    with caplog.at_level("WARNING"):
        rec = sim.run_round(1)
    assert rec["rejected"] == [2] and rec["agents"] == 3
    assert "rejected non-finite updates of agents [2]" in caplog.text
    assert torch.isfinite(sim.global_params).all()
    assert not torch.equal(before, sim.global_params)


def test_agent_sampling_is_seeded_by_round():
    cfg = cfg_of(participation=0.5, num_agents=10, rlr_threshold=0)
    a = sample_agents(cfg, 10, 7)
    assert len(a) == 5 and len(set(a)) == 5
    assert np.array_equal(a, sample_agents(cfg, 10, 7))
    assert any(not np.array_equal(a, sample_agents(cfg, 10, r)) for r in range(8, 12))
