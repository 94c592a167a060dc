"""CRFL in the simulator: the agents train from the clipped global model plus seeded noise, the
server clips the norm after each step, and `certify` smooths the final model (tiny generated data:
code paths only)."""

import json

import pytest
import torch

from robustlr.errors import DataError
from robustlr.sim import seeding
from robustlr.sim.config import make_config
from robustlr.sim.federation import build_federation
from robustlr.sim.loop import Simulation, run_experiment

BASE = {"dataset": "fashion-mnist", "rounds": 3, "num_agents": 4, "corrupt_fraction": 0.25, "poison_fraction": 0.5,
        "local_epochs": 1, "batch_size": 16, "eval_every": 3, "seed": 3, "train_mode": "sequential",
        "rlr_threshold": 0, "crfl": True, "crfl_sigma": 1e-3, "crfl_rho_slope": 0.01, "crfl_rho_intercept": 4.0}


class Seen:
    def __init__(self):
        self.views = []

    def after_step(self, view):
        self.views.append((view.before.clone(), view.after.clone()))


def test_the_model_sent_is_the_clipped_global_plus_seeded_noise_on_the_parameters(tiny):
    cfg = make_config(BASE)
    seen = Seen()
    sim = Simulation(cfg, build_federation(cfg, tiny()), observers=[seen])
    trainable = sim.layout.trainable_mask()
    start = sim.global_params.clone()
    recs = [sim.run_round(r) for r in (1, 2, 3)]
    sim.engine.close()
    assert torch.equal(seen.views[0][0], start)  # round 1: the initial model, no noise
    for r in (2, 3):
        noise = torch.randn(trainable.shape, generator=seeding.torch_generator(3, seeding.CRFL, r)) * 1e-3
        torch.testing.assert_close(seen.views[r - 1][0], seen.views[r - 2][1] + noise * trainable, rtol=0, atol=0)
    for r, rec in zip((1, 2, 3), recs):
        assert rec.crfl_rho == pytest.approx(0.01 * r + 4.0)
        after = seen.views[r - 1][1]
        # the model's norm (8.9 at init) is clipped to rho_t in every round
        assert rec.crfl_clip_scale < 1.0
        assert float(after[trainable].double().norm()) == pytest.approx(rec.crfl_rho, rel=1e-6)


def test_certify_smooths_the_final_model_the_same_way_twice_and_refuses_a_run_without_crfl(tmp_path, tiny,
                                                                                            monkeypatch):
    from robustlr.analysis import certify as certify_mod

    ds = tiny()
    monkeypatch.setattr("robustlr.sim.federation.load_dataset", lambda cfg, data_dir=None: ds)
    cfg = make_config({**BASE, "rounds": 2, "eval_every": 2})
    run_experiment(cfg, tmp_path / "crfl", dataset=ds)
    first = json.loads(certify_mod.certify_run(tmp_path / "crfl", copies=6, limit=20).read_text())
    second = json.loads(certify_mod.certify_run(tmp_path / "crfl", copies=6, limit=20).read_text())
    assert first == second
    assert first["inputs"] == 20 and first["copies"] == 6 and first["sigma_test"] == 1e-3
    s = first["setting"]
    assert s["attackers"] == 1 and s["attack_round"] == 1 and s["attack_rounds"] == 2 and s["gamma"] == 1.0
    assert s["rho_first"] == pytest.approx(4.01) and s["rho_last"] == pytest.approx(4.02)
    # a certified accuracy never grows with the radius, and starts at the smoothed accuracy (radius 0)
    acc = list(first["certified_accuracy"].values())
    assert acc == sorted(acc, reverse=True) and acc[0] == pytest.approx(first["smoothed_val_acc"])
    run_experiment(make_config({**BASE, "crfl": False, "rounds": 1, "eval_every": 1, "crfl_sigma": 0.01,
                                "crfl_rho_slope": 0.1, "crfl_rho_intercept": 2.0}), tmp_path / "plain", dataset=ds)
    with pytest.raises(DataError, match="was not trained with crfl = true"):
        certify_mod.certify_run(tmp_path / "plain", copies=2, limit=5)
