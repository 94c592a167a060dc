import json

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
