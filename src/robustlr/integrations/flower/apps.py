"""A robustlr experiment on Flower: a ClientApp that trains with robustlr's own local training
(attacks included) and a ServerApp that runs a robustlr config.

The run config carries the experiment (``robustlr-config``: the config as JSON, or a preset
name; ``robustlr-data-dir``: where the datasets are). Every node builds the same federation
from it (the data, the agents' shares, who is corrupt and which samples are poisoned are all
fixed by the config and its seed). The server samples the round's agents with robustlr's own
seeded sampling and maps agent i to the i-th node id in sorted order (an explicit
node-to-agent mapping), sending each node the agent it trains this round in the message's
config (``agent-id``). The reply is the agent's local weights and its number of samples.

The server aggregates with the rule the config asks for (:func:`robustlr.sim.server.build_rule`)
and applies eta in the simulator's one place, so a run on Flower computes what the built-in
simulator computes (see ``tests/integrations/flower/test_equivalence.py`` for the measured
difference and why it is not zero).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from robustlr.aggregation import ParamLayout
from robustlr.attacks.model import craft_updates
from robustlr.integrations.flower.strategy import RuleStrategy
from robustlr.models import build_model
from robustlr.sim import seeding
from robustlr.sim.config import ExperimentConfig, load_config, make_config, parse_overrides
from robustlr.sim.engines.select import engine_context
from robustlr.sim.engines.sequential import SequentialEngine
from robustlr.sim.evaluation import evaluate
from robustlr.sim.federation import Federation, build_federation, load_dataset
from robustlr.sim.loop import sample_agents
from robustlr.sim.records import RoundRecord
from robustlr.sim.pretrain import load_init_state, resolve_init_model
from robustlr.sim.server import build_rule, rlr_on

CONFIG_KEY = "robustlr-config"
DATA_DIR_KEY = "robustlr-data-dir"
SET_KEY = "robustlr-set"
OUT_KEY = "robustlr-out"
TIMEOUT_KEY = "robustlr-round-timeout"  # seconds a round waits for replies; then it aggregates what it has


def config_from_run_config(run_config) -> ExperimentConfig:
    """The experiment of a Flower run: ``robustlr-config`` (JSON, or a preset name or TOML file)
    with the ``key=value`` overrides of ``robustlr-set`` (separated by ``;``)."""
    raw = run_config.get(CONFIG_KEY)
    if raw is None:
        raise ValueError(f"the Flower run config has no {CONFIG_KEY!r}: give a robustlr config as JSON or a preset name")
    raw = str(raw)
    overrides = [o.strip() for o in str(run_config.get(SET_KEY, "")).split(";") if o.strip()]
    if raw.lstrip().startswith("{"):
        return make_config({**json.loads(raw), **parse_overrides(overrides)})
    return load_config(raw, overrides)


@lru_cache(maxsize=2)
def _federation(cfg_json: str, data_dir: str | None) -> Federation:
    cfg = make_config(json.loads(cfg_json))
    return build_federation(cfg, load_dataset(cfg, data_dir))


@lru_cache(maxsize=2)
def _engine(cfg_json: str, data_dir: str | None) -> SequentialEngine:
    cfg = make_config(json.loads(cfg_json))
    fed = _federation(cfg_json, data_dir)
    return SequentialEngine(engine_context(cfg, fed, torch.device(cfg.device)))


def initial_state(cfg: ExperimentConfig, num_classes: int, data_dir: str | None = None,
                  dataset=None) -> dict[str, torch.Tensor]:
    """The global model at round 0, exactly as the built-in simulator initialises it (the
    ``init_model`` warm start included)."""
    torch.manual_seed(seeding.seed_of(cfg.seed, seeding.INIT))
    model = build_model(cfg.model, num_classes=num_classes)
    init = resolve_init_model(cfg, data_dir, dataset=dataset)
    if init is not None:
        model.load_state_dict(load_init_state(init, model))
    return model.state_dict()


def train_message(msg: Message, context: Context, defaults: dict | None = None) -> Message:
    """The ClientApp's train: the agent named in the message trains from the global arrays.

    ``defaults`` fill run-config keys the run does not set (the simulation runtime passes none)."""
    run_config = {**(defaults or {}), **dict(context.run_config)}
    cfg = config_from_run_config(run_config)
    data_dir = run_config.get(DATA_DIR_KEY) or None
    cfg_json = cfg.to_json()
    fed = _federation(cfg_json, data_dir)
    engine = _engine(cfg_json, data_dir)
    config = msg.content["config"]
    agent, round_ = int(config["agent-id"]), int(config["server-round"])
    state = msg.content["arrays"].to_torch_state_dict()
    engine.model.load_state_dict(state)
    global_flat = engine.layout.flatten(engine.model)
    update = engine.train_agent(global_flat, engine.ctx.indices(agent, round_), round_, agent,
                                engine.ctx.loss_sign(agent, round_))
    attack = cfg.update_attack()
    if attack.active and fed.is_corrupt(agent) and engine.ctx.attacking(round_):
        check_flower_config(cfg)
        clean = None
        if attack.needs_clean:  # the agent's own clean estimate, as the simulator trains it
            twin = engine.ctx.clean_twins[agent]
            clean = engine.train_agent(global_flat, engine.ctx.indices(twin, round_), round_, twin)[None]
        update = craft_updates(update[None], attack, clean, engine.layout.trainable_mask())[0]
    local = engine.layout.unflatten(global_flat + update)
    content = RecordDict({"arrays": ArrayRecord(local),
                          "metrics": MetricRecord({"num-examples": int(len(fed.agent_indices[agent])),
                                                   "agent-id": agent})})
    return Message(content, reply_to=msg)


class RobustlrStrategy(RuleStrategy):
    """The config's rule, robustlr's seeded agent sampling, and the node-to-agent mapping."""

    def __init__(self, cfg: ExperimentConfig, num_agents: int, layout: ParamLayout,
                 corrupt: Iterable[int] = ()) -> None:
        self.cfg = cfg
        self.num_agents = num_agents
        self.corrupt = set(int(a) for a in corrupt)
        self.records: dict[int, RoundRecord] = {}  # the simulator's round records, built on the server
        self.noise_gen = torch.Generator()
        trainable = [e.name for e in layout.entries if e.is_trainable]
        super().__init__(build_rule(cfg, layout, self.noise_gen, cfg.agents_per_round(num_agents)),
                         cfg.resolved_server_lr, flip_keys=trainable, fraction_evaluate=0.0,
                         min_available_nodes=num_agents, screen_norm_multiple=cfg.screen_norm_multiple)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._remember(arrays)
        nodes = sorted(grid.get_node_ids())
        if len(nodes) < self.num_agents:
            raise RuntimeError(f"{len(nodes)} nodes are connected but the config has {self.num_agents} agents; "
                               f"start one node per agent")
        messages = []
        self._sent = [int(a) for a in sample_agents(self.cfg, self.num_agents, server_round)]
        for agent in self._sent:
            cfg = ConfigRecord({**dict(config), "server-round": server_round, "agent-id": int(agent)})
            messages.append(Message(RecordDict({"arrays": arrays, "config": cfg}), dst_node_id=nodes[agent],
                                    message_type=MessageType.TRAIN))
        return messages

    def rule_for_round(self, server_round: int):
        return self.rule.rule if self._rlr_on is False else self.rule

    def aggregate_train(self, server_round, replies):
        t0 = time.perf_counter()
        # the schedule of this round, from the rounds before it (read by rule_for_round)
        on = self._rlr_on = rlr_on(self.cfg, server_round, [self.records[r] for r in sorted(self.records)])
        # the noise of a round is drawn from its own seeded stream, as in the simulator
        self.noise_gen.manual_seed(seeding.seed_of(self.cfg.seed, seeding.NOISE, server_round))
        replies = sorted(replies, key=lambda m: int(m.content["metrics"]["agent-id"]) if not m.has_error() else -1)
        sent = set(self._sent)
        arrays, metrics = super().aggregate_train(server_round, replies)
        kept = [int(m.content["metrics"]["agent-id"]) for m in self._kept]
        tel = self.rule_for_round(server_round).telemetry if on is not False else {}
        self.records[server_round] = RoundRecord(
            round=server_round, agents=len(kept), corrupt_in_round=sum(1 for a in kept if a in self.corrupt),
            rejected=sorted(sent - set(kept)), rejections=self._rejections(),
            flipped_fraction=(tel or {}).get("flipped_fraction"),
            threshold=(tel or {}).get("threshold"), rlr_on=on, seconds_aggregation=time.perf_counter() - t0)
        return arrays, metrics


    def _rejections(self) -> list[dict]:
        out = []
        for msg, reason in getattr(self, "_rejected", []):
            try:
                agent = int(msg.content["metrics"]["agent-id"])
            except Exception:  # an error reply or one without metrics: name its node
                agent = f"node {getattr(msg.metadata, 'src_node_id', '?')}"
            out.append({"agent": agent, "reason": reason, "detail": ""})
        return out


def check_flower_config(cfg: ExperimentConfig) -> None:
    """Refuse, before any work, what a Flower run cannot do."""
    if cfg.adaptive != "none":
        from robustlr.errors import ConfigError

        raise ConfigError(f"adaptive = {cfg.adaptive!r}: the adaptive attacks need colluding agents that see each "
                          f"other's updates, and a Flower client trains alone; run it with the built-in simulator "
                          f"(robustlr run), or use boost_factor / stealth, which each agent applies on its own")


def run_on_grid(grid: Grid, cfg: ExperimentConfig, data_dir: str | None = None, timeout: float = 3600):
    """The ServerApp's work: run ``cfg`` on the nodes of ``grid``; returns Flower's ``Result``.

    Central evaluation (validation, base-class and backdoor accuracy) runs on the server after
    every ``eval_every`` rounds and at the last one."""
    check_flower_config(cfg)
    fed = _federation(cfg.to_json(), data_dir)
    state = initial_state(cfg, fed.dataset.num_classes, data_dir, fed.dataset)
    model = build_model(cfg.model, num_classes=fed.dataset.num_classes)
    model.load_state_dict(state)
    layout = ParamLayout.from_module(model)
    strategy = RobustlrStrategy(cfg, fed.num_agents, layout, fed.corrupt)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0 or (server_round % cfg.eval_every and server_round != cfg.rounds):
            return None
        model.load_state_dict(arrays.to_torch_state_dict())
        m = evaluate(model, fed.val_x, fed.val_y, cfg.base_class, fed.backdoor_x, cfg.target_class)
        if server_round in strategy.records:
            strategy.records[server_round] = strategy.records[server_round].model_copy(update={"evaluated": True, **m})
        return MetricRecord({k: float(v) for k, v in m.items()})

    t0 = time.perf_counter()
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(state), num_rounds=cfg.rounds, timeout=timeout,
                            evaluate_fn=evaluate_fn)
    result.robustlr_records = [strategy.records[r] for r in sorted(strategy.records)]
    result.robustlr_seconds = time.perf_counter() - t0
    result.robustlr_federation = fed.notes
    return result


def make_client_app(defaults: dict | None = None) -> ClientApp:
    """The ClientApp; ``defaults`` are run-config values used where the run sets none."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return train_message(msg, context, defaults)

    return app


def make_server_app(defaults: dict | None = None) -> ServerApp:
    """The ServerApp; ``defaults`` are run-config values used where the run sets none."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_config = {**(defaults or {}), **dict(context.run_config)}
        cfg = config_from_run_config(run_config)
        result = run_on_grid(grid, cfg, run_config.get(DATA_DIR_KEY) or None,
                             timeout=float(run_config.get(TIMEOUT_KEY, 3600) or 3600))
        out = str(run_config.get(OUT_KEY, "") or "")
        if out:
            write_result(Path(out), cfg, result)

    return app


def write_result(out: Path, cfg: ExperimentConfig, result) -> None:
    """The run folder of the built-in simulator, from a Flower run: ``config.json``,
    ``metrics.jsonl`` (a round record per round, built on the server), ``summary.json``
    (engine ``flower``) and ``model.pt``; each written atomically."""
    from robustlr.sim.checkpoint import atomic_save, atomic_write_text
    from robustlr.sim.records import RunSummary, dumps, provenance

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", cfg.to_json())
    records = list(getattr(result, "robustlr_records", []))
    atomic_write_text(out / "metrics.jsonl", "".join(dumps(r.to_json_dict()) + "\n" for r in records))
    final = next((r for r in reversed(records) if r.evaluated), None)
    seconds = float(getattr(result, "robustlr_seconds", 0.0))
    summary = RunSummary(
        name=cfg.name, rounds=cfg.rounds,
        **{k: getattr(final, k) if final else None for k in ("val_acc", "val_loss", "base_acc", "backdoor_acc")},
        seconds=seconds, seconds_per_round=seconds / max(1, cfg.rounds), engine="flower",
        federation=dict(getattr(result, "robustlr_federation", {})), **provenance())
    atomic_save(result.arrays.to_torch_state_dict(), out / "model.pt")
    atomic_write_text(out / "summary.json", dumps(summary.model_dump(), indent=2))


def flat_of(arrays: ArrayRecord, cfg: ExperimentConfig, num_classes: int = 10) -> torch.Tensor:
    """A Flower ArrayRecord as the simulator's flat global vector (for comparisons)."""
    model = build_model(cfg.model, num_classes=num_classes)
    model.load_state_dict(arrays.to_torch_state_dict())
    return ParamLayout.from_module(model).flatten(model)


__all__ = ["CONFIG_KEY", "DATA_DIR_KEY", "RobustlrStrategy", "config_from_run_config", "flat_of", "initial_state",
           "make_client_app", "make_server_app", "run_on_grid", "train_message"]
