"""The defense x attack tables of a pivot suite (adversaries-*): exact cells from store rows."""

import pytest

from robustlr.errors import ConfigError
from robustlr.experiments.suite import load_suite
from robustlr.reports.report import pivot_tables


def _row(label, bd, val, status="done"):
    return {"label": label, "status": status, "backdoor_acc": bd, "val_acc": val}


def test_pivot_cells_are_means_over_seeds_in_the_suite_order():
    rows = [_row("fedavg.trojan", 0.9, 0.8), _row("fedavg.trojan", 0.7, 0.82), _row("rlr.trojan", 0.05, 0.8),
            _row("rlr.boost", 0.1, 0.79), _row("rlr.boost", 0.99, 0.1, status="failed")]
    defenses, attacks, tables = pivot_tables(rows, ["fedavg.trojan", "rlr.trojan", "fedavg.boost", "rlr.boost"])
    assert (defenses, attacks) == (["fedavg", "rlr"], ["trojan", "boost"])
    (bd_name, header, bd), (val_name, _, val) = tables
    assert bd_name == "backdoor %" and val_name == "validation %" and header == ["defense \\ attack", "trojan", "boost"]
    # fedavg.trojan: mean 80.0, sd of (90, 70) = 14.1; fedavg.boost not run; the failed rlr.boost run is left out
    assert bd == [["fedavg", "80.0 +- 14.1", "-"], ["rlr", "5.0", "10.0"]]
    assert val == [["fedavg", "81.0 +- 1.4", "-"], ["rlr", "80.0", "79.0"]]


def test_shipped_pivot_suites_have_defense_dot_attack_labels(tmp_path):
    for name in ("adversaries-iid", "adversaries-noniid"):
        suite = load_suite(name)
        assert suite.pivot and all(r["label"].count(".") == 1 for r in suite.rows)
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\npreset = "iid-fedavg"\npivot = true\n[[row]]\nlabel = "fedavg"\n')
    with pytest.raises(ConfigError, match="every row label is <defense>.<attack>"):
        load_suite(bad)


def test_pivot_cells_mark_the_seeds_that_collapsed_to_chance():
    rows = [{**_row("rlr.scale", 0.1, 0.1), "collapsed": 1}, {**_row("rlr.scale", 0.2, 0.8), "collapsed": 0},
            {**_row("fedavg.scale", 0.9, 0.12), "collapsed": 1}, _row("rlr.trojan", 0.05, 0.8)]  # no flag: old row
    _, _, ((_, _, bd), (_, _, val)) = pivot_tables(rows, ["fedavg.scale", "rlr.scale", "rlr.trojan"])
    assert bd == [["fedavg", "90.0 (collapsed 1/1)", "-"], ["rlr", "15.0 +- 7.1 (collapsed 1/2)", "5.0"]]
    assert val[1] == ["rlr", "45.0 +- 49.5 (collapsed 1/2)", "80.0"]


def test_the_suite_table_notes_how_many_seeds_collapsed():
    from robustlr.reports.report import suite_table

    extra = {"config": "{}", "rlr_switch_round": None}
    rows = [{**_row("rlr_attack", 0.1, 0.1), "collapsed": 1, "base_acc": 0.1, **extra},
            {**_row("rlr_attack", 0.0, 0.9), "collapsed": 0, "base_acc": 0.9, **extra}]
    header, lines = suite_table(rows, "no-such-setting")
    assert [line[header.index("note")] for line in lines] == ["collapsed in 1 of 2 seeds"]
