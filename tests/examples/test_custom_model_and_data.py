"""The tutorial examples/custom_model_and_data.py runs as a user would run it (a smoke budget: 2
rounds, 1 seed): its own dataset (scikit-learn's digits) and model, registered in a few lines,
three runs, the table and the plot. Budget: about 15 s on 2 cores."""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="the tutorial reads scikit-learn's digits: pip install scikit-learn")
pytest.importorskip("matplotlib")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_model_and_data.py"


@pytest.fixture
def forget_registrations():
    """The tutorial registers "digits" and "digits-cnn" in this process: forget them afterwards."""
    yield
    from robustlr.data import unregister_dataset
    from robustlr.models import unregister_model

    unregister_dataset("digits")
    unregister_model("digits-cnn")


def test_the_tutorial_runs_and_writes_its_table_and_plot(tmp_path, capsys, forget_registrations):
    spec = importlib.util.spec_from_file_location("custom_model_and_data", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    results = mod.main(["--out", str(tmp_path), "--rounds", "2", "--seeds", "1"])
    out = capsys.readouterr().out
    assert "FedAvg + RLR (theta 8), attacked" in out and "scikit-learn digits, 20 agents, Dirichlet(0.5)" in out
    assert (tmp_path / "digits.png").stat().st_size > 10_000
    assert [len(v) for v in results.values()] == [1, 1, 1]
    summary = json.loads((tmp_path / "rlr-attacked-seed0" / "summary.json").read_text())
    assert summary["dataset"]["name"] == "digits" and summary["dataset"]["train_samples"] == 1437
    assert summary["model"]["factory"] == "custom_model_and_data:digits_cnn"
    assert summary["federation"]["num_corrupt"] == 4 and summary["federation"]["poisoned_samples"] > 0
    config = json.loads((tmp_path / "rlr-attacked-seed0" / "config.json").read_text())
    assert (config["dataset"], config["model"], config["partition"]) == ("digits", "digits-cnn", "dirichlet")
