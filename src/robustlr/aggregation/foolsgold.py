"""FoolsGold (Fung, Yoon and Beschastnikh 2018): per-agent rates from history similarity."""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import Tensor

from .base import AggregationRule, column_chunk

__all__ = ["FoolsGold", "foolsgold_weights"]

# Cosine similarities this close to 1 count as exactly 1. Exact copies otherwise come out at
# 1 - 2e-16 or so, and the normalisation by the largest weight would blow the resulting
# 2e-16 weights up to full ones when every agent in the round is a copy.
IDENTICAL_TOLERANCE = 1e-6


def foolsgold_weights(histories: Tensor, kappa: float = 1.0) -> Tensor:
    r"""FoolsGold's per-agent learning rates ``alpha`` from a ``(n, d)`` history matrix.

    See :class:`FoolsGold` for the steps; this is the pure function (float64 result).

    >>> H = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    >>> foolsgold_weights(H)
    tensor([0., 0., 1., 1.], dtype=torch.float64)
    """
    gram = torch.zeros(histories.shape[0], histories.shape[0], dtype=torch.float64, device=histories.device)
    step = column_chunk(histories.shape[0], histories.device)
    for start in range(0, histories.shape[1], step):
        block = histories[:, start : start + step]
        gram += (block @ block.t()).to(torch.float64)
    return _weights_from_gram(gram, kappa)


def _weights_from_gram(gram: Tensor, kappa: float) -> Tensor:
    n = gram.shape[0]
    norms = gram.diagonal().clamp(min=0).sqrt()
    denom = norms.unsqueeze(0) * norms.unsqueeze(1)
    # a zero history has no direction: its similarity to anything is 0
    cos = torch.where(denom > 0, gram / denom.clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(gram))
    cos = cos.clamp(-1.0, 1.0)
    cos = torch.where(cos >= 1.0 - IDENTICAL_TOLERANCE, torch.ones_like(cos), cos)
    # Self-similarity counts as 0 (not 1), so every row's maximum is at least 0.
    cos.fill_diagonal_(0.0)
    max_cs = cos.max(dim=1).values
    # Pardoning: an agent i less similar to the others than agent j is (max_cs[i] < max_cs[j])
    # has its similarity to j scaled down by max_cs[i] / max_cs[j]. max_cs[j] > 0 there.
    ratio = max_cs.unsqueeze(1) / max_cs.unsqueeze(0).clamp(min=torch.finfo(torch.float64).tiny)
    pardon = max_cs.unsqueeze(1) < max_cs.unsqueeze(0)
    cos = torch.where(pardon, cos * ratio, cos)
    wv = (1.0 - cos.max(dim=1).values).clamp(0.0, 1.0)
    top = wv.max()
    if top <= 0:
        return torch.zeros(n, dtype=torch.float64, device=gram.device)
    wv = wv / top
    wv = torch.where(wv == 1.0, torch.full_like(wv, 0.99), wv)
    logit = torch.log(wv) - torch.log1p(-wv)  # -inf where wv == 0
    alpha = kappa * (logit + 0.5)
    return torch.nan_to_num(alpha, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


class FoolsGold(AggregationRule):
    r"""FoolsGold: down-weight agents whose accumulated updates point the same way.

    State: ``history[agent_id]``, the sum of every update that agent has sent (restricted to
    ``similarity_mask`` if given). Each call first adds the round's updates to the histories
    of the round's agents, then computes, over the agents of the round only:

    1. ``cs[i, j]``: cosine similarity of the histories of agents i and j (0 for i == j and
       for a zero history; values within 1e-6 of 1 count as 1, so that rounding cannot tell
       exact copies apart); ``v_i = max_j cs[i, j]`` (hence ``v_i >= 0``).
    2. Pardoning: where ``v_i < v_j``, ``cs[i, j] *= v_i / v_j``.
    3. ``w_i = clip(1 - max_j cs[i, j], 0, 1)``, then ``w_i /= max_j w_j`` (all weights 0
       when every ``w_i`` is 0, e.g. when all agents are identical).
    4. Logit: ``w_i = 0.99`` where ``w_i = 1``; ``alpha_i = clip(kappa * (ln(w_i / (1 - w_i))
       + 0.5), 0, 1)`` (``alpha_i = 0`` where ``w_i = 0``).

    The aggregate follows the paper's eq. 3 (and Fung et al.'s reference code): the rates
    scale each agent's share of FedAvg, **without renormalising**,

    .. math:: g(\Delta) = \frac{\sum_k \alpha_k n_k \Delta^k}{\sum_k n_k}

    so down-weighted agents shrink the step rather than hand their share to the others
    (``n_k = 1`` without weights). The steps follow Fung et al.'s Algorithm 1; the
    similarities are taken among the round's agents, so memory and time do not grow with
    the number of agents ever seen, only the stored histories do.

    Args:
        kappa: confidence parameter of the logit step (Fung et al. use 1).
        similarity_mask: optional bool ``(n_params,)`` tensor; histories and similarities use
            only these coordinates (Fung et al.'s code uses the output layer). Histories cost
            ``4 * n_coordinates`` bytes per agent ever seen (float32), which matters with
            thousands of agents and a million parameters.

    Calls need ``agent_ids`` (distinct within a round). :meth:`reset` forgets all histories.
    Telemetry: ``weights``, ``{agent_id: alpha}`` for the agents of the round.

    Example (two sybils sending the same update, two honest agents):
        >>> import torch
        >>> U = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0],
        ...                   [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 1.0]])
        >>> fg = FoolsGold()
        >>> fg(U, agent_ids=["s1", "s2", "a", "b"])
        tensor([0.0000, 0.2500, 0.5000, 0.2500])
        >>> fg.telemetry["weights"]
        {'s1': 0.0, 's2': 0.0, 'a': 1.0, 'b': 1.0}
    """

    def __init__(self, kappa: float = 1.0, similarity_mask: Tensor | None = None) -> None:
        super().__init__()
        kappa = float(kappa)
        if not kappa > 0 or kappa == float("inf"):
            raise ValueError(f"kappa must be a finite number > 0, got {kappa!r}")
        if similarity_mask is not None and (
            not isinstance(similarity_mask, Tensor) or similarity_mask.dtype != torch.bool or similarity_mask.ndim != 1
        ):
            raise ValueError("similarity_mask must be a 1-D bool tensor of shape (n_params,)")
        self.kappa = kappa
        self.similarity_mask = similarity_mask
        self.history: dict[Hashable, Tensor] = {}

    def state_dict(self) -> dict:
        """The history: agent ids (ints or strings) and one tensor per agent, in the same order."""
        return {"ids": list(self.history), "history": list(self.history.values())}

    def load_state_dict(self, state: dict) -> None:
        self.history = dict(zip(state.get("ids", []), state.get("history", [])))

    def reset(self) -> None:
        """Forget every agent's history (and the last telemetry)."""
        self.history = {}
        self.telemetry = {}

    def aggregate_validated(
        self, updates: Tensor, weights: Tensor | None, agent_ids: list[Hashable] | None
    ) -> Tensor:
        if agent_ids is None:
            raise ValueError(
                "FoolsGold keeps a history per agent and needs agent_ids: "
                "call rule(updates, weights, agent_ids=[...]) with one id per row"
            )
        features = updates
        if self.similarity_mask is not None:
            if self.similarity_mask.shape[0] != updates.shape[1]:
                raise ValueError(
                    f"similarity_mask has {self.similarity_mask.shape[0]} entries but updates have "
                    f"{updates.shape[1]} (n_params)"
                )
            features = updates[:, self.similarity_mask.to(updates.device)]
        n_features = features.shape[1]
        # histories are sums over many rounds: keep them in at least float32
        history_dtype = torch.promote_types(features.dtype, torch.float32)
        for agent, row in zip(agent_ids, features):
            past = self.history.get(agent)
            if past is None:
                self.history[agent] = row.detach().to(history_dtype, copy=True)
                continue
            if past.shape[0] != n_features:
                raise ValueError(
                    f"agent {agent!r} has a history of {past.shape[0]} coordinates but this update "
                    f"has {n_features}; call reset() when the model changes"
                )
            if past.device != row.device:
                past = past.to(row.device)
                self.history[agent] = past
            past.add_(row)

        n = len(agent_ids)
        gram = torch.zeros(n, n, dtype=torch.float64, device=updates.device)
        step = column_chunk(n, updates.device)
        rows = [self.history[a] for a in agent_ids]
        for start in range(0, n_features, step):
            block = torch.stack([h[start : start + step] for h in rows])
            gram += (block @ block.t()).to(torch.float64)
        alpha = _weights_from_gram(gram, self.kappa)

        scale = alpha if weights is None else alpha * weights.to(torch.float64)
        total = float(n if weights is None else weights.to(torch.float64).sum())
        out = torch.mv(updates.t(), scale.to(updates.dtype)).div_(total)
        self.telemetry = {"weights": dict(zip(agent_ids, alpha.tolist()))}
        return out

    def __repr__(self) -> str:
        return f"FoolsGold(kappa={self.kappa!r}, agents_seen={len(self.history)})"
