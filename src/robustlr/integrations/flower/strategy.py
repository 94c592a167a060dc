"""robustlr's defenses as Flower strategies (Flower's Message API, ``flwr.serverapp.strategy``).

- :class:`RobustLRStrategy` wraps any Flower strategy (FedAvg, FedMedian, FedTrimmedAvg, Krum,
  ...): the inner strategy aggregates the replies as usual; the wrapper turns the replies into
  updates (reply weights minus the global weights it sent), takes the per-coordinate sign vote
  of :class:`robustlr.aggregation.RobustLR`, flips the inner aggregate's update where fewer
  than theta agents agree, and applies the server step of the simulator
  (:func:`robustlr.aggregation.step.apply_server_lr`), so eta stays in one place.
- :class:`RuleStrategy` aggregates with any robustlr rule; :func:`sign_aggregation_strategy`
  and :func:`foolsgold_strategy` are the two Flower lacks.

Clients reply with weights, not updates: each strategy keeps the global arrays it sent in
``configure_train`` (as Flower's FedOpt and DP wrappers do). Malformed replies (an error,
missing arrays or weight, other shapes or dtypes, NaN; and, on by default, an update norm above
``screen_norm_multiple`` = 10 x the round's median: a boosted or model-replacement update) are
dropped and counted in the round's metrics, never averaged in. What a reply claims as its weight
(``num-examples``) is bounded before any strategy reads it: capped at ``max_weight_multiple`` = 10 x
the round's median claim (``capped-weights`` counts them), or ignored with ``weighting="equal"``.
A strategy in a user's app cannot know the clients' true sizes; robustlr's own ServerApp
(:class:`robustlr.integrations.flower.apps.ExperimentStrategy`) uses the federation's.

With Flower's differential-privacy wrappers: the paper applies eta_theta to the aggregate
*plus* noise, so wrap the DP strategy: ``RobustLRStrategy(DifferentialPrivacyServerSideFixedClipping(FedAvg(), ...))``
votes on the (unclipped) replies and flips the clipped, noised aggregate.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from robustlr.aggregation import (AggregationRule, FLTrust, FoolsGold, ModelProbe, RobustLR, RoundInputs,
                                  SignAggregation,
                                  Threshold)
from robustlr.aggregation.screening import screen_updates
from robustlr.integrations.flower.arrays import ArrayLayout, screen_replies, updates_of
from robustlr.aggregation.step import apply_server_lr, server_lr_vector

log = logging.getLogger("robustlr")

#: where RuleStrategy keeps a stateful rule's state in the ServerApp's context.state
RULE_STATE_KEY = "robustlr-rule-state"

__all__ = ["RobustLRStrategy", "RuleStrategy", "fltrust_strategy", "foolsgold_strategy", "sign_aggregation_strategy"]


#: reply metrics that identify a reply rather than measure it: never averaged over replies
_IDENTITY_METRICS = ("agent-id",)


def _metrics_with(metrics: MetricRecord | None, extra: dict) -> MetricRecord:
    out = MetricRecord({k: v for k, v in (dict(metrics) if metrics is not None else {}).items()
                        if k not in _IDENTITY_METRICS})
    for k, v in extra.items():
        out[k] = v
    return out


#: the default norm screen of the strategies: a reply whose update norm exceeds this multiple of the
#: round's median is dropped (a boosted or model-replacement update is 10-100x; honest ones of one
#: round are within a few x of each other); 0 turns it off
DEFAULT_SCREEN_NORM_MULTIPLE = 10.0
#: a reply's claimed weight (``num-examples``) is capped at this multiple of the round's median claim
DEFAULT_MAX_WEIGHT_MULTIPLE = 10.0


def _finite_at_least(name: str, value: float, low: float, note: str = "") -> float:
    """``value`` as a float, refused unless it is finite and >= ``low``."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = float("nan")
    if not x >= low or x == float("inf"):
        raise ValueError(f"{name} must be a finite number >= {low:g}{note}, got {value!r}")
    return x


def _weighting(weighting: str, max_weight_multiple: float) -> tuple[str, float]:
    if weighting not in ("claimed", "equal"):
        raise ValueError(f"weighting must be 'claimed' (num-examples, capped) or 'equal', got {weighting!r}")
    return weighting, _finite_at_least("max_weight_multiple", max_weight_multiple, 1)


def _norm_multiple(value: float) -> float:
    return _finite_at_least("screen_norm_multiple", value, 0, " (0 = off)")


class _KeepsGlobal:
    """Remembers the global arrays sent for training (the one piece of state a strategy must keep
    between ``configure_train`` and ``aggregate_train``, as Flower's FedOpt does), and screens the
    replies against them. Everything else passes between methods as return values."""

    arrayrecord_key = "arrays"
    weighted_by_key = "num-examples"

    def _remember(self, arrays: ArrayRecord) -> None:
        self._layout = ArrayLayout.of(arrays)
        self._global = self._layout.flatten(arrays)

    def _screen(self, replies: Iterable[Message], norm_multiple: float = 0.0
                ) -> tuple[list[Message], dict, list[tuple[Message, str]]]:
        """The replies kept, the round's drop counts (``dropped-replies`` and one per reason), and
        ``(reply, reason)`` for each reply dropped."""
        if not hasattr(self, "_global"):
            raise RuntimeError("aggregate_train called before configure_train: the strategy has no global arrays")
        rejected: list[tuple[Message, str]] = []
        kept, dropped = screen_replies(replies, self._layout, self.arrayrecord_key, self.weighted_by_key, rejected)
        if norm_multiple > 0 and len(kept) >= 2:
            # the norm screen of robustlr.aggregation.screening, on the well-formed replies' updates
            updates, _, nodes = updates_of(kept, self._layout, self._global, self.arrayrecord_key, self.weighted_by_key)
            screened = screen_updates(updates, nodes, norm_multiple=norm_multiple)
            for r in screened.rejections:
                log.warning("dropped the reply of node %s: %s (%s)", r.agent, r.reason, r.detail)
                dropped[r.reason] += 1
                rejected.append((kept[r.row], r.reason))
            kept = [kept[i] for i in screened.keep]
        counts = {"dropped-replies": int(sum(dropped.values()))}
        counts.update({f"dropped-replies/{reason}": int(n) for reason, n in dropped.items()})
        counts["capped-weights"] = self._bound_weights(kept)
        return kept, counts, rejected

    def _bound_weights(self, kept: list[Message]) -> int:
        """Bound what the kept replies claim as their weight, in the replies themselves (so that an
        inner Flower strategy reads the bounded value too): ``weighting = "equal"`` sets every claim
        to 1; ``"claimed"`` caps each at ``max_weight_multiple`` x the round's median claim (one
        reply claiming 10**9 examples would otherwise take over the average). Returns how many were
        changed."""
        if not kept:
            return 0
        claims = [float(next(iter(m.content.metric_records.values()))[self.weighted_by_key]) for m in kept]
        if getattr(self, "weighting", "claimed") == "equal":
            bound = [1.0] * len(claims)
        else:
            cap = float(np.median(claims)) * getattr(self, "max_weight_multiple", DEFAULT_MAX_WEIGHT_MULTIPLE)
            bound = [min(c, cap) for c in claims]
        changed = 0
        for msg, claim, value in zip(kept, claims, bound):
            if value != claim:
                record = next(iter(msg.content.metric_records.values()))
                record[self.weighted_by_key] = value
                changed += 1
                if getattr(self, "weighting", "claimed") != "equal":
                    log.warning("capped the weight node %s claimed (%g examples) at %g (%g x the round's median)",
                                getattr(msg.metadata, "src_node_id", "?"), claim, value, self.max_weight_multiple)
        return changed


class RobustLRStrategy(_KeepsGlobal, Strategy):
    """The robust learning rate around any Flower strategy.

    Args:
        inner: the strategy whose aggregate is flipped (it also samples the nodes and
            aggregates the evaluation).
        threshold: theta, validated once (:class:`robustlr.aggregation.Threshold`): an integer
            count of agents, or a float in (0, 1), a share of the round's valid replies
            (resolved as ``ceil(f * n)``).
        server_lr: eta, applied to the flippable arrays (1 on the others).
        flip_keys: the arrays the vote may flip and eta scales (default: all). An
            ``ArrayRecord`` does not mark batch-norm buffers: pass
            :func:`robustlr.integrations.flower.trainable_keys(model)`; the others are averaged
            as the inner strategy does, never flipped or scaled.
        arrayrecord_key: as in Flower's FedAvg.
        weighted_by_key: as in Flower's FedAvg.

    The round's ``MetricRecord`` gains ``rlr-flipped-fraction``, ``rlr-threshold``,
    ``rlr-flipped-fraction/<array>`` per array (from the flip mask of the one vote), and
    ``dropped-replies`` (with a count per reason).
    """

    def __init__(self, inner: Strategy, threshold: int | float | Threshold, *, server_lr: float = 1.0,
                 flip_keys: Sequence[str] | None = None, arrayrecord_key: str = "arrays",
                 weighted_by_key: str = "num-examples",
                 screen_norm_multiple: float = DEFAULT_SCREEN_NORM_MULTIPLE,
                 weighting: Literal["claimed", "equal"] = "claimed",
                 max_weight_multiple: float = DEFAULT_MAX_WEIGHT_MULTIPLE) -> None:
        if not isinstance(inner, Strategy):
            raise ValueError(f"inner must be a Flower Strategy such as FedAvg(), got {type(inner).__name__}")
        self.inner = inner
        self.threshold = Threshold.of(threshold)  # validated now, not at the first round
        self.server_lr = float(server_lr)
        self.flip_keys = None if flip_keys is None else list(flip_keys)
        self.arrayrecord_key = arrayrecord_key
        self.weighted_by_key = weighted_by_key
        self.screen_norm_multiple = _norm_multiple(screen_norm_multiple)
        self.weighting, self.max_weight_multiple = _weighting(weighting, max_weight_multiple)
        self._vote: tuple[ArrayLayout, RobustLR] | None = None

    def _rlr(self) -> RobustLR:
        """The vote for the arrays sent (one RobustLR per layout, built when the layout is first seen)."""
        if self._vote is None or self._vote[0] != self._layout:
            mask = self._layout.mask(self.flip_keys)
            self._vote = (self._layout, RobustLR(None, self.threshold, mask=None if bool(mask.all()) else mask))
        return self._vote[1]

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._remember(arrays)
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept, counts, _ = self._screen(replies, self.screen_norm_multiple)
        if not kept:
            return None, MetricRecord(counts)
        # the updates first: some inner strategies (FedMedian) consume the replies' arrays
        updates, _, _ = updates_of(kept, self._layout, self._global, self.arrayrecord_key, self.weighted_by_key)
        inner_arrays, inner_metrics = self.inner.aggregate_train(server_round, kept)
        if inner_arrays is None:
            return None, _metrics_with(inner_metrics, counts)
        rlr = self._rlr()
        step = rlr.flip(updates, self._layout.flatten(inner_arrays) - self._global)
        mask = self._layout.mask(self.flip_keys)
        new = apply_server_lr(self._global.clone(), step, server_lr_vector(self.server_lr, mask))
        tel = rlr.telemetry
        extra = {"rlr-flipped-fraction": float(tel["flipped_fraction"]), "rlr-threshold": int(tel["threshold"]),
                 **counts}
        sizes = [(k, int(np.prod(shape))) for k, shape in zip(self._layout.keys, self._layout.shapes)]
        extra.update({f"rlr-flipped-fraction/{k}": v for k, v in rlr.flipped_per_entry(sizes).items()})
        return self._layout.unflatten(new), _metrics_with(inner_metrics, extra)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)


class RuleStrategy(_KeepsGlobal, FedAvg):
    """A Flower strategy that aggregates with a robustlr rule: ``global + eta * rule(updates)``.

    Sampling, configuration and evaluation are Flower's FedAvg's (its keyword arguments are
    accepted); ``agent_ids`` given to the rule are the replying nodes' ids (FoolsGold keeps its
    history by them). Dropped replies are counted in ``dropped-replies``; ``screen_norm_multiple``
    (0 = off) also drops replies whose update norm exceeds that multiple of the round's median.

    A rule that needs the server's own update each round (FLTrust: ``"reference" in rule.round_inputs``) needs
    ``reference_fn(server_round, arrays) -> ArrayRecord``: the server's local model after its own
    training on its root data from the global ``arrays``; the strategy hands the rule that model
    minus the global one (see :func:`fltrust_strategy`). A rule that runs each reply's model on random
    inputs (DeepSight) needs ``model``, a module of the clients' architecture.

    A stateful rule (FLDetector, FoolsGold) keeps its state in the ServerApp's ``context`` when one
    is given: after every round its ``state_dict()`` is stored in ``context.state`` under
    ``"robustlr-rule-state"``, and a strategy built on a context that holds one starts from it.
    """

    def __init__(self, rule: AggregationRule, server_lr: float = 1.0, *, flip_keys: Sequence[str] | None = None,
                 screen_norm_multiple: float = DEFAULT_SCREEN_NORM_MULTIPLE,
                 weighting: Literal["claimed", "equal"] = "claimed",
                 max_weight_multiple: float = DEFAULT_MAX_WEIGHT_MULTIPLE,
                 reference_fn: Callable[[int, ArrayRecord], ArrayRecord] | None = None,
                 model: torch.nn.Module | None = None, context: Context | None = None, **fedavg_kwargs) -> None:
        if "reference" in getattr(rule, "round_inputs", frozenset()) and reference_fn is None:
            raise ValueError(f"{rule!r} needs the server's own update every round: pass reference_fn(server_round, "
                             f"arrays) -> the ArrayRecord the server trains on its root data from arrays")
        if "probe" in getattr(rule, "round_inputs", frozenset()) and model is None:
            raise ValueError(f"{rule!r} runs each reply's model on random inputs: pass model= (a module of the "
                             f"clients' architecture; its weights do not matter)")
        self.reference_fn = reference_fn
        self.model = model
        self.context = context
        if context is not None and RULE_STATE_KEY in context.state:  # a restarted ServerApp picks up the rule's state
            blob = context.state[RULE_STATE_KEY]["state"]
            rule.load_state_dict(torch.load(io.BytesIO(blob), weights_only=False))
        super().__init__(**fedavg_kwargs)
        self.screen_norm_multiple = _norm_multiple(screen_norm_multiple)
        self.weighting, self.max_weight_multiple = _weighting(weighting, max_weight_multiple)
        self.rule = rule
        self.server_lr = float(server_lr)
        self.flip_keys = None if flip_keys is None else list(flip_keys)

    def rule_for_round(self, server_round: int) -> AggregationRule:
        """The rule of a round (a subclass may switch rules, as the RLR schedule does)."""
        return self.rule

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._remember(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        kept, counts, _ = self._screen(replies, self.screen_norm_multiple)
        if not kept:
            return None, MetricRecord(counts)
        updates, weights, nodes = updates_of(kept, self._layout, self._global, self.arrayrecord_key,
                                             self.weighted_by_key)
        rule = self.rule_for_round(server_round)
        need = getattr(rule, "round_inputs", frozenset())
        if need:
            reference = None
            if "reference" in need:
                trained = self.reference_fn(server_round, self._layout.unflatten(self._global))
                reference = self._layout.flatten(trained) - self._global
            probe = None
            if "probe" in need:
                probe = ModelProbe(self.model, state_of=lambda v: self._layout.unflatten(v).to_torch_state_dict()
                                   ).bound(self._global)
            rule.set_round_inputs(RoundInputs(reference=reference, probe=probe,
                                              global_params=self._global if "global_params" in need else None))
        step = rule(updates, weights=weights, agent_ids=nodes)
        new = apply_server_lr(self._global.clone(), step, server_lr_vector(self.server_lr,
                                                                          self._layout.mask(self.flip_keys)))
        if self.context is not None:  # the rule's state (FLDetector's window, FoolsGold's histories) in the context
            buf = io.BytesIO()
            torch.save(rule.state_dict(), buf)
            self.context.state[RULE_STATE_KEY] = ConfigRecord({"state": buf.getvalue(), "round": server_round})
        metrics = self.train_metrics_aggr_fn([m.content for m in kept], self.weighted_by_key)
        tel = getattr(rule, "telemetry", {}) or {}
        if "flipped_fraction" in tel:
            counts.update({"rlr-flipped-fraction": float(tel["flipped_fraction"]), "rlr-threshold": int(tel["threshold"])})
        counts["replies"] = len(kept)
        return self._layout.unflatten(new), _metrics_with(metrics, counts)


def sign_aggregation_strategy(server_lr: float = 1e-3, **fedavg_kwargs) -> RuleStrategy:
    """signSGD with majority vote (the paper's eq. 4) as a Flower strategy; eta 1e-3 as in the paper."""
    return RuleStrategy(SignAggregation(), server_lr, **fedavg_kwargs)


def fltrust_strategy(reference_fn: Callable[[int, ArrayRecord], ArrayRecord], server_lr: float = 1.0,
                     **fedavg_kwargs) -> RuleStrategy:
    """FLTrust (Cao et al., NDSS 2021) as a Flower strategy. ``reference_fn(server_round, arrays)``
    returns the server's model after its own local training on its clean root data from the global
    ``arrays`` (the paper: 100 examples, the clients' local training); the replies are weighted by
    their cosine to that update and rescaled to its norm (:class:`robustlr.aggregation.FLTrust`)."""
    return RuleStrategy(FLTrust(), server_lr, reference_fn=reference_fn, **fedavg_kwargs)


def foolsgold_strategy(**fedavg_kwargs) -> RuleStrategy:
    """FoolsGold (Fung et al. 2018) as a Flower strategy: histories kept per node id."""
    return RuleStrategy(FoolsGold(), 1.0, **fedavg_kwargs)
