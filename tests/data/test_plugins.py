"""A dataset defined outside robustlr runs without editing it: registered at run time, named by an
import string, or installed as an entry point; images of any size get the trojans scaled to them,
data that is not images runs the attacks that draw nothing; the records name the data and its
fingerprint, a resume refuses other data, and a bad loader is refused before training."""

import json
import textwrap

import pytest
import torch

import robustlr
from robustlr.data import dataset_names, dataset_spec, fingerprint, unregister_dataset
from robustlr.errors import ResumeError
from robustlr.sim.config import config_hash, make_config
from robustlr.sim.loop import run_experiment

BASE = {"rounds": 2, "num_agents": 4, "corrupt_fraction": 0.25, "local_epochs": 1, "batch_size": 16,
        "rlr_threshold": 2, "seed": 3, "train_mode": "sequential", "threads": 1, "eval_every": 1,
        "base_class": 1, "target_class": 2}

DATA = '''
    import numpy as np
    import torch
    from torch import nn

    from robustlr.data import ImageDataset

    def _labels(n, k, seed):
        return torch.from_numpy(np.random.default_rng(seed).integers(0, k, n)).long()

    def images(side=12, seed=0):
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(0, 100, (120, 3, side, side), dtype=torch.uint8, generator=g)
        t = torch.randint(0, 100, (40, 3, side, side), dtype=torch.uint8, generator=g)
        return ImageDataset("whatever", x, _labels(120, 3, seed), t, _labels(40, 3, seed + 1), ("a", "b", "c"),
                            mean=(0.2, 0.2, 0.2), std=(0.1, 0.1, 0.1))

    def other_images():
        return images(seed=1)

    def features(data_sources=()):
        rng = np.random.default_rng(len(data_sources))
        y = _labels(200, 3, 0)
        x = torch.from_numpy(rng.normal(size=(200, 6)).astype("float32")) + 3 * y[:, None].float()
        yt = _labels(60, 3, 1)
        xt = torch.from_numpy(rng.normal(size=(60, 6)).astype("float32")) + 3 * yt[:, None].float()
        return ImageDataset("features", x, y, xt, yt, ("a", "b", "c"))

    def tokens():
        y = _labels(100, 3, 0)
        x = (torch.arange(100)[:, None] % 7 + y[:, None] * 7).repeat(1, 5)
        return ImageDataset("tokens", x, y, x[:30].clone(), y[:30].clone(), ("a", "b", "c"))

    def mlp(num_classes):
        return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, num_classes))
    mlp.input_shape = (6,)

    class Bag(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.emb = nn.EmbeddingBag(21, 8)
            self.fc = nn.Linear(8, num_classes)

        def forward(self, x):
            return self.fc(self.emb(x))

    def bag(num_classes):
        return Bag(num_classes)

    def small_cnn(num_classes):
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 10 * 10, num_classes))

    def returns_dict():
        return {"x": 1}

    def raises():
        raise OSError("disk on fire")

    def nan_features():
        x = torch.zeros(10, 2)
        x[3, 1] = float("nan")
        return ImageDataset("n", x, torch.zeros(10, dtype=torch.long), x.clone(), torch.zeros(10, dtype=torch.long),
                            ("a",))
'''


@pytest.fixture
def mods(tmp_path, monkeypatch):
    """A module ``robustlr_test_data`` on the Python path, as a user's own package would be."""
    (tmp_path / "robustlr_test_data.py").write_text(textwrap.dedent(DATA))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import robustlr_test_data

    return importlib.reload(robustlr_test_data)


@pytest.fixture
def registered(mods):
    robustlr.register_dataset("my-images", mods.images)
    robustlr.register_model("my-cnn", mods.small_cnn)
    yield mods
    unregister_dataset("my-images")
    robustlr.models.unregister_model("my-cnn")


def test_a_registered_image_dataset_of_another_size_runs_and_the_run_records_it(tmp_path, registered):
    cfg = make_config({**BASE, "dataset": "my-images", "model": "my-cnn"})
    assert cfg.input_shape == (3, 12, 12) and cfg.num_classes == 3
    res = run_experiment(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dataset"] == "my-images"
    rec = json.loads((tmp_path / "run" / "summary.json").read_text())["dataset"]
    ds = registered.images()
    assert rec == {"name": "my-images", "loaded": "my-images", "origin": "registered",
                   "loader": "robustlr_test_data:images", "source": "", "fingerprint": fingerprint(ds),
                   "train_samples": 120, "test_samples": 40}
    assert res.summary.federation["trojan_contrast"] > 0  # the plus, scaled to 12x12, was drawn
    from robustlr.experiments import store

    store.record_run(tmp_path, tmp_path / "run", cfg, "done")
    (row,) = store.query(tmp_path)
    assert (row["dataset"], row["model"], row["data_fingerprint"]) == ("my-images", "my-cnn", fingerprint(ds))
    assert config_hash(cfg) != config_hash(make_config({**BASE, "model": "my-cnn", "dataset": "cifar10"}))
    again = run_experiment(cfg)
    assert torch.equal(again.global_params, res.global_params)
    assert "my-images" in dataset_names()
    assert fingerprint(ds) != fingerprint(registered.other_images())


def test_a_resume_refuses_a_checkpoint_of_other_data(tmp_path, registered):
    cfg = make_config({**BASE, "dataset": "my-images", "model": "my-cnn", "checkpoint_every": 1})
    run_experiment(cfg, tmp_path / "run")
    robustlr.register_dataset("my-images", registered.other_images, replace=True)
    with pytest.raises(ResumeError, match="was written by a run on other data"):
        run_experiment(cfg.model_copy(update={"rounds": 3}), tmp_path / "run")
    robustlr.register_dataset("my-images", registered.images, replace=True)
    assert [r.round for r in run_experiment(cfg.model_copy(update={"rounds": 3}), tmp_path / "run").records] == [1, 2, 3]


def test_features_run_the_label_flip_on_every_engine_and_refuse_the_trojan(mods):
    cfg = make_config({**BASE, "dataset": "robustlr_test_data:features", "model": "robustlr_test_data:mlp",
                       "attack": "label-flip", "data_sources": ["a", "b"], "batch_size": 32})
    assert cfg.input_shape == (6,) and "data_sources" not in cfg.inert_keys()
    seq = run_experiment(cfg)
    par = run_experiment(cfg.model_copy(update={"train_mode": "processes", "threads": 2}))
    vec = run_experiment(cfg.model_copy(update={"train_mode": "vectorized"}))
    assert torch.equal(seq.global_params, par.global_params)  # bitwise, whatever the engine
    assert torch.allclose(seq.global_params, vec.global_params, atol=1e-4)
    assert seq.records[-1].val_acc > 0.5  # the features separate the classes: it trains
    assert seq.summary.dataset["origin"] == "import string" and seq.summary.federation["trojan_value"] is None
    bf16 = run_experiment(cfg.model_copy(update={"precision": "bf16"}))
    assert torch.equal(bf16.global_params, run_experiment(cfg.model_copy(update={"precision": "bf16"})).global_params)
    assert not torch.equal(bf16.global_params, seq.global_params) and bf16.records[-1].val_acc > 0.5
    boosted = run_experiment(cfg.model_copy(update={"boost_factor": 3.0}))
    assert not torch.equal(boosted.global_params, seq.global_params)
    for attack in ("trojan", "dba"):
        with pytest.raises(ValueError, match=f"attack '{attack}' draws a trojan on images, but "
                                             r"robustlr_test_data:features is not images \(samples of shape \(6,\)"):
            make_config({**BASE, "dataset": "robustlr_test_data:features", "model": "robustlr_test_data:mlp",
                         "attack": attack})
    make_config({**BASE, "dataset": "robustlr_test_data:features", "model": "robustlr_test_data:mlp",
                 "corrupt_fraction": 0, "rlr_threshold": 0})  # a clean run needs no attack


def test_token_ids_run(mods):
    cfg = make_config({**BASE, "dataset": "robustlr_test_data:tokens", "model": "robustlr_test_data:bag",
                       "attack": "label-flip", "rounds": 3, "client_lr": 0.5})
    res = run_experiment(cfg)
    assert res.records[-1].val_acc > 0.6 and res.summary.dataset["train_samples"] == 100


def test_an_installed_packages_entry_point_names_a_dataset(tmp_path, mods, monkeypatch):
    dist = tmp_path / "site" / "robustlr_test_dataplugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: robustlr-test-dataplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[robustlr.datasets]\nplugin-features = robustlr_test_data:features\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert dataset_spec("plugin-features").origin == "entry point (robustlr-test-dataplugin)"
    res = run_experiment(make_config({**BASE, "dataset": "plugin-features", "model": "robustlr_test_data:mlp",
                                      "attack": "label-flip"}))
    assert res.summary.dataset["loader"] == "robustlr_test_data:features"


def test_bad_datasets_are_refused_before_training_with_one_line(mods):
    cases = {
        "my-imagse": "unknown dataset 'my-imagse' (did you mean 'my-images'?); choose one of fashion-mnist, cifar10, "
                     "femnist-leaf, femnist-tff, ",
        "robustlr_test_data:nothing": "dataset 'robustlr_test_data:nothing': module 'robustlr_test_data' has no "
                                      "'nothing'",
        "no_such_module_y:load": "dataset 'no_such_module_y:load': cannot import 'no_such_module_y'",
        "robustlr_test_data:returns_dict": "dataset 'robustlr_test_data:returns_dict': its loader "
                                           "robustlr_test_data:returns_dict returned a dict, not a "
                                           "robustlr.data.ImageDataset",
        "robustlr_test_data:raises": "dataset 'robustlr_test_data:raises': its loader robustlr_test_data:raises "
                                     "raised OSError: disk on fire",
        "robustlr_test_data:nan_features": "n: train_x holds NaN or infinite values (1 samples)",
    }
    robustlr.register_dataset("my-images", mods.images)
    try:
        for name, message in cases.items():
            with pytest.raises(ValueError) as info:
                make_config({**BASE, "dataset": name})
            assert message in str(info.value), name
        with pytest.raises(ValueError, match=r"model 'mnist-cnn' takes inputs of shape \(1, 28, 28\): it does not "
                                             r"fit my-images \(images of shape \(3, 12, 12\)\); use a model for"):
            make_config({**BASE, "dataset": "my-images"})
        with pytest.raises(ValueError, match="'cifar10' is a built-in dataset and cannot be replaced"):
            robustlr.register_dataset("cifar10", mods.images)
        with pytest.raises(ValueError, match=r"dataset 'my-images' is already registered \(loader "
                                             r"robustlr_test_data:images\); pass replace=True"):
            robustlr.register_dataset("my-images", mods.features)
        with pytest.raises(ValueError, match="partition 'natural' needs a dataset with writers"):
            make_config({**BASE, "dataset": "my-images", "model": "robustlr_test_data:small_cnn",
                         "partition": "natural", "num_agents": None})
    finally:
        unregister_dataset("my-images")


def test_the_commands_take_a_plugged_dataset_by_import_string(tmp_path, mods):
    from typer.testing import CliRunner

    from robustlr.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["data", "robustlr_test_data:images"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "robustlr_test_data:images: import string" in text and "images of shape (3, 12, 12), torch.uint8; 120 " \
        "train, 40 test; 3 classes (a, b, c)" in text and f"fingerprint {fingerprint(mods.images())}" in text
    res = runner.invoke(app, ["data", "robustlr_test_data:raises"])
    assert res.exit_code == 2 and "raised OSError: disk on fire" in " ".join(res.output.split())
    res = runner.invoke(app, ["run", "demo-iid", "--set", "dataset=robustlr_test_data:images", "--set",
                              "model=robustlr_test_data:small_cnn", "--set", "rounds=1", "--set", "train_limit=60",
                              "--set", "base_class=1", "--set", "target_class=2", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["dataset"]["origin"] == "import string"
