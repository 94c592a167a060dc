"""Property tests (hypothesis): order invariance, threshold 0, unanimous coordinates,
clipping bounds, FoolsGold against sybils, layouts and buffers."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from robustlr.aggregation import (
    ClipAndNoise,
    CoordinateMedian,
    FedAvg,
    FoolsGold,
    ParamLayout,
    RobustLR,
    SignAggregation,
    TrimmedMean,
    clip_updates,
)

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Few distinct values, zeros included, so that ties and zero votes are common.
VALUES = st.one_of(
    st.sampled_from([-3.0, -1.0, -0.5, 0.0, 0.0, 0.5, 1.0, 2.0]),
    st.floats(-100, 100, allow_nan=False, width=32),
)


@st.composite
def update_matrices(draw, min_agents=1, max_agents=7, max_params=6):
    n = draw(st.integers(min_agents, max_agents))
    d = draw(st.integers(1, max_params))
    rows = draw(st.lists(st.lists(VALUES, min_size=d, max_size=d), min_size=n, max_size=n))
    return torch.tensor(rows, dtype=torch.float32)


@st.composite
def with_weights(draw, matrices=update_matrices()):
    U = draw(matrices)
    w = draw(st.lists(st.integers(1, 50), min_size=U.shape[0], max_size=U.shape[0]))
    return U, torch.tensor(w, dtype=torch.float32)


ORDER_INVARIANT = {
    "FedAvg": lambda n: FedAvg(),
    "CoordinateMedian": lambda n: CoordinateMedian(),
    "SignAggregation": lambda n: SignAggregation(),
    "FoolsGold": lambda n: FoolsGold(),
    "ClipAndNoise": lambda n: ClipAndNoise(FedAvg(), clip_norm=2.0),
    "RobustLR(FedAvg)": lambda n: RobustLR(FedAvg(), threshold=(n + 1) // 2),
    "RobustLR(median)": lambda n: RobustLR(CoordinateMedian(), threshold=0.6),
    "RobustLR(FedAvg, soft)": lambda n: RobustLR(FedAvg(), threshold=(n + 1) // 2, soft=True),
    "RobustLR(FedAvg, max_flip)": lambda n: RobustLR(FedAvg(), threshold=(n + 1) // 2, max_flip=0.25),
    "TrimmedMean": lambda n: TrimmedMean(0.2),
}


@FAST
@given(data=with_weights(), perm_seed=st.integers(0, 2**31 - 1), name=st.sampled_from(sorted(ORDER_INVARIANT)))
def test_agent_order_does_not_matter(data, perm_seed, name):
    U, w = data
    n = U.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(perm_seed))
    ids = list(range(n))
    a = ORDER_INVARIANT[name](n)(U, weights=w, agent_ids=ids)
    b = ORDER_INVARIANT[name](n)(U[perm], weights=w[perm], agent_ids=[ids[i] for i in perm])
    assert a.shape == (U.shape[1],) and a.dtype == U.dtype
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (a, b)


@FAST
@given(data=with_weights())
def test_threshold_zero_is_the_plain_rule(data):
    U, w = data
    for inner in (FedAvg(), CoordinateMedian(), SignAggregation()):
        rlr = RobustLR(inner, threshold=0)
        assert torch.equal(rlr(U, weights=w), inner(U, weights=w))
        assert rlr.telemetry["n_flipped"] == 0


@FAST
@given(U=update_matrices(), col=st.integers(0, 5), sign=st.sampled_from([-1.0, 1.0]), data=st.data())
def test_unanimous_coordinates_are_never_flipped(U, col, sign, data):
    n, d = U.shape
    col %= d
    U[:, col] = sign * (U[:, col].abs() + 0.25)
    theta = data.draw(st.integers(0, n))
    rlr = RobustLR(FedAvg(), threshold=theta)
    out = rlr(U)
    assert out[col] == FedAvg()(U)[col]
    # and the whole output is the plain one up to sign flips where the vote falls short
    vote = torch.sign(U).sum(0).abs()
    expected = torch.where(vote >= theta, 1.0, -1.0) * FedAvg()(U)
    assert torch.equal(out, expected)
    assert rlr.telemetry["n_flipped"] == int((vote < theta).sum())


@FAST
@given(U=update_matrices(max_params=30), data=st.data())
def test_max_flip_flips_a_subset_of_the_plain_rules_flips_within_the_cap(U, data):
    n, d = U.shape
    theta = data.draw(st.integers(1, n))
    q = data.draw(st.floats(0.01, 1.0))
    plain, capped = RobustLR(FedAvg(), threshold=theta), RobustLR(FedAvg(), threshold=theta, max_flip=q)
    plain(U)
    capped(U)
    assert int(capped.flipped.sum()) <= int(q * d + 1e-9)
    assert not bool((capped.flipped & ~plain.flipped).any())
    # the flipped coordinates are the least supported: each has a vote below every unflipped one's
    # among the plain rule's flips
    vote = torch.sign(U).sum(0).abs()
    kept = plain.flipped & ~capped.flipped
    if bool(capped.flipped.any()) and bool(kept.any()):
        assert float(vote[capped.flipped].max()) < float(vote[kept].min())


@FAST
@given(U=update_matrices(max_params=30), clip=st.floats(1e-3, 50.0))
def test_clipped_norms_never_exceed_the_bound(U, clip):
    clipped, n_clipped = clip_updates(U, clip)
    norms = torch.linalg.vector_norm(clipped, dim=1)
    assert (norms <= clip * (1 + 1e-6)).all()
    original = torch.linalg.vector_norm(U, dim=1)
    assert n_clipped == int((original > clip).sum())
    keep = original <= clip
    assert torch.equal(clipped[keep], U[keep])  # rows within the bound are untouched
    # clipping keeps every sign (except that of values so tiny the scaling underflows them)
    normal = U.abs() > 1e-30
    assert torch.equal(torch.sign(clipped)[normal], torch.sign(U)[normal])


@FAST
@given(
    n_sybils=st.integers(2, 5),
    n_honest=st.integers(1, 8),
    dim=st.integers(200, 1000),
    seed=st.integers(0, 2**31 - 1),
    rounds=st.integers(1, 3),
)
def test_foolsgold_silences_sybils_and_keeps_honest(n_sybils, n_honest, dim, seed, rounds):
    g = torch.Generator().manual_seed(seed)
    fg = FoolsGold()
    ids = [f"s{i}" for i in range(n_sybils)] + [f"h{i}" for i in range(n_honest)]
    for _ in range(rounds):
        sybil = torch.randn(dim, generator=g)
        honest = torch.randn(n_honest, dim, generator=g)
        U = torch.cat([sybil.expand(n_sybils, dim), honest])
        out = fg(U, agent_ids=ids)
        weights = fg.telemetry["weights"]
        assert all(weights[i] <= 1e-6 for i in ids[:n_sybils]), weights
        assert all(weights[i] > 0.5 for i in ids[n_sybils:]), weights
        alpha = torch.tensor([weights[i] for i in ids])
        assert torch.allclose(out, (alpha.unsqueeze(1) * U).sum(0) / len(ids), atol=1e-5)


class SmallBN(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3)
        self.bn = nn.BatchNorm2d(channels)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * 4, 3), nn.BatchNorm1d(3))


@FEW
@given(channels=st.integers(1, 4), steps=st.integers(0, 4), seed=st.integers(0, 2**31 - 1))
def test_layout_round_trip_small_model_with_batch_norm(channels, steps, seed):
    torch.manual_seed(seed)
    model = SmallBN(channels).train()
    for _ in range(steps):
        model.head(model.bn(model.conv(torch.randn(5, 1, 4, 4))))
    layout = ParamLayout.from_module(model)
    state = layout.unflatten(layout.flatten(model))
    assert list(state) == list(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name
    assert state["bn.num_batches_tracked"].item() == steps


@FAST
@given(channels=st.integers(1, 4), n_agents=st.integers(1, 6), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_rlr_with_layout_never_flips_buffers(channels, n_agents, seed, data):
    model = SmallBN(channels)
    layout = ParamLayout.from_module(model)
    g = torch.Generator().manual_seed(seed)
    U = torch.randn(n_agents, layout.numel, generator=g)
    theta = data.draw(st.integers(0, n_agents))
    rlr = RobustLR(FedAvg(), threshold=theta, layout=layout)
    out = rlr(U)
    plain = FedAvg()(U)
    trainable = layout.trainable_mask()
    assert torch.equal(out[~trainable], plain[~trainable])
    for name, sl in layout.slices().items():
        if "running" in name or "num_batches_tracked" in name:
            assert torch.equal(out[sl], plain[sl]), name
            assert name not in rlr.telemetry["per_layer"]
    vote = torch.sign(U).sum(0).abs()
    expected = torch.where(vote >= theta, 1.0, -1.0) * plain
    assert torch.equal(out[trainable], expected[trainable])
