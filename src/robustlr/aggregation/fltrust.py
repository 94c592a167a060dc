"""FLTrust (Cao, Fang, Liu, Gong, NDSS 2021): trust bootstrapped from the server's own update.

The rule needs one thing besides the round's updates: the *server update* ``g0``, what the
server's own local training on its small clean root dataset gives from the same global model.
The simulator and the Flower ServerApp train it each round (:mod:`robustlr.sim.server`) and hand it
to the rule with :meth:`AggregationRule.set_round_inputs` (its ``reference``); a library user passes it the same
way (``FLTrust.set_reference(g0)`` is the shorthand on a bare FLTrust).
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import torch
from torch import Tensor

from .base import AggregationRule, RoundInputs, column_chunk
from .robust import _combine, _rows_telemetry

__all__ = ["FLTrust", "fltrust_weights"]


def fltrust_weights(updates: Tensor, reference: Tensor) -> tuple[Tensor, Tensor, float]:
    """FLTrust's trust scores and rescaling of the rows of ``updates`` against ``reference``.

    Returns ``(trust, scale, ref_norm)`` as float64 CPU tensors: ``trust[k] = ReLU(cos(updates[k],
    reference))`` (0 for a zero row, or when the reference is zero), ``scale[k] = ||reference|| /
    ||updates[k]||`` (0 for a zero row) and ``||reference||``. Norms and dot products are
    computed in float64.

    >>> U = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    >>> trust, scale, ref = fltrust_weights(U, torch.tensor([1.0, 1.0]))
    >>> [round(float(t), 4) for t in trust], [round(float(s), 4) for s in scale]
    ([0.7071, 0.7071, 0.0], [0.7071, 0.4714, 1.4142])
    """
    n, n_params = updates.shape
    ref = reference.to(device=updates.device)
    sq = torch.zeros(n, dtype=torch.float64, device=updates.device)
    dots = torch.zeros(n, dtype=torch.float64, device=updates.device)
    ref_sq = 0.0
    step = column_chunk(n, updates.device)  # float64 one cache-sized block at a time, no n x d float64 copy
    for start in range(0, n_params, step):
        block = updates[:, start:start + step].to(torch.float64)
        r = ref[start:start + step].to(torch.float64)
        sq += (block * block).sum(1)
        dots += torch.mv(block, r)
        ref_sq += float(r @ r)
    norms, dots, ref_norm = sq.sqrt().cpu(), dots.cpu(), math.sqrt(ref_sq)
    trust = torch.zeros(updates.shape[0], dtype=torch.float64)
    scale = torch.zeros(updates.shape[0], dtype=torch.float64)
    nonzero = norms > 0
    if ref_norm > 0:
        trust[nonzero] = torch.clamp(dots[nonzero] / (norms[nonzero] * ref_norm), min=0.0)
    scale[nonzero] = ref_norm / norms[nonzero]
    return trust, scale, ref_norm


class FLTrust(AggregationRule):
    r"""FLTrust (Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via Trust
    Bootstrapping", NDSS 2021; Algorithm 1 and Eqs. 3-5).

    Threat model: up to all but the server may be malicious (the paper's claim: robust with a
    majority of malicious clients); the server holds a small **clean root dataset** and trains
    on it each round, from the same global model and with the same local training as the clients,
    the server update :math:`g_0`. One call, with :math:`g_k` the agents' updates:

    .. math::

        TS_k = \mathrm{ReLU}\Big(\frac{\langle g_k, g_0\rangle}{\|g_k\| \|g_0\|}\Big), \qquad
        \bar g_k = \frac{\|g_0\|}{\|g_k\|} g_k, \qquad
        g = \frac{\sum_k TS_k \bar g_k}{\sum_k TS_k}

    (Eq. 3 the trust score, Eq. 4 the rescaling onto :math:`g_0`'s sphere, Eq. 5 the trust-weighted
    mean). The server then applies its learning rate to :math:`g` as to any rule's aggregate.
    ``weights`` (dataset sizes) are ignored, as in the paper. A zero update gets trust 0; a round
    where every trust score is 0 (every update points away from :math:`g_0`, or :math:`g_0 = 0`)
    returns zeros: the global model stays where it is. Telemetry ``rejected_rows`` names the agents
    with trust 0 (left out whole), ``trust`` every score, ``reference_norm`` :math:`\|g_0\|`.

    Defaults of the paper (Section V-A) that belong to the simulator, not to this rule: a root
    dataset of 100 examples drawn uniformly from the clients' clean training data
    (``fltrust_root_size``); the server's local training the clients' own (robustlr trains the
    root set for ``local_epochs`` epochs with the clients' batch size and learning rate; the paper
    counts local *iterations*, so with a root set smaller than an agent's data the server takes
    fewer steps; the rescaling makes only :math:`g_0`'s direction and norm matter).

    With the robust learning rate, ``RobustLR(FLTrust())`` votes on the signs of the raw updates and
    flips the trust-weighted mean where the vote is weak: both defenses act, each on its own test
    (FLTrust on whole updates' direction, RLR per coordinate).

    Example (the third agent points against the server's update: trust 0, left out):
        >>> U = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
        >>> rule = FLTrust()
        >>> rule.set_reference(torch.tensor([1.0, 1.0]))
        >>> rule(U)   # each kept update rescaled to norm sqrt 2, trust 0.707 each: their mean
        tensor([0.7071, 0.7071])
        >>> rule.telemetry["rejected_rows"]
        [2]
    """

    def __init__(self) -> None:
        super().__init__()
        self.reference: Tensor | None = None

    @property
    def round_inputs(self) -> frozenset[str]:
        return frozenset({"reference"})

    def set_round_inputs(self, inputs: RoundInputs) -> None:
        """Takes ``inputs.reference``, the round's server update :math:`g_0` (``(n_params,)``), for the next call."""
        reference = inputs.reference
        if reference is not None:
            if not isinstance(reference, Tensor) or reference.ndim != 1 or not reference.is_floating_point():
                raise ValueError("FLTrust's reference (the server update g0) must be a 1-D floating-point tensor of "
                                 "n_params entries, the server's own update on its root dataset")
            if not bool(torch.isfinite(reference).all()):
                raise ValueError("FLTrust's reference (the server update g0) holds NaN or inf: the server's own "
                                 "training on its root dataset diverged (lower client_lr?)")
        self.reference = reference

    def set_reference(self, reference: Tensor | None) -> None:
        """Shorthand for ``set_round_inputs(RoundInputs(reference=reference))`` on a bare FLTrust."""
        self.set_round_inputs(RoundInputs(reference=reference))

    def aggregate_validated(self, updates: Tensor, weights: Tensor | None,
                            agent_ids: list[Hashable] | None) -> Tensor:
        ref = self.reference
        if ref is None:
            raise ValueError("FLTrust needs the server update g0 of this round: call "
                             "rule.set_round_inputs(RoundInputs(reference=g0)) before "
                             "aggregating (the simulator and the Flower ServerApp train it on the root dataset)")
        n, n_params = updates.shape
        if ref.shape[0] != n_params:
            raise ValueError(f"FLTrust's reference has {ref.shape[0]} entries but the updates have {n_params} "
                             f"columns: pass the server update of the same model (and the same coordinates)")
        trust, scale, ref_norm = fltrust_weights(updates, ref)
        total = float(trust.sum())
        if total > 0:
            out = _combine(updates, trust * scale, total)
        else:
            out = torch.zeros(n_params, dtype=updates.dtype, device=updates.device)
        rejected = [k for k in range(n) if float(trust[k]) == 0.0]
        telemetry: dict[str, Any] = {"trust": [float(t) for t in trust], "reference_norm": ref_norm,
                                     "trust_sum": total if math.isfinite(total) else None}
        telemetry.update(_rows_telemetry("rejected", rejected, agent_ids))
        self.telemetry = telemetry
        return out

    def state_dict(self) -> dict[str, Any]:
        return {}  # the reference is the round's input, set anew before every call

    def __repr__(self) -> str:
        return "FLTrust()"
