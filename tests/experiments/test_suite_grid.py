"""Suite expansion: rows that pin grid keys, non-seed grid points as table rows, the paper's
noise-free "M 0, sigma > 0" rows as aliases, relative RLR triggers; and a sweep that resolves a
relative trigger from its reference run (a tiny config: 2 runs of 3 rounds on 300 images, about
20-40 s on 2 cores)."""

import json

import pytest

from robustlr.errors import ConfigError
from robustlr.experiments import store
from robustlr.experiments.suite import list_suites, load_suite
from robustlr.experiments.sweep import sweep
from robustlr.reports.reference import PAPER

GRID = """name = "g"
preset = "demo-iid"
noise_without_clip = "zero"
[budget.lite]
rounds = 2
[[row]]
label = "clean"
corrupt_fraction = 0.0
clip_norm = 0.0
noise_sigma = 0.0
[[row]]
label = "rlr"
[grid]
clip_norm = [0.0, 2.0]
noise_sigma = [0.0, 1e-3]
seed = [0, 1]
"""


def _suite(tmp_path, text, name="s.toml"):
    p = tmp_path / name
    p.write_text(text)
    return load_suite(p)


def test_rows_pin_grid_keys_and_grid_points_make_table_rows(tmp_path):
    runs = _suite(tmp_path, GRID).runs("lite")
    # clean pins clip_norm and noise_sigma: crossed with the seeds only
    assert [r.config.name for r in runs if r.label == "clean"] == ["g-clean-seed=0", "g-clean-seed=1"]
    assert {r.key for r in runs if r.label == "clean"} == {"clean"}
    rlr = [r for r in runs if r.label == "rlr"]
    # M 0 x sigma 1e-3 runs as sigma 0: the same config as M 0 x sigma 0, so it is not run twice
    assert [r.config.name for r in rlr] == [
        "g-rlr-clip_norm=0-noise_sigma=0-seed=0", "g-rlr-clip_norm=0-noise_sigma=0-seed=1",
        "g-rlr-clip_norm=2-noise_sigma=0-seed=0", "g-rlr-clip_norm=2-noise_sigma=0-seed=1",
        "g-rlr-clip_norm=2-noise_sigma=0.001-seed=0", "g-rlr-clip_norm=2-noise_sigma=0.001-seed=1"]
    assert [(r.config.clip_norm, r.config.noise_sigma) for r in rlr[::2]] == [(0.0, 0.0), (2.0, 0.0), (2.0, 0.001)]
    first = rlr[0]
    assert first.key == "rlr clip_norm=0 noise_sigma=0" and first.aliases == ["rlr clip_norm=0 noise_sigma=0.001"]
    assert first.notes == [] and "adds no noise" in first.alias_notes["rlr clip_norm=0 noise_sigma=0.001"][0]
    assert _suite(tmp_path, GRID).row_keys("lite") == [
        "clean", "rlr clip_norm=0 noise_sigma=0", "rlr clip_norm=0 noise_sigma=0.001",
        "rlr clip_norm=2 noise_sigma=0", "rlr clip_norm=2 noise_sigma=0.001"]


def test_noise_without_clip_is_refused_unless_the_suite_says_zero(tmp_path):
    with pytest.raises(ConfigError, match="noise_sigma > 0 needs clip_norm > 0"):
        _suite(tmp_path, GRID.replace('noise_without_clip = "zero"\n', "")).runs("lite")
    with pytest.raises(ConfigError, match="noise_without_clip must be 'refuse' or 'zero'"):
        _suite(tmp_path, GRID.replace('"zero"', '"drop"'))


def test_relative_trigger_is_checked_before_anything_runs(tmp_path):
    base = 'name = "r"\npreset = "demo-iid"\n[[row]]\nlabel = "a"\n[[row]]\nlabel = "b"\n'
    with pytest.raises(ConfigError, match="give rlr_from_val_acc_of and rlr_from_val_acc_fraction together"):
        _suite(tmp_path, base + 'rlr_from_val_acc_of = "a"\n').runs("paper")
    with pytest.raises(ConfigError, match="must name a row above it"):
        _suite(tmp_path, base + 'rlr_from_val_acc_of = "b"\nrlr_from_val_acc_fraction = 0.9\n').runs("paper")
    with pytest.raises(ConfigError, match=r"must be a number in \(0, 1\]"):
        _suite(tmp_path, base + 'rlr_from_val_acc_of = "a"\nrlr_from_val_acc_fraction = 1.5\n').runs("paper")
    with pytest.raises(ConfigError, match="row labels must be unique"):
        _suite(tmp_path, base + '[[row]]\nlabel = "a"\n')
    runs = _suite(tmp_path, base + 'rlr_from_val_acc_of = "a"\nrlr_from_val_acc_fraction = 0.9\n'
                  '[grid]\nseed = [3, 4]\n').runs("paper")
    assert [(r.config.name, r.after) for r in runs if r.label == "b"] == [("r-b-seed=3", "r-a-seed=3"),
                                                                          ("r-b-seed=4", "r-a-seed=4")]
    resolved = runs[2].resolved(0.8)
    assert resolved.rlr_from_val_acc == pytest.approx(0.72) and resolved.name == "r-b-seed=3"


def test_shipped_suites_expand_and_their_paper_rows_exist():
    t10 = load_suite("table10-plus")
    assert len(t10.runs("lite")) == 27 and len(t10.row_keys("lite")) == 33  # 6 noise-free M 0 rows share runs
    assert set(t10.row_keys("lite")) == set(PAPER["table10_plus"]) - {"source"}
    assert {r.config.rlr_threshold for r in load_suite("table6-iid").runs("lite")} == {0.0, 12.0, 16.0, 20.0}
    t7 = load_suite("table7-iid").runs("lite")
    assert {(r.config.corrupt_loss, r.config.clip_scope, r.config.server_clip_norm, r.config.agent_clip_norm)
            for r in t7} == {("negated", "server", 4.0, 0.0)}
    f6 = load_suite("figure6-iid").runs("lite")
    assert [r.after for r in f6] == [None, None, "figure6-iid-fedavg_clean-seed=0"]
    for name in list_suites():  # every shipped suite validates at both budgets, and its paper rows are its rows
        suite = load_suite(name)
        assert suite.runs("lite") and suite.runs("paper"), name
        if not suite.paper:  # beyond the paper: a defense x attack table (adversaries-*), bf16 vs fp32 (precision-*)
            # or trojans side by side (table10-logos-authors)
            assert suite.pivot or "precision" in suite.grid or "trojan" in suite.grid, \
                f"{name} names no paper setting and is neither a defense x attack (pivot), a precision nor a trojan suite"
            continue
        paper_rows = {k for k, v in PAPER.get(suite.paper, {}).items() if isinstance(v, dict)}
        assert paper_rows and paper_rows <= set(suite.row_keys("paper")), name


def test_a_sweep_resolves_the_relative_trigger_from_its_reference(tmp_path, fmnist_dir):
    suite = _suite(tmp_path, """name = "rel"
preset = "demo-iid"
[budget.lite]
rounds = 3
train_limit = 300
precision = "fp32"
eval_every = 1
checkpoint_every = 0
[[row]]
label = "clean"
corrupt_fraction = 0.0
rlr_threshold = 0
[[row]]
label = "switch"
rlr_from_val_acc_of = "clean"
rlr_from_val_acc_fraction = 0.5
""")
    state = sweep(suite, tmp_path / "res", "lite", jobs=2, data_dir=str(fmnist_dir))
    assert (state.done, state.failed) == (2, [])
    folder = tmp_path / "res" / "rel"
    ref = json.loads((folder / "rel-clean" / "summary.json").read_text())
    cfg = json.loads((folder / "rel-switch" / "config.json").read_text())
    assert cfg["rlr_from_val_acc"] == pytest.approx(0.5 * ref["val_acc"], abs=1e-6)
    metrics = [json.loads(x) for x in (folder / "rel-switch" / "metrics.jsonl").read_text().splitlines()]
    # on from the round after the first evaluation that reaches the trigger (the schedule's rule)
    first = next(m["round"] for m in metrics if m["evaluated"] and m["val_acc"] >= cfg["rlr_from_val_acc"])
    summary = json.loads((folder / "rel-switch" / "summary.json").read_text())
    assert summary["rlr_switch_round"] in (first, first + 1)
    assert [m["rlr_on"] for m in metrics] == [m["round"] >= summary["rlr_switch_round"] for m in metrics]
    assert json.loads((folder / "rel-switch" / "suite-run.json").read_text())["after"] == "rel-clean"
    # a second sweep resolves the same value and skips both
    again = sweep(suite, tmp_path / "res", "lite", jobs=2, data_dir=str(fmnist_dir))
    assert (again.skipped, again.done) == (2, 2)
    assert {r["label"] for r in store.query(tmp_path / "res")} == {"clean", "switch"}


def test_per_budget_row_overrides_and_a_narrower_budget_grid(tmp_path):
    text = """name = "b"
preset = "demo-iid"
[budget.lite]
rounds = 2
[budget.lite.grid]
clip_norm = [0.0]
[budget.paper]
[[row]]
label = "rlr"
rlr_threshold = 7
lite = {rlr_threshold = 0.2}
[[row]]
label = "switch"
rlr_from_val_acc_of = "rlr"
rlr_from_val_acc_fraction = 0.9
paper = {rlr_from_val_acc = 0.93}
[grid]
clip_norm = [0.0, 2.0]
"""
    s = _suite(tmp_path, text)
    lite, paper = s.runs("lite"), s.runs("paper")
    assert [(r.key, r.config.rlr_threshold) for r in lite] == [("rlr clip_norm=0", 0.2), ("switch clip_norm=0", 4.0)]
    assert [(r.key, r.config.rlr_threshold) for r in paper][:2] == [("rlr clip_norm=0", 7.0), ("rlr clip_norm=2", 7.0)]
    # lite: relative (resolved by the sweep); paper: the absolute trigger, no reference
    assert [r.after for r in lite] == [None, "b-rlr-clip_norm=0"]
    assert [(r.after, r.config.rlr_from_val_acc) for r in paper if r.label == "switch"] == [(None, 0.93), (None, 0.93)]
    with pytest.raises(ConfigError, match="must be non-empty lists"):
        _suite(tmp_path, text.replace("clip_norm = [0.0]\n[budget.paper]", "clip_norm = []\n[budget.paper]"), "c.toml")


def test_the_suites_command_lists_every_shipped_suite_with_its_run_counts():
    from typer.testing import CliRunner

    from robustlr.cli import app

    res = CliRunner().invoke(app, ["suites"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if "table11-plus" in x)
    assert [c.strip() for c in line.split("│")][-3:-1] == ["21", "81"]  # lite, paper (7 and 27 grid points x 3 seeds)
    assert all(name in res.output for name in list_suites())


def test_two_suites_may_hold_runs_of_one_config_and_an_old_store_is_rebuilt(tmp_path):
    import sqlite3

    from robustlr.sim.config import make_config

    res = tmp_path / "res"
    cfg = make_config({"name": "x"})
    for suite in ("a", "b"):  # one config, two suites' folders
        f = res / suite / "x"
        f.mkdir(parents=True)
        (f / "config.json").write_text(cfg.to_json())
        store.record_run(res, f, cfg, "failed", suite, "row")
    rows = store.query(res)
    assert [(r["suite"], r["name"]) for r in rows] == [("a", "x"), ("b", "x")]
    assert rows[0]["config_hash"] == rows[1]["config_hash"]
    # a store of the first schema (keyed on the config hash) is rebuilt from the folders
    (res / store.DB_NAME).unlink()
    with sqlite3.connect(res / store.DB_NAME) as con:
        con.execute("CREATE TABLE runs (config_hash TEXT PRIMARY KEY, suite, name)")
        con.execute("INSERT INTO runs VALUES ('h', 'a', 'x')")
    assert [(r["suite"], r["name"], r["status"]) for r in store.query(res)] == [("a", "x", "failed"), ("b", "x", "failed")]


def test_a_sweep_of_some_rows_names_its_runs_as_the_whole_suite_does():
    whole = load_suite("figure6-iid")
    part = whole.only(["fedavg_clean", "rlr_switch"])
    names = {r.config.name for r in whole.runs("lite")}
    chosen = [r.config.name for r in part.runs("lite")]
    assert chosen and set(chosen) <= names
    assert {r.label for r in part.runs("lite")} == {"fedavg_clean", "rlr_switch"}
    assert part.figures == []  # a figure whose rows are not all chosen is left out
    with pytest.raises(ConfigError, match=r"relative to row\(s\) fedavg_clean .*add them to --rows"):
        whole.only(["rlr_switch"])
    with pytest.raises(ConfigError, match=r"has no row 'fedavg-clean'.*did you mean 'fedavg_clean'"):
        whole.only(["fedavg-clean"])
