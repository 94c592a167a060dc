"""DeepSight and FreqFed in the simulator: the server finds the model's output layer and hands each
rule what it needs (the models' outputs on random inputs, the global model); configs they cannot
act in are refused (tiny generated data: code paths only)."""

import pytest
import torch

pytest.importorskip("sklearn", reason="DeepSight and FreqFed cluster with scikit-learn (the 'flame' extra)")

from robustlr.aggregation import DeepSight, FreqFed, ModelProbe, RoundInputs  # noqa: E402
from robustlr.sim.config import make_config  # noqa: E402
from robustlr.sim.federation import build_federation  # noqa: E402
from robustlr.sim.loop import Simulation  # noqa: E402

BASE = {"dataset": "fashion-mnist", "rounds": 2, "num_agents": 6, "corrupt_fraction": 0.2, "poison_fraction": 0.5,
        "local_epochs": 1, "batch_size": 16, "eval_every": 2, "seed": 3, "train_mode": "sequential",
        "rlr_threshold": 0}


class Seen:
    def __init__(self):
        self.views = []

    def after_step(self, view):
        self.views.append(view)


@pytest.mark.parametrize("aggregator,extra", [("deepsight", {"deepsight_samples": 40, "deepsight_min_cluster_size": 2}),
                                              ("freqfed", {})])
def test_the_servers_aggregate_is_the_rules_on_the_rounds_updates_and_inputs(tiny, aggregator, extra):
    cfg = make_config({**BASE, "aggregator": aggregator, **extra})
    seen = Seen()
    sim = Simulation(cfg, build_federation(cfg, tiny()), observers=[seen])
    rule = sim.server.rule
    slices = sim.layout.slices()
    assert rule.weight == slices["fc2.weight"] and rule.shape == (10, 128)  # the paper CNN's output layer
    if aggregator == "deepsight":
        assert isinstance(rule, DeepSight) and rule.bias == slices["fc2.bias"] and rule.input_shape == (1, 28, 28)
    else:
        assert isinstance(rule, FreqFed)
    for r in (1, 2):
        rec = sim.run_round(r)
        v = seen.views[-1]
        fresh = (DeepSight(rule.weight, rule.shape, rule.bias, rule.input_shape, samples=40, min_cluster_size=2)
                 if aggregator == "deepsight" else FreqFed(rule.weight, rule.shape))
        fresh.set_round_inputs(RoundInputs(global_params=v.before, probe=ModelProbe(sim.model, sim.layout).bound(v.before)))
        expected = fresh(v.updates, weights=torch.as_tensor(sim.fed.agent_sizes[list(range(6))], dtype=torch.float32))
        torch.testing.assert_close(v.after, v.before + expected, rtol=0, atol=1e-6)
        assert rec.excluded == fresh.telemetry["rejected_rows"]  # all six agents each round, in id order
    sim.engine.close()


def test_configs_they_cannot_act_in_are_refused_before_work(tiny):
    with pytest.raises(ValueError, match="deepsight_tau"):
        make_config({**BASE, "aggregator": "deepsight", "deepsight_tau": 0})
    inert = make_config({**BASE, "aggregator": "fedavg", "deepsight_samples": 10}).inert_keys()
    assert inert["deepsight_samples"] == "aggregator fedavg (only deepsight)"  # a warning, out of the config hash
    # a model without an output layer of num_classes rows: refused when the server is built, before any round
    import robustlr
    from robustlr.models.registry import unregister_model
    from torch import nn

    robustlr.register_model("test-no-output-layer", lambda c: nn.Sequential(  # a frozen last layer
        nn.Flatten(), nn.Linear(784, 20), nn.Linear(20, c).requires_grad_(False)),
                            input_shape=(1, 28, 28), replace=True)
    try:
        cfg = make_config({**BASE, "aggregator": "freqfed", "model": "test-no-output-layer"})
        with pytest.raises(Exception, match="the model has no output layer: no trainable 2-D parameter with 10 rows"):
            Simulation(cfg, build_federation(cfg, tiny()))
    finally:
        unregister_model("test-no-output-layer")
