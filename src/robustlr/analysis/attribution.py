"""Parameter attribution: the paper's appendix B and Figure 4.

The appendix, transcribed (Ozdayi, Kantarcioglu, Gel, AAAI 2021, appendix B):

    "After each round, we find the 100 most important parameters for adversarial, and honest
    mapping by computing the empirical Fisher Information Matrix (FIM) [...]. Particularly, we
    compute the diagonal of FIM on the trojaned samples, labeled as target class, and take top
    100 values for adversarial mapping. We do the same by computing FIM on trojaned samples
    labeled as base class to find out the most influential parameters for honest mapping. Then,
    due to RLR, some of these top 100 parameters are updated in a way to minimize the loss, and
    some of them are updated in a way to maximize the loss. Let S1, S2 be those which are updated
    to minimize the loss for adversarial and honest mapping, respectively. Also let S3, S4 be
    those which are updated to maximize the loss for adversarial and honest mapping,
    respectively. Then, we quantified the net adversarial influence as
    I_adv = ||S1 \\ S2||_2 . ||S3 \\ S4||_2 and the net honest influence as
    I_hon = ||S2 \\ S1||_2 . ||S4 \\ S3||_2. Finally, the net influence is then given by
    I_hon - I_adv". Figure 4's caption: "Net influence is the cumulative sum of differences
    between the influences of honest agents and the adversarial agents".

How we read it, symbol by symbol:

- *empirical Fisher diagonal* of mapping m (adversarial: trojaned base-class validation images
  labelled target; honest: the same images labelled base): ``F_m = mean_i (d/dw log p(y_i|x_i;
  w))^2``, from per-sample gradients of the log-likelihood (``torch.func.vmap`` over
  ``torch.func.grad``; not the squared gradient of a batch-summed logit), at the global model
  the agents trained from this round, on at most ``samples`` images;
- *top 100*: the indices A (adversarial) and H (honest) of the k largest ``F_m`` (k = 100);
- *updated to minimize / maximize the loss*: the Fisher diagonal has no sign, so the direction
  comes from the round's applied server step ``d = w_after - w_before`` and the gradient ``g_m``
  of the mapping's mean loss (minus log-likelihood) at ``w_before``: a parameter j is updated to
  minimize the loss when ``d_j * g_m,j < 0``, to maximize it when ``> 0`` (``= 0``: neither).
  So S1 = {j in A: d_j g_adv,j < 0}, S3 = {j in A: d_j g_adv,j > 0}, S2 and S4 likewise over H
  with ``g_hon``;
- ``\\`` is set difference of parameter indices (S1 \\ S2: in S1 and not in S2);
- ``||S||_2`` is the L2 norm of the step restricted to the set, ``sqrt(sum_{j in S} d_j^2)``:
  how far those parameters moved this round (the empty set gives 0);
- ``.`` is a product, as printed. Our copy of the paper may have lost a minus sign there (a
  difference, "helping minus hurting", reads more naturally as a *net* influence), so every
  round also records that reading: ``I_adv_diff = ||S1\\S2|| - ||S3\\S4||``,
  ``I_hon_diff = ||S2\\S1|| - ||S4\\S3||``. Plots show the printed definition.
- *net influence* per round ``I_hon - I_adv``; Figure 4 plots its cumulative sum over rounds.

**The authors' code** (``plot_sign_agreement`` and ``comp_diag_fisher`` in src/aggregation.py of
TinfoilHat0/Defending-Against-Backdoors-with-Robust-Learning-Rate, commit 20b8f84; called from the
round loop but commented out there) defines the figure differently, and each record carries that
reading too, under ``authors``:

- their "Fisher" of a mapping sums, over batches of 256 (their ``--bs``) of the same trojaned
  images, the square of the gradient of the batch's summed *logit* of the label, divided by the
  image count: ``F_j = sum_b (d/dw_j sum_{i in b} z_{y_i}(x_i))^2 / N``. That is not the empirical
  Fisher: it squares a batch sum rather than each sample's gradient, and it differentiates the
  logit, not the log-likelihood (the function computes ``log_softmax`` and then gathers from the
  raw outputs, which reads as a slip);
- "top" is the 100 largest (their ``--top_frac`` is a count, default 100);
- the sets come from RLR's learning-rate vector, not from the loss gradient: "maximized" are the
  coordinates whose rate is +eta (not flipped), "minimized" those at -eta (flipped; under FedAvg
  there are none). S1 = top_adv & max minus top_hon & max, S2 = top_hon & max minus top_adv & max,
  S3 and S4 the same over min;
- the plotted quantity is a difference of norms of the round's step on those sets:
  ``net_adv = ||S1|| - ||S3||``, ``net_hon = ||S2|| - ||S4||``, and the curve is the cumulative sum
  of ``net_hon - net_adv``.

``authors`` holds that computation with their Fisher; ``authors_corrected`` the same sets and
quantity with the per-sample log-likelihood Fisher above (the slip fixed).

Beyond the paper, each record also says how many of each set RLR flipped this round, and the
share of the flipped top-k adversarial coordinates on which the flip went against the corrupt
agents' collective sign vote.

The analysis is opt-in: :class:`AttributionObserver` watches a :class:`robustlr.sim.loop.Simulation`
(``observers=[...]``), and :func:`attribute_run` replays a finished run with it (runs are
deterministic; the replay checks that it ends with the run's numbers).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from robustlr.errors import DataError

__all__ = ["fisher_diagonal", "fisher_authors", "influence", "influence_authors", "AttributionObserver",
           "attribute_run", "ATTRIBUTION_FILE"]

ATTRIBUTION_FILE = "attribution.json"


def fisher_diagonal(model: torch.nn.Module, flat_params: Tensor, layout, x: Tensor, y: Tensor,
                    chunk: int = 64) -> tuple[Tensor, Tensor]:
    """The empirical Fisher diagonal ``mean_i g_i^2`` and the mean loss gradient ``-mean_i g_i``,
    where ``g_i`` is the gradient of ``log p(y_i | x_i)``, both flat in ``layout``'s order (zero on
    buffers). ``model`` is used in eval mode (no dropout) with the parameters ``flat_params``."""
    from torch.func import functional_call, grad, vmap

    state = layout.unflatten(flat_params.detach().to(torch.float32).cpu())
    trainable = {n for n, t in zip(layout.names, layout.is_trainable) if t}
    params = {n: v for n, v in state.items() if n in trainable}
    buffers = {n: v for n, v in state.items() if n not in trainable}
    model = model.eval()

    def log_lik(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(model, {**p, **buffers}, (xi.unsqueeze(0),))
        return torch.log_softmax(out, dim=1)[0].gather(0, yi.reshape(1))[0]

    per_sample = vmap(grad(log_lik), in_dims=(None, 0, 0))
    sq = {n: torch.zeros_like(v) for n, v in params.items()}
    total = {n: torch.zeros_like(v) for n, v in params.items()}
    n = x.shape[0]
    if n == 0:
        raise DataError("the Fisher diagonal needs at least one sample; the backdoor set is empty")
    for start in range(0, n, chunk):
        g = per_sample(params, x[start:start + chunk], y[start:start + chunk])
        for name, gi in g.items():
            sq[name] += (gi * gi).sum(0)
            total[name] += gi.sum(0)
    fisher = torch.zeros(layout.numel)
    grad_loss = torch.zeros(layout.numel)
    for name, off, k in zip(layout.names, layout.offsets, layout.numels):
        if name in params:
            fisher[off:off + k] = (sq[name] / n).reshape(-1)
            grad_loss[off:off + k] = (-total[name] / n).reshape(-1)
    return fisher, grad_loss


def fisher_authors(model: torch.nn.Module, flat_params: Tensor, layout, x: Tensor, y: Tensor,
                   batch: int = 256) -> Tensor:
    """The authors' ``comp_diag_fisher``: ``sum_b (grad of sum_{i in b} logit_{y_i})^2 / N`` over
    batches of ``batch`` in order, flat in ``layout``'s order (zero on buffers); model in eval mode.

    Example (a linear model on 3 images, one batch: the gradient of the summed logits is the
    summed inputs on the label's row):
        >>> from robustlr.aggregation import ParamLayout
        >>> m = torch.nn.Linear(2, 2, bias=False)
        >>> lay = ParamLayout.from_module(m)
        >>> x = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 1.0]]); y = torch.tensor([0, 0, 1])
        >>> [round(v, 4) for v in fisher_authors(m, torch.zeros(4), lay, x, y).tolist()]   # row 0: (4, 2)^2 / 3; row 1: (0, 1)^2 / 3
        [5.3333, 1.3333, 0.0, 0.3333]
    """
    from torch.func import functional_call

    state = layout.unflatten(flat_params.detach().to(torch.float32).cpu())
    trainable = {n for n, t in zip(layout.names, layout.is_trainable) if t}
    buffers = {n: v for n, v in state.items() if n not in trainable}
    model = model.eval()
    n = x.shape[0]
    if n == 0:
        raise DataError("the Fisher diagonal needs at least one sample; the backdoor set is empty")
    acc = {name: torch.zeros_like(v) for name, v in state.items() if name in trainable}
    for start in range(0, n, batch):
        params = {name: v.clone().requires_grad_(True) for name, v in state.items() if name in trainable}
        out = functional_call(model, {**params, **buffers}, (x[start:start + batch],))
        total = out.gather(1, y[start:start + batch].reshape(-1, 1)).sum()
        grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
        for (name, _), g in zip(params.items(), grads):
            if g is not None:
                acc[name] += g * g / n
    fisher = torch.zeros(layout.numel)
    for name, off, k in zip(layout.names, layout.offsets, layout.numels):
        if name in acc:
            fisher[off:off + k] = acc[name].reshape(-1)
    return fisher


def influence_authors(step: Tensor, fisher_adv: Tensor, fisher_hon: Tensor, flipped: Tensor | None,
                      k: int = 100) -> dict[str, float]:
    """The authors' ``plot_sign_agreement`` for one round (see the module docstring): sets from the
    top ``k`` of each Fisher and RLR's flip mask (``None``: no RLR, every rate +eta), and the
    differences of the step's norms on them.

    Example (6 coordinates, k 2; coordinate 1 flipped):
        >>> step = torch.tensor([3.0, -4.0, 1.0, 0.0, 2.0, 0.0])
        >>> f_adv = torch.tensor([9.0, 8.0, 0.0, 0.0, 0.0, 0.0]); f_hon = torch.tensor([0.0, 8.0, 0.0, 0.0, 9.0, 0.0])
        >>> flipped = torch.tensor([False, True, False, False, False, False])
        >>> r = influence_authors(step, f_adv, f_hon, flipped, k=2)
        >>> (r["norm_S1"], r["norm_S2"], r["norm_S3"], r["norm_S4"], r["net"])   # S1 {0}, S2 {4}, S3 = S4 = {}
        (3.0, 2.0, 0.0, 0.0, -1.0)
    """
    k = min(k, step.numel())
    top_adv = torch.topk(fisher_adv, k).indices
    top_hon = torch.topk(fisher_hon, k).indices
    minimized = torch.zeros_like(step, dtype=torch.bool) if flipped is None else flipped.to(torch.bool)
    adv_max, adv_min = top_adv[~minimized[top_adv]], top_adv[minimized[top_adv]]
    hon_max, hon_min = top_hon[~minimized[top_hon]], top_hon[minimized[top_hon]]
    n1, n2 = _norm(step, _minus(adv_max, hon_max)), _norm(step, _minus(hon_max, adv_max))
    n3, n4 = _norm(step, _minus(adv_min, hon_min)), _norm(step, _minus(hon_min, adv_min))
    out = {"norm_S1": n1, "norm_S2": n2, "norm_S3": n3, "norm_S4": n4, "net_adv": n1 - n3, "net_hon": n2 - n4}
    out["net"] = out["net_hon"] - out["net_adv"]
    return out


def _norm(step: Tensor, idx: Tensor) -> float:
    return float(torch.linalg.vector_norm(step[idx])) if idx.numel() else 0.0


def _minus(a: Tensor, b: Tensor) -> Tensor:
    return a[~torch.isin(a, b)]


def influence(step: Tensor, fisher_adv: Tensor, grad_adv: Tensor, fisher_hon: Tensor, grad_hon: Tensor,
              k: int = 100, flipped: Tensor | None = None) -> dict[str, Any]:
    """One round's sets S1..S4 and influences (the module docstring gives the definitions)."""
    k = min(k, step.numel())
    top_adv = torch.topk(fisher_adv, k).indices
    top_hon = torch.topk(fisher_hon, k).indices
    da, dh = step[top_adv] * grad_adv[top_adv], step[top_hon] * grad_hon[top_hon]
    s1, s3 = top_adv[da < 0], top_adv[da > 0]
    s2, s4 = top_hon[dh < 0], top_hon[dh > 0]
    a_min, a_max = _norm(step, _minus(s1, s2)), _norm(step, _minus(s3, s4))
    h_min, h_max = _norm(step, _minus(s2, s1)), _norm(step, _minus(s4, s3))
    out: dict[str, Any] = {
        "n_S1": int(s1.numel()), "n_S2": int(s2.numel()), "n_S3": int(s3.numel()), "n_S4": int(s4.numel()),
        "norm_S1_minus_S2": a_min, "norm_S3_minus_S4": a_max, "norm_S2_minus_S1": h_min, "norm_S4_minus_S3": h_max,
        "I_adv": a_min * a_max, "I_hon": h_min * h_max, "I_adv_diff": a_min - a_max, "I_hon_diff": h_min - h_max,
    }
    out["net"] = out["I_hon"] - out["I_adv"]
    out["net_diff"] = out["I_hon_diff"] - out["I_adv_diff"]
    if flipped is not None:
        for name, s in (("S1", s1), ("S2", s2), ("S3", s3), ("S4", s4)):
            out[f"n_{name}_flipped"] = int(flipped[s].sum())
    return out


@dataclass
class AttributionObserver:
    """Computes :func:`influence` after every ``every``-th round's server step (a StepObserver)."""

    k: int = 100
    samples: int = 256
    every: int = 1
    records: list[dict[str, Any]] = field(default_factory=list)
    _model: torch.nn.Module | None = None

    def after_step(self, view) -> None:
        if view.round % self.every:
            return
        sim = view.sim
        if self._model is None:
            self._model = copy.deepcopy(sim.model).to(memory_format=torch.contiguous_format).cpu()
        fed, cfg = sim.fed, sim.cfg
        x = fed.backdoor_x[: self.samples].cpu().contiguous()
        target = torch.full((x.shape[0],), cfg.target_class, dtype=torch.int64)
        base = torch.full((x.shape[0],), cfg.base_class, dtype=torch.int64)
        f_adv, g_adv = fisher_diagonal(self._model, view.before, sim.layout, x, target)
        f_hon, g_hon = fisher_diagonal(self._model, view.before, sim.layout, x, base)
        step = (view.after - view.before).cpu()
        flipped = None if view.flipped is None else view.flipped.cpu()
        rec = {"round": view.round, "samples": int(x.shape[0]), "k": self.k,
               **influence(step, f_adv, g_adv, f_hon, g_hon, self.k, flipped)}
        a_adv = fisher_authors(self._model, view.before, sim.layout, x, target)
        a_hon = fisher_authors(self._model, view.before, sim.layout, x, base)
        rec["authors"] = influence_authors(step, a_adv, a_hon, flipped, self.k)
        rec["authors_corrected"] = influence_authors(step, f_adv, f_hon, flipped, self.k)
        if flipped is not None and view.corrupt.any():
            top_adv = torch.topk(f_adv, min(self.k, f_adv.numel())).indices
            hit = top_adv[flipped[top_adv]]
            rec["adv_topk_flipped_fraction"] = hit.numel() / top_adv.numel()
            if hit.numel():
                vote = torch.sign(torch.sign(view.updates[view.corrupt][:, hit].cpu()).sum(0))
                rec["flips_against_corrupt_vote"] = float((vote * torch.sign(step[hit]) < 0).float().mean())
        self.records.append(rec)


def attribute_run(run_dir: str | Path, k: int = 100, samples: int = 256, every: int | None = None,
                  data_dir: str | None = None, out: str | Path | None = None) -> Path:
    """Replay the run in ``run_dir`` with an :class:`AttributionObserver` and write
    ``attribution.json`` there (or to ``out``): the per-round records, the settings, and whether
    the replay ended with the run's own final numbers."""
    from robustlr.sim.checkpoint import atomic_write_text
    from robustlr.sim.loop import run_experiment
    from robustlr.sim.rundir import read_run_config
    from robustlr.sim.records import read_summary

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir / "config.json")
    obs = AttributionObserver(k=k, samples=samples, every=every or cfg.eval_every)
    result = run_experiment(cfg, data_dir=data_dir, observers=[obs])
    try:
        original = read_summary(run_dir / "summary.json")
        matches = (original.val_acc, original.backdoor_acc) == (result.summary.val_acc, result.summary.backdoor_acc)
    except (OSError, ValueError):
        original, matches = None, None
    doc = {"run": cfg.name, "k": k, "samples": samples, "every": obs.every, "replay_matches_run": matches,
           "replay_final": {"val_acc": result.summary.val_acc, "backdoor_acc": result.summary.backdoor_acc},
           "definitions": "robustlr.analysis.attribution (module docstring)", "rounds": obs.records}
    if matches and not (run_dir / "model.pt").exists():
        # a compact run folder (metrics, no model) gets its final model back: the replay is the run
        from robustlr.sim.checkpoint import atomic_save

        from robustlr.aggregation import ParamLayout

        if obs._model is not None and result.global_params is not None:
            state = ParamLayout.from_module(obs._model).unflatten(result.global_params.cpu())
            atomic_save(state, run_dir / "model.pt")
    path = Path(out) if out is not None else run_dir / ATTRIBUTION_FILE
    atomic_write_text(path, json.dumps(doc, indent=1))
    return path
