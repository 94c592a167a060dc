"""A run never reports garbage: a finite but huge model whose evaluation overflows, and a run whose
last rounds aggregated nothing, stop with a clear error and keep the last good checkpoint; a
collapse to chance accuracy with a finite loss is a result, flagged in the summary."""

import json

import pytest
import torch

from robustlr.errors import TrainingError
from robustlr.sim.config import make_config
from robustlr.sim.federation import build_federation
from robustlr.sim.loop import Simulation

BASE = {"rounds": 3, "num_agents": 4, "corrupt_fraction": 0.25, "local_epochs": 1, "batch_size": 16,
        "rlr_threshold": 0, "seed": 3, "checkpoint_every": 1, "train_mode": "sequential", "threads": 1,
        "eval_every": 1}


def _sim(tmp_path, tiny, monkeypatch, poison, **kw):
    """A Simulation whose agent 0 sends ``poison(update, round)`` instead of its update."""
    cfg = make_config({**BASE, **kw})
    sim = Simulation(cfg, build_federation(cfg, tiny()), tmp_path)
    real = sim.engine.train_agent

    def train(g, idx, r, agent, sign=1.0):
        u = real(g, idx, r, agent, sign)
        return poison(u, r) if agent == 0 else u

    monkeypatch.setattr(sim.engine, "train_agent", train)
    return sim


def test_one_finite_update_near_the_float_range_stops_the_run_not_reports_chance(tmp_path, tiny, monkeypatch):
    """robustlr 0.2 ended such a run with exit 0 and val_acc 0.1, val_loss null."""
    sim = _sim(tmp_path, tiny, monkeypatch, lambda u, r: u.fill_(1e38) if r == 2 else u)
    with pytest.raises(TrainingError, match=r"round 2: the validation loss is (nan|inf).*would be garbage") as info:
        sim.run()
    assert "largest |parameter| 2.5e+37" in str(info.value) or "e+37" in str(info.value)
    assert "last good checkpoint is kept" in str(info.value)
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in recs] == [1] and not (tmp_path / "summary.json").exists()


def test_a_run_whose_last_round_aggregated_nothing_is_not_a_success(tmp_path, tiny, monkeypatch):
    """Every agent's update of the last round non-finite (fewer rounds than max_rounds_without_updates):
    robustlr 0.2 finished with a summary reporting round 2's model as round 3's."""
    cfg = {"max_rounds_without_updates": 3}
    sim = _sim(tmp_path, tiny, monkeypatch, lambda u, r: u, **cfg)
    real = sim.engine.train_agent
    monkeypatch.setattr(sim.engine, "train_agent",
                        lambda g, idx, r, agent, sign=1.0: real(g, idx, r, agent, sign).fill_(float("nan")) if r == 3
                        else real(g, idx, r, agent, sign))
    with pytest.raises(TrainingError, match=r"the last 1 round\(s\) aggregated no update .* the final model is "
                                            r"round 2's and would be reported as round 3's"):
        sim.run()
    assert not (tmp_path / "summary.json").exists()
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["round"] == 2


def test_a_collapse_to_chance_is_a_result_flagged_in_the_summary():
    """Validation at or below 1.5 x chance is flagged (a result under attack, not a failure); the
    run summary reads the last evaluated round; 62 FEMNIST classes put chance lower."""
    from robustlr.sim.records import RoundRecord
    from robustlr.sim.server import run_summary

    def summary(val_acc, **cfg):
        recs = [RoundRecord(round=1, agents=4, corrupt_in_round=1, evaluated=val_acc is not None, val_acc=val_acc),
                RoundRecord(round=2, agents=4, corrupt_in_round=1)]
        return run_summary(make_config({**BASE, **cfg}), recs, seconds=1.0, engine="sequential", federation={})

    assert [summary(v).collapsed for v in (0.1, 0.15, 0.1501, 0.86)] == [True, True, False, False]
    assert summary(None).collapsed is None
    femnist = {"dataset": "femnist-leaf", "partition": "natural", "num_agents": None, "corrupt_fraction": 0.0,
               "digits_only": False}
    assert [summary(v, **femnist).collapsed for v in (0.024, 0.03)] == [True, False]  # 1.5 / 62 = 0.0242


@pytest.mark.parametrize("val_acc, flag", [(0.12, True), (0.5, False)])
def test_the_summary_file_holds_the_collapse_flag(tmp_path, tiny, monkeypatch, val_acc, flag):
    import robustlr.sim.loop as loop

    real = loop.evaluate

    def evaluated_as(*a, **k):  # the run's own evaluation, its validation accuracy replaced
        return {**real(*a, **k), "val_acc": val_acc}

    monkeypatch.setattr(loop, "evaluate", evaluated_as)
    res = _sim(tmp_path, tiny, monkeypatch, lambda u, r: u, rounds=1).run()
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert (saved["val_acc"], saved["collapsed"]) == (res.summary.val_acc, res.summary.collapsed) == (val_acc, flag)
