"""Byzantine-robust baselines: trimmed mean, Krum and multi-Krum, Bulyan, geometric median (RFA).

The rules that compare whole updates (Krum, Bulyan, the geometric median, and FLAME in
:mod:`robustlr.aggregation.flame`) need the ``n x n`` distances between the agents' updates, not
the ``n x n_params`` differences: they take them from the Gram matrix ``U U^T``, accumulated in
float64 over column blocks of the update matrix (:func:`pairwise_sq_distances`), so a million
columns cost one pass and no copy of the matrix. Within each block the first row is first
subtracted from every row: a translation, which leaves the distances unchanged, is exact for
small integers (so hand-computed ties stay ties), and keeps ``G_ii + G_jj - 2 G_ij`` from
cancelling when the updates are close to each other and far from the origin. The absolute
error of a squared distance is then about ``1e-16 * max_k ||u_k - u_0||^2``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable
from typing import Any

import torch
from torch import Tensor

from .base import AggregationRule, column_chunk, overflowed, wider

__all__ = ["TrimmedMean", "Krum", "Bulyan", "GeometricMedian", "gram_matrix", "pairwise_sq_distances"]

# as in rlr.py: round products such as 0.3 * 10 (3.0000000000000004) or 0.29 * 100
# (28.999999999999996) to the integer they stand for before taking the floor
_ROUND_DIGITS = 9


# ---------------------------------------------------------------- helpers


def gram_matrix(updates: Tensor, center: bool = False) -> Tensor:
    """The float64 ``(n, n)`` Gram matrix ``U U^T`` of the rows, accumulated over column blocks.

    With ``center=True`` the first row is first subtracted from every row (a translation,
    which leaves every pairwise distance, and every distance to an affine combination of the
    rows, unchanged). The matrix is read once, one float64 block at a time.

    >>> gram_matrix(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    tensor([[ 5., 11.],
            [11., 25.]], dtype=torch.float64)
    """
    n, n_params = updates.shape
    gram = torch.zeros(n, n, dtype=torch.float64, device=updates.device)
    step = column_chunk(n, updates.device)
    for start in range(0, n_params, step):
        block = updates[:, start : start + step].to(torch.float64)
        if center:
            block = block - block[:1]
        gram.addmm_(block, block.t())
    return gram


def _sq_distances_from_gram(gram: Tensor) -> Tensor:
    diag = gram.diagonal()
    sq = (diag.unsqueeze(0) + diag.unsqueeze(1) - 2.0 * gram).clamp_(min=0.0)
    sq.fill_diagonal_(0.0)
    return sq


def pairwise_sq_distances(updates: Tensor) -> Tensor:
    """Squared L2 distances ``||u_i - u_j||^2`` between the rows, float64 ``(n, n)``, from the Gram matrix.

    >>> pairwise_sq_distances(torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]]))
    tensor([[ 0., 25.,  1.],
            [25.,  0., 18.],
            [ 1., 18.,  0.]], dtype=torch.float64)
    """
    return _sq_distances_from_gram(gram_matrix(updates, center=True))


def _combine(updates: Tensor, coef: Tensor, total: float | Tensor = 1.0) -> Tensor:
    """``sum_k coef[k] * updates[k] / total`` in float64 (column block by block), in the updates' dtype."""
    coef = coef.to(device=updates.device, dtype=torch.float64)
    n, n_params = updates.shape
    if updates.dtype == torch.float64:
        return torch.mv(updates.t(), coef).div_(total)
    out = torch.empty(n_params, dtype=updates.dtype, device=updates.device)
    step = column_chunk(n, updates.device)
    for start in range(0, n_params, step):
        block = updates[:, start : start + step].to(torch.float64)
        out[start : start + step] = torch.mv(block.t(), coef).div_(total)
    return out


def _check_int(name: str, value: Any, minimum: int, example: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}; e.g. {example}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}; e.g. {example}")
    return int(value)


def _check_positive_float(name: str, value: Any, allow_zero: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(x) or x < 0 or (x == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return x


def _rows_telemetry(key: str, rows: list[int], agent_ids: list[Hashable] | None) -> dict[str, Any]:
    out: dict[str, Any] = {f"{key}_rows": rows}
    if agent_ids is not None:
        out[f"{key}_agents"] = [agent_ids[k] for k in rows]
    return out


def _first_min(scores: Tensor, rel: float = 1e-9) -> int:
    """The first index whose score is within ``rel`` (relative) of the smallest: a tie of true scores
    (two rows that are each other's only neighbour score the same) goes to the lower index on every
    machine, not to whichever the Gram matrix's last-bit rounding favours there."""
    low = float(scores.min())
    close = torch.nonzero(scores <= low + rel * max(abs(low), 1e-300)).flatten()
    return int(close[0])


def _krum_scores(sq: Tensor, n_closest: int) -> Tensor:
    """Per row, the sum of its ``n_closest`` smallest squared distances to the *other* rows."""
    n = sq.shape[0]
    n_closest = min(n_closest, n - 1)
    if n_closest <= 0:
        return torch.zeros(n, dtype=sq.dtype, device=sq.device)
    others = sq.clone()
    others.fill_diagonal_(math.inf)  # a row is never its own neighbour, even next to a copy of itself
    return torch.topk(others, n_closest, dim=1, largest=False, sorted=False).values.sum(dim=1)


# ---------------------------------------------------------------- trimmed mean


class TrimmedMean(AggregationRule):
    r"""Coordinate-wise trimmed mean (Yin et al. 2018): drop the ``b`` largest and ``b`` smallest values.

    .. math::

        g(\Delta)_i = \frac{1}{n - 2b} \sum_{j=b+1}^{n-b} \Delta^{(j)}_i,
        \qquad b = \lfloor \beta n \rfloor

    where ``Delta^(1)_i <= ... <= Delta^(n)_i`` are coordinate ``i``'s values sorted over the
    ``n`` agents. ``b`` values are cut **from each end** (``2b`` in all), as in Flower's
    ``FedTrimmedAvg`` (``flwr.server.strategy.aggregate._trim_mean``, after
    ``scipy.stats.trim_mean``): ``beta`` is the share cut per side, so ``beta`` lies in
    ``[0, 0.5)`` and at least one value is kept. ``beta * n`` is rounded to 9 decimals
    before the floor, so that ``beta = 0.29, n = 100`` cuts 29 per side; Flower's ``int(0.29 * 100)``
    cuts 28 (the only difference, when ``beta * n`` is an integer that binary floating point
    lands just below). ``b = 0`` is the plain mean.

    Unweighted: ``weights`` are accepted for a uniform interface but ignored (every agent
    counts once, as in Flower). Telemetry: ``n_trimmed`` (``b``, per side).

    Cost: a sort of each coordinate's ``n`` values, in column blocks.

    Args:
        beta: the share of the agents cut from each end, in ``[0, 0.5)``.

    Example:
        >>> import torch
        >>> U = torch.tensor([[1.0, -5.0], [2.0, 0.0], [3.0, 1.0], [4.0, 2.0], [100.0, 3.0]])
        >>> TrimmedMean(0.2)(U)        # b = floor(0.2 * 5) = 1: mean of [2, 3, 4] and [0, 1, 2]
        tensor([3., 1.])
        >>> TrimmedMean(0.0)(U)        # the plain mean
        tensor([22.0000,  0.2000])
    """

    column_separable = True

    def __init__(self, beta: float) -> None:
        super().__init__()
        try:
            b = float(beta)
        except (TypeError, ValueError):
            raise ValueError(f"beta must be a number in [0, 0.5) (the share cut from each end), got {beta!r}") from None
        if isinstance(beta, bool) or not 0.0 <= b < 0.5:
            raise ValueError(
                f"beta must lie in [0, 0.5) (the share of agents cut from *each* end), got {beta!r}; "
                f"e.g. TrimmedMean(0.1) cuts the 10% largest and the 10% smallest values"
            )
        self.beta = b

    def n_trimmed(self, n_agents: int) -> int:
        """``b = floor(beta * n_agents)``, the number of values cut from each end."""
        return min(math.floor(round(self.beta * n_agents, _ROUND_DIGITS)), (n_agents - 1) // 2)

    def aggregate_validated(
        self, updates: Tensor, weights: Tensor | None, agent_ids: list[Hashable] | None
    ) -> Tensor:
        n_agents, n_params = updates.shape
        b = self.n_trimmed(n_agents)
        self.telemetry = {"n_trimmed": b}
        if b == 0:
            out = updates.sum(dim=0).div_(n_agents)
            if not overflowed(out):
                return out
            # a sum that overflows (finite float32 near 1e38): a wider type, as FedAvg does
            wide = wider(updates.dtype)
            return (updates.to(wide).sum(dim=0).div_(n_agents).to(updates.dtype) if wide is not None
                    else torch.sum(updates / n_agents, dim=0))
        kept = n_agents - 2 * b
        out = torch.empty(n_params, dtype=updates.dtype, device=updates.device)
        step = column_chunk(n_agents, updates.device)
        for start in range(0, n_params, step):
            ordered = torch.sort(updates[:, start : start + step], dim=0).values
            torch.sum(ordered[b : n_agents - b], dim=0, out=out[start : start + step])
        out.div_(kept)
        if overflowed(out):  # the kept values' sum overflowed: redo it in a wider type (or divide first)
            wide = wider(updates.dtype)
            for start in range(0, n_params, step):
                ordered = torch.sort(updates[:, start : start + step], dim=0).values[b : n_agents - b]
                block = ordered.to(wide).sum(dim=0).div_(kept) if wide is not None else torch.sum(ordered / kept, dim=0)
                out[start : start + step] = block.to(updates.dtype)
        return out

    def __repr__(self) -> str:
        return f"TrimmedMean(beta={self.beta!r})"


# ---------------------------------------------------------------- Krum


class Krum(AggregationRule):
    r"""Krum and multi-Krum (Blanchard, El Mhamdi, Guerraoui and Stainer, NeurIPS 2017).

    With ``n`` agents of which at most ``f`` are assumed corrupt, each update gets the score

    .. math:: s(k) = \sum_{j \in N_k} \|\Delta^k - \Delta^j\|_2^2

    where ``N_k`` holds the ``n - f - 2`` updates closest to ``Delta^k`` (other than itself).
    Krum (``m = 1``) returns the update of lowest score; multi-Krum (``m > 1``) the weighted
    mean of the ``m`` updates of lowest score, the weights being the given ``weights`` (dataset
    sizes) or uniform:

    .. math:: g(\Delta) = \frac{\sum_{k \in M} n_k \Delta^k}{\sum_{k \in M} n_k}

    With ``m = 1`` the weights play no part; with ``weights=None`` multi-Krum is the uniform
    mean of Blanchard et al. The scores are unweighted (one agent, one point).
    Krum's guarantee needs ``n > 2f + 2``, which is checked at each call (``ValueError``).
    Ties in the score go to the lower row. If the ``m`` selected agents all have weight 0 their
    plain mean is returned (telemetry ``zero_weight_fallback``).

    Compared with Flower's ``flwr.server.strategy.aggregate.aggregate_krum(results,
    num_malicious, to_keep)``: the same scores (Flower takes ``max(1, n - f - 2)`` neighbours;
    the ``max`` only matters when ``n <= 2f + 2``, which Flower allows and we reject), and its
    ``to_keep = m > 0`` is our multi-Krum, weighted by ``num_examples``; its ``to_keep = 0`` is
    Krum (``m = 1``). Flower breaks ties in the multi-Krum ranking by an unstable sort.
    Distances here come from the Gram matrix in float64 (see the module docstring).

    Args:
        f: the number of corrupt agents assumed, an integer >= 0.
        m: how many updates to select and average, an integer >= 1 (at most ``n``).

    Telemetry: ``selected_rows`` (best first), ``selected_agents`` (with ``agent_ids``),
    ``scores`` (one per row), ``n_neighbours`` (``n - f - 2``).

    Example:
        >>> import torch
        >>> U = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [10.0, 10.0]])
        >>> krum = Krum(f=1)
        >>> krum(U)        # 2 neighbours each; scores 2, 2, 2, 2, 343: the first of the ties
        tensor([0., 0.])
        >>> krum.telemetry["scores"]
        [2.0, 2.0, 2.0, 2.0, 343.0]
        >>> Krum(f=1, m=4)(U, weights=[1, 1, 1, 5, 1])   # the four corners, weighted 1:1:1:5
        tensor([0.7500, 0.7500])
    """

    def __init__(self, f: int, m: int = 1) -> None:
        super().__init__()
        self.f = _check_int("f", f, 0, "Krum(f=2) for up to two corrupt agents")
        self.m = _check_int("m", m, 1, "Krum(f=2, m=5) averages the five best-scored updates")

    def _check_n(self, n: int) -> None:
        if n <= 2 * self.f + 2:
            raise ValueError(
                f"Krum needs n > 2f + 2 agents, got n={n} with f={self.f} (it needs at least "
                f"{2 * self.f + 3}); lower f to at most {max((n - 3) // 2, 0)} or aggregate more agents per round"
                if n >= 3
                else f"Krum needs n > 2f + 2 agents, got n={n} with f={self.f}; it needs at least 3 agents per round"
            )
        if self.m > n:
            raise ValueError(f"Krum(m={self.m}) selects more updates than the n={n} agents of the round; lower m to at most {n}")

    def aggregate_validated(
        self, updates: Tensor, weights: Tensor | None, agent_ids: list[Hashable] | None
    ) -> Tensor:
        n = updates.shape[0]
        self._check_n(n)
        n_closest = n - self.f - 2
        scores = _krum_scores(pairwise_sq_distances(updates), n_closest)
        order = torch.sort(scores.cpu(), stable=True).indices
        selected = order[: self.m].tolist()
        telemetry: dict[str, Any] = _rows_telemetry("selected", selected, agent_ids)
        telemetry["scores"] = scores.cpu().tolist()
        telemetry["n_neighbours"] = n_closest
        if self.m == 1:
            out = updates[selected[0]].clone()
        else:
            coef = torch.zeros(n, dtype=torch.float64)
            idx = torch.tensor(selected)
            coef[idx] = 1.0 if weights is None else weights.detach().cpu().to(torch.float64)[idx]
            if float(coef.sum()) <= 0.0:
                coef[idx] = 1.0
                telemetry["zero_weight_fallback"] = True
            out = _combine(updates, coef, float(coef.sum()))
        self.telemetry = telemetry
        return out

    def __repr__(self) -> str:
        return f"Krum(f={self.f})" if self.m == 1 else f"Krum(f={self.f}, m={self.m})"


# ---------------------------------------------------------------- Bulyan


class Bulyan(AggregationRule):
    r"""Bulyan (El Mhamdi, Guerraoui and Rouault, ICML 2018) over Krum.

    With ``n`` agents of which at most ``f`` are assumed corrupt:

    1. Selection: ``theta = n - 2f`` times, apply Krum to the updates not yet selected (the set
       ``R``, scores over ``max(1, |R| - f - 2)`` neighbours) and move the best-scored one into
       the selection ``S`` (ties to the lower row).
    2. Per coordinate ``i``: of the ``theta`` selected values, the ``beta = theta - 2f`` closest
       to their median ``mu_i`` are averaged:

    .. math::

        g(\Delta)_i = \frac{1}{\beta} \sum_{k \in B_i} \Delta^k_i,
        \qquad B_i = \operatorname*{arg\,min}_{B \subseteq S,\ |B| = \beta} \sum_{k \in B} |\Delta^k_i - \mu_i|

    The median of an even number of values is the mean of the middle two (``numpy.median``).
    The ``beta`` closest values are consecutive in sorted order; when two windows are equally
    close (a tie at the boundary) the lower one is taken. Requires ``n >= 4f + 3`` (checked at
    each call, ``ValueError``). Unweighted: ``weights`` are ignored.

    The ``max(1, ...)``: Krum's ``|R| - f - 2`` neighbours reach 0 at the last selection step
    for ``f = 1`` (``|R| = 2f + 1 = 3``); one neighbour is used there, as Flower does. Flower's
    ``aggregate_bulyan(results, num_malicious, aggregate_krum, to_keep=0)`` is then the same
    rule (its selection is repeated ``aggregate_krum`` on the remaining results, its median
    ``numpy.median``); it breaks boundary ties by ``numpy.argpartition``.

    Args:
        f: the number of corrupt agents assumed, an integer >= 0.

    Telemetry: ``selected_rows`` (in the order selected), ``selected_agents`` (with
    ``agent_ids``), ``theta`` and ``beta``.

    Example:
        >>> import torch
        >>> U = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [100.0]])
        >>> bulyan = Bulyan(f=1)
        >>> bulyan(U)     # theta = 5 selected (not 100), beta = 3 closest to their median
        tensor([2.])
        >>> bulyan.telemetry["selected_rows"]
        [2, 3, 1, 4, 0]
    """

    def __init__(self, f: int) -> None:
        super().__init__()
        self.f = _check_int("f", f, 0, "Bulyan(f=1) for one corrupt agent (needs 7 agents)")

    def aggregate_validated(
        self, updates: Tensor, weights: Tensor | None, agent_ids: list[Hashable] | None
    ) -> Tensor:
        n, n_params = updates.shape
        f = self.f
        if n < 4 * f + 3:
            raise ValueError(
                f"Bulyan needs n >= 4f + 3 agents, got n={n} with f={f} (it needs at least {4 * f + 3}); "
                + (f"lower f to at most {(n - 3) // 4}" if n >= 3 else "it needs at least 3 agents per round")
                + " or aggregate more agents per round"
            )
        theta, beta = n - 2 * f, n - 4 * f
        sq = pairwise_sq_distances(updates).cpu()
        remaining = list(range(n))
        selected: list[int] = []
        for _ in range(theta):
            sub = sq[remaining][:, remaining]
            scores = _krum_scores(sub, max(1, len(remaining) - f - 2))
            best = remaining.pop(_first_min(scores))
            selected.append(best)
        telemetry: dict[str, Any] = _rows_telemetry("selected", selected, agent_ids)
        telemetry.update(theta=theta, beta=beta)
        self.telemetry = telemetry

        rows = torch.tensor(selected, device=updates.device)
        out = torch.empty(n_params, dtype=updates.dtype, device=updates.device)
        n_windows = theta - beta + 1  # 2f + 1 candidate windows of beta consecutive sorted values
        window = torch.arange(beta, device=updates.device).unsqueeze(1)
        step = column_chunk(theta, updates.device)
        for start in range(0, n_params, step):
            ordered = torch.sort(updates[:, start : start + step].index_select(0, rows), dim=0).values
            if theta % 2:
                median = ordered[theta // 2]
            else:  # halve before adding so that two huge values cannot overflow
                median = ordered[theta // 2 - 1] * 0.5 + ordered[theta // 2] * 0.5
            # the window starting at s spans ordered[s .. s + beta - 1]; it is as far from the
            # median as its farther end, and the beta closest values form the nearest window
            lo = (median - ordered[:n_windows]).abs_()
            hi = (ordered[beta - 1 :] - median).abs_()
            first = torch.argmin(torch.maximum(lo, hi), dim=0)  # the first (lowest) of ties
            chosen = torch.gather(ordered, 0, first.unsqueeze(0) + window)
            torch.mean(chosen, dim=0, out=out[start : start + step])
        return out

    def __repr__(self) -> str:
        return f"Bulyan(f={self.f})"


# ---------------------------------------------------------------- geometric median


class GeometricMedian(AggregationRule):
    r"""The (weighted) geometric median by smoothed Weiszfeld iterations: RFA (Pillutla, Kakade
    and Harchaoui, IEEE TSP 2022, "Robust aggregation for federated learning").

    .. math:: g(\Delta) \approx \operatorname*{arg\,min}_z \sum_k \alpha_k \|z - \Delta^k\|_2,
              \qquad \alpha_k = \frac{n_k}{\sum_j n_j}

    Starting from the weighted mean ``z_0 = sum_k alpha_k Delta^k``, each iteration sets

    .. math:: \beta_k = \frac{\alpha_k}{\max(\nu, \|z_t - \Delta^k\|_2)}, \qquad
              z_{t+1} = \frac{\sum_k \beta_k \Delta^k}{\sum_k \beta_k}

    and stops after ``max_iter`` iterations, or once the objective
    ``F(z) = sum_k alpha_k ||z - Delta^k||`` changes by at most ``tol * F(z)``. ``nu > 0``
    smooths the objective where ``z`` meets an update (no division by zero). With
    ``weights=None`` every ``alpha_k = 1/n``; agents of weight 0 take no part.

    Every iterate is a combination of the rows, ``z_t = sum_k c_k Delta^k``, so the distances
    ``||z_t - Delta^k||`` come from the ``n x n`` Gram matrix (one float64 pass over the
    updates) and each iteration costs ``O(n^2)``, whatever ``n_params``; only the final ``z``
    is formed, in float64 and returned in the updates' dtype. Deterministic.

    Each iteration is cheap (``O(n^2)``), so the defaults ``max_iter=1000, tol=1e-10`` run to
    the median itself (the objective is flat at its minimum: a relative change ``tol`` leaves
    ``z`` about ``sqrt(tol)`` off). RFA's experiments stop after a few iterations (pass e.g.
    ``max_iter=3``; ``max_iter=1`` is their "one-step" variant).

    Args:
        nu: the smoothing ``nu > 0``.
        max_iter: the largest number of Weiszfeld iterations, an integer >= 1.
        tol: the relative change of the objective at which to stop, >= 0 (0: run ``max_iter``).

    Telemetry: ``iterations`` (run), ``objective`` (``F`` of the result), ``converged``
    (stopped by ``tol``), ``coefficients`` (the final ``c_k``, one per row).

    Example:
        >>> import torch
        >>> U = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
        >>> gm = GeometricMedian()
        >>> gm(U)                           # the centre of the square
        tensor([0., 0.])
        >>> round(gm.telemetry["objective"], 6)   # four corners at distance sqrt(2), alpha = 1/4
        1.414214
        >>> far = torch.tensor([[0.0], [1.0], [2.0], [3.0], [1000.0]])
        >>> GeometricMedian()(far)          # in 1-D the median; the mean is 201.2
        tensor([2.])
    """

    def __init__(self, nu: float = 1e-6, max_iter: int = 1000, tol: float = 1e-10) -> None:
        super().__init__()
        self.nu = _check_positive_float("nu", nu)
        self.max_iter = _check_int("max_iter", max_iter, 1, "GeometricMedian(max_iter=1000)")
        self.tol = _check_positive_float("tol", tol, allow_zero=True)

    def aggregate_validated(
        self, updates: Tensor, weights: Tensor | None, agent_ids: list[Hashable] | None
    ) -> Tensor:
        n = updates.shape[0]
        gram = gram_matrix(updates, center=True).cpu()
        diag = gram.diagonal()
        if weights is None:
            alpha = torch.full((n,), 1.0 / n, dtype=torch.float64)
        else:
            w = weights.detach().cpu().to(torch.float64)
            alpha = w / w.sum()

        def distances(c: Tensor) -> Tensor:
            # ||z - u_k||^2 = G_kk - 2 (G c)_k + c^T G c for z = sum_j c_j u_j, sum_j c_j = 1
            gc = gram @ c
            return (diag - 2.0 * gc + torch.dot(c, gc)).clamp_(min=0.0).sqrt_()

        coef = alpha.clone()
        dist = distances(coef)
        objective = float(torch.dot(alpha, dist))
        iterations, converged = 0, False
        for _ in range(self.max_iter):
            beta = alpha / dist.clamp(min=self.nu)
            coef = beta / beta.sum()
            dist = distances(coef)
            previous, objective = objective, float(torch.dot(alpha, dist))
            iterations += 1
            if abs(previous - objective) <= self.tol * objective:
                converged = True
                break
        self.telemetry = {
            "iterations": iterations,
            "objective": objective,
            "converged": converged,
            "coefficients": coef.tolist(),
        }
        return _combine(updates, coef)

    def __repr__(self) -> str:
        return f"GeometricMedian(nu={self.nu!r}, max_iter={self.max_iter!r}, tol={self.tol!r})"
