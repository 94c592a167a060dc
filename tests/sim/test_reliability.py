"""A runner that never reports garbage: non-finite models stop the run, rejected agents do not
break RLR, resumes accept the keys that cannot change the numbers, seeds do not wrap."""

import json

import pytest
import torch

from robustlr.errors import ResumeError, TrainingError
from robustlr.sim.config import make_config
from robustlr.sim.federation import build_federation
from robustlr.sim.config import NEUTRAL_KEYS
from robustlr.sim.loop import Simulation, run_experiment

BASE = {"rounds": 3, "num_agents": 4, "corrupt_fraction": 0.25, "local_epochs": 1, "batch_size": 16,
        "rlr_threshold": 2, "seed": 3, "checkpoint_every": 1, "train_mode": "sequential", "threads": 1}


def cfg_of(**kw):
    return make_config({**BASE, **kw})


def test_a_model_that_becomes_non_finite_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tiny,
                                                                                           monkeypatch):
    # finite values can still overflow: eta 1000 (the largest the config takes) times the mean of a
    # 1e37 update and three honest ones (2.5e36) is inf in float32
    cfg = cfg_of(server_lr=1000.0, rlr_threshold=0)
    sim = Simulation(cfg, build_federation(cfg, tiny()), tmp_path)
    real = sim.engine.train_agent
    monkeypatch.setattr(sim.engine, "train_agent",
                        lambda g, idx, r, agent, sign=1.0: real(g, idx, r, agent, sign).fill_(1e37) if agent == 0
                        else real(g, idx, r, agent, sign))
    with pytest.raises(TrainingError, match="round 1: the global model became non-finite"):
        sim.run()
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "model.pt").exists()
    assert (tmp_path / "metrics.jsonl").read_text() == ""  # no garbage round recorded


def test_rounds_without_any_valid_update_stop_the_run(tmp_path, tiny, monkeypatch):
    cfg = cfg_of(rounds=5, max_rounds_without_updates=2, rlr_threshold=0)
    sim = Simulation(cfg, build_federation(cfg, tiny()), tmp_path)
    real = sim.engine.train_agent
    monkeypatch.setattr(sim.engine, "train_agent", lambda *a, **k: real(*a, **k).fill_(float("nan")))
    with pytest.raises(TrainingError, match=r"rejected \(non-finite, or over the norm screen\) in 2 consecutive rounds"):
        sim.run()
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["agents"], r["rejected"]) for r in recs] == [(1, 0, [0, 1, 2, 3])]


def test_rlr_threshold_scales_with_the_agents_left_after_rejection(tiny, monkeypatch):
    """theta 4 of 4 sampled agents, one agent rejected: theta becomes ceil(4 * 3 / 4) = 3, the run goes on
    (robustlr 0.1 stopped with 'threshold=4 is outside the range 0..3', and every resume failed the same way)."""
    cfg = cfg_of(rounds=2, rlr_threshold=4)
    sim = Simulation(cfg, build_federation(cfg, tiny()))
    real = sim.engine.train_agent

    def one_nan(g, idx, r, agent, sign=1.0):
        u = real(g, idx, r, agent, sign)
        if agent == 1:
            u[0] = float("nan")
        return u

    monkeypatch.setattr(sim.engine, "train_agent", one_nan)
    recs = sim.run().records
    assert [(r.agents, r.rejected, r.threshold) for r in recs] == [(3, [1], 3), (3, [1], 3)]
    full = Simulation(cfg, build_federation(cfg, tiny())).run().records
    assert [r.threshold for r in full] == [4, 4]  # a full round keeps theta exactly


@pytest.mark.parametrize("key, value", [("threads", 2), ("checkpoint_every", 2), ("name", "renamed"),
                                        ("max_rounds_without_updates", 5)])
def test_resume_ignores_keys_that_cannot_change_the_numbers(tmp_path, tiny, key, value):
    assert key in NEUTRAL_KEYS
    ds = tiny()
    full = run_experiment(cfg_of(rounds=3), tmp_path / "full", dataset=ds)
    cfg = cfg_of(rounds=3)
    sim = Simulation(cfg, build_federation(cfg, ds), tmp_path / "run")
    sim.records.append(sim.run_round(1))
    sim._checkpoint(1)
    sim.close()  # as a crashed run's process would: its folder's lock is released
    resumed = Simulation(cfg_of(rounds=3, **{key: value}), build_federation(cfg, ds), tmp_path / "run")
    assert resumed.start_round == 2
    assert torch.equal(resumed.run().global_params, full.global_params)
    assert json.loads((tmp_path / "run" / "config.json").read_text())[key] == value


def test_a_finished_run_can_be_extended_but_not_shortened(tmp_path, tiny):
    ds = tiny()
    run_experiment(cfg_of(rounds=2), tmp_path / "a", dataset=ds)
    longer = run_experiment(cfg_of(rounds=4), tmp_path / "a", dataset=ds)
    straight = run_experiment(cfg_of(rounds=4), tmp_path / "b", dataset=ds)
    assert torch.equal(longer.global_params, straight.global_params)
    assert [r.round for r in longer.records] == [1, 2, 3, 4]
    with pytest.raises(ResumeError, match=r"differs in \{'rounds': \(4, 3\)\}"):  # shortening is refused
        run_experiment(cfg_of(rounds=3), tmp_path / "a", dataset=ds)
    with pytest.raises(ResumeError, match=r"differs in \{'seed'"):
        run_experiment(cfg_of(rounds=4, seed=4), tmp_path / "a", dataset=ds)


def test_an_extended_run_switches_rlr_on_in_the_round_the_direct_run_does(tmp_path, tiny):
    """The last round of a run is evaluated whatever eval_every says; extending a finished run must
    not let that extra evaluation switch RLR on earlier than the run made in one go."""
    ds = tiny()
    sched = {"eval_every": 3, "rlr_from_val_acc": 0.01}  # any scheduled evaluation switches RLR on
    first = run_experiment(cfg_of(rounds=2, **sched), tmp_path / "a", dataset=ds)
    assert first.records[-1].evaluated and first.records[-1].val_acc >= 0.01  # round 2: the final evaluation
    longer = run_experiment(cfg_of(rounds=5, **sched), tmp_path / "a", dataset=ds)
    straight = run_experiment(cfg_of(rounds=5, **sched), tmp_path / "b", dataset=ds)
    assert [r.rlr_on for r in straight.records] == [False, False, False, True, True]  # after round 3's evaluation
    assert [r.rlr_on for r in longer.records] == [r.rlr_on for r in straight.records]
    assert longer.summary.rlr_switch_round == straight.summary.rlr_switch_round == 4
    assert torch.equal(longer.global_params, straight.global_params)


def test_seeds_are_refused_outside_the_range_the_streams_use():
    make_config({"seed": 2**32 - 1})
    for bad in (2**32, -1):
        with pytest.raises(ValueError, match="seed"):
            make_config({"seed": bad})


def test_accuracies_do_not_depend_on_threads_and_val_loss_only_in_the_last_digits(tiny):
    """Evaluation runs on ``threads`` threads: the logits differ in the last bits (1e-6), so
    predictions and accuracies are identical and val_loss agrees to about 1e-6 relative."""
    ds = tiny()
    one = run_experiment(cfg_of(rounds=2, threads=1), dataset=ds)
    two = run_experiment(cfg_of(rounds=2, threads=2), dataset=ds)
    assert torch.equal(one.global_params, two.global_params)
    for a, b in zip(one.evaluated, two.evaluated):
        assert (a.val_acc, a.base_acc, a.backdoor_acc) == (b.val_acc, b.base_acc, b.backdoor_acc)
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-5)


# -- failed writes and reruns of a finished run (issue 25) -------------------------------------

def _disk_full(monkeypatch, name: str, on_open: int, keep: int = 100):
    """robustlr.sim.checkpoint's ``on_open``-th opening of a file called ``name`` writes ``keep`` bytes,
    then fails as a full disk does (a real partial write: the file it leaves is cut)."""
    import builtins
    import errno
    import os
    from pathlib import Path

    from robustlr.sim import checkpoint

    opened = {"n": 0}

    class Full:
        def __init__(self, fh):
            self._fh = fh

        def write(self, data):
            self._fh.write(data[:keep] if isinstance(data, str) else bytes(data)[:keep])
            self._fh.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, attr):
            return getattr(self._fh, attr)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._fh.close()

    def fake_open(path, mode="r", *args, **kwargs):
        fh = builtins.open(path, mode, *args, **kwargs)
        if Path(path).name == name and ("w" in mode or "a" in mode):
            opened["n"] += 1
            if opened["n"] == on_open:
                return Full(fh)
        return fh

    monkeypatch.setattr(checkpoint, "open", fake_open, raising=False)


@pytest.mark.parametrize("name, on_open, failed, ckpt_round, rounds", [
    ("checkpoint.pt.tmp", 2, "checkpoint.pt", 1, [1, 2]),  # round 2's checkpoint; its record was appended
    ("model.pt.tmp", 1, "model.pt", 3, [1, 2, 3]),  # at the end, after the last checkpoint
    ("metrics.jsonl", 3, "metrics.jsonl", 2, [1, 2]),  # round 3's record, cut back
], ids=["checkpoint", "model (torch.save)", "metrics append"])
def test_a_write_cut_by_a_full_disk_is_a_clear_error_leaves_no_tmp_and_keeps_the_last_good_file(
        tmp_path, tiny, monkeypatch, name, on_open, failed, ckpt_round, rounds):
    """robustlr 0.3.0: torch.save's failed write was a RuntimeError traceback (not an OutputError) and
    left its .tmp; a cut append left a partial line in metrics.jsonl."""
    from robustlr.errors import OutputError
    from robustlr.sim import checkpoint

    ds, run = tiny(), tmp_path / "run"
    good = {}

    def keep_good(rec):  # each round's files once written whole
        good.update({f: (run / f).read_bytes() for f in ("checkpoint.pt", "metrics.jsonl")})

    _disk_full(monkeypatch, name, on_open)
    cfg = cfg_of(rounds=3)
    with pytest.raises(OutputError) as info:
        Simulation(cfg, build_federation(cfg, ds), run, on_round=keep_good).run()
    assert str(info.value) == (f"cannot write {run / failed}: No space left on device. The run is stopped; its last "
                               f"good checkpoint is kept in {run / 'checkpoint.pt'}. Free space on its disk (or raise "
                               f"the quota), then run the same command again to resume")
    assert not list(run.glob("*.tmp"))
    assert not (run / "summary.json").exists() and not (run / "model.pt").exists()
    assert checkpoint.load_checkpoint(run / "checkpoint.pt")["round"] == ckpt_round
    if failed == "checkpoint.pt":  # the last good version, byte for byte
        assert (run / "checkpoint.pt").read_bytes() == good["checkpoint.pt"]
    if failed == "metrics.jsonl":  # cut back to the records of rounds 1 and 2, no partial line
        assert (run / "metrics.jsonl").read_bytes() == good["metrics.jsonl"]
    assert [json.loads(line)["round"] for line in (run / "metrics.jsonl").read_text().splitlines()] == rounds
    monkeypatch.undo()
    full = run_experiment(cfg, tmp_path / "full", dataset=ds)
    res = run_experiment(cfg, run, dataset=ds)
    assert torch.equal(res.global_params, full.global_params)
    assert [json.loads(line)["round"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


FILES = ("config.json", "partition.json", "metrics.jsonl", "summary.json", "model.pt", "checkpoint.pt")


def _state(folder):
    import hashlib

    return {f: (hashlib.sha256((folder / f).read_bytes()).hexdigest(), (folder / f).stat().st_mtime_ns)
            for f in FILES}


def test_rerunning_a_finished_run_changes_no_file_and_returns_the_same_numbers(tmp_path, tiny):
    """robustlr 0.3.0 rewrote all five files (new mtimes; summary.json would also take a new commit)."""
    ds, cfg = tiny(), cfg_of(rounds=2)
    first = run_experiment(cfg, tmp_path, dataset=ds)
    before = _state(tmp_path)
    again = run_experiment(cfg, tmp_path, dataset=ds)
    assert _state(tmp_path) == before
    assert again.summary == first.summary
    assert again.records == first.records
    assert torch.equal(again.global_params, first.global_params)


def test_a_finished_run_whose_summary_was_lost_rewrites_only_model_and_summary(tmp_path, tiny):
    ds, cfg = tiny(), cfg_of(rounds=2)
    first = run_experiment(cfg, tmp_path, dataset=ds)
    (tmp_path / "summary.json").unlink()  # as if killed before it was written
    before = _state_without(tmp_path, "summary.json")
    again = run_experiment(cfg, tmp_path, dataset=ds)
    after = _state_without(tmp_path, "summary.json")
    kept = ("config.json", "partition.json", "metrics.jsonl", "checkpoint.pt")
    assert {f: after[f] for f in kept} == {f: before[f] for f in kept}
    assert after["model.pt"][0] == before["model.pt"][0]  # the same model, written again
    assert again.summary.model_dump(exclude={"seconds", "seconds_per_round"}) == \
        first.summary.model_dump(exclude={"seconds", "seconds_per_round"})


def _state_without(folder, missing):
    import hashlib

    return {f: (hashlib.sha256((folder / f).read_bytes()).hexdigest(), (folder / f).stat().st_mtime_ns)
            for f in FILES if f != missing}
