"""CIFAR-10 + distributed backdoor: the trojan's colour, who draws which part, and the presets."""

import json

import numpy as np
import pytest
import torch

from robustlr.attacks import apply_trojan, dba_parts, trojan_mask
from robustlr.sim.config import ConfigError, load_config, make_config
from robustlr.sim.federation import build_federation, normalise

BASE = {"dataset": "cifar10", "model": "cifar-cnn", "num_agents": 8, "corrupt_fraction": 0.5, "attack": "dba",
        "poison_fraction": 1.0, "rounds": 1, "seed": 1}


def test_trojan_value_is_validated():
    assert make_config(BASE).trojan_value is None
    assert make_config({**BASE, "trojan_value": 0}).trojan_value == 0
    assert make_config({**BASE, "trojan_value": 255}).trojan_value == 255
    for bad in (-1, 256, 1000):
        with pytest.raises(ConfigError, match=rf"trojan_value={bad} is not a pixel value: use an integer in 0..255"):
            load_config("cifar-dba-paper-rlr", [f"trojan_value={bad}"])
    for bad in ("0.5", "true", '"255"'):
        with pytest.raises(ConfigError, match="trojan_value"):
            load_config("cifar-dba-paper-rlr", [f"trojan_value={bad}"])
    assert make_config(json.loads(load_config("demo-cifar").to_json())).trojan_value == 0


@pytest.mark.parametrize("value", [None, 0, 128])
def test_dba_agents_draw_their_part_and_the_test_set_the_full_plus(tiny, value):
    ds = tiny(channels=3, size=32)
    cfg = make_config({**BASE, "trojan_value": value})
    fed = build_federation(cfg, ds)
    drawn = ds.ink if value is None else value
    assert fed.notes["trojan_value"] == drawn
    parts = dba_parts("plus", 4, 32, 32, "cifar10")
    assert len(fed.corrupt) == 4
    clean = normalise(ds.train_x, ds.mean, ds.std)
    for i, agent in enumerate(fed.corrupt):
        rows = torch.as_tensor(fed.agent_indices[agent])
        poisoned = rows[(ds.train_y[rows] == cfg.base_class) & (fed.train_y[rows] == cfg.target_class)]
        assert len(poisoned) == fed.poisoned_per_agent[int(agent)] > 0
        expected = normalise(apply_trojan(ds.train_x[poisoned], parts[i % 4], drawn), ds.mean, ds.std)
        torch.testing.assert_close(fed.train_x[poisoned], expected, rtol=0, atol=0)
        # only the agent's own part changed, in every channel
        changed = (fed.train_x[poisoned] != clean[poisoned]).any(dim=(0, 1))
        assert not bool((changed & ~parts[i % 4]).any())
    honest = np.setdiff1d(np.arange(fed.num_agents), fed.corrupt)
    rows = torch.as_tensor(np.concatenate([fed.agent_indices[a] for a in honest]))
    assert torch.equal(fed.train_x[rows], clean[rows]) and torch.equal(fed.train_y[rows], ds.train_y[rows])
    base = ds.test_x[ds.test_y == cfg.base_class]
    full = trojan_mask("plus", 32, 32, "cifar10")
    assert torch.equal(fed.backdoor_x, normalise(apply_trojan(base, full, drawn), ds.mean, ds.std))


def test_plus_parts_of_the_corrupt_agents_cover_the_trojan():
    full = trojan_mask("plus", 32, 32, "cifar10")
    stacked = torch.stack(dba_parts("plus", 4, 32, 32, "cifar10", split="disjoint")).to(torch.int64)
    assert bool((stacked.sum(0) <= 1).all())  # disjoint
    assert torch.equal(stacked.sum(0).bool(), full)  # union = the full plus
    authors = torch.stack(dba_parts("plus", 4, 32, 32, "cifar10")).to(torch.int64)
    assert int(authors.sum(0).max()) == 3 and torch.equal(authors.sum(0).bool(), full)  # overlapping, same union
    for name in ("square", "copyright", "apple"):
        parts = torch.stack(dba_parts(name, 4, 32, 32, "cifar10")).to(torch.int64)
        assert bool((parts.sum(0) <= 1).all()) and torch.equal(parts.sum(0).bool(), trojan_mask(name, 32, 32, "cifar10"))


@pytest.mark.parametrize("run, corrupt, theta", [("clean", 0.0, 0), ("fedavg", 0.1, 0), ("rlr", 0.1, 8)])
def test_paper_presets_are_table_2(run, corrupt, theta):
    regular = load_config(f"cifar-paper-{'rlr' if theta else 'fedavg'}")
    assert regular.attack == "trojan" and regular.rlr_threshold == theta and regular.rounds == 100
    cfg = load_config(f"cifar-dba-paper-{run}")
    assert (cfg.dataset, cfg.model, cfg.partition, cfg.attack, cfg.trojan, cfg.dba_parts) == (
        "cifar10", "cifar-cnn", "iid-balanced", "dba", "plus", 4)
    assert (cfg.rounds, cfg.num_agents, cfg.corrupt_fraction, cfg.poison_fraction, cfg.participation) == (
        100, 40, corrupt, 0.5, 1.0)
    assert (cfg.local_epochs, cfg.batch_size, cfg.rlr_threshold, cfg.base_class, cfg.target_class) == (2, 256, theta, 5, 7)
    assert (cfg.client_lr, cfg.client_momentum, cfg.grad_clip, cfg.resolved_server_lr) == (0.1, 0.9, 10.0, 1.0)
    assert cfg.trojan_value == 0  # the authors draw the CIFAR-10 plus in black
    assert cfg.train_limit is None


def test_demo_preset_keeps_the_papers_model_and_attack():
    from robustlr.reports.demo import demo_configs

    cfg = load_config("demo-cifar")
    assert (cfg.dataset, cfg.model, cfg.attack, cfg.trojan, cfg.dba_parts, cfg.trojan_value) == (
        "cifar10", "cifar-cnn", "trojan", "plus", 4, 0)
    assert cfg.init_model == "pretrained:cifar-pretrain"
    cfgs = demo_configs("cifar")
    assert list(cfgs) == ["fedavg_clean", "fedavg_attack", "rlr_attack", "fedavg_dba", "rlr_dba"]
    assert [c.attack for c in cfgs.values()] == ["trojan", "trojan", "trojan", "dba", "dba"]
    assert [c.rlr_threshold for c in cfgs.values()] == [0, 0, 8, 0, 8]
    assert [c.corrupt_fraction for c in cfgs.values()] == [0, 0.1, 0.1, 0.1, 0.1]
    assert (cfg.base_class, cfg.target_class, cfg.poison_fraction) == (5, 7, 0.5)
    assert cfg.num_corrupt(cfg.num_agents) == 4  # one corrupt agent per part of the plus
    assert cfg.rlr_threshold > cfg.num_corrupt(cfg.num_agents)
