"""Non-iid (Federated EMNIST) code paths: the paper's presets, the missing-file error, the
per-round count of corrupt agents without base-class samples, and the scale benchmark on a
tiny synthetic file. Science (does RLR stop the backdoor) is in tests/science/test_table1.py."""

import json
import resource
import sys

import pytest

from robustlr.sim.config import load_config, make_config
from robustlr.reports.demo import demo_configs
from robustlr.sim.federation import build_federation, load_dataset
from robustlr.sim.loop import Simulation


@pytest.mark.parametrize("kind, corrupt, theta", [("fedavg", 0.1, 0), ("rlr", 0.1, 7), ("clean", 0.0, 0)])
def test_paper_presets_are_the_papers_noniid_setting(kind, corrupt, theta):
    cfg = load_config(f"noniid-paper-{kind}")
    assert cfg.dataset == "femnist-tff" and cfg.digits_only and cfg.partition == "natural"
    assert [s.rsplit("/", 1)[-1] for s in cfg.data_sources] == [
        "fed_emnist_digitsonly_train.h5", "fed_emnist_digitsonly_test.h5"]
    assert (cfg.num_agents, cfg.rounds, cfg.participation, cfg.local_epochs, cfg.batch_size) == (3383, 500, 0.01, 10, 64)
    assert cfg.agents_per_round(3383) == 33  # floor(C*K), as the authors sample
    assert (cfg.corrupt_fraction, cfg.poison_fraction, cfg.rlr_threshold) == (corrupt, 0.5, theta)
    assert (cfg.base_class, cfg.target_class, cfg.trojan, cfg.attack, cfg.aggregator) == (1, 7, "plus", "trojan", "fedavg")
    assert cfg.eval_every == 5


def test_demo_noniid_runs_the_three_runs_on_leaf_data():
    cfgs = demo_configs("noniid")
    assert set(cfgs) == {"fedavg_clean", "fedavg_attack", "rlr_attack"}
    assert all(c.dataset == "femnist-leaf" and c.partition == "natural" and c.num_agents == 293 for c in cfgs.values())
    assert cfgs["fedavg_clean"].corrupt_fraction == 0 and cfgs["fedavg_attack"].rlr_threshold == 0
    assert cfgs["rlr_attack"].rlr_threshold > 0 and (cfgs["rlr_attack"].base_class, cfgs["rlr_attack"].target_class) == (1, 7)


def test_missing_tff_file_says_where_it_looked_and_how_to_get_it(tmp_path):
    cfg = load_config("noniid-paper-rlr")
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(cfg, tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "femnist-tff" / "fed_emnist_digitsonly_train.h5") in msg
    assert "fed_emnist_digitsonly.tar.bz2" in msg and "--data-dir" in msg
    # an absolute path that does not exist: the same kind of message, not an h5py error
    cfg = cfg.model_copy(update={"data_sources": [str(tmp_path / "a.h5"), str(tmp_path / "b.h5")]})
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        load_dataset(cfg, tmp_path)
    assert "fed_emnist_digitsonly.tar.bz2" in str(err.value)


def test_paper_preset_runs_a_round_on_a_tiny_tff_layout_file(tmp_path):
    from robustlr.data.femnist import make_synthetic_tff_emnist

    (tmp_path / "femnist-tff").mkdir()
    make_synthetic_tff_emnist(tmp_path / "femnist-tff" / "fed_emnist_digitsonly_train.h5", 12, 8, seed=1)
    make_synthetic_tff_emnist(tmp_path / "femnist-tff" / "fed_emnist_digitsonly_test.h5", 12, 3, seed=2)
    cfg = load_config("noniid-paper-rlr", ["num_agents=12", "participation=0.5", "rlr_threshold=2", "rounds=1",
                                           "local_epochs=1", "threads=1"])
    ds = load_dataset(cfg, tmp_path)
    fed = build_federation(cfg, ds)
    assert fed.num_agents == 12 and len(fed.corrupt) == 1
    rec = Simulation(cfg, fed).run_round(1)
    assert rec.agents == 6 and 0 <= rec.backdoor_acc <= 1 and rec.threshold == 2


def test_corrupt_without_base_in_round_counts_corrupt_agents_lacking_the_base_class(tiny):
    ds = tiny(n_train=200)
    # one class per agent: most corrupt agents hold no base-class (5) sample at all
    cfg = make_config({"dataset": "fashion-mnist", "partition": "shards", "classes_per_client": 1, "num_agents": 10,
                       "corrupt_fraction": 0.9, "base_class": 5, "target_class": 7, "rounds": 2,
                       "local_epochs": 1, "batch_size": 16, "eval_every": 1, "train_mode": "sequential"})
    fed = build_federation(cfg, ds)
    labels = ds.train_y.numpy()
    without = [int(a) for a in fed.corrupt if not (labels[fed.agent_indices[a]] == 5).any()]
    assert 0 < len(without) < len(fed.corrupt)
    assert all(fed.poisoned_per_agent[a] == 0 for a in without)
    rec = Simulation(cfg, fed).run_round(1)
    assert rec.corrupt_in_round == 9
    assert rec.corrupt_without_base_in_round == len(without)
    assert rec.corrupt_unpoisoned_in_round == sum(1 for a in fed.corrupt if fed.poisoned_per_agent[int(a)] == 0)
    # agents sampled per round: only those in the round are counted
    cfg2 = cfg.model_copy(update={"participation": 0.3})
    rec2 = Simulation(cfg2, fed).run_round(1)
    assert rec2.corrupt_without_base_in_round <= rec2.corrupt_in_round <= 3 and rec2.agents == 3


def _getrusage_peak_mib() -> float:
    """ru_maxrss in MiB, read here (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _proc_status_mib(field: str) -> float:
    """A memory field of /proc/self/status (the kernel's own accounting, not getrusage), in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise AssertionError(f"no {field} in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_rss_is_in_mib_and_sees_an_allocation():
    import numpy as np

    from robustlr.bench.scale import peak_rss_mb

    # the same quantity as the kernel's high-water mark of resident memory, VmHWM: in MiB (a unit
    # off by 1024, KiB or bytes taken for MiB, would miss by far); a few MiB of slack for the
    # kernel's batched page counters
    assert peak_rss_mb() == pytest.approx(_proc_status_mib("VmHWM"), abs=4)
    block = np.ones(96 * 2**20, dtype=np.uint8)  # 96 MiB, every page written
    assert int(block[::4096].sum()) == 96 * 2**20 // 4096
    resident = _proc_status_mib("VmRSS")
    assert resident > 96  # the block is resident now
    assert peak_rss_mb() >= resident - 4  # so the peak covers it
    assert peak_rss_mb() == pytest.approx(_proc_status_mib("VmHWM"), abs=4)
    del block


def test_bench_scale_runs_on_a_tiny_synthetic_file(tmp_path):
    from robustlr.bench.scale import format_scale_bench, run_scale_bench

    peak_before = _getrusage_peak_mib()
    res = run_scale_bench(writers=20, samples=10, test_samples=3, rounds=2, participation=0.2, rlr_threshold=2,
                          threads=1, data_folder=tmp_path)
    assert res["setting"]["writers"] == 20 and res["setting"]["agents_per_round"] == 4
    assert res["setting"]["train_samples"] == 200 and res["setting"]["test_samples"] == 60
    assert [r["round"] for r in res["rounds"]] == [1, 2]
    assert all(r["agents"] == 4 and r["seconds"] >= r["seconds_training"] > 0 for r in res["rounds"])
    assert 0 < res["overhead_share"] < 1 and res["overhead_share_at_paper_epochs"] < res["overhead_share"]
    peak_after = _getrusage_peak_mib()
    # the peak resident size after each documented stage: the process's ru_maxrss, which never
    # decreases, so the stages are bracketed by getrusage read here before and after the call
    stages = res["peak_rss_mb_by_stage"]
    assert list(stages) == ["start", "after writing the files", "after loading", "after building the federation",
                            "after setting up the simulation", "after the rounds", "after one evaluation"]
    values = list(stages.values())
    assert peak_before <= values[0] and values == sorted(values) and values[-1] <= peak_after
    assert res["peak_rss_mb"] == values[-1]
    assert res["seconds_evaluation"] is not None
    assert "SYNTHETIC" in res["setting"]["data_source"]
    text = format_scale_bench(res)
    assert "peak memory" in text and "overhead outside local training" in text
    # the files are kept and reused
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic-tff-emnist-20w-10-train.h5",
                                                         "synthetic-tff-emnist-20w-3-test.h5"]
    again = run_scale_bench(writers=20, samples=10, test_samples=3, rounds=1, participation=0.2, rlr_threshold=2,
                            threads=1, data_folder=tmp_path, evaluate_once=False)
    assert again["seconds_write_files"] == 0.0 and again["seconds_evaluation"] is None
    assert list(again["peak_rss_mb_by_stage"]) == ["start", "after finding the files", "after loading",
                                                   "after building the federation", "after setting up the simulation",
                                                   "after the rounds"]


def test_bench_scale_cli(tmp_path):
    from typer.testing import CliRunner

    from robustlr.cli import app

    res = CliRunner().invoke(app, ["bench", "scale", "--writers", "12", "--samples", "6", "--test-samples", "2",
                                   "--rounds", "1", "--participation", "0.25", "--theta", "2", "--threads", "1",
                                   "--keep-data", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert (out["setting"]["writers"], out["setting"]["agents_per_round"], out["setting"]["rlr_threshold"]) == (12, 3, 2)
    assert [r["round"] for r in out["rounds"]] == [1] and 0 < out["overhead_share"] < 1
