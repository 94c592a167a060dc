"""The untargeted colluding attacks (ALIE, IPM, Min-Max, Min-Sum) on hand-worked cases, and in the
round loop (tiny generated data: code paths, not science)."""

import math

import pytest
import torch

from robustlr.attacks.byzantine import alie, alie_z, byzantine_update, ipm, min_max, min_sum
from robustlr.errors import ConfigError
from robustlr.sim.config import make_config
from robustlr.sim.federation import build_federation
from robustlr.sim.loop import Simulation


def test_alie_z_max_is_the_papers_formula():
    # s = floor(n/2 + 1) - m supporters; z_max = Phi^-1((n - s) / n)
    assert alie_z(50, 12) == pytest.approx(0.58284, abs=1e-5)  # s 14, Phi^-1(0.72)
    assert alie_z(10, 1) == pytest.approx(0.0, abs=1e-12)  # s 5, Phi^-1(0.5)
    assert alie_z(40, 4) == pytest.approx(0.18912, abs=1e-5)  # s 17, Phi^-1(23 / 40)
    with pytest.raises(ValueError, match="1 <= corrupt agents < agents"):
        alie_z(10, 0)


def test_alie_is_mean_minus_z_unbiased_std():
    h = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
    # mean (2, 2); unbiased std (2, sqrt(3))
    torch.testing.assert_close(alie(h, 1.5), torch.tensor([2.0 - 3.0, 2.0 - 1.5 * math.sqrt(3.0)]))
    with pytest.raises(ValueError, match="at least 2 honest updates"):
        alie(h[:1], 1.0)


def test_ipm_is_the_scaled_negated_mean():
    h = torch.tensor([[1.0, -2.0, 0.0], [3.0, 4.0, 0.0]])
    torch.testing.assert_close(ipm(h, 0.1), torch.tensor([-0.2, -0.1, 0.0]))
    torch.testing.assert_close(ipm(h, 100.0), torch.tensor([-200.0, -100.0, 0.0]))


def test_min_max_and_min_sum_find_the_largest_gamma_by_hand():
    # honest 0, 1, 5 (one coordinate; a second that never moves): mean 2, unbiased std sqrt(7), p = -sqrt(7)
    h = torch.tensor([[0.0, 3.0], [1.0, 3.0], [5.0, 3.0]])
    # Min-Max: the farthest honest update is 5: 3 + sqrt(7) gamma <= max pairwise 5 -> u = 2 - 2 = 0
    torch.testing.assert_close(min_max(h), torch.tensor([0.0, 3.0]), atol=1e-4, rtol=0)
    # Min-Sum: with u = 2 - t, sum of squares 14 + 3 t^2 <= max_i sum_j |g_i - g_j|^2 = 41 -> t = 3, u = -1
    torch.testing.assert_close(min_sum(h), torch.tensor([-1.0, 3.0]), atol=1e-4, rtol=0)
    # the other directions: unit-vec p = -mean/|mean| = (-2, -3)/sqrt(13); sign p = (-1, -1)
    u = min_max(h, "sign")
    assert float(torch.linalg.vector_norm(h - u, dim=1).max()) <= 5.0 + 1e-6
    assert float(u[0] - u[1]) == pytest.approx(2.0 - 3.0, abs=1e-6)  # moved along (-1, -1) from (2, 3)
    with pytest.raises(ValueError, match="perturbation must be one of std, unit-vec, sign"):
        min_max(h, "noise")


def test_min_max_never_leaves_the_honest_spread_and_uses_it_fully():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(7, 50, generator=g, dtype=torch.float64)
    u = min_max(h)
    bound = float(torch.cdist(h[None], h[None])[0].max())
    assert float(torch.linalg.vector_norm(h - u, dim=1).max()) <= bound
    p = -h.std(0)
    beyond = u + 1e-3 * p  # a little further along p breaks the bound
    assert float(torch.linalg.vector_norm(h - beyond, dim=1).max()) > bound
    with pytest.raises(ValueError, match="byzantine must be one of alie, ipm, min-max, min-sum"):
        byzantine_update("gaussian", h, 10, 3)


BASE = {"dataset": "fashion-mnist", "rounds": 1, "num_agents": 6, "corrupt_fraction": 0.34, "local_epochs": 1,
        "batch_size": 16, "eval_every": 1, "seed": 3, "train_mode": "sequential"}


class Keep:
    def __init__(self):
        self.views = []

    def after_step(self, view):
        self.views.append((view.updates.clone(), view.corrupt.clone()))


@pytest.mark.parametrize("kind", ["alie", "ipm", "min-max", "min-sum"])
def test_in_the_round_loop_every_corrupt_agent_sends_the_crafted_update(tiny, kind):
    cfg = make_config({**BASE, "byzantine": kind})
    obs = Keep()
    sim = Simulation(cfg, build_federation(cfg, tiny()), observers=[obs])
    sim.run_round(1)
    sim.engine.close()
    updates, corrupt = obs.views[0]
    assert int(corrupt.sum()) == 2
    trainable = sim.layout.trainable_mask()
    honest = updates[~corrupt][:, trainable]
    expected = byzantine_update(kind, honest, 6, 2)
    for row in updates[corrupt]:
        torch.testing.assert_close(row[trainable], expected)


def test_bad_byzantine_configs_are_refused():
    with pytest.raises(ConfigError, match="replaces the corrupt agents' updates entirely, so boost_factor"):
        make_config({**BASE, "byzantine": "alie", "boost_factor": 5.0})
    with pytest.raises(ConfigError, match="fewer than 2 honest"):
        make_config({**BASE, "byzantine": "ipm", "num_agents": 3, "corrupt_fraction": 0.67})
    with pytest.raises(ConfigError, match="byzantine set but corrupt_fraction = 0"):
        make_config({**BASE, "byzantine": "ipm", "corrupt_fraction": 0.0})


def test_flower_refuses_the_colluding_attacks():
    from robustlr.integrations.flower.apps import check_flower_config

    with pytest.raises(ConfigError, match="a Flower client never sees"):
        check_flower_config(make_config({**BASE, "byzantine": "min-max"}))


def test_the_docstring_examples_hold():
    import doctest

    import robustlr.attacks.byzantine as mod

    result = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 5 and result.failed == 0
