"""Three rounds through Flower (the ClientApp and the server's strategy, driven by an in-process
Grid) against the built-in simulator, on a tiny config with fixed seeds.

A Flower client replies with its local *weights* (global + update, in float32) and the server
takes the update back as weights - global, which may differ from the update in its last bit
(Sterbenz: exact when the two are within a factor 2, not in general). Measured on this machine
(Intel Xeon, 2 cores): sign + clip + noise and C 0.5 with the RLR schedule give bitwise the same
model after 3 rounds (max difference 0.0); the bound there is 1e-5, for the last-bit differences
other data could show, and the accuracies must agree too. The third config starts from a saved
model and attacks from round 2; the fourth boosts the corrupt update x 20 and the norm screen
rejects it (the same agents, for the same reason, on both); the fifth projects a boosted update
onto the agent's clean norm under multi-Krum (measured 3.0e-8 apart here, not bitwise: the
multi-Krum mean of the weights-minus-global rows). The last test asks for more than closeness:
both paths call one server step, so on FedAvg + RLR and on a schedule with a screened boost their
round records (timings aside) and models must be identical. Budget: about 250 s on 2 cores
(fourteen 3-round runs).
"""

import pytest
import torch

flwr = pytest.importorskip("flwr", reason="the Flower extra: pip install 'robustlr[flower]'")

from robustlr.integrations.flower.apps import CONFIG_KEY, flat_of, make_client_app, run_on_grid  # noqa: E402
from robustlr.integrations.flower.inprocess import InProcessGrid  # noqa: E402
from robustlr.sim.config import load_config  # noqa: E402
from robustlr.sim.loop import run_experiment  # noqa: E402


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for key, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, key, value)


def _both_paths(overrides: list[str], data_dir):
    """3 rounds of demo-iid (600 images) with ``overrides``, on the simulator and through Flower."""
    cfg = load_config("demo-iid", ["rounds=3", "train_limit=600", "eval_every=1", "precision=fp32",
                                   "train_mode=sequential", "threads=1", *overrides])
    ours = run_experiment(cfg, data_dir=str(data_dir))
    grid = InProcessGrid(make_client_app(), num_nodes=10, run_config={CONFIG_KEY: cfg.to_json(),
                                                                      "robustlr-data-dir": str(data_dir)})
    return cfg, ours, grid, run_on_grid(grid, cfg, str(data_dir))


# FedAvg + RLR theta 4 of 10, the plain case, is in the last test (bitwise, records too)
@pytest.mark.parametrize("overrides", [
    ["aggregator='sign'", "rlr_threshold=0", "clip_norm=4", "noise_sigma=0.001"],
    ["participation=0.5", "rlr_threshold=2", "rlr_from_round=2"],  # 5 of 10 agents per round, RLR from round 2
    # a warm start, the corrupt agent honest in round 1, then Neurotoxin with the update the node saw between rounds
    ["init_model='WARM'", "attack_from_round=2", "neurotoxin_top_percent=5"],
    ["boost_factor=20.0", "screen_norm_multiple=3.0"],      # a boosted update, rejected by the norm screen
    # the corrupt agent's own PGD (pgd_radius) runs in the ClientApp too
    ["boost_factor=10.0", "stealth='project'", "pgd_radius=0.5", "aggregator='multikrum'", "rlr_threshold=0"],
    # FLTrust: the ServerApp trains the server's own update on the same root set as the simulator
    ["aggregator='fltrust'", "fltrust_root_size=50", "boost_factor=10.0"],
    # DeepSight: the ServerApp runs each reply's model on the random inputs, as the simulator's server
    ["aggregator='deepsight'", "deepsight_samples=50", "deepsight_min_cluster_size=2", "boost_factor=10.0"],
    # CRFL: the ServerApp sends the nodes the global model plus the same seeded noise, and clips the same
    ["crfl=true", "crfl_sigma=0.001", "crfl_rho_slope=0.01", "crfl_rho_intercept=8.0"],
], ids=["sign-clip-noise", "participation-schedule", "warm-start-late-neurotoxin", "boost-screened",
        "stealth-pgd-multikrum", "fltrust-rlr-boost", "deepsight-rlr-boost", "crfl-rlr"])
def test_flower_gives_the_simulators_model(fmnist_dir, overrides, tmp_path):
    if any("WARM" in o for o in overrides):
        from robustlr.models import build_model

        torch.manual_seed(123)
        torch.save(build_model("mnist-cnn").state_dict(), tmp_path / "warm.pt")
        overrides = [o.replace("WARM", str(tmp_path / "warm.pt")) for o in overrides]
    cfg, ours, grid, result = _both_paths(overrides, fmnist_dir)
    assert grid.failed == 0
    theirs = flat_of(result.arrays, cfg)
    diff = (theirs - ours.global_params).abs().max().item()
    print(f"max |flower - simulator| after 3 rounds: {diff:.2e}")
    assert diff <= 1e-5
    assert [r.rlr_on for r in result.robustlr_records] == [r.rlr_on for r in ours.records]
    assert [r.rejected for r in result.robustlr_records] == [r.rejected for r in ours.records]
    assert [[x["reason"] for x in r.rejections] for r in result.robustlr_records] == \
        [[x["reason"] for x in r.rejections] for r in ours.records]
    if "aggregator='fltrust'" in overrides or "aggregator='deepsight'" in overrides:  # the same agents left out
        assert [r.excluded for r in result.robustlr_records] == [r.excluded for r in ours.records]
    if "crfl=true" in overrides:  # the clip bound and factor of every round
        assert [(r.crfl_rho, r.crfl_clip_scale) for r in result.robustlr_records] == \
            [(r.crfl_rho, r.crfl_clip_scale) for r in ours.records]
        assert any(r.crfl_clip_scale < 1 for r in ours.records)
    if "screen_norm_multiple=3.0" in overrides:  # the one corrupt agent of 10, boosted, every round
        assert all([x["reason"] for x in r.rejections] == ["norm"] for r in ours.records)
    final = result.evaluate_metrics_serverapp[3]
    last = ours.evaluated[-1]
    assert final["val_acc"] == pytest.approx(last.val_acc, abs=2e-3)
    assert final["backdoor_acc"] == pytest.approx(last.backdoor_acc, abs=2e-2)


def test_a_node_that_does_not_reply_is_recorded_and_the_round_goes_on(fmnist_dir):
    """A straggler (here a node whose ClientApp fails) sends no reply: the round aggregates the
    replies it has, and the round record names the missing agent as rejected."""
    from robustlr.integrations.flower import apps

    cfg = load_config("demo-iid", ["rounds=2", "train_limit=300", "precision=fp32", "threads=1",
                                   "checkpoint_every=0"])
    from flwr.clientapp import ClientApp

    client = ClientApp()

    @client.train()
    def flaky(msg, context):
        if int(msg.content["config"]["agent-id"]) == 3:
            raise TimeoutError("this node is too slow")
        return apps.train_message(msg, context)

    grid = InProcessGrid(client, num_nodes=10, run_config={CONFIG_KEY: cfg.to_json(),
                                                           "robustlr-data-dir": str(fmnist_dir)})
    result = run_on_grid(grid, cfg, str(fmnist_dir))
    assert grid.failed == 2  # agent 3 in each of the 2 rounds
    assert [(r.round, r.agents, r.rejected) for r in result.robustlr_records] == [(1, 9, [3]), (2, 9, [3])]
    assert result.train_metrics_clientapp[2]["replies"] == 9


TIMING = {"seconds", "seconds_training", "seconds_aggregation", "seconds_telemetry"}


@pytest.mark.parametrize("overrides", [
    [],                                                     # FedAvg + RLR theta 4 of 10: flips, vote telemetry
    ["participation=0.5", "rlr_threshold=2", "rlr_from_round=2", "boost_factor=20.0", "screen_norm_multiple=3.0"],
], ids=["fedavg-rlr", "schedule-boost-screened"])
def test_one_server_step_the_same_records_and_model_on_flower(fmnist_dir, overrides):
    """Both paths call robustlr.sim.server.Server.step: after 3 rounds the global models are equal
    bit for bit and every field of every round record (vote telemetry, flips per layer, norms,
    rejections, evaluation) is the same, timings aside."""
    cfg, ours, grid, result = _both_paths(overrides, fmnist_dir)
    assert torch.equal(flat_of(result.arrays, cfg), ours.global_params)
    theirs = [r.model_dump(exclude=TIMING) for r in result.robustlr_records]
    mine = [r.model_dump(exclude=TIMING) for r in ours.records]
    assert len(theirs) == len(mine) == 3
    for a, b in zip(theirs, mine):
        assert a == b, {k: (a[k], b[k]) for k in a if a[k] != b[k]}
    if not overrides:  # RLR on every round: the vote telemetry is there, on both paths
        assert all(r["flipped_fraction"] > 0 and r["flipped_per_layer"] and r["honest_agreement"] is not None
                   for r in theirs)
    else:  # RLR from round 2; the boosted corrupt update is screened out in every round it is sampled
        assert [r["rlr_on"] for r in theirs] == [False, True, True]
        assert any(r["rejections"] and r["rejections"][0]["reason"] == "norm" for r in theirs)
