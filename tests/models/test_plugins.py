"""A model defined outside robustlr runs without editing it: registered at run time, named by an
import string, or installed as an entry point; the config knows every name (a typo gets the
choices), the run records what ran, and a factory that fails is refused before training."""

import json
import textwrap

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import robustlr
from robustlr.cli import app
from robustlr.errors import EngineError
from robustlr.models import ModelError, model_names, model_spec, unregister_model
from robustlr.sim.config import config_hash, make_config
from robustlr.sim.loop import run_experiment

BASE = {"rounds": 2, "num_agents": 4, "corrupt_fraction": 0.25, "local_epochs": 1, "batch_size": 16,
        "rlr_threshold": 2, "seed": 3, "train_mode": "sequential", "threads": 1, "eval_every": 1}

NETS = '''
    import torch
    from torch import nn

    class Tiny(nn.Module):
        def __init__(self, num_classes, norm=None):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.norm = {"bn": nn.BatchNorm2d(4), "gn": nn.GroupNorm(2, 4)}.get(norm, nn.Identity())
            self.drop = nn.Dropout(0.25)
            self.fc = nn.Linear(4 * 26 * 26, num_classes)

        def forward(self, x):
            return self.fc(self.drop(torch.relu(self.norm(self.conv(x)))).flatten(1))

    def build(num_classes):
        return Tiny(num_classes)

    def build_bn(num_classes):
        return Tiny(num_classes, "bn")

    def build_gn(num_classes):
        return Tiny(num_classes, "gn")

    def wrong_outputs(num_classes):
        return Tiny(num_classes + 1)

    def not_a_module(num_classes):
        return "a string"

    def raises(num_classes):
        raise RuntimeError("no weights here")
'''


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """A module ``robustlr_test_nets`` on the Python path, as a user's own package would be."""
    (tmp_path / "robustlr_test_nets.py").write_text(textwrap.dedent(NETS))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import robustlr_test_nets

    return importlib.reload(robustlr_test_nets)


@pytest.fixture
def registered(nets):
    robustlr.register_model("my-net", nets.build, input_shape=(1, 28, 28))
    yield nets
    unregister_model("my-net")


def test_a_registered_model_runs_and_the_run_records_it(tmp_path, tiny, registered):
    cfg = make_config({**BASE, "model": "my-net"})
    res = run_experiment(cfg, tmp_path / "run", dataset=tiny())
    assert [r.round for r in res.records] == [1, 2] and res.records[-1].flipped_fraction is not None
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"] == "my-net"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model"] == {"name": "my-net", "origin": "registered", "factory": "robustlr_test_nets:build",
                                "input_shape": [1, 28, 28]}
    assert config_hash(cfg) != config_hash(make_config(BASE))  # the model's name is in the hash
    again = run_experiment(cfg, dataset=tiny())  # determinism: nn.Dropout draws from the seeded stream
    assert torch.equal(again.global_params, res.global_params)
    assert "my-net" in model_names()


def test_an_import_string_names_a_model_and_the_processes_engine_gets_its_factory(tiny, nets):
    cfg = make_config({**BASE, "model": "robustlr_test_nets:build_gn"})
    seq = run_experiment(cfg, dataset=tiny())
    par = run_experiment(cfg.model_copy(update={"train_mode": "processes", "threads": 2}), dataset=tiny())
    assert torch.equal(seq.global_params, par.global_params)  # bitwise, whatever the engine
    assert seq.summary.model["origin"] == "import string"
    bn = make_config({**BASE, "model": "robustlr_test_nets:build_bn"})
    assert bn.batch_norm and not cfg.batch_norm and "rlr_scope" not in bn.inert_keys()
    with pytest.raises(ValueError, match="the vectorized engine does not support batch-norm models "
                                         r"\(robustlr_test_nets:build_bn\)"):
        make_config({**BASE, "model": "robustlr_test_nets:build_bn", "train_mode": "vectorized"})


def test_a_lambda_is_refused_by_the_processes_engine_with_the_fix(tiny, registered):
    robustlr.register_model("my-lambda", lambda k: registered.build(k))
    try:
        cfg = make_config({**BASE, "model": "my-lambda", "train_mode": "processes", "threads": 2})
        with pytest.raises(EngineError, match="model 'my-lambda': the processes engine sends its factory "
                                              r".*<lambda> to worker processes, which needs a module-level function"):
            run_experiment(cfg, dataset=tiny())
        run_experiment(cfg.model_copy(update={"train_mode": "sequential", "threads": 1}), dataset=tiny())
    finally:
        unregister_model("my-lambda")


def test_an_installed_packages_entry_point_names_a_model(tmp_path, tiny, nets, monkeypatch):
    dist = tmp_path / "site" / "robustlr_test_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: robustlr-test-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[robustlr.models]\nplugin-net = robustlr_test_nets:build\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert model_spec("plugin-net").origin == "entry point (robustlr-test-plugin)"
    res = run_experiment(make_config({**BASE, "model": "plugin-net"}), dataset=tiny())
    assert res.summary.model["factory"] == "robustlr_test_nets:build"
    assert "plugin-net" in model_names()


def test_bad_models_are_refused_before_training_with_one_line(tmp_path, tiny, nets, registered):
    cases = {
        # the built-in models, then the registered ones (other tests may have registered theirs)
        "my-nett": "unknown model 'my-nett' (did you mean 'my-net'?); choose one of mnist-cnn, cifar-cnn, "
                   "cifar-cnn-bn, resnet20-bn, resnet20-gn, resnet18-bn, resnet18-gn, ",
        "robustlr_test_nets:nothing": "model 'robustlr_test_nets:nothing': module 'robustlr_test_nets' has no "
                                      "'nothing'",
        "no_such_module_x:build": "model 'no_such_module_x:build': cannot import 'no_such_module_x'",
        "robustlr_test_nets:not_a_module": "model 'robustlr_test_nets:not_a_module': its factory "
                                           "robustlr_test_nets:not_a_module returned a str, not a torch.nn.Module",
        "robustlr_test_nets:raises": "model 'robustlr_test_nets:raises': its factory robustlr_test_nets:raises "
                                     "raised RuntimeError: no weights here",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError) as info:
            make_config({**BASE, "model": name})
        assert message in str(info.value), name
        if name == "my-nett":
            assert "my-net" in str(info.value).split("choose one of ")[1]
    with pytest.raises(ModelError, match=r"model 'robustlr_test_nets:wrong_outputs' gives outputs of shape \(2, 11\) "
                                         r"for 2 samples of shape \(1, 28, 28\); it must give one logit per class: "
                                         r"\(2, 10\)"):
        run_experiment(make_config({**BASE, "model": "robustlr_test_nets:wrong_outputs"}), tmp_path / "w",
                       dataset=tiny())
    assert not (tmp_path / "w" / "metrics.jsonl").exists()
    with pytest.raises(ValueError, match=r"model 'my-net' takes inputs of shape \(1, 28, 28\): it does not fit "
                                         r"cifar10 \(images of shape \(3, 32, 32\)\); use cifar-cnn or cifar-cnn-bn or "
                                         r"resnet20-bn"):
        make_config({**BASE, "model": "my-net", "dataset": "cifar10"})
    with pytest.raises(ModelError, match="'cifar-cnn' is a built-in model and cannot be replaced"):
        robustlr.register_model("cifar-cnn", nets.build)
    with pytest.raises(ModelError, match=r"model 'my-net' is already registered \(factory robustlr_test_nets:build\); "
                                         "pass replace=True"):
        robustlr.register_model("my-net", nets.build_gn)
    with pytest.raises(ModelError, match="a model name is letters, digits and . _ -"):
        robustlr.register_model("a:b", nets.build)
    res = CliRunner().invoke(app, ["config", "demo-iid", "--set", "model=my-nett"])
    assert res.exit_code == 2 and "did you mean 'my-net'?" in " ".join(res.output.split()), res.output


def test_explicit_dropout_keeps_the_state_and_replays_the_given_masks():
    from robustlr.models.common import MaskedDropout, call_with_masks, explicit_dropout

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Linear(6, 3), nn.Dropout(0.25))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = explicit_dropout(model, torch.randn(2, 4))
    assert shapes == [((6,), 0.5), ((3,), 0.25)]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # statistics untouched
    assert sum(isinstance(m, MaskedDropout) for m in model.modules()) == 2
    x = torch.randn(5, 4)
    ones = [torch.ones(5, 6), torch.ones(5, 3)]
    model.train()
    plain = model[3](model[1](model[0](x)))  # no dropout: what masks of ones must give
    model.load_state_dict(before)
    assert torch.allclose(call_with_masks(model, x, ones), plain)
    zeros = [torch.ones(5, 6), torch.zeros(5, 3)]
    assert torch.equal(call_with_masks(model, x, zeros), torch.zeros(5, 3))
    assert explicit_dropout(nn.Sequential(nn.Linear(2, 2)), torch.randn(1, 2)) is None
    with pytest.raises(ValueError, match="Dropout2d: explicit masks are supported for nn.Dropout only"):
        explicit_dropout(nn.Sequential(nn.Conv2d(1, 1, 1), nn.Dropout2d(0.1)), torch.randn(1, 1, 2, 2))
