"""A real Flower deployment on 127.0.0.1: a ``flower-superlink`` and three ``flower-supernode``
processes (insecure mode, inside this test only), and ``flwr run`` of the example app
(``examples/flower/``) on a tiny robustlr config for two rounds. Every process the test starts
is stopped by its process group, even when the test fails.

Budget: about 40 s on 2 cores (measured 30 s for the two rounds alone).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="the Flower extra: pip install 'robustlr[flower]'")

from robustlr.sim.records import read_metrics, read_summary  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(port: int, timeout: float = 60.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


def test_two_rounds_of_robustlr_on_a_real_superlink_and_three_supernodes(tmp_path, fmnist_dir):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(tmp_path / "home"),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    link = _free_port()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{link}"\ninsecure = true\n')
    app = tmp_path / "app"
    shutil.copytree(ROOT / "examples" / "flower", app)
    procs = []

    def start(cmd, log):
        procs.append(subprocess.Popen(cmd, env=env, stdout=open(tmp_path / log, "w"), stderr=subprocess.STDOUT,
                                      start_new_session=True))

    try:
        start([str(BIN / "flower-superlink"), "--insecure", "--port", str(link),
               "--database", str(tmp_path / "state.db")], "superlink.log")
        _wait_http(link)
        for i in range(3):
            start([str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{link}",
                   "--port", str(_free_port()), "--node-config", f"partition-id={i}"], f"supernode{i}.log")
        overrides = ("num_agents=3; corrupt_fraction=0.34; rlr_threshold=2; rounds=2; train_limit=300; "
                     "threads=1; checkpoint_every=0")
        run_config = f"robustlr-set='{overrides}' robustlr-data-dir='{fmnist_dir}' robustlr-out='{tmp_path / 'out'}'"
        res = subprocess.run([str(BIN / "flwr"), "run", str(app), "test", "--stream", "--run-config", run_config],
                             env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        # the ServerApp wrote the built-in simulator's run folder
        recs = read_metrics(tmp_path / "out" / "metrics.jsonl")
        assert [(r.round, r.agents, r.corrupt_in_round, r.rejected, r.threshold) for r in recs] == \
            [(1, 3, 1, [], 2), (2, 3, 1, [], 2)]
        assert all(0 <= r.flipped_fraction <= 1 for r in recs) and recs[-1].evaluated
        summary = read_summary(tmp_path / "out" / "summary.json")
        assert summary.engine == "flower" and 0.1 < summary.val_acc <= 1 and 0 <= summary.backdoor_acc <= 1
        cfg = json.loads((tmp_path / "out" / "config.json").read_text())
        assert (cfg["num_agents"], cfg["rounds"], cfg["rlr_threshold"]) == (3, 2, 2)
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the process and what it started (SuperExec, apps)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)
