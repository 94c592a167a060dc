"""The results store opens a store written before a config key existed (it adds the column)."""

import json
import sqlite3

import torch

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


def test_the_store_keeps_the_collapse_flag_and_derives_it_for_older_summaries(tmp_path):
    from robustlr.sim.records import RunSummary

    results = tmp_path / "results"
    base = dict(rounds=3, seconds=1.0, seconds_per_round=0.3, engine="serial", federation={}, machine={},
                torch_version="0", robustlr_version="0")
    # a summary with the flag keeps it; one written before the flag (no key) is judged on its numbers:
    # 10 classes, so at or below 0.15 is a collapse; none evaluated stays unknown
    summaries = {"flagged": RunSummary(name="flagged", val_acc=0.5, collapsed=True, **base).model_dump(),
                 "old-low": RunSummary(name="old-low", val_acc=0.15, **base).model_dump(exclude={"collapsed"}),
                 "old-high": RunSummary(name="old-high", val_acc=0.1501, **base).model_dump(exclude={"collapsed"}),
                 "unevaluated": RunSummary(name="unevaluated", **base).model_dump(exclude={"collapsed"})}
    for name, doc in summaries.items():
        folder = results / "s" / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(make_config({"name": name, "rounds": 3}).to_json())
        (folder / "summary.json").write_text(json.dumps(doc))
        torch.save({"w": torch.zeros(1)}, folder / "model.pt")
    assert store.rebuild(results) == 4
    flags = {r["name"]: r["collapsed"] for r in store.query(results)}
    assert flags == {"flagged": 1, "old-low": 1, "old-high": 0, "unevaluated": None}


def test_a_store_from_before_the_collapse_flag_gains_it_from_its_numbers(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    con = sqlite3.connect(results / store.DB_NAME)
    old = [c for c in store._FIXED if c != "collapsed"] + ['"dataset"', '"digits_only"']
    con.execute("CREATE TABLE runs (" + ", ".join(old) + ", PRIMARY KEY (suite, name))")
    for name, status, val_acc, dataset, digits in [("fm-low", "done", 0.15, "fmnist", None),
                                                   ("fm-high", "done", 0.2, "fmnist", None),
                                                   ("fe-62", "done", 0.03, "femnist", 0),  # 1.5 / 62 = 0.024
                                                   ("fe-10", "done", 0.03, "femnist", 1),  # digits: 1.5 / 10
                                                   ("failed", "failed", None, "fmnist", None)]:
        con.execute("INSERT INTO runs (suite, name, status, val_acc, dataset, digits_only) VALUES ('s', ?, ?, ?, ?, ?)",
                    (name, status, val_acc, dataset, digits))
    con.commit()
    con.close()
    flags = {r["name"]: r["collapsed"] for r in store.query(results)}
    assert flags == {"fm-low": 1, "fm-high": 0, "fe-62": 0, "fe-10": 1, "failed": None}


def test_the_store_holds_the_attack_windows_measures_and_null_for_runs_without_them(tmp_path):
    from robustlr.sim.records import RunSummary

    results = tmp_path / "results"
    base = dict(rounds=6, seconds=1.0, seconds_per_round=0.3, engine="serial", federation={}, machine={},
                torch_version="0", robustlr_version="0", val_acc=0.8)
    docs = {"window": RunSummary(name="window", backdoor_auc=0.4, backdoor_peak=0.9, backdoor_durability=2,
                                 backdoor_durability_censored=False, **base).model_dump(),
            "plain": RunSummary(name="plain", backdoor_auc=0.1, **base).model_dump(),
            "old": RunSummary(name="old", **base).model_dump(exclude={"backdoor_auc", "backdoor_peak",
                                                                       "backdoor_durability",
                                                                       "backdoor_durability_censored"})}
    for name, doc in docs.items():
        folder = results / "s" / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(make_config({"name": name, "rounds": 6}).to_json())
        (folder / "summary.json").write_text(json.dumps(doc))
        torch.save({"w": torch.zeros(1)}, folder / "model.pt")
    assert store.rebuild(results) == 3
    got = {r["name"]: (r["backdoor_auc"], r["backdoor_peak"], r["backdoor_durability"],
                       r["backdoor_durability_censored"]) for r in store.query(results)}
    assert got == {"window": (0.4, 0.9, 2, 0), "plain": (0.1, None, None, None), "old": (None, None, None, None)}
