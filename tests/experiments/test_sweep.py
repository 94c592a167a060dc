"""Suites, the sweep runner and the results store, on a tiny suite (4 runs of 3 rounds on a
300-image Fashion-MNIST subset). Budget: about 60-110 s on 2 cores (three sweeps of 4 runs;
each run's process start and data load dominate)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from robustlr.cli import app
from robustlr.errors import ConfigError
from robustlr.experiments import store
from robustlr.experiments.suite import list_suites, load_suite
from robustlr.experiments.sweep import sweep
from robustlr.sim.lifecycle import child_pids, is_alive



def test_a_suite_expands_rows_times_grid(suite_file):
    runs = load_suite(suite_file).runs("lite")
    assert [r.config.name for r in runs] == ["tiny-fedavg-seed=0", "tiny-fedavg-seed=1", "tiny-rlr-seed=0",
                                             "tiny-rlr-seed=1"]
    assert [(r.config.rlr_threshold, r.config.seed, r.config.rounds) for r in runs] == [
        (0, 0, 3), (0, 1, 3), (4, 0, 3), (4, 1, 3)]
    assert "table1-iid" in list_suites()
    table1 = load_suite("table1-iid").runs("paper")
    assert len(table1) == 33  # Table 1's 11 rows x 3 seeds
    assert {r.label for r in table1} >= {"fedavg_clean", "fedavg_attack", "rlr_attack", "foolsgold", "sign_clipnoise"}
    with pytest.raises(ConfigError, match="has no budget 'huge'"):
        load_suite(suite_file).runs("huge")


def test_config_hash_ignores_defaults_and_keys_that_cannot_change_the_numbers(suite_file):
    cfg = load_suite(suite_file).runs("lite")[0].config
    assert store.config_hash(cfg) == store.config_hash(cfg.model_copy(update={"threads": 2, "name": "other"}))
    assert store.config_hash(cfg) != store.config_hash(cfg.model_copy(update={"seed": 5}))
    from robustlr.sim.config import make_config

    assert store.config_hash(make_config({})) == store.config_hash(make_config({"rounds": 200}))  # 200 is the default


def _models(results):
    return {p.parent.name: torch.load(p, weights_only=True) for p in sorted((results / "tiny").glob("*/model.pt"))}


def test_a_killed_sweep_resumes_to_the_numbers_of_an_uninterrupted_one(tmp_path, suite_file, fmnist_dir,
                                                                      tiny_local_sweep):
    ref = tiny_local_sweep  # the tiny suite swept locally with -j 2 (conftest; shared with the Ray tests)
    from robustlr.sim.engines.select import available_cores

    # each run gets its share of the cores (cores // jobs threads, at least one)
    request = json.loads((ref / "tiny" / "tiny-fedavg-seed=0" / "sweep-request.json").read_text())
    assert request["threads"] == max(1, available_cores() // 2)
    out = tmp_path / "killed"
    code = "import sys; from robustlr.cli import main; sys.argv = ['robustlr'] + sys.argv[1:]; main()"
    args = [sys.executable, "-c", code, "sweep", str(suite_file), "-r", str(out), "-j", "2",
            "--data-dir", str(fmnist_dir)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while time.time() - t0 < 120:  # until the first runs are mid-way
        if sum(1 for f in (out / "tiny").glob("*/metrics.jsonl") if len(f.read_text().splitlines()) >= 1) >= 2:
            break
        time.sleep(0.1)
    kids = child_pids(proc.pid)
    assert kids, "the sweep should be running its runs"
    proc.kill()
    proc.wait()
    t0 = time.time()
    while time.time() - t0 < 10 and any(is_alive(k) for k in kids):
        time.sleep(0.1)
    left = [k for k in kids if is_alive(k)]
    for k in left:
        os.kill(k, signal.SIGKILL)
    assert left == [], "runs outlived their sweep"
    again = CliRunner().invoke(app, ["sweep", str(suite_file), "-r", str(out), "-j", "2", "--data-dir", str(fmnist_dir)])
    assert again.exit_code == 0, again.output
    a, b = _models(ref), _models(out)
    assert sorted(a) == sorted(b) and len(a) == 4
    for name in a:
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    rows = {r["name"]: r for r in store.query(out)}
    refs = {r["name"]: r for r in store.query(ref)}
    assert {n: (r["status"], r["val_acc"], r["backdoor_acc"]) for n, r in rows.items()} == \
        {n: (r["status"], r["val_acc"], r["backdoor_acc"]) for n, r in refs.items()}
    # a third sweep has nothing left to do
    third = sweep(load_suite(suite_file), out, "lite", jobs=2, data_dir=str(fmnist_dir))
    assert (third.skipped, third.done) == (4, 4)
    # the store: filters, and a rebuild from the run folders gives the same rows
    assert {r["name"] for r in store.query(out, "rlr_threshold > 0")} == {"tiny-rlr-seed=0", "tiny-rlr-seed=1"}
    assert len(store.query(out, "seed = 1 and status = 'done'")) == 2
    before = {r["config_hash"]: r["val_acc"] for r in store.query(out)}
    (out / store.DB_NAME).unlink()
    res = CliRunner().invoke(app, ["runs", "-r", str(out), "--rebuild", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output[res.output.index("["):])
    assert {r["config_hash"]: r["val_acc"] for r in rows} == before
    bad = CliRunner().invoke(app, ["runs", "-r", str(out), "--where", "no_such_column = 1"])
    assert bad.exit_code == 2 and "not a valid SQL condition" in bad.output
    # the report names every table and image it holds, and the HTML carries the image inline
    rep = CliRunner().invoke(app, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert rep.exit_code == 0, rep.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## tiny" in md and "![tiny](tiny.png)" in md and (tmp_path / "rep" / "tiny.png").stat().st_size > 10_000
    table = [line for line in md.splitlines() if line.startswith("| fedavg |") or line.startswith("| rlr |")]
    assert len(table) == 2 and all(line.split(" | ")[1] == "2" for line in table)  # two seeds per row
    page = (tmp_path / "rep" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "<table" in page


def test_a_sweep_reruns_finished_runs_whose_files_are_damaged_from_their_checkpoints(tmp_path, suite_file,
                                                                                     fmnist_dir, tiny_local_sweep):
    """A finished run whose model.pt was deleted, and one whose summary.json holds ``[]``, count as not
    finished: the next sweep runs them again, from their checkpoints of the last round, which only
    rewrites the final files (no round is trained again: metrics.jsonl keeps its timings) to the
    same model and summary. Budget: one sweep of two runs that train nothing (the first sweep is a
    copy of the shared local sweep of the tiny suite)."""
    out = tmp_path / "out"
    suite = load_suite(suite_file)
    shutil.copytree(tiny_local_sweep, out)  # run folders and store hold relative paths: a copy is a sweep
    models, rows = _models(out), {r["name"]: r for r in store.query(out)}
    no_model, bad_summary = out / "tiny" / "tiny-fedavg-seed=0", out / "tiny" / "tiny-rlr-seed=1"
    metrics = {f.name: (f / "metrics.jsonl").read_text() for f in (no_model, bad_summary)}
    summary = json.loads((bad_summary / "summary.json").read_text())
    (no_model / "model.pt").unlink()
    (bad_summary / "summary.json").write_text("[]")
    heard = []
    again = sweep(suite, out, "lite", jobs=2, data_dir=str(fmnist_dir), on_warning=heard.append)
    assert (again.done, again.skipped, again.failed) == (4, 2, [])
    assert heard == [
        "tiny-fedavg-seed=0: summary.json is there but model.pt is missing; running it again (from its checkpoint "
        "if it has one)",
        "tiny-rlr-seed=1: summary.json holds a JSON list, not a run record; running it again (from its checkpoint "
        "if it has one)"]
    assert {f.name: (f / "metrics.jsonl").read_text() for f in (no_model, bad_summary)} == metrics
    after = _models(out)
    assert sorted(after) == sorted(models)
    for name in models:
        assert all(torch.equal(models[name][k], after[name][k]) for k in models[name]), name
    rewritten = json.loads((bad_summary / "summary.json").read_text())
    assert {k: v for k, v in rewritten.items() if k != "robustlr_commit"} == \
        {k: v for k, v in summary.items() if k != "robustlr_commit"}
    assert {n: (r["status"], r["val_acc"], r["backdoor_acc"]) for n, r in rows.items()} == \
        {r["name"]: (r["status"], r["val_acc"], r["backdoor_acc"]) for r in store.query(out)}


PLUGGED_BASE = """# the tutorial's own dataset and model (import strings)
dataset = "custom_model_and_data:load_digits"
model = "custom_model_and_data:digits_cnn"
partition = "dirichlet"
num_agents = 6
corrupt_fraction = 0.2
base_class = 1
target_class = 7
local_epochs = 1
batch_size = 32
eval_every = 1
checkpoint_every = 0
"""

PLUGGED_SUITE = """# the tutorial's dataset and model, swept
name = "digits"
preset = "{base}"

[budget.lite]
rounds = 2

[[row]]
label = "fedavg"
rlr_threshold = 0

[[row]]
label = "rlr"
rlr_threshold = 2
"""


def test_a_sweep_runs_a_model_and_dataset_defined_outside_robustlr(tmp_path, monkeypatch):
    """Each run of a sweep is a child process: it imports the user's module from PYTHONPATH; the store
    records the data's fingerprint beside the plugged names."""
    pytest.importorskip("sklearn")
    from pathlib import Path

    examples = str(Path(__file__).resolve().parents[2] / "examples")
    monkeypatch.syspath_prepend(examples)
    monkeypatch.setenv("PYTHONPATH", examples)
    (tmp_path / "base.toml").write_text(PLUGGED_BASE)
    (tmp_path / "digits.toml").write_text(PLUGGED_SUITE.format(base=tmp_path / "base.toml"))
    state = sweep(load_suite(tmp_path / "digits.toml"), tmp_path / "res", "lite", jobs=2)
    assert (state.done, state.failed) == (2, [])
    rows = store.query(tmp_path / "res")
    assert {(r["label"], r["dataset"], r["model"]) for r in rows} == {
        (label, "custom_model_and_data:load_digits", "custom_model_and_data:digits_cnn") for label in ("fedavg", "rlr")}
    assert len({r["data_fingerprint"] for r in rows}) == 1 and rows[0]["data_fingerprint"]
