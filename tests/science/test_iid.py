"""The paper's headline on the real Fashion-MNIST, at the demo's reduced budget.

FedAvg under attack must learn the backdoor (backdoor accuracy >= 0.8) while FedAvg + RLR
keeps it out (<= 0.1) at a validation accuracy within 5 points of FedAvg's.
"""

import pytest

from robustlr.reports.demo import demo_configs
from robustlr.sim.federation import load_dataset
from robustlr.sim.loop import run_experiment

pytestmark = pytest.mark.science


def test_rlr_stops_the_backdoor_that_fedavg_learns(data_dir):
    cfgs = demo_configs("iid")
    ds = load_dataset(cfgs["fedavg_attack"], data_dir)
    fedavg = run_experiment(cfgs["fedavg_attack"], dataset=ds).summary
    rlr = run_experiment(cfgs["rlr_attack"], dataset=ds).summary
    print(f"\nFedAvg under attack: {fedavg}\nFedAvg + RLR under attack: {rlr}")
    assert fedavg.backdoor_acc >= 0.8
    assert rlr.backdoor_acc <= 0.1
    assert rlr.val_acc >= fedavg.val_acc - 0.05
