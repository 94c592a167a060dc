"""The server side of a round, in one place: :class:`Server`.

The built-in simulator (:mod:`robustlr.sim.loop`) and the Flower ServerApp
(:mod:`robustlr.integrations.flower.apps`) both call :meth:`Server.step` with the round's
updates; it screens them, aggregates with the config's rule (RLR on or off by its schedule),
checks that the result is finite, applies the server learning rate, and returns the round
record's server fields, vote telemetry included. It also holds the initial model
(:func:`initial_model`), the rule's state for checkpoints, and builds the run summary.

A round's server step is ``global += eta_vec * rule(updates)``: the rule is pure (FedAvg,
median, sign vote, FoolsGold, optionally clipped and noised, optionally wrapped in the robust
learning rate, which flips signs but does not scale), and ``eta_vec`` is the server learning
rate ``eta`` on trainable parameters and 1 on buffers (batch-norm running statistics and
``num_batches_tracked`` are averaged plainly, never scaled);
:func:`robustlr.aggregation.step.apply_server_lr` is that step.

With clipping and noise, eq. 2 of the paper puts the noise inside the server's step:
``eta * (rule(clipped) + N(0, sigma^2 M^2))``, so its scale is ``eta * sigma * M``; with sign
aggregation that is ``eta * (sign vote + noise)``, as in the authors' code. The noise of round
``r`` comes from its own stream, seeded from ``(seed, NOISE, r)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robustlr.aggregation import (AggregationRule, Bulyan, ClipAndNoise, CoordinateMedian, FedAvg, Flame, FoolsGold,
                                  GeometricMedian, Krum, ParamLayout, PlainBuffers, RobustLR, SignAggregation, SignGuard,
                                  DeepSight, FLDetector, FLTrust, FreqFed, ModelProbe, RoundInputs,
                                  Threshold, TrimmedMean, flipped_per_layer, layer_telemetry,
                                  vote_telemetry)
from robustlr.aggregation.screening import screen_updates
from robustlr.aggregation.crfl import clip_model, crfl_rho
from robustlr.aggregation.step import apply_server_lr, server_lr_vector
from robustlr.errors import TrainingError
from robustlr.models import build_model, model_spec
from robustlr.models.registry import check_outputs
from robustlr.sim import seeding
from robustlr.sim.config import ExperimentConfig
from robustlr.sim.pretrain import InitModel, load_init_state
from robustlr.sim.records import RoundRecord, RunSummary, backdoor_durability, is_collapsed, provenance

log = logging.getLogger("robustlr")

__all__ = ["RULES", "Server", "ServerStep", "apply_server_lr", "build_base_rule", "build_rule", "excluded_agents",
           "initial_model", "place_model", "rlr_on", "rlr_threshold", "run_summary", "server_lr_vector"]

#: the config's ``aggregator`` -> the base rule, from the config, the round's agent count and the noise generator
RULES = {
    "fedavg": lambda cfg, n, gen, out: FedAvg(),
    "comed": lambda cfg, n, gen, out: CoordinateMedian(even=cfg.comed_even),
    "sign": lambda cfg, n, gen, out: SignAggregation(),
    "foolsgold": lambda cfg, n, gen, out: FoolsGold(),
    "trimmed-mean": lambda cfg, n, gen, out: TrimmedMean(cfg.trim_fraction),
    "krum": lambda cfg, n, gen, out: Krum(cfg.resolved_assumed_corrupt(n)),
    "multikrum": lambda cfg, n, gen, out: Krum(f := cfg.resolved_assumed_corrupt(n),
                                          m=cfg.multikrum_keep if cfg.multikrum_keep is not None else n - f),
    "bulyan": lambda cfg, n, gen, out: Bulyan(cfg.resolved_assumed_corrupt(n)),
    "rfa": lambda cfg, n, gen, out: GeometricMedian(),
    "flame": lambda cfg, n, gen, out: Flame(noise_lambda=cfg.flame_noise_lambda, generator=gen),
    "signguard": lambda cfg, n, gen, out: SignGuard(cfg.signguard_lower, cfg.signguard_upper, cfg.signguard_coord_fraction,
                                               generator=gen),
    "fltrust": lambda cfg, n, gen, out: FLTrust(),
    "fldetector": lambda cfg, n, gen, out: FLDetector(FedAvg(), window=cfg.fldetector_window, generator=gen),
    "deepsight": lambda cfg, n, gen, out: DeepSight(out().weight, out().shape, out().bias, cfg.input_shape,
                                                    samples=cfg.deepsight_samples, seeds=cfg.deepsight_seeds,
                                                    tau=cfg.deepsight_tau,
                                                    min_cluster_size=cfg.deepsight_min_cluster_size),
    "freqfed": lambda cfg, n, gen, out: FreqFed(out().weight, out().shape),
}


def build_base_rule(cfg: ExperimentConfig, layout: ParamLayout, noise_gen: torch.Generator,
                    agents_per_round: int | None = None) -> AggregationRule:
    """The server's rule for ``cfg`` without the robust learning rate: the base rule, optionally
    clip + noise, and batch-norm buffers averaged plainly (:class:`PlainBuffers`) unless
    ``buffer_aggregation = "rule"``.

    Krum, multi-Krum and Bulyan guard against f = ``assumed_corrupt`` (default ceil(F x agents per
    round)) agents; multi-Krum averages the n - f best-scored updates unless ``multikrum_keep``.
    FLAME's noise comes from the server's seeded noise stream, as clipping and noise do.

    To add a rule: implement it in :mod:`robustlr.aggregation`, add it to ``RULES`` (a builder
    ``(cfg, agents_per_round, noise_generator, output_layer)``, the last a function giving the
    model's :class:`~robustlr.aggregation.layout.OutputLayer` where the rule sees it) and to the
    config's ``aggregator`` field.
    """
    n = agents_per_round if agents_per_round is not None else (cfg.num_agents or 1)
    trainable = layout.trainable_mask()
    plain_buffers = cfg.buffer_aggregation == "mean" and not bool(trainable.all())

    def output_layer():  # where the rule sees the output layer (DeepSight, FreqFed): among trainable coordinates
        return layout.output_layer(cfg.num_classes, trainable_only=plain_buffers)  # behind PlainBuffers

    rule: AggregationRule = RULES[cfg.aggregator](cfg, n, noise_gen, output_layer)
    if cfg.server_clip_norm > 0 or cfg.noise_sigma > 0:
        rule = ClipAndNoise(rule, clip_norm=cfg.server_clip_norm, noise_sigma=cfg.noise_sigma, generator=noise_gen)
    if plain_buffers:
        # batch-norm buffers: the plain size-weighted mean; the rule, clipping and noise see parameters only
        rule = PlainBuffers(rule, trainable)
    return rule


def rlr_threshold(cfg: ExperimentConfig, agents_per_round: int | None = None) -> Threshold | None:
    """The config's ``rlr_threshold`` in its one form (:class:`robustlr.aggregation.Threshold`),
    None when it is 0 (no robust learning rate).

    An integer counts agents of a full round of ``agents_per_round``; when some updates are
    rejected (non-finite, or by the norm screen) it scales with the voters left,
    ``ceil(theta * valid / sampled)``, so it keeps its meaning as the share of the round's voters
    that must agree. (A fixed theta with fewer voters would flip more coordinates than the defense
    intends, up to every one when theta exceeds the voters left; clamping it to the voters left
    would make a unanimous vote of a few enough; skipping the round would lose the honest agents'
    work.) A value in (0, 1) is already a share of the valid voters.
    """
    if cfg.rlr_threshold == 0:
        return None
    return Threshold.of(cfg.rlr_threshold, full_round=agents_per_round)


def build_rule(cfg: ExperimentConfig, layout: ParamLayout, noise_gen: torch.Generator,
               agents_per_round: int | None = None) -> AggregationRule:
    """The server's whole rule for ``cfg``: :func:`build_base_rule`, wrapped in
    :class:`RobustLR` when ``rlr_threshold > 0`` (:func:`build_rlr`; theta as :func:`rlr_threshold`
    says)."""
    base = build_base_rule(cfg, layout, noise_gen, agents_per_round)
    theta = rlr_threshold(cfg, agents_per_round)
    if theta is None:
        return base
    return build_rlr(cfg, base, theta, layout)


def build_rlr(cfg: ExperimentConfig, base: AggregationRule, theta: Threshold, layout: ParamLayout) -> RobustLR:
    """:class:`RobustLR` around ``base`` as the config says: its scope (``rlr_scope``: trainable
    coordinates, conv/linear weights only, or all), ``rlr_soft`` and ``rlr_max_flip`` (a threshold
    per array of the layout)."""
    if cfg.rlr_scope == "all":
        return RobustLR(base, theta, soft=cfg.rlr_soft, max_flip=cfg.rlr_max_flip,
                        layout=layout if cfg.rlr_max_flip is not None else None,
                        mask=torch.ones(layout.numel, dtype=torch.bool) if cfg.rlr_max_flip is not None else None)
    mask = layout.weight_mask() if cfg.rlr_scope == "weights" else None
    return RobustLR(base, theta, layout=layout, mask=mask, soft=cfg.rlr_soft, max_flip=cfg.rlr_max_flip)


def rlr_on(cfg: ExperimentConfig, round_: int, records: Iterable[RoundRecord]) -> bool | None:
    """The RLR schedule for ``round_``: None without RLR; else on from ``rlr_from_round``, or
    from the round after the first scheduled evaluation (a round that is a multiple of
    ``eval_every``; in ``records``, the rounds so far) whose validation accuracy reached
    ``rlr_from_val_acc``. Off, the server uses the base rule.

    Only scheduled evaluations count: a run's last round is evaluated too, and a finished run that
    is extended would otherwise switch on earlier than the same run made in one go."""
    if cfg.rlr_threshold == 0:
        return None
    if cfg.rlr_from_val_acc is not None:
        return any(r.evaluated and r.round % cfg.eval_every == 0 and r.val_acc is not None
                   and r.val_acc >= cfg.rlr_from_val_acc for r in records if r.round < round_)
    return round_ >= cfg.rlr_from_round


def excluded_agents(telemetry: dict, agents: list[int]) -> list[int] | None:
    """The agents whose update the rule left out this round (Krum, multi-Krum and Bulyan: those not
    selected; FLAME: those outside the majority cluster), from its telemetry, looking through
    wrappers (RLR, clipping, batch-norm buffers); None for rules that leave nobody out."""
    tel = telemetry
    while isinstance(tel, dict):
        if "rejected_agents" in tel and tel["rejected_agents"] is not None:
            return sorted(int(a) for a in tel["rejected_agents"])
        if "selected_agents" in tel and tel["selected_agents"] is not None:
            chosen = {int(a) for a in tel["selected_agents"]}
            return sorted(a for a in agents if a not in chosen)
        tel = tel.get("inner")
    return None


def initial_model(cfg: ExperimentConfig, num_classes: int, init: InitModel | None = None) -> torch.nn.Module:
    """The global model at round 0: built under the seed ``(seed, INIT)``, then replaced by the
    warm start ``init`` (a resolved ``init_model``, see :func:`robustlr.sim.pretrain.resolve_init_model`)."""
    torch.manual_seed(seeding.seed_of(cfg.seed, seeding.INIT))
    model = build_model(cfg.model, num_classes=num_classes)
    if model_spec(cfg.model).origin != "built in":  # a plugged-in model: its outputs must fit, before any work
        check_outputs(cfg.model, model, cfg.input_shape, num_classes,
                      dtype=torch.int64 if cfg.facts.token_ids else torch.float32)
    if init is not None:
        model.load_state_dict(load_init_state(init, model))
    return model


def place_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device``, in the memory layout both paths evaluate it in.

    On a CPU the model is channels-last (oneDNN's convolutions run about 2x faster on
    channels-last activations). The simulator and the Flower ServerApp both place the model
    here: the layout picks the convolution kernel, whose last bits differ between layouts, so
    one place keeps their evaluation numbers equal bit for bit."""
    model = model.to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model


@dataclass
class ServerStep:
    """What one :meth:`Server.step` did: the round record's server fields, and what an observer
    of the round may look at (the updates aggregated, which of them are corrupt, the aggregate
    and RLR's flip mask)."""

    record: RoundRecord
    updates: Tensor  # (n_kept, n_params): the updates aggregated (screened ones removed)
    agents: list[int]  # their agents, in row order
    corrupt: Tensor  # (n_kept,) bool
    aggregate: Tensor | None  # the rule's output (None when every update was rejected)
    flipped: Tensor | None  # RLR's flip mask (None without RLR in this round)
    rejections: list = field(default_factory=list)


class Server:
    """The server of a federated run of ``cfg``: rule, RLR schedule, noise, screening, eta.

    Args:
        cfg: the run's config.
        layout: the model's :class:`ParamLayout` (which coordinates are trainable, layer names).
        num_agents: agents in the federation (a full round is ``cfg.agents_per_round(num_agents)``).
        agent_sizes: per agent, its number of training samples (the rule's weights).
        corrupt: the corrupt agents' ids (for the record: who is who, never for the rule).
        without_base: corrupt agents that hold no base-class sample (they train honestly).
        unpoisoned: corrupt agents with no poisoned sample.
        device: where the global parameters live.
        model: the global model's module, for a rule that runs the round's models (DeepSight).
    """

    def __init__(self, cfg: ExperimentConfig, layout: ParamLayout, *, num_agents: int,
                 agent_sizes: Sequence[int] | np.ndarray, corrupt: Iterable[int] = (),
                 without_base: Iterable[int] = (), unpoisoned: Iterable[int] = (),
                 device: torch.device | str = "cpu", model: torch.nn.Module | None = None) -> None:
        self.cfg = cfg
        self.layout = layout
        self.num_agents = int(num_agents)
        self.agent_sizes = np.asarray(agent_sizes)
        self.corrupt = np.asarray(sorted(int(a) for a in corrupt), dtype=np.int64)
        self.without_base = frozenset(int(a) for a in without_base)
        self.unpoisoned = frozenset(int(a) for a in unpoisoned)
        self.device = torch.device(device)
        self.noise_gen = torch.Generator(device="cpu")
        full_round = cfg.agents_per_round(self.num_agents)
        self.base_rule = build_base_rule(cfg, layout, self.noise_gen, full_round)
        theta = rlr_threshold(cfg, full_round)
        self.rlr: RobustLR | None = None if theta is None else build_rlr(cfg, self.base_rule, theta, layout)
        self.probe: ModelProbe | None = None
        if "probe" in self.rule.round_inputs:
            if model is None:
                raise ValueError(f"aggregator {cfg.aggregator!r} runs the round's models on random inputs: build the "
                                 f"Server with model= (the global model's module)")
            self.probe = ModelProbe(model, layout)
        self._trainable = layout.trainable_mask()
        eta = server_lr_vector(cfg.resolved_server_lr, layout.trainable_mask())
        self.eta = eta.to(self.device) if isinstance(eta, Tensor) else eta

    @classmethod
    def for_federation(cls, cfg: ExperimentConfig, fed, layout: ParamLayout,
                       device: torch.device | str = "cpu", model: torch.nn.Module | None = None) -> "Server":
        """The server of ``cfg`` on federation ``fed`` (:class:`robustlr.sim.federation.Federation`)."""
        labels = fed.dataset.train_y
        corrupt = [int(a) for a in fed.corrupt]
        without_base = [a for a in corrupt
                        if not bool((labels[torch.from_numpy(fed.agent_indices[a])] == cfg.base_class).any())]
        unpoisoned = [a for a in corrupt if fed.poisoned_per_agent.get(a, 0) == 0]
        return cls(cfg, layout, num_agents=fed.num_agents, agent_sizes=fed.agent_sizes, corrupt=corrupt,
                   without_base=without_base, unpoisoned=unpoisoned, device=device, model=model)

    @property
    def rule(self) -> AggregationRule:
        """The whole rule (RLR around the base rule, when the config has RLR)."""
        return self.rlr if self.rlr is not None else self.base_rule

    def rule_for(self, on: bool | None) -> AggregationRule:
        """The rule of a round whose RLR schedule says ``on`` (see :func:`rlr_on`)."""
        return self.base_rule if on is False else self.rule

    # -- checkpoints: the rule's state (FoolsGold's histories)
    def state_dict(self) -> dict[str, Any]:
        return self.rule.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rule.load_state_dict(state)

    # -- one round
    def step(self, round_: int, global_params: Tensor, updates: Tensor, agents: Sequence[int],
             records: Sequence[RoundRecord], *, rejections: Sequence = (),
             norms: Tensor | None = None, reference: Tensor | None = None) -> ServerStep:
        """The server side of round ``round_``, applied to ``global_params`` in place.

        ``updates`` are the agents' updates in the order of ``agents`` (ids); ``records`` the
        rounds before this one (the RLR schedule and the stop rule read them); ``rejections``
        the :class:`robustlr.aggregation.screening.Rejection` of updates refused before they could
        be stacked (Flower: malformed replies); ``norms`` the updates' L2 norms if already known;
        ``reference`` the server's own update of the round on its root dataset (FLTrust's ``g0``,
        required by a rule whose :attr:`~robustlr.aggregation.AggregationRule.round_inputs` name it).

        Screening rejects non-finite updates and, with ``screen_norm_multiple``, those far larger
        than the round's median, and logs them; the rule aggregates the rest (RLR on or off by its
        schedule) with the round's seeded noise; a non-finite aggregate or model stops the run
        (:class:`TrainingError`), as do ``max_rounds_without_updates`` rounds with no update left.
        """
        cfg = self.cfg
        agents = [int(a) for a in agents]
        if norms is None:
            norms = torch.linalg.vector_norm(updates, dim=1)
        # a malformed update (NaN/inf) or, with screen_norm_multiple, one far larger than the round's
        # median is rejected and logged, never averaged in. A row whose norm is finite has only finite
        # entries; only rows with a non-finite norm (possibly an overflow) get the exact check
        screened = screen_updates(updates, agents, norm_multiple=cfg.screen_norm_multiple, norms=norms)
        all_rejections = list(rejections) + list(screened.rejections)
        if screened.rejections:
            log.warning("round %d: rejected the updates of %s", round_,
                        "; ".join(f"agent {r.agent} ({r.reason}: {r.detail})" for r in screened.rejections))
            keep = torch.tensor(screened.keep, dtype=torch.int64)
            updates, norms = updates[keep.to(updates.device)], norms[keep.to(norms.device)]
            agents = [agents[i] for i in screened.keep]
        is_corrupt = np.isin(np.asarray(agents, dtype=np.int64), self.corrupt)
        norms_np = norms.cpu().numpy()
        corrupt_here = [a for a, c in zip(agents, is_corrupt) if c]
        rec = RoundRecord(
            round=round_, agents=len(agents), corrupt_in_round=int(is_corrupt.sum()),
            rejected=sorted(int(r.agent) for r in all_rejections if isinstance(r.agent, (int, np.integer))),
            rejections=[r.to_dict() for r in all_rejections], screen_median_norm=screened.median_norm,
            honest_norm=float(norms_np[~is_corrupt].mean()) if (~is_corrupt).any() else None,
            corrupt_norm=float(norms_np[is_corrupt].mean()) if is_corrupt.any() else None,
            # corrupt agents that hold no base-class sample (non-iid data) train honestly, with no
            # trojan; 'unpoisoned' also counts those whose floor(P * n_base) is 0
            corrupt_without_base_in_round=sum(1 for a in corrupt_here if a in self.without_base),
            corrupt_unpoisoned_in_round=sum(1 for a in corrupt_here if a in self.unpoisoned),
            rlr_on=rlr_on(cfg, round_, records),
        )
        corrupt_t = torch.from_numpy(is_corrupt)
        t_agg = time.perf_counter()
        if not agents:
            empty = 1 + next((i for i, r in enumerate(reversed(records)) if r.agents), len(records))
            if empty >= cfg.max_rounds_without_updates:
                raise TrainingError(
                    f"round {round_}: every agent's update was rejected (non-finite, or over the norm screen) in {empty} "
                    f"consecutive rounds "
                    f"(max_rounds_without_updates = {cfg.max_rounds_without_updates}); local training diverges "
                    f"(client_lr = {cfg.client_lr}?).")
            rec.seconds_aggregation = time.perf_counter() - t_agg
            return ServerStep(rec, updates, agents, corrupt_t, None, None, all_rejections)
        self.noise_gen.manual_seed(seeding.seed_of(cfg.seed, seeding.NOISE, round_))
        weights = torch.as_tensor(self.agent_sizes[agents], dtype=torch.float32)
        rule = self.rule_for(rec.rlr_on)
        need = rule.round_inputs
        if need:
            if "reference" in need and reference is None:
                raise TrainingError(f"round {round_}: aggregator {cfg.aggregator!r} needs the server's own update on "
                                    f"its root dataset (reference), and none was given")
            try:
                rule.set_round_inputs(RoundInputs(
                    reference=reference.to(updates.device) if "reference" in need else None,
                    global_params=global_params if "global_params" in need else None,
                    probe=self.probe.bound(global_params.clone()) if "probe" in need and self.probe else None))
            except ValueError as exc:
                raise TrainingError(f"round {round_}: {exc}") from exc
        try:
            aggregate = rule(updates, weights=weights, agent_ids=agents)
        except ValueError as exc:  # e.g. Krum/Bulyan with too few updates left after screening
            raise TrainingError(f"round {round_}: the aggregation rule refused the {len(agents)} updates left "
                                f"after screening ({len(all_rejections)} rejected): {exc}.") from exc
        if not bool(torch.isfinite(aggregate).all()):
            raise TrainingError(f"round {round_}: the aggregated update is not finite.")
        apply_server_lr(global_params, aggregate, self.eta)
        if cfg.crfl:  # CRFL: the global model's parameter norm clipped to rho_t (its buffers are not parameters)
            rec.crfl_rho = crfl_rho(round_, cfg.crfl_rho_slope, cfg.crfl_rho_intercept, cfg.crfl_rho_cap)
            rec.crfl_clip_scale = clip_model(global_params, rec.crfl_rho, self._trainable.to(global_params.device))
        if not bool(torch.isfinite(global_params).all()):
            raise TrainingError(f"round {round_}: the global model became non-finite after the server step "
                                f"(server_lr = {cfg.resolved_server_lr}).")
        tel = rule.telemetry or {}
        if "flipped_fraction" in tel:
            rec.flipped_fraction = float(tel["flipped_fraction"])
            rec.threshold = tel.get("threshold")
            if "mean_scale" in tel:
                rec.rlr_mean_scale = float(tel["mean_scale"])
            if tel.get("layer_thresholds"):
                rec.rlr_layer_thresholds = dict(tel["layer_thresholds"])
        excluded = excluded_agents(tel, agents)
        if excluded is not None:
            rec.excluded = excluded
            rec.corrupt_excluded = int(np.isin(excluded, self.corrupt).sum())
        t_tel = time.perf_counter()
        votes = vote_telemetry(updates, corrupt_t, aggregate)
        flipped = rule.flipped if isinstance(rule, RobustLR) else None
        rec = rec.model_copy(update={
            **votes, "flipped_per_layer": None if flipped is None else flipped_per_layer(flipped, self.layout),
            "per_layer": layer_telemetry(updates, corrupt_t, aggregate, self.layout) if cfg.telemetry_per_layer
            else None,
            "seconds_telemetry": time.perf_counter() - t_tel})
        rec.seconds_aggregation = time.perf_counter() - t_agg
        return ServerStep(rec, updates, agents, corrupt_t, aggregate, flipped, all_rejections)

    # -- CRFL: the model sent is perturbed
    def model_to_send(self, global_params: Tensor, round_: int) -> Tensor:
        """The model the agents of round ``round_`` train from: ``global_params`` itself, or with CRFL
        (``cfg.crfl``) from round 2 on a copy plus ``N(0, crfl_sigma^2)`` on every parameter (drawn on
        the CPU from the seeded stream ``(seed, CRFL, round)``: a resumed run sends the same model)."""
        if not self.cfg.crfl or round_ < 2:
            return global_params
        gen = seeding.torch_generator(self.cfg.seed, seeding.CRFL, round_)
        noise = torch.randn(global_params.shape, generator=gen, dtype=torch.float32) * self.cfg.crfl_sigma
        return global_params + (noise * self._trainable).to(device=global_params.device, dtype=global_params.dtype)

    # -- the run record
    def summary(self, records: Sequence[RoundRecord], *, seconds: float, engine: str, federation: dict,
                init: InitModel | None = None) -> RunSummary:
        """The run summary of this server's run (:func:`run_summary`)."""
        return run_summary(self.cfg, records, seconds=seconds, engine=engine, federation=federation, init=init)


def theorem1_fields(records: Sequence[RoundRecord]) -> dict[str, Any]:
    """The summary's p0 fields (see :class:`robustlr.sim.records.RunSummary`): the mean and largest
    flipped share over the rounds RLR was on, and whether every one was below 1/4 (Theorem 1's premise)."""
    shares = [r.flipped_fraction for r in records if r.flipped_fraction is not None]
    if not shares:
        return {}
    return {"rlr_p0_mean": sum(shares) / len(shares), "rlr_p0_max": max(shares),
            "theorem1_premise": max(shares) < 0.25}


def run_summary(cfg: ExperimentConfig, records: Sequence[RoundRecord], *, seconds: float, engine: str,
                federation: dict, init: InitModel | None = None) -> RunSummary:
    """The run summary: the last evaluated round's metrics, whether the model collapsed (validation
    at or below ``records.COLLAPSE_MULTIPLE`` x chance: under attack a result, not a failure), the RLR switch
    round, the cost and what produced the numbers (machine, versions)."""
    final = next((r for r in reversed(records) if r.evaluated), None)
    collapsed = is_collapsed(final.val_acc, cfg.num_classes) if final is not None else None
    federation = dict(federation)
    dataset = federation.pop("dataset", None)  # the federation's record of its data goes to its own field
    return RunSummary(collapsed=collapsed, model=model_spec(cfg.model).record(), dataset=dataset,
        name=cfg.name, rounds=cfg.rounds,
        **{k: getattr(final, k) if final else None for k in ("val_acc", "val_loss", "base_acc", "backdoor_acc")},
        rlr_switch_round=next((r.round for r in records if r.rlr_on), None),
        **theorem1_fields(records),
        **backdoor_durability(records, cfg.attack_until_round if cfg.corrupt_fraction > 0 else None, cfg.rounds),
        seconds=seconds, seconds_per_round=seconds / max(1, cfg.rounds),
        engine=engine, federation=dict(federation),
        init_model=init.record() if init is not None else None, **provenance(),
    )
