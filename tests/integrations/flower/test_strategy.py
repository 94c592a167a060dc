"""The Flower strategies on hand-made replies: exact aggregates, agreement with Flower's own
rules, and malformed replies dropped (Flower's Message API, no Ray, no network)."""

import numpy as np
import pytest
import torch

flwr = pytest.importorskip("flwr", reason="the Flower extra: pip install 'robustlr[flower]'")
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAvg, FedMedian  # noqa: E402

from robustlr.aggregation import CoordinateMedian  # noqa: E402
from robustlr.aggregation import FedAvg as RuleFedAvg  # noqa: E402
from robustlr.integrations.flower import (RobustLRStrategy, RuleStrategy, sign_aggregation_strategy,  # noqa: E402
                                          trainable_keys)



@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    """Messages need the identity a ServerApp process has (run, task, node)."""
    from flwr.supercore.task_identity import TaskIdentity

    for key, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, key, value)


U = np.array([[1.0, -2.0, 3.0], [1.0, 2.0, -3.0], [1.0, 2.0, 3.0]], dtype=np.float32)


class _Grid:
    """Just enough of a Grid for configure_train: the node ids."""

    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def _global(arrays):
    return ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()})


def _reply(node, arrays, n=1, arrays_key="arrays"):
    instruction = Message(RecordDict({"arrays": ArrayRecord()}), dst_node_id=node, message_type=MessageType.TRAIN)
    content = RecordDict({arrays_key: ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                          "metrics": MetricRecord({"num-examples": n})})
    return Message(content, reply_to=instruction)


def _configure(strategy, g, nodes=(1, 2, 3)):
    list(strategy.configure_train(1, g, ConfigRecord(), _Grid(nodes)))


def test_rlr_around_fedavg_gives_the_paper_example():
    g = _global({"w": np.zeros(3)})
    s = RobustLRStrategy(FedAvg(min_available_nodes=3, min_train_nodes=3), threshold=2)
    _configure(s, g)
    arrays, metrics = s.aggregate_train(1, [_reply(i + 1, {"w": U[i]}) for i in range(3)])
    np.testing.assert_allclose(arrays["w"].numpy(), [1.0, -2 / 3, -1.0], rtol=1e-6)
    assert metrics["rlr-flipped-fraction"] == pytest.approx(2 / 3) and metrics["rlr-threshold"] == 2
    assert metrics["rlr-flipped-fraction/w"] == pytest.approx(2 / 3) and metrics["dropped-replies"] == 0


def test_rlr_with_eta_and_a_global_model_that_is_not_zero():
    g = _global({"w": np.full(3, 10.0)})
    s = RobustLRStrategy(FedAvg(min_available_nodes=3, min_train_nodes=3), threshold=2, server_lr=0.5)
    _configure(s, g)
    arrays, _ = s.aggregate_train(1, [_reply(i + 1, {"w": 10.0 + U[i]}) for i in range(3)])
    np.testing.assert_allclose(arrays["w"].numpy(), 10.0 + 0.5 * np.array([1.0, -2 / 3, -1.0]), rtol=1e-6)


def test_buffers_are_averaged_plainly_neither_flipped_nor_scaled():
    g = _global({"w": np.zeros(3), "running_var": np.ones(3)})
    s = RobustLRStrategy(FedAvg(min_available_nodes=3, min_train_nodes=3), threshold=3, server_lr=0.5,
                         flip_keys=["w"])
    _configure(s, g)
    var = np.array([[1.2, 0.9, 1.0], [1.5, 1.1, 1.0], [0.9, 1.0, 1.3]], dtype=np.float32)
    arrays, metrics = s.aggregate_train(1, [_reply(i + 1, {"w": U[i], "running_var": var[i]}) for i in range(3)])
    np.testing.assert_allclose(arrays["running_var"].numpy(), var.mean(0), rtol=1e-6)
    np.testing.assert_allclose(arrays["w"].numpy(), 0.5 * np.array([1.0, -2 / 3, -1.0]), rtol=1e-6)
    assert "rlr-flipped-fraction/running_var" not in metrics


def test_rlr_around_fedmedian_flips_flowers_median():
    g = _global({"w": np.zeros(3)})
    s = RobustLRStrategy(FedMedian(min_available_nodes=3, min_train_nodes=3), threshold=2)
    _configure(s, g)
    arrays, _ = s.aggregate_train(1, [_reply(i + 1, {"w": U[i]}) for i in range(3)])
    # median per coordinate: 1, 2, 3; votes 3, 1, 1 -> kept, flipped, flipped
    np.testing.assert_array_equal(arrays["w"].numpy(), [1.0, -2.0, -3.0])


def test_our_comed_agrees_with_flowers_fedmedian():
    rng = np.random.default_rng(0)
    g = {"a": rng.normal(size=(4, 3)), "b": rng.normal(size=5)}
    for n in (4, 5):  # even and odd counts
        rows = [{k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in g.items()} for _ in range(n)]
        ours = RuleStrategy(CoordinateMedian(), min_available_nodes=n, min_train_nodes=n)
        theirs = FedMedian(min_available_nodes=n, min_train_nodes=n)
        _configure(ours, _global(g), range(1, n + 1))
        a, _ = ours.aggregate_train(1, [_reply(i + 1, r) for i, r in enumerate(rows)])
        b, _ = theirs.aggregate_train(1, [_reply(i + 1, r) for i, r in enumerate(rows)])
        for k in g:
            np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad, reason", [
    ({"w": np.array([np.nan, 0, 0], dtype=np.float32)}, "non-finite"),
    ({"w": np.zeros(4, dtype=np.float32)}, "wrong shape"),
    ({"v": np.zeros(3, dtype=np.float32)}, "other arrays"),
    ({"w": np.zeros(3, dtype=np.float16)}, "wrong dtype"),
])
def test_malformed_replies_are_dropped_and_counted(bad, reason):
    g = _global({"w": np.zeros(3)})
    s = RobustLRStrategy(FedAvg(min_available_nodes=3, min_train_nodes=3), threshold=2)
    _configure(s, g)
    replies = [_reply(i + 1, {"w": U[i]}) for i in range(3)] + [_reply(9, bad)]
    arrays, metrics = s.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["w"].numpy(), [1.0, -2 / 3, -1.0], rtol=1e-6)  # as without it
    assert metrics["dropped-replies"] == 1 and metrics[f"dropped-replies/{reason}"] == 1


@pytest.mark.parametrize("make", [
    lambda: RobustLRStrategy(FedAvg(min_available_nodes=3, min_train_nodes=3), threshold=2, screen_norm_multiple=3),
    lambda: RuleStrategy(RuleFedAvg(), screen_norm_multiple=3,
                         min_available_nodes=3, min_train_nodes=3),
], ids=["rlr-wrapper", "rule-strategy"])
def test_norm_screen_drops_a_reply_far_above_the_median(make):
    g = _global({"w": np.zeros(3)})
    s = make()
    _configure(s, g)
    # norms of U's rows: sqrt(14) each; the fourth reply's norm 100 > 3 x sqrt(14) (the median)
    replies = [_reply(i + 1, {"w": U[i]}) for i in range(3)] + [_reply(9, {"w": np.array([0, 60, 80], np.float32)})]
    arrays, metrics = s.aggregate_train(1, replies)
    expected = [1.0, -2 / 3, -1.0] if isinstance(s, RobustLRStrategy) else U.mean(0)
    np.testing.assert_allclose(arrays["w"].numpy(), expected, rtol=1e-6)  # as without the big reply
    assert metrics["dropped-replies"] == 1 and metrics["dropped-replies/norm"] == 1
    with pytest.raises(ValueError, match="screen_norm_multiple must be a finite number >= 0"):
        RuleStrategy(CoordinateMedian(), screen_norm_multiple=-1)


def test_sign_aggregation_strategy_steps_by_eta():
    g = _global({"w": np.zeros(4)})
    s = sign_aggregation_strategy(min_available_nodes=3, min_train_nodes=3)
    _configure(s, g)
    rows = np.array([[1.0, -2.0, 3.0, 0.0], [1.0, 2.0, -3.0, 0.0], [1.0, 2.0, 3.0, -1.0]], dtype=np.float32)
    arrays, _ = s.aggregate_train(1, [_reply(i + 1, {"w": rows[i]}) for i in range(3)])
    np.testing.assert_allclose(arrays["w"].numpy(), [1e-3, 1e-3, 1e-3, -1e-3], rtol=1e-6)


def test_trainable_keys_leave_out_batch_norm_buffers():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    assert trainable_keys(model) == ["0.weight", "0.bias", "1.weight", "1.bias"]


def test_a_bad_threshold_is_refused_at_construction():
    with pytest.raises(TypeError, match="threshold"):
        RobustLRStrategy(FedAvg())  # theta is required
    with pytest.raises(ValueError, match=r"threshold=2.5: use an integer count of agents or a fraction in \(0, 1\)"):
        RobustLRStrategy(FedAvg(), threshold=2.5)
    with pytest.raises(ValueError, match="count of agents >= 0"):
        RobustLRStrategy(FedAvg(), threshold=-1)
    # one form: 0.4 is a share of the round, 4 a count
    assert RobustLRStrategy(FedAvg(), threshold=0.4).threshold.fraction == 0.4
    assert RobustLRStrategy(FedAvg(), threshold=4).threshold.count == 4


@pytest.mark.parametrize("make", [
    lambda **kw: RobustLRStrategy(FedAvg(min_available_nodes=4, min_train_nodes=4), threshold=0, **kw),
    lambda **kw: RuleStrategy(RuleFedAvg(), **kw),
], ids=["rlr-around-fedavg", "rule-strategy"])
def test_a_claimed_weight_is_capped_at_ten_times_the_median_claim(make):
    """One reply claiming 10**9 examples took over FedAvg in 0.2; now its claim counts as 10 x the
    round's median (here 10 x 2 = 20), in the inner Flower strategy too."""
    g = _global({"w": np.zeros(2)})
    s = make()
    _configure(s, g, nodes=(1, 2, 3, 4))
    rows = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [-9.0, 5.0]], dtype=np.float32)
    claims = [2, 2, 2, 10**9]
    arrays, metrics = s.aggregate_train(1, [_reply(i + 1, {"w": rows[i]}, n=claims[i]) for i in range(4)])
    expected = (2 * rows[0] + 2 * rows[1] + 2 * rows[2] + 20 * rows[3]) / 26  # [-6.69, 4.08]
    np.testing.assert_allclose(arrays["w"].numpy(), expected, rtol=1e-6)
    assert metrics["capped-weights"] == 1 and metrics["dropped-replies"] == 0
    equal = make(weighting="equal")
    _configure(equal, g, nodes=(1, 2, 3, 4))
    arrays, metrics = equal.aggregate_train(1, [_reply(i + 1, {"w": rows[i]}, n=claims[i]) for i in range(4)])
    np.testing.assert_allclose(arrays["w"].numpy(), rows.mean(0), rtol=1e-6)  # [-1.5, 2.0]


def test_the_norm_screen_is_on_by_default_and_drops_a_reply_near_the_float_range():
    g = _global({"w": np.zeros(3)})
    for s in (RobustLRStrategy(FedAvg(min_available_nodes=4, min_train_nodes=4), threshold=2),
              RuleStrategy(RuleFedAvg())):
        assert s.screen_norm_multiple == 10.0 and s.max_weight_multiple == 10.0 and s.weighting == "claimed"
        _configure(s, g, nodes=(1, 2, 3, 4))
        replies = [_reply(i + 1, {"w": U[i]}) for i in range(3)] + [_reply(4, {"w": np.full(3, 1e38, np.float32)})]
        arrays, metrics = s.aggregate_train(1, replies)
        assert metrics["dropped-replies"] == 1 and metrics["dropped-replies/norm"] == 1
        assert np.isfinite(arrays["w"].numpy()).all() and np.abs(arrays["w"].numpy()).max() <= 3.0


def test_bad_weighting_arguments_are_refused():
    with pytest.raises(ValueError, match="weighting must be 'claimed'"):
        RuleStrategy(RuleFedAvg(), weighting="sizes")
    with pytest.raises(ValueError, match="max_weight_multiple must be a finite number >= 1"):
        RobustLRStrategy(FedAvg(), threshold=2, max_weight_multiple=0.5)


def test_signguard_in_a_rule_strategy_gives_the_simulators_aggregate_on_the_same_replies():
    from robustlr.aggregation import SignGuard

    pytest.importorskip("sklearn")
    rng = np.random.default_rng(3)
    g = {"a": rng.normal(size=(30, 4)), "b": rng.normal(size=20)}
    n = 8
    rows = [{k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in g.items()} for _ in range(n)]
    rows[7] = {k: (v + 50 * rng.normal(size=v.shape)).astype(np.float32) for k, v in g.items()}  # a huge reply
    ours = RuleStrategy(SignGuard(generator=torch.Generator().manual_seed(4)), screen_norm_multiple=0,
                        min_available_nodes=n, min_train_nodes=n)
    _configure(ours, _global(g), range(1, n + 1))
    arrays, _ = ours.aggregate_train(1, [_reply(i + 1, r) for i, r in enumerate(rows)])
    # the simulator's server: the same rule on the stacked updates (float32, the layout's key order)
    flat = lambda d: torch.cat([torch.as_tensor(np.asarray(d[k], dtype=np.float32)).flatten() for k in ("a", "b")])
    updates = torch.stack([flat(r) - flat(g) for r in rows])
    sim = SignGuard(generator=torch.Generator().manual_seed(4))
    expected = flat(g) + sim(updates)
    got = torch.cat([torch.as_tensor(arrays[k].numpy()).flatten() for k in ("a", "b")])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert 7 in sim.telemetry["norm_rejected_rows"] and ours.rule.telemetry["admitted_agents"] == [
        i + 1 for i in sim.telemetry["admitted_rows"]]


def test_fltrust_in_a_rule_strategy_gives_the_simulators_aggregate_with_the_servers_own_update():
    from robustlr.aggregation import FLTrust
    from robustlr.integrations.flower import fltrust_strategy

    rng = np.random.default_rng(5)
    g = {"a": rng.normal(size=(30, 4)), "b": rng.normal(size=20)}
    n = 6
    rows = [{k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in g.items()} for _ in range(n)]
    server_model = {k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in g.items()}
    seen = []

    def reference_fn(server_round, arrays):  # the server's training on its root data, here a fixed model
        seen.append((server_round, sorted(arrays.keys())))
        return ArrayRecord({k: Array(server_model[k]) for k in ("a", "b")})

    with pytest.raises(ValueError, match="pass reference_fn"):
        RuleStrategy(FLTrust())
    ours = fltrust_strategy(reference_fn, screen_norm_multiple=0, min_available_nodes=n, min_train_nodes=n)
    _configure(ours, _global(g), range(1, n + 1))
    arrays, _ = ours.aggregate_train(1, [_reply(i + 1, r) for i, r in enumerate(rows)])
    assert seen == [(1, ["a", "b"])]
    flat = lambda d: torch.cat([torch.as_tensor(np.asarray(d[k], dtype=np.float32)).flatten() for k in ("a", "b")])
    updates = torch.stack([flat(r) - flat(g) for r in rows])
    sim = FLTrust()
    sim.set_reference(flat(server_model) - flat(g))
    expected = flat(g) + sim(updates)
    got = torch.cat([torch.as_tensor(arrays[k].numpy()).flatten() for k in ("a", "b")])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert ours.rule.telemetry["rejected_agents"] == [i + 1 for i in sim.telemetry["rejected_rows"]]


def test_fldetector_in_a_rule_strategy_keeps_its_state_across_rounds_as_the_simulators_rule():
    from robustlr.aggregation import FLDetector

    rng = np.random.default_rng(7)
    n, rounds = 4, 6
    ours = RuleStrategy(FLDetector(window=1, generator=torch.Generator().manual_seed(3)), screen_norm_multiple=0,
                        min_available_nodes=n, min_train_nodes=n)
    sim = FLDetector(window=1, generator=torch.Generator().manual_seed(3))
    w = np.zeros(5, dtype=np.float32)
    w_sim = torch.zeros(5)
    for r in range(1, rounds + 1):
        rows = [(-0.1 * (w - c)).astype(np.float32) for c in (1.0, 2.0, 3.0)] + [rng.normal(size=5).astype(np.float32)]
        _configure(ours, _global({"w": w}), range(1, n + 1))
        arrays, _ = ours.aggregate_train(r, [_reply(i + 1, {"w": w + u}) for i, u in enumerate(rows)])
        sim.set_global(w_sim)
        w_sim = w_sim + sim(torch.stack([torch.as_tensor((w + u) - w) for u in rows]), agent_ids=[1, 2, 3, 4])
        w = arrays["w"].numpy()
        torch.testing.assert_close(torch.as_tensor(w), w_sim, rtol=1e-5, atol=1e-6)
        assert ours.rule.telemetry["rejected_agents"] == sim.telemetry["rejected_agents"]
    assert ours.rule.telemetry["predicted"]


@pytest.mark.parametrize("which", ["deepsight", "freqfed"])
def test_deepsight_and_freqfed_in_a_rule_strategy_give_the_rules_aggregate_on_the_same_replies(which):
    pytest.importorskip("sklearn")
    from torch import nn

    from robustlr.aggregation import DeepSight, FreqFed, ModelProbe, ParamLayout, RoundInputs

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 4))
    layout = ParamLayout.from_module(model)
    out = layout.output_layer(4)
    make = (lambda: DeepSight(out.weight, out.shape, out.bias, (5,), samples=30, min_cluster_size=2)) \
        if which == "deepsight" else (lambda: FreqFed(out.weight, out.shape))
    rng = np.random.default_rng(9)
    g = {k: v.numpy() for k, v in model.state_dict().items()}
    n = 7
    rows = [{k: (v + 0.1 * rng.normal(size=v.shape)).astype(np.float32) for k, v in g.items()} for i in range(n)]
    rows[6]["2.weight"][0] += 2.0
    if which == "deepsight":
        with pytest.raises(ValueError, match="pass model="):
            RuleStrategy(make())
    ours = RuleStrategy(make(), model=model, screen_norm_multiple=0, min_available_nodes=n, min_train_nodes=n)
    _configure(ours, _global(g), range(1, n + 1))
    arrays, _ = ours.aggregate_train(1, [_reply(i + 1, r) for i, r in enumerate(rows)])
    flat = lambda d: torch.cat([torch.as_tensor(np.asarray(d[k], dtype=np.float32)).flatten() for k in g])
    updates = torch.stack([flat(r) - flat(g) for r in rows])
    sim = make()
    sim.set_round_inputs(RoundInputs(global_params=flat(g), probe=ModelProbe(model, layout).bound(flat(g))))
    expected = flat(g) + sim(updates, weights=torch.ones(n))
    got = torch.cat([torch.as_tensor(arrays[k].numpy()).flatten() for k in g])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert ours.rule.telemetry["rejected_agents"] == [i + 1 for i in sim.telemetry["rejected_rows"]]
    if which == "deepsight":  # the seventh moved its output weights towards class 0 only: suspicious, left out
        assert 6 in sim.telemetry["suspicious_rows"] and 7 in ours.rule.telemetry["rejected_agents"]


def test_a_stateful_rule_keeps_its_state_in_the_serverapps_context_and_a_new_strategy_resumes_from_it():
    from flwr.app import Context, RecordDict

    from robustlr.aggregation import FLDetector
    from robustlr.integrations.flower.strategy import RULE_STATE_KEY

    n = 4
    rng = np.random.default_rng(3)
    rounds = [[np.full(5, -0.1 * (c + r), dtype=np.float32) for c in (1.0, 2.0, 3.0)]
              + [rng.normal(size=5).astype(np.float32)] for r in range(6)]

    def play(strategy, w, rs):
        for r in rs:
            _configure(strategy, _global({"w": w}), range(1, n + 1))
            arrays, _ = strategy.aggregate_train(r + 1, [_reply(i + 1, {"w": w + u}) for i, u in enumerate(rounds[r])])
            w = arrays["w"].numpy()
        return w

    make = lambda ctx: RuleStrategy(FLDetector(window=1, generator=torch.Generator().manual_seed(3)), context=ctx,  # noqa: E731
                                    screen_norm_multiple=0, min_available_nodes=n, min_train_nodes=n)
    straight = play(make(None), np.zeros(5, dtype=np.float32), range(6))
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    first = make(ctx)
    w = play(first, np.zeros(5, dtype=np.float32), range(3))
    assert ctx.state[RULE_STATE_KEY]["round"] == 3
    second = make(ctx)  # a restarted ServerApp: a new rule object, its state from the context
    assert len(second.rule._S) == len(first.rule._S) == 1 and second.rule._last.keys() == first.rule._last.keys()
    second.rule.generator.set_state(first.rule.generator.get_state())  # (the generator is the caller's)
    np.testing.assert_array_equal(play(second, w, range(3, 6)), straight)
