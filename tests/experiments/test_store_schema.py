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
