"""The server step: pure rules, eta applied once (trainable parameters only), and the noise
scale of eq. 2 (eta * sigma * M) for every rule, sign aggregation included."""

import pytest
import torch

from robustlr.aggregation import ClipAndNoise, ParamLayout, RobustLR, SignAggregation
from robustlr.models import build_model
from robustlr.sim import seeding
from robustlr.sim.config import load_config, make_config
from robustlr.errors import TrainingError
from robustlr.sim.server import Server, apply_server_lr, build_rule, server_lr_vector


def _layout(model="mnist-cnn"):
    return ParamLayout.from_module(build_model(model))


def test_rules_are_pure_and_eta_comes_from_the_config():
    cfg = load_config("iid-sign")
    rule = build_rule(cfg, _layout(), torch.Generator())
    assert isinstance(rule, SignAggregation) and not hasattr(rule, "server_lr")
    assert cfg.resolved_server_lr == 1e-3
    rlr = build_rule(load_config("iid-rlr"), _layout(), torch.Generator())
    assert isinstance(rlr, RobustLR) and not hasattr(rlr, "server_lr")


def test_sign_aggregation_noise_is_eta_sigma_m():
    """iid-sign with M 4, sigma 1e-3: per coordinate the step's noise has std eta*sigma*M = 4e-6
    (robustlr 0.1 added sigma*M = 4e-3 after eta)."""
    cfg = load_config("iid-sign", ["clip_norm=4", "noise_sigma=0.001"])
    layout = _layout()
    gen = torch.Generator()
    rule = build_rule(cfg, layout, gen)
    assert isinstance(rule, ClipAndNoise) and isinstance(rule.rule, SignAggregation)
    # two agents that disagree everywhere: the vote ties (0), so the step is noise only
    u = torch.randn(layout.numel) * 1e-3
    updates = torch.stack([u, -u])
    gen.manual_seed(seeding.seed_of(0, seeding.NOISE, 1))
    params = torch.zeros(layout.numel)
    apply_server_lr(params, rule(updates), server_lr_vector(cfg.resolved_server_lr, layout.trainable_mask()))
    std = float(params.std())
    print(f"step noise std {std:.3e} (expected 4e-6)")
    assert std == pytest.approx(4e-6, rel=0.01)


def test_eta_scales_trainable_parameters_and_leaves_buffers():
    layout = _layout("cifar-cnn-bn")
    trainable = layout.trainable_mask()
    assert not bool(trainable.all())
    eta = server_lr_vector(0.5, trainable)
    params = torch.zeros(layout.numel)
    apply_server_lr(params, torch.ones(layout.numel), eta)
    assert torch.equal(params[trainable], torch.full((int(trainable.sum()),), 0.5))
    assert torch.equal(params[~trainable], torch.ones(int((~trainable).sum())))
    assert server_lr_vector(0.5, _layout().trainable_mask()) == 0.5  # no buffers: a plain float


def test_apply_server_lr_is_in_place_and_exact_for_eta_one():
    g = torch.tensor([1.0, 2.0])
    out = apply_server_lr(g, torch.tensor([0.25, -0.5]), 1.0)
    assert out is g and torch.equal(g, torch.tensor([1.25, 1.5]))
    apply_server_lr(g, torch.tensor([1.0, 1.0]), 1e-3)
    assert torch.equal(g, torch.tensor([1.25, 1.5]) + torch.tensor([1.0, 1.0]) * 1e-3)


def test_sign_on_batch_norm_buffers_is_refused():
    # the default keeps the buffers out of the vote; asking for the vote on them is refused
    assert make_config({"dataset": "cifar10", "model": "cifar-cnn-bn", "aggregator": "sign"}).buffer_aggregation == "mean"
    with pytest.raises(ValueError, match="batch-norm running statistics"):
        make_config({"dataset": "cifar10", "model": "cifar-cnn-bn", "aggregator": "sign", "buffer_aggregation": "rule"})


@pytest.mark.parametrize("aggregator, expected", [
    ("trimmed-mean", "TrimmedMean(beta=0.1)"), ("krum", "Krum(f=1)"), ("multikrum", "Krum(f=1, m=9)"),
    ("bulyan", "Bulyan(f=1)"), ("rfa", "GeometricMedian"), ("flame", "Flame"),
    ("signguard", "SignGuard(lower=0.1, upper=3.0, coord_fraction=0.1)")])
def test_robust_rules_come_from_the_config_with_f_from_the_corrupt_fraction(aggregator, expected):
    cfg = make_config({"aggregator": aggregator, "num_agents": 10, "corrupt_fraction": 0.1, "rlr_threshold": 4})
    rule = build_rule(cfg, _layout(), torch.Generator(), cfg.agents_per_round(10))
    assert isinstance(rule, RobustLR) and repr(rule.rule).startswith(expected)
    U = torch.randn(10, _layout().numel, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(rule(U)).all()


def test_f_and_the_agent_count_requirements_are_checked_before_work():
    cfg = make_config({"aggregator": "multikrum", "num_agents": 20, "corrupt_fraction": 0.3,
                       "assumed_corrupt": 2, "multikrum_keep": 5})
    rule = build_rule(cfg, _layout(), torch.Generator(), 20)
    assert (rule.f, rule.m) == (2, 5)
    with pytest.raises(ValueError, match=r"'bulyan' with f = 3 assumed corrupt agents needs n >= 4f \+ 3, i.e. at least 15"):
        make_config({"aggregator": "bulyan", "num_agents": 10, "corrupt_fraction": 0.3})
    with pytest.raises(ValueError, match=r"'krum' with f = 4 .* needs n > 2f \+ 2, i.e. at least 11"):
        make_config({"aggregator": "krum", "num_agents": 10, "corrupt_fraction": 0.4})


def _server(corrupt=(3,), **cfg):
    """A Server over a 4-coordinate model (nn.Linear(3, 1)), 4 agents of sizes 1, 1, 2, 4."""
    config = make_config({"num_agents": 4, "corrupt_fraction": 0.25, "rlr_threshold": 3, **cfg})
    layout = ParamLayout.from_module(torch.nn.Linear(3, 1))
    return Server(config, layout, num_agents=4, agent_sizes=[1, 1, 2, 4], corrupt=corrupt)


def test_server_step_by_hand():
    """One round of RLR(FedAvg) theta 3 of 4, eta 0.5, worked out by hand: the weighted mean,
    the vote, the flips, eta, the record's norms and vote telemetry."""
    server = _server(server_lr=0.5)
    U = torch.tensor([[1.0, 1.0, -1.0, 0.0],
                      [1.0, 1.0, -1.0, 0.0],
                      [1.0, -1.0, 1.0, 0.0],
                      [-1.0, -1.0, 1.0, 2.0]])  # agent 3 is corrupt
    g = torch.zeros(4)
    step = server.step(1, g, U, [0, 1, 2, 3], [])
    # weights 1, 1, 2, 4 (sum 8): mean [(1+1+2-4)/8, (1+1-2-4)/8, (-1-1+2+4)/8, 8/8] = [0, -0.5, 0.5, 1];
    # |votes| 2, 0, 0, 1 are all below 3: every coordinate flips
    assert torch.equal(step.aggregate, torch.tensor([0.0, 0.5, -0.5, -1.0]))
    assert torch.equal(g, 0.5 * step.aggregate) and torch.equal(step.flipped, torch.ones(4, dtype=torch.bool))
    r = step.record
    assert (r.agents, r.corrupt_in_round, r.rejected, r.rlr_on, r.threshold, r.flipped_fraction) == (4, 1, [], True, 3, 1.0)
    assert r.honest_norm == pytest.approx(3 ** 0.5) and r.corrupt_norm == pytest.approx(7 ** 0.5)
    assert r.flipped_per_layer == {"weight": 1.0, "bias": 1.0}
    # agreement with the applied step's signs [0, +, -, -] (3 non-zero coordinates): agents 0 and 1
    # agree on 2 of 3 (their zero entry disagrees), agents 2 and 3 on none
    assert r.honest_agreement == pytest.approx((2 / 3 + 2 / 3 + 0.0) / 3) and r.corrupt_agreement == 0.0


def test_server_step_rejects_a_nan_update_and_scales_theta_with_the_voters_left():
    server = _server(rlr_threshold=4)  # 4 of 4: with 3 voters left, ceil(4 * 3 / 4) = 3
    U = torch.ones(4, 4)
    U[1, 2] = float("nan")
    g = torch.zeros(4)
    step = server.step(1, g, U, [0, 1, 2, 3], [])
    assert step.agents == [0, 2, 3] and step.record.rejected == [1]
    assert step.record.rejections[0]["reason"] == "non-finite" and step.record.threshold == 3
    assert torch.equal(g, torch.ones(4))  # unanimous: nothing flipped, the plain weighted mean of ones


def test_server_step_follows_the_rlr_schedule_and_stops_after_rounds_without_updates():
    server = _server(rlr_from_round=2, max_rounds_without_updates=2)
    U = torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, 1.0, 1.0, 1.0]])
    g = torch.zeros(4)
    off = server.step(1, g, U, [0, 1], [])
    assert off.record.rlr_on is False and off.flipped is None and off.record.flipped_fraction is None
    assert torch.equal(g, torch.tensor([0.0, 1.0, 1.0, 1.0]))  # the base rule: the plain mean
    on = server.step(2, g, U, [0, 1], [off.record])
    assert on.record.rlr_on is True and on.record.threshold == 2  # 3 of 4, two voters: ceil(1.5)
    nan = torch.full((1, 4), float("nan"))
    empty = server.step(3, g, nan, [0], [off.record, on.record])
    assert (empty.record.agents, empty.aggregate) == (0, None)
    with pytest.raises(TrainingError, match="rejected .* in 2 consecutive rounds"):
        server.step(4, g, nan, [0], [off.record, on.record, empty.record])
