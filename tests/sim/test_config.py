import json
import logging

import pytest

from robustlr.sim.config import ConfigError, ExperimentConfig, load_config, make_config, parse_overrides
from robustlr.sim.presets import list_presets


def test_defaults_are_the_paper_iid_setting():
    cfg = ExperimentConfig()
    assert (cfg.rounds, cfg.num_agents, cfg.corrupt_fraction, cfg.poison_fraction) == (200, 10, 0.1, 0.5)
    assert (cfg.local_epochs, cfg.batch_size, cfg.base_class, cfg.target_class) == (2, 256, 5, 7)
    assert cfg.resolved_server_lr == 1.0
    assert make_config({"aggregator": "sign"}).resolved_server_lr == 1e-3


def test_every_preset_validates():
    names = list_presets()
    assert {"iid-clean", "iid-fedavg", "iid-rlr", "iid-rlr-clip-noise", "iid-comed", "iid-sign", "iid-foolsgold",
            "demo-iid"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.name


def test_overrides_are_typed():
    assert parse_overrides(["rounds=20", "client_lr=0.05", "trojan=square", "digits_only=false"]) == {
        "rounds": 20, "client_lr": 0.05, "trojan": "square", "digits_only": False}
    cfg = load_config("iid-rlr", ["rounds=3", "rlr_threshold=5"])
    assert cfg.rounds == 3 and cfg.rlr_threshold == 5


@pytest.mark.parametrize("override, fragment", [
    (["rounds=0"], "rounds"),
    (["roudns=3"], "did you mean 'rounds'"),
    (["rlr_threshold=11"], "exceeds the 10 agents in a round"),
    (["rlr_threshold=2.5"], "integer count"),
    (["base_class=7"], "base_class and target_class are both 7"),
    (["target_class=12"], "has 10 classes"),
    (["noise_sigma=0.001"], "needs clip_norm > 0"),
    (["client_lr=inf"], "client_lr"),
    (["server_lr=nan"], "server_lr"),
    (["dataset='cifar10'", "model='cifar-cnn-bn'", "aggregator='sign'", "buffer_aggregation='rule'"],
     "batch-norm running statistics"),
    (["exact_only=true"], "exact_only applies to cifar10"),
    (["rounds=5", "attack_from_round=6"], "attack_from_round=6 is after the last round"),
    (["dba_split='halves'"], "dba_split"),
    (["aggregator=median"], "aggregator"),
    (["model=cifar-cnn"], "does not fit fashion-mnist"),
    (["partition=natural"], "needs a dataset with writers"),
])
def test_bad_configs_are_refused_with_the_reason(override, fragment):
    with pytest.raises(ConfigError) as exc:
        load_config("iid-rlr", override)
    assert fragment in str(exc.value)


def test_bad_override_syntax_and_missing_file():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("iid-rlr", ["rounds"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("no-such-preset")


def test_json_round_trip():
    cfg = load_config("iid-rlr-clip-noise")
    again = make_config(json.loads(cfg.to_json()))
    assert again == cfg


def test_rounding_helpers():
    cfg = make_config({"participation": 0.01, "num_agents": 3383, "corrupt_fraction": 0.1,
                       "dataset": "femnist-leaf", "partition": "natural", "base_class": 1, "target_class": 7})
    assert cfg.agents_per_round(3383) == 33  # floor(C*K), as the authors sample
    assert cfg.num_corrupt(3383) == 338
    assert cfg.agents_per_round(10) == 1


# -- ranges and contradictions a run refused only after the data loaded, or ran as garbage
@pytest.mark.parametrize("override, message", [
    (["attack=dba", "dba_parts=50"], "dba_parts=50: must be an integer in 1..9 (the plus trojan's pixels), got 50"),
    (["server_lr=1e38"], "server_lr=1e+38 is outside (0, 1000]"),
    (["boost_factor=1e37"], "boost_factor=1e+37 is outside (0, 10000]"),
    (["trojan_position='99,99'"], "trojan_position='99,99': a trojan of 5x5 pixels placed at row 99, column 99 does "
                                  "not fit a 28x28 image; choose a row <= 23 and a column <= 23"),
    (["train_limit=10000000"], "train_limit=10000000 exceeds the 60000 training images of fashion-mnist"),
    (["partition=shards", "classes_per_client=100"], "classes_per_client=100 exceeds the 10 classes of fashion-mnist: "
                                                     "use 1..10"),
    (["rlr_from_round=201"], "rlr_from_round=201 is after the last round (200): RLR would never switch on"),
    (["attack='label-flip'", "trojan_value=3"], "leave trojan, trojan_position and trojan_value unset"),
])
def test_out_of_range_and_contradictory_values_are_refused(override, message):
    with pytest.raises(ConfigError) as exc:
        load_config("iid-rlr", override)
    assert message in str(exc.value)


def test_the_bounds_themselves_are_accepted():
    cfg = load_config("iid-rlr", ["server_lr=1000.0", "boost_factor=10000.0", "train_limit=60000",
                                  "trojan_position='23,23'", "rlr_from_round=200"])
    assert (cfg.server_lr, cfg.boost_factor, cfg.train_limit) == (1000.0, 10000.0, 60000)
    assert load_config("cifar-dba-paper-fedavg", ["dba_parts=9"]).dba_parts == 9
    assert load_config("iid-rlr", ["partition=shards", "classes_per_client=10"]).classes_per_client == 10


def test_train_limit_with_the_natural_partition_is_refused_before_the_data_loads():
    with pytest.raises(ConfigError, match="train_limit cannot be combined with partition = 'natural'"):
        load_config("noniid-paper-rlr", ["train_limit=1000"])


# -- inert keys: warned about, and left out of the config hash
INERT = [
    ("iid-fedavg", "rlr_from_round=5", "rlr_threshold = 0 (no RLR)"),
    ("iid-fedavg", "rlr_from_val_acc=0.9", "rlr_threshold = 0 (no RLR)"),
    ("iid-rlr", "rlr_scope='all'", "model mnist-cnn has no batch-norm buffers ('all' differs from 'trainable' "
                                   "only on them)"),
    ("iid-fedavg", "rlr_soft=true", "rlr_threshold = 0 (no RLR)"),
    ("iid-fedavg", "rlr_max_flip=0.25", "rlr_threshold = 0 (no RLR)"),
    ("iid-rlr", "buffer_aggregation='rule'", "model mnist-cnn has no batch-norm buffers"),
    ("iid-rlr", "assumed_corrupt=2", "aggregator fedavg (only krum, multikrum and bulyan use it)"),
    ("iid-rlr", "multikrum_keep=3", "aggregator fedavg (only multikrum)"),
    ("iid-rlr", "trim_fraction=0.2", "aggregator fedavg (only trimmed-mean)"),
    ("iid-rlr", "comed_even='mean'", "aggregator fedavg (only comed)"),
    ("iid-rlr", "flame_noise_lambda=0.01", "aggregator fedavg (only flame)"),
    ("iid-rlr", "dirichlet_alpha=0.1", "partition iid-balanced (only dirichlet)"),
    ("iid-rlr", "classes_per_client=100", "partition iid-balanced (only shards)"),
    ("iid-rlr", "digits_only=false", "dataset fashion-mnist (only femnist-leaf and femnist-tff)"),
    ("iid-rlr", "data_sources=['x']", "dataset fashion-mnist (only femnist-leaf, femnist-tff and plugged-in datasets)"),
    ("iid-rlr", "dba_parts=3", "attack trojan (only dba)"),
    ("iid-rlr", "dba_split='disjoint'", "attack trojan (only dba)"),
    ("cifar-dba-paper-fedavg", "dba_parts=3 dba_split='disjoint'", "trojan plus in 3 parts (only the plus in 4 parts has a split choice)"),
    ("iid-rlr", "stealth_multiple=2.0", "stealth = 'none'"),
    ("iid-rlr", "adaptive_top_fraction=0.5", "adaptive = 'none'"),
    ("iid-rlr", "clip_scope='server'", "clip_norm = 0 (no clipping)"),
]


@pytest.mark.parametrize("preset, override, why", INERT, ids=[o for _, o, _ in INERT])
def test_an_inert_key_is_warned_about_and_does_not_change_the_hash(preset, override, why, caplog):
    from robustlr.sim.config import config_hash

    overrides = override.split()
    key = overrides[-1].split("=")[0]
    base = load_config(preset, overrides[:-1])
    with caplog.at_level(logging.WARNING, logger="robustlr"):
        cfg = load_config(preset, overrides)
    assert cfg.inert_keys()[key] == why
    assert f"{key} = {getattr(cfg, key)!r} has no effect with {why}; it is left out of the config hash" in caplog.text
    assert config_hash(cfg) == config_hash(base)


@pytest.mark.parametrize("preset, override", [
    ("iid-rlr", "rlr_from_round=5"), ("iid-rlr", "rlr_scope='all' model='cifar-cnn-bn' dataset='cifar10'"),
    ("iid-rlr", "dirichlet_alpha=0.1 partition='dirichlet'"), ("iid-rlr", "assumed_corrupt=1 aggregator='krum'"),
    ("iid-rlr", "clip_scope='server' clip_norm=4.0"), ("iid-rlr", "dba_parts=3 attack='dba'"),
    ("iid-rlr", "poison_fraction=0.3"), ("iid-rlr", "rlr_scope='weights'"), ("iid-rlr", "rlr_soft=true"),
    ("iid-rlr", "rlr_max_flip=0.25"),
])
def test_the_same_key_where_it_acts_changes_the_hash(preset, override):
    from robustlr.sim.config import config_hash

    overrides = override.split()
    cfg = load_config(preset, overrides)
    assert cfg.inert_keys() == {}
    assert config_hash(cfg) != config_hash(load_config(preset, overrides[1:]))


def test_a_clean_run_ignores_the_attack_keys_silently(caplog):
    from robustlr.sim.config import config_hash

    with caplog.at_level(logging.WARNING, logger="robustlr"):
        cfg = load_config("iid-clean", ["poison_fraction=0.3", "corrupt_loss='negated'", "attack_from_round=5"])
    assert set(cfg.inert_keys()) == {"poison_fraction", "corrupt_loss", "attack_from_round"}
    assert caplog.text == ""  # a clean baseline inherits these from the attacked config it is derived from
    assert config_hash(cfg) == config_hash(load_config("iid-clean"))


def test_no_preset_has_an_inert_key_that_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="robustlr"):
        for name in list_presets():
            load_config(name)
    assert caplog.text == ""


def test_the_presets_hashes_are_those_of_the_committed_results():
    from robustlr.sim.config import config_hash

    # docs/reproduction/cifar-demo/*/summary.json: pretrain_config_hash; the pretrained cache folder's name
    assert config_hash(load_config("cifar-pretrain")) == "483bc622eadff2c5"
    # the committed iid results were made with the uniform split; the presets now split as the authors
    assert config_hash(load_config("iid-rlr", ["partition='iid'"])) == "703e46a6f2e733bf"
    assert config_hash(load_config("iid-clean", ["partition='iid'"])) == "52a29251fbe16f7b"
    assert config_hash(load_config("iid-rlr")) != "703e46a6f2e733bf"


# -- what `robustlr run` refused and `robustlr config` accepted: one check for both
@pytest.mark.parametrize("preset, override, message", [
    ("iid-rlr", ["num_agents=100", "train_limit=50"], "num_agents=100 exceeds the 50 training images (train_limit)"),
    ("iid-rlr", ["partition=shards", "classes_per_client=10", "train_limit=60"],
     "num_agents x classes_per_client = 100 shards exceed the 60 training images (train_limit)"),
    ("noniid-paper-rlr", ["data_sources=['a.h5']"], "dataset femnist-tff needs data_sources = [train.h5, test.h5], "
                                                     "got 1 files"),
    ("cifar-paper-rlr", ["model=cifar-cnn-bn", "train_mode=vectorized"],
     "the vectorized engine does not support batch-norm models (cifar-cnn-bn)"),
    ("iid-rlr", ["train_mode=processes", "device=cuda"], "train_mode 'processes' runs on the CPU, not on cuda"),
])
def test_what_the_engines_and_the_data_refused_is_refused_by_the_config(preset, override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(preset, override)
    assert message in str(exc.value)


def test_check_runnable_makes_the_checks_of_a_run_before_its_data(tmp_path, monkeypatch):
    import torch

    from robustlr.errors import EngineError
    from robustlr.sim.preflight import check_runnable

    with pytest.raises(ConfigError, match="init_model='nofile.pt': no such file or folder"):
        check_runnable(load_config("iid-rlr", ["init_model='nofile.pt'"]))
    with pytest.raises(ConfigError, match="init_model='pretrained:cifar-pretrain' trains cifar-cnn on cifar10, but "
                                          "this run is mnist-cnn on fashion-mnist"):
        check_runnable(load_config("iid-rlr", ["init_model='pretrained:cifar-pretrain'"]))
    with pytest.raises(ConfigError, match="pretraining config 'iid-rlr' has corrupt_fraction=0.1"):
        check_runnable(load_config("iid-rlr", ["init_model='pretrained:iid-rlr'"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EngineError, match="device='cuda:99' but this machine has no CUDA device"):
        check_runnable(load_config("iid-rlr", ["device='cuda:99'"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(EngineError, match=r"device='cuda:2' but this machine has 2 CUDA device\(s\) \(cuda:0 .. cuda:1\)"):
        check_runnable(load_config("iid-rlr", ["device='cuda:2'"]))
    check_runnable(load_config("iid-rlr", ["device='cuda:1'"]))
    model = tmp_path / "model.pt"
    model.write_bytes(b"x")
    check_runnable(load_config("iid-rlr", [f"init_model='{model}'"]))  # the file exists: its content is read later


def test_the_config_command_warns_about_an_inert_key_and_says_so_in_its_help(caplog):
    from typer.testing import CliRunner

    from robustlr.cli import app

    with caplog.at_level(logging.WARNING, logger="robustlr"):
        res = CliRunner().invoke(app, ["config", "iid-rlr", "--set", "dirichlet_alpha=0.1"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["dirichlet_alpha"] == 0.1
    assert "dirichlet_alpha = 0.1 has no effect with partition iid-balanced (only dirichlet)" in caplog.text
    helptext = " ".join(CliRunner().invoke(app, ["config", "--help"]).output.split())
    assert "Keys that have no effect in this config are warned about and left out of its hash" in helptext


def test_a_theta_outside_the_papers_range_is_warned_not_refused(caplog):
    with caplog.at_level(logging.WARNING, logger="robustlr"):
        inside = load_config("iid-rlr", ["corrupt_fraction=0.3"])  # theta 4 of 10 at F 0.3: range 4 .. 7
    assert inside.advice() == [] and "outside the paper's range" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="robustlr"):
        low = load_config("iid-rlr", ["corrupt_fraction=0.3", "rlr_threshold=3"])
    assert low.advice() == ["rlr_threshold = 3 is theta 3 of the 10 agents a round, outside the paper's range "
                            "K*F+1 .. K-K*F = 4 .. 7 at corrupt_fraction 0.3 (below it the corrupt agents' votes "
                            "alone can keep a coordinate's sign)"]
    assert low.advice()[0] in caplog.text
    # a share of the round: 0.2 of the 33 writers a round is theta 7, inside 5 .. 29 at F 0.1
    assert load_config("noniid-paper-rlr", ["rlr_threshold=0.2"]).advice() == []
    high = load_config("iid-rlr", ["rlr_threshold=10"])
    assert "theta 10 of the 10 agents a round" in high.advice()[0] and "honest agents cannot reach it" in high.advice()[0]
    assert load_config("iid-rlr", ["rlr_threshold=0"]).advice() == []  # no RLR, nothing to say


def test_comed_takes_the_authors_lower_middle_by_default_and_old_hashes_stay():
    """comed_even's default became "lower" (the authors' torch.median) in 0.3; a run stored before,
    at "mean", keeps its hash, and a run at the new default gets another one."""
    from robustlr.sim.config import HASH_BASELINE, config_hash

    new = make_config({"aggregator": "comed"})
    old = make_config({"aggregator": "comed", "comed_even": "mean"})
    assert new.comed_even == "lower" and HASH_BASELINE == {"comed_even": "mean"}
    assert config_hash(new) != config_hash(old)
    assert config_hash(old) == config_hash(make_config({"aggregator": "comed", "comed_even": "mean", "rounds": 200}))
    # the paper presets split iid data as the authors: every agent the same count of every class
    assert load_config("iid-fedavg").partition == "iid-balanced" and load_config("demo-iid").partition == "iid"


def test_a_run_stored_at_the_old_comed_default_resumes_where_comed_is_not_its_rule():
    """A run folder written before the default changed (config.json says comed_even "mean") is the
    same run for a FedAvg config today (the key cannot act), not for a comed one."""
    from robustlr.sim.rundir import blocking_differences

    old_fedavg = make_config({"comed_even": "mean", "rounds": 5})
    assert blocking_differences(old_fedavg, make_config({"rounds": 5})) == {}
    assert blocking_differences(old_fedavg, make_config({"rounds": 8})) == {}  # extending it too
    old_comed = make_config({"aggregator": "comed", "comed_even": "mean"})
    assert blocking_differences(old_comed, make_config({"aggregator": "comed"})) == {"comed_even": ("mean", "lower")}
    assert blocking_differences(old_fedavg, make_config({"rounds": 5, "seed": 1})) == {"seed": (0, 1)}
