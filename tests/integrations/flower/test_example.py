"""docs/how-to/flower.md's recipe for the Flower example on one machine, as a user types it: ``flwr run
examples/flower --stream --federation-config num-supernodes=10`` with
``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``. ``flwr`` starts its managed local SuperLink
(simulation mode, Ray) and the example's ServerApp runs demo-iid's 10 agents on 10 simulated
SuperNodes; here for two short rounds.

Everything runs under a temporary ``FLWR_HOME`` and on free ports; the local SuperLink that
``flwr`` starts detached, and everything below it, is killed at the end (by pid), pass or fail.

Budget: about 2 minutes on 2 cores (measured: 115 s for `flwr run`, 121 s in all, while CI ran beside it).
"""

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

from robustlr.sim.lifecycle import descendant_pids  # noqa: E402
from robustlr.sim.records import read_metrics, read_summary  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_with(fragment: str) -> list[int]:
    """The processes whose command line holds ``fragment`` (the temporary FLWR_HOME)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if fragment in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                pass
    return found


def test_the_readme_recipe_runs_the_example_on_a_local_simulation(tmp_path, fmnist_dir):
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "FLWR_HOME": str(home),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()), "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port())}
    app = tmp_path / "app"
    shutil.copytree(ROOT / "examples" / "flower", app)
    out = tmp_path / "out"
    overrides = "rounds=2; train_limit=300; threads=1; checkpoint_every=0; eval_every=1"
    run_config = f"robustlr-set='{overrides}' robustlr-data-dir='{fmnist_dir}' robustlr-out='{out}'"
    t0 = time.time()
    try:
        res = subprocess.run([str(BIN / "flwr"), "run", str(app), "--stream", "--federation-config", "num-supernodes=10",
                              "--run-config", run_config], env=env, capture_output=True, text=True, timeout=420)
        seconds = time.time() - t0
        log = res.stdout + res.stderr
        assert res.returncode == 0, log
        # flwr's exit status says nothing of the run's (0 either way): the run folder does
        assert (out / "summary.json").exists(), log
        recs = read_metrics(out / "metrics.jsonl")
        assert [(r.round, r.agents, r.corrupt_in_round, r.rejected) for r in recs] == [(1, 10, 1, []), (2, 10, 1, [])]
        summary = read_summary(out / "summary.json")
        assert summary.engine == "flower" and summary.rounds == 2
        print(f"the recipe ran 2 rounds of 10 agents in {seconds:.0f} s")
    finally:
        leaders = _pids_with(str(home))
        for pid in {p for leader in leaders for p in [leader, *descendant_pids(leader)]}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
