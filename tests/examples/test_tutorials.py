"""The site's tutorials run as a user runs them, at a smoke budget (2 rounds), on real Fashion-MNIST:
a sweep and its report, attacks and defenses side by side, why it works. Code paths, not science:
the numbers at the tutorials' own budgets are on their pages (docs/tutorials/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_the_sweep_tutorial_runs_stores_and_reports(tmp_path, fmnist_dir):
    out = _run("sweep_and_report.py", "--rounds", "2", "--seeds", "1", "--train-limit", "1000", "--out", str(tmp_path / "t"),
               "--data-dir", str(fmnist_dir), cwd=tmp_path)
    assert "2 runs done, 0 failed" in out
    assert [line.split()[:2] for line in out.splitlines() if line.startswith(("fedavg_attack", "rlr_attack"))] == [
        ["fedavg_attack", "1"], ["rlr_attack", "1"]]
    assert (tmp_path / "t" / "report" / "report.md").read_text().count("## tutorial") == 1
    again = _run("sweep_and_report.py", "--rounds", "2", "--seeds", "1", "--train-limit", "1000", "--out", str(tmp_path / "t"),
                 "--data-dir", str(fmnist_dir), cwd=tmp_path)
    assert "2 runs done" in again  # started again: the finished runs are skipped, the numbers the same
    assert out.splitlines()[1:4] == again.splitlines()[1:4]


def test_the_attacks_and_defenses_tutorial_prints_every_cell(tmp_path, fmnist_dir):
    out = _run("attacks_and_defenses.py", "--rounds", "2", "--train-limit", "1000", "--out", str(tmp_path / "p"), "--data-dir", str(fmnist_dir),
               cwd=tmp_path)
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in
            ("fedavg", "rlr", "signguard")}
    assert set(rows) == {"fedavg", "rlr", "signguard"}
    assert all(row.count("/") == 2 and "not run" not in row for row in rows.values())


def test_the_why_it_works_tutorial_prints_the_vote_per_round(tmp_path, fmnist_dir):
    out = _run("why_it_works.py", "--rounds", "2", "--train-limit", "1000", "--data-dir", str(fmnist_dir), cwd=tmp_path)
    blocks = out.split("\n\n")
    assert "FedAvg: final validation" in out and "FedAvg + RLR (theta 4): final validation" in out
    rlr_rows = [line.split() for line in blocks[-1].splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rlr_rows] == ["1", "2"]
    assert all(0 < float(r[2]) < 100 for r in rlr_rows)  # RLR flipped some coordinates, not all
