"""FLDetector (Zhang, Cao, Jia, Gong, KDD 2022): malicious agents found by how badly their updates
are predicted from their own history.

The rule keeps state across rounds (the window of global-model and aggregate differences, each
agent's last update and its scores): it is in the checkpoint, so a resumed run equals an
uninterrupted one. It needs the global model of each round, handed to it by the server
(:meth:`AggregationRule.set_round_inputs`, its ``global_params``), and every agent in every round.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .base import AggregationRule, RoundInputs, call_inner, check_rule, inner_telemetry
from .clip import check_generator
from .rules import FedAvg

__all__ = ["FLDetector", "gap_statistic_k", "kmeans_1d", "lbfgs_hvp"]


def lbfgs_hvp(S: Tensor, Y: Tensor, v: Tensor) -> Tensor:
    r"""The L-BFGS estimate of the Hessian-vector product ``H v`` from the pairs of the columns of
    ``S`` (``(d, m)``: differences of the global model between rounds) and ``Y`` (``(d, m)``: the
    differences of the aggregates), in the compact form of Byrd, Nocedal and Schnabel (1994) that
    FLDetector's Algorithm 2 uses:

    .. math::
        \sigma = \frac{y_m^\top s_m}{s_m^\top s_m}, \quad
        S^\top Y = L + D + R \ (L \text{ strictly lower}, D \text{ diagonal}), \quad
        H v \approx \sigma v - [\sigma S \ \ Y]
        \begin{bmatrix} \sigma S^\top S & L \\ L^\top & -D \end{bmatrix}^{-1}
        \begin{bmatrix} \sigma S^\top v \\ Y^\top v \end{bmatrix}

    In float64; a singular middle matrix is inverted by least squares. It is ``B v`` for the
    matrix the BFGS recursion builds from ``sigma I`` over the pairs in order, so it meets the last
    secant equation ``B s_m = y_m``. One pair by hand (``s = (1, 0)``, ``y = (2, 1)``, ``sigma = 2``:
    ``B v = sigma v - sigma s (s.v) / (s.s) + y (y.v) / (y.s)``):

    >>> s = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    >>> lbfgs_hvp(s, torch.tensor([[2.0], [1.0]], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64))
    tensor([3.0000, 3.5000], dtype=torch.float64)
    """
    S, Y, v = S.to(torch.float64), Y.to(torch.float64), v.to(torch.float64)
    s_last, y_last = S[:, -1], Y[:, -1]
    sigma = float(y_last @ s_last) / float(s_last @ s_last)
    sty = S.t() @ Y
    lower = torch.tril(sty, diagonal=-1)
    d = torch.diag(torch.diagonal(sty))
    middle = torch.cat([torch.cat([sigma * (S.t() @ S), lower], dim=1), torch.cat([lower.t(), -d], dim=1)], dim=0)
    p = torch.cat([sigma * (S.t() @ v), Y.t() @ v])
    solved = torch.linalg.lstsq(middle, p[:, None]).solution[:, 0]
    return sigma * v - torch.cat([sigma * S, Y], dim=1) @ solved


def kmeans_1d(x: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """The optimal k-means clustering of 1-D ``x``: ``(within-cluster sum of squares, labels)``,
    by dynamic programming over the sorted values (clusters of 1-D k-means are intervals). Exact
    and deterministic, where Lloyd's algorithm from random starts (scikit-learn's ``KMeans``, the
    authors' choice) finds it only usually. Labels number the clusters from the smallest values up.

    >>> sse, labels = kmeans_1d(np.array([0.0, 0.1, 1.0, 1.2]), 2)
    >>> round(sse, 12), labels   # 0.1 ** 2 / 2 + 0.2 ** 2 / 2
    (0.025, array([0, 0, 1, 1]))
    """
    order = np.argsort(x, kind="stable")
    v = np.asarray(x, dtype=np.float64)[order]
    n = len(v)
    k = max(1, min(k, n))
    c1 = np.concatenate([[0.0], np.cumsum(v)])
    c2 = np.concatenate([[0.0], np.cumsum(v * v)])

    def sse(i: np.ndarray, j: int) -> np.ndarray:  # values i .. j - 1 (i an array of starts)
        m = j - i
        return c2[j] - c2[i] - (c1[j] - c1[i]) ** 2 / m

    cost = np.full((k + 1, n + 1), np.inf)
    arg = np.zeros((k + 1, n + 1), dtype=np.int64)
    cost[0, 0] = 0.0
    for m in range(1, k + 1):
        for j in range(m, n + 1):
            starts = np.arange(m - 1, j)
            total = cost[m - 1, starts] + sse(starts, j)
            best = int(np.argmin(total))
            cost[m, j], arg[m, j] = total[best], starts[best]
    labels_sorted = np.zeros(n, dtype=np.int64)
    j = n
    for m in range(k, 0, -1):
        i = arg[m, j]
        labels_sorted[i:j] = m - 1
        j = i
    labels = np.empty(n, dtype=np.int64)
    labels[order] = labels_sorted
    return max(float(cost[k, n]), 0.0), labels


def gap_statistic_k(scores: np.ndarray, rng: np.random.Generator, max_k: int = 7, refs: int = 10) -> int:
    """The number of clusters in 1-D ``scores`` by the gap statistic (Tibshirani, Walther and
    Hastie 2001), as FLDetector's code computes it: scores min-max scaled to [0, 1]; for k = 1 ..
    ``max_k`` (at most the number of distinct scores), ``W_k`` the k-means within-cluster sum of
    squares (:func:`kmeans_1d`, exact), ``W*_kb`` the same on ``refs`` uniform samples of the same
    size from ``rng``, ``gap_k = log mean_b W*_kb - log W_k``, ``sd_k = sqrt(1 + 1 / refs) std_b log
    W*_kb``; the smallest k with ``gap_k >= gap_{k+1} - sd_{k+1}`` (the largest k tested if none).
    Equal scores: 1."""
    lo, hi = float(scores.min()), float(scores.max())
    if hi - lo <= 0:
        return 1
    x = (scores - lo) / (hi - lo)
    ks = list(range(1, min(max_k, len(np.unique(x))) + 1))
    wk = lambda values, k: max(kmeans_1d(values, k)[0], 1e-300)  # noqa: E731
    gaps, sds = [], []
    for k in ks:
        ref = np.array([wk(rng.uniform(0.0, 1.0, len(x)), k) for _ in range(refs)])
        gaps.append(math.log(ref.mean()) - math.log(wk(x, k)))
        sds.append(math.sqrt(1.0 + 1.0 / refs) * float(np.std(np.log(ref))))
    for i in range(len(ks) - 1):
        if gaps[i] >= gaps[i + 1] - sds[i + 1]:
            return ks[i]
    return ks[-1]


class FLDetector(AggregationRule):
    r"""FLDetector (Zhang, Cao, Jia, Gong, "FLDetector: Defending Federated Learning Against Model
    Poisoning Attacks via Detecting Malicious Clients", KDD 2022; Algorithm 1), around any rule
    (default :class:`FedAvg`).

    Threat model: malicious agents send poisoned updates in many rounds; every agent takes part in
    every round (the prediction needs each agent's last update); the server holds the global
    model of each round and nothing else. In round ``t``, with ``w_t`` the global model:

    1. With the window full (``window`` pairs, the paper's N = 10): the L-BFGS estimate
       ``h = H_t (w_t - w_{t-1})`` (:func:`lbfgs_hvp`) from the last ``window`` pairs
       ``(w_r - w_{r-1}, g_r - g_{r-1})`` of global-model and aggregate differences.
    2. Each agent's predicted update ``g^i_{t-1} + h`` and its distance ``d^i_t = ||g^i_{t-1} + h -
       g^i_t||``, normalised by their sum over the round's agents; the suspicious score ``s^i`` is
       the mean of an agent's last ``window`` normalised distances.
    3. Detection, once every agent of the round has ``window`` distances: the gap statistic
       (:func:`gap_statistic_k`) on the scores; if it finds more than one cluster, k-means with k
       = 2 and the cluster of the larger mean score is malicious. k-means is solved exactly
       (:func:`kmeans_1d`: the scores are 1-D), where the authors run scikit-learn's Lloyd
       iterations from random starts, which find the same optimum on such data but 1,000 times slower.
    4. The inner rule aggregates the agents not detected.

    robustlr's choice where the paper stops: the paper returns the detected agents (the server
    then removes them and trains anew); here they are left out of this and every later round of
    the same run, and detection stops after the first. Randomness (the gap statistic's reference
    samples) comes from ``generator``. Updates are model deltas
    (the local models minus the global one), not gradients: the Hessian estimate is then that of the
    update map, which changes nothing in the prediction (the compact form is linear in ``Y``).

    Telemetry: ``scores`` (agent -> suspicious score, once defined), ``distances`` (this round's,
    normalised), ``gap_k``, ``detected`` (every agent detected so far), ``rejected_rows`` /
    ``rejected_agents`` (the round's rows left out), ``predicted`` (whether step 1 ran).

    Example (three rounds of a 2-coordinate toy: agent 2 sends the opposite of what agents 0 and 1
    send; with a window of 1, its prediction error dominates from round 2):
        >>> rule = FLDetector(window=1, generator=torch.Generator().manual_seed(0))
        >>> w = torch.zeros(2)
        >>> for r in range(3):
        ...     U = torch.tensor([[1.0, 1.0], [1.1, 0.9], [-5.0 * (-1) ** r, 5.0]])
        ...     rule.set_global(w)
        ...     w = w + rule(U, agent_ids=[0, 1, 2])
        >>> rule.telemetry["predicted"], sorted(rule.telemetry["distances"])
        (True, [0, 1, 2])
    """

    def __init__(self, rule: AggregationRule | None = None, window: int = 10,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.rule = FedAvg() if rule is None else rule
        check_rule(self.rule)
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an integer >= 1 (rounds of history), got {window!r}; the paper's is 10")
        self.window = window
        self.generator = check_generator(generator)
        self._global: Tensor | None = None
        self.reset_state()

    def reset_state(self) -> None:
        self._w_prev: Tensor | None = None
        self._agg_prev: Tensor | None = None
        self._S: list[Tensor] = []
        self._Y: list[Tensor] = []
        self._last: dict[Hashable, Tensor] = {}
        self._dist: dict[Hashable, list[float]] = {}
        self.detected: list[Hashable] = []

    def reset(self) -> None:
        super().reset()
        self.reset_state()

    @property
    def round_inputs(self) -> frozenset[str]:
        return frozenset({"global_params"})

    def set_round_inputs(self, inputs: RoundInputs) -> None:
        """Takes ``inputs.global_params``, the global model of the round about to be aggregated
        (copied: the server changes its own in place)."""
        g = inputs.global_params
        self._global = None if g is None else g.detach().clone()

    def set_global(self, global_params: Tensor | None) -> None:
        """Shorthand for ``set_round_inputs(RoundInputs(global_params=global_params))`` on a bare FLDetector."""
        self.set_round_inputs(RoundInputs(global_params=global_params))

    def aggregate_validated(self, updates: Tensor, weights: Tensor | None,
                            agent_ids: list[Hashable] | None) -> Tensor:
        if agent_ids is None:
            raise ValueError("FLDetector keeps each agent's last update and needs agent_ids: call "
                             "rule(updates, weights, agent_ids=[...]) with one id per row")
        if self._global is None:
            raise ValueError("FLDetector needs the round's global model: call "
                             "rule.set_round_inputs(RoundInputs(global_params=w)) before "
                             "aggregating (the simulator and the Flower ServerApp do)")
        w = self._global.to(device=updates.device, dtype=torch.float64)
        if w.shape[0] != updates.shape[1]:
            raise ValueError(f"the global model has {w.shape[0]} entries but the updates have {updates.shape[1]} "
                             f"columns")
        telemetry: dict[str, Any] = {"predicted": False}
        # 1-2. predicted updates and normalised distances (with a full window)
        if len(self._S) >= self.window and self._w_prev is not None:
            h = lbfgs_hvp(torch.stack(self._S, 1), torch.stack(self._Y, 1), w - self._w_prev)
            rows = [k for k, a in enumerate(agent_ids) if a in self._last]
            if rows:
                dist = torch.stack([torch.linalg.vector_norm(self._last[agent_ids[k]].to(h) + h
                                                             - updates[k].to(torch.float64)) for k in rows])
                total = float(dist.sum())
                norm = dist / total if total > 0 else torch.zeros_like(dist)
                for k, d in zip(rows, norm.tolist()):
                    self._dist.setdefault(agent_ids[k], []).append(d)
                    del self._dist[agent_ids[k]][:-self.window]
                telemetry["predicted"] = True
                telemetry["distances"] = {agent_ids[k]: d for k, d in zip(rows, norm.tolist())}
        scores = {a: sum(v) / len(v) for a, v in self._dist.items() if len(v) == self.window}
        telemetry["scores"] = scores
        # 3. detection, once every agent of the round has a full window of distances
        if not self.detected and len(agent_ids) >= 3 and all(a in scores for a in agent_ids):
            s = np.array([scores[a] for a in agent_ids])
            rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=self.generator)))
            k = gap_statistic_k(s, rng)
            telemetry["gap_k"] = k
            if k > 1:  # two clusters: the one of the larger scores (label 1, the upper interval) is malicious
                _, labels = kmeans_1d(s, 2)
                self.detected = [a for a, lab in zip(agent_ids, labels) if lab == 1]
        telemetry["detected"] = list(self.detected)
        # 4. the inner rule on the agents not detected
        keep = [k for k, a in enumerate(agent_ids) if a not in set(self.detected)]
        rejected = [k for k in range(len(agent_ids)) if k not in set(keep)]
        if keep:
            idx = torch.tensor(keep, device=updates.device)
            out = call_inner(self.rule, updates[idx], None if weights is None else weights[idx],
                             [agent_ids[k] for k in keep])
        else:
            out = torch.zeros(updates.shape[1], dtype=updates.dtype, device=updates.device)
        telemetry.update(rejected_rows=rejected, rejected_agents=[agent_ids[k] for k in rejected],
                         inner=inner_telemetry(self.rule))
        # the window's pairs and each agent's last update, for the next round
        agg = out.detach().to(torch.float64)
        if self._w_prev is not None and self._agg_prev is not None:
            s_pair = w - self._w_prev
            if float(s_pair @ s_pair) > 0:  # the global model moved: a pair the Hessian estimate can use
                self._S.append(s_pair)
                self._Y.append(agg - self._agg_prev)
                del self._S[:-self.window], self._Y[:-self.window]
        self._w_prev, self._agg_prev = w, agg
        for k, a in enumerate(agent_ids):  # in the updates' own precision: n x n_params is the state's bulk
            self._last[a] = updates[k].detach().clone()
        self.telemetry = telemetry
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"w_prev": self._w_prev, "agg_prev": self._agg_prev, "S": list(self._S), "Y": list(self._Y),
                "last_ids": list(self._last), "last": list(self._last.values()),
                "dist_ids": list(self._dist), "dist": [list(v) for v in self._dist.values()],
                "detected": list(self.detected), "rule": self.rule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reset_state()
        self._w_prev, self._agg_prev = state.get("w_prev"), state.get("agg_prev")
        self._S, self._Y = list(state.get("S", [])), list(state.get("Y", []))
        self._last = dict(zip(state.get("last_ids", []), state.get("last", [])))
        self._dist = {a: list(v) for a, v in zip(state.get("dist_ids", []), state.get("dist", []))}
        self.detected = list(state.get("detected", []))
        self.rule.load_state_dict(state.get("rule", {}))

    def __repr__(self) -> str:
        return f"FLDetector({self.rule!r}, window={self.window})"
