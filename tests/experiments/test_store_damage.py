"""The results store and the sweep survive damage: a store that is not SQLite, truncated or emptied
is one clear error naming the file and the fix; a rebuild skips damaged run folders (each named)
and replaces the old store only when it is done; a finished run whose summary.json or model.pt is
damaged counts as not finished. Run folders are written by hand (no training): seconds."""

import json

import pytest
import torch
from typer.testing import CliRunner

from robustlr.cli import app
from robustlr.errors import RobustlrError
from robustlr.experiments import store
from robustlr.experiments import backends
from robustlr.experiments import sweep as sweep_mod
from robustlr.experiments.suite import load_suite
from robustlr.sim.config import make_config
from robustlr.sim.records import RunSummary

SUITE = """name = "tiny"
preset = "demo-iid"

[budget.lite]
rounds = 3
train_limit = 300

[[row]]
label = "fedavg"
rlr_threshold = 0

[[row]]
label = "rlr"
"""


def _summary(name: str, rounds: int = 3, val_acc: float = 0.5) -> str:
    return RunSummary(name=name, rounds=rounds, val_acc=val_acc, seconds=1.0, seconds_per_round=0.3, engine="serial",
                      federation={}, machine={"cpu": "test"}, torch_version="0", robustlr_version="0").model_dump_json()


def _run(results, suite, name, cfg=None, summary="ok", model=True):
    """A run folder written by hand: config.json, and when finished summary.json and model.pt."""
    folder = results / suite / name
    folder.mkdir(parents=True)
    cfg = cfg or make_config({"name": name, "rounds": 3})
    (folder / "config.json").write_text(cfg.to_json())
    if summary == "ok":
        (folder / "summary.json").write_text(_summary(cfg.name, cfg.rounds))
    elif summary is not None:
        (folder / "summary.json").write_text(summary)
    if model:
        torch.save({"w": torch.zeros(3)}, folder / "model.pt")
    return folder


def _message(results, why):
    return (f"the results store {results / store.DB_NAME} is damaged ({why}); rebuild it from the run folders: "
            f"robustlr runs -r {results} --rebuild")


def _cli(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res, " ".join(res.output.split())


def _assert_one_clear_line(res, text, fragment):
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    assert fragment in text, res.output


# -- a damaged store ------------------------------------------------------------------------------

def test_a_store_that_is_not_sqlite_is_one_clear_error(tmp_path):
    results = tmp_path / "results"
    _run(results, "s", "a")
    (results / store.DB_NAME).write_bytes(b"this is not a database, " * 200)
    res, text = _cli("runs", "-r", results)
    _assert_one_clear_line(res, text, "is damaged (file is not a database); rebuild it from the run folders")
    assert "--rebuild" in text
    res, text = _cli("report", results, "--out", tmp_path / "rep")
    _assert_one_clear_line(res, text, "is damaged (file is not a database)")
    with pytest.raises(store.StoreError) as exc:
        store.query(results)
    assert str(exc.value) == _message(results, "file is not a database")
    assert isinstance(exc.value, RobustlrError)


def test_a_half_truncated_store_is_one_clear_error(tmp_path):
    results = tmp_path / "results"
    for i in range(12):  # about 2 kB a row: a store of several pages
        _run(results, "s", f"run{i}")
    assert store.rebuild(results) == 12
    db = results / store.DB_NAME
    data = db.read_bytes()
    assert len(data) > 8 * 4096
    db.write_bytes(data[: len(data) // 2])
    res, text = _cli("runs", "-r", results, "--json")
    _assert_one_clear_line(res, text, "is damaged (database disk image is malformed)")
    with pytest.raises(store.StoreError) as exc:
        store.query(results)
    assert str(exc.value) == _message(results, "database disk image is malformed")
    # the fix the message names works
    res, text = _cli("runs", "-r", results, "--rebuild")
    assert res.exit_code == 0, res.output
    assert "rebuilt the store from 12 run folders" in text and len(store.query(results)) == 12


def test_an_empty_store_file_is_damaged_when_the_folder_holds_runs(tmp_path):
    results = tmp_path / "results"
    _run(results, "s", "a")
    (results / store.DB_NAME).write_bytes(b"")
    res, text = _cli("runs", "-r", results)
    _assert_one_clear_line(res, text, "is damaged (an empty file, while the folder holds run folders)")
    with pytest.raises(store.StoreError) as exc:
        store.query(results)
    assert str(exc.value) == _message(results, "an empty file, while the folder holds run folders")
    # a writer refuses it too (it would otherwise fill an empty store and lose every other run's row)
    with pytest.raises(store.StoreError):
        store.record_run(results, results / "s" / "a", make_config({"name": "a", "rounds": 3}), "done", "s")


def test_an_empty_store_file_in_a_folder_without_runs_is_an_empty_store(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / store.DB_NAME).write_bytes(b"")
    assert store.query(results) == []
    res, text = _cli("runs", "-r", results)
    assert res.exit_code == 0, res.output
    assert "0 runs in" in text


def test_a_bad_where_is_still_a_config_error_on_a_sound_store(tmp_path):
    results = tmp_path / "results"
    _run(results, "s", "a")
    store.rebuild(results)
    res, text = _cli("runs", "-r", results, "--where", "no_such_column = 1")
    _assert_one_clear_line(res, text, "--where 'no_such_column = 1' is not a valid SQL condition on the runs table: "
                                      "no such column: no_such_column")


# -- rebuilding ---------------------------------------------------------------------------------------

def _damaged_results(tmp_path):
    results = tmp_path / "results"
    _run(results, "s", "good")
    _run(results, "s", "unfinished", summary=None, model=False)
    _run(results, "s", "list", summary="[]")
    _run(results, "s", "truncated", summary=_summary("truncated")[:40])
    _run(results, "s", "empty-object", summary='{"schema_version": 2}')
    _run(results, "s", "future", summary=json.dumps({"schema_version": 99}))
    _run(results, "s", "no-model", model=False)
    (_run(results, "s", "bad-config", summary=None, model=False) / "config.json").write_text('{"name": "x", "rou')
    return results


WARNINGS = [
    "skipped the run folder s/bad-config: {r}/s/bad-config/config.json is damaged (Unterminated string starting "
    "at: line 1 column 15 (char 14)); rerun its run (`robustlr sweep`), or delete the folder",
    "skipped the run folder s/empty-object: summary.json is not a run record (9 problem(s), e.g. name: Field "
    "required); `robustlr sweep` reruns it (or delete the folder)",
    "skipped the run folder s/future: summary.json: run record schema version 99; this robustlr reads versions 2. "
    "Rerun the experiment with this version (or read it with the robustlr that wrote it); `robustlr sweep` reruns "
    "it (or delete the folder)",
    "skipped the run folder s/list: summary.json holds a JSON list, not a run record; `robustlr sweep` reruns it "
    "(or delete the folder)",
    "skipped the run folder s/no-model: summary.json is there but model.pt is missing; `robustlr sweep` reruns it "
    "(or delete the folder)",
    "skipped the run folder s/truncated: summary.json cannot be read (JSONDecodeError: Unterminated string "
    "starting at: line 1 column 40 (char 39)); `robustlr sweep` reruns it (or delete the folder)",
]


def test_a_rebuild_skips_damaged_run_folders_and_names_each(tmp_path):
    results = _damaged_results(tmp_path)
    # the command line: a warning line per skipped folder, exit 0
    res, text = _cli("runs", "-r", results, "--rebuild")
    assert res.exit_code == 0, res.output
    assert "rebuilt the store from 2 run folders" in text
    assert text.count("warning: skipped the run folder") == 6
    assert "warning: skipped the run folder s/list: summary.json holds a JSON list, not a run record" in text
    warnings = []
    assert store.rebuild(results, warn=warnings.append) == 2
    assert warnings == [w.format(r=results) for w in WARNINGS]
    assert {r["name"]: r["status"] for r in store.query(results)} == {"good": "done", "unfinished": "failed"}
    assert sorted(p.name for p in results.iterdir()) == [store.DB_NAME, "s"]  # no results.sqlite.tmp left


def test_an_interrupted_rebuild_leaves_the_old_store(tmp_path, monkeypatch):
    results = tmp_path / "results"
    _run(results, "s", "a")
    _run(results, "s", "b")
    assert store.rebuild(results) == 2
    before = store.query(results)
    _run(results, "s", "c")
    import robustlr.sim.rundir as rundir

    real, calls = rundir.read_run_config, []

    def interrupted(path, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(path, **kw)

    monkeypatch.setattr(rundir, "read_run_config", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.rebuild(results)
    monkeypatch.undo()
    assert store.query(results) == before
    assert not (results / (store.DB_NAME + ".tmp")).exists()
    assert store.rebuild(results) == 3


def test_a_rebuild_over_a_damaged_store_replaces_it(tmp_path):
    results = tmp_path / "results"
    _run(results, "s", "a")
    (results / store.DB_NAME).write_bytes(b"garbage" * 100)
    (results / (store.DB_NAME + ".tmp")).write_bytes(b"an interrupted rebuild's")
    assert store.rebuild(results) == 1
    assert [r["name"] for r in store.query(results)] == ["a"]


# -- what counts as finished ----------------------------------------------------------------------------

def test_finished_run_needs_a_valid_summary_and_a_saved_model(tmp_path):
    results = tmp_path / "r"
    good = _run(results, "s", "good")
    summary, why = store.finished_run(good)
    assert (summary.name, summary.val_acc, why) == ("good", 0.5, None)
    assert store.finished_run(_run(results, "s", "unfinished", summary=None, model=False)) == (None, None)
    assert store.finished_run(_run(results, "s", "null", summary="null")) == \
        (None, "summary.json holds a JSON NoneType, not a run record")
    assert store.finished_run(_run(results, "s", "no-model", model=False)) == \
        (None, "summary.json is there but model.pt is missing")
    empty = _run(results, "s", "empty-model", model=False)
    (empty / "model.pt").write_bytes(b"")
    assert store.finished_run(empty) == (None, "model.pt is empty")
    cut = _run(results, "s", "cut-model")
    data = (cut / "model.pt").read_bytes()
    (cut / "model.pt").write_bytes(data[: len(data) // 2])
    assert store.finished_run(cut) == (None, "model.pt is not a saved model (truncated or overwritten)")
    binary = _run(results, "s", "binary", summary=None)
    (binary / "summary.json").write_bytes(b"\xff\xfe\x00")
    assert store.finished_run(binary)[1].startswith("summary.json cannot be read (UnicodeDecodeError: ")


@pytest.fixture
def suite(tmp_path):
    p = tmp_path / "tiny.toml"
    p.write_text(SUITE)
    return load_suite(p)


class _FakeChild:
    """Stands in for a run's process: writes the finished files at once (as a resume from a
    checkpoint of the last round does)."""

    started: list[str] = []

    def __init__(self, args, env=None, stdout=None, stderr=None):
        from pathlib import Path

        folder = Path(args[4])
        cfg = make_config(json.loads(Path(args[3]).read_text()))
        _FakeChild.started.append(folder.name)
        (folder / "config.json").write_text(cfg.to_json())
        (folder / "summary.json").write_text(_summary(cfg.name, cfg.rounds, val_acc=0.75))
        torch.save({"w": torch.ones(3)}, folder / "model.pt")

    def poll(self):
        return 0


def test_a_sweep_reruns_finished_runs_whose_files_are_damaged(tmp_path, suite, monkeypatch):
    results = tmp_path / "results"
    runs = {r.config.name: r.config for r in suite.runs("lite")}
    assert sorted(runs) == ["tiny-fedavg", "tiny-rlr"]
    _run(results, "tiny", "tiny-fedavg", cfg=runs["tiny-fedavg"], summary="[]")
    _run(results, "tiny", "tiny-rlr", cfg=runs["tiny-rlr"], model=False)
    monkeypatch.setattr(backends.subprocess, "Popen", _FakeChild)
    monkeypatch.setattr(sweep_mod.time, "sleep", lambda s: None)
    _FakeChild.started = []
    state = sweep_mod.sweep(suite, results, "lite", jobs=1)
    assert sorted(_FakeChild.started) == ["tiny-fedavg", "tiny-rlr"]
    assert (state.done, state.skipped, state.failed) == (2, 0, [])
    assert state.warnings == [
        "tiny-fedavg: summary.json holds a JSON list, not a run record; running it again (from its checkpoint if "
        "it has one)",
        "tiny-rlr: summary.json is there but model.pt is missing; running it again (from its checkpoint if it has "
        "one)"]
    assert {r["name"]: (r["status"], r["val_acc"]) for r in store.query(results)} == \
        {"tiny-fedavg": ("done", 0.75), "tiny-rlr": ("done", 0.75)}
    # now both are finished: a second sweep starts nothing and warns of nothing
    _FakeChild.started = []
    heard = []
    again = sweep_mod.sweep(suite, results, "lite", jobs=1, on_warning=heard.append)
    assert (_FakeChild.started, again.skipped, again.warnings, heard) == ([], 2, [], [])
    # the warnings go to on_warning as they come
    (results / "tiny" / "tiny-rlr" / "model.pt").write_bytes(b"")
    sweep_mod.sweep(suite, results, "lite", jobs=1, on_warning=heard.append)
    assert heard == ["tiny-rlr: model.pt is empty; running it again (from its checkpoint if it has one)"]


def test_a_sweep_over_a_damaged_store_stops_before_any_run(tmp_path, suite, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / store.DB_NAME).write_bytes(b"\x00garbage" * 100)
    monkeypatch.setattr(backends.subprocess, "Popen", _FakeChild)
    _FakeChild.started = []
    with pytest.raises(store.StoreError, match="rebuild it from the run folders"):
        sweep_mod.sweep(suite, results, "lite", jobs=1)
    assert _FakeChild.started == [] and sorted(p.name for p in results.iterdir()) == [store.DB_NAME]
    res, text = _cli("sweep", "table1-iid", "-r", results)
    _assert_one_clear_line(res, text, "is damaged (file is not a database); rebuild it from the run folders")


def test_a_finished_run_with_a_damaged_config_is_left_to_its_process(tmp_path, suite):
    cfg = suite.runs("lite")[0].config
    folder = _run(tmp_path, "tiny", cfg.name, cfg=cfg)
    heard = []
    assert sweep_mod._finished(folder, cfg, heard.append) is True
    (folder / "config.json").write_text("{")
    assert (sweep_mod._finished(folder, cfg, heard.append), heard) == (False, [])


def test_the_sweep_command_prints_each_warning(tmp_path, suite, monkeypatch):
    results = tmp_path / "results"
    runs = {r.config.name: r.config for r in suite.runs("lite")}
    _run(results, "tiny", "tiny-fedavg", cfg=runs["tiny-fedavg"], summary="[]")
    monkeypatch.setattr(backends.subprocess, "Popen", _FakeChild)
    monkeypatch.setattr(sweep_mod.time, "sleep", lambda s: None)
    res, text = _cli("sweep", tmp_path / "tiny.toml", "-r", results, "-j", "1")
    assert res.exit_code == 0, res.output
    assert "warning: tiny-fedavg: summary.json holds a JSON list, not a run record; running it again" in text
    assert "2 runs done" in text


def test_read_summary_refuses_a_summary_that_is_no_json_object(tmp_path):
    from robustlr.sim.records import RecordError, read_summary

    (tmp_path / "summary.json").write_text("[]")
    with pytest.raises(RecordError) as exc:  # the run's own process reads it too (was an AttributeError)
        read_summary(tmp_path / "summary.json")
    assert str(exc.value) == f"{tmp_path / 'summary.json'}: a JSON list, not a run record"


# -- a store another process holds ----------------------------------------------------------------

def test_a_store_locked_past_the_wait_is_one_clear_line(tmp_path, monkeypatch):
    import sqlite3

    results = tmp_path / "results"
    folder = _run(results, "tiny", "tiny-fedavg")
    store.record_run(results, folder, make_config({"name": "tiny-fedavg", "rounds": 3}), "done", "tiny")
    monkeypatch.setattr(store, "BUSY_SECONDS", 0.2)
    holder = sqlite3.connect(results / store.DB_NAME, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # e.g. a sqlite3 shell left in a transaction
    try:
        message = (f"the results store {results / store.DB_NAME} stayed locked by another process for 0.2 s "
                   "(database is locked): a sweep or a sqlite3 shell holds it open in a transaction; wait for "
                   "it to end (or close it), then run this again")
        for call in (lambda: store.query(results), lambda: store.check(results),
                     lambda: store.record_run(results, folder, make_config({"name": "tiny-fedavg"}), "done", "tiny")):
            with pytest.raises(store.StoreError) as info:
                call()
            assert str(info.value) == message
        res, text = _cli("runs", "-r", results)
        _assert_one_clear_line(res, text, "stayed locked by another process")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [r["name"] for r in store.query(results)] == ["tiny-fedavg"]  # free again, nothing lost
