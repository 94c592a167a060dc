"""The report and the TensorBoard export on the committed reproduction results (read only: no
training). Budget: a few seconds."""

import json
import shutil
from pathlib import Path

import pytest

from robustlr.experiments import store
from robustlr.reports.report import build_report
from robustlr.sim.records import read_metrics

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "reproduction" / "results"


@pytest.fixture
def results(tmp_path):
    out = tmp_path / "results"
    shutil.copytree(COMMITTED, out)
    return out


def test_tensorboard_events_hold_the_round_records(results, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from robustlr.reports.tensorboard import export_tensorboard

    rows = store.query(results)
    assert export_tensorboard(results, tmp_path / "tb") == len(rows)
    row = next(r for r in rows if r["name"] == "table1-iid-rlr_attack-seed=0")
    ea = EventAccumulator(str(tmp_path / "tb" / "table1-iid" / row["name"]))
    ea.Reload()
    recs = read_metrics(results / row["path"] / "metrics.jsonl")
    got = [(e.step, e.value) for e in ea.Scalars("accuracy/backdoor %")]
    assert got == [(r.round, pytest.approx(100 * r.backdoor_acc, rel=1e-6)) for r in recs if r.evaluated]
    assert [e.step for e in ea.Scalars("rlr/flipped %")] == [r.round for r in recs]
    assert json.loads(row["config"])["rlr_threshold"] == 4.0


def test_the_report_names_every_suite_table_and_image(results, tmp_path):
    md_path, html_path = build_report(results, tmp_path / "rep")
    md, page = md_path.read_text(), html_path.read_text()
    suites = sorted({r["suite"] for r in store.query(results)})
    assert suites and all(f"## {s}" in md for s in suites)
    images = [line[line.index("(") + 1:-1] for line in md.splitlines() if line.startswith("![")]
    assert images and all((tmp_path / "rep" / img).stat().st_size > 10_000 for img in images)
    assert page.count("data:image/png;base64,") == len(images)
    assert str(tmp_path) not in md  # no machine paths in a document meant to be committed


def test_a_run_folder_with_missing_or_damaged_records_is_named_not_fatal(results, tmp_path):
    from typer.testing import CliRunner

    from robustlr.cli import app

    rows = {r["name"]: r for r in store.query(results)}
    gone, bad = "table1-iid-rlr_attack-seed=0", "table1-iid-fedavg_attack-seed=0"
    (results / rows[gone]["path"] / "metrics.jsonl").unlink()
    (results / rows[bad]["path"] / "metrics.jsonl").write_text('{"round": 1, "trunc')
    res = CliRunner().invoke(app, ["report", str(results), "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    warnings = [line for line in " ".join(res.stderr.split()).split("warning: ") if line]
    assert len(warnings) == 2, res.stderr
    assert warnings[0].startswith(f"the curves leave out the run folder {rows[bad]['path']}: metrics.jsonl cannot "
                                  f"be read ({results / rows[bad]['path'] / 'metrics.jsonl'}:1: not a round record")
    assert warnings[1] == (f"the curves leave out the run folder {rows[gone]['path']}: metrics.jsonl is missing; its "
                           "final numbers are the store's (rerun it with `robustlr sweep`, or delete the folder and "
                           "rebuild the store)")
    md = (tmp_path / "rep" / "report.md").read_text()
    section = md.split("## Runs left out of the curves")[1].strip().splitlines()
    assert len(section) == 4 and section[3] == f"- {rows[gone]['path']}: metrics.jsonl is missing"
    assert section[2].startswith(f"- {rows[bad]['path']}: metrics.jsonl cannot be read (")
    assert " ".join(section[2].split())[2:] in warnings[0]  # the same words, on one line
    from robustlr.reports.tensorboard import export_tensorboard

    said: list[str] = []
    assert export_tensorboard(results, tmp_path / "tb", warn=said.append) == len(rows) - 2
    assert len(said) == 1 and said[0].startswith(f"TensorBoard leaves out the run folder {rows[bad]['path']}: "
                                                  "metrics.jsonl cannot be read (")
