"""The Flower ServerApp trusts no client (issue 25): a reply counts for the agent the server sent to
its node, whatever its metrics claim; the rule's weights are the federation's sizes; a malformed
reply is dropped and recorded, never fatal; a finite reply near the float range is screened by the
norm screen, or stops the run with a clear error instead of reporting a garbage model.

Each case runs 2 rounds of demo-iid (600 images, FedAvg + RLR theta 4 of 10) through the real
ExperimentStrategy on an in-process grid, with some agents' replies tampered with (six runs in all)."""

import math

import pytest
import torch

flwr = pytest.importorskip("flwr", reason="the Flower extra: pip install 'robustlr[flower]'")

from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from robustlr.errors import TrainingError  # noqa: E402
from robustlr.integrations.flower import apps  # noqa: E402
from robustlr.integrations.flower.apps import CONFIG_KEY, flat_of, run_on_grid  # noqa: E402
from robustlr.integrations.flower.inprocess import InProcessGrid  # noqa: E402
from robustlr.sim.config import load_config  # noqa: E402


TIMING = {"seconds", "seconds_training", "seconds_aggregation", "seconds_telemetry"}


@pytest.fixture(autouse=True, scope="module")
def _task_identity():
    """Messages need the identity a ServerApp process has (run, task, node)."""
    from flwr.supercore.task_identity import TaskIdentity

    with pytest.MonkeyPatch.context() as mp:
        for key, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
            mp.setattr(TaskIdentity, key, value)
        yield


def _run(data_dir, tamper=None, overrides=(), agent=3):
    """``tamper`` changes agent ``agent``'s reply; a dict {agent: tamper} changes several."""
    cfg = load_config("demo-iid", ["rounds=2", "train_limit=600", "eval_every=1", "precision=fp32",
                                   "train_mode=sequential", "threads=1", *overrides])
    tampers = tamper if isinstance(tamper, dict) else ({agent: tamper} if tamper is not None else {})
    client = ClientApp()

    @client.train()
    def train(msg, context):
        reply = apps.train_message(msg, context)
        who = int(msg.content["config"]["agent-id"])
        if who in tampers:
            tampers[who](reply)
        return reply

    grid = InProcessGrid(client, num_nodes=10, run_config={CONFIG_KEY: cfg.to_json(),
                                                           "robustlr-data-dir": str(data_dir)})
    return cfg, grid, run_on_grid(grid, cfg, str(data_dir))


def _set_metric(key, value):
    def tamper(reply):
        metrics = dict(reply.content["metrics"])
        metrics[key] = value
        reply.content["metrics"] = MetricRecord(metrics)
    return tamper


def _drop_metric(key):
    def tamper(reply):
        reply.content["metrics"] = MetricRecord({k: v for k, v in dict(reply.content["metrics"]).items() if k != key})
    return tamper


def _fill_arrays(value):
    def tamper(reply):
        arrays = reply.content["arrays"]
        reply.content["arrays"] = ArrayRecord({k: Array(torch.full_like(torch.from_numpy(arrays[k].numpy()),
                                                                        value).numpy()) for k in arrays.keys()})
    return tamper


def test_what_a_reply_says_about_itself_changes_nothing(fmnist_dir):
    """Six agents' replies lie about themselves, each in its own way, in one run: the model is
    bitwise the honest run's and every agent counts once, as itself."""
    lies = {
        1: _drop_metric("agent-id"),            # 0.2: KeyError in the ServerApp
        2: _set_metric("agent-id", float("nan")),  # 0.2: ValueError
        4: _set_metric("agent-id", [1, 2]),     # 0.2: TypeError
        3: _set_metric("agent-id", 5),          # 0.2: agent 3's update averaged in as agent 5's, 3 "rejected"
        5: _set_metric("num-examples", 10**9),  # 0.2: one reply took over FedAvg
        6: _drop_metric("num-examples"),        # not read: the federation knows the agent's size
    }
    cfg, _, honest = _run(fmnist_dir)
    cfg, grid, lying = _run(fmnist_dir, lies)
    assert torch.equal(flat_of(lying.arrays, cfg), flat_of(honest.arrays, cfg))
    assert [(r.agents, r.rejected) for r in lying.robustlr_records] == [(10, []), (10, [])]
    assert [r.model_dump(exclude=TIMING) for r in lying.robustlr_records] == \
        [r.model_dump(exclude=TIMING) for r in honest.robustlr_records]


def test_a_finite_reply_near_the_float_range_is_screened_or_stops_the_run(fmnist_dir):
    """A NaN reply is dropped and recorded. 1e38 everywhere: with the norm screen (3 x the round's median) it is dropped as 'norm' and the
    run goes on; without it the averaged model's outputs overflow and the run stops with a clear
    error (robustlr 0.2 finished with val_acc 0.1 and val_loss null)."""
    cfg, grid, result = _run(fmnist_dir, _fill_arrays(1e38), ["screen_norm_multiple=3.0"])
    assert [[x["reason"] for x in r.rejections] for r in result.robustlr_records] == [["norm"], ["norm"]]
    # the same nine updates aggregated as when agent 3's reply is NaN: dropped as non-finite,
    # recorded, never fatal
    cfg, _, without_3 = _run(fmnist_dir, _fill_arrays(float("nan")), ["screen_norm_multiple=3.0"])
    assert [(r.agents, r.rejected, [x["reason"] for x in r.rejections]) for r in without_3.robustlr_records] == \
        [(9, [3], ["non-finite"]), (9, [3], ["non-finite"])]
    assert torch.equal(flat_of(result.arrays, cfg), flat_of(without_3.arrays, cfg))
    assert math.isfinite(result.robustlr_records[-1].val_loss)
    # the mean of one 1e38 reply and nine honest ones is finite (1e37): the model stays finite and its
    # evaluation overflows, which the step after evaluation refuses
    with pytest.raises(TrainingError) as info:
        _run(fmnist_dir, _fill_arrays(1e38))
    assert str(info.value) == ("round 1: the validation loss is nan (the global model's outputs overflow): the run's "
                               "numbers would be garbage. Turn on screen_norm_multiple, which drops such an update "
                               "before it is averaged in")


def test_a_second_reply_from_a_node_is_rejected_as_unexpected(fmnist_dir, monkeypatch):
    real = InProcessGrid.send_and_receive

    def twice(self, messages, *, timeout=None):
        replies = list(real(self, messages, timeout=timeout))
        return replies + replies[:1]  # the first node answers twice

    monkeypatch.setattr(InProcessGrid, "send_and_receive", twice)
    cfg, grid, result = _run(fmnist_dir)
    recs = result.robustlr_records
    assert all(r.agents == 10 and [x["reason"] for x in r.rejections] == ["unexpected"] for r in recs)
