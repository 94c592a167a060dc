"""Aggregation rules over a stacked update matrix, and the robust learning rate.

Every rule is a callable object ``rule(updates, weights=None, agent_ids=None) -> Tensor``:
``updates`` is an ``(n_agents, n_params)`` float tensor whose rows are the agents' updates
(new local weights minus global weights), ``weights`` optional per-agent dataset sizes and
``agent_ids`` optional ids (FoolsGold needs them). The result is ``(n_params,)``, with the
dtype and device of ``updates``; ``rule.telemetry`` holds the last call's telemetry.

Wrappers take another rule: ``RobustLR(FedAvg(), threshold=4)``,
``RobustLR(ClipAndNoise(FedAvg(), clip_norm=4, noise_sigma=1e-3), threshold=4)``.

The rules: ``FedAvg``, ``CoordinateMedian``, ``SignAggregation`` (:mod:`.rules`); ``FoolsGold``;
the Byzantine-robust baselines ``TrimmedMean(beta)``, ``Krum(f, m=1)`` (and multi-Krum),
``Bulyan(f)``, ``GeometricMedian()`` (RFA) in :mod:`.robust`; ``FLTrust()`` in :mod:`.fltrust` (it
needs the server's own update each round, given with ``rule.set_round_inputs(RoundInputs(reference=g0))``); ``FLDetector(rule)``
in :mod:`.fldetector` (it needs the round's global model, ``RoundInputs(global_params=w)``, and keeps state); ``Flame()`` in :mod:`.flame` and
``SignGuard()`` in :mod:`.signguard`, ``FreqFed(weight, shape)`` in :mod:`.freqfed` (it needs the global model) and
``DeepSight(...)`` in :mod:`.deepsight` (it needs the models' outputs on random inputs, ``RoundInputs(probe=...)``)
(all four need ``pip install 'robustlr[flame]'``); and the wrappers ``ClipAndNoise``,
``NormBounding(rule, bound)`` (Sun et al. 2019) and ``RobustLR``. Any rule composes with the
wrappers, e.g. ``RobustLR(Krum(f=1), threshold=2)`` or ``ClipAndNoise(TrimmedMean(0.2), clip_norm=4)``.

>>> import torch
>>> from robustlr.aggregation import FedAvg, RobustLR
>>> U = torch.tensor([[1.0, -2.0, 3.0], [1.0, 2.0, -3.0], [1.0, 2.0, 3.0]])
>>> RobustLR(FedAvg(), threshold=2)(U)
tensor([ 1.0000, -0.6667, -1.0000])
"""

from .base import AggregationRule, FusedCheckRule, RoundInputs, sign_vote, validate_inputs
from .buffers import PlainBuffers
from .clip import ClipAndNoise, NormBounding, clip_updates
from .deepsight import DeepSight, ModelProbe
from .flame import Flame
from .fldetector import FLDetector
from .fltrust import FLTrust, fltrust_weights
from .foolsgold import FoolsGold, foolsgold_weights
from .freqfed import FreqFed
from .layout import LayoutEntry, ParamLayout
from .rlr import RobustLR, Threshold, threshold_range
from .step import apply_server_lr, server_lr_vector
from .robust import Bulyan, GeometricMedian, Krum, TrimmedMean
from .rules import CoordinateMedian, FedAvg, SignAggregation
from .signguard import SignGuard
from .telemetry import flipped_per_layer, layer_telemetry, vote_telemetry

__all__ = [
    "DeepSight",
    "ModelProbe",
    "FreqFed",
    "RoundInputs",
    "AggregationRule",
    "FedAvg",
    "CoordinateMedian",
    "SignAggregation",
    "FoolsGold",
    "TrimmedMean",
    "Krum",
    "Bulyan",
    "GeometricMedian",
    "Flame",
    "SignGuard",
    "FLTrust",
    "FLDetector",
    "fltrust_weights",
    "ClipAndNoise",
    "NormBounding",
    "PlainBuffers",
    "RobustLR",
    "Threshold",
    "FusedCheckRule",
    "ParamLayout",
    "LayoutEntry",
    "threshold_range",
    "clip_updates",
    "foolsgold_weights",
    "sign_vote",
    "validate_inputs",
    "vote_telemetry",
    "layer_telemetry",
    "flipped_per_layer",
    "apply_server_lr",
    "server_lr_vector",
]
