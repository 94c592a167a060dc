"""`robustlr bench` runs end to end on a small problem and reports the documented ratios."""

import json

from typer.testing import CliRunner

from robustlr.cli import app


def test_bench_json_has_the_documented_keys():
    res = CliRunner().invoke(app, ["bench", "--json", "--steps", "1", "--repeats", "1", "--agents", "2"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    for key in ("speedup_vs_naive", "speedup_vs_sequential", "floor_fraction", "aggregation_share"):
        assert out[key] > 0, key
    assert {"processes", "sequential", "naive"} <= set(out["samples_per_s"])
    assert out["fastest_fp32_engine"] in out["samples_per_s"]
