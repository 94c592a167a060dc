"""Feature attribution: the paper's Figure 5, Gradient SHAP maps of three trained models.

For one trojaned validation image (a base-class test image with the trojan), each model's
prediction, its confidence, and a Gradient SHAP map (``captum.attr.GradientShap``) of the
predicted class: where the model looks. As in the paper, the image is one that the RLR model
classifies as the base class and the attacked FedAvg model as the target class (the first such
image of the poisoned validation set), unless an index is given.

Gradient SHAP averages ``(x - b) * grad f(b + a (x - b) + noise)`` over baselines ``b``, points
``a`` on the path and noise: its maps satisfy completeness only in expectation, so every map
comes with its completeness error, ``|sum(map) - (f(x) - mean_b f(b))|`` relative to
``|f(x) - mean_b f(b)|``, at the number of samples used (``n_samples``). Baselines: the black
image and ``n_baselines - 1`` images of uniform noise in the pixel range, normalised like the
data; ``f`` is the predicted class's logit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from robustlr._optional import require
from robustlr.errors import ConfigError, DataError

#: the feature named when captum is missing
_EXPLAIN = "Gradient SHAP (robustlr explain)"

__all__ = ["gradient_shap", "explain_runs", "Explanation"]


@dataclass
class Explanation:
    label: str  # the run's role: no attack, FedAvg under attack, FedAvg + RLR under attack
    run: str
    prediction: int
    confidence: float
    attribution: Tensor  # (C, H, W)
    completeness_error: float


def gradient_shap(model: torch.nn.Module, x: Tensor, target: int, baselines: Tensor, n_samples: int = 800,
                  stdevs: float = 0.05, seed: int = 0) -> tuple[Tensor, float]:
    """The Gradient SHAP map of ``model``'s logit ``target`` at ``x`` (one image, ``(C, H, W)``) and
    its relative completeness error."""
    GradientShap = require("captum.attr", extra="attribution", feature=_EXPLAIN).GradientShap

    import numpy as np

    model = model.eval()
    # captum draws the noise from torch's global generator, but the baselines and the points on the
    # path from numpy's (np.random.choice / uniform): both are seeded here, numpy's restored after, so
    # the map depends on ``seed`` only and not on what ran before (it did: a test's error moved with
    # the order of the test suite)
    numpy_state = np.random.get_state()
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        attr = GradientShap(model).attribute(x.unsqueeze(0), baselines=baselines, target=target,
                                             n_samples=n_samples, stdevs=stdevs)
    finally:
        np.random.set_state(numpy_state)
    with torch.no_grad():
        gap = float(model(x.unsqueeze(0))[0, target] - model(baselines)[:, target].mean())
    # completeness of the expectation: sum(map) against f(x) - mean_b f(b)
    err = abs(float(attr.sum()) - gap) / max(abs(gap), 1e-12)
    return attr[0].detach(), err


def _load_model(run_dir: Path):
    from robustlr.sim.rundir import read_run_config

    if not (run_dir / "config.json").exists():
        raise DataError(f"{run_dir} holds no config.json: give the folder of a run (written by `robustlr run` or "
                        "`robustlr sweep`)")
    cfg = read_run_config(run_dir / "config.json")
    if not (run_dir / "model.pt").exists():
        raise DataError(f"{run_dir} holds no model.pt: only a finished run can be explained; run it to the end")
    state = torch.load(run_dir / "model.pt", weights_only=True, map_location="cpu")
    return cfg, state


def explain_runs(clean: str | Path, attack: str | Path, rlr: str | Path, out: str | Path,
                 index: int | None = None, n_samples: int = 800, n_baselines: int = 10,
                 data_dir: str | None = None) -> dict[str, Any]:
    """Figure 5 for three finished runs of one setting: writes ``out/explain.png`` and
    ``out/explain.json`` and returns the JSON document."""
    require("captum.attr", extra="attribution", feature=_EXPLAIN)  # before minutes of loading
    from robustlr.models import build_model
    from robustlr.sim.federation import build_federation, load_dataset

    runs = {"no attack": Path(clean), "FedAvg, attack": Path(attack), "FedAvg + RLR, attack": Path(rlr)}
    loaded = {k: _load_model(p) for k, p in runs.items()}
    cfg = loaded["FedAvg + RLR, attack"][0]
    for k, (c, _) in loaded.items():
        if (c.dataset, c.model, c.trojan, c.base_class, c.target_class) != \
                (cfg.dataset, cfg.model, cfg.trojan, cfg.base_class, cfg.target_class):
            raise ConfigError(f"{runs[k]} is not of the same setting as {runs['FedAvg + RLR, attack']} (dataset, "
                              "model, trojan, base and target class must match)")
    ds = load_dataset(cfg, data_dir)
    fed = build_federation(cfg, ds)
    models = {}
    for k, (c, state) in loaded.items():
        m = build_model(c.model, num_classes=ds.num_classes)
        m.load_state_dict(state)
        models[k] = m.eval()
    x_all = fed.backdoor_x
    with torch.no_grad():
        preds = {k: m(x_all).argmax(1) for k, m in models.items()}
    if index is None:
        hits = torch.nonzero((preds["FedAvg + RLR, attack"] == cfg.base_class)
                             & (preds["FedAvg, attack"] == cfg.target_class)).flatten()
        if hits.numel() == 0:
            raise DataError("no trojaned validation image is classified as base by the RLR model and as target by "
                            "the FedAvg model; pass --index to choose one")
        index = int(hits[0])
    if not 0 <= index < x_all.shape[0]:
        raise ConfigError(f"--index {index} is outside the {x_all.shape[0]} trojaned validation images")
    x = x_all[index]
    mean = torch.tensor(ds.mean).view(-1, 1, 1)
    std = torch.tensor(ds.std).view(-1, 1, 1)
    g = torch.Generator().manual_seed(0)
    noise = torch.rand((n_baselines - 1, *x.shape), generator=g)
    baselines = (torch.cat([torch.zeros(1, *x.shape), noise]) - mean) / std
    explanations = []
    for k, m in models.items():
        with torch.no_grad():
            p = torch.softmax(m(x.unsqueeze(0)), 1)[0]
        pred = int(p.argmax())
        attr, err = gradient_shap(m, x, pred, baselines, n_samples=n_samples)
        explanations.append(Explanation(k, runs[k].name, pred, float(p[pred]), attr, err))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    image = (x * std + mean).clamp(0, 1)
    _plot(image, explanations, ds.classes, out / "explain.png",
          f"Gradient SHAP, trojaned validation image {index} ({ds.classes[cfg.base_class]} + trojan)")
    doc = {"index": index, "n_samples": n_samples, "n_baselines": n_baselines, "base_class": cfg.base_class,
           "target_class": cfg.target_class, "classes": list(ds.classes),
           "models": [{"label": e.label, "run": e.run, "prediction": e.prediction,
                       "prediction_name": ds.classes[e.prediction], "confidence": e.confidence,
                       "completeness_error": e.completeness_error,
                       "attribution_on_trojan": _share_on(e.attribution, fed, cfg)} for e in explanations]}
    (out / "explain.json").write_text(json.dumps(doc, indent=1))
    return doc


def _share_on(attr: Tensor, fed, cfg) -> float:
    """The share of the map's absolute mass on the trojan's pixels (where the trojaned image
    differs from the clean one)."""
    diff = (fed.backdoor_x[:1] - fed.base_x[:1]).abs().sum(dim=(0, 1)) > 0  # (H, W)
    mass = attr.abs().sum(0)
    return float(mass[diff].sum() / mass.sum()) if float(mass.sum()) > 0 else 0.0


def _plot(image: Tensor, exps: list[Explanation], classes, path: Path, title: str) -> None:
    require("matplotlib", extra="sim", feature="robustlr explain's figure").use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 1 + len(exps), figsize=(3.3 * (1 + len(exps)), 3.8), constrained_layout=True)
    img = image.permute(1, 2, 0).numpy()
    axes[0].imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray" if img.shape[2] == 1 else None)
    axes[0].set_title("input (with trojan)")
    for ax, e in zip(axes[1:], exps):
        heat = e.attribution.sum(0).numpy()
        lim = max(abs(heat.min()), abs(heat.max()), 1e-12)
        ax.imshow(img.mean(2), cmap="gray", alpha=0.35)
        shown = ax.imshow(heat, cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.85)
        ax.set_title(f"{e.label}\npredicts {classes[e.prediction]} ({100 * e.confidence:.1f} %)", fontsize=9)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title + "; red: evidence for the predicted class", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
