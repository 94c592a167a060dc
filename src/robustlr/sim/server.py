"""The server: the aggregation rule a config asks for, and the one place ``eta`` is applied.

A round's server step is ``global += eta_vec * rule(updates)``: the rule is pure (FedAvg,
median, sign vote, FoolsGold, optionally clipped and noised, optionally wrapped in the robust
learning rate, which flips signs but does not scale), and ``eta_vec`` is the server learning
rate ``eta`` on trainable parameters and 1 on buffers (batch-norm running statistics and
``num_batches_tracked`` are averaged plainly, never scaled). :func:`apply_server_lr` is that
step, written so that an integration (Flower) can call it on its own arrays.

With clipping and noise, eq. 2 of the paper puts the noise inside the server's step:
``eta * (rule(clipped) + N(0, sigma^2 M^2))``, so its scale is ``eta * sigma * M``; with sign
aggregation that is ``eta * (sign vote + noise)``, as in the authors' code.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robustlr.aggregation import (AggregationRule, Bulyan, ClipAndNoise, CoordinateMedian, FedAvg, Flame, FoolsGold,
                                  GeometricMedian, Krum, ParamLayout, PlainBuffers, RobustLR, SignAggregation,
                                  TrimmedMean)
from robustlr.aggregation.step import apply_server_lr, server_lr_vector  # noqa: F401  (re-exported)
from robustlr.sim.config import ExperimentConfig

#: the config's ``aggregator`` -> the base rule, from the config, the round's agent count and the noise generator
RULES = {
    "fedavg": lambda cfg, n, gen: FedAvg(),
    "comed": lambda cfg, n, gen: CoordinateMedian(even=cfg.comed_even),
    "sign": lambda cfg, n, gen: SignAggregation(),
    "foolsgold": lambda cfg, n, gen: FoolsGold(),
    "trimmed-mean": lambda cfg, n, gen: TrimmedMean(cfg.trim_fraction),
    "krum": lambda cfg, n, gen: Krum(cfg.resolved_assumed_corrupt(n)),
    "multikrum": lambda cfg, n, gen: Krum(f := cfg.resolved_assumed_corrupt(n),
                                          m=cfg.multikrum_keep if cfg.multikrum_keep is not None else n - f),
    "bulyan": lambda cfg, n, gen: Bulyan(cfg.resolved_assumed_corrupt(n)),
    "rfa": lambda cfg, n, gen: GeometricMedian(),
    "flame": lambda cfg, n, gen: Flame(noise_lambda=cfg.flame_noise_lambda, generator=gen),
}


def build_rule(cfg: ExperimentConfig, layout: ParamLayout, noise_gen: torch.Generator,
               agents_per_round: int | None = None) -> AggregationRule:
    """The server's rule for ``cfg``: base rule, optionally clip + noise, optionally RLR around it.

    A model with buffers (batch norm) has them averaged plainly (:class:`PlainBuffers` around
    the rule and its clipping and noise) unless ``buffer_aggregation = "rule"``; RLR flips
    trainable coordinates only unless ``rlr_scope = "all"``.

    The RLR threshold when updates are rejected: an integer ``rlr_threshold`` counts agents of
    a full round of ``agents_per_round``; when some updates are rejected (non-finite) theta
    scales with the voters left, ``ceil(theta * valid / sampled)``, so it keeps its meaning as
    the share of the round's voters that must agree. (A fixed theta with fewer voters would flip
    more coordinates than the defense intends, up to every one when theta exceeds the voters
    left; clamping it to the voters left would make a unanimous vote of a few enough; skipping
    the round would lose the honest agents' work.) A fractional ``rlr_threshold`` is already a
    share of the valid voters. Any server-side screening must follow the same rule.

    Krum, multi-Krum and Bulyan guard against f = ``assumed_corrupt`` (default ceil(F x agents per
    round)) agents; multi-Krum averages the n - f best-scored updates unless ``multikrum_keep``.
    FLAME's noise comes from the server's seeded noise stream, as clipping and noise do.

    To add a rule: implement it in :mod:`robustlr.aggregation`, add it to ``RULES`` and to
    the config's ``aggregator`` field.
    """
    n = agents_per_round if agents_per_round is not None else (cfg.num_agents or 1)
    rule: AggregationRule = RULES[cfg.aggregator](cfg, n, noise_gen)
    if cfg.server_clip_norm > 0 or cfg.noise_sigma > 0:
        rule = ClipAndNoise(rule, clip_norm=cfg.server_clip_norm, noise_sigma=cfg.noise_sigma, generator=noise_gen)
    trainable = layout.trainable_mask()
    if cfg.buffer_aggregation == "mean" and not bool(trainable.all()):
        # batch-norm buffers: the plain size-weighted mean; the rule, clipping and noise see parameters only
        rule = PlainBuffers(rule, trainable)
    if cfg.rlr_threshold > 0:
        if cfg.rlr_threshold >= 1 and agents_per_round is None:
            kw = {"threshold": int(cfg.rlr_threshold)}
        elif cfg.rlr_threshold >= 1:
            # theta of a full round, as a share of its agents (see above); exact for a full round
            kw = {"threshold_fraction": min(1.0, int(cfg.rlr_threshold) / agents_per_round)}
        else:
            kw = {"threshold_fraction": cfg.rlr_threshold}
        rule = RobustLR(rule, layout=layout if cfg.rlr_scope == "trainable" else None, **kw)
    return rule


def rlr_on(cfg: ExperimentConfig, round_: int, records) -> bool | None:
    """The RLR schedule for ``round_``: None without RLR; else on from ``rlr_from_round``, or
    from the round after the first evaluated one (in ``records``, the rounds so far) whose
    validation accuracy reached ``rlr_from_val_acc``. Off, the server uses the wrapped rule."""
    if cfg.rlr_threshold == 0:
        return None
    if cfg.rlr_from_val_acc is not None:
        return any(r.evaluated and r.val_acc is not None and r.val_acc >= cfg.rlr_from_val_acc
                   for r in records if r.round < round_)
    return round_ >= cfg.rlr_from_round
