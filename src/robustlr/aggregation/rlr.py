"""The robust learning rate (Ozdayi et al., AAAI 2021, eq. 5-6), a wrapper over any rule."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .base import (
    AggregationRule,
    FusedCheckRule,
    call_inner,
    check_finite_rows,
    check_rule,
    inner_telemetry,
    sign_vote,
)
from .layout import ParamLayout

__all__ = ["RobustLR", "Threshold", "threshold_range"]

# Products such as 10 * 0.1 or 40 * 0.3 land a hair off the integer in binary floating point;
# round them before floor/ceil so that the integer case is exact.
_ROUND_DIGITS = 9


def _ceil(x: float) -> int:
    return math.ceil(round(x, _ROUND_DIGITS))


def threshold_range(n_agents: int, corrupt_fraction: float) -> tuple[int, int]:
    r"""The paper's sensible range of RLR thresholds, ``K*F + 1 .. K - K*F``, as integers.

    With ``K = n_agents`` (agents *in the round*) and ``F = corrupt_fraction``, the number of
    corrupt agents assumed is ``m = ceil(K * F)``: rounded up, so that a round with a
    fractional expected count (e.g. 33 agents at F = 0.1, 3.3) is covered in its worse case.
    The range is then ``(m + 1, K - m)``: above what the corrupt agents can vote on their own,
    and within what the honest ones can reach.

    Raises ``ValueError`` when the range is empty (``F`` of about one half or more).

    Example:
        >>> threshold_range(10, 0.1)
        (2, 9)
        >>> threshold_range(40, 0.3)
        (13, 28)
        >>> threshold_range(33, 0.1)
        (5, 29)
    """
    if isinstance(n_agents, bool) or not isinstance(n_agents, numbers.Integral) or n_agents < 1:
        raise ValueError(f"n_agents must be an integer >= 1 (agents in the round), got {n_agents!r}")
    f = float(corrupt_fraction)
    if not 0.0 <= f < 1.0:
        raise ValueError(f"corrupt_fraction must lie in [0, 1), got {corrupt_fraction!r}")
    n = int(n_agents)
    m = _ceil(n * f)
    lo, hi = m + 1, n - m
    if lo > hi:
        raise ValueError(
            f"no sensible threshold for {n} agents with corrupt fraction {f}: the corrupt agents "
            f"(up to {m}) could outvote the honest ones; the range K*F+1..K-K*F = {lo}..{hi} is empty"
        )
    return lo, hi


@dataclass(frozen=True)
class Threshold:
    """theta, in its one form: a count of agents, or a fraction of the round's voters.

    Build it with :meth:`of`, which validates once: an integer (or a float with an integer
    value) ``>= 0`` is a **count**, a float in (0, 1) a **fraction**. ``for_round(n)`` is the
    count used in a round of ``n`` voters:

    - a count ``theta`` is used as is; with ``full_round`` (the agents of a full round), a round
      with fewer voters (some updates rejected) uses ``ceil(theta * n / full_round)``, so theta
      keeps its meaning as the share of the round that must agree;
    - a fraction ``f`` gives ``ceil(f * n)``.

    ``Threshold(fraction=1.0)`` asks for unanimity (``of(1.0)`` is the count 1).

    >>> Threshold.of(4).for_round(10), Threshold.of(4, full_round=10).for_round(9)
    (4, 4)
    >>> Threshold.of(4, full_round=10).for_round(5), Threshold.of(0.25).for_round(10)
    (2, 3)
    """

    count: int | None = None
    fraction: float | None = None
    full_round: int | None = None

    def __post_init__(self) -> None:
        if (self.count is None) == (self.fraction is None):
            raise ValueError("a Threshold is a count of agents or a fraction of the round, exactly one of them")
        if self.count is not None and (isinstance(self.count, bool) or not isinstance(self.count, numbers.Integral)
                                       or self.count < 0):
            raise ValueError(f"threshold count must be an integer >= 0, got {self.count!r}")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise ValueError(f"threshold fraction must lie in [0, 1], got {self.fraction!r}")
        if self.full_round is not None:
            if isinstance(self.full_round, bool) or not isinstance(self.full_round, numbers.Integral) \
                    or self.full_round < 1:
                raise ValueError(f"full_round must be an integer >= 1 (agents in a full round), got {self.full_round!r}")
            if self.count is not None and self.count > self.full_round:
                raise ValueError(
                    f"threshold={self.count} exceeds the {self.full_round} agents in a round; no coordinate "
                    f"could reach it. Lower it (threshold_range(K, F) gives the paper's range K*F+1 .. K-K*F) "
                    f"or use a fraction")

    @classmethod
    def of(cls, value: "Threshold | int | float", full_round: int | None = None) -> "Threshold":
        """theta from a count or a fraction (see the class); a :class:`Threshold` passes through,
        gaining ``full_round`` when it has none."""
        if isinstance(value, Threshold):
            if full_round is not None and value.full_round is None and value.count is not None:
                return cls(count=value.count, full_round=full_round)
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"threshold must be a count of agents (an integer, e.g. 4) or a fraction of the "
                             f"round's agents (a float in (0, 1), e.g. 0.4), got {value!r}")
        x = float(value)
        if not math.isfinite(x) or x < 0:
            raise ValueError(f"threshold={value!r} must be a count of agents >= 0 or a fraction in (0, 1)")
        if isinstance(value, numbers.Integral) or x >= 1 or x == 0:
            if not x.is_integer():
                raise ValueError(f"threshold={value!r}: use an integer count of agents or a fraction in (0, 1)")
            return cls(count=int(x), full_round=full_round)
        return cls(fraction=x)

    @property
    def off(self) -> bool:
        """theta 0: the robust learning rate does nothing."""
        return self.count == 0 or self.fraction == 0.0

    def for_round(self, n_agents: int) -> int:
        """The count of agents that must agree in a round of ``n_agents`` voters."""
        if self.fraction is not None:
            return _ceil(self.fraction * n_agents)
        theta = int(self.count)  # type: ignore[arg-type]
        if self.full_round is not None and n_agents != self.full_round:
            return -(-theta * n_agents // self.full_round)  # ceil, in exact integers
        if theta > n_agents:
            raise ValueError(
                f"threshold={theta} is outside the range 0..{n_agents} (the number of agents "
                f"in this round); no coordinate could reach it. Lower it, or use a fraction; "
                f"threshold_range(K, F) gives the paper's sensible range")
        return theta

    def __str__(self) -> str:
        if self.fraction is not None:
            return f"{self.fraction:g} of the round"
        return f"{self.count}" + (f" of {self.full_round}" if self.full_round is not None else "")


class RobustLR(FusedCheckRule):
    r"""Robust learning rate: flip the server's learning rate where too few agents agree.

    For every coordinate ``i`` in the mask (all coordinates by default),

    .. math::

        s_{\theta,i} = \begin{cases} +1 & |\sum_k \operatorname{sgn}(\Delta^k_i)| \ge \theta \\
                                     -1 & \text{otherwise} \end{cases}
        \qquad g(\Delta)_i = s_{\theta,i} \cdot \mathrm{rule}(\Delta)_i

    (paper eq. 5-6, where the server's learning rate is ``eta_{theta,i} = eta * s_{theta,i}``;
    ``eta`` itself is applied once, by the server step,
    :func:`robustlr.aggregation.step.apply_server_lr`). ``sgn(0) = 0``, so an agent whose update is
    exactly zero on a coordinate does not vote there; a vote exactly equal to ``theta`` keeps
    the sign; ``theta = 0`` gives ``rule(...)``. The vote is unweighted (one agent, one vote) even when weights
    are given; the weights are passed to ``rule``. Coordinates outside the mask get
    ``rule(...)`` **unchanged** (no flip): they are meant for buffers such as batch-norm running
    statistics, which should be averaged plainly.

    Args:
        rule: the aggregation rule wrapped, e.g. ``FedAvg()`` or ``ClipAndNoise(FedAvg(), 4)``;
            or None for a vote that flips an aggregate computed elsewhere (:meth:`flip`, as the
            Flower wrapper does with its inner strategy's aggregate).
        threshold: ``theta``, validated once by :meth:`Threshold.of`: an integer count of agents
            (checked at each call against the agents of the round; see :func:`threshold_range`),
            a float in (0, 1), a share of the round's agents resolved as ``ceil(f * n_agents)``,
            or a :class:`Threshold` (e.g. a count of a full round that scales when updates are
            rejected).
        mask: a bool tensor ``(n_params,)``, True where the robust learning rate applies.
        layout: a :class:`ParamLayout` of the model. Without ``mask`` or ``param_names`` the
            mask is then ``layout.trainable_mask()``: trainable parameters only, so buffers
            (running mean/var, ``num_batches_tracked``) are never flipped. The layout also
            enables per-layer telemetry.
        param_names: names or module prefixes (e.g. ``["conv1", "fc2.weight"]``) resolved to a
            mask through ``layout``; requires ``layout``.
        soft: scale each masked coordinate by the vote's margin instead of flipping it (see
            "Variants" below); False (the paper's rule) by default.
        max_flip: a cap in (0, 1] on the share of each layer's coordinates that may be flipped
            (see "Variants" below); None (the paper's rule, no cap) by default.

    Variants (robustlr's, not the paper's; for models where the plain rule costs accuracy, such
    as batch-norm ResNets under a label skew, see docs/resnet.md):

    - **scope** (``mask``): which coordinates may be flipped. ``layout.trainable_mask()`` (the
      default with a layout) leaves batch-norm statistics to the plain rule;
      ``mask=layout.weight_mask()`` also leaves biases and normalisation scales and shifts
      unflipped (convolution and linear weights only): one-dimensional arrays carry little of a
      trigger's feature and much of a model's calibration.
    - **soft** (``soft=True``): with ``a_i = |sum_k sgn(Delta^k_i)|`` and ``n`` voters, the
      coordinate is scaled by ``s_i = (a_i - theta) / (n - theta)`` where ``a_i >= theta`` (0 at
      the threshold, 1 when unanimous; 1 when ``theta = n``) and by ``s_i = (a_i - theta) / theta``
      where ``a_i < theta`` (-1 with no net vote, near 0 just below the threshold). A coordinate
      the vote barely carries or barely misses then moves little, instead of a full step either
      way; the sign of ``s_i`` is the hard rule's. ``flipped`` (and the telemetry) counts the
      coordinates with ``s_i < 0``; ``telemetry["mean_scale"]`` is the mean ``s_i`` over the mask.
    - **a threshold per layer** (``max_flip=q``): Theorem 1 of the paper assumes that a
      coordinate fails the vote with probability ``p0 < 1/4``; under a label skew the honest
      agents of a large model agree so little that most coordinates fail it (``p0`` about 0.7 on
      a batch-norm ResNet-20, docs/resnet.md), and the rule then reverses most honest progress.
      With a cap, each array ``l`` of the layout (the whole mask without a layout) gets its own
      threshold ``theta_l``: the largest integer ``c <= theta`` such that at most
      ``floor(q * n_l)`` of its ``n_l`` masked coordinates have ``a_i < c``; the coordinates
      with ``a_i < theta_l`` are flipped. So at most a share ``q`` of each layer is flipped
      (``q = 0.25`` puts every layer inside Theorem 1's premise), always the coordinates the
      vote supports least, and a layer whose agents agree enough keeps the paper's ``theta``.
      ``telemetry["layer_thresholds"]`` holds ``theta_l`` per array (``{"*": theta_l}`` without a
      layout). Not combined with ``soft``.

    When to use which: the paper's rule on models without normalisation layers (where the paper
    shows it). On a batch-norm ResNet-20 under Dirichlet(0.5) (docs/resnet.md; one seed, so a lead
    and not a rule yet) every variant kept the backdoor near the clean level and the weights-only
    scope cost the least validation accuracy (3.7 points below clean FedAvg, against the plain
    rule's 5.9 and the soft rule's 8.8). Whatever the variant, theta must be inside the paper's
    range ``K*F+1 .. K-K*F``: in the suite ``resnet20-bn-dir05`` (40 agents, 4 corrupt; seed 2, the
    seed where the attack took) theta 4 let the backdoor through (40 % against FedAvg's 65 %) and
    theta 8 held it at 3 % for 6 points of validation. The per-layer threshold (``max_flip``) is
    not measured there yet: until its numbers are in, it is a hypothesis.

    After each call ``flipped`` holds the bool mask of the coordinates flipped (None for theta 0)
    and :meth:`flipped_per_entry` counts them per array of a layout.
    Telemetry after each call: ``n_flipped`` and ``flipped_fraction`` (over the masked
    coordinates; 0.0 when none are masked), ``n_coords`` (masked coordinates), ``threshold``
    (the count used), ``n_agents``, ``inner`` (the wrapped rule's telemetry),
    and with a layout ``per_layer``: ``{name: (n_flipped, n_coords)}`` for every entry with
    masked coordinates.

    Example (the paper's rule over FedAvg):
        >>> import torch
        >>> from robustlr.aggregation import FedAvg
        >>> U = torch.tensor([[1.0, -2.0, 3.0], [1.0, 2.0, -3.0], [1.0, 2.0, 3.0]])
        >>> rlr = RobustLR(FedAvg(), threshold=2)
        >>> rlr(U)
        tensor([ 1.0000, -0.6667, -1.0000])
        >>> rlr.telemetry["n_flipped"], rlr.telemetry["flipped_fraction"]
        (2, 0.6666666666666666)
        >>> RobustLR(FedAvg(), threshold=0.5)(U)       # a fraction: ceil(0.5 * 3) = 2 agents
        tensor([ 1.0000, -0.6667, -1.0000])
    """

    def __init__(
        self,
        rule: AggregationRule | Callable[..., Tensor] | None,
        threshold: Threshold | int | float,
        *,
        mask: Tensor | None = None,
        layout: ParamLayout | None = None,
        param_names: str | Iterable[str] | None = None,
        soft: bool = False,
        max_flip: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(soft, bool):
            raise ValueError(f"soft must be True or False, got {soft!r}")
        self.soft = soft
        if max_flip is not None:
            if isinstance(max_flip, bool) or not isinstance(max_flip, numbers.Real) \
                    or not 0.0 < float(max_flip) <= 1.0:
                raise ValueError(f"max_flip must be a share in (0, 1] of a layer's coordinates (e.g. 0.25, "
                                 f"Theorem 1's p0 < 1/4), or None for no cap; got {max_flip!r}")
            if soft:
                raise ValueError("max_flip caps the hard rule's flips; it is not defined for soft=True: "
                                 "choose one of them")
            max_flip = float(max_flip)
        self.max_flip = max_flip
        if rule is not None:
            check_rule(rule)
        self.rule = rule
        self.theta = Threshold.of(threshold)

        if param_names is not None and layout is None:
            raise ValueError("param_names needs a layout to resolve them; pass layout=ParamLayout.from_module(model)")
        if param_names is not None and mask is not None:
            raise ValueError("give either mask or param_names, not both")
        if layout is not None and not isinstance(layout, ParamLayout):
            raise ValueError(f"layout must be a ParamLayout, got {type(layout).__name__}")
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.ndim != 1:
                raise ValueError("mask must be a 1-D bool tensor of shape (n_params,)")
            if layout is not None and mask.shape[0] != layout.numel:
                raise ValueError(
                    f"mask has {mask.shape[0]} entries but the layout has {layout.numel} coordinates"
                )
        elif layout is not None:
            mask = layout.mask_for(param_names) if param_names is not None else layout.trainable_mask()
        self.layout = layout
        self.mask = mask
        self._mask_on: dict[torch.device, Tensor] = {}
        self._all_masked = mask is None or bool(mask.all())
        self._n_masked = None if mask is None else int(mask.sum())
        self.flipped: Tensor | None = None

    @property
    def threshold(self) -> int | None:
        """theta as a count (None when it is a fraction)."""
        return self.theta.count

    @property
    def threshold_fraction(self) -> float | None:
        """theta as a fraction of the round (None when it is a count)."""
        return self.theta.fraction

    def resolve_threshold(self, n_agents: int) -> int:
        """The threshold count used for a round of ``n_agents`` agents (validated)."""
        return self.theta.for_round(n_agents)

    def _mask_for_device(self, device: torch.device) -> Tensor:
        assert self.mask is not None
        cached = self._mask_on.get(device)
        if cached is None:
            cached = self.mask.to(device)
            self._mask_on[device] = cached
        return cached

    def flip(self, updates: Tensor, aggregate: Tensor) -> Tensor:
        """Flip ``aggregate`` (computed elsewhere from ``updates``) where the vote is below theta.

        ``updates`` is validated here (finite rows only); telemetry and :attr:`flipped` are set
        as by a call."""
        from .base import validate_inputs

        updates, _, _ = validate_inputs(updates, check_finite=False)
        if not isinstance(aggregate, Tensor) or aggregate.shape != updates.shape[1:]:
            raise ValueError(f"aggregate must be a tensor of shape ({updates.shape[1]},), got "
                             f"{getattr(aggregate, 'shape', type(aggregate).__name__)}")
        return self._aggregate(updates, None, None, check_finite=True, given=aggregate)

    def aggregate_fused(
        self, updates: Tensor, weights: Tensor | None, agent_ids: list[Hashable] | None, check_finite: bool
    ) -> Tensor:
        if self.rule is None:
            raise ValueError("this RobustLR has no rule to wrap (rule=None): use flip(updates, aggregate)")
        return self._aggregate(updates, weights, agent_ids, check_finite)

    def _aggregate(
        self, updates: Tensor, weights: Tensor | None, agent_ids: list[Hashable] | None, check_finite: bool,
        given: Tensor | None = None,
    ) -> Tensor:
        n_agents, n_params = updates.shape
        if self.mask is not None and self.mask.shape[0] != n_params:
            what = "layout" if self.layout is not None else "mask"
            raise ValueError(
                f"the {what} covers {self.mask.shape[0]} coordinates but updates have "
                f"{n_params} (n_params); build them from the same model"
            )
        theta = self.resolve_threshold(n_agents)
        mask = None if self._all_masked else self._mask_for_device(updates.device)

        # The vote comes before any stateful inner rule (FoolsGold) runs: it also checks
        # finiteness, in the same pass, and that must happen before the rule records anything.
        # Column-separable rules (FedAvg, median, sign) run block by block inside the vote's
        # pass, so the matrix is read from memory once.
        fused = (given is None and theta > 0 and isinstance(self.rule, AggregationRule)
                 and self.rule.column_separable)
        if theta == 0:
            flipped = None
            if check_finite:
                check_finite_rows(updates)
        else:
            row_sums = torch.zeros(n_agents, dtype=torch.float32, device=updates.device) if check_finite else None
            if fused:
                out = torch.empty(n_params, dtype=updates.dtype, device=updates.device)

                def inner_block(start: int, stop: int, block: Tensor) -> None:
                    out[start:stop] = self.rule.aggregate_validated(block, weights, agent_ids)

                vote = sign_vote(updates, row_sums, per_block=inner_block)
            else:
                vote = sign_vote(updates, row_sums)
            if row_sums is not None:
                check_finite_rows(updates, row_sums)
            agreement = vote.abs_()
            flipped = agreement < theta
            if mask is not None:
                flipped &= mask
            if self.max_flip is not None:
                layer_thresholds = self._cap_flips(agreement, flipped, theta, n_agents)
        if given is not None:
            out = given
        elif not fused:
            out = call_inner(self.rule, updates, weights, agent_ids)
        # the sign: -1 where flipped, +1 elsewhere (outside the mask too); built with arithmetic
        # on a float copy of `flipped`, which measured 3x faster than torch.where here.
        mean_scale = None
        if flipped is not None and self.soft:
            scale = self._soft_scale(agreement, theta, n_agents).to(out.dtype)
            if mask is not None:
                scale = torch.where(mask, scale, torch.ones_like(scale))
            masked = scale if mask is None else scale[mask]
            mean_scale = float(masked.double().mean()) if masked.numel() else 1.0
            out = out * scale
        elif flipped is not None:
            scale = flipped.to(out.dtype)
            scale.mul_(-2.0).add_(1.0)
            out = out * scale

        n_coords = n_params if self._n_masked is None else self._n_masked
        n_flipped = 0 if flipped is None else int(torch.count_nonzero(flipped))
        telemetry: dict[str, Any] = {
            "n_flipped": n_flipped,
            "flipped_fraction": n_flipped / n_coords if n_coords else 0.0,
            "n_coords": n_coords,
            "threshold": theta,
            "n_agents": n_agents,
            "inner": inner_telemetry(self.rule) if given is None else {},
        }
        if self.soft:
            telemetry["mean_scale"] = 1.0 if mean_scale is None else mean_scale
        if self.max_flip is not None:
            telemetry["layer_thresholds"] = {} if flipped is None else layer_thresholds
        if self.layout is not None:
            telemetry["per_layer"] = self._per_layer(flipped)
        self.telemetry = telemetry
        self.flipped = flipped  # the last call's flip mask (None when theta is 0), for vote telemetry
        return out

    def _segments(self) -> list[tuple[str, int, int]]:
        """The arrays the cap applies to, as ``(name, start, stop)``: the layout's, or the whole vector."""
        if self.layout is None:
            n = self.mask.shape[0] if self.mask is not None else None
            return [("*", 0, n if n is not None else -1)]
        return [(name, o, o + k) for name, o, k in zip(self.layout.names, self.layout.offsets, self.layout.numels)]

    def _cap_flips(self, agreement: Tensor, flipped: Tensor, theta: int, n_agents: int) -> dict[str, int]:
        """Lower theta per array so that at most ``max_flip`` of its masked coordinates flip (in place
        on ``flipped``); returns each array's threshold (arrays with no masked coordinate left out)."""
        assert self.max_flip is not None
        out: dict[str, int] = {}
        mask = None if self._all_masked else self._mask_for_device(agreement.device)
        for name, start, stop in self._segments():
            stop = agreement.shape[0] if stop < 0 else stop
            a = agreement[start:stop]
            if mask is not None:
                a = a[mask[start:stop]]
            n = a.numel()
            if n == 0:
                continue
            cap = math.floor(round(self.max_flip * n, _ROUND_DIGITS))
            # below[c] = coordinates with a < c, for c = 0 .. theta
            hist = torch.bincount(a.to(torch.int64), minlength=n_agents + 1)[:theta]
            below = torch.cat([hist.new_zeros(1), hist.cumsum(0)])
            layer_theta = int(torch.count_nonzero(below <= cap)) - 1
            if layer_theta < theta:
                flipped[start:stop] &= agreement[start:stop] < layer_theta
            out[name] = layer_theta
        return out

    @staticmethod
    def _soft_scale(agreement: Tensor, theta: int, n_agents: int) -> Tensor:
        """The soft rule's scale per coordinate from the vote's ``|sum of signs|`` (see the class text)."""
        a = agreement.to(torch.float64)
        above = (a - theta) / (n_agents - theta) if n_agents > theta else torch.ones_like(a)
        below = (a - theta) / theta
        return torch.where(a >= theta, above, below)

    def flipped_per_entry(self, sizes: Iterable[tuple[str, int]]) -> dict[str, float]:
        """The last call's flipped fraction per array, for arrays given as ``(name, numel)`` in
        the order of the flat vector; only arrays with coordinates in the mask are listed (0.0
        where nothing was flipped)."""
        out, offset = {}, 0
        for name, n in sizes:
            stop = offset + int(n)
            in_mask = n if self.mask is None else int(self.mask[offset:stop].sum())
            if in_mask:
                n_flipped = 0 if self.flipped is None else int(torch.count_nonzero(self.flipped[offset:stop]))
                out[name] = n_flipped / in_mask
            offset = stop
        return out

    def _per_layer(self, flipped: Tensor | None) -> dict[str, tuple[int, int]]:
        assert self.layout is not None and self.mask is not None
        layout = self.layout
        ends = torch.tensor([o + n for o, n in zip(layout.offsets, layout.numels)], dtype=torch.int64)

        def segment_counts(values: Tensor) -> list[int]:
            if values.numel() == 0:
                return [0] * len(layout.names)
            cum = torch.cumsum(values.to(torch.int64), 0).cpu()
            at_end = torch.where(ends > 0, cum[(ends - 1).clamp(min=0)], torch.zeros_like(ends))
            return torch.diff(at_end, prepend=torch.zeros(1, dtype=torch.int64)).tolist()

        coords = segment_counts(self.mask)
        flips = segment_counts(flipped) if flipped is not None else [0] * len(coords)
        return {name: (f, c) for name, f, c in zip(layout.names, flips, coords) if c > 0}

    def __repr__(self) -> str:
        t = self.theta
        theta = f"threshold={t.count}" if t.fraction is None else f"threshold={t.fraction}"
        return f"RobustLR({self.rule!r}, {theta}{', soft=True' if self.soft else ''})"
