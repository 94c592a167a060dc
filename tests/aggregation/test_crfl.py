"""CRFL's pieces on hand-worked values: the norm schedule and clip, the Hoeffding bounds, the
certified radius (the authors' own example), parameter smoothing's votes."""

import math

import pytest
import torch

from robustlr.aggregation.crfl import (CertificationSetting, certified_radius, clip_model, crfl_rho, hoeffding_bounds,
                                       smoothed_votes)


def test_the_norm_schedule_and_the_clip():
    assert [crfl_rho(t, 0.1, 2.0, 15.0) for t in (1, 10, 130, 131)] == pytest.approx([2.1, 3.0, 15.0, 15.0])
    assert crfl_rho(10, 0.25, 4.0, 100.0) == 6.5  # the authors' EMNIST schedule
    w = torch.tensor([3.0, 4.0])
    assert clip_model(w, 10.0) == 1.0 and w.tolist() == [3.0, 4.0]  # within the bound: untouched
    scale = clip_model(w, 1.0)
    assert scale == pytest.approx(1 / (5 + 1e-6)) and w.norm().item() == pytest.approx(1.0, rel=1e-6)
    w = torch.tensor([6.0, 8.0, 100.0])  # the buffer (last) is neither measured nor scaled
    clip_model(w, 5.0, torch.tensor([True, True, False]))
    assert w.tolist() == pytest.approx([3.0, 4.0, 100.0], rel=1e-6)


def test_the_bounds_and_the_radius():
    h = math.sqrt(math.log(1000) / 200)  # alpha 0.001, M 100
    assert hoeffding_bounds(70, 20, 100, 0.001) == pytest.approx((0.7 - h, 0.2 + h))
    assert hoeffding_bounds(0, 100, 100, 0.001) == (1e-8, 1 - 1e-8)
    s = CertificationSetting(sigma=0.01, sigma_test=0.01, rho=(3.0,) * 100, attackers=1, attacker_weight=0.05,
                             attack_round=10, gamma=10.0, poison_share=0.05, local_iterations=30, client_lr=0.001)
    # D = 2 R tau^2 L_Z^2 (R p^2) gamma^2 eta^2 (q/n)^2 = 2 * 900 * 17 * 0.0025 * 100 * 1e-6 * 0.0025 (Phi(300) = 1)
    assert s.denominator() == pytest.approx(1.9125e-5)
    p_a, p_b = hoeffding_bounds(1000, 0, 1000, 0.001)
    gap = (math.sqrt(p_a) - math.sqrt(p_b)) ** 2
    assert certified_radius(p_a, p_b, s) == pytest.approx(math.sqrt(-math.log(1 - gap) * 1e-4 / 1.9125e-5))
    assert certified_radius(p_a, p_b, s) == pytest.approx(1.986, abs=1e-3)  # the authors' MNIST example: ~1.99
    assert certified_radius(0.3, 0.3, s) == 0.0 and certified_radius(1.0, 0.0, s) == math.inf
    # two attackers: D doubles twice (R and the sum of their squared weights); rho_t / sigma small: contraction
    two = CertificationSetting(**{**s.__dict__, "attackers": 2})
    assert two.denominator() == pytest.approx(4 * s.denominator())
    tight = CertificationSetting(**{**s.__dict__, "rho": (0.01,) * 100})
    phi1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))  # rho / sigma = 1
    assert tight.denominator() / s.denominator() == pytest.approx(
        (2 * phi1 - 1) ** 90 * (2 + 2 * 0.01 + 0.01 ** 2) / 17)


def test_smoothing_votes_of_noisy_copies():
    w = torch.tensor([1.0, -1.0])  # logits (w0 x, w1 x) for inputs x > 0: class 0
    x = torch.tensor([1.0, 2.0, 3.0])
    logits_of = lambda p: torch.stack([p[0] * x, p[1] * x], dim=1)  # noqa: E731
    votes = smoothed_votes(logits_of, w, 0.0, 5, 2, torch.Generator().manual_seed(0))
    assert votes.tolist() == [[5, 0]] * 3
    # large noise splits the votes, the same way for the same generator seed; a mask keeps coordinates fixed
    a = smoothed_votes(logits_of, w, 10.0, 50, 2, torch.Generator().manual_seed(1))
    b = smoothed_votes(logits_of, w, 10.0, 50, 2, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and 0 < int(a[0, 0]) < 50 and a.sum(1).tolist() == [50] * 3
    fixed = smoothed_votes(logits_of, w, 10.0, 50, 2, torch.Generator().manual_seed(1), mask=torch.tensor([0.0, 0.0]))
    assert fixed.tolist() == [[50, 0]] * 3
