"""CIFAR-10 (Table 2) on the shared data at the warm-started lite budget of ``robustlr demo --setting
cifar``: FedAvg under attack learns the backdoor, FedAvg + RLR keeps it out at a validation accuracy
within 5 points of FedAvg's; for the regular backdoor at two seeds and for the distributed backdoor at
one. Every run starts from the clean model of preset ``cifar-pretrain`` (built once and cached; about
2 minutes on two cores), so the runs show the paper's ordering, not its from-scratch training.

The thresholds are the issue's (FedAvg's backdoor accuracy at least 30 points above RLR's) and were
fixed before the runs. The measured numbers and margins are in docs/how-to/data.md ("CIFAR-10 and DBA").

The three attacked pairs are the `long` tier (``make test-long``; tests/conftest.py): 38 minutes on 2
cores (2026-12-03; 11, 11 and 16 min), more than the full tier's budget, so CI does not run them.
"""

import numpy as np
import pytest
import torch

from robustlr.attacks import apply_trojan, dba_parts, trojan_mask
from robustlr.reports.demo import demo_configs
from robustlr.sim.federation import build_federation, load_dataset, normalise
from robustlr.sim.loop import run_experiment

pytestmark = pytest.mark.science

GAP = 0.30  # FedAvg's backdoor accuracy must exceed RLR's by this much
VAL_COST = 0.05  # RLR may cost at most this much validation accuracy


@pytest.fixture(scope="module")
def cifar(data_dir):
    return load_dataset(demo_configs("cifar")["rlr_attack"], data_dir)


def test_lite_federation_is_table_2s(cifar):
    cfgs = demo_configs("cifar")
    ds = cifar
    assert ds.source == "CIFAR-10 (59,903/60,000 original pixels)"
    assert (ds.mean, ds.std) == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert ds.classes[5] == "dog" and ds.classes[7] == "horse"
    plus = trojan_mask("plus", 32, 32, "cifar10")
    for key, parts in (("rlr_attack", [plus] * 4), ("rlr_dba", dba_parts("plus", 4, 32, 32, "cifar10"))):
        cfg = cfgs[key]
        assert (cfg.num_agents, cfg.corrupt_fraction, cfg.rlr_threshold, cfg.trojan_value) == (40, 0.1, 8, 0)
        fed = build_federation(cfg, ds)
        assert len(fed.corrupt) == 4 and fed.notes["train_samples"] == cfg.train_limit
        for i, agent in enumerate(fed.corrupt):
            rows = torch.as_tensor(fed.agent_indices[agent])
            poisoned = rows[(ds.train_y[rows] == 5) & (fed.train_y[rows] == 7)]
            n_dogs = int((ds.train_y[rows] == 5).sum())
            assert len(poisoned) == fed.poisoned_per_agent[int(agent)] == int(np.floor(0.5 * n_dogs)) > 0
            expected = normalise(apply_trojan(ds.train_x[poisoned], parts[i], 0), ds.mean, ds.std)
            assert torch.equal(fed.train_x[poisoned], expected)
        dogs = ds.test_x[ds.test_y == 5]
        assert len(dogs) == 1000
        assert torch.equal(fed.backdoor_x, normalise(apply_trojan(dogs, plus, 0), ds.mean, ds.std))


def _final_only(cfg):
    # evaluated at the last round only: the same final numbers as the demo (evaluation does not touch training)
    return cfg.model_copy(update={"eval_every": cfg.rounds})


def _pair(cifar, attack: str, seed: int):
    cfgs = demo_configs("cifar", [f"seed={seed}"])
    fedavg = run_experiment(_final_only(cfgs[f"fedavg_{attack}"]), dataset=cifar).summary
    rlr = run_experiment(_final_only(cfgs[f"rlr_{attack}"]), dataset=cifar).summary
    print(f"\n{attack} seed {seed}: FedAvg val {fedavg.val_acc:.4f} backdoor {fedavg.backdoor_acc:.4f}; "
          f"RLR val {rlr.val_acc:.4f} backdoor {rlr.backdoor_acc:.4f}; "
          f"margins: gap {fedavg.backdoor_acc - rlr.backdoor_acc - GAP:+.4f}, "
          f"val {rlr.val_acc - fedavg.val_acc + VAL_COST:+.4f}")
    assert fedavg.backdoor_acc >= rlr.backdoor_acc + GAP
    assert rlr.val_acc >= fedavg.val_acc - VAL_COST


@pytest.mark.parametrize("seed", [0, 1])
def test_rlr_keeps_out_the_regular_backdoor_fedavg_learns(cifar, seed):
    _pair(cifar, "attack", seed)


def test_rlr_keeps_out_the_distributed_backdoor_fedavg_learns(cifar):
    _pair(cifar, "dba", 0)
