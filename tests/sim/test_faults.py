"""Fault injection: kill -9 and SIGTERM of real runs, failed writes (disk full, read-only folder)
at each point of a round; after each, the run resumes to a bit-identical final model or refuses
with a clear message, no file is half-written, and no process is left behind.

Budget: about 60 s on 2 cores (each subprocess run is a few seconds on a 600-image subset).
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustlr.errors import OutputError
from robustlr.sim import checkpoint
from robustlr.sim.config import make_config
from robustlr.sim.federation import build_federation
from robustlr.sim.lifecycle import child_pids, is_alive
from robustlr.sim.loop import Simulation, run_experiment

RUN = ["run", "demo-iid", "--set", "rounds=8", "--set", "train_limit=600", "--set", "threads=2",
       "--set", "train_mode=processes", "--set", "checkpoint_every=1", "--set", "eval_every=4",
       "--set", "precision=fp32"]


def _cli(args, fmnist_dir, **kw):
    code = "import sys; from robustlr.cli import main; sys.argv = ['robustlr'] + sys.argv[1:]; main()"
    env = {**os.environ, "ROBUSTLR_DATA_DIR": str(fmnist_dir), "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _wait_gone(pids, timeout=10.0) -> list[int]:
    t0 = time.time()
    while time.time() - t0 < timeout and any(is_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if is_alive(p)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fmnist_dir):
    """The uninterrupted run's final model."""
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = _cli([*RUN, "--out", str(out)], fmnist_dir)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    return torch.load(out / "model.pt", weights_only=True)


def _same_model(out: Path, reference) -> bool:
    got = torch.load(out / "model.pt", weights_only=True)
    return all(torch.equal(got[k], reference[k]) for k in reference)


def _no_partial_files(out: Path) -> None:
    # a kill may leave a *.tmp temporary beside a file being replaced; it is never read
    json.loads((out / "config.json").read_text())
    if (out / "partition.json").exists():
        json.loads((out / "partition.json").read_text())
    if not (out / "metrics.jsonl").exists():  # a write failed before the first record
        return
    lines = (out / "metrics.jsonl").read_text().splitlines()
    for line in lines[:-1]:
        json.loads(line)  # only the last line may be cut by a kill; a resume rewrites it


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_killing_a_run_leaves_no_worker_and_resume_is_bit_identical(tmp_path, fmnist_dir, reference, sig,
                                                                    wait_for_round):
    out = tmp_path / "run"
    proc = _cli([*RUN, "--out", str(out)], fmnist_dir)
    wait_for_round(out, 3, proc)  # workers exist from round 1 on; now mid-way through a round
    workers = child_pids(proc.pid)
    assert len(workers) >= 2, "the processes engine should have started its workers"
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM, stderr
        assert "terminated by SIGTERM" in " ".join(stderr.split()), stderr
        assert "Traceback" not in stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    left = _wait_gone(workers)
    for pid in left:  # do not leak them into the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert left == [], "worker processes outlived their run"
    _no_partial_files(out)
    again = _cli([*RUN, "--out", str(out)], fmnist_dir)
    _, stderr = again.communicate(timeout=300)
    assert again.returncode == 0, stderr
    assert _same_model(out, reference)
    rounds = [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds == list(range(1, 9))


# -- failed writes, injected in-process at each point of a round --------------------------------

BASE = {"rounds": 4, "num_agents": 4, "corrupt_fraction": 0.25, "local_epochs": 1, "batch_size": 16,
        "rlr_threshold": 2, "seed": 3, "checkpoint_every": 1, "train_mode": "sequential", "threads": 1}


def _failing(target, fail_on_call: int, err: int):
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            raise OSError(err, os.strerror(err))
        return target(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("what, call", [
    ("torch.save", 2),             # the checkpoint after round 2, while it is written
    ("append_line", 3),            # the record of round 3
    ("atomic_write_text", 2),      # partition.json at the start (after config.json)
    ("atomic_write_text", 4),      # summary.json at the end (after config.json, partition.json and the metrics rewrite)
], ids=["checkpoint-write", "metrics-append", "partition-write", "summary-write"])
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS], ids=["disk-full", "read-only"])
def test_a_failed_write_stops_with_a_clear_error_and_resume_is_bit_identical(tmp_path, tiny, monkeypatch,
                                                                            what, call, err):
    ds = tiny()
    cfg = make_config(BASE)
    full = run_experiment(cfg, tmp_path / "full", dataset=ds)
    module = torch if what == "torch.save" else checkpoint
    name = "save" if what == "torch.save" else what
    monkeypatch.setattr(module, name, _failing(getattr(module, name), call, err))
    with pytest.raises(OutputError, match=os.strerror(err)) as info:
        Simulation(cfg, build_federation(cfg, ds), tmp_path / "run").run()
    assert "run the same command again to resume" in str(info.value)
    monkeypatch.undo()
    # the files that exist are whole: the checkpoint loads, every record line parses
    if (tmp_path / "run" / checkpoint.NAME).exists():
        checkpoint.load_checkpoint(tmp_path / "run" / checkpoint.NAME)
    _no_partial_files(tmp_path / "run")
    res = run_experiment(cfg, tmp_path / "run", dataset=ds)
    assert torch.equal(res.global_params, full.global_params)
    assert [r.round for r in res.records] == [1, 2, 3, 4]
