"""Norm clipping and Gaussian noise around any rule (Sun et al. 2019; paper eq. 2), and norm bounding."""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch
from torch import Tensor

from .base import (
    AggregationRule,
    FusedCheckRule,
    call_inner,
    check_finite_rows,
    check_nonnegative_finite,
    check_rule,
    inner_telemetry,
)
from .rules import FedAvg

__all__ = ["ClipAndNoise", "NormBounding", "clip_updates"]


def check_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """``generator`` itself if it is None or a CPU ``torch.Generator``; ``ValueError`` otherwise."""
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if generator.device.type != "cpu":
            raise ValueError(
                f"generator must be a CPU torch.Generator (noise is drawn on the CPU so that it "
                f"is the same on every device), got one on {generator.device}"
            )
    return generator


def gaussian_noise(like: Tensor, std: float, generator: torch.Generator | None) -> Tensor:
    """``N(0, std^2)`` per coordinate, shaped, typed and placed like the 1-D tensor ``like``.

    Drawn on the CPU from ``generator`` (torch's global CPU generator if None) in float32, or
    float64 for float64 ``like``, then moved: a seeded generator gives the same noise on every
    device. Always draws ``like.shape[0]`` numbers, also for ``std = 0``.
    """
    noise_dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    noise = torch.randn(like.shape[0], generator=generator, dtype=noise_dtype, device="cpu")
    noise.mul_(std)
    return noise.to(device=like.device, dtype=like.dtype)


def clip_scale(updates: Tensor, clip_norm: float, norms: Tensor | None = None) -> tuple[Tensor | None, int]:
    """Per-row factors ``min(1, clip_norm / ||u||_2)`` and the number of rows below 1.

    Returns ``(None, 0)`` when no row is clipped (or ``clip_norm == 0``).
    """
    if clip_norm == 0:
        return None, 0
    if norms is None:
        norms = torch.linalg.vector_norm(updates, dim=1)
    overflow = ~torch.isfinite(norms)
    if bool(overflow.any()):
        # a finite row whose squared norm overflows float32: its norm in float64 (the rows are
        # finite here, non-finite ones having been rejected), so it is scaled, not zeroed
        norms = norms.double()
        norms[overflow] = torch.linalg.vector_norm(updates[overflow].double(), dim=1)
    over = norms > clip_norm
    n_clipped = int(over.sum())
    if n_clipped == 0:
        return None, 0
    return torch.where(over, clip_norm / norms, torch.ones_like(norms)).to(updates.dtype), n_clipped


def clip_updates(updates: Tensor, clip_norm: float) -> tuple[Tensor, int]:
    r"""Scale each row to L2 norm at most ``clip_norm``: ``u * min(1, clip_norm / ||u||_2)``.

    Returns ``(clipped, n_clipped)``. ``updates`` is never modified; when no row exceeds the
    bound it is returned as is (no copy). ``clip_norm = 0`` disables clipping. Clipped rows
    have norm ``clip_norm`` up to float rounding (relative error about 1e-7 in float32).

    Example:
        >>> clip_updates(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), 1.0)
        (tensor([[0.6000, 0.8000],
                [0.3000, 0.4000]]), 1)
    """
    scale, n_clipped = clip_scale(updates, clip_norm)
    if scale is None:
        return updates, 0
    return updates * scale.unsqueeze(1), n_clipped


class ClipAndNoise(FusedCheckRule):
    r"""Clip every update to an L2 ball, aggregate with ``rule``, add Gaussian noise.

    .. math::

        g(\Delta) = \mathrm{rule}\Big(\Big\{\frac{\Delta^k}{\max(1, \|\Delta^k\|_2 / M)}\Big\}_k\Big)
                    + \mathcal{N}(0, \sigma^2 M^2 I)

    (paper eq. 2 with ``rule = FedAvg``). ``M = clip_norm = 0`` disables clipping, and with it
    the noise: its standard deviation is ``sigma * M`` (as the authors' code computes it, so 0 at
    ``M = 0``). A zero standard deviation (``noise_sigma = 0`` or ``M = 0``) adds no noise and
    draws no random numbers.

    The noise is drawn on the CPU from ``generator`` in float32 (float64 for float64
    updates) and then moved to the updates' device, so a seeded generator gives the same
    noise on every device. Without a generator, torch's global CPU generator is used.

    Args:
        rule: the rule that aggregates the clipped updates, e.g. ``FedAvg()``.
        clip_norm: ``M``, the L2 bound, >= 0.
        noise_sigma: ``sigma``, >= 0 (the paper's grid: 1e-4, 1e-3, 5e-3).
        generator: a CPU ``torch.Generator``.

    Telemetry: ``n_clipped`` (agents whose update was scaled down), ``noise_std``, and
    ``inner`` (the wrapped rule's telemetry).

    Example:
        >>> import torch
        >>> from robustlr.aggregation import FedAvg
        >>> U = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
        >>> clip = ClipAndNoise(FedAvg(), clip_norm=1.0)
        >>> clip(U)
        tensor([0.4500, 0.6000])
        >>> clip.telemetry["n_clipped"]
        1
        >>> noisy = ClipAndNoise(FedAvg(), clip_norm=1.0, noise_sigma=0.1,
        ...                      generator=torch.Generator().manual_seed(0))
        >>> noisy(U).shape
        torch.Size([2])
    """

    def __init__(
        self,
        rule: AggregationRule | Callable[..., Tensor],
        clip_norm: float,
        noise_sigma: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_rule(rule)
        self.rule = rule
        self.clip_norm = check_nonnegative_finite("clip_norm", clip_norm)
        self.noise_sigma = check_nonnegative_finite("noise_sigma", noise_sigma)
        self.generator = check_generator(generator)

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise per coordinate: ``noise_sigma * clip_norm`` (0 without clipping)."""
        return self.noise_sigma * self.clip_norm

    def aggregate_fused(
        self, updates: Tensor, weights: Tensor | None, agent_ids: list[Hashable] | None, check_finite: bool
    ) -> Tensor:
        norms = None
        if self.clip_norm > 0:
            norms = torch.linalg.vector_norm(updates, dim=1)
        if check_finite:
            check_finite_rows(updates, norms)  # a row's norm is non-finite if the row is
        scale, n_clipped = clip_scale(updates, self.clip_norm, norms)
        if scale is None:
            out = call_inner(self.rule, updates, weights, agent_ids)
        elif type(self.rule) is FedAvg:
            # FedAvg is linear in each row: fold the clipping factors into its weights
            # instead of materialising a clipped copy of the matrix.
            out = self.rule.aggregate_row_scaled(updates, scale, weights)
        else:
            out = call_inner(self.rule, updates * scale.unsqueeze(1), weights, agent_ids)
        std = self.noise_std
        if std > 0:
            out = out + gaussian_noise(out, std, self.generator)
        self.telemetry = {
            "n_clipped": n_clipped,
            "noise_std": std,
            "inner": inner_telemetry(self.rule),
        }
        return out

    def __repr__(self) -> str:
        return (
            f"ClipAndNoise({self.rule!r}, clip_norm={self.clip_norm!r}, "
            f"noise_sigma={self.noise_sigma!r})"
        )


class NormBounding(FusedCheckRule):
    r"""Norm bounding (Sun et al. 2019, "Can you really backdoor federated learning?").

    Clip every update to L2 norm at most ``bound``, then aggregate with ``rule``:

    .. math:: g(\Delta) = \mathrm{rule}\Big(\Big\{\Delta^k \min\Big(1, \frac{M}{\|\Delta^k\|_2}\Big)\Big\}_k\Big)

    with ``M = bound``. This is :class:`ClipAndNoise` without noise (Sun et al.'s "weak
    differential privacy" adds the noise; use ``ClipAndNoise`` for that), under the paper's
    name; the clipping is ``ClipAndNoise``'s (see :func:`clip_updates`), and FedAvg folds the
    clipping factors into its weights instead of copying the matrix.

    Args:
        rule: the rule that aggregates the clipped updates; ``None`` (the default) is ``FedAvg()``.
        bound: ``M``, the L2 bound, a finite number > 0.

    Telemetry: ``n_clipped`` (agents whose update was scaled down), ``bound``, and ``inner``
    (the wrapped rule's telemetry).

    Example:
        >>> import torch
        >>> U = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
        >>> nb = NormBounding(bound=1.0)      # FedAvg of [0.6, 0.8] and [0.3, 0.4]
        >>> nb(U)
        tensor([0.4500, 0.6000])
        >>> nb.telemetry["n_clipped"]
        1
    """

    def __init__(self, rule: AggregationRule | Callable[..., Tensor] | None = None, bound: float | None = None) -> None:
        super().__init__()
        if isinstance(rule, (int, float)) and not isinstance(rule, bool):
            raise ValueError(
                f"NormBounding's first argument is the rule, got the number {rule!r}; "
                f"write NormBounding(bound={rule!r}) or NormBounding(FedAvg(), bound={rule!r})"
            )
        if bound is None:
            raise ValueError("NormBounding needs bound, the L2 norm bound M > 0; e.g. NormBounding(FedAvg(), bound=3.0)")
        rule = FedAvg() if rule is None else rule
        check_rule(rule)
        try:
            value = check_nonnegative_finite("bound", bound)
        except ValueError:
            value = -1.0
        if value <= 0 or isinstance(bound, bool):
            raise ValueError(
                f"bound must be a finite number > 0 (an L2 norm bound), got {bound!r}; "
                f"to aggregate without clipping use the rule itself"
            )
        self.rule = rule
        self.bound = value
        self._clip = ClipAndNoise(rule, clip_norm=value)

    def aggregate_fused(
        self, updates: Tensor, weights: Tensor | None, agent_ids: list[Hashable] | None, check_finite: bool
    ) -> Tensor:
        return self._done(self._clip.aggregate_fused(updates, weights, agent_ids, check_finite))

    def _done(self, out: Tensor) -> Tensor:
        clip_telemetry = self._clip.telemetry
        self.telemetry = {"n_clipped": clip_telemetry["n_clipped"], "bound": self.bound, "inner": clip_telemetry["inner"]}
        return out

    def __repr__(self) -> str:
        return f"NormBounding({self.rule!r}, bound={self.bound!r})"
