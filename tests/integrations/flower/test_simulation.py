"""`robustlr run CONFIG --engine flower`: Flower's simulation runtime (Ray, one virtual node per
agent) writes the built-in simulator's run folder, with the built-in simulator's model, for a
model and dataset defined outside robustlr.

Budget: about 40 s on 2 cores (Ray's start-up is most of it)."""

import json

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("flwr", reason="the Flower extra: pip install 'robustlr[flower]'")

from robustlr.cli import app  # noqa: E402
from robustlr.sim.records import read_metrics, read_summary  # noqa: E402

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
precision = "fp32"
"""


def test_flower_engine_writes_the_run_folder_with_the_builtin_model(tmp_path, monkeypatch):
    """On the tutorial's dataset and model (scikit-learn's digits and a small CNN, defined outside
    robustlr and named by import strings, which Ray's worker processes import from PYTHONPATH): the
    Flower run's records and model equal the built-in simulator's bitwise. One Ray start-up serves
    both checks (the built-in models' Flower path is checked in-process by test_equivalence.py)."""
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
    assert summary.dataset["origin"] == "import string" and summary.model["origin"] == "import string"
    assert summary.dataset["fingerprint"] == read_summary(tmp_path / "b" / "summary.json").dataset["fingerprint"]
