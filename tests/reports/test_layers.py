"""`robustlr layers`: per-array means of the vote telemetry (exact on hand-made records), the figure,
and the refusal of runs without per-layer telemetry."""

import json

import pytest
from typer.testing import CliRunner

from robustlr.cli import app
from robustlr.reports.plots import layer_summary, plot_layers
from robustlr.sim.records import RoundRecord


def _rec(round_: int, flips: dict | None, per_layer: dict | None) -> RoundRecord:
    return RoundRecord(round=round_, agents=4, corrupt_in_round=1, flipped_per_layer=flips, per_layer=per_layer)


def _layer(h_agree, c_agree, h_norm, c_norm):
    return {"honest_agreement": h_agree, "corrupt_agreement": c_agree, "honest_norm": h_norm, "corrupt_norm": c_norm}


RECORDS = [
    _rec(1, {"conv.weight": 0.5, "fc.weight": 0.1}, {"conv.weight": _layer(0.6, 0.4, 2.0, 4.0),
                                                     "fc.weight": _layer(0.9, None, 1.0, 1.0),
                                                     "bn.running_var": _layer(0.5, 0.5, 0.2, 0.2)}),
    _rec(2, {"conv.weight": 0.7, "fc.weight": 0.3}, {"conv.weight": _layer(0.8, 0.2, 4.0, 8.0),
                                                     "fc.weight": _layer(0.7, 0.5, 3.0, 1.0),
                                                     "bn.running_var": _layer(0.5, 0.5, 0.2, 0.6)}),
]


def test_layer_summary_averages_each_array_over_the_rounds_that_recorded_it():
    s = layer_summary(RECORDS)
    assert list(s) == ["conv.weight", "fc.weight", "bn.running_var"]
    assert s["conv.weight"] == pytest.approx({"flipped": 0.6, "honest_agreement": 0.7, "corrupt_agreement": 0.3,
                                              "honest_norm": 3.0, "corrupt_norm": 6.0})
    assert s["fc.weight"]["corrupt_agreement"] == 0.5  # round 1 recorded None: only round 2 counts
    assert s["bn.running_var"]["flipped"] is None and s["bn.running_var"]["corrupt_norm"] == pytest.approx(0.4)


def test_the_figure_is_written_and_runs_without_telemetry_are_refused(tmp_path):
    path = plot_layers({"rlr": RECORDS, "fedavg": [_rec(1, None, RECORDS[0].per_layer)]}, tmp_path / "l.png")
    assert path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="telemetry_per_layer = true"):
        plot_layers({"fedavg": [_rec(1, None, None)]}, tmp_path / "none.png")


def test_the_command_prints_json_and_names_a_folder_without_records(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in RECORDS))
    res = CliRunner().invoke(app, ["layers", str(run), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["run"]["conv.weight"]["flipped"] == pytest.approx(0.6)
    res = CliRunner().invoke(app, ["layers", str(tmp_path)])
    assert res.exit_code != 0 and "holds no metrics.jsonl" in " ".join(res.output.split())
