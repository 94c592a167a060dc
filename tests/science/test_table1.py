"""The paper's headline (Table 1) on real data, at the demos' reduced budgets, one test per setting.

In each setting FedAvg under attack must learn the backdoor while FedAvg + RLR keeps it out, at a
validation accuracy close to FedAvg's. The bounds differ by setting:

iid (Fashion-MNIST, preset demo-iid): FedAvg's backdoor accuracy >= 0.8, RLR's <= 0.1, RLR's
validation accuracy within 5 points of FedAvg's.

noniid (the shared LEAF writers, preset demo-noniid: 293 writers, 14 agents per round, 30 rounds,
E 2, B 64, theta 3 of 14; the paper: 3,383 writers, 33 per round, 500 rounds, E 10, theta 7):
FedAvg's backdoor accuracy >= 0.6, RLR's <= 0.3 and at least 0.4 below FedAvg's, RLR's validation
accuracy within 6 points of FedAvg's. The paper's gap at its full budget is 3.3 points (98.5 vs
95.2); RLR converges more slowly (the paper says so), so after 30 rounds the gap is somewhat
larger: 4.8 points measured at seed 0 with 14 agents per round (backdoor: FedAvg 0.871, RLR
0.033); with robustlr 0.1's 15 agents per round it was 3.5 at seed 0 and 4.2 at seed 1 (backdoor
FedAvg 0.83 / 0.95, RLR 0.07 / 0.20).

Runtime of noniid: measured 6 min 21 s on a 2-core machine shared with other jobs (load average
5-7; 245 s of CPU time); the automatic engine spreads each round over 2 worker processes (14 agents x
~100 samples x E 2 is above the process engine's threshold). Both settings are in the `long` tier
(make test-long), not the full tier, which they pushed past 35 minutes; CI runs iid after the full
tier (make test-headline: 331 s in fp32 on a 2-core AVX2 machine, 2026-12-04).
"""

import pytest
import torch

from robustlr.reports.demo import demo_configs
from robustlr.sim.federation import load_dataset
from robustlr.sim.loop import run_experiment

pytestmark = pytest.mark.science

# per setting: FedAvg's backdoor accuracy at least, RLR's at most, FedAvg's minus RLR's at least
# (None: not asserted), RLR's validation accuracy at most this far below FedAvg's
BOUNDS = {
    "iid": {"fedavg_backdoor_min": 0.8, "rlr_backdoor_max": 0.1, "backdoor_gap_min": None, "val_drop_max": 0.05},
    "noniid": {"fedavg_backdoor_min": 0.6, "rlr_backdoor_max": 0.3, "backdoor_gap_min": 0.4, "val_drop_max": 0.06},
}


@pytest.mark.parametrize("setting", ["iid", "noniid"])
def test_rlr_stops_the_backdoor_that_fedavg_learns(setting, data_dir):
    bounds = BOUNDS[setting]
    from robustlr.sim.engines.select import bf16_is_native

    # the iid demo trains in bf16; a CPU that emulates bf16 (AVX2 only) would take ~8x longer, so it
    # runs the same budget in fp32 there (docs/speed.md: the same backdoor ordering in both, 3 seeds)
    cfgs = demo_configs(setting, [] if bf16_is_native(torch.device("cpu")) else ["precision=fp32"])
    ds = load_dataset(cfgs["fedavg_attack"], data_dir)
    fedavg = run_experiment(cfgs["fedavg_attack"], dataset=ds).summary
    rlr = run_experiment(cfgs["rlr_attack"], dataset=ds).summary
    print(f"\n{setting}\nFedAvg under attack: {fedavg}\nFedAvg + RLR under attack: {rlr}")
    assert fedavg.backdoor_acc >= bounds["fedavg_backdoor_min"]
    assert rlr.backdoor_acc <= bounds["rlr_backdoor_max"]
    if bounds["backdoor_gap_min"] is not None:
        assert fedavg.backdoor_acc - rlr.backdoor_acc >= bounds["backdoor_gap_min"]
    assert rlr.val_acc >= fedavg.val_acc - bounds["val_drop_max"]
