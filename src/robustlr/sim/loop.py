"""The round loop: sample agents, train them locally, aggregate, apply the server step,
evaluate, record, checkpoint."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from robustlr.aggregation import ParamLayout
from robustlr.attacks.byzantine import byzantine_update
from robustlr.attacks.a3fl import A3FLSettings, draw, optimise_trigger, quantise
from robustlr.attacks.local import neurotoxin_mask
from robustlr.attacks.model import craft_updates
from robustlr.errors import DataNotFoundError, OutputError, ResumeError, TrainingError
from robustlr.sim import checkpoint, seeding
from robustlr.sim.config import ExperimentConfig
from robustlr.sim.engines import build_engine, check_device, engine_context, select_mode
from robustlr.sim.engines.select import bf16_warning
from robustlr.sim.evaluation import evaluate
from robustlr.sim.federation import Federation, normalise
from robustlr.sim.lifecycle import sigterm_raises
from robustlr.sim.preflight import check_runnable
from robustlr.sim.pretrain import pretrain_into_cache, resolve_init_model
from robustlr.sim.records import RoundRecord, RunSummary, dumps
from robustlr.sim.rundir import check_out_dir, finished_summary, open_run_dir
from robustlr.sim.server import Server, initial_model, place_model

log = logging.getLogger("robustlr")

__all__ = ["ResumeError", "RunResult", "Simulation", "StepObserver", "StepView", "pretrain", "run_experiment",
           "sample_agents"]


def sample_agents(cfg: ExperimentConfig, num_agents: int, round_: int) -> np.ndarray:
    m = cfg.agents_per_round(num_agents)
    if m >= num_agents:
        return np.arange(num_agents)
    rng = seeding.numpy_rng(cfg.seed, seeding.SAMPLE, round_)
    return np.sort(rng.choice(num_agents, size=m, replace=False))


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


class StepObserver(Protocol):
    """Something that looks at every round's server step (see :class:`StepView`)."""

    def after_step(self, view: StepView) -> None: ...


class Simulation:
    """One federated training run of ``cfg`` on ``fed``.

    With ``out_dir`` it writes ``config.json``, ``partition.json`` (each agent's samples per class,
    which agents are corrupt), ``metrics.jsonl`` (a record per round), a
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
        slow = bf16_warning(cfg.precision, self.device)
        if slow:
            log.warning(slow)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # a warm start (init_model) replaces the random initialisation; a resume replaces both
        self.init_model = resolve_init_model(cfg, data_dir, dataset=fed.dataset, build=_pretrain)
        self.model = place_model(initial_model(cfg, fed.dataset.num_classes, self.init_model), self.device)
        self.layout = ParamLayout.from_module(self.model)
        self.global_params = self.layout.flatten(self.model).to(self.device)
        self.server = Server.for_federation(cfg, fed, self.layout, self.device, model=self.model)
        self.update_attack = cfg.update_attack()
        self.engine_ctx = engine_context(cfg, fed, self.device)
        self.engine = build_engine(self.engine_ctx, select_mode(cfg, fed.agent_sizes, self.device))
        self._trainable = self.layout.trainable_mask().to(self.device)
        # Neurotoxin: the last global update w_t - w_{t-1} (None before the first server step)
        self.last_update: Tensor | None = None
        # FLTrust: the server's own update of the round, on its root dataset (None without a root set)
        self.reference: Tensor | None = None
        # A3FL: the trigger (normalised float, C x H x W), optimised each attacked round
        self.trigger: Tensor | None = (self._initial_trigger() if cfg.trigger_optimisation in ("a3fl", "f3ba")
                                       else None)
        # IBA: the trigger generator (its weights persist from round to round) and the bound last drawn at
        self.generator = self._initial_generator() if cfg.trigger_optimisation == "iba" else None
        self._iba_eps_drawn: float | None = None
        # the attacks that read the last global update: Neurotoxin, F3BA
        self._tracks_update = bool(cfg.neurotoxin_top_percent) or cfg.trigger_optimisation == "f3ba"
        if cfg.trigger_optimisation == "f3ba":  # refused before any round: the model must suit the attack
            from robustlr.attacks.f3ba import layers

            convs, _ = layers(self.model)
            if not convs or convs[0][1].in_channels != fed.dataset.image_shape[0]:
                from robustlr.errors import ConfigError

                raise ConfigError(f"trigger_optimisation = 'f3ba' flips the first convolution's filters to the "
                                  f"trigger, but model {cfg.model!r} has no Conv2d on its input images first: use "
                                  f"'a3fl', or a convolutional model")
        self.records: list[RoundRecord] = []
        self.start_round = 1
        self.elapsed = 0.0
        if self.out_dir is not None:
            self._prepare_out_dir()

    # -- persistence
    def _prepare_out_dir(self) -> None:
        assert self.out_dir is not None
        # the folder's lock, held until run() ends (or close()): a second run on it is refused here
        self._lock = open_run_dir(self.out_dir, self.cfg)
        self._stored_summary = None
        try:
            ckpt = self.out_dir / checkpoint.NAME
            if ckpt.exists():
                self._resume(ckpt)
            if self.start_round > self.cfg.rounds:
                # a finished run started again writes nothing: its summary is returned as it is
                self._stored_summary = finished_summary(self.out_dir, self.cfg.rounds)
            if self._stored_summary is None:
                cfg_path = self.out_dir / "config.json"
                with self._writing(cfg_path):
                    checkpoint.write_text_if_changed(cfg_path, self.cfg.to_json())
                part_path = self.out_dir / "partition.json"  # how the data was split: per agent, per class
                with self._writing(part_path):
                    checkpoint.write_text_if_changed(part_path, dumps(self.fed.partition_record(self.cfg)) + "\n")
            # metrics.jsonl holds exactly the rounds done so far (none for a fresh start, the
            # checkpoint's on resume): a restart never leaves a round in it twice, nor a partial line
            self._rewrite_metrics()
        except BaseException:
            self._release_lock()
            raise

    def _release_lock(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()

    def close(self) -> None:
        """Stop the engine's workers and release the run folder's lock (:meth:`run` does both when
        it ends); needed only for a Simulation that is not run to its end."""
        try:
            self.engine.close()
        finally:
            self._release_lock()

    def _resume(self, ckpt: Path) -> None:
        state = checkpoint.load_checkpoint(ckpt)
        checkpoint.check_identity(ckpt, state, self._identity())
        self.global_params = state["global_params"].to(self.device)
        self.server.load_state_dict(state["rule_state"])
        self.records = [RoundRecord.model_validate(r) for r in state["records"]]
        attack_state = state.get("attack_state") or {}
        last = attack_state.get("last_update")
        self.last_update = last.to(self.device) if last is not None else None
        if attack_state.get("trigger") is not None:  # the federation was built with the plain trojan: redraw
            self.trigger = attack_state["trigger"]
            self._draw_trigger()
        if attack_state.get("iba_generator") is not None:
            assert self.generator is not None
            self.generator.load_state_dict(attack_state["iba_generator"])
            if attack_state.get("iba_eps_drawn") is not None:
                self._draw_iba(float(attack_state["iba_eps_drawn"]))
        self.start_round = state["round"] + 1
        self.elapsed = state["elapsed"]
        log.info("resuming %s from round %d", self.out_dir, self.start_round)

    def _rewrite_metrics(self) -> None:
        assert self.out_dir is not None
        with self._writing(self.out_dir / "metrics.jsonl"):
            checkpoint.write_text_if_changed(self.out_dir / "metrics.jsonl",
                                             "".join(dumps(rec.to_json_dict()) + "\n" for rec in self.records))

    @contextlib.contextmanager
    def _writing(self, path: Path):
        """Turn a failed write (disk full, file too large, read-only folder) into a clear error; the
        files written atomically keep their last good version and leave no temporary file
        (:mod:`robustlr.sim.checkpoint`), an appended line is cut back."""
        try:
            yield
        except OSError as exc:
            raise OutputError(
                f"cannot write {path}: {exc.strerror or exc}. {self._kept()} {checkpoint.write_fix(exc)}, "
                f"then run the same command again to resume") from exc

    def _checkpoint(self, round_: int) -> None:
        assert self.out_dir is not None
        with self._writing(self.out_dir / checkpoint.NAME):
            self._save_checkpoint(round_)

    def _save_checkpoint(self, round_: int) -> None:
        assert self.out_dir is not None
        checkpoint.save_checkpoint(self.out_dir / checkpoint.NAME, round_=round_, global_params=self.global_params,
                                   rule_state=self.server.state_dict(), records=[r.model_dump() for r in self.records],
                                   elapsed=self.elapsed, identity=self._identity(),
                                   attack_state=self._attack_state())

    def _attack_state(self) -> dict:
        """What the attacks carry from round to round (the checkpoint keeps it)."""
        out = {}
        if self.last_update is not None:
            out["last_update"] = self.last_update.cpu()
        if self.trigger is not None:
            out["trigger"] = self.trigger.cpu()
        if self.generator is not None:
            out["iba_generator"] = {k: v.cpu() for k, v in self.generator.state_dict().items()}
            out["iba_eps_drawn"] = self._iba_eps_drawn
        return out

    # -- A3FL's trigger
    def _initial_trigger(self) -> Tensor:
        """The trojan as drawn (the dataset's ink on its region), normalised: round one's starting trigger."""
        ds = self.fed.dataset
        value = ds.ink if self.cfg.trojan_value is None else self.cfg.trojan_value
        c, h, w = ds.image_shape
        u8 = torch.full((1, c, h, w), int(value), dtype=torch.uint8)
        return normalise(u8, ds.mean, ds.std)[0]

    def _initial_generator(self) -> torch.nn.Module:
        """IBA's generator, initialised from the run's seed."""
        from robustlr.attacks.iba import Generator

        c, h, w = self.fed.dataset.image_shape
        seed = int(torch.randint(2**62, (1,), generator=seeding.torch_generator(self.cfg.seed, seeding.TRIGGER, 0)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            generator = Generator(c, h, w)
        return generator.to(self.device).eval()

    def _attacker_images(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Fixed for the run: the attackers' clean images (normalised) and classes, and each channel's
        normalised pixel 0 and 255."""
        ds, rows = self.fed.dataset, torch.from_numpy(self.fed.poisoned_rows)
        if getattr(self, "_trigger_data", None) is None:
            c = ds.image_shape[0]
            self._trigger_data = (
                normalise(ds.train_x[rows], ds.mean, ds.std).to(self.device), ds.train_y[rows].to(self.device),
                normalise(torch.zeros((1, c, 1, 1), dtype=torch.uint8), ds.mean, ds.std).flatten().to(self.device),
                normalise(torch.full((1, c, 1, 1), 255, dtype=torch.uint8), ds.mean, ds.std).flatten().to(self.device))
        return self._trigger_data

    def _draw_iba(self, eps: float) -> None:
        """IBA: ``clip(x + eps G(x))`` rounded to uint8 pixels on every poisoned training row (in place of
        what was drawn before), and the backdoor test set at ``iba_test_eps``."""
        from robustlr.attacks.iba import perturb

        fed, ds = self.fed, self.fed.dataset
        images, _, low, high = self._attacker_images()
        std = torch.tensor(ds.std, dtype=torch.float32, device=self.device)

        def drawn(x: Tensor, bound: float) -> Tensor:
            out = []
            with torch.no_grad():
                for part in x.split(512):
                    part = part.to(self.device)
                    out.append(quantise(perturb(part, self.generator(part), bound, std, low, high),
                                        ds.mean, ds.std).cpu())
            return torch.cat(out) if out else torch.zeros((0, *ds.image_shape), dtype=torch.uint8)

        rows = torch.from_numpy(fed.poisoned_rows)
        if len(rows):
            fed.train_x.images[rows] = drawn(images, eps)
        fed.backdoor_x = normalise(drawn(fed.base_x, self.cfg.iba_test_eps), ds.mean, ds.std)
        self._iba_eps_drawn = float(eps)

    def _draw_trigger(self) -> None:
        """Draw the trigger (rounded to uint8 pixels) on every poisoned training row and on the backdoor
        test set, in place of the one drawn before."""
        fed, ds = self.fed, self.fed.dataset
        mask = fed.trigger_mask
        u8 = quantise(self.trigger, ds.mean, ds.std)
        rows = torch.from_numpy(fed.poisoned_rows)
        if len(rows):
            images = fed.train_x.images
            drawn = images[rows]
            drawn[:, :, mask] = u8[:, mask]
            images[rows] = drawn
        fed.backdoor_x = draw(fed.base_x, mask, normalise(u8[None], ds.mean, ds.std)[0])

    def _optimise_trigger(self, round_: int) -> Tensor | None:
        """A3FL or F3BA's work before the round's training: the new trigger, drawn; for F3BA also the
        flipped model the corrupt agents start from (flat; None where there is none: F3BA's first
        round, which has no previous global model, trains as the plain trojan)."""
        cfg, fed, ds = self.cfg, self.fed, self.fed.dataset
        rows = torch.from_numpy(fed.poisoned_rows)
        if not len(rows) or (cfg.trigger_optimisation == "f3ba" and self.last_update is None):
            return None
        self.model.load_state_dict(self.layout.unflatten(self.global_params))
        images, labels, low, high = self._attacker_images()
        gen = seeding.torch_generator(cfg.seed, seeding.TRIGGER, round_)
        if cfg.trigger_optimisation == "iba":
            from robustlr.attacks.iba import IBASettings, round_eps, train_generator

            ctx = self.engine_ctx
            eps = round_eps(cfg.iba_eps, cfg.iba_test_eps, cfg.iba_eps_decay,
                            sum(ctx.attacking(r) for r in range(1, round_)))
            train_generator(self.generator, self.model, images, cfg.target_class, eps,
                            torch.tensor(ds.std, dtype=torch.float32, device=self.device), low, high,
                            IBASettings(epochs=cfg.iba_generator_epochs, lr=cfg.iba_generator_lr), gen)
            self._draw_iba(eps)
            return None
        mask = fed.trigger_mask.to(self.device)
        if cfg.trigger_optimisation == "f3ba":
            from robustlr.attacks.f3ba import F3BASettings, handcraft

            previous = self.layout.unflatten(self.global_params - self.last_update)
            state, trigger = handcraft(self.model, previous, images, mask, self.trigger.to(self.device), low, high,
                                       F3BASettings(conv_rate=cfg.f3ba_conv_rate, fc_rate=cfg.f3ba_fc_rate), gen)
            self.trigger = trigger.cpu()
            self._draw_trigger()
            return self.layout.flatten(state).to(self.device)
        settings = A3FLSettings(iterations=cfg.a3fl_iterations, lr=cfg.a3fl_lr, adv_epochs=cfg.a3fl_adv_epochs,
                                lam=cfg.a3fl_lambda)
        self.trigger = optimise_trigger(self.model, images, labels, mask, self.trigger.to(self.device),
                                        cfg.target_class, low, high, settings, gen).cpu()
        self._draw_trigger()
        return None

    def _identity(self) -> dict:
        """What the run is made of beyond its config: the data's fingerprint, the model's factory."""
        from robustlr.models.registry import model_spec

        out = {"model_factory": model_spec(self.cfg.model).factory}
        record = self.fed.notes.get("dataset")
        if record:
            out["dataset_fingerprint"] = record["fingerprint"]
        return out

    # -- one round
    def run_round(self, round_: int) -> RoundRecord:
        """Train -> the server step (:meth:`robustlr.sim.server.Server.step`) -> evaluate."""
        cfg, fed = self.cfg, self.fed
        t0 = time.perf_counter()
        # CRFL: the agents train from the global model plus noise (the server step clips the result)
        self.global_params = self.server.model_to_send(self.global_params, round_)
        updates, agents, seconds_training = self._train_round(round_)
        before = self.global_params.clone() if self.observers or self._tracks_update else None
        try:
            step = self.server.step(round_, self.global_params, updates, agents, self.records,
                                    reference=self.reference)
        except TrainingError as exc:
            raise TrainingError(f"{exc} {self._kept()}") from exc
        rec = step.record
        if self._tracks_update:
            self.last_update = self.global_params - before
        if step.aggregate is not None:
            for obs in self.observers:  # read-only views of the round (analysis, e.g. parameter attribution)
                obs.after_step(StepView(round_, before, self.global_params, step.updates, step.corrupt,
                                        step.flipped, self))
        rec.seconds_training = seconds_training
        if round_ % cfg.eval_every == 0 or round_ == cfg.rounds:
            self.model.load_state_dict(self.layout.unflatten(self.global_params))
            metrics = evaluate(self.model, fed.val_x, fed.val_y, cfg.base_class, fed.backdoor_x, cfg.target_class)
            if not math.isfinite(metrics["val_loss"]):
                # a finite but huge model (an update near the float range slipped through): its accuracy
                # would be reported as a result; a collapse to chance with a finite loss is one, this is not
                raise TrainingError(
                    f"round {round_}: the validation loss is {metrics['val_loss']} (the global model's outputs "
                    f"overflow; largest |parameter| {float(self.global_params.abs().max()):.3g}): the run's numbers "
                    f"would be garbage. {self._kept()} Lower server_lr or boost_factor, or turn on "
                    f"screen_norm_multiple")
            rec = rec.model_copy(update={"evaluated": True, **metrics})
        rec.seconds = time.perf_counter() - t0
        return rec

    def _train_round(self, round_: int) -> tuple[Tensor, np.ndarray, float]:
        """The round's updates as the server receives them: trained by the engine, and the corrupt
        agents' rows replaced by what the update attack (:mod:`robustlr.attacks.model`) sends."""
        cfg, fed, ctx = self.cfg, self.fed, self.engine_ctx
        sampled = sample_agents(cfg, fed.num_agents, round_)
        attack = self.update_attack
        attacking = (attack.active or cfg.byzantine != "none") and ctx.attacking(round_)
        corrupt_rows = np.flatnonzero(np.isin(sampled, fed.corrupt)) if attacking else np.zeros(0, dtype=np.int64)
        twins = [ctx.clean_twins[int(sampled[i])] for i in corrupt_rows] if attack.needs_clean else []
        crafted = None  # F3BA: the flipped model the corrupt agents start from
        if cfg.trigger_optimisation != "none" and ctx.attacking(round_):
            crafted = self._optimise_trigger(round_)
        grad_mask = None  # Neurotoxin: the corrupt agents' gradients avoid the last global update's top coordinates
        if cfg.neurotoxin_top_percent and ctx.attacking(round_) and self.last_update is not None:
            grad_mask = neurotoxin_mask(self.last_update, self._trainable, cfg.neurotoxin_top_percent)
        root = [] if ctx.root_agent is None else [ctx.root_agent]  # FLTrust: the server's own update, last
        ids = [int(a) for a in sampled] + twins + root
        bad = [i for i, a in enumerate(ids) if i < len(sampled) and fed.is_corrupt(a)] if crafted is not None else []
        if bad:
            # F3BA: the corrupt agents train from the flipped model and send their local model minus the
            # global one (the flips included); the others train from the global model
            good = [i for i in range(len(ids)) if i not in bad]
            first = self.engine.train_round(self.global_params, [ids[i] for i in good], round_, grad_mask=grad_mask)
            all_updates = torch.empty((len(ids), self.layout.numel), dtype=torch.float32, device=self.device)
            all_updates[good] = first.updates  # copied out before the engine reuses its buffer
            second = self.engine.train_round(crafted, [ids[i] for i in bad], round_, grad_mask=grad_mask)
            all_updates[bad] = second.updates + (crafted - self.global_params)
            seconds = first.seconds + second.seconds
        else:
            trained = self.engine.train_round(self.global_params, ids, round_, grad_mask=grad_mask)
            all_updates, seconds = trained.updates, trained.seconds
        n = len(sampled)
        updates, agents = all_updates[:n], np.asarray(ids[:n], dtype=np.int64)
        self.reference = all_updates[-1].clone() if root else None
        if len(corrupt_rows):
            rows = torch.from_numpy(corrupt_rows).to(updates.device)
            clean = all_updates[n:n + len(twins)] if twins else None
            trainable = self._trainable
            if cfg.byzantine != "none":
                updates[rows] = self._byzantine(updates, rows, trainable)
            else:
                updates[rows] = craft_updates(updates[rows], attack, clean, trainable)
        return updates, agents, seconds

    def _byzantine(self, updates: Tensor, rows: Tensor, trainable: Tensor) -> Tensor:
        """The corrupt rows under ``cfg.byzantine``: every one the update crafted from the honest rows,
        on trainable coordinates (batch-norm statistics stay what each trained: a crafted running
        variance could turn negative)."""
        cfg = self.cfg
        honest_rows = torch.ones(updates.shape[0], dtype=torch.bool, device=updates.device)
        honest_rows[rows] = False
        try:
            crafted = byzantine_update(cfg.byzantine, updates[honest_rows][:, trainable], updates.shape[0], len(rows),
                                       z=cfg.alie_z, epsilon=cfg.ipm_epsilon, perturbation=cfg.minmax_perturbation)
        except ValueError as exc:
            raise TrainingError(f"byzantine = {cfg.byzantine!r}: {exc}") from exc
        out = updates[rows].clone()
        out[:, trainable] = crafted.to(out.dtype)[None]
        return out

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
            self.close()

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
        trailing = next((i for i, r in enumerate(reversed(self.records)) if r.agents), len(self.records))
        if trailing:
            raise TrainingError(
                f"the last {trailing} round(s) aggregated no update (every one was rejected; see 'rejections' in "
                f"metrics.jsonl): the final model is round {cfg.rounds - trailing}'s and would be reported as "
                f"round {cfg.rounds}'s. {self._kept()}")
        return self._finish()

    def _finish(self) -> RunResult:
        summary = self.server.summary(self.records, seconds=self.elapsed, engine=self.engine.name,
                                      federation=self.fed.notes, init=self.init_model)
        if self.out_dir is not None and self._stored_summary is not None:
            # a finished run started again: every file stays as it is, the numbers are the stored ones
            return RunResult(self.cfg, self.records, self._stored_summary, self.out_dir, self.global_params)
        if self.out_dir is not None:
            # the checkpoint first: once it holds the last round, a rerun only rewrites the rest
            if self.start_round <= self.cfg.rounds:  # else the checkpoint resumed from already holds it
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

    # everything that can be checked without the data is checked before loading it, as `robustlr config` does
    check_runnable(cfg)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DataNotFoundError(f"--data-dir {data_dir} is not a folder; give the folder that holds the datasets")
    if out_dir is not None:
        check_out_dir(Path(out_dir), cfg)
    ds = dataset if dataset is not None else load_dataset(cfg, data_dir)
    fed = build_federation(cfg, ds)
    return Simulation(cfg, fed, out_dir, on_round, observers, data_dir=data_dir).run()


def pretrain(cfg: ExperimentConfig, data_dir: str | None = None, on_round: Callable | None = None,
             dataset=None) -> Path:
    """Train ``cfg`` (a clean config) into the pretrained-model cache unless it is there; return
    its ``model.pt`` (see :mod:`robustlr.sim.pretrain`). An interrupted pretraining resumes."""
    return pretrain_into_cache(cfg, lambda folder: run_experiment(cfg, folder, data_dir=data_dir, on_round=on_round,
                                                                  dataset=dataset))


def _pretrain(cfg: ExperimentConfig, data_dir: str | None, dataset) -> Path:
    return pretrain(cfg, data_dir, dataset=dataset)
