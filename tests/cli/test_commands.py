"""Every command through typer's test runner, and the error policy: robustlr's own errors become
one line and exit 2; any other exception is a bug and keeps its traceback."""

import dataclasses
import json

from typer.testing import CliRunner

from robustlr.cli import app

runner = CliRunner()


def test_presets_lists_every_preset_with_its_description():
    res = runner.invoke(app, ["presets"])
    assert res.exit_code == 0, res.output
    assert "iid-rlr-clip-noise" in res.output and "noniid-paper-rlr" in res.output
    assert "Table 1 iid: FedAvg + RLR" in res.output


def test_config_prints_the_resolved_preset():
    res = runner.invoke(app, ["config", "iid-rlr-clip-noise", "--set", "rounds=3"])
    assert res.exit_code == 0, res.output
    cfg = json.loads(res.output)
    assert (cfg["rounds"], cfg["rlr_threshold"], cfg["clip_norm"], cfg["dataset"]) == (3, 4, 4.0, "fashion-mnist")
    assert "extends" not in cfg


def test_bad_config_is_one_line_and_exit_2():
    res = runner.invoke(app, ["config", "iid-rlr", "--set", "roudns=3"])
    assert res.exit_code == 2
    assert "did you mean 'rounds'" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["run", "no-such-preset"])
    assert res.exit_code == 2 and "not found" in res.output


def test_data_finds_fashion_mnist(data_dir):
    res = runner.invoke(app, ["data", "fashion-mnist", "--data-dir", str(data_dir)])
    assert res.exit_code == 0, res.output
    assert res.output.count("fashion-mnist") >= 4


def test_data_reports_missing_files_with_exit_1(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ROBUSTLR_CACHE_DIR", str(tmp_path / "cache"))
    from robustlr.data import fashion_mnist

    # no system copy either (Debian's dataset-fashion-mnist may be installed)
    monkeypatch.setattr(fashion_mnist, "DATASET_FILES", {
        k: dataclasses.replace(v, system_dirs=()) for k, v in fashion_mnist.DATASET_FILES.items()})
    res = runner.invoke(app, ["data", "fashion-mnist", "--data-dir", str(tmp_path)])
    assert res.exit_code == 1
    assert "missing" in res.output


def test_data_finds_cifar10_npz_or_lists_every_place(tmp_path, monkeypatch, data_dir):
    res = runner.invoke(app, ["data", "cifar10", "--data-dir", str(data_dir)])
    assert res.exit_code == 0, res.output
    assert "cifar10.npz" in res.output and "sha256 87a96a9294ac" in " ".join(res.output.split())
    monkeypatch.setenv("ROBUSTLR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("ROBUSTLR_CACHE_DIR", str(tmp_path / "cache"))
    res = runner.invoke(app, ["data", "cifar10", "--data-dir", str(tmp_path)])
    assert res.exit_code == 1
    flat = "".join(res.output.split())  # rich wraps long paths
    assert "missing" in res.output and "cifar10/cifar10.npz(missing)" in flat


def test_run_writes_the_run_folder_and_resumes(tmp_path, data_dir):
    args = ["run", "demo-iid", "--set", "rounds=2", "--set", "train_limit=400", "--set", "threads=1",
            "--out", str(tmp_path / "r"), "--data-dir", str(data_dir)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert {p.name for p in (tmp_path / "r").iterdir()} >= {"config.json", "metrics.jsonl", "summary.json", "model.pt"}
    first = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert first["rounds"] == 2 and first["schema_version"] == 2
    again = runner.invoke(app, args)  # finished run: resumes from its last checkpoint, same numbers
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["val_acc"] == first["val_acc"]
    other = runner.invoke(app, [*args[:-4], "--set", "seed=1", *args[-4:]])
    assert other.exit_code == 2 and "different config" in other.output


def test_demo_runs_three_runs_and_plots(tmp_path, data_dir):
    res = runner.invoke(app, ["demo", "--setting", "iid", "--set", "rounds=1", "--set", "train_limit=300",
                              "--set", "threads=1", "--out", str(tmp_path), "--data-dir", str(data_dir)])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["runs"]) == {"fedavg_clean", "fedavg_attack", "rlr_attack"}
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    assert "FedAvg + RLR, attack" in res.output
    bad = runner.invoke(app, ["demo", "--setting", "moon"])
    assert bad.exit_code == 2 and "unknown setting" in bad.output


def test_unexpected_exception_keeps_its_traceback(monkeypatch, tmp_path):
    def boom(*a, **k):
        raise ValueError("a bug, not a user error")

    monkeypatch.setattr("robustlr.sim.loop.run_experiment", boom)
    res = runner.invoke(app, ["run", "demo-iid", "--out", str(tmp_path)])
    assert res.exit_code == 1
    assert isinstance(res.exception, ValueError) and "a bug" in str(res.exception)
