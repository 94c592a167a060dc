"""`robustlr run CONFIG --engine flower`: Flower's simulation runtime (Ray, one virtual node per
agent) writes the built-in simulator's run folder, with the built-in simulator's model.

Budget: about 40 s on 2 cores (Ray's start-up is most of it)."""

import json

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("flwr", reason="the Flower extra: pip install 'robustlr[flower]'")

from robustlr.cli import app  # noqa: E402
from robustlr.sim.records import read_metrics, read_summary  # noqa: E402

ARGS = ["--set", "rounds=2", "--set", "train_limit=400", "--set", "precision=fp32", "--set", "threads=2",
        "--set", "checkpoint_every=0", "--set", "eval_every=1"]


def test_flower_engine_writes_the_run_folder_with_the_builtin_model(tmp_path, fmnist_dir):
    runner = CliRunner()
    flower = runner.invoke(app, ["run", "demo-iid", *ARGS, "--engine", "flower", "--out", str(tmp_path / "f"),
                                 "--data-dir", str(fmnist_dir)])
    assert flower.exit_code == 0, flower.output
    builtin = runner.invoke(app, ["run", "demo-iid", *ARGS, "--out", str(tmp_path / "b"), "--data-dir", str(fmnist_dir)])
    assert builtin.exit_code == 0, builtin.output
    summary = read_summary(tmp_path / "f" / "summary.json")
    assert summary.engine == "flower" and summary.rounds == 2
    recs = read_metrics(tmp_path / "f" / "metrics.jsonl")
    theirs = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [(r.round, r.agents, r.corrupt_in_round, r.threshold, r.evaluated) for r in recs] == \
        [(r.round, r.agents, r.corrupt_in_round, r.threshold, r.evaluated) for r in theirs]
    assert [r.val_acc for r in recs] == [r.val_acc for r in theirs]
    a = torch.load(tmp_path / "f" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in b), "the Flower engine should give the built-in model bitwise"
    assert json.loads((tmp_path / "f" / "config.json").read_text()) == json.loads((tmp_path / "b" / "config.json").read_text())


PLUGGED = """
dataset = "custom_model_and_data:load_digits"
model = "custom_model_and_data:digits_cnn"
partition = "dirichlet"
num_agents = 6
corrupt_fraction = 0.2
base_class = 1
target_class = 7
rlr_threshold = 2
rounds = 2
local_epochs = 1
batch_size = 32
eval_every = 1
checkpoint_every = 0
threads = 2
"""


def test_flower_engine_runs_a_model_and_dataset_defined_outside_robustlr(tmp_path, monkeypatch):
    """The tutorial's dataset and model, named by import strings: Ray's worker processes import them
    from PYTHONPATH, and the Flower run equals the built-in simulator's bitwise."""
    pytest.importorskip("sklearn")
    from pathlib import Path

    examples = str(Path(__file__).resolve().parents[3] / "examples")
    monkeypatch.syspath_prepend(examples)
    monkeypatch.setenv("PYTHONPATH", examples)
    (tmp_path / "digits.toml").write_text(PLUGGED)
    runner = CliRunner()
    flower = runner.invoke(app, ["run", str(tmp_path / "digits.toml"), "--engine", "flower", "--out", str(tmp_path / "f")])
    assert flower.exit_code == 0, flower.output
    builtin = runner.invoke(app, ["run", str(tmp_path / "digits.toml"), "--out", str(tmp_path / "b")])
    assert builtin.exit_code == 0, builtin.output
    a = torch.load(tmp_path / "f" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in b)
    summary = read_summary(tmp_path / "f" / "summary.json")
    assert summary.engine == "flower" and summary.dataset["origin"] == "import string"
    assert summary.dataset["fingerprint"] == read_summary(tmp_path / "b" / "summary.json").dataset["fingerprint"]
