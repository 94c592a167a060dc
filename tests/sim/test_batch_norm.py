"""Batch-norm buffers under the server's learning rate and the robust learning rate.

The global model's running statistics and ``num_batches_tracked`` must be the plain
(size-weighted) average of the agents' ones: eta scales trainable parameters only, and RLR
flips trainable parameters only (``rlr_scope = "trainable"``, the default). Code paths on
tiny generated 32x32 RGB data with the paper's CIFAR CNN plus batch norm.
"""

import pytest
import torch

from robustlr.aggregation import FedAvg, ParamLayout, RobustLR
from robustlr.models import build_model
from robustlr.sim.config import make_config
from robustlr.sim.federation import build_federation
from robustlr.sim.loop import Simulation

BASE = {"dataset": "cifar10", "model": "cifar-cnn-bn", "rounds": 3, "num_agents": 4, "corrupt_fraction": 0.25,
        "attack": "dba", "poison_fraction": 0.5, "local_epochs": 1, "batch_size": 16, "eval_every": 1, "seed": 0,
        "checkpoint_every": 0, "train_mode": "sequential", "threads": 1}


def _sim(tiny, **kw) -> Simulation:
    cfg = make_config({**BASE, **kw})
    return Simulation(cfg, build_federation(cfg, tiny(channels=3, size=32)))


def _round_with_updates(sim: Simulation, round_: int = 1) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Run one round; return the global vector before it, the agents' updates and the round's record."""
    captured = {}
    train_round = sim.engine.train_round

    def spy(*args, **kwargs):
        res = train_round(*args, **kwargs)
        captured["updates"] = res.updates.clone()
        return res

    sim.engine.train_round = spy
    before = sim.global_params.clone()
    rec = sim.run_round(round_)
    return before, captured["updates"], rec


def _buffer_names(layout: ParamLayout) -> list[str]:
    return [e.name for e in layout.entries if not e.is_trainable]


def test_the_bn_model_has_buffers_and_equal_agents(tiny):
    sim = _sim(tiny)
    assert {n.rsplit(".", 1)[1] for n in _buffer_names(sim.layout)} == {"running_mean", "running_var",
                                                                       "num_batches_tracked"}
    assert len(set(sim.fed.agent_sizes.tolist())) == 1  # so the size-weighted mean is the plain mean


@pytest.mark.parametrize("eta", [0.5, 3.0])
def test_server_lr_scales_parameters_but_not_buffers(tiny, eta):
    sim = _sim(tiny, server_lr=eta)
    before, updates, _ = _round_with_updates(sim)
    mean = updates.mean(dim=0)
    trainable = sim.layout.trainable_mask()
    after = sim.global_params
    torch.testing.assert_close(after[trainable], before[trainable] + eta * mean[trainable])
    torch.testing.assert_close(after[~trainable], before[~trainable] + mean[~trainable])
    state = sim.layout.unflatten(after)
    per_agent = [sim.layout.unflatten(before + u) for u in updates]
    for name in _buffer_names(sim.layout):
        expected = torch.stack([s[name].to(torch.float64) for s in per_agent]).mean(0)
        if name.endswith("num_batches_tracked"):
            # every agent ran ceil(60 / 16) = 4 batches: the average, not eta times it
            assert int(state[name]) == int(expected) == 4
        else:
            torch.testing.assert_close(state[name].to(torch.float64), expected, rtol=1e-5, atol=1e-6)
    assert all(bool((state[n] > 0).all()) for n in _buffer_names(sim.layout) if n.endswith("running_var"))


def test_rlr_never_flips_batch_norm_statistics_even_when_most_coordinates_flip(tiny):
    # theta = 4 of 4 agents: every coordinate the agents do not agree on unanimously is flipped
    sim = _sim(tiny, rlr_threshold=4)
    trainable = sim.layout.trainable_mask()
    saw_disagreeing_buffer = False
    for r in range(1, 4):
        before, updates, rec = _round_with_updates(sim, r)
        assert rec.flipped_fraction > 0.5, rec
        mean = updates.mean(dim=0)
        after = sim.global_params
        # the buffers: plainly averaged, whatever the vote
        torch.testing.assert_close(after[~trainable], before[~trainable] + mean[~trainable])
        votes = torch.sign(updates).sum(0).abs()
        saw_disagreeing_buffer |= bool((votes[~trainable] < 4).any())
        # the parameters: + mean where unanimous, - mean elsewhere
        sign = torch.where(votes >= 4, 1.0, -1.0)
        torch.testing.assert_close(after[trainable], before[trainable] + (sign * mean)[trainable])
        state = sim.layout.unflatten(after)
        for name in _buffer_names(sim.layout):
            if name.endswith("num_batches_tracked"):
                assert int(state[name]) == 4 * r  # the agents' count, never pushed back
            elif name.endswith("running_var"):
                assert bool((state[name] > 0).all())
    # the test bites: some buffer coordinates were not unanimous, so flipping them would have shown
    assert saw_disagreeing_buffer


def test_rlr_scope_all_does_flip_buffers(tiny):
    """The contrast: with ``rlr_scope = "all"`` buffers vote too (the behaviour the default avoids)."""
    sim = _sim(tiny, rlr_threshold=4, rlr_scope="all")
    trainable = sim.layout.trainable_mask()
    before, updates, _ = _round_with_updates(sim)
    mean = updates.mean(dim=0)
    plain = before + mean
    assert not torch.allclose(sim.global_params[~trainable], plain[~trainable])


def test_robust_lr_with_a_layout_leaves_a_split_num_batches_tracked_vote_alone():
    """Direct check on the rule: one agent with no batches (a zero delta, sign 0) makes the vote on
    ``num_batches_tracked`` 3 < theta = 4; over all coordinates it would be flipped to -mean."""
    model = build_model("cifar-cnn-bn")
    layout = ParamLayout.from_module(model)
    g = torch.Generator().manual_seed(0)
    updates = torch.randn(4, layout.numel, generator=g) * 0.01
    slices = layout.slices()
    for name, sl in slices.items():
        if name.endswith("num_batches_tracked"):
            updates[:, sl] = torch.tensor([[8.0], [8.0], [8.0], [0.0]])
        elif name.endswith("running_var"):
            updates[:, sl] = updates[:, sl].abs() * torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    trainable = layout.trainable_mask()
    plain = FedAvg()(updates)
    masked = RobustLR(FedAvg(), threshold=4, layout=layout)(updates)
    everything = RobustLR(FedAvg(), threshold=4)(updates)
    torch.testing.assert_close(masked[~trainable], plain[~trainable])
    nbt = [sl for name, sl in slices.items() if name.endswith("num_batches_tracked")]
    for sl in nbt:
        assert float(masked[sl]) == 6.0
        assert float(everything[sl]) == -6.0  # what flipping buffers would do


@pytest.mark.parametrize("kw", [
    {"aggregator": "fedavg"},
    {"aggregator": "comed"},
    {"aggregator": "sign"},
    {"aggregator": "foolsgold"},
    {"aggregator": "fedavg", "clip_norm": 0.05, "noise_sigma": 0.01},
    {"aggregator": "sign", "clip_norm": 0.05, "noise_sigma": 0.01, "rlr_threshold": 3},
    {"aggregator": "comed", "rlr_threshold": 4},
], ids=["fedavg", "comed", "sign", "foolsgold", "clip+noise", "sign+clip+noise+rlr", "comed+rlr"])
def test_every_rule_averages_batch_norm_buffers_plainly(tiny, kw):
    sim = _sim(tiny, **kw)
    trainable = sim.layout.trainable_mask()
    for r in (1, 2):
        before, updates, _ = _round_with_updates(sim, r)
        mean = updates.mean(dim=0)  # equal agents: the size-weighted mean is the plain one
        torch.testing.assert_close(sim.global_params[~trainable], before[~trainable] + mean[~trainable])
        state = sim.layout.unflatten(sim.global_params)
        for name in _buffer_names(sim.layout):
            if name.endswith("num_batches_tracked"):
                assert int(state[name]) == 4 * r  # ceil(60 / 16) = 4 local batches a round, averaged
            elif name.endswith("running_var"):
                assert bool((state[name] > 0).all())


def test_buffer_aggregation_rule_lets_the_rule_see_the_buffers(tiny, monkeypatch):
    """The contrast that makes the test above bite: with ``buffer_aggregation = "rule"`` the median,
    not the mean, sets the buffers."""
    import numpy as np

    from robustlr.aggregation import CoordinateMedian

    sim = _sim(tiny, aggregator="comed", buffer_aggregation="rule", comed_even="mean")
    trainable = sim.layout.trainable_mask()
    seen = []
    aggregate = CoordinateMedian.aggregate_validated

    def spy(rule, updates, weights, agent_ids):
        out = aggregate(rule, updates, weights, agent_ids)
        seen.append((updates.clone(), out.clone()))
        return out

    monkeypatch.setattr(CoordinateMedian, "aggregate_validated", spy)
    before, updates, _ = _round_with_updates(sim)
    # what the rule saw: every agent's whole update, buffer coordinates included (no PlainBuffers
    # wrapper taking them away)
    assert len(seen) == 1
    saw, produced = seen[0]
    assert saw.shape == updates.shape and torch.equal(saw[:, ~trainable], updates[:, ~trainable])
    # what it produced there: numpy's median (4 agents, even: the mean of the middle two, which is
    # comed_even = "mean"), computed apart, and it is what the global buffers moved by
    reference = torch.from_numpy(np.median(updates[:, ~trainable].double().numpy(), axis=0)).to(updates.dtype)
    torch.testing.assert_close(produced[~trainable], reference)
    torch.testing.assert_close(sim.global_params[~trainable], before[~trainable] + reference)
    # the median of the buffers is neither their mean nor torch's lower median
    assert not torch.allclose(reference, updates[:, ~trainable].mean(0))
    assert not torch.allclose(reference, updates[:, ~trainable].median(dim=0).values)
    # num_batches_tracked: every agent ran ceil(60 / 16) = 4 batches, so the median is exactly 4
    state, start = sim.layout.unflatten(sim.global_params), sim.layout.unflatten(before)
    for name in _buffer_names(sim.layout):
        if name.endswith("num_batches_tracked"):
            assert int(state[name]) - int(start[name]) == 4


def test_clipping_norms_and_noise_leave_the_buffers_out():
    from robustlr.aggregation import ClipAndNoise, PlainBuffers

    # two parameters and one buffer (num_batches_tracked-like, large): clipping at M 1 sees only the
    # parameters' norm (5 for agent 0, 0.5 for agent 1), and noise touches only parameters
    trainable = torch.tensor([True, True, False])
    U = torch.tensor([[3.0, 4.0, 40.0], [0.3, 0.4, 40.0]])
    out = PlainBuffers(ClipAndNoise(FedAvg(), clip_norm=1.0), trainable)(U)
    torch.testing.assert_close(out, torch.tensor([0.45, 0.6, 40.0]))
    noisy = PlainBuffers(ClipAndNoise(FedAvg(), clip_norm=1.0, noise_sigma=0.5,
                                      generator=torch.Generator().manual_seed(0)), trainable)(U)
    assert float(noisy[2]) == 40.0 and not torch.allclose(noisy[:2], out[:2])
    # without the wrapper the buffer dominates the norm: both agents are clipped to almost nothing
    plain = ClipAndNoise(FedAvg(), clip_norm=1.0)(U)
    assert float(plain[2]) < 1.0


def test_plain_buffers_rejects_bad_masks_and_non_finite_rows():
    from robustlr.aggregation import PlainBuffers, SignAggregation

    with pytest.raises(ValueError, match="1-D bool tensor"):
        PlainBuffers(FedAvg(), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="selects no coordinate"):
        PlainBuffers(FedAvg(), torch.tensor([False, False]))
    rule = PlainBuffers(SignAggregation(), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="3 .n_params."):
        rule(torch.ones(2, 3))
    for bad in (torch.tensor([[1.0, float("nan")], [1.0, 1.0]]), torch.tensor([[float("inf"), 1.0], [1.0, 1.0]])):
        with pytest.raises(ValueError, match="non-finite|not finite|NaN|inf"):
            rule(bad)


def test_rlr_scope_weights_and_the_soft_rule_in_the_simulator(tiny):
    """``rlr_scope = "weights"`` flips conv/linear weights only: biases, batch-norm scales and shifts
    and buffers move by the plain mean; ``rlr_soft`` scales by the margin (recorded per round)."""
    sim = _sim(tiny, rlr_threshold=4, rlr_scope="weights", rlr_soft=True)
    weights = sim.layout.weight_mask()
    before, updates, rec = _round_with_updates(sim)
    plain = before + updates.mean(dim=0)  # equal agents: the size-weighted mean is the plain mean
    torch.testing.assert_close(sim.global_params[~weights], plain[~weights])
    flipped = sim.server.rlr.flipped
    assert bool(flipped[weights].any()) and not bool(flipped[~weights].any())
    assert rec.flipped_fraction == pytest.approx(float(flipped[weights].float().mean()))
    assert -1.0 < rec.rlr_mean_scale < 1.0
    moved = sim.global_params[weights] - before[weights]
    mean = updates.mean(dim=0)[weights]
    # soft: every weight moves by at most the plain step, and against it exactly where flipped
    assert bool((moved.abs() <= mean.abs() * (1 + 1e-5) + 1e-7).all())
    assert bool((moved[flipped[weights]] * mean[flipped[weights]] <= 0).all())


def test_rlr_max_flip_in_the_simulator_caps_each_layers_flips_and_records_its_threshold(tiny):
    """``rlr_max_flip``: no trainable array has more than the cap flipped; the round record holds
    each array's threshold, none above theta."""
    sim = _sim(tiny, rlr_threshold=4, rlr_max_flip=0.25)
    before, updates, rec = _round_with_updates(sim)
    flipped = sim.server.rlr.flipped
    for name, sl in sim.layout.slices().items():
        if name in rec.rlr_layer_thresholds:
            assert float(flipped[sl].float().mean()) <= 0.25
    assert set(rec.rlr_layer_thresholds) == {n for n, t in zip(sim.layout.names, sim.layout.is_trainable) if t}
    assert all(0 <= t <= 4 for t in rec.rlr_layer_thresholds.values())
    # the uncapped rule flips more than a quarter of this model in the same round
    plain = RobustLR(FedAvg(), threshold=4, layout=sim.layout)
    plain(updates)
    assert plain.telemetry["flipped_fraction"] > 0.25 >= rec.flipped_fraction


def test_rlr_max_flip_with_the_soft_rule_is_refused_before_work():
    with pytest.raises(ValueError, match="rlr_max_flip caps the hard rule"):
        make_config({**BASE, "rlr_threshold": 4, "rlr_soft": True, "rlr_max_flip": 0.25})


def test_per_layer_telemetry_covers_every_array_and_leaves_the_numbers_alone(tiny):
    """``telemetry_per_layer``: every array (running statistics included) gets each group's agreement and
    mean update norm, the norms those of the round's updates; the model and the config hash are unchanged."""
    from robustlr.sim.config import config_hash

    on, off = _sim(tiny, rlr_threshold=2, telemetry_per_layer=True), _sim(tiny, rlr_threshold=2)
    assert config_hash(on.cfg) == config_hash(off.cfg)
    _, updates, rec = _round_with_updates(on)
    _, _, rec_off = _round_with_updates(off)
    assert rec_off.per_layer is None
    torch.testing.assert_close(on.global_params, off.global_params, rtol=0, atol=0)
    assert set(rec.per_layer) == {n for n, k in zip(on.layout.names, on.layout.numels) if k}
    for name, sl in on.layout.slices().items():  # 4 agents a round, 1 of them corrupt (F 0.25)
        row = rec.per_layer[name]
        norms = torch.linalg.vector_norm(updates[:, sl].double(), dim=1)
        assert (3 * row["honest_norm"] + row["corrupt_norm"]) / 4 == pytest.approx(float(norms.mean()), rel=1e-4)
        for g in ("honest", "corrupt"):
            assert row[f"{g}_agreement"] is None or 0.0 <= row[f"{g}_agreement"] <= 1.0
    assert any(name.endswith("running_var") for name in rec.per_layer)
