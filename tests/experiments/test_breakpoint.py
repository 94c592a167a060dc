"""robustlr breakpoint: the bisection (hand-worked), the probes as stored sweep runs, resuming, and
bad input refused before any run."""

import json

import pytest

from robustlr.errors import ConfigError
from robustlr.experiments.breakpoint import BreakpointReport, Search, find_breakpoints
from robustlr.experiments.suite import load_suite


def _bisect(n, broken_from):
    """Run one Search against a step function: broken at every index >= broken_from."""
    s = Search("r", 0, n)
    order = []
    while not s.done:
        i = s.next_index
        order.append(i)
        s.observe(i, i >= broken_from)
    return s.index, order


@pytest.mark.parametrize("broken_from, want, probes", [
    (0, 0, [2, 1, 0]),        # broken everywhere: the first value
    (3, 3, [2, 4, 3]),
    (5, None, [2, 4]),        # held on the whole grid of 5 values
    (4, 4, [2, 4, 3]),
])
def test_bisection_finds_the_first_broken_value_in_log2_probes(broken_from, want, probes):
    index, order = _bisect(5, broken_from)
    assert (index, order) == (want, probes)


def test_every_position_on_a_grid_is_found_in_at_most_ceil_log2_n_plus_1_probes():
    for n in range(1, 10):
        for b in range(n + 1):
            index, order = _bisect(n, b)
            assert index == (b if b < n else None)
            assert len(order) <= (n).bit_length()


def test_a_search_of_other_rows_or_seeds_adds_to_the_stored_report_and_other_settings_replace_it():
    def rep(rows, level=0.5, seeds=(0,)):
        return BreakpointReport("s", "lite", "corrupt_fraction", [0.1, 0.2], "backdoor_acc", level, "above",
                                list(seeds), {r: [{"seed": s, "breakpoint": b, "probes": {}} for s in seeds]
                                              for r, b in rows.items()})

    old = rep({"rlr.trojan": 0.2, "comed.trojan": 0.1})
    new = rep({"comed.trojan": None, "flame.trojan": 0.2})
    merged = new.merged_into(old)
    assert list(merged.rows) == ["rlr.trojan", "comed.trojan", "flame.trojan"]
    assert merged.breakpoints("comed.trojan") == [None]  # the new search's answer wins
    assert merged.breakpoints("rlr.trojan") == [0.2]
    assert merged.seeds == [0]
    assert rep({"flame.trojan": 0.2}, level=0.9).merged_into(old).rows.keys() == {"flame.trojan"}
    # seeds 1 and 2 of one row join seed 0's entries, in seed order; the other row keeps its seed 0
    more = rep({"rlr.trojan": None}, seeds=(2, 1)).merged_into(old)
    assert more.seeds == [0, 1, 2]
    assert [e["seed"] for e in more.rows["rlr.trojan"]] == [0, 1, 2]
    assert more.breakpoints("rlr.trojan") == [0.2, None, None]
    assert more.breakpoints("comed.trojan") == [0.1]
    assert more.by_seed("rlr.trojan") == {0: 0.2, 1: None, 2: None} and more.by_seed("comed.trojan") == {0: 0.1}
    # a seed searched again takes the new answer
    again = rep({"rlr.trojan": 0.1}, seeds=(0, 1)).merged_into(more)
    assert again.breakpoints("rlr.trojan") == [0.1, 0.1, None]


def test_the_report_summarises_the_seeds_spread():
    rep = BreakpointReport("s", "lite", "corrupt_fraction", [0.1, 0.2, 0.3], "backdoor_acc", 0.5, "above", [0, 1, 2],
                           {"rlr.trojan": [{"seed": 0, "breakpoint": 0.2, "probes": {}},
                                           {"seed": 1, "breakpoint": 0.3, "probes": {}},
                                           {"seed": 2, "breakpoint": None, "probes": {}}],
                            "fedavg.trojan": [{"seed": s, "breakpoint": 0.1, "probes": {}} for s in range(3)],
                            "flame.trojan": [{"seed": s, "breakpoint": None, "probes": {}} for s in range(3)]})
    assert rep.summary("rlr.trojan") == "0.25 +- 0.071 (1 of 3 held)"
    assert rep.summary("fedavg.trojan") == "0.1 +- 0"
    assert rep.summary("flame.trojan") == "> 0.3"


def test_a_search_runs_its_probes_as_stored_suite_runs_and_resumes(tmp_path, suite_file, fmnist_dir):
    suite = load_suite(suite_file)
    out = tmp_path / "results"
    # level 0: every probe is broken (any accuracy >= 0), so the search walks down to the first value
    rep = find_breakpoints(suite, out, "corrupt_fraction", [0.1, 0.2, 0.3], seeds=[0], level=0.0, metric="val_acc",
                           rows=["rlr"], jobs=2, data_dir=str(fmnist_dir))
    assert rep.rows["rlr"][0]["breakpoint"] == 0.1
    assert list(rep.rows["rlr"][0]["probes"]) == ["0.1", "0.2"]  # index 1 first, then 0
    names = sorted(p.name for p in (out / "tiny").iterdir() if p.is_dir())
    assert names == ["tiny-rlr-corrupt_fraction=0.1-seed=0", "tiny-rlr-corrupt_fraction=0.2-seed=0"]
    stored = json.loads((out / "tiny" / "breakpoints-corrupt_fraction.json").read_text())
    assert stored["rows"]["rlr"][0]["breakpoint"] == 0.1
    from robustlr.experiments import store

    rows = store.query(out)
    assert sorted(r["label"] for r in rows) == ["rlr corrupt_fraction=0.1", "rlr corrupt_fraction=0.2"]
    # the same search again runs nothing: every probe is read back (a level no run can reach: held everywhere,
    # which needs the 0.3 probe the first search did not run)
    steps = []
    again = find_breakpoints(suite, out, "corrupt_fraction", [0.1, 0.2, 0.3], seeds=[0], level=1.0, metric="val_acc",
                             rows=["rlr"], jobs=2, data_dir=str(fmnist_dir), on_step=lambda i, runs: steps.append(
                                 [r.config.name for r in runs]))
    assert again.rows["rlr"][0]["breakpoint"] is None
    assert steps == [["tiny-rlr-corrupt_fraction=0.2-seed=0"], ["tiny-rlr-corrupt_fraction=0.3-seed=0"]]
    assert len(store.query(out)) == 3


@pytest.mark.parametrize("kw, message", [
    ({"metric": "loss"}, "choose one of"),
    ({"level": 50}, "shares in"),
    ({"values": [0.3, 0.1]}, "increasing order"),
    ({"key": "seed"}, "seeds are given with --seeds"),
    ({"rows": ["nope"]}, "has no row 'nope'"),
    ({"values": [0.01, 0.2]}, "corrupt_fraction = 0.01"),  # no corrupt agent of the suite's 10
    ({"direction": "sideways"}, "--direction"),
])
def test_bad_searches_are_refused_before_any_run(tmp_path, suite_file, kw, message):
    suite = load_suite(suite_file)
    args = {"key": "corrupt_fraction", "values": [0.1, 0.2], "seeds": [0], **kw}
    with pytest.raises(ConfigError, match=message):
        find_breakpoints(suite, tmp_path / "r", **args)
    assert not (tmp_path / "r").exists()


def test_a_row_that_pins_the_key_cannot_be_searched(tmp_path):
    p = tmp_path / "pinned.toml"
    p.write_text('name = "pinned"\npreset = "demo-iid"\n[budget.lite]\nrounds = 2\n[[row]]\nlabel = "a"\n'
                 'corrupt_fraction = 0.2\n')
    with pytest.raises(ConfigError, match="set corrupt_fraction themselves"):
        find_breakpoints(load_suite(p), tmp_path / "r", values=[0.1, 0.2], seeds=[0])


def test_the_heatmap_draws_a_cell_per_defense_and_attack(tmp_path):
    import matplotlib.image

    from robustlr.reports.plots import plot_breakpoints

    rep = BreakpointReport("s", "lite", "corrupt_fraction", [0.1, 0.2, 0.3], "backdoor_acc", 0.5, "above", [0, 1],
                           {"rlr.trojan": [{"seed": 0, "breakpoint": 0.2, "probes": {}},
                                           {"seed": 1, "breakpoint": None, "probes": {}}],
                            "fedavg.trojan": [{"seed": s, "breakpoint": 0.1, "probes": {}} for s in range(2)],
                            "fedavg.boost": [{"seed": s, "breakpoint": 0.1, "probes": {}} for s in range(2)]})
    img = matplotlib.image.imread(plot_breakpoints(rep, tmp_path / "bp.png"))
    assert img.shape[:2] == (360, 650)  # 6.5 x (0.7 x 2 defenses + 2.2) inches at 100 dpi
