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


def test_the_figure_draws_the_records_values_and_runs_without_telemetry_are_refused(tmp_path, monkeypatch):
    import numpy as np

    from robustlr.reports import plots

    drawn = []
    save = plots._save

    def keep(plt, fig, path, title="", dpi=100):  # read the panels (row-major; colour bars come after them)
        for ax in fig.axes[:6]:
            drawn.append({"image": ax.images[0].get_array().filled(np.nan) if ax.images else None,
                          "lines": [np.asarray(line.get_xdata(), float) for line in ax.lines],
                          "bars": [b.get_width() for b in ax.patches], "texts": [t.get_text() for t in ax.texts]})
        return save(plt, fig, path, title, dpi)

    monkeypatch.setattr(plots, "_save", keep)
    path = plot_layers({"rlr": RECORDS, "fedavg": [_rec(1, None, RECORDS[0].per_layer)]}, tmp_path / "l.png")
    assert path.stat().st_size > 10_000 and len(drawn) == 6  # flips, agreement, norms x the two runs
    (flips_rlr, flips_fedavg), (agree_rlr, _), (norms_rlr, norms_fedavg) = zip(drawn[::2], drawn[1::2])
    np.testing.assert_allclose(flips_rlr["image"], [[0.5, 0.7], [0.1, 0.3]])  # arrays x rounds
    assert flips_fedavg["image"] is None and flips_fedavg["texts"] == ["no RLR in this run"]
    honest, corrupt, flipped = agree_rlr["lines"][:3]
    np.testing.assert_allclose(honest, [0.7, 0.8, 0.5])  # mean over rounds, per array
    np.testing.assert_allclose(corrupt, [0.3, 0.5, 0.5])
    np.testing.assert_allclose(flipped, [0.6, 0.2, np.nan])  # running_var is outside the vote
    np.testing.assert_allclose(norms_rlr["bars"], [2.0, 0.5, 2.0])  # corrupt / honest mean norm per array
    np.testing.assert_allclose(norms_fedavg["bars"], [2.0, 1.0, 1.0])
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
