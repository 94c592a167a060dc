"""What every defense of issue 29 must do, as every rule does: the updates' dtype and shape out, finite
output on finite input, malformed updates refused by row, the same result whatever the agents'
order, and, where the defense claims it, one huge update barely moving the result."""

import pytest
import torch

pytest.importorskip("sklearn", reason="SignGuard, FreqFed and DeepSight cluster with scikit-learn")

from robustlr.aggregation import (DeepSight, FedAvg, FLDetector, FLTrust, FreqFed, RoundInputs,  # noqa: E402
                                  SignGuard)

D = 40  # columns; the "output layer" is the first 12 (3 classes x 4), its bias the next 3


def _probe(rows, x):  # logits: the output bias, plus each input's first values (the inputs matter)
    return rows[:, 12:15].unsqueeze(1) + x[:, :3].unsqueeze(0)


def _make(name, dtype=torch.float32):
    ref = (1.0 + 0.1 * torch.randn(D, generator=torch.Generator().manual_seed(4))).to(dtype)
    inputs = RoundInputs(reference=ref, global_params=torch.zeros(D, dtype=dtype), probe=_probe)
    rule = {
        "FLTrust": lambda: FLTrust(),
        "SignGuard": lambda: SignGuard(coord_fraction=1.0, generator=torch.Generator().manual_seed(0)),
        "FreqFed": lambda: FreqFed(slice(0, 12), (3, 4)),
        "DeepSight": lambda: DeepSight(slice(0, 12), (3, 4), slice(12, 15), (5,), samples=20, min_cluster_size=3),
        "FLDetector": lambda: FLDetector(window=1, generator=torch.Generator().manual_seed(0)),
    }[name]()
    rule.set_round_inputs(inputs)
    return rule


NAMES = ["FLTrust", "SignGuard", "FreqFed", "DeepSight", "FLDetector"]


def _honest(n=10, dtype=torch.float64, seed=7):
    return 1.0 + 0.1 * torch.randn(n, D, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_shape_finite_and_refusals(name, dtype):
    U = _honest(dtype=dtype)
    ids = list(range(10))
    out = _make(name, dtype)(U, weights=torch.arange(1.0, 11.0), agent_ids=ids)
    assert out.dtype == dtype and out.shape == (D,) and bool(torch.isfinite(out).all())
    bad = U.clone()
    bad[4, 7] = float("inf")
    with pytest.raises(ValueError, match=r"non-finite.*rows \[4\]"):
        _make(name, dtype)(bad, agent_ids=ids)


@pytest.mark.parametrize("name", NAMES)
def test_the_agents_order_does_not_matter(name):
    U = torch.cat([_honest(9), torch.full((1, D), -3.0, dtype=torch.float64)])
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    a = _make(name)(U, agent_ids=list(range(10)))
    b = _make(name)(U[perm], agent_ids=[int(p) for p in perm])
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["FLTrust", "SignGuard", "FreqFed", "DeepSight"])
def test_one_huge_update_barely_moves_them(name):
    honest = _honest()
    U = torch.cat([honest, torch.full((1, D), -1e4, dtype=torch.float64)])
    rule = _make(name)
    shift = torch.linalg.vector_norm(rule(U, agent_ids=list(range(11))) - honest.mean(0)).item()
    if name == "DeepSight":  # its labels see nothing odd in an update spread evenly over the classes: it is
        # admitted, clipped to the median norm S, and moves the mean by at most (S + |mean|) / 11
        assert 10 in rule.telemetry["admitted_rows"]
        bound = (rule.telemetry["clip_bound"] + honest.mean(0).norm().item()) / 11
        assert shift <= bound + 0.05, (shift, bound)
    else:  # FLTrust rescales every update to its reference's norm and weighs them by trust; the others drop it
        assert shift < 1.0, shift
    assert torch.linalg.vector_norm(FedAvg()(U) - honest.mean(0)).item() > 5000.0
