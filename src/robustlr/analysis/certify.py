"""``robustlr certify``: CRFL's parameter smoothing and certified radii for a finished run trained
with ``crfl = true`` (see :mod:`robustlr.aggregation.crfl` for the formulas and where they come from).

What it measures, on the first ``limit`` test images and the base class's triggered test images:
the smoothed model's accuracy (the majority vote of ``copies`` noisy copies of the final model),
its backdoor accuracy (triggered base-class images voted the target class), each clean input's
certified radius and the certified accuracy at a grid of radii, beside the trigger's actual L2
norm in the model's input space (what the radius must reach for the certificate to cover the
run's own attack).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustlr.errors import DataError

__all__ = ["certify_run", "certification_setting", "RADII"]

#: radii (L2, the model's input space) at which the certified accuracy is reported
RADII = (0.0, 0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0)


def certification_setting(cfg, fed, sigma_test: float):
    """The :class:`~robustlr.aggregation.crfl.CertificationSetting` of a run: its noise and norm
    bounds, and its attack read from the config and the federation. R is the corrupt agents; each
    attacker's aggregation weight its share of a round's data (full participation: its size over
    all agents'; with participation C, over C x all); t_adv the first attack round (the authors'
    code takes the first of their attack rounds; the theorem is for one); gamma the boost; the
    poisoned share of a batch the attacker's poisoned share of its data; tau its local steps per
    round (E x its batches)."""
    from robustlr.aggregation.crfl import CertificationSetting, crfl_rho

    sizes = np.asarray(fed.agent_sizes, dtype=np.float64)
    corrupt = [int(a) for a in fed.corrupt]
    if not corrupt:
        raise DataError("the run has no corrupt agent: CRFL's radius bounds what the attackers' updates can do, "
                        "and there are none (certify a run with corrupt_fraction > 0)")
    per_round = cfg.participation * float(sizes.sum())
    weight = max(float(sizes[a]) for a in corrupt) / per_round
    share = max(fed.poisoned_per_agent.get(a, 0) / float(sizes[a]) for a in corrupt)
    tau = max(cfg.local_epochs * math.ceil(float(sizes[a]) / cfg.batch_size) for a in corrupt)
    rho = tuple(crfl_rho(t, cfg.crfl_rho_slope, cfg.crfl_rho_intercept, cfg.crfl_rho_cap)
                for t in range(1, cfg.rounds + 1))
    return CertificationSetting(sigma=cfg.crfl_sigma, sigma_test=sigma_test, rho=rho, attackers=len(corrupt),
                                attacker_weight=weight, attack_round=max(1, cfg.attack_from_round),
                                gamma=cfg.boost_factor, poison_share=share, local_iterations=tau,
                                client_lr=cfg.client_lr)


def certify_run(run_dir: str | Path, *, copies: int = 1000, alpha: float = 0.001, limit: int | None = 1632,
                sigma_test: float | None = None, data_dir: str | None = None) -> Path:
    """Smooth and certify the final model of the run in ``run_dir``; writes ``certify.json`` there
    and returns its path. ``copies`` M, ``alpha`` and ``limit`` (the first 1632 test images: the
    authors' 51 batches of 32) default to the authors' values; ``sigma_test`` to the run's
    ``crfl_sigma`` (the authors use the same). The noise comes from the run's seeded stream
    ``(seed, CRFL, 0)``: certifying again gives the same numbers."""
    from robustlr.aggregation import ParamLayout
    from robustlr.aggregation.crfl import certified_radius, hoeffding_bounds, smoothed_votes
    from robustlr.analysis.features import _load_model
    from robustlr.models import build_model
    from robustlr.sim import seeding
    from robustlr.sim.evaluation import predict
    from robustlr.sim.federation import build_federation, load_dataset

    run_dir = Path(run_dir)
    cfg, state = _load_model(run_dir)
    if not cfg.crfl:
        raise DataError(f"{run_dir} was not trained with crfl = true: CRFL's certificate rests on its training noise "
                        f"and norm bounds; run with --set crfl=true")
    if copies < 1 or not 0 < alpha < 1:
        raise DataError(f"copies must be >= 1 and alpha in (0, 1), got copies={copies}, alpha={alpha}")
    sigma_test = cfg.crfl_sigma if sigma_test is None else float(sigma_test)
    ds = load_dataset(cfg, data_dir)
    fed = build_federation(cfg, ds)
    model = build_model(cfg.model, num_classes=ds.num_classes)
    model.load_state_dict(state)
    model.eval()
    layout = ParamLayout.from_module(model)
    params = layout.flatten(model)
    x, y = fed.val_x[:limit], fed.val_y[:limit]
    bx = fed.backdoor_x[:limit]
    inputs = torch.cat([x, bx])

    def logits_of(p: torch.Tensor) -> torch.Tensor:
        model.load_state_dict(layout.unflatten(p))
        with torch.no_grad():
            return predict(model, inputs, batch_size=1024)

    gen = seeding.torch_generator(cfg.seed, seeding.CRFL, 0)
    votes = smoothed_votes(logits_of, params, sigma_test, copies, ds.num_classes, gen, layout.trainable_mask())
    top2 = torch.topk(votes, 2, dim=1)
    pred = top2.indices[:, 0]
    setting = certification_setting(cfg, fed, sigma_test)
    n = x.shape[0]
    radii = []
    for i in range(n):
        p_a, p_b = hoeffding_bounds(int(top2.values[i, 0]), int(top2.values[i, 1]), copies, alpha)
        radii.append(certified_radius(p_a, p_b, setting))
    radii_t = torch.tensor(radii, dtype=torch.float64)
    correct = (pred[:n] == y).numpy()
    trigger = (fed.backdoor_x - fed.base_x).flatten(1).norm(dim=1)
    finite = radii_t[torch.isfinite(radii_t)]
    doc: dict[str, Any] = {
        "run": cfg.name, "copies": copies, "alpha": alpha, "sigma_test": sigma_test, "inputs": n,
        "triggered_inputs": int(bx.shape[0]),
        "smoothed_val_acc": float(correct.mean()),
        "smoothed_backdoor_acc": float((pred[n:] == cfg.target_class).float().mean()) if bx.shape[0] else None,
        "radius_median": float(radii_t.median()),
        "radius_max_finite": float(finite.max()) if finite.numel() else None,
        "certified_accuracy": {str(r): float(((radii_t >= r).numpy() & correct).mean()) for r in RADII},
        "trigger_norm_mean": float(trigger.mean()) if trigger.numel() else None,
        "setting": {"D": setting.denominator(), "attackers": setting.attackers,
                    "attacker_weight": setting.attacker_weight, "attack_round": setting.attack_round,
                    "attack_rounds": (cfg.attack_until_round or cfg.rounds) - setting.attack_round + 1,
                    "gamma": setting.gamma, "poison_share": setting.poison_share,
                    "local_iterations": setting.local_iterations, "client_lr": setting.client_lr,
                    "sigma": setting.sigma, "rho_first": setting.rho[0], "rho_last": setting.rho[-1]},
        "note": ("the radius is an L2 norm in the model's input space (normalised pixels); CRFL's theorem covers an "
                 "attack in one round (attack_round), the authors' code certifies with the first of several"),
    }
    path = run_dir / "certify.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path
