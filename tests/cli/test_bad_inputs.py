"""Bad input, tried as a demanding user would: each gets one clear line naming the problem and
the fix (exit code 2, no traceback), before any work starts. docs/how-to/runs.md's "bad input"
paragraph points here; the count of this table is in the project's notes.

Each row: a name, a setup (what files to create in a temporary folder; ``{tmp}`` and
``{data}`` in the arguments are replaced), the command's arguments, and a fragment the
message must contain.
"""

import gzip
import json

import pytest
from typer.testing import CliRunner

from robustlr.cli import app

SET = "--set"
CONFIG = ["config", "iid-rlr"]


def _files(tmp, data):
    """Files some rows need."""
    (tmp / "latin1.toml").write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    (tmp / "broken.toml").write_text("rounds = = 3\n")
    (tmp / "ext-unknown.toml").write_text('extends = "no-such-preset"\n')
    (tmp / "ext-number.toml").write_text("extends = 3\n")
    (tmp / "a-file").write_text("not a folder")
    (tmp / "lockdir" / ".robustlr.lock").mkdir(parents=True)  # a folder where the run's lock file goes
    # results stores: one that is not SQLite, one emptied beside a run folder
    (tmp / "bad-store").mkdir()
    (tmp / "bad-store" / "results.sqlite").write_bytes(b"not a database " * 100)
    (tmp / "empty-store" / "s" / "a").mkdir(parents=True)
    (tmp / "empty-store" / "results.sqlite").write_bytes(b"")
    from robustlr.sim.config import load_config

    (tmp / "empty-store" / "s" / "a" / "config.json").write_text(load_config("demo-iid", ["train_limit=300"]).to_json())
    (tmp / "ext-typo.toml").write_text('extends = "iid-rrl"\n')
    # a run folder with a truncated config.json, and one with a damaged checkpoint
    (tmp / "truncated").mkdir()
    (tmp / "truncated" / "config.json").write_text('{"name": "demo-iid", "rou')
    # LEAF shards: one that is not gzip at all, one truncated
    (tmp / "leaf-bad" / "train").mkdir(parents=True)
    (tmp / "leaf-bad" / "train" / "all_data_0.json.gz").write_bytes(b"this is not gzip")
    (tmp / "leaf-trunc" / "train").mkdir(parents=True)
    full = gzip.compress(json.dumps({"users": ["w"], "num_samples": [1],
                                     "user_data": {"w": {"x": [[0.0] * 784], "y": [1]}}}).encode())
    (tmp / "leaf-trunc" / "train" / "all_data_0.json.gz").write_bytes(full[: len(full) // 2])
    (tmp / "not-h5").write_text("not hdf5")
    # extends: out of the file's folder, a missing file, a cycle (issue 25 item 5)
    (tmp / "cfgs").mkdir()
    (tmp / "outside.toml").write_text("rounds = 3\n")
    (tmp / "cfgs" / "ext-dots.toml").write_text('extends = "../../x"\n')
    (tmp / "cfgs" / "ext-up.toml").write_text('extends = "../outside.toml"\n')
    (tmp / "cfgs" / "ext-abs.toml").write_text(f'extends = "{tmp / "outside.toml"}"\n')
    (tmp / "cfgs" / "ext-missing.toml").write_text('extends = "missing.toml"\n')
    (tmp / "cfgs" / "cyc.toml").write_text('extends = "cyc.toml"\n')
    # a run folder of the same config whose checkpoint is damaged
    from robustlr.sim.config import load_config

    (tmp / "damaged").mkdir()
    (tmp / "damaged" / "config.json").write_text(load_config("demo-iid", ["train_limit=300"]).to_json())
    (tmp / "damaged" / "checkpoint.pt").write_bytes(b"PK\x03\x04 half a zip")


ROWS = [
    # config values
    ("rounds 0", CONFIG + [SET, "rounds=0"], "rounds"),
    ("typo in a key", CONFIG + [SET, "roudns=3"], "did you mean 'rounds'"),
    ("theta above the round", CONFIG + [SET, "rlr_threshold=11"], "exceeds the 10 agents in a round"),
    ("fractional theta above 1", CONFIG + [SET, "rlr_threshold=2.5"], "integer count"),
    ("base = target", CONFIG + [SET, "base_class=7"], "base_class and target_class are both 7"),
    ("class out of range", CONFIG + [SET, "target_class=12"], "has 10 classes"),
    ("noise without clipping", CONFIG + [SET, "noise_sigma=0.001"], "needs clip_norm > 0"),
    ("unknown aggregator", CONFIG + [SET, "aggregator=median"], "aggregator"),
    ("bool for rounds", CONFIG + [SET, "rounds=true"], "rounds=True: a bool"),
    ("bool for theta", CONFIG + [SET, "rlr_threshold=true"], "rlr_threshold=True: a bool"),
    ("bool for participation", CONFIG + [SET, "participation=true"], "participation=True: a bool"),
    ("infinite server_lr", CONFIG + [SET, "server_lr=inf"], "server_lr"),
    ("infinite client_lr", CONFIG + [SET, "client_lr=inf"], "client_lr"),
    ("nan client_lr", CONFIG + [SET, "client_lr=nan"], "client_lr"),
    ("device gpu", CONFIG + [SET, "device=gpu"], "device"),
    ("an attack with 0 corrupt agents", CONFIG + [SET, "num_agents=4"], "0 corrupt agents"),
    ("a name that escapes runs/", CONFIG + [SET, "name='../../x'"], "name"),
    ("seed beyond 2**32", CONFIG + [SET, "seed=4294967296"], "seed"),
    ("negative seed", CONFIG + [SET, "seed=-1"], "seed"),
    ("unknown dataset", CONFIG + [SET, "dataset=mnist"], "dataset"),
    ("model of another shape", CONFIG + [SET, "model=cifar-cnn"], "does not fit fashion-mnist"),
    ("natural partition without writers", CONFIG + [SET, "partition=natural"], "needs a dataset with writers"),
    ("trojan value out of range", CONFIG + [SET, "trojan_value=300"], "not a pixel value"),
    ("sign vote on batch norm", ["config", "cifar-dba-paper-rlr", SET, "model=cifar-cnn-bn", SET, "aggregator=sign",
                                 SET, "buffer_aggregation=rule"], "batch-norm running statistics"),
    ("participation 0", CONFIG + [SET, "participation=0"], "participation"),
    ("everyone corrupt", CONFIG + [SET, "corrupt_fraction=1.0"], "corrupt_fraction"),
    ("override without =", CONFIG + [SET, "rounds"], "is not key=value"),
    # ranges and contradictions refused before any work (issue 25 item 5)
    ("dba in more parts than the trojan's pixels", CONFIG + [SET, "attack=dba", SET, "dba_parts=50"],
     "dba_parts=50: must be an integer in 1..9 (the plus trojan's pixels)"),
    ("huge server_lr", CONFIG + [SET, "server_lr=1e38"], "server_lr=1e+38 is outside (0, 1000]"),
    ("huge boost_factor", CONFIG + [SET, "boost_factor=1e37"], "boost_factor=1e+37 is outside (0, 10000]"),
    ("trojan off the image", CONFIG + [SET, "trojan_position='99,99'"],
     "trojan_position='99,99': a trojan of 5x5 pixels placed at row 99, column 99 does not fit a 28x28 image"),
    ("train_limit above the dataset", CONFIG + [SET, "train_limit=10000000"],
     "train_limit=10000000 exceeds the 60000 training images of fashion-mnist"),
    ("train_limit with writers", ["config", "noniid-paper-rlr", SET, "train_limit=1000"],
     "train_limit cannot be combined with partition = 'natural'"),
    ("more classes per agent than classes", CONFIG + [SET, "partition=shards", SET, "classes_per_client=100"],
     "classes_per_client=100 exceeds the 10 classes of fashion-mnist: use 1..10"),
    ("RLR from after the last round", CONFIG + [SET, "rlr_from_round=201"],
     "rlr_from_round=201 is after the last round (200): RLR would never switch on"),
    ("trojan_value with label-flip", CONFIG + [SET, "attack='label-flip'", SET, "trojan_value=3"],
     "leave trojan, trojan_position and trojan_value unset"),
    ("more agents than images", CONFIG + [SET, "num_agents=100", SET, "train_limit=50"],
     "num_agents=100 exceeds the 50 training images (train_limit)"),
    ("more shards than images", CONFIG + [SET, "partition=shards", SET, "classes_per_client=10", SET, "train_limit=60"],
     "num_agents x classes_per_client = 100 shards exceed the 60 training images"),
    ("TFF with one file", ["config", "noniid-paper-rlr", SET, "data_sources=['a.h5']"],
     "dataset femnist-tff needs data_sources = [train.h5, test.h5], got 1 files"),
    ("vectorized batch norm", ["config", "cifar-paper-rlr", SET, "model=cifar-cnn-bn", SET, "train_mode=vectorized"],
     "the vectorized engine does not support batch-norm models"),
    ("worker processes on cuda", CONFIG + [SET, "train_mode=processes", SET, "device=cuda"],
     "train_mode 'processes' runs on the CPU, not on cuda"),
    # `robustlr config` refuses what `robustlr run` refuses before loading data (issue 25 item 5)
    ("config: a cuda device that is not there", CONFIG + [SET, "device='cuda:99'"],
     "device='cuda:99' but this machine has"),
    ("config: init_model missing", CONFIG + [SET, "init_model='{tmp}/nofile.pt'"], "no such file or folder"),
    ("config: pretrained model of another dataset", CONFIG + [SET, "init_model='pretrained:cifar-pretrain'"],
     "trains cifar-cnn on cifar10, but this run is mnist-cnn on fashion-mnist"),
    ("config: pretrained from an attacked config", CONFIG + [SET, "init_model='pretrained:iid-rlr'"],
     "a starting model must be trained without attack"),
    ("config: pretrained from no config", CONFIG + [SET, "init_model='pretrained:no-such'"],
     "config file 'no-such' not found"),
    ("run: dba parts before the data", ["run", "demo-iid", SET, "attack=dba", SET, "dba_parts=50", "--out", "{tmp}/o7"],
     "dba_parts=50: must be an integer in 1..9"),
    ("run: trojan off the image before the data", ["run", "demo-iid", SET, "trojan_position='99,99'", "--out",
                                                   "{tmp}/o8"], "does not fit a 28x28 image"),
    ("run: huge server_lr", ["run", "demo-iid", SET, "server_lr=1e38", "--out", "{tmp}/o9"],
     "server_lr=1e+38 is outside (0, 1000]"),
    # config files
    ("missing config file", ["run", "{tmp}/nothing.toml"], "not found"),
    ("config not UTF-8", ["config", "{tmp}/latin1.toml"], "not UTF-8"),
    ("config not TOML", ["config", "{tmp}/broken.toml"], "not valid TOML"),
    ("extends an unknown preset", ["config", "{tmp}/ext-unknown.toml"], "unknown preset 'no-such-preset'"),
    ("extends a number", ["config", "{tmp}/ext-number.toml"], "extends must be a preset name"),
    ("extends a path without .toml", ["config", "{tmp}/cfgs/ext-dots.toml"],
     "extends = '../../x' is neither a preset name"),
    ("extends a file above", ["config", "{tmp}/cfgs/ext-up.toml"],
     "extends = '../outside.toml' leads outside this file's folder"),
    ("extends an absolute path", ["config", "{tmp}/cfgs/ext-abs.toml"], "leads outside this file's folder"),
    ("extends a missing file", ["config", "{tmp}/cfgs/ext-missing.toml"], "extends = 'missing.toml': "),
    ("extends itself", ["config", "{tmp}/cfgs/cyc.toml"], "extends forms a cycle: cyc.toml -> cyc.toml"),
    ("a preset name with a path", ["config", "../presets/iid-rlr"], "config file '../presets/iid-rlr' not found"),
    # run arguments and folders (all refused before the data is loaded)
    ("--out is a file", ["run", "demo-iid", "--out", "{tmp}/a-file"], "is a file, not a folder"),
    ("--out cannot be created", ["run", "demo-iid", "--out", "/proc/1/robustlr-out"], "cannot write the run folder"),
    ("demo --out cannot be created", ["demo", "--out", "/proc/1/x"], "cannot write the run folder /proc/1/x"),
    ("--out name too long", ["run", "demo-iid", "--out", "{tmp}/" + "a" * 300],
     "is 300 bytes long; a folder or file name may have at most 255 bytes; choose a shorter --out"),
    ("demo --out name too long", ["demo", "--out", "{tmp}/" + "a" * 300],
     "is 300 bytes long; a folder or file name may have at most 255 bytes; choose a shorter --out"),
    ("--data-dir missing", ["run", "demo-iid", "--out", "{tmp}/o1", "--data-dir", "{tmp}/no-such-dir"],
     "is not a folder"),
    ("cuda on a CPU machine", ["run", "demo-iid", SET, "device=cuda", "--out", "{tmp}/o2"], "no CUDA device"),
    ("truncated config.json", ["run", "demo-iid", "--out", "{tmp}/truncated"], "is damaged"),
    ("damaged checkpoint.pt", ["run", "demo-iid", SET, "train_limit=300", "--out", "{tmp}/damaged",
                               "--data-dir", "{data}"], "is a checkpoint of an older robustlr (format 1"),
    ("unknown demo setting", ["demo", "--setting", "moon"], "unknown setting"),
    ("unknown dataset to check", ["data", "cifar"], "unknown dataset"),
    # data files
    ("LEAF shard not gzip", ["run", "demo-noniid", SET, "data_sources=['{tmp}/leaf-bad']", "--out", "{tmp}/o3"],
     "cannot be read (BadGzipFile"),
    ("LEAF shard truncated", ["run", "demo-noniid", SET, "data_sources=['{tmp}/leaf-trunc']", "--out", "{tmp}/o4"],
     "cannot be read (EOFError"),
    ("an agent left without data", ["run", "demo-iid", SET, "partition=dirichlet", SET, "dirichlet_alpha=0.001", SET,
                                    "dirichlet_min_size=0", SET, "num_agents=100", SET, "train_limit=300", "--out",
                                    "{tmp}/o9", "--data-dir", "{data}"],
     "partition dirichlet left"),
    ("LEAF folder missing (absolute)", ["run", "demo-noniid", SET, "data_sources=['{tmp}/no-leaf']", "--out",
                                        "{tmp}/o7"], "data source '{tmp}/no-leaf' of dataset femnist-leaf not found: "
                                                     "{tmp}/no-leaf does not exist"),
    ("LEAF folder missing (relative)", ["run", "demo-noniid", SET, "data_sources=['no-leaf']", "--out", "{tmp}/o8",
                                        "--data-dir", "{tmp}"], "data source 'no-leaf' of dataset femnist-leaf not found; "
                                                                "searched: {tmp}/no-leaf"),
    ("TFF file not HDF5", ["run", "noniid-paper-rlr", SET, "data_sources=['{tmp}/not-h5', '{tmp}/not-h5']",
                           "--out", "{tmp}/o5"], "is not an HDF5 file"),
    ("TFF files missing", ["run", "noniid-paper-rlr", "--out", "{tmp}/o6", "--data-dir", "{tmp}"], "How to get the files"),
    # misspelt names get the closest valid one; user text with brackets is printed as it is (issue 25 item 6)
    ("misspelt preset", ["run", "iid-rlrr"], "did you mean 'iid-rlr'?"),
    ("misspelt suite", ["sweep", "table1-idd"], "did you mean 'table1-iid'?"),
    ("misspelt bench preset", ["bench", "engines", "--preset", "iid-fedavgg"], "did you mean 'iid-fedavg'?"),
    ("misspelt bench rule", ["bench", "aggregation", "--rule", "fedavgg", "--agents", "10", "--params", "1000"],
     "unknown rule 'fedavgg' (did you mean 'FedAvg'?) for --rule; choose from FedAvg, CoordinateMedian"),
    ("misspelt aggregator", CONFIG + [SET, "aggregator=comedd"], "(got 'comedd') (did you mean 'comed'?)"),
    ("misspelt dataset", CONFIG + [SET, "dataset=cifar"], "dataset: unknown dataset 'cifar' (did you mean 'cifar10'?)"),
    ("a name that is markup", CONFIG + [SET, "name=[/x]"], "(got '[/x]')"),
    ("a budget that is markup", ["sweep", "table1-iid", "--budget", "[/x]"], "has no budget '[/x]'"),
    ("misspelt preset in extends", ["config", "{tmp}/ext-typo.toml"], "unknown preset 'iid-rrl' (did you mean 'iid-rlr'?)"),
    ("a folder where the lock file goes", ["run", "demo-iid", "--out", "{tmp}/lockdir"],
     "cannot create its lock file"),
    # a damaged results store is one line pointing at the rebuild (issue 25 item 3)
    ("a results store that is not SQLite", ["runs", "-r", "{tmp}/bad-store"],
     "is damaged (file is not a database); rebuild it from the run folders"),
    ("an emptied results store beside run folders", ["runs", "-r", "{tmp}/empty-store"],
     "is damaged (an empty file, while the folder holds run folders)"),
    ("a report of a damaged store", ["report", "{tmp}/bad-store"], "is damaged (file is not a database)"),
    ("a sweep into a damaged store", ["sweep", "table1-iid", "-r", "{tmp}/bad-store"],
     "is damaged (file is not a database)"),
    ("--data-dir with brackets", ["run", "demo-iid", "--out", "{tmp}/o10", "--data-dir", "{tmp}/mydata[v2]"],
     "mydata[v2] is not a folder"),
]


@pytest.mark.parametrize("args, fragment", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input_gets_one_clear_line(tmp_path, data_dir, args, fragment):
    _files(tmp_path, data_dir)
    args = [a.replace("{tmp}", str(tmp_path)).replace("{data}", str(data_dir)) for a in args]
    fragment = fragment.replace("{tmp}", str(tmp_path))
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)  # not a traceback
    assert "Traceback" not in res.output
    assert fragment in " ".join(res.output.split()), res.output


def test_the_table_has_at_least_30_rows():
    assert len(ROWS) >= 30
