"""CIFAR-10 with the distributed backdoor (Table 2) on the shared data: what the lite budget
shows and what it does not. Numbers from the shared copy are "CIFAR-10 (JPEG q75 copy)".

The lite preset ``demo-cifar`` (Table 2's federation: 40 agents, 4 corrupt ones each drawing
one bar half of a black plus on half of their dog images relabelled horse, theta 8; with an
8,000-image subset, 8 rounds, B 32, client_lr 0.02, bf16) does NOT reproduce the paper's
ordering. Measured (seed 0, 474 s for the three runs on one core, about 20 s per round):
validation / base / backdoor accuracy 21.4 / 10.2 / 7.8 % without attack, 21.3 / 6.2 / 12.4 %
for FedAvg under DBA, 19.9 / 0.0 / 19.0 % for FedAvg + RLR under DBA (paper, 100 rounds at
40 x 1,250 images: 79.0 / 89.4 / 6.6, 79.4 / 87.5 / 88.6, 77.5 / 87.8 / 9.0). At ~20 %
validation accuracy the backdoor accuracy of every run swings by tens of points from one
evaluation to the next (FedAvg without attack: 7.7, 43, 24.7, 7.8 % at rounds 2-8), so no
ordering can be read from it. Stronger lite settings measured while choosing the preset did
not show it either, e.g. 10 agents of which 4 corrupt (F 0.4), 4,000 images, 30 rounds (about
7 CPU-minutes per run): FedAvg's backdoor accuracy 21, 45, 38, 29, 42, 14 % at rounds 5-30 at
48 % validation accuracy. The paper's budget is about 10 million sample-epochs per run, ~80x
more than a lite run (128,000).

So there is no ordering test here: an expected failure that is never run cannot fail, and
was removed. The CIFAR-10 issue (a warm-started lite budget) brings the ordering test. The
test here checks, on the real data, that the lite federation is Table 2's attack: ~10 s.
"""

import numpy as np
import pytest
import torch

from robustlr.attacks import apply_trojan, dba_parts, trojan_mask
from robustlr.reports.demo import demo_configs
from robustlr.sim.federation import build_federation, load_dataset, normalise

pytestmark = pytest.mark.science


def test_lite_federation_is_table_2s_distributed_backdoor(data_dir):
    cfg = demo_configs("cifar")["rlr_attack"]
    ds = load_dataset(cfg, data_dir)
    assert ds.source in ("CIFAR-10 (JPEG q75 copy)", "CIFAR-10 (python release)")
    assert (ds.mean, ds.std) == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert ds.classes[cfg.base_class] == "dog" and ds.classes[cfg.target_class] == "horse"
    fed = build_federation(cfg, ds)
    assert fed.num_agents == 40 and len(fed.corrupt) == 4 and fed.notes["train_samples"] == 8000
    assert fed.notes["trojan_value"] == 0
    parts = dba_parts("plus", 4, 32, 32, "cifar10")
    for i, agent in enumerate(fed.corrupt):
        rows = torch.as_tensor(fed.agent_indices[agent])
        poisoned = rows[(ds.train_y[rows] == 5) & (fed.train_y[rows] == 7)]
        n_dogs = int((ds.train_y[rows] == 5).sum())
        assert len(poisoned) == fed.poisoned_per_agent[int(agent)] == int(np.floor(0.5 * n_dogs)) > 0
        expected = normalise(apply_trojan(ds.train_x[poisoned], parts[i], 0), ds.mean, ds.std)
        assert torch.equal(fed.train_x[poisoned], expected)
    dogs = ds.test_x[ds.test_y == 5]
    assert len(dogs) == 1000
    assert torch.equal(fed.backdoor_x, normalise(apply_trojan(dogs, trojan_mask("plus", 32, 32, "cifar10"), 0),
                                                 ds.mean, ds.std))
