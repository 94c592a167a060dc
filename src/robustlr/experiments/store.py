"""The results store: one SQLite database per results folder, one row per run.

``results.sqlite`` in the results folder holds a table ``runs``; its schema (plain SQL, for
users' own queries)::

    runs(config_hash TEXT,              -- hash of the config's non-default, number-changing keys
         suite TEXT, label TEXT,        -- the suite and its table row
         name TEXT, seed INTEGER, status TEXT,   -- 'done' | 'failed'
         config TEXT,                   -- the full config, JSON
         val_acc REAL, val_loss REAL, base_acc REAL, backdoor_acc REAL,
         collapsed INTEGER,             -- final validation at or below 1.5 x chance
         rlr_switch_round INTEGER,
         seconds REAL, rounds INTEGER, engine TEXT,
         path TEXT,                     -- the run folder, relative to the results folder
         robustlr_version TEXT,
         machine TEXT, updated TEXT,
         data_fingerprint TEXT,         -- the data that ran (robustlr.data.fingerprint)
         backdoor_auc REAL,             -- the mean backdoor accuracy over the evaluated rounds
         backdoor_peak REAL, backdoor_durability INTEGER,   -- with an attack window (attack_until_round):
         backdoor_durability_censored INTEGER,              -- see robustlr.sim.records.backdoor_durability
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

A damaged store (not SQLite, truncated, or an empty file while the folder holds run folders) is
refused with a :class:`StoreError` that names it and the fix (``robustlr runs --rebuild``).
:func:`rebuild` writes a new store beside the old one (``results.sqlite.tmp``), skips run folders
it cannot read (each named, with why) and only then replaces the old store (``os.replace``): an
interrupted rebuild leaves the old store as it was. A run is *finished* (:func:`finished_run`)
when its ``summary.json`` is a run record this robustlr reads and its ``model.pt`` is a saved
model (a non-empty zip archive, as ``torch.save`` writes; checked without loading it).

The config hash ignores keys left at their defaults (a key added in a later version does not
rerun every finished run) and keys that cannot change the numbers
(:data:`robustlr.sim.config.NEUTRAL_KEYS`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import sqlite3
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robustlr.errors import ConfigError, RobustlrError
from robustlr.sim.config import ExperimentConfig, classes_of, config_hash  # noqa: F401  (config_hash: re-exported)
from robustlr.sim.records import RecordError, RunSummary, is_collapsed, read_summary

log = logging.getLogger("robustlr")

DB_NAME = "results.sqlite"
_FIXED = ["config_hash", "suite", "label", "name", "seed", "status", "config", "val_acc", "val_loss", "base_acc",
          "backdoor_acc", "collapsed", "rlr_switch_round", "seconds", "rounds", "engine", "path", "robustlr_version", "machine",
          "updated", "data_fingerprint", "backdoor_auc", "backdoor_peak", "backdoor_durability",
          "backdoor_durability_censored"]
_CONFIG_COLUMNS = [k for k in ExperimentConfig.model_fields if k not in ("name", "seed", "rounds")]
#: what each fixed column holds (the documentation site's table of the schema is built from it)
COLUMN_NOTES = {
    "config_hash": "hash of the config's non-default, number-changing keys (robustlr.sim.config.config_hash)",
    "suite": "the suite", "label": "the suite's row", "name": "the run (its folder's name)", "seed": "the seed",
    "status": "'done' or 'failed'", "config": "the full config, JSON",
    "val_acc": "final validation accuracy (0..1)", "val_loss": "final validation loss",
    "base_acc": "final base-class accuracy", "backdoor_acc": "final backdoor accuracy",
    "collapsed": "1 when the final validation accuracy is at or below 1.5 x chance",
    "rlr_switch_round": "the first round RLR was on (rlr_from_round, rlr_from_val_acc)",
    "seconds": "the run's wall time", "rounds": "rounds run", "engine": "the training engine",
    "path": "the run folder, relative to the results folder", "robustlr_version": "robustlr's version",
    "machine": "the machine (CPU model, ISA flags, cores), JSON", "updated": "when the row was written (UTC)",
    "data_fingerprint": "the data that ran (robustlr.data.fingerprint)",
    "backdoor_auc": "the mean backdoor accuracy over the evaluated rounds",
    "backdoor_peak": "with an attack window: the highest backdoor accuracy in it",
    "backdoor_durability": "with an attack window: rounds after it until the backdoor fell below half its peak",
    "backdoor_durability_censored": "1 when the backdoor outlived the run (durability is a lower bound)",
}


class StoreError(RobustlrError):
    """A results store that cannot be read (not SQLite, truncated, emptied); the message names the
    file and the fix: rebuild it from the run folders."""


def _damaged(results: Path, why: str) -> StoreError:
    return StoreError(f"the results store {results / DB_NAME} is damaged ({why}); rebuild it from the run folders: "
                      f"robustlr runs -r {results} --rebuild")


def _is_damage(exc: sqlite3.Error) -> bool:
    """Whether sqlite's error is about the file itself (SQLITE_CORRUPT, SQLITE_NOTADB), not a lock,
    a permission or a query."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    return code in (11, 26) if code is not None else type(exc) is sqlite3.DatabaseError


BUSY_SECONDS = 30  # how long an access waits for another process's lock on the store


def _is_busy(exc: sqlite3.Error) -> bool:
    """Whether sqlite's error is another connection's lock outlasting the wait (SQLITE_BUSY, SQLITE_LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (5, 6) if code is not None else "locked" in str(exc)


@contextlib.contextmanager
def _not_busy(results: Path):
    """Turn a lock that outlasted the wait into one line naming the store and what to do."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if not _is_busy(exc):
            raise
        raise StoreError(f"the results store {results / DB_NAME} stayed locked by another process for "
                         f"{BUSY_SECONDS} s ({exc}): a sweep or a sqlite3 shell holds it open in a transaction; "
                         f"wait for it to end (or close it), then run this again") from None


def _holds_runs(results: Path) -> bool:
    return any(True for _ in results.rglob("config.json"))


def _open(results: Path, db: Path) -> sqlite3.Connection:
    """Open the store ``db`` of ``results`` (creating it), checked and with the current schema."""
    results.mkdir(parents=True, exist_ok=True)
    # sqlite reads a 0-byte file as an empty store: a store emptied by damage would list no runs
    if db.name == DB_NAME and db.is_file() and db.stat().st_size == 0 and _holds_runs(results):
        raise _damaged(results, "an empty file, while the folder holds run folders")
    con = sqlite3.connect(db, timeout=BUSY_SECONDS)
    try:
        check = con.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            raise _damaged(results, "; ".join(str(row[0]) for row in check[:3]))
        pk = {row[1]: row[5] for row in con.execute("PRAGMA table_info(runs)")}
        if pk.get("config_hash"):  # the first schema: keyed on the config hash alone
            con.close()
            rebuild(results)
            return _open(results, db)
        cols = ", ".join([f"{c}" for c in _FIXED]
                         + [f'"{c}"' for c in _CONFIG_COLUMNS] + ["PRIMARY KEY (suite, name)"])
        con.execute(f"CREATE TABLE IF NOT EXISTS runs ({cols})")
        # a store written by an older robustlr lacks the columns of config keys added since: add them
        # (NULL in the old rows, whose configs predate the key: they ran with its default)
        have = {row[1] for row in con.execute("PRAGMA table_info(runs)")}
        for c in [c for c in _FIXED + _CONFIG_COLUMNS if c not in have]:
            con.execute(f'ALTER TABLE runs ADD COLUMN "{c}"')
        if "collapsed" not in have:  # a store from before robustlr 0.3: judge its finished runs on their numbers
            _fill_collapsed(con)
    except sqlite3.DatabaseError as exc:
        con.close()
        if _is_damage(exc):  # "file is not a database", "database disk image is malformed"
            raise _damaged(results, str(exc)) from None
        raise
    except BaseException:
        con.close()
        raise
    return con


def _fill_collapsed(con: sqlite3.Connection) -> None:
    rows = con.execute("SELECT suite, name, val_acc, dataset, digits_only FROM runs WHERE status = 'done'").fetchall()
    with con:
        for suite, name, val_acc, dataset, digits_only in rows:
            flag = is_collapsed(val_acc, classes_of(dataset or "", bool(digits_only)))
            con.execute("UPDATE runs SET collapsed = ? WHERE suite = ? AND name = ?",
                        (None if flag is None else int(flag), suite, name))


def _connect(results: Path) -> sqlite3.Connection:
    return _open(results, results / DB_NAME)


def check(results: Path) -> None:
    """Open the store of ``results`` (creating it when there is none): a :class:`StoreError` if damaged."""
    with _not_busy(results):
        _connect(results).close()


def finished_run(folder: Path) -> tuple[RunSummary | None, str | None]:
    """The run record of a finished run in ``folder``: ``(summary, None)``.

    ``(None, None)`` when the run has not finished (no ``summary.json``); ``(None, why)`` when its
    files are damaged: a ``summary.json`` that is not a run record this robustlr reads (invalid
    JSON, not a JSON object, an unknown schema version, missing fields), or a ``model.pt`` that is
    missing, empty or not a saved model. The model is checked without loading it: ``torch.save``
    writes a zip archive, and a truncated one lacks the archive's directory at its end.
    """
    path = folder / "summary.json"
    if not path.exists():
        return None, None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, f"summary.json cannot be read ({type(exc).__name__}: {exc})"
    if not isinstance(data, dict):
        return None, f"summary.json holds a JSON {type(data).__name__}, not a run record"
    try:
        summary = read_summary(path)
    except RecordError as exc:
        return None, str(exc).replace(f"{path}: ", "summary.json: ", 1)
    except (OSError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        errors = getattr(exc, "errors", None)
        first = errors()[0] if callable(errors) and errors() else None
        detail = (f"{len(errors())} problem(s), e.g. {'.'.join(map(str, first['loc'])) or 'the record'}: {first['msg']}"
                  if first else f"{type(exc).__name__}: {exc}")
        return None, f"summary.json is not a run record ({detail})"
    model = folder / "model.pt"
    if not model.is_file():
        return None, "summary.json is there but model.pt is missing"
    if model.stat().st_size == 0:
        return None, "model.pt is empty"
    if not zipfile.is_zipfile(model):
        return None, "model.pt is not a saved model (truncated or overwritten)"
    return summary, None


def _value(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict)) else v


def label_of(name: str, suite: str) -> str:
    """The row label in a run name ``<suite>-<label>[-key=value...]``."""
    rest = name[len(suite) + 1:] if suite and name.startswith(suite + "-") else name
    return "-".join(p for p in rest.split("-") if "=" not in p)


def record_run(results: Path, folder: Path, cfg: ExperimentConfig, status: str, suite: str = "",
               label: str | None = None) -> None:
    """Write (or replace) the row of the run in ``folder``."""
    with _not_busy(results), contextlib.closing(_connect(results)) as con, con:
        _write_row(con, results, folder, cfg, status, suite, label)


def _write_row(con: sqlite3.Connection, results: Path, folder: Path, cfg: ExperimentConfig, status: str,
               suite: str, label: str | None, summary: RunSummary | None = None) -> None:
    row: dict[str, Any] = {"config_hash": config_hash(cfg), "suite": suite,
                           "label": label if label is not None else label_of(cfg.name, suite),
                           "name": cfg.name, "seed": cfg.seed,
                           "status": status, "config": cfg.to_json(), "rounds": cfg.rounds,
                           # relative to the results folder, so the folder can move (and be committed)
                           "path": str(folder.resolve().relative_to(results.resolve())),
                           "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if status == "done":
        s = summary if summary is not None else read_summary(folder / "summary.json")
        row.update(val_acc=s.val_acc, val_loss=s.val_loss, base_acc=s.base_acc, backdoor_acc=s.backdoor_acc,
                   # a summary written before robustlr 0.3 has no collapse flag: the same test on its numbers
                   collapsed=s.collapsed if s.collapsed is not None else is_collapsed(s.val_acc, cfg.num_classes),
                   rlr_switch_round=s.rlr_switch_round, seconds=s.seconds, engine=s.engine,
                   robustlr_version=s.robustlr_version, machine=json.dumps(s.machine),
                   # which data ran (robustlr.data.fingerprint); NULL for summaries before robustlr 0.3
                   data_fingerprint=(s.dataset or {}).get("fingerprint"),
                   # the attack window's measures (robustlr.sim.records.backdoor_durability); NULL where absent
                   **{k: getattr(s, k, None) for k in ("backdoor_auc", "backdoor_peak", "backdoor_durability",
                                                       "backdoor_durability_censored")})
    for k in _CONFIG_COLUMNS:
        row[k] = _value(getattr(cfg, k))
    names = ", ".join(f'"{k}"' for k in row)
    con.execute(f"INSERT OR REPLACE INTO runs ({names}) VALUES ({', '.join('?' * len(row))})", list(row.values()))


def query(results: Path, where: str | None = None) -> list[dict[str, Any]]:
    """The rows of the store, optionally filtered by an SQL ``where`` clause."""
    sql = "SELECT * FROM runs" + (f" WHERE {where}" if where else "") + " ORDER BY suite, name, seed"
    with _not_busy(results), contextlib.closing(_connect(results)) as con:
        con.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in con.execute(sql)]
        except sqlite3.Error as exc:
            if _is_damage(exc):  # the file, not the query
                raise _damaged(results, str(exc)) from None
            if where is None or _is_busy(exc):
                raise
            raise ConfigError(f"--where {where!r} is not a valid SQL condition on the runs table: {exc}") from None


def rebuild(results: Path, warn: Callable[[str], None] | None = None) -> int:
    """Rebuild the store from the run folders below ``results``; returns the number of runs.

    The new store is written beside the old one and replaces it only when complete. A run folder
    whose ``config.json`` or finished files are damaged is skipped; ``warn`` (default: the
    ``robustlr`` logger) gets one line per skipped folder, naming it and why. A run without a
    ``summary.json`` is recorded as ``failed`` (it did not finish).
    """
    from robustlr.sim.rundir import read_run_config

    warn = warn or log.warning
    results.mkdir(parents=True, exist_ok=True)
    db, tmp = results / DB_NAME, results / (DB_NAME + ".tmp")
    for stale in (tmp, Path(f"{tmp}-journal")):  # an interrupted rebuild's
        stale.unlink(missing_ok=True)
    n = 0
    try:
        with contextlib.closing(_open(results, tmp)) as con, con:
            for cfg_path in sorted(results.rglob("config.json")):
                folder = cfg_path.parent
                where = folder.relative_to(results)
                try:
                    cfg = read_run_config(cfg_path, fix="rerun its run (`robustlr sweep`), or delete the folder")
                except RobustlrError as exc:
                    warn(f"skipped the run folder {where}: {exc}")
                    continue
                summary, why = finished_run(folder)
                if why is not None:
                    warn(f"skipped the run folder {where}: {why}; `robustlr sweep` reruns it "
                         f"(or delete the folder)")
                    continue
                suite = folder.parent.name if folder.parent != results else ""
                label = None
                meta = folder / "suite-run.json"  # written by the sweep: the run's table row
                if meta.exists():
                    try:
                        label = json.loads(meta.read_text()).get("key")
                    except (OSError, ValueError, AttributeError):
                        label = None
                _write_row(con, results, folder, cfg, "done" if summary is not None else "failed", suite, label,
                           summary)
                n += 1
        os.replace(tmp, db)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for stale in (Path(f"{db}-journal"), Path(f"{db}-wal"), Path(f"{db}-shm")):  # the old store's, now stale
        stale.unlink(missing_ok=True)
    return n
