"""The results store: one SQLite database per results folder, one row per run.

``results.sqlite`` in the results folder holds a table ``runs``; its schema (plain SQL, for
users' own queries)::

    runs(config_hash TEXT,              -- hash of the config's non-default, number-changing keys
         suite TEXT, label TEXT,        -- the suite and its table row
         name TEXT, seed INTEGER, status TEXT,   -- 'done' | 'failed'
         config TEXT,                   -- the full config, JSON
         val_acc REAL, val_loss REAL, base_acc REAL, backdoor_acc REAL, rlr_switch_round INTEGER,
         seconds REAL, rounds INTEGER, engine TEXT,
         path TEXT,                     -- the run folder, relative to the results folder
         robustlr_version TEXT,
         machine TEXT, updated TEXT,
         PRIMARY KEY (suite, name))     -- one row per run folder

and every config key as a column of its own (``aggregator``, ``rlr_threshold``, ...), so a
filter reads like ``aggregator = 'comed' and rlr_threshold > 0``. One writer (the sweep's
parent process) writes a row after the run's files are atomically in place; the store can be
rebuilt from the run folders at any time (:func:`rebuild`).

Two suites may hold runs of the same config (Table 10's M 0, sigma 0 rows are Table 1's runs):
each folder has its row; ``config_hash`` finds them (``robustlr runs --where "config_hash = '...'"``).
A store written by robustlr 0.2.0's first sweeps (keyed on the config hash alone, so such runs
overwrote each other) is rebuilt from the run folders when it is opened; a store written before a
config key was added gains its column when it is opened (NULL in the older rows).

The config hash ignores keys left at their defaults (a key added in a later version does not
rerun every finished run) and keys that cannot change the numbers
(:data:`robustlr.sim.config.NEUTRAL_KEYS`).
"""

from __future__ import annotations

import datetime as _dt
import json
import sqlite3
from pathlib import Path
from typing import Any

from robustlr.sim.config import ExperimentConfig, config_hash  # noqa: F401  (config_hash: re-exported)
from robustlr.sim.records import RecordError, read_summary

DB_NAME = "results.sqlite"
_FIXED = ["config_hash", "suite", "label", "name", "seed", "status", "config", "val_acc", "val_loss", "base_acc",
          "backdoor_acc", "rlr_switch_round", "seconds", "rounds", "engine", "path", "robustlr_version", "machine",
          "updated"]
_CONFIG_COLUMNS = [k for k in ExperimentConfig.model_fields if k not in ("name", "seed", "rounds")]


def _connect(results: Path) -> sqlite3.Connection:
    results.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(results / DB_NAME, timeout=30)
    pk = {row[1]: row[5] for row in con.execute("PRAGMA table_info(runs)")}
    if pk.get("config_hash"):  # the first schema: keyed on the config hash alone
        con.close()
        (results / DB_NAME).unlink()
        rebuild(results)
        return _connect(results)
    cols = ", ".join([f"{c}" for c in _FIXED]
                     + [f'"{c}"' for c in _CONFIG_COLUMNS] + ["PRIMARY KEY (suite, name)"])
    con.execute(f"CREATE TABLE IF NOT EXISTS runs ({cols})")
    # a store written by an older robustlr lacks the columns of config keys added since: add them
    # (NULL in the old rows, whose configs predate the key: they ran with its default)
    have = {row[1] for row in con.execute("PRAGMA table_info(runs)")}
    for c in [c for c in _FIXED + _CONFIG_COLUMNS if c not in have]:
        con.execute(f'ALTER TABLE runs ADD COLUMN "{c}"')
    return con


def _value(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def label_of(name: str, suite: str) -> str:
    """The row label in a run name ``<suite>-<label>[-key=value...]``."""
    rest = name[len(suite) + 1:] if suite and name.startswith(suite + "-") else name
    return "-".join(p for p in rest.split("-") if "=" not in p)


def record_run(results: Path, folder: Path, cfg: ExperimentConfig, status: str, suite: str = "",
               label: str | None = None) -> None:
    """Write (or replace) the row of the run in ``folder``."""
    row: dict[str, Any] = {"config_hash": config_hash(cfg), "suite": suite,
                           "label": label if label is not None else label_of(cfg.name, suite),
                           "name": cfg.name, "seed": cfg.seed,
                           "status": status, "config": cfg.to_json(), "rounds": cfg.rounds,
                           # relative to the results folder, so the folder can move (and be committed)
                           "path": str(folder.resolve().relative_to(results.resolve())),
                           "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if status == "done":
        s = read_summary(folder / "summary.json")
        row.update(val_acc=s.val_acc, val_loss=s.val_loss, base_acc=s.base_acc, backdoor_acc=s.backdoor_acc,
                   rlr_switch_round=s.rlr_switch_round, seconds=s.seconds, engine=s.engine,
                   robustlr_version=s.robustlr_version, machine=json.dumps(s.machine))
    for k in _CONFIG_COLUMNS:
        row[k] = _value(getattr(cfg, k))
    with _connect(results) as con:
        names = ", ".join(f'"{k}"' for k in row)
        con.execute(f"INSERT OR REPLACE INTO runs ({names}) VALUES ({', '.join('?' * len(row))})", list(row.values()))


def query(results: Path, where: str | None = None) -> list[dict[str, Any]]:
    """The rows of the store, optionally filtered by an SQL ``where`` clause."""
    with _connect(results) as con:
        con.row_factory = sqlite3.Row
        sql = "SELECT * FROM runs" + (f" WHERE {where}" if where else "") + " ORDER BY suite, name, seed"
        try:
            return [dict(r) for r in con.execute(sql)]
        except sqlite3.Error as exc:
            from robustlr.errors import ConfigError

            raise ConfigError(f"--where {where!r} is not a valid SQL condition on the runs table: {exc}") from None


def rebuild(results: Path) -> int:
    """Rebuild the store from the run folders below ``results``; returns the number of runs."""
    from robustlr.sim.rundir import read_run_config

    db = results / DB_NAME
    if db.exists():
        db.unlink()
    n = 0
    for cfg_path in sorted(results.rglob("config.json")):
        folder = cfg_path.parent
        cfg = read_run_config(cfg_path)
        try:
            status = "done" if (folder / "summary.json").exists() and read_summary(folder / "summary.json") else "failed"
        except RecordError:
            status = "failed"
        suite = folder.parent.name if folder.parent != results else ""
        label = None
        meta = folder / "suite-run.json"  # written by the sweep: the run's table row
        if meta.exists():
            try:
                label = json.loads(meta.read_text()).get("key")
            except (OSError, ValueError):
                label = None
        record_run(results, folder, cfg, status, suite, label)
        n += 1
    return n
