"""robustlr bench attacks: its rows on a tiny round (a code-path test; the numbers are the command's)."""

import pytest

from robustlr.bench.attacks import ATTACKS, format_table, run_benchmark
from robustlr.errors import ConfigError


def test_each_row_times_the_attack_beside_a_trojan_round():
    rows = run_benchmark("iid-fedavg", ["trojan", "min-max"], repeats=1, overrides={"train_limit": 200, "batch_size": 32})
    assert [r["attack"] for r in rows] == ["trojan", "min-max"]
    assert [r["corrupt"] for r in rows] == [1, 2]  # F 0.1 and 0.2 of 10 agents
    for r in rows:
        assert r["ratio"] == pytest.approx(r["seconds_per_round"] / r["trojan_seconds_per_round"])
        assert r["extra_seconds"] == pytest.approx(r["seconds_per_round"] - r["trojan_seconds_per_round"])
    table = format_table(rows)
    assert table.splitlines()[0].split()[:3] == ["attack", "corrupt", "s/round"] and "min-max" in table


def test_an_unknown_attack_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="choose from trojan, neurotoxin"):
        run_benchmark("iid-fedavg", ["a3fl"])
    assert "trojan" in ATTACKS
