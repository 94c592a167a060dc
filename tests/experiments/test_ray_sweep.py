"""``robustlr sweep --backend ray`` on a real Ray cluster of two nodes on 127.0.0.1 (``ray start
--head`` and a second ``ray start`` joined to it, one CPU each), started and stopped here.

Determinism: the tiny suite swept locally and on the cluster gives bitwise the same models and the
same store rows. Faults: a run whose Ray worker is killed mid-run is started again from the last
checkpoint the driver has and ends on the uninterrupted numbers; Ctrl-C on the driver leaves no
worker and no run behind. Budget: about 2.5 min on 2 cores (the cluster's start ~15 s, a local
sweep of one run, Ray sweeps of one to four tiny runs; the tiny suite's local sweep is shared with
test_sweep.py)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("ray", reason="the ray extra: pip install 'robustlr[ray]'")

from robustlr.errors import ConfigError, OutputError  # noqa: E402
from robustlr.experiments import store  # noqa: E402
from robustlr.experiments.ray_backend import RayBackend  # noqa: E402
from robustlr.experiments.suite import load_suite  # noqa: E402
from robustlr.experiments.sweep import sweep  # noqa: E402
from robustlr.sim.lifecycle import is_alive  # noqa: E402


def _long(tiny: str) -> str:
    """One run of the tiny suite, long enough to be killed in the middle."""
    return (tiny.replace('name = "tiny"', 'name = "long"').replace("rounds = 3", "rounds = 5")
            .replace('[[row]]\nlabel = "fedavg"\nrlr_threshold = 0\n\n', "").replace("seed = [0, 1]", "seed = [0]"))


STORE_KEYS = ("config_hash", "suite", "label", "seed", "status", "config", "val_acc", "val_loss", "base_acc",
              "backdoor_acc", "rounds", "engine", "path", "data_fingerprint")
ATTEMPT = re.compile(r"attempt (\d+): ray worker pid (\d+) on \S+ \(node (\w+)\), run pid (\d+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from ray.scripts.scripts import main; "
                           "sys.argv = ['ray'] + sys.argv[1:]; main()", *args],
                          capture_output=True, text=True, timeout=180, env=env)


@pytest.fixture(scope="module")
def cluster():
    """The address of a two-node Ray cluster on 127.0.0.1 (one CPU per node)."""
    port = _free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    head = _ray_cli("start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
                    "--include-dashboard=false", "--disable-usage-stats", env=env)
    assert head.returncode == 0, head.stdout + head.stderr
    try:
        worker = _ray_cli("start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                          "--disable-usage-stats", env=env)
        assert worker.returncode == 0, worker.stdout + worker.stderr
        yield f"127.0.0.1:{port}"
    finally:
        _ray_cli("stop", "--force", env=env)


@pytest.fixture(scope="module")
def suites(tmp_path_factory, tiny_suite_text):
    d = tmp_path_factory.mktemp("suites")
    (d / "tiny.toml").write_text(tiny_suite_text)
    (d / "long.toml").write_text(_long(tiny_suite_text))
    # one run that is sure to be mid-way when stopped (it is never run to its end)
    (d / "endless.toml").write_text(_long(tiny_suite_text).replace('name = "long"', 'name = "endless"')
                                    .replace("rounds = 5", "rounds = 200"))
    return d


@pytest.fixture(scope="module")
def local(suites, tmp_path_factory, fmnist_dir, tiny_local_sweep):
    """The long suite swept locally; with the tiny suite's local sweep (conftest), the reference numbers."""
    out = tmp_path_factory.mktemp("local")
    state = sweep(load_suite(suites / "long.toml"), out, "lite", jobs=2, data_dir=str(fmnist_dir))
    assert (state.done, state.failed) == (1, [])
    return {"tiny": tiny_local_sweep, "long": out}


def _models(results: Path, suite: str) -> dict[str, dict[str, torch.Tensor]]:
    return {p.parent.name: torch.load(p, weights_only=True) for p in sorted((results / suite).glob("*/model.pt"))}


def _same_models(a: Path, b: Path, suite: str) -> None:
    ma, mb = _models(a, suite), _models(b, suite)
    assert sorted(ma) == sorted(mb) and ma
    for name in ma:
        assert all(torch.equal(ma[name][k], mb[name][k]) for k in ma[name]), name


def _rows(results: Path) -> dict[str, tuple]:
    return {r["name"]: tuple(r[k] for k in STORE_KEYS) for r in store.query(results)}


def _attempts(folder: Path) -> list[tuple[int, int, str, int]]:
    try:
        text = (folder / "sweep.log").read_text()
    except FileNotFoundError:
        return []
    return [(int(a), int(w), node, int(r)) for a, w, node, r in ATTEMPT.findall(text)]


def test_a_sweep_on_a_ray_cluster_equals_the_local_sweep(cluster, suites, local, tmp_path, fmnist_dir):
    out = tmp_path / "ray"
    state = sweep(load_suite(suites / "tiny.toml"), out, "lite", data_dir=str(fmnist_dir),
                  backend=RayBackend(address=cluster))
    assert (state.done, state.failed) == (4, [])
    _same_models(local["tiny"], out, "tiny")
    local_rows = _rows(local["tiny"])
    assert _rows(out) == local_rows and len(local_rows) == 4
    # both nodes ran runs (one CPU each, two runs at once), each from a temporary folder shipped back
    nodes = {a[2] for f in (out / "tiny").iterdir() for a in _attempts(f)}
    assert len(nodes) == 2
    assert not list((out / "tiny").glob("*/*.tmp"))
    # a second sweep finds everything done (the shipped folders are finished runs)
    again = sweep(load_suite(suites / "tiny.toml"), out, "lite", data_dir=str(fmnist_dir),
                  backend=RayBackend(address=cluster))
    assert (again.skipped, again.done, again.failed) == (4, 4, [])


# [shared] is in the long tier (tests/conftest.py): it repeats [ship]'s 45 s with the folder written in place
@pytest.mark.parametrize("storage", ["ship", "shared"])
def test_a_run_whose_worker_dies_starts_again_from_its_checkpoint(storage, cluster, suites, local, tmp_path,
                                                                  fmnist_dir):
    out = tmp_path / storage
    folder = out / "long" / "long-rlr-seed=0"
    killed: list[int] = []

    def kill_mid_run(state) -> None:  # the driver's loop calls it every 0.2 s
        if killed or not (folder / "checkpoint.pt").exists():
            return
        done = len((folder / "metrics.jsonl").read_text().splitlines()) if (folder / "metrics.jsonl").exists() else 0
        attempts = _attempts(folder)
        if attempts and 1 <= done <= 3:  # a checkpoint reached the driver, rounds are left
            killed.append(done)
            os.kill(attempts[0][1], signal.SIGKILL)  # the Ray worker running the task (its run dies with it)

    state = sweep(load_suite(suites / "long.toml"), out, "lite", data_dir=str(fmnist_dir), on_update=kill_mid_run,
                  backend=RayBackend(address=cluster, storage=storage, sync_seconds=0.2))
    assert killed, "the run ended before a checkpoint reached the driver: nothing was killed"
    assert (state.done, state.failed) == (1, []), (folder / "sweep.log").read_text()
    log = (folder / "sweep.log").read_text()
    assert "attempt 1 lost" in log and [a[0] for a in _attempts(folder)] == [1, 2], log
    assert "resuming" in log, log  # attempt 2 went on from the checkpoint, not from round 1
    _same_models(local["long"], out, "long")
    assert _rows(out) == _rows(local["long"])


def test_ctrl_c_on_the_driver_cancels_every_task(cluster, suites, tmp_path, fmnist_dir):
    """With --storage shared (every node sees the folder: one machine), so that path runs in the full tier."""
    out = tmp_path / "stopped"
    code = "import sys; from robustlr.cli import main; sys.argv = ['robustlr'] + sys.argv[1:]; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "sweep", str(suites / "endless.toml"), "-r", str(out),
                             "--data-dir", str(fmnist_dir), "--backend", "ray", "--address", cluster,
                             "--storage", "shared"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    folder = out / "endless" / "endless-rlr-seed=0"
    t0 = time.time()
    while time.time() - t0 < 120 and not _attempts(folder):
        time.sleep(0.2)
    attempts = _attempts(folder)
    assert attempts, "the run never started"
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "To go on, run the same command again" in " ".join(output.split())
    _, worker, _, run = attempts[0]
    t0 = time.time()
    while time.time() - t0 < 20 and (is_alive(worker) or is_alive(run)):
        time.sleep(0.2)
    assert not is_alive(worker) and not is_alive(run), "a task outlived the sweep"
    assert [r for r in store.query(out) if r["status"] == "done"] == []  # a half run is never finished


def test_bad_clusters_and_folders_are_refused_before_any_run(cluster, suites, tmp_path):
    s = load_suite(suites / "tiny.toml")
    port = _free_port()  # nothing listens there
    t0 = time.time()
    with pytest.raises(ConfigError, match=rf"no Ray cluster at 127.0.0.1:{port} .*ray start --head"):
        sweep(s, tmp_path / "a", "lite", backend=RayBackend(address=f"127.0.0.1:{port}"))
    assert time.time() - t0 < 30
    with pytest.raises(ConfigError, match=r"has 2 CPU\(s\); one run needs 3 \(--cpus-per-run\)"):
        sweep(s, tmp_path / "b", "lite", backend=RayBackend(address=cluster, cpus_per_run=3))
    with pytest.raises(ConfigError, match="not HOST:PORT"):
        sweep(s, tmp_path / "c", "lite", backend=RayBackend(address="nowhere"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot write the results folder"):
        sweep(s, blocker / "results", "lite", backend=RayBackend(address=cluster))
    assert not list(tmp_path.glob("*/tiny/*/summary.json"))  # nothing ran
    with pytest.raises(ConfigError, match="--storage 'nfs'"):
        RayBackend(storage="nfs")


def test_ray_options_without_the_ray_backend_are_refused(suites):
    from typer.testing import CliRunner

    from robustlr.cli import app

    res = CliRunner().invoke(app, ["sweep", str(suites / "tiny.toml"), "--address", "127.0.0.1:1", "--retries", "5"])
    assert res.exit_code == 2
    assert "--address, --retries apply to --backend ray only" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["sweep", str(suites / "tiny.toml"), "--backend", "spark"])
    assert res.exit_code == 2 and "--backend 'spark': choose local" in " ".join(res.output.split())
