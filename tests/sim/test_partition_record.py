"""How the data is split, as a run records it and `robustlr partition` shows it: per agent its
samples per class (partition.json, a table, a heatmap); the authors' class-balanced iid split; the
Dirichlet split's minimum size; an agent left without data refused before training."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from robustlr.cli import app
from robustlr.data.partition import label_counts
from robustlr.errors import DataError
from robustlr.sim.config import config_hash, make_config
from robustlr.sim.federation import build_federation
from robustlr.sim.loop import run_experiment

BASE = {"rounds": 1, "num_agents": 4, "corrupt_fraction": 0.25, "local_epochs": 1, "batch_size": 16,
        "rlr_threshold": 0, "seed": 3, "train_mode": "sequential", "threads": 1}


def test_label_counts_are_exact():
    parts = [np.array([0, 3]), np.array([1, 2, 4]), np.array([], dtype=np.int64)]
    assert label_counts(parts, np.array([2, 0, 0, 2, 1]), 3).tolist() == [[0, 0, 2], [2, 1, 0], [0, 0, 0]]
    with pytest.raises(DataError, match="client 0 holds a label >= num_classes"):
        label_counts([np.array([0])], np.array([5]), 3)


def test_iid_balanced_gives_every_agent_each_class_in_equal_shares(tiny):
    ds = tiny(n_train=240)  # 24 of each class
    cfg = make_config({**BASE, "partition": "iid-balanced"})
    counts = build_federation(cfg, ds).label_counts()
    assert counts.tolist() == [[6] * 10] * 4  # 24 / 4 agents of every class
    uniform = build_federation(make_config({**BASE, "partition": "iid"}), ds).label_counts()
    assert uniform.sum(1).tolist() == [60] * 4 and (uniform != 6).any()  # the uniform split is not balanced


def test_the_dirichlet_minimum_size_is_a_config_key_and_an_empty_agent_is_refused(tiny):
    ds = tiny(n_train=240)
    cfg = make_config({**BASE, "partition": "dirichlet", "dirichlet_alpha": 0.5, "dirichlet_min_size": 40})
    assert build_federation(cfg, ds).agent_sizes.min() >= 40
    with pytest.raises(DataError, match=r"no Dirichlet\(alpha=0.5\) draw in 1000 tries gave every one of 4 clients "
                                        r"at least min_size=60 samples; raise alpha, lower min_size or use fewer clients \(the config's "
                                        r"dirichlet_alpha, dirichlet_min_size and num_agents\)"):
        build_federation(cfg.model_copy(update={"dirichlet_min_size": 60}), ds)  # all four exactly 60: no draw gives it
    with pytest.raises(DataError, match=r"n_clients \* min_size = 4 \* 61 exceeds n_samples \(240\)"):
        build_federation(cfg.model_copy(update={"dirichlet_min_size": 61}), ds)
    sparse = make_config({**BASE, "num_agents": 40, "partition": "dirichlet", "dirichlet_alpha": 0.05,
                          "dirichlet_min_size": 0})
    with pytest.raises(DataError, match=r"partition dirichlet left \d+ of 40 agents without data .* raise "
                                        r"dirichlet_min_size \(at least 1\) or dirichlet_alpha"):
        build_federation(sparse, ds)
    # the default (10) leaves the hash of every earlier dirichlet config as it was; other partitions ignore it
    assert config_hash(make_config({**BASE, "partition": "dirichlet"})) == \
        config_hash(make_config({**BASE, "partition": "dirichlet", "dirichlet_min_size": 10}))
    assert make_config({**BASE, "dirichlet_min_size": 3}).inert_keys()["dirichlet_min_size"].startswith("partition iid")


def test_a_run_folder_records_its_partition(tmp_path, tiny):
    ds = tiny()
    cfg = make_config({**BASE, "partition": "shards", "classes_per_client": 2})
    fed = build_federation(cfg, ds)
    run_experiment(cfg, tmp_path, dataset=ds)
    doc = json.loads((tmp_path / "partition.json").read_text())
    assert doc == json.loads(json.dumps(fed.partition_record(cfg)))
    assert (doc["partition"], doc["classes_per_client"], doc["num_agents"], doc["train_samples"]) == ("shards", 2, 4, 240)
    assert np.array_equal(np.array(doc["label_counts"]), fed.label_counts())
    assert doc["corrupt"] == fed.corrupt.tolist() and len(doc["corrupt"]) == 1
    assert doc["poisoned"] == {str(a): n for a, n in fed.poisoned_per_agent.items()}


def test_the_partition_command_shows_and_writes_the_split(tmp_path, fmnist_dir):
    from robustlr.sim.federation import load_dataset

    args = ["--set", "partition=dirichlet", "--set", "dirichlet_alpha=0.3", "--set", "train_limit=2000"]
    res = CliRunner().invoke(app, ["partition", "demo-iid", *args, "--out", str(tmp_path / "p"),
                                   "--data-dir", str(fmnist_dir), "--rows", "3"])
    assert res.exit_code == 0, res.output
    cfg = make_config({**make_config({}).model_dump(), **json.loads(
        CliRunner().invoke(app, ["config", "demo-iid", *args]).output)})
    fed = build_federation(cfg, load_dataset(cfg, str(fmnist_dir)))
    doc = json.loads((tmp_path / "p" / "partition.json").read_text())
    assert doc == json.loads(json.dumps(fed.partition_record(cfg)))
    counts = fed.label_counts()
    lines = [line.split() for line in res.output.splitlines()]
    first = next(i for i, words in enumerate(lines) if words[:1] == ["agent"])
    shown = lines[first + 2:first + 5]  # below the header and its rule: agents 0, 1 and 2
    for i, words in enumerate(shown):
        corrupt = i in fed.corrupt
        assert words == [str(i), *(["*"] if corrupt else []), *map(str, counts[i]), str(counts[i].sum()),
                         str(int((counts[i] > 0).sum()))]
    assert "the first 3 of 10 agents shown" in " ".join(res.output.split())
    png = (tmp_path / "p" / "partition.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (800, 400)  # 10 classes x 10 agents at 100 dpi


def test_a_dataset_without_a_test_split_is_refused_before_training(tiny):
    with pytest.raises(DataError, match="tiny has no test split: the run evaluates on it"):
        build_federation(make_config(BASE), tiny(n_test=0))
