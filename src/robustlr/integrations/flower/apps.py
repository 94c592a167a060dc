"""A robustlr experiment on Flower: a ClientApp that trains with robustlr's own local training
(attacks included) and a ServerApp that runs a robustlr config.

The run config carries the experiment (``robustlr-config``: the config as JSON, or a preset
name; ``robustlr-data-dir``: where the datasets are). Every node builds the same federation
from it (the data, the agents' shares, who is corrupt and which samples are poisoned are all
fixed by the config and its seed). The server samples the round's agents with robustlr's own
seeded sampling and maps agent i to the i-th node id in sorted order (an explicit
node-to-agent mapping), sending each node the agent it trains this round in the message's
config (``agent-id``). The reply is the agent's local weights and its number of samples.

The server side of each round is the simulator's own :meth:`robustlr.sim.server.Server.step`
(screening, the config's rule and RLR schedule, the seeded noise, the finite checks, eta, the
round record with its vote telemetry), so a run on Flower computes and records what the
built-in simulator does (``tests/integrations/flower/test_equivalence.py`` compares the two).
The server trusts no client's word for who it is or how much data it holds: a reply's agent is
the one the server sent to its node, and the rule's weights are the federation's own sizes.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from robustlr.aggregation import ParamLayout
from robustlr.aggregation.screening import Rejection
from robustlr.attacks.local import neurotoxin_mask
from robustlr.attacks.model import craft_updates
from robustlr.errors import TrainingError
from robustlr.integrations.flower.arrays import ArrayLayout, screen_replies
from robustlr.models import build_model
from robustlr.sim.config import ExperimentConfig, load_config, make_config, parse_overrides
from robustlr.sim.engines.select import engine_context
from robustlr.sim.engines.sequential import SequentialEngine
from robustlr.sim.evaluation import evaluate
from robustlr.sim.federation import Federation, build_federation, load_dataset
from robustlr.sim.loop import pretrain, sample_agents
from robustlr.sim.pretrain import resolve_init_model
from robustlr.sim.records import RoundRecord
from robustlr.sim.server import Server, initial_model, place_model, run_summary

CONFIG_KEY = "robustlr-config"
DATA_DIR_KEY = "robustlr-data-dir"
SET_KEY = "robustlr-set"
#: a corrupt node's context.state entry: the global model it received in its last round (Neurotoxin)
PREVIOUS_GLOBAL_KEY = "robustlr-previous-global"
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
    ``init_model`` warm start included): :func:`robustlr.sim.server.initial_model`."""
    init = resolve_init_model(cfg, data_dir, dataset=dataset, build=lambda p, d, ds: pretrain(p, d, dataset=ds))
    return initial_model(cfg, num_classes, init).state_dict()


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
    grad_mask = None
    if cfg.neurotoxin_top_percent is not None and fed.is_corrupt(agent):
        # Neurotoxin: the last global update is this round's global model minus the one this node received
        # before (the simulator's w_t - w_{t-1} when the node trains every round, participation 1)
        previous = context.state.get(PREVIOUS_GLOBAL_KEY)
        if previous is not None and engine.ctx.masked(agent, round_):
            last = global_flat - engine.layout.flatten(previous.to_torch_state_dict())
            grad_mask = neurotoxin_mask(last, engine.layout.trainable_mask(), cfg.neurotoxin_top_percent)
        context.state[PREVIOUS_GLOBAL_KEY] = ArrayRecord(state)
    args = (global_flat, engine.ctx.indices(agent, round_), round_, agent, engine.ctx.loss_sign(agent, round_))
    update = engine.train_agent(*args) if grad_mask is None else engine.train_agent(*args, grad_mask)
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


class ExperimentStrategy(FedAvg):
    """A robustlr config as a Flower strategy: robustlr's seeded agent sampling, the
    node-to-agent mapping, and the simulator's server step (:class:`robustlr.sim.server.Server`).

    Agent ``i`` trains on the ``i``-th node in sorted order. A reply counts for the agent the
    server sent to its node (never for an id the client names), once; replies that cannot be
    stacked (an error, missing or other arrays, wrong shapes or dtypes, NaN) are rejected and
    recorded, as are agents whose node did not reply. The rest go to :meth:`Server.step`, which
    screens, aggregates and records the round as the simulator does.
    """

    def __init__(self, cfg: ExperimentConfig, fed: Federation, layout: ParamLayout,
                 model: torch.nn.Module | None = None) -> None:
        super().__init__(fraction_evaluate=0.0, min_available_nodes=fed.num_agents)
        self.cfg = cfg
        self.num_agents = fed.num_agents
        self.layout = layout
        self.server = Server.for_federation(cfg, fed, layout, model=model)  # model: DeepSight runs it
        self.records: dict[int, RoundRecord] = {}  # the simulator's round records, built on the server
        # FLTrust: the server trains on its root dataset itself, as the simulator's engine does
        self.root_engine = (SequentialEngine(engine_context(cfg, fed, torch.device("cpu")))
                            if fed.root_indices is not None else None)

    def reference_update(self, server_round: int, global_flat: torch.Tensor) -> torch.Tensor | None:
        """The server's own update of the round on its root dataset (FLTrust's ``g0``), trained from
        the global arrays it sent, with the clients' local training; None without a root set."""
        if self.root_engine is None:
            return None
        ctx, root = self.root_engine.ctx, self.root_engine.ctx.root_agent
        return self.root_engine.train_agent(global_flat, ctx.indices(root, server_round), server_round, root,
                                            ctx.loss_sign(root, server_round)).clone()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        # CRFL: the nodes train from the global model plus noise, as the simulator's agents
        if self.cfg.crfl and server_round > 1:
            sent = ArrayLayout.of(arrays)
            arrays = sent.unflatten(self.server.model_to_send(sent.flatten(arrays), server_round))
        # what was sent (the global arrays and which agent each node trains) is the state the
        # replies are read against in aggregate_train
        self._sent_arrays = arrays
        nodes = sorted(grid.get_node_ids())
        if len(nodes) < self.num_agents:
            raise RuntimeError(f"{len(nodes)} nodes are connected but the config has {self.num_agents} agents; "
                               f"start one node per agent")
        agents = [int(a) for a in sample_agents(self.cfg, self.num_agents, server_round)]
        self._agent_of_node = {int(nodes[a]): a for a in agents}
        return [Message(RecordDict({"arrays": arrays, "config": ConfigRecord({**dict(config), "server-round": server_round,
                                                                              "agent-id": a})}),
                        dst_node_id=nodes[a], message_type=MessageType.TRAIN) for a in agents]

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        t0 = time.perf_counter()
        sent = ArrayLayout.of(self._sent_arrays)
        if sent.keys != tuple(self.layout.names):
            raise RuntimeError(f"the arrays sent ({list(sent.keys)}) are not the model's state dict "
                               f"({self.layout.names}) in its order")
        global_flat = sent.flatten(self._sent_arrays)
        updates, agents, rejections = self._updates_of(replies, sent, global_flat)
        records = [self.records[r] for r in sorted(self.records)]
        step = self.server.step(server_round, global_flat, updates, agents, records, rejections=rejections,
                                reference=self.reference_update(server_round, global_flat))
        rec = step.record
        rec.seconds_aggregation = time.perf_counter() - t0
        self.records[server_round] = rec
        metrics = MetricRecord({"replies": len(agents), "aggregated": rec.agents, "rejected": len(rec.rejected)})
        if rec.flipped_fraction is not None:
            metrics["rlr-flipped-fraction"] = float(rec.flipped_fraction)
            metrics["rlr-threshold"] = int(rec.threshold)
        if step.aggregate is None:
            return None, metrics
        return sent.unflatten(global_flat), metrics

    def _updates_of(self, replies: Iterable[Message], layout: ArrayLayout, global_flat: torch.Tensor
                    ) -> tuple[torch.Tensor, list[int], list[Rejection]]:
        """The replies' updates in agent order, their agents, and a rejection for every agent sent
        whose reply cannot be used (or never came)."""
        dropped: list[tuple[Message, str]] = []
        # no metric of a reply is read: its agent is the one sent to its node, its weight the federation's size
        kept, _ = screen_replies(replies, layout, "arrays", None, dropped)
        rejections: list[Rejection] = []
        by_agent: dict[int, torch.Tensor] = {}
        for msg, reason in dropped:
            agent = self._agent_of_node.get(int(getattr(msg.metadata, "src_node_id", -1)))
            rejections.append(Rejection(-1, agent if agent is not None else f"node {msg.metadata.src_node_id}",
                                        reason, ""))
        for msg in kept:
            node = int(msg.metadata.src_node_id)
            agent = self._agent_of_node.get(node)
            if agent is None or agent in by_agent:
                what = "a second reply" if agent is not None else "a reply from a node not sent this round"
                rejections.append(Rejection(-1, f"node {node}", "unexpected", what))
                continue
            by_agent[agent] = layout.flatten(msg.content.array_records["arrays"]) - global_flat
        answered = set(by_agent) | {r.agent for r in rejections}
        rejections += [Rejection(-1, a, "no reply", "") for a in sorted(self._agent_of_node.values())
                       if a not in answered]
        agents = sorted(by_agent)
        updates = (torch.stack([by_agent[a] for a in agents]) if agents
                   else torch.zeros(0, global_flat.numel(), dtype=global_flat.dtype))
        return updates, agents, rejections


def check_flower_config(cfg: ExperimentConfig) -> None:
    """Refuse, before any work, what a Flower run cannot do."""
    if cfg.byzantine != "none":
        from robustlr.errors import ConfigError

        raise ConfigError(f"byzantine = {cfg.byzantine!r}: the attack crafts the corrupt agents' update from the "
                          f"round's honest updates, which a Flower client never sees; run it with the built-in "
                          f"simulator (robustlr run)")
    if cfg.trigger_optimisation != "none":
        from robustlr.errors import ConfigError

        raise ConfigError(f"trigger_optimisation = {cfg.trigger_optimisation!r}: the corrupt agents optimise one "
                          f"trigger together on all their images, and a Flower client trains alone; run it with the "
                          f"built-in simulator (robustlr run)")
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
    model = place_model(model, torch.device("cpu"))  # the simulator's evaluation layout (bitwise-equal numbers)
    strategy = ExperimentStrategy(cfg, fed, layout, model)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0 or (server_round % cfg.eval_every and server_round != cfg.rounds):
            return None
        model.load_state_dict(arrays.to_torch_state_dict())
        m = evaluate(model, fed.val_x, fed.val_y, cfg.base_class, fed.backdoor_x, cfg.target_class)
        if not math.isfinite(m["val_loss"]):  # as the simulator: a huge finite model's numbers are garbage
            raise TrainingError(f"round {server_round}: the validation loss is {m['val_loss']} (the global model's "
                                f"outputs overflow): the run's numbers would be garbage. Turn on "
                                f"screen_norm_multiple, which drops such an update before it is averaged in")
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
    from robustlr.sim.records import dumps

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", cfg.to_json())
    records = list(getattr(result, "robustlr_records", []))
    atomic_write_text(out / "metrics.jsonl", "".join(dumps(r.to_json_dict()) + "\n" for r in records))
    seconds = float(getattr(result, "robustlr_seconds", 0.0))
    summary = run_summary(cfg, records, seconds=seconds, engine="flower",
                          federation=dict(getattr(result, "robustlr_federation", {})))
    atomic_save(result.arrays.to_torch_state_dict(), out / "model.pt")
    atomic_write_text(out / "summary.json", dumps(summary.model_dump(), indent=2))


def flat_of(arrays: ArrayRecord, cfg: ExperimentConfig, num_classes: int = 10) -> torch.Tensor:
    """A Flower ArrayRecord as the simulator's flat global vector (for comparisons)."""
    model = build_model(cfg.model, num_classes=num_classes)
    model.load_state_dict(arrays.to_torch_state_dict())
    return ParamLayout.from_module(model).flatten(model)


__all__ = ["CONFIG_KEY", "DATA_DIR_KEY", "ExperimentStrategy", "config_from_run_config", "flat_of", "initial_state",
           "make_client_app", "make_server_app", "run_on_grid", "train_message"]
