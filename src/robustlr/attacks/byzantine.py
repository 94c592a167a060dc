"""Untargeted colluding attacks on robust aggregation (model poisoning against convergence).

Threat model, common to all three: the corrupt agents of a round collude and are *omniscient* of
the round's honest updates (they know their mean ``mu`` and coordinate-wise standard deviation
``sigma``, or the updates themselves); every corrupt agent sends the same crafted update, in
place of what it trained. Their goal is to lower validation accuracy, not to plant a backdoor:
the metric is the validation accuracy of the global model. They need to see the honest updates,
so they run in the simulator only (a Flower client trains alone; ``--engine flower`` refuses
them). ``sigma`` is the unbiased standard deviation (``torch.std``, as the papers' code), which
needs at least two honest updates.

ALIE, "A Little Is Enough" (Baruch, Baruch and Goldberg, NeurIPS 2019)
    ``mu - z sigma`` per coordinate: a shift small enough to stay within the honest spread of every
    coordinate, so that coordinate-wise rules (median, trimmed mean) and distance rules (Krum)
    keep it, and large enough, summed over millions of coordinates, to stop learning. ``z``
    defaults to the paper's ``z_max``: with ``n`` agents of which ``m`` are corrupt, the attackers
    need ``s = floor(n / 2 + 1) - m`` honest "supporters" to be further from the mean than they
    are, so ``z_max = Phi^-1((n - s) / n)`` (``Phi`` the standard normal CDF; the largest ``z``
    for which, under a normal model of the honest values, ``s`` honest agents are expected beyond
    it). Some reimplementations use ``(n - m - s) / (n - m)`` instead; ``z`` may be given.
IPM, inner product manipulation (Xie, Koyejo and Gupta, UAI 2020, "Fall of Empires")
    ``-epsilon mu``: the attackers send the negated honest mean, scaled, so that the inner product
    of the aggregate with the true gradient turns negative. ``epsilon`` defaults to 0.1, a small
    value that keeps the attackers close to the honest updates (what lets them through distance
    rules such as Krum); the paper studies small and large ``epsilon``.
Min-Max and Min-Sum (Shejwalkar and Houmansadr, NDSS 2021, "Manipulating the Byzantine")
    ``mu + gamma p`` with a perturbation direction ``p`` (``-sigma``: ``"std"``; ``-mu/||mu||``:
    ``"unit-vec"``; ``-sign(mu)``: ``"sign"``) and the largest ``gamma`` such that the crafted
    update is no further from the honest ones than they are from each other: **Min-Max**,
    ``max_i ||u - g_i|| <= max_{i,j} ||g_i - g_j||``; **Min-Sum**, ``sum_i ||u - g_i||^2 <=
    max_i sum_j ||g_i - g_j||^2``. ``gamma`` is found by the paper's halving search: try
    ``gamma_init = 10`` with a step of 5; after a ``gamma`` that meets the condition remember it and
    add the step, after one that does not subtract it; halve the step; stop when the ``gamma`` to
    try is within ``tau = 1e-5`` of the last one that met the condition, which is used (0, i.e.
    the honest mean, if none did; at most 20). The default direction ``"std"`` is robustlr's
    choice (the paper reports all three).

Everything here is deterministic (no random draws) and computes in float64, returning the
updates' dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["BYZANTINE", "PERTURBATIONS", "alie", "alie_z", "byzantine_update", "ipm", "min_max", "min_sum"]

BYZANTINE = ("none", "alie", "ipm", "min-max", "min-sum")
PERTURBATIONS = ("std", "unit-vec", "sign")
GAMMA_INIT = 10.0
GAMMA_TOLERANCE = 1e-5


def _honest(honest: Tensor, need: int = 2) -> Tensor:
    if not isinstance(honest, Tensor) or honest.ndim != 2:
        raise ValueError(f"honest must be an (h, P) matrix of the round's honest updates, got "
                         f"{getattr(honest, 'shape', type(honest).__name__)}")
    if honest.shape[0] < need:
        raise ValueError(f"the attack needs at least {need} honest updates in the round (their spread), got "
                         f"{honest.shape[0]}")
    return honest.double()


def alie_z(n_agents: int, n_corrupt: int) -> float:
    """ALIE's ``z_max`` for ``n_agents`` agents of which ``n_corrupt`` are corrupt (see the module text).

    Example:
        >>> round(alie_z(50, 12), 4)   # s = floor(26) - 12 = 14; Phi^-1(36 / 50)
        0.5828
        >>> round(alie_z(10, 1), 4)    # s = 5; Phi^-1(0.5)
        0.0
    """
    if n_agents < 2 or not 1 <= n_corrupt < n_agents:
        raise ValueError(f"ALIE needs 1 <= corrupt agents < agents, got {n_corrupt} of {n_agents}")
    s = math.floor(n_agents / 2 + 1) - n_corrupt
    p = (n_agents - s) / n_agents
    if not 0 < p < 1:
        raise ValueError(f"ALIE's z_max is undefined for {n_corrupt} corrupt of {n_agents} agents (the corrupt "
                         f"agents alone are a majority: s = {s}); give z")
    return float(torch.special.ndtri(torch.tensor(p, dtype=torch.float64)))


def alie(honest: Tensor, z: float) -> Tensor:
    """``mean - z * std`` of the honest updates (per coordinate).

    Example:
        >>> alie(torch.tensor([[1.0, 0.0], [3.0, 0.0]]), z=1.0)   # mean (2, 0), std (1.414, 0)
        tensor([0.5858, 0.0000])
    """
    h = _honest(honest)
    return (h.mean(0) - z * h.std(0)).to(honest.dtype)


def ipm(honest: Tensor, epsilon: float) -> Tensor:
    """``-epsilon * mean`` of the honest updates.

    Example:
        >>> ipm(torch.tensor([[1.0, -2.0], [3.0, 0.0]]), epsilon=0.5)
        tensor([-1.0000,  0.5000])
    """
    h = _honest(honest, need=1)
    return (-epsilon * h.mean(0)).to(honest.dtype)


def _direction(h: Tensor, perturbation: str) -> Tensor:
    mu = h.mean(0)
    if perturbation == "std":
        return -h.std(0)
    if perturbation == "unit-vec":
        norm = torch.linalg.vector_norm(mu)
        return -mu / norm if norm > 0 else torch.zeros_like(mu)
    if perturbation == "sign":
        return -torch.sign(mu)
    raise ValueError(f"perturbation must be one of {', '.join(PERTURBATIONS)}, got {perturbation!r}")


def _search_gamma(ok) -> float:
    """The paper's halving search for the largest gamma with ``ok(gamma)`` (see the module text)."""
    gamma, step, best = GAMMA_INIT, GAMMA_INIT / 2, 0.0
    while abs(best - gamma) > GAMMA_TOLERANCE:
        if ok(gamma):
            best = gamma
            gamma += step
        else:
            gamma -= step
        step /= 2
    return best


def _pairwise(h: Tensor) -> Tensor:
    return torch.cdist(h[None], h[None])[0]


def min_max(honest: Tensor, perturbation: str = "std") -> Tensor:
    """Min-Max: ``mean + gamma * p``, the largest gamma with max distance to an honest update <= the
    largest distance between two honest updates.

    Example: honest (1, 1) and (3, 1), 2 apart; mean (2, 1), p = -std = (-sqrt 2, 0); the update
    (2 - sqrt(2) gamma, 1) is within 2 of (3, 1) while gamma <= 1/sqrt 2, so it lands on (1, 1):
        >>> min_max(torch.tensor([[1.0, 1.0], [3.0, 1.0]]))
        tensor([1.0000, 1.0000])
    """
    h = _honest(honest)
    mu, p = h.mean(0), _direction(h, perturbation)
    bound = float(_pairwise(h).max())

    def ok(gamma: float) -> bool:
        u = mu + gamma * p
        return float(torch.linalg.vector_norm(h - u, dim=1).max()) <= bound

    return (mu + _search_gamma(ok) * p).to(honest.dtype)


def min_sum(honest: Tensor, perturbation: str = "std") -> Tensor:
    """Min-Sum: ``mean + gamma * p``, the largest gamma with the sum of squared distances to the
    honest updates <= the largest such sum of an honest update."""
    h = _honest(honest)
    mu, p = h.mean(0), _direction(h, perturbation)
    bound = float((_pairwise(h) ** 2).sum(1).max())

    def ok(gamma: float) -> bool:
        u = mu + gamma * p
        return float((torch.linalg.vector_norm(h - u, dim=1) ** 2).sum()) <= bound

    return (mu + _search_gamma(ok) * p).to(honest.dtype)


def byzantine_update(kind: str, honest: Tensor, n_agents: int, n_corrupt: int, *, z: float | None = None,
                     epsilon: float = 0.1, perturbation: str = "std") -> Tensor:
    """The update every corrupt agent sends under attack ``kind`` (one of :data:`BYZANTINE` but
    "none"), from the round's ``honest`` updates ``(h, P)``; ``n_agents`` in the round, ``n_corrupt``
    of them corrupt."""
    if kind == "alie":
        return alie(honest, alie_z(n_agents, n_corrupt) if z is None else z)
    if kind == "ipm":
        return ipm(honest, epsilon)
    if kind == "min-max":
        return min_max(honest, perturbation)
    if kind == "min-sum":
        return min_sum(honest, perturbation)
    raise ValueError(f"byzantine must be one of {', '.join(BYZANTINE[1:])}, got {kind!r}")
