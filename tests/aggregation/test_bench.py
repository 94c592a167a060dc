"""The benchmark runs on a tiny problem and prints a table."""

from robustlr.aggregation.bench import format_table, main, run_benchmark

RULES = {"FedAvg", "CoordinateMedian", "SignAggregation", "FoolsGold", "ClipAndNoise(FedAvg)", "RobustLR(FedAvg)"}


def test_run_benchmark_rows():
    rows = run_benchmark(n_agents_list=(3, 5), n_params=2000, repeats=1, threads=1)
    assert len(rows) == 2 * (len(RULES) + 1)
    assert {r["rule"] for r in rows} == RULES | {"mean(0) baseline"}
    for r in rows:
        assert r["seconds"] > 0 and r["ratio"] > 0 and r["n_params"] == 2000
        if r["rule"] == "mean(0) baseline":
            assert r["ratio"] == 1.0
    table = format_table(rows)
    assert "RobustLR(FedAvg)" in table and "x mean" in table


def test_main_prints_table(capsys):
    main(["--agents", "4", "--params", "1000", "--repeats", "1", "--rules", "FedAvg", "RobustLR(FedAvg)"])
    out = capsys.readouterr().out
    assert "RobustLR(FedAvg)" in out and "CoordinateMedian" not in out
