"""The results store opens a store written before a config key existed (it adds the column)."""

import sqlite3

from robustlr.experiments import store
from robustlr.sim.config import make_config


def test_a_store_without_a_newer_config_column_gains_it(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    # an older schema: the fixed columns and one config key only
    con = sqlite3.connect(results / store.DB_NAME)
    con.execute("CREATE TABLE runs (" + ", ".join(store._FIXED) + ', "aggregator", PRIMARY KEY (suite, name))')
    con.execute("INSERT INTO runs (suite, name, status, aggregator) VALUES ('old', 'old-run', 'done', 'fedavg')")
    con.commit()
    con.close()
    folder = results / "new" / "new-run"
    folder.mkdir(parents=True)
    cfg = make_config({"name": "new-run", "stealth_penalty": 0.5, "boost_factor": 2.0})
    store.record_run(results, folder, cfg, "failed", suite="new")
    rows = {r["name"]: r for r in store.query(results)}
    assert rows["new-run"]["stealth_penalty"] == 0.5 and rows["new-run"]["boost_factor"] == 2.0
    assert rows["old-run"]["aggregator"] == "fedavg" and rows["old-run"]["stealth_penalty"] is None


def test_a_store_of_the_first_schema_is_rebuilt_from_the_run_folders(tmp_path):
    results = tmp_path / "results"
    folder = results / "s" / "s-a"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(make_config({"name": "s-a"}).to_json())
    # robustlr 0.2.0's first sweeps: keyed on the config hash alone, with a row no run folder holds
    con = sqlite3.connect(results / store.DB_NAME)
    con.execute("CREATE TABLE runs (config_hash TEXT PRIMARY KEY, name TEXT, status TEXT)")
    con.execute("INSERT INTO runs VALUES ('abc', 'gone', 'done')")
    con.commit()
    con.close()
    assert [(r["suite"], r["name"], r["status"]) for r in store.query(results)] == [("s", "s-a", "failed")]
    assert sorted(p.name for p in results.iterdir()) == [store.DB_NAME, "s"]
