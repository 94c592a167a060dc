"""Presets that extend each other: each file holds only what differs from its parent."""

import sys

import pytest

from robustlr.errors import ConfigError
from robustlr.sim.config import load_config
from robustlr.sim.presets import PRESETS_DIR, describe, list_presets, read_config_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _raw(name):
    return tomllib.loads((PRESETS_DIR / f"{name}.toml").read_text())


def test_children_hold_only_keys_that_differ_from_their_parent():
    children = [n for n in list_presets() if "extends" in _raw(n)]
    assert len(children) >= 12
    for name in children:
        raw = _raw(name)
        parent = load_config(raw["extends"]).model_dump()
        child = load_config(name).model_dump()
        for key, value in raw.items():
            if key != "extends":
                assert parent[key] != child[key], f"{name}: {key} = {value!r} repeats its parent {raw['extends']}"


def test_extends_resolves_the_chain_and_overrides_win():
    cfg = load_config("iid-rlr-clip-noise")  # -> iid-rlr -> iid-fedavg
    assert (cfg.name, cfg.rlr_threshold, cfg.clip_norm, cfg.noise_sigma) == ("iid-rlr-clip-noise", 4, 4.0, 1e-3)
    assert (cfg.dataset, cfg.rounds, cfg.num_agents, cfg.local_epochs) == ("fashion-mnist", 200, 10, 2)
    assert load_config("iid-rlr-clip-noise", ["rlr_threshold=5"]).rlr_threshold == 5
    assert describe("iid-rlr-clip-noise").startswith("Table 1 iid: FedAvg + RLR")


def test_a_user_file_may_extend_a_preset(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('extends = "demo-iid"\nname = "mine"\nrounds = 3\n')
    cfg = load_config(f)
    assert (cfg.name, cfg.rounds, cfg.train_limit, cfg.rlr_threshold) == ("mine", 3, 12000, 4)


@pytest.mark.parametrize("text, fragment", [
    ('extends = "no-such-preset"\n', "unknown preset 'no-such-preset'"),
    ("extends = 3\n", "extends must be a preset name"),
])
def test_bad_extends_is_refused(tmp_path, text, fragment):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        read_config_file(f)


def test_a_cycle_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("robustlr.sim.presets.PRESETS_DIR", tmp_path)
    (tmp_path / "a.toml").write_text('extends = "b"\n')
    (tmp_path / "b.toml").write_text('extends = "a"\n')
    with pytest.raises(ConfigError, match="cycle: a -> b -> a"):
        read_config_file("a")


def test_a_user_file_may_extend_the_preset_of_its_own_name(tmp_path):
    # the user's iid-rlr.toml and the preset iid-rlr are two files: no cycle
    f = tmp_path / "iid-rlr.toml"
    f.write_text('extends = "iid-rlr"\nrounds = 3\n')
    cfg = load_config(f)
    assert (cfg.name, cfg.rounds, cfg.rlr_threshold) == ("iid-rlr", 3, 4)


def test_a_user_file_may_extend_a_file_beside_or_below_it(tmp_path):
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "base.toml").write_text('extends = "iid-rlr"\nrounds = 7\n')
    (tmp_path / "mine.toml").write_text('extends = "common/base.toml"\nseed = 3\n')
    cfg = load_config(tmp_path / "mine.toml")
    assert (cfg.rounds, cfg.seed, cfg.rlr_threshold) == (7, 3, 4)


@pytest.mark.parametrize("parent, fragment", [
    ("../../x", "extends = '../../x' is neither a preset name (letters, digits, . _ -) nor a NAME.toml file"),
    ("../outside.toml", "extends = '../outside.toml' leads outside this file's folder"),
    ("/etc/outside.toml", "extends = '/etc/outside.toml' leads outside this file's folder"),
    ("link.toml", "extends = 'link.toml' leads outside this file's folder"),  # a symlink leading out
    ("missing.toml", "extends = 'missing.toml': "),
])
def test_extends_reads_no_file_outside_the_extending_files_folder(tmp_path, parent, fragment):
    (tmp_path / "outside.toml").write_text("rounds = 5\n")
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "link.toml").symlink_to(tmp_path / "outside.toml")
    f = inner / "mine.toml"
    f.write_text(f"extends = {parent!r}\n")
    with pytest.raises(ConfigError) as exc:
        read_config_file(f)
    assert fragment in str(exc.value)


def test_a_file_cycle_is_refused(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(ConfigError, match="cycle: a.toml -> b.toml -> a.toml"):
        read_config_file(tmp_path / "a.toml")


def test_a_preset_extends_only_presets(tmp_path, monkeypatch):
    monkeypatch.setattr("robustlr.sim.presets.PRESETS_DIR", tmp_path)
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text("rounds = 3\n")
    with pytest.raises(ConfigError, match="a preset extends only presets: write extends = 'b'"):
        read_config_file("a")


def test_a_preset_name_is_a_plain_name():
    with pytest.raises(ConfigError, match="not found"):
        read_config_file("../presets/iid-rlr")
