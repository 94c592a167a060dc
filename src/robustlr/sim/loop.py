"""The round loop: sample agents, train them locally, aggregate, apply the server step,
evaluate, record, checkpoint."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from robustlr.aggregation import ParamLayout, flipped_per_layer, vote_telemetry
from robustlr.aggregation.screening import screen_updates
from robustlr.attacks.model import craft_updates
from robustlr.errors import (
    ConfigError,
    DataNotFoundError,
    EngineError,
    OutputError,
    ResumeError,
    TrainingError,
)
from robustlr.models import build_model
from robustlr.sim import checkpoint, seeding
from robustlr.sim.config import NEUTRAL_KEYS, ExperimentConfig, make_config  # noqa: F401  (NEUTRAL_KEYS re-exported)
from robustlr.sim.engines import build_engine, engine_context, select_mode
from robustlr.sim.evaluation import evaluate
from robustlr.sim.federation import Federation
from robustlr.sim.lifecycle import sigterm_raises
from robustlr.sim.pretrain import check_init_model, load_init_state, resolve_init_model
from robustlr.sim.records import RoundRecord, RunSummary, dumps, provenance
from robustlr.sim.server import apply_server_lr, build_rule, rlr_on, server_lr_vector

log = logging.getLogger("robustlr")

__all__ = ["ResumeError", "RunResult", "Simulation", "run_experiment", "sample_agents"]


def sample_agents(cfg: ExperimentConfig, num_agents: int, round_: int) -> np.ndarray:
    m = cfg.agents_per_round(num_agents)
    if m >= num_agents:
        return np.arange(num_agents)
    rng = seeding.numpy_rng(cfg.seed, seeding.SAMPLE, round_)
    return np.sort(rng.choice(num_agents, size=m, replace=False))




def blocking_differences(old: ExperimentConfig, new: ExperimentConfig) -> dict:
    """The keys in which ``new`` differs from the run ``old`` so that resuming would change its numbers.

    ``rounds`` may grow (extending a run); the keys of :data:`NEUTRAL_KEYS` may change."""
    out = {}
    for k in type(new).model_fields:
        a, b = getattr(old, k), getattr(new, k)
        if a == b or k in NEUTRAL_KEYS or (k == "rounds" and b >= a):
            continue
        out[k] = (a, b)
    return out


def read_run_config(path: Path) -> ExperimentConfig:
    try:
        return make_config(json.loads(path.read_text()), str(path))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        if isinstance(exc, ConfigError):
            raise ResumeError(f"{path} is not a config this robustlr can resume: {exc}") from None
        raise ResumeError(f"{path} is damaged ({exc}); delete the run folder or choose another --out") from None


def prepare_out_dir(out: Path) -> None:
    """Create ``out`` and check that it is a writable folder (before any work starts)."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder; choose a folder for the run's results")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".robustlr-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"cannot write the run folder {out}: {exc.strerror or exc}; choose another --out") from None


def check_out_dir(out: Path, cfg: ExperimentConfig) -> None:
    """A writable folder that holds nothing, or a run that ``cfg`` may resume."""
    prepare_out_dir(out)
    if (out / "config.json").exists():
        diff = blocking_differences(read_run_config(out / "config.json"), cfg)
        if diff:
            raise ResumeError(
                f"{out} holds a run of a different config (differs in {diff}); choose another --out folder, or "
                f"delete it to start over. Keys that cannot change the numbers may differ: "
                f"{', '.join(NEUTRAL_KEYS)}, and rounds (to extend a run)")
    elif (out / checkpoint.NAME).exists():
        raise ResumeError(f"{out} holds a checkpoint but no config.json; delete the folder or choose another --out")


def check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device={device!r} but this machine has no CUDA device (torch {torch.__version__}); "
                          f"use device = 'cpu'")


@dataclass
class RunResult:
    config: ExperimentConfig
    records: list[RoundRecord]  # every round
    summary: RunSummary
    out_dir: Path | None = None
    global_params: torch.Tensor | None = field(default=None, repr=False)

    @property
    def evaluated(self) -> list[RoundRecord]:
        """The evaluated rounds' records."""
        return [r for r in self.records if r.evaluated]


@dataclass(frozen=True)
class StepView:
    """What an observer sees of a round right after the server step (read only: do not modify)."""

    round: int
    before: Tensor  # the global parameters the agents trained from (flat)
    after: Tensor  # the global parameters after the server step
    updates: Tensor  # (n_agents, n_params) the updates aggregated this round
    corrupt: Tensor  # (n_agents,) bool: which of them are corrupt
    flipped: Tensor | None  # RLR's flip mask, None without RLR in this round
    sim: "Simulation"  # for its model, layout, federation and config


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


class StepObserver(Protocol):
    """Something that looks at every round's server step (see :class:`StepView`)."""

    def after_step(self, view: StepView) -> None: ...


class Simulation:
    """One federated training run of ``cfg`` on ``fed``.

    With ``out_dir`` it writes ``config.json``, ``metrics.jsonl`` (a record per round), a
    checkpoint every ``cfg.checkpoint_every`` rounds, and at the end ``summary.json`` and
    ``model.pt``; a run started again on the same folder with the same config resumes from its
    last checkpoint (or starts over when there is none) and gives the same numbers as an
    uninterrupted run.
    """

    def __init__(self, cfg: ExperimentConfig, fed: Federation, out_dir: str | Path | None = None,
                 on_round: Callable[[RoundRecord], None] | None = None,
                 observers: Sequence[StepObserver] = (), data_dir: str | None = None) -> None:
        self.cfg = cfg
        self.fed = fed
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.on_round = on_round
        self.observers = list(observers)
        check_device(cfg.device)
        self.device = torch.device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(seeding.seed_of(cfg.seed, seeding.INIT))
        self.model = build_model(cfg.model, num_classes=fed.dataset.num_classes).to(self.device)
        if self.device.type == "cpu":
            # oneDNN's convolutions are about 2x faster on channels-last activations (evaluation too)
            self.model = self.model.to(memory_format=torch.channels_last)
        self.layout = ParamLayout.from_module(self.model)
        # a warm start (init_model) replaces the random initialisation; a resume replaces both
        self.init_model = resolve_init_model(cfg, data_dir, dataset=fed.dataset)
        if self.init_model is not None:
            self.model.load_state_dict(load_init_state(self.init_model, self.model))
        self.global_params = self.layout.flatten(self.model).to(self.device)
        self.noise_gen = torch.Generator(device="cpu")
        self.rule = build_rule(cfg, self.layout, self.noise_gen, cfg.agents_per_round(fed.num_agents))
        self.eta = server_lr_vector(cfg.resolved_server_lr, self.layout.trainable_mask())
        if isinstance(self.eta, torch.Tensor):
            self.eta = self.eta.to(self.device)
        self.update_attack = cfg.update_attack()
        self.engine_ctx = engine_context(cfg, fed, self.device)
        self.engine = build_engine(self.engine_ctx, select_mode(cfg, fed.agent_sizes, self.device))
        self.records: list[RoundRecord] = []
        self.start_round = 1
        self.elapsed = 0.0
        if self.out_dir is not None:
            self._prepare_out_dir()

    # -- persistence
    def _prepare_out_dir(self) -> None:
        assert self.out_dir is not None
        check_out_dir(self.out_dir, self.cfg)
        ckpt = self.out_dir / checkpoint.NAME
        if ckpt.exists():
            self._resume(ckpt)
        cfg_path = self.out_dir / "config.json"
        with self._writing(cfg_path):
            checkpoint.atomic_write_text(cfg_path, self.cfg.to_json())
        # metrics.jsonl holds exactly the rounds done so far (none for a fresh start, the
        # checkpoint's on resume): a restart never leaves a round in it twice, nor a partial line
        self._rewrite_metrics()

    def _resume(self, ckpt: Path) -> None:
        state = checkpoint.load_checkpoint(ckpt)
        self.global_params = state["global_params"].to(self.device)
        self.rule.load_state_dict(state["rule_state"])
        self.records = [RoundRecord.model_validate(r) for r in state["records"]]
        self.start_round = state["round"] + 1
        self.elapsed = state["elapsed"]
        log.info("resuming %s from round %d", self.out_dir, self.start_round)

    def _rewrite_metrics(self) -> None:
        assert self.out_dir is not None
        with self._writing(self.out_dir / "metrics.jsonl"):
            checkpoint.atomic_write_text(self.out_dir / "metrics.jsonl",
                                         "".join(dumps(rec.to_json_dict()) + "\n" for rec in self.records))

    @contextlib.contextmanager
    def _writing(self, path: Path):
        """Turn a failed write (disk full, read-only folder) into a clear error; the files written
        atomically keep their last good version."""
        try:
            yield
        except OSError as exc:
            raise OutputError(
                f"cannot write {path}: {exc.strerror or exc}. {self._kept()} Free space or fix the folder's "
                f"permissions, then run the same command again to resume") from exc

    def _checkpoint(self, round_: int) -> None:
        assert self.out_dir is not None
        with self._writing(self.out_dir / checkpoint.NAME):
            self._save_checkpoint(round_)

    def _save_checkpoint(self, round_: int) -> None:
        assert self.out_dir is not None
        checkpoint.save_checkpoint(self.out_dir / checkpoint.NAME, round_=round_, global_params=self.global_params,
                                   rule_state=self.rule.state_dict(), records=[r.model_dump() for r in self.records],
                                   elapsed=self.elapsed)

    # -- one round
    def run_round(self, round_: int) -> RoundRecord:
        cfg, fed = self.cfg, self.fed
        t0 = time.perf_counter()
        updates, agents, seconds_training = self._train_round(round_)
        # screening (robustlr.aggregation.screening): a malformed update (NaN/inf) or, with
        # screen_norm_multiple, one far larger than the round's median is rejected and logged, never
        # averaged in. A row whose norm is finite has only finite entries; only rows with a
        # non-finite norm (possibly an overflow) get the exact check
        norms_t = torch.linalg.vector_norm(updates, dim=1)
        screened = screen_updates(updates, [int(a) for a in agents], norm_multiple=cfg.screen_norm_multiple,
                                  norms=norms_t)
        rejected = screened.rejected_agents
        if rejected:
            log.warning("round %d: rejected the updates of %s", round_,
                        "; ".join(f"agent {r.agent} ({r.reason}: {r.detail})" for r in screened.rejections))
            keep = torch.tensor(screened.keep, dtype=torch.int64)
            updates, agents, norms_t = updates[keep.to(self.device)], agents[keep.numpy()], norms_t[keep.to(norms_t.device)]
        is_corrupt = np.isin(agents, fed.corrupt)
        norms = norms_t.cpu().numpy()
        # corrupt agents that hold no base-class sample (non-iid data) train honestly, with no
        # trojan; 'unpoisoned' also counts those whose floor(P * n_base) is 0
        corrupt_here = [int(a) for a in agents[is_corrupt]]
        labels = fed.dataset.train_y
        rec = RoundRecord(
            round=round_, agents=len(agents), corrupt_in_round=int(is_corrupt.sum()), rejected=sorted(rejected),
            rejections=[r.to_dict() for r in screened.rejections], screen_median_norm=screened.median_norm,
            honest_norm=float(norms[~is_corrupt].mean()) if (~is_corrupt).any() else None,
            corrupt_norm=float(norms[is_corrupt].mean()) if is_corrupt.any() else None,
            corrupt_without_base_in_round=sum(
                1 for a in corrupt_here
                if not bool((labels[torch.from_numpy(fed.agent_indices[a])] == cfg.base_class).any())),
            corrupt_unpoisoned_in_round=sum(1 for a in corrupt_here if fed.poisoned_per_agent.get(a, 0) == 0),
            rlr_on=rlr_on(cfg, round_, self.records),
        )
        t_agg = time.perf_counter()
        if len(agents) == 0:
            empty = 1 + next((i for i, r in enumerate(reversed(self.records)) if r.agents), len(self.records))
            if empty >= cfg.max_rounds_without_updates:
                raise TrainingError(
                    f"round {round_}: every agent's update was non-finite in {empty} consecutive rounds "
                    f"(max_rounds_without_updates = {cfg.max_rounds_without_updates}); local training diverges "
                    f"(client_lr = {cfg.client_lr}?). {self._kept()}")
        else:
            self.noise_gen.manual_seed(seeding.seed_of(cfg.seed, seeding.NOISE, round_))
            weights = torch.as_tensor(fed.agent_sizes[agents], dtype=torch.float32)
            rule = self.rule if rec.rlr_on is not False else self.rule.rule  # the schedule: RLR off -> its inner rule
            try:
                aggregate = rule(updates, weights=weights, agent_ids=[int(a) for a in agents])
            except ValueError as exc:  # e.g. Krum/Bulyan with too few updates left after screening
                raise TrainingError(f"round {round_}: the aggregation rule refused the {len(agents)} updates left "
                                    f"after screening ({len(rejected)} rejected): {exc}. {self._kept()}") from exc
            if not bool(torch.isfinite(aggregate).all()):
                raise TrainingError(f"round {round_}: the aggregated update is not finite. {self._kept()}")
            before = self.global_params.clone() if self.observers else None
            apply_server_lr(self.global_params, aggregate, self.eta)
            if not bool(torch.isfinite(self.global_params).all()):
                raise TrainingError(
                    f"round {round_}: the global model became non-finite after the server step "
                    f"(server_lr = {cfg.resolved_server_lr}); {self._kept()}")
            tel = rule.telemetry or {}
            if "flipped_fraction" in tel:
                rec.flipped_fraction = float(tel["flipped_fraction"])
                rec.threshold = tel.get("threshold")
            excluded = excluded_agents(tel, [int(a) for a in agents])
            if excluded is not None:
                rec.excluded = excluded
                rec.corrupt_excluded = int(np.isin(excluded, fed.corrupt).sum())
            t_tel = time.perf_counter()
            votes = vote_telemetry(updates, torch.from_numpy(is_corrupt), aggregate)
            flipped = getattr(rule, "flipped", None)
            rec = rec.model_copy(update={
                **votes, "flipped_per_layer": None if flipped is None else flipped_per_layer(flipped, self.layout),
                "seconds_telemetry": time.perf_counter() - t_tel})
            for obs in self.observers:  # read-only views of the round (analysis, e.g. parameter attribution)
                obs.after_step(StepView(round_, before, self.global_params, updates, torch.from_numpy(is_corrupt),
                                        flipped, self))
        rec.seconds_aggregation = time.perf_counter() - t_agg
        rec.seconds_training = seconds_training
        if round_ % cfg.eval_every == 0 or round_ == cfg.rounds:
            self.model.load_state_dict(self.layout.unflatten(self.global_params))
            metrics = evaluate(self.model, fed.val_x, fed.val_y, cfg.base_class, fed.backdoor_x, cfg.target_class)
            rec = rec.model_copy(update={"evaluated": True, **metrics})
        rec.seconds = time.perf_counter() - t0
        return rec

    def _train_round(self, round_: int) -> tuple[Tensor, np.ndarray, float]:
        """The round's updates as the server receives them: trained by the engine, and the corrupt
        agents' rows replaced by what the update attack (:mod:`robustlr.attacks.model`) sends."""
        cfg, fed, ctx = self.cfg, self.fed, self.engine_ctx
        sampled = sample_agents(cfg, fed.num_agents, round_)
        attack = self.update_attack
        attacking = attack.active and ctx.attacking(round_)
        corrupt_rows = np.flatnonzero(np.isin(sampled, fed.corrupt)) if attacking else np.zeros(0, dtype=np.int64)
        twins = [ctx.clean_twins[int(sampled[i])] for i in corrupt_rows] if attack.needs_clean else []
        trained = self.engine.train_round(self.global_params, [int(a) for a in sampled] + twins, round_)
        n = len(sampled)
        updates, agents = trained.updates[:n], trained.agent_ids[:n]
        if len(corrupt_rows):
            rows = torch.from_numpy(corrupt_rows).to(updates.device)
            clean = trained.updates[n:] if twins else None
            updates[rows] = craft_updates(updates[rows], attack, clean, self.layout.trainable_mask().to(updates.device))
        return updates, agents, trained.seconds

    def _kept(self) -> str:
        if self.out_dir is None:
            return "The run is stopped."
        ckpt = self.out_dir / checkpoint.NAME
        return (f"The run is stopped; its last good checkpoint is kept in {ckpt}." if ckpt.exists()
                else f"The run is stopped; {self.out_dir} holds no checkpoint yet.")

    def run(self) -> RunResult:
        """Run to the end. SIGTERM stops the run cleanly (:class:`robustlr.sim.lifecycle.Terminated`),
        its workers killed; the same call on the same folder resumes from the last checkpoint."""
        try:
            with sigterm_raises():
                return self._run()
        finally:
            self.engine.close()

    def _run(self) -> RunResult:
        cfg = self.cfg
        for r in range(self.start_round, cfg.rounds + 1):
            rec = self.run_round(r)
            self.elapsed += rec.seconds
            self.records.append(rec)
            if self.out_dir is not None:
                with self._writing(self.out_dir / "metrics.jsonl"):
                    checkpoint.append_line(self.out_dir / "metrics.jsonl", dumps(rec.to_json_dict()))
                if cfg.checkpoint_every and r % cfg.checkpoint_every == 0 and r < cfg.rounds:
                    self._checkpoint(r)
            if self.on_round is not None:
                self.on_round(rec)
        return self._finish()

    def _finish(self) -> RunResult:
        evaluated = [r for r in self.records if r.evaluated]
        final = evaluated[-1] if evaluated else None
        summary = RunSummary(
            name=self.cfg.name, rounds=self.cfg.rounds,
            **{k: getattr(final, k) if final else None for k in ("val_acc", "val_loss", "base_acc", "backdoor_acc")},
            rlr_switch_round=next((r.round for r in self.records if r.rlr_on), None),
            seconds=self.elapsed, seconds_per_round=self.elapsed / max(1, self.cfg.rounds),
            engine=self.engine.name, federation=self.fed.notes,
            init_model=self.init_model.record() if self.init_model is not None else None, **provenance(),
        )
        if self.out_dir is not None:
            # the checkpoint first: once it holds the last round, a rerun only rewrites the rest
            self._checkpoint(self.cfg.rounds)
            self.model.load_state_dict(self.layout.unflatten(self.global_params))
            with self._writing(self.out_dir / "model.pt"):
                checkpoint.atomic_save(self.model.state_dict(), self.out_dir / "model.pt")
            with self._writing(self.out_dir / "summary.json"):
                checkpoint.atomic_write_text(self.out_dir / "summary.json", dumps(summary.model_dump(), indent=2))
        return RunResult(self.cfg, self.records, summary, self.out_dir, self.global_params)


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path | None = None, data_dir: str | None = None,
                   on_round: Callable[[RoundRecord], None] | None = None, dataset=None,
                   observers: Sequence[StepObserver] = ()) -> RunResult:
    """Load the data, build the federation and run ``cfg`` to the end (resuming if possible)."""
    from robustlr.sim.federation import build_federation, load_dataset

    # everything that can be checked without the data is checked before loading it
    check_device(cfg.device)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataNotFoundError(f"--data-dir {data_dir} is not a folder; give the folder that holds the datasets")
    if out_dir is not None:
        check_out_dir(Path(out_dir), cfg)
    check_init_model(cfg)
    ds = dataset if dataset is not None else load_dataset(cfg, data_dir)
    fed = build_federation(cfg, ds)
    return Simulation(cfg, fed, out_dir, on_round, observers, data_dir=data_dir).run()
