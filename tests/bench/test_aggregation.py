"""`robustlr bench aggregation`: the rows it promises, the filter, and its errors."""

import json

import pytest
from typer.testing import CliRunner

from robustlr.bench.aggregation import format_table, run_benchmark
from robustlr.cli import app

RULES = ["FedAvg", "CoordinateMedian", "SignAggregation", "FoolsGold", "ClipAndNoise(FedAvg)", "RobustLR(FedAvg)",
         "RobustLR(FedAvg, soft)", "RobustLR(FedAvg, max_flip 0.25)", "TrimmedMean"]


def _clustering() -> list[str]:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return []
    return ["Flame", "SignGuard", "FreqFed"]


def test_one_row_per_agent_count_and_rule_and_a_baseline_of_ratio_one():
    rows = run_benchmark(n_agents_list=(3, 5, 7), n_params=2000, repeats=1, threads=1)
    # f = 1: multi-Krum from n = 5 (n > 2f + 2), Bulyan from n = 7 (n >= 4f + 3)
    expected = {3: [*RULES, "RFA", "FLTrust", "FLDetector"], 5: [*RULES, "MultiKrum", "RFA", "FLTrust", "FLDetector"],
                7: [*RULES, "MultiKrum", "Bulyan", "RFA", "FLTrust", "FLDetector"]}
    assert [(r["n_agents"], r["rule"]) for r in rows] == [
        (n, rule) for n in (3, 5, 7) for rule in ["mean(0) baseline", *expected[n], *_clustering()]]
    assert all(r["n_params"] == 2000 and r["threads"] == 1 for r in rows)
    assert [r["ratio"] for r in rows if r["rule"] == "mean(0) baseline"] == [1.0, 1.0, 1.0]
    table = format_table(rows)
    assert table.count("RobustLR(FedAvg)") == 3 and "x mean" in table


def test_a_model_sets_the_size_and_gives_rlrs_variants_its_layout():
    from robustlr.aggregation import ParamLayout
    from robustlr.models import build_model

    rows = run_benchmark(n_agents_list=(4,), n_params=7, repeats=1, threads=1, model="resnet20-bn",
                         rules=["RobustLR(FedAvg)", "RobustLR(FedAvg, weights)", "RobustLR(FedAvg, max_flip 0.25)"])
    numel = ParamLayout.from_module(build_model("resnet20-bn")).numel
    assert numel > 269_722  # the parameters and the batch-norm buffers
    assert [(r["rule"], r["n_params"]) for r in rows] == [
        ("mean(0) baseline", numel), ("RobustLR(FedAvg)", numel), ("RobustLR(FedAvg, max_flip 0.25)", numel),
        ("RobustLR(FedAvg, weights)", numel)]
    with pytest.raises(ValueError, match=r"unknown model 'resnet20' \(did you mean 'resnet20-[bg]n'\?\) for --model"):
        run_benchmark(n_agents_list=(4,), repeats=1, model="resnet20")


def test_unknown_rule_is_refused_and_names_match_in_any_case():
    with pytest.raises(ValueError, match=r"unknown rule 'Krum' \(did you mean 'MultiKrum'\?\) for --rule; "
                                         r"choose from FedAvg, CoordinateMedian"):
        run_benchmark(n_agents_list=(5,), n_params=100, repeats=1, rules=["Krum"])
    rows = run_benchmark(n_agents_list=(3,), n_params=100, repeats=1, rules=["fedavg", "ROBUSTLR(FEDAVG)"])
    assert [r["rule"] for r in rows] == ["mean(0) baseline", "FedAvg", "RobustLR(FedAvg)"]


def test_command_filters_rules_and_prints_json():
    res = CliRunner().invoke(app, ["bench", "aggregation", "--agents", "4", "--params", "1000", "--repeats", "1",
                                   "--rule", "FedAvg", "--rule", "RobustLR(FedAvg)", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["rule"] for r in rows] == ["mean(0) baseline", "FedAvg", "RobustLR(FedAvg)"]
