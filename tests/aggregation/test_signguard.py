"""SignGuard on hand-worked rounds: the norm filter, the sign clustering, the two medians of the
authors' code, the window drawn from the generator, and an empty round."""

import pytest
import torch

from robustlr.aggregation import FedAvg, RobustLR, SignGuard
from robustlr.aggregation.signguard import sign_features

pytest.importorskip("sklearn", reason="SignGuard clusters with scikit-learn: pip install 'robustlr[flame]'")


def _signed(pos: int, neg: int, scale: float = 1.0) -> list[float]:
    """A row of 10 coordinates: ``pos`` positive, ``neg`` negative, the rest zero."""
    return [scale] * pos + [-scale] * neg + [0.0] * (10 - pos - neg)


def test_sign_features_are_the_shares_each_divided_by_its_largest():
    f = sign_features(torch.tensor([_signed(8, 2), _signed(4, 4), _signed(2, 8)]))
    # positive shares 0.8, 0.4, 0.2 / 0.8; zero shares 0, 0.2, 0 / 0.2; negative 0.2, 0.4, 0.8 / 0.8
    torch.testing.assert_close(f, torch.tensor([[1.0, 0.0, 0.25], [0.5, 1.0, 0.5], [0.25, 0.0, 1.0]],
                                               dtype=torch.float64), rtol=0, atol=1e-7)


def test_agents_whose_sign_statistics_differ_are_dropped_though_their_norms_are_ordinary():
    honest = [_signed(8, 2), _signed(8, 2), _signed(7, 3), _signed(8, 2), _signed(7, 3), _signed(8, 2),
              _signed(8, 2), _signed(7, 3)]
    corrupt = [_signed(2, 8), _signed(3, 7)]  # the same norm as the honest rows: sqrt(10)
    U = torch.tensor(honest + corrupt)
    sg = SignGuard(coord_fraction=1.0)
    out = sg(U)
    t = sg.telemetry
    assert t["norm_rejected_rows"] == [] and t["sign_rejected_rows"] == [8, 9]
    assert t["admitted_rows"] == list(range(8)) and t["n_clusters"] == 2 and not t["one_cluster"]
    assert t["clip_bound"] == pytest.approx(10 ** 0.5)  # nobody is longer: nothing clipped
    torch.testing.assert_close(out, U[:8].mean(0))


def test_the_filter_uses_the_mean_of_the_middle_norms_and_the_clip_the_lower_one():
    # norms 1, 2, 4, 40: the filter's median (2 + 4) / 2 = 3 keeps 0.3 < norm < 9 (drops 40);
    # the clip bound is torch's lower median, 2: the norm-4 row is halved
    U = torch.tensor([[1.0, 0.0], [2.0, 0.0], [4.0, 0.0], [40.0, 0.0]])
    sg = SignGuard(coord_fraction=1.0)
    out = sg(U)
    assert sg.telemetry["median_norm"] == 3.0 and sg.telemetry["clip_bound"] == 2.0
    assert sg.telemetry["admitted_rows"] == [0, 1, 2] and sg.telemetry["one_cluster"]
    torch.testing.assert_close(out, torch.tensor([(1.0 + 2.0 + 2.0) / 3, 0.0]))


def test_the_window_is_drawn_from_the_generator_and_ignores_the_weights():
    U = torch.randn(6, 1000, generator=torch.Generator().manual_seed(0))
    a = SignGuard(generator=torch.Generator().manual_seed(5))
    b = SignGuard(generator=torch.Generator().manual_seed(5))
    out_a, out_b = a(U), b(U, weights=torch.arange(1.0, 7.0))
    torch.testing.assert_close(out_a, out_b)
    start, d = a.telemetry["window"]
    expected = int(torch.randint(0, 900, (1,), generator=torch.Generator().manual_seed(5)))
    assert (start, d) == (expected, 100) == b.telemetry["window"]
    assert SignGuard(coord_fraction=1.0).window(7) == (0, 7)


def test_a_round_that_admits_nobody_leaves_the_model_where_it_is():
    sg = SignGuard()
    out = sg(torch.zeros(4, 30))  # every norm 0: 0 < norm fails for all
    assert torch.equal(out, torch.zeros(30)) and sg.telemetry["admitted_rows"] == []


def test_rlr_composes_around_signguard():
    U = torch.tensor([_signed(8, 2)] * 3 + [_signed(2, 8)])
    inner = SignGuard(coord_fraction=1.0)
    out = RobustLR(inner, threshold=4)(U)
    # SignGuard keeps the three alike rows; the vote is 4 - 2 = 2 < 4 on coordinates 2-7 (one
    # dissenter), 4 on 0-1 and 8-9: those keep their sign, the others are flipped
    kept = inner(U)
    vote = U.sign().sum(0).abs()
    torch.testing.assert_close(out, torch.where(vote >= 4, kept, -kept))
    assert not torch.equal(out, FedAvg()(U))


@pytest.mark.parametrize("kw, message", [
    ({"lower": 3.0, "upper": 3.0}, "lower < upper"),
    ({"upper": 0.0}, "upper must be a finite number > 0"),
    ({"coord_fraction": 1.5}, r"coord_fraction must be in \(0, 1\]"),
    ({"coord_fraction": 0.0}, "coord_fraction must be a finite number > 0"),
])
def test_bad_settings_are_refused_with_the_fix(kw, message):
    with pytest.raises(ValueError, match=message):
        SignGuard(**kw)
