"""Warm starts (``init_model``, ``robustlr pretrain``) and ``attack_from_round``: code paths on tiny
generated data (the science of the warm-started CIFAR-10 lite budget is in tests/science/test_cifar.py)."""

import json

import numpy as np
import pytest
import torch

from robustlr.errors import ConfigError
from robustlr.sim import pretrain as pretrain_mod
from robustlr.sim.config import config_hash, make_config
from robustlr.sim.engines import engine_context
from robustlr.sim.federation import build_federation, normalise
from robustlr.sim.loop import Simulation, run_experiment
from robustlr.sim.pretrain import file_sha256, pretrained_dir

BASE = {"rounds": 2, "num_agents": 4, "corrupt_fraction": 0.25, "poison_fraction": 0.5, "local_epochs": 1,
        "batch_size": 16, "eval_every": 1, "seed": 0, "checkpoint_every": 0, "train_mode": "sequential", "threads": 1}


def _run(tiny, out, **kw):
    cfg = make_config({**BASE, **kw})
    return run_experiment(cfg, out, dataset=tiny())


def test_init_model_from_a_run_folder_starts_from_its_final_weights(tiny, tmp_path):
    first = _run(tiny, tmp_path / "a")
    for spec in (str(tmp_path / "a"), str(tmp_path / "a" / "model.pt")):
        cfg = make_config({**BASE, "init_model": spec})
        sim = Simulation(cfg, build_federation(cfg, tiny()))
        torch.testing.assert_close(sim.global_params, first.global_params, rtol=0, atol=0)
        assert sim.init_model.record() == {"spec": spec, "sha256": file_sha256(tmp_path / "a" / "model.pt")}
    res = _run(tiny, tmp_path / "b", init_model=str(tmp_path / "a"))
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["init_model"]["sha256"] == file_sha256(tmp_path / "a" / "model.pt")
    # a warm start changes the numbers (the same config from a random start differs)
    assert not torch.equal(res.global_params, _run(tiny, tmp_path / "c").global_params)


def test_bad_init_models_are_refused_before_any_work(tiny, tmp_path):
    with pytest.raises(ConfigError, match="no such file or folder"):
        _run(tiny, tmp_path / "x", init_model=str(tmp_path / "missing.pt"))
    assert not (tmp_path / "x" / "metrics.jsonl").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no model.pt"):
        _run(tiny, tmp_path / "y", init_model=str(tmp_path / "empty"))
    (tmp_path / "junk.pt").write_bytes(b"not a state dict")
    with pytest.raises(ConfigError, match="not a state dict torch can read safely"):
        _run(tiny, tmp_path / "z", init_model=str(tmp_path / "junk.pt"))
    # the weights of another architecture: named, with the fix
    from robustlr.models import build_model
    torch.save(build_model("cifar-cnn").state_dict(), tmp_path / "cifar.pt")
    with pytest.raises(ConfigError, match="does not fit model MnistCNN: .*shapes"):
        _run(tiny, tmp_path / "w", init_model=str(tmp_path / "cifar.pt"))


def test_pretrained_models_are_built_once_and_cached_by_config_hash(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLR_CACHE_DIR", str(tmp_path / "cache"))
    pre = tmp_path / "pre.toml"
    pre.write_text('name = "tiny-pre"\nnum_agents = 2\ncorrupt_fraction = 0.0\nrounds = 2\nlocal_epochs = 1\n'
                   'batch_size = 16\ntrain_mode = "sequential"\nthreads = 1\ncheckpoint_every = 0\n')
    calls = []
    real = run_experiment

    def counting(*args, **kwargs):
        calls.append(args[0].name)
        return real(*args, **kwargs)

    monkeypatch.setattr("robustlr.sim.loop.run_experiment", counting)
    cfg = make_config({**BASE, "init_model": f"pretrained:{pre}"})
    sims = [Simulation(cfg, build_federation(cfg, tiny())) for _ in range(2)]
    assert calls == ["tiny-pre"]  # trained once, then read from the cache
    pcfg = pretrain_mod.pretrain_config(str(pre))
    folder = pretrained_dir(pcfg)
    assert folder == tmp_path / "cache" / "pretrained" / f"tiny-pre-{config_hash(pcfg)}"
    state = torch.load(folder / "model.pt", weights_only=True)
    for sim in sims:
        torch.testing.assert_close(sim.global_params, sim.layout.flatten(state), rtol=0, atol=0)
        assert sim.init_model.record() == {"spec": f"pretrained:{pre}", "sha256": file_sha256(folder / "model.pt"),
                                           "pretrain_config_hash": config_hash(pcfg)}
    # a change in a number-changing key is another model
    pre.write_text(pre.read_text().replace("rounds = 2", "rounds = 3"))
    assert pretrained_dir(pretrain_mod.pretrain_config(str(pre))) != folder


def test_a_pretraining_config_must_be_clean(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\ncorrupt_fraction = 0.1\n')
    with pytest.raises(ConfigError, match="must be trained without attack"):
        pretrain_mod.pretrain_config(str(bad))
    chained = tmp_path / "chained.toml"
    chained.write_text('name = "c"\ncorrupt_fraction = 0.0\ninit_model = "pretrained:cifar-pretrain"\n')
    with pytest.raises(ConfigError, match="cannot start from another cached one"):
        pretrain_mod.pretrain_config(str(chained))


def test_pretrained_model_of_another_dataset_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTLR_CACHE_DIR", str(tmp_path))
    cfg = make_config({"init_model": "pretrained:cifar-pretrain"})  # a fashion-mnist run
    with pytest.raises(ConfigError, match="trains cifar-cnn on cifar10, but this run is mnist-cnn on fashion-mnist"):
        pretrain_mod.resolve_init_model(cfg)  # no builder: refused before any training


def test_corrupt_agents_are_honest_before_attack_from_round(tiny):
    cfg = make_config({**BASE, "rounds": 4, "attack_from_round": 3, "corrupt_loss": "negated"})
    ds = tiny()
    fed = build_federation(cfg, ds)
    ctx = engine_context(cfg, fed, torch.device("cpu"))
    clean = normalise(ds.train_x, ds.mean, ds.std)
    (agent,) = fed.corrupt
    rows = fed.agent_indices[agent]
    assert fed.poisoned_per_agent[int(agent)] > 0
    honest_rows = ctx.indices(agent, 2)
    assert len(honest_rows) == len(rows) and not np.array_equal(honest_rows, rows)
    torch.testing.assert_close(fed.train_x[honest_rows], clean[rows], rtol=0, atol=0)
    assert torch.equal(fed.train_y[honest_rows], ds.train_y[rows])
    assert np.array_equal(ctx.indices(agent, 3), rows)  # from round 3 on: its poisoned data
    assert not torch.equal(fed.train_y[rows], ds.train_y[rows])
    assert (ctx.loss_sign(agent, 2), ctx.loss_sign(agent, 3)) == (1.0, -1.0)
    honest = [a for a in range(4) if a != agent]
    assert all(np.array_equal(ctx.indices(a, 1), fed.agent_indices[a]) for a in honest)


@pytest.mark.parametrize("mode", ["sequential", "processes"])
def test_before_the_attack_a_run_is_the_clean_run(tiny, mode):
    """Rounds 1-2 of a run attacked from round 3 give exactly the clean run's weights."""
    kw = {"rounds": 2, "train_mode": mode, "threads": 2 if mode == "processes" else 1}
    clean = run_experiment(make_config({**BASE, **kw, "corrupt_fraction": 0.0}), dataset=tiny())
    late = run_experiment(make_config({**BASE, **kw, "rounds": 3, "attack_from_round": 3}).model_copy(
        update={"rounds": 2}), dataset=tiny())
    early = run_experiment(make_config({**BASE, **kw}), dataset=tiny())
    torch.testing.assert_close(late.global_params, clean.global_params, rtol=0, atol=0)
    assert not torch.equal(early.global_params, clean.global_params)
