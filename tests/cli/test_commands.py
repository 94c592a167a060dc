"""Every command through typer's test runner, and the error policy: robustlr's own errors become
one line and exit 2; any other exception is a bug and keeps its traceback."""

import dataclasses
import json

import pytest
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


def test_data_finds_the_leaf_shards_or_says_where_femnist_comes_from(tmp_path, monkeypatch, data_dir):
    res = runner.invoke(app, ["data", "femnist-leaf", "--data-dir", str(data_dir)])
    assert res.exit_code == 0, res.output
    n = sum(1 for p in (data_dir / "femnist-leaf").rglob("*") if p.name.endswith((".json", ".json.gz")))
    assert " ".join(res.output.split()) == (f"femnist-leaf {data_dir / 'femnist-leaf'}: {n} shards in arakotom_flic, "
                                            "slz-ai_leaf-torch, wenzhu23333_dp-fl")
    monkeypatch.delenv("ROBUSTLR_DATA_DIR", raising=False)
    for dataset, where in (("femnist-leaf", "https://github.com/TalwalkarLab/leaf"),
                           ("femnist-tff", "fed_emnist_digitsonly.tar.bz2")):
        res = runner.invoke(app, ["data", dataset, "--data-dir", str(tmp_path)])
        flat = " ".join(res.output.split())
        assert res.exit_code == 1, res.output
        assert flat.startswith(f"{dataset} missing data source") and "How to get the files" in flat and where in flat
    (tmp_path / "femnist-leaf").mkdir()  # there, but empty
    res = runner.invoke(app, ["data", "femnist-leaf", "--data-dir", str(tmp_path)])
    assert res.exit_code == 1 and "no LEAF shards (*.json, *.json.gz) under" in " ".join(res.output.split())


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


def test_demo_runs_three_runs_and_plots(tmp_path, data_dir, monkeypatch):
    import matplotlib.figure
    import numpy as np
    from PIL import Image

    figures = []  # every figure saved, kept to inspect what was drawn
    savefig = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        figures.append(fig)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    res = runner.invoke(app, ["demo", "--setting", "iid", "--set", "rounds=1", "--set", "train_limit=300",
                              "--set", "threads=1", "--out", str(tmp_path), "--data-dir", str(data_dir)])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["runs"]) == {"fedavg_clean", "fedavg_attack", "rlr_attack"}
    assert "FedAvg + RLR, attack" in res.output

    # the file: 11 x 4.2 inches at 110 dpi (reports.plots.plot_runs) is 1210 x 462 pixels
    with Image.open(tmp_path / "demo.png") as im:
        assert im.format == "PNG" and im.size == (1210, 462)
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    colours = {tuple(int(c) for c in p) for p in np.unique(pixels, axis=0)}
    assert len(colours) > 20  # text, grid, three coloured series, antialiasing: far from a blank image
    non_white = (pixels < 250).any(axis=1).mean()
    assert 0.01 < non_white < 0.5, non_white  # mostly background, but something drawn
    # the three runs take their methods' colours (the same in the demo, the report and the docs):
    # no attack tab:gray, FedAvg tab:blue, RLR tab:orange; each appears in the image (markers and legend)
    for hex_colour in ("7f7f7f", "1f77b4", "ff7f0e"):
        rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (0, 2, 4)])
        assert (np.abs(pixels.astype(int) - rgb).max(axis=1) <= 8).sum() >= 10, hex_colour

    # the figure behind it: two panels, one line per run holding that run's accuracy in percent
    assert len(figures) == 1
    fig = figures[0]
    assert tuple(fig.get_size_inches() * 110) == pytest.approx((1210, 462))
    backdoor_ax, val_ax = fig.axes
    assert (backdoor_ax.get_title(), val_ax.get_title()) == ("backdoor accuracy", "validation accuracy")
    labels = {"fedavg_clean": "FedAvg, no attack", "fedavg_attack": "FedAvg, attack", "rlr_attack": "FedAvg + RLR, attack"}
    for ax, metric in ((backdoor_ax, "backdoor_acc"), (val_ax, "val_acc")):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == set(labels.values())
        for key, label in labels.items():
            assert list(lines[label].get_xdata()) == [1]  # one round, evaluated
            assert list(lines[label].get_ydata()) == pytest.approx([100 * summary["runs"][key][metric]])
    assert [t.get_text() for t in backdoor_ax.get_legend().get_texts()] == list(labels.values())
    bad = runner.invoke(app, ["demo", "--setting", "moon"])
    assert bad.exit_code == 2 and "unknown setting" in bad.output


def test_unexpected_exception_keeps_its_traceback(monkeypatch, tmp_path):
    def boom(*a, **k):
        raise ValueError("a bug, not a user error")

    monkeypatch.setattr("robustlr.sim.loop.run_experiment", boom)
    res = runner.invoke(app, ["run", "demo-iid", "--out", str(tmp_path)])
    assert res.exit_code == 1
    assert isinstance(res.exception, ValueError) and "a bug" in str(res.exception)
