"""Code paths of the round loop on tiny generated data: determinism, resume, rejection."""

import json

import numpy as np
import pytest
import torch

from robustlr.sim.config import make_config
from robustlr.sim.federation import build_federation
from robustlr.errors import ResumeError
from robustlr.sim.loop import Simulation, run_experiment, sample_agents
from robustlr.sim.records import RecordError, RoundRecord, dumps, read_metrics, read_summary


BASE = {"dataset": "fashion-mnist", "rounds": 3, "num_agents": 4, "corrupt_fraction": 0.25, "poison_fraction": 0.5,
        "local_epochs": 1, "batch_size": 16, "rlr_threshold": 2, "eval_every": 1, "seed": 3, "checkpoint_every": 1,
        "train_mode": "sequential"}


def cfg_of(**kw):
    return make_config({**BASE, **kw})


def test_same_seed_same_numbers_and_seed_matters(tiny):
    ds = tiny()
    a = run_experiment(cfg_of(), dataset=ds)
    b = run_experiment(cfg_of(), dataset=ds)
    strip = lambda rs: [r.model_dump(exclude={"seconds", "seconds_training", "seconds_aggregation", "seconds_telemetry"}) for r in rs]
    assert strip(a.records) == strip(b.records)
    assert torch.equal(a.global_params, b.global_params)
    c = run_experiment(cfg_of(seed=4), dataset=ds)
    assert not torch.equal(a.global_params, c.global_params)


def test_agent_update_does_not_depend_on_training_order(tiny):
    ds = tiny()
    cfg = cfg_of()
    sim = Simulation(cfg, build_federation(cfg, ds))
    fed = sim.fed
    g = sim.global_params.clone()
    forward = [sim.engine.train_agent(g, fed.agent_indices[a], 1, a) for a in range(4)]
    backward = [sim.engine.train_agent(g, fed.agent_indices[a], 1, a) for a in reversed(range(4))][::-1]
    for u, v in zip(forward, backward):
        assert torch.equal(u, v)


def _crash_after(cfg, ds, folder, done: int, also_ran: int | None = None):
    """A run that checkpoints after each of rounds 1..done, then dies (optionally after
    running one more round whose record reached metrics.jsonl but not the checkpoint)."""
    sim = Simulation(cfg, build_federation(cfg, ds), folder)
    for r in range(1, done + 1):
        rec = sim.run_round(r)
        sim.records.append(rec)
        with open(folder / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(rec.to_json_dict()) + "\n")
        sim._checkpoint(r)
    if also_ran is not None:
        rec = sim.run_round(also_ran)
        with open(folder / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(rec.to_json_dict()) + "\n")
    sim.engine.close()


def _rounds_in(folder):
    return [json.loads(line)["round"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("extra", [{}, {"aggregator": "foolsgold", "rlr_threshold": 0},
                                   {"clip_norm": 0.5, "noise_sigma": 1e-2},
                                   # its window, last updates and scores: predictions and detection from round 3
                                   {"aggregator": "fldetector", "fldetector_window": 1},
                                   # the noise on the model sent in round 3 comes from the seeded stream again
                                   {"crfl": True, "crfl_sigma": 1e-3, "crfl_rho_intercept": 5.0}],
                         ids=["fedavg-rlr", "foolsgold", "rlr-clip-noise", "fldetector-rlr", "crfl-rlr"])
def test_resume_gives_the_numbers_of_an_uninterrupted_run(tmp_path, tiny, extra):
    ds = tiny()
    cfg = cfg_of(rounds=4, **extra)
    full = run_experiment(cfg, tmp_path / "full", dataset=ds)
    _crash_after(cfg, ds, tmp_path / "crash", done=2, also_ran=3)  # round 3 ran but died before its checkpoint
    resumed = Simulation(cfg, build_federation(cfg, ds), tmp_path / "crash")
    assert resumed.start_round == 3
    res = resumed.run()
    assert torch.equal(res.global_params, full.global_params)
    assert _rounds_in(tmp_path / "crash") == [1, 2, 3, 4]
    strip = lambda rs: [r.model_dump(exclude={"seconds", "seconds_training", "seconds_aggregation", "seconds_telemetry"}) for r in rs]
    assert strip(res.records) == strip(full.records)


def test_foolsgold_history_survives_the_checkpoint(tmp_path, tiny):
    ds = tiny()
    cfg = cfg_of(rounds=3, aggregator="foolsgold", rlr_threshold=0)
    _crash_after(cfg, ds, tmp_path, done=2)
    resumed = Simulation(cfg, build_federation(cfg, ds), tmp_path)
    assert sorted(resumed.server.rule.history) == [0, 1, 2, 3]
    fresh = Simulation(cfg, build_federation(cfg, ds))
    assert fresh.server.rule.history == {}


def test_restart_without_checkpoint_starts_over_without_duplicate_rounds(tmp_path, tiny):
    ds = tiny()
    cfg = cfg_of(rounds=2, checkpoint_every=0)
    first = run_experiment(cfg, tmp_path, dataset=ds)
    (tmp_path / "checkpoint.pt").unlink()  # as if the run had died before any checkpoint
    again = run_experiment(cfg, tmp_path, dataset=ds)
    assert _rounds_in(tmp_path) == [1, 2]
    assert torch.equal(first.global_params, again.global_params)


def test_old_checkpoint_format_is_refused_not_unpickled(tmp_path, tiny):
    ds = tiny()
    cfg = cfg_of(rounds=2)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(cfg.to_json())
    # robustlr 0.1 pickled the rule object itself into the checkpoint
    from robustlr.aggregation import FedAvg

    torch.save({"round": 1, "global_params": torch.zeros(3), "rule": FedAvg(), "metrics": [], "elapsed": 0.0},
               tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(ResumeError, match="format 1.*will not unpickle it"):
        Simulation(cfg, build_federation(cfg, ds), tmp_path / "run")


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
    assert summary["schema_version"] == 2
    assert summary["torch_version"] == torch.__version__ and summary["machine"]["cpu"]
    assert (tmp_path / "model.pt").exists()
    assert res.summary.federation["num_corrupt"] == 1
    assert read_summary(tmp_path / "summary.json") == res.summary


def test_every_round_has_a_record_and_only_evaluated_rounds_have_metrics(tmp_path, tiny):
    res = run_experiment(cfg_of(rounds=5, eval_every=2), tmp_path, dataset=tiny())
    recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in recs] == [1, 2, 3, 4, 5]
    assert [r["evaluated"] for r in recs] == [False, True, False, True, True]  # the last round always
    assert all(("val_acc" in r) == r["evaluated"] for r in recs)
    assert all("flipped_fraction" in r and "seconds_training" in r for r in recs)
    assert [r.round for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert [r.round for r in res.evaluated] == [2, 4, 5]


def test_non_finite_numbers_are_written_as_null_not_nan(tmp_path):
    rec = RoundRecord(round=1, agents=1, corrupt_in_round=0, evaluated=True, val_acc=0.1,
                      val_loss=float("nan"), base_acc=0.0, backdoor_acc=float("inf"))
    line = dumps(rec.to_json_dict())
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line)["val_loss"] is None and json.loads(line)["backdoor_acc"] is None


def test_unknown_schema_version_is_refused(tmp_path, tiny):
    run_experiment(cfg_of(rounds=1), tmp_path, dataset=tiny())
    data = json.loads((tmp_path / "summary.json").read_text())
    for version in (1, 99):
        (tmp_path / "summary.json").write_text(json.dumps({**data, "schema_version": version}))
        with pytest.raises(RecordError, match=f"schema version {version}; this robustlr reads versions 2"):
            read_summary(tmp_path / "summary.json")


def test_malformed_update_is_rejected_and_logged(caplog, tiny):
    ds = tiny()
    cfg = cfg_of(rounds=1, rlr_threshold=0)
    sim = Simulation(cfg, build_federation(cfg, ds))
    real = sim.engine.train_agent

    def poisoned_train(g, idx, r, agent, loss_sign=1.0, grad_mask=None):
        u = real(g, idx, r, agent, loss_sign, grad_mask)
        if agent == 2:
            u[5] = float("nan")
        return u

    sim.engine.train_agent = poisoned_train
    before = sim.global_params.clone()
    with caplog.at_level("WARNING"):
        rec = sim.run_round(1)
    assert rec.rejected == [2] and rec.agents == 3
    assert rec.rejections == [{"agent": 2, "reason": "non-finite", "detail": "holds NaN or inf"}]
    assert "rejected the updates of agent 2 (non-finite: holds NaN or inf)" in caplog.text
    assert torch.isfinite(sim.global_params).all()
    assert not torch.equal(before, sim.global_params)


def test_agent_sampling_is_seeded_by_round():
    cfg = cfg_of(participation=0.5, num_agents=10, rlr_threshold=0)
    a = sample_agents(cfg, 10, 7)
    assert len(a) == 5 and len(set(a)) == 5
    assert np.array_equal(a, sample_agents(cfg, 10, 7))
    assert any(not np.array_equal(a, sample_agents(cfg, 10, r)) for r in range(8, 12))
