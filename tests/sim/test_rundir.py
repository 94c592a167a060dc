"""The run folder's lock: one run writes a folder at a time (a second, in another process or in
this one, is refused before any work with the holder's pid), the lock goes with its holder however
it ends (a run's end, an exception, SIGTERM, kill -9), and a failed write of a real file size
limit is a clear error that leaves no temporary file.

The tests that start processes run tiny generated data (tests/conftest.py), a few seconds each.
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from robustlr.cli import app
from robustlr.errors import OutputError, ResumeError
from robustlr.sim import checkpoint
from robustlr.sim.config import make_config
from robustlr.sim.federation import build_federation
from robustlr.sim.lifecycle import Terminated
from robustlr.sim.loop import Simulation, run_experiment
from robustlr.sim.rundir import LOCK_NAME, lock_run_dir

BASE = {"rounds": 3, "num_agents": 4, "corrupt_fraction": 0.25, "local_epochs": 1, "batch_size": 16,
        "rlr_threshold": 2, "seed": 3, "checkpoint_every": 1, "train_mode": "sequential", "threads": 1}
TESTS = Path(__file__).resolve().parents[1]


def cfg_of(**kw):
    return make_config({**BASE, **kw})


def in_use(folder: Path, pid: int) -> str:
    return (f"the run folder {folder} is in use by another robustlr run (pid {pid} on {socket.gethostname()}); "
            f"wait for it to end or stop it, or choose another --out")


# -- in one process ---------------------------------------------------------------------------

def test_a_held_folder_is_refused_before_any_work_and_free_once_released(tmp_path, tiny, monkeypatch):
    ds, cfg, out = tiny(), cfg_of(), tmp_path / "run"
    out.mkdir()
    lock = lock_run_dir(out)
    assert json.loads((out / LOCK_NAME).read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
    with pytest.raises(OutputError) as info:
        Simulation(cfg, build_federation(cfg, ds), out)
    assert str(info.value) == in_use(out, os.getpid())

    def no_data(*a, **k):
        raise AssertionError("the data was loaded before the folder was checked")

    monkeypatch.setattr("robustlr.sim.federation.load_dataset", no_data)
    with pytest.raises(OutputError, match="is in use by another robustlr run"):
        run_experiment(cfg, out)  # refused before the data loads
    res = CliRunner().invoke(app, ["run", "demo-iid", "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert in_use(out, os.getpid()) in " ".join(res.output.split()), res.output
    assert os.listdir(out) == [LOCK_NAME]  # nothing was written
    lock.release()
    assert (out / LOCK_NAME).read_text() == ""  # no stale pid left behind
    monkeypatch.undo()
    assert [r.round for r in run_experiment(cfg, out, dataset=ds).records] == [1, 2, 3]


def test_a_second_simulation_on_a_folder_in_use_is_refused(tmp_path, tiny):
    ds, cfg, out = tiny(), cfg_of(), tmp_path / "run"
    first = Simulation(cfg, build_federation(cfg, ds), out)
    with pytest.raises(OutputError) as info:
        Simulation(cfg, build_federation(cfg, ds), out)
    assert str(info.value) == in_use(out, os.getpid())
    first.run()  # its end releases the lock
    again = Simulation(cfg, build_federation(cfg, ds), out)
    assert again.start_round == 4
    again.close()


def test_the_flower_engine_is_refused_a_held_folder_and_holds_the_lock_while_it_runs(tmp_path, monkeypatch):
    pytest.importorskip("flwr")
    out = tmp_path / "run"
    out.mkdir()
    seen = []

    def fake_run_on_flower(cfg, folder, data_dir):
        with pytest.raises(OutputError) as info:  # a second writer, while the Flower run writes the folder
            lock_run_dir(folder)
        seen.append(str(info.value))
        raise RuntimeError("stop here")

    monkeypatch.setattr("robustlr.integrations.flower.simulation.run_on_flower", fake_run_on_flower)
    lock = lock_run_dir(out)
    res = CliRunner().invoke(app, ["run", "demo-iid", "--engine", "flower", "--out", str(out)])
    assert res.exit_code == 2 and in_use(out, os.getpid()) in " ".join(res.output.split()), res.output
    assert seen == []  # refused before Flower started
    lock.release()
    res = CliRunner().invoke(app, ["run", "demo-iid", "--engine", "flower", "--out", str(out)])
    assert seen == [in_use(out, os.getpid())]
    assert isinstance(res.exception, RuntimeError)
    lock_run_dir(out).release()  # released when the run ended, even by an exception


def test_the_lock_is_released_on_an_exception_and_on_sigterm(tmp_path, tiny):
    ds, cfg, out = tiny(), cfg_of(), tmp_path / "run"

    def stop(rec):  # what sigterm_raises makes of SIGTERM in the main thread
        if rec.round == 2:
            raise Terminated("terminated by SIGTERM")

    with pytest.raises(Terminated):
        Simulation(cfg, build_federation(cfg, ds), out, on_round=stop).run()
    lock_run_dir(out).release()  # free
    # a folder refused while the run is set up (another config) is released too
    with pytest.raises(ResumeError, match="different config"):
        Simulation(cfg_of(seed=4), build_federation(cfg, ds), out)
    lock_run_dir(out).release()
    resumed = Simulation(cfg, build_federation(cfg, ds), out)
    assert resumed.start_round == 3
    assert [r.round for r in resumed.run().records] == [1, 2, 3]


def test_a_lock_file_without_a_holder_does_not_block(tmp_path, tiny):
    """The file names a pid, but only a held flock blocks: a killed run's file stays behind."""
    ds, cfg, out = tiny(), cfg_of(rounds=1), tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 999999999, "host": socket.gethostname()}) + "\n")
    assert [r.round for r in run_experiment(cfg, out, dataset=ds).records] == [1]


def test_a_lock_file_that_cannot_be_created_is_one_clear_line(tmp_path, tiny):
    out = tmp_path / "run"
    (out / LOCK_NAME).mkdir(parents=True)
    cfg = cfg_of()
    with pytest.raises(OutputError) as info:
        Simulation(cfg, build_federation(cfg, tiny()), out)
    assert str(info.value) == (f"cannot write the run folder {out}: cannot create its lock file {out / LOCK_NAME}: "
                               f"Is a directory; remove that folder or choose another --out")


# -- in several processes (test_processes_*: the multiprocess tier, tests/conftest.py) -------------

WRITER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from conftest import tiny_dataset
from robustlr.errors import RobustlrError
from robustlr.sim.config import make_config
from robustlr.sim.federation import build_federation
from robustlr.sim.loop import Simulation
cfg = make_config({**BASE, "rounds": int(sys.argv[3])})
ds = tiny_dataset()
try:
    Simulation(cfg, build_federation(cfg, ds), sys.argv[2], on_round=lambda rec: time.sleep(float(sys.argv[4]))).run()
except RobustlrError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
""".replace("**BASE", "**" + repr(BASE))


def _writer(out: Path, rounds: int, sleep: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(TESTS), str(out), str(rounds), str(sleep)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rounds_in(out: Path) -> list[int]:
    return [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_processes_two_on_one_folder_the_second_is_refused_with_the_holders_pid(tmp_path, wait_for_round):
    """robustlr 0.3.0: both exited 0 and metrics.jsonl held every round twice."""
    out = tmp_path / "run"
    first = _writer(out, 5, 0.5)
    try:
        wait_for_round(out, 1, first)
        second = _writer(out, 5, 0.0)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert err.strip() == f"error: {in_use(out, first.pid)}"
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.kill()
    assert _rounds_in(out) == [1, 2, 3, 4, 5]


def test_processes_the_lock_of_a_killed_run_does_not_block_its_resume(tmp_path, wait_for_round):
    out = tmp_path / "run"
    first = _writer(out, 3, 60.0)  # sleeps after round 1: killed there
    try:
        wait_for_round(out, 1, first)
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == first.pid
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == first.pid  # the file stays; the flock went
    again = _writer(out, 3, 0.0)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert _rounds_in(out) == [1, 2, 3]


FSIZE = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from conftest import tiny_dataset
from robustlr.errors import OutputError
from robustlr.sim.config import make_config
from robustlr.sim.federation import build_federation
from robustlr.sim.loop import Simulation
cfg = make_config({**BASE, "rounds": 3})
out = Path(sys.argv[2])

def limit(rec):  # after round 1's checkpoint: round 2's (one record longer) no longer fits
    if rec.round == 1:
        size = (out / "checkpoint.pt").stat().st_size
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

try:
    Simulation(cfg, build_federation(cfg, tiny_dataset()), out, on_round=limit).run()
except OutputError as exc:
    print(exc)
    sys.exit(3)
""".replace("**BASE", "**" + repr(BASE))


def test_processes_a_real_file_size_limit_is_a_clear_error_and_leaves_no_temporary_file(tmp_path, tiny):
    """robustlr 0.3.0: a RuntimeError traceback from torch.save's zip writer, and a checkpoint.pt.tmp left."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", FSIZE, str(TESTS), str(out)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 3, proc.stderr
    ckpt = out / checkpoint.NAME
    assert proc.stdout.strip() == (
        f"cannot write {ckpt}: File too large. The run is stopped; its last good checkpoint is kept in {ckpt}. "
        f"Raise the file size limit (ulimit -f) or write to another filesystem, then run the same command again "
        f"to resume")
    assert sorted(os.listdir(out)) == [LOCK_NAME, "checkpoint.pt", "config.json", "metrics.jsonl", "partition.json"]
    assert checkpoint.load_checkpoint(ckpt)["round"] == 1
    assert _rounds_in(out) == [1, 2]  # round 2's record was appended before its checkpoint failed
    ds = tiny()
    res = run_experiment(cfg_of(), out, dataset=ds)
    full = run_experiment(cfg_of(), tmp_path / "full", dataset=ds)
    assert torch.equal(res.global_params, full.global_params)
    assert _rounds_in(out) == [1, 2, 3]
