r"""CRFL (Xie, Chen, Chen, Li, "CRFL: Certifiably Robust Federated Learning against Backdoor Attacks",
ICML 2021): the global model's norm clipped and perturbed during training, parameter smoothing at
test time, and a certified radius for each test input.

CRFL is not an aggregation rule: it acts on the global *model*. During training, after each round's
aggregation (any rule: FedAvg in the paper), the server clips the model's parameter norm to
:math:`\rho_t` (:func:`crfl_rho`, :func:`clip_model`) and sends the agents of the next round the
clipped model plus Gaussian noise :math:`\mathcal{N}(0, \sigma^2 I)` on every parameter (the
model it evaluates and keeps is the clipped one, without noise; the last round's is not
perturbed). At test time the prediction is the majority vote of ``M`` copies of the final model
each perturbed by :math:`\mathcal{N}(0, \sigma_T^2 I)` (:func:`smoothed_votes`), and an input's
prediction is certified not to change under any backdoor trigger of L2 norm up to its radius
(:func:`certified_radius`).

Every formula and default here is the authors' code's (AI-secure/CRFL: ``utils/helper.py``
clips and perturbs, ``certify_mnist.py`` bounds and certifies), as we could not read the paper's
text; where their code and their theory part ways we say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["crfl_rho", "clip_model", "hoeffding_bounds", "certified_radius", "CertificationSetting",
           "smoothed_votes"]


def crfl_rho(round_: int, slope: float, intercept: float, cap: float) -> float:
    r"""The norm bound of round ``round_``: :math:`\rho_t = \min(\text{cap}, \text{slope}\, t + \text{intercept})`
    (the authors' MNIST schedule: slope 0.1, intercept 2, cap 15; EMNIST 0.25, 4, 100).

    >>> crfl_rho(10, 0.1, 2.0, 15.0), crfl_rho(200, 0.1, 2.0, 15.0)
    (3.0, 15.0)
    """
    return min(float(cap), float(slope) * round_ + float(intercept))


def clip_model(params: Tensor, rho: float, mask: Tensor | None = None) -> float:
    r"""Clip, in place, the L2 norm of ``params`` (over the coordinates of ``mask``, the model's
    parameters: not its buffers) to ``rho``: ``params *= rho / (||params|| + 1e-6)`` when the norm
    exceeds ``rho`` (the authors' ``clip_weight_norm``); returns the scale applied (1.0 if none).

    >>> w = torch.tensor([3.0, 4.0, 7.0]); clip_model(w, 2.5, torch.tensor([True, True, False]))
    0.4999999...
    >>> w
    tensor([1.5000, 2.0000, 7.0000])
    """
    sel = params if mask is None else params[mask.to(params.device)]
    norm = float(torch.linalg.vector_norm(sel.to(torch.float64)))
    if norm <= rho:
        return 1.0
    scale = rho / (norm + 1e-6)
    if mask is None:
        params.mul_(scale)
    else:
        m = mask.to(params.device)
        params[m] = params[m] * scale
    return scale


def hoeffding_bounds(top: int, runner_up: int, copies: int, alpha: float) -> tuple[float, float]:
    r"""A lower bound on the smoothed model's top-class probability and an upper bound on the
    runner-up's from their vote counts among ``copies`` noisy models, each by Hoeffding's inequality
    at confidence ``1 - alpha``: :math:`h = \sqrt{\ln(1/\alpha) / (2M)}`,
    :math:`\underline{p_A} = \max(10^{-8}, \hat p_A - h)`, :math:`\overline{p_B} = \min(1 - 10^{-8}, \hat p_B + h)`
    (the authors' ``cal_prob_bound``).

    >>> [round(x, 4) for x in hoeffding_bounds(1000, 0, 1000, 0.001)]
    [0.9412, 0.0588]
    """
    h = math.sqrt(math.log(1.0 / alpha) / (2.0 * copies))
    return max(1e-8, top / copies - h), min(1.0 - 1e-8, runner_up / copies + h)


@dataclass(frozen=True)
class CertificationSetting:
    r"""What CRFL's certified radius depends on (the authors' ``certify()``): the training noise
    ``sigma`` and the test noise ``sigma_test``, the norm bounds ``rho`` (round -> :math:`\rho_t`),
    the attack (``attackers`` R, each of aggregation weight ``attacker_weight`` p_i; the round
    ``attack_round`` t_adv; the boost ``gamma``; the poisoned share of a batch ``poison_share``
    q_B / n_B), the agents' training (``local_iterations`` tau per round, ``client_lr`` eta) and the
    last round ``rounds`` T.

    .. math:: D = 2 R \tau^2 L_Z^2 \Big(\sum_i p_i^2\Big) \gamma^2 \eta^2 \Big(\frac{q_B}{n_B}\Big)^2
              \prod_{t = t_{adv}+1}^{T-1} \big(2\Phi(\rho_t/\sigma) - 1\big) \cdot \big(2\Phi(\rho_T/\sigma_T) - 1\big)

    with :math:`L_Z = \sqrt{2 + 2\rho_{adv} + \rho_{adv}^2}`. The authors hard-code
    :math:`\rho_{adv}` per dataset (3 for MNIST); here it is the schedule's bound at the attack
    round, :math:`\rho_{t_{adv}}`, which is what the constant stands for.
    """

    sigma: float
    sigma_test: float
    rho: tuple[float, ...]  # rho[t - 1] for rounds t = 1..T
    attackers: int
    attacker_weight: float
    attack_round: int
    gamma: float
    poison_share: float
    local_iterations: int
    client_lr: float

    @property
    def rounds(self) -> int:
        return len(self.rho)

    def denominator(self) -> float:
        """D, above."""
        phi = lambda z: 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))  # noqa: E731
        rho_adv = self.rho[self.attack_round - 1]
        lz2 = 2.0 + 2.0 * rho_adv + rho_adv ** 2
        contraction = 1.0
        for t in range(self.attack_round + 1, self.rounds):
            contraction *= 2.0 * phi(self.rho[t - 1] / self.sigma) - 1.0
        contraction *= 2.0 * phi(self.rho[-1] / self.sigma_test) - 1.0
        return (2.0 * self.attackers * self.local_iterations ** 2 * lz2 * self.attackers * self.attacker_weight ** 2
                * self.gamma ** 2 * self.client_lr ** 2 * self.poison_share ** 2 * contraction)


def certified_radius(p_a: float, p_b: float, setting: CertificationSetting) -> float:
    r"""The certified radius of one input: the L2 norm of a training-time trigger up to which the
    smoothed prediction provably stays the clean-trained one,

    .. math:: \mathrm{RAD} = \sqrt{-\ln\big(1 - (\sqrt{\underline{p_A}} - \sqrt{\overline{p_B}})^2\big)\, \sigma^2 / D}

    (the authors' formula). 0 when :math:`\underline{p_A} \le \overline{p_B}` (the authors' code
    would still give a positive radius there: the smoothed prediction is not certain at all; we
    abstain), and ``inf`` when :math:`\underline{p_A} = 1`.

    The authors' MNIST setting (20 agents, one attacker boosting x 10 in round 10 with 5 of its 100
    batch samples poisoned, 30 local steps of lr 0.001, sigma 0.01, rho_adv 3) and an input all
    1000 noisy copies agree on:

    >>> s = CertificationSetting(sigma=0.01, sigma_test=0.01, rho=(3.0,) * 100, attackers=1, attacker_weight=1 / 20,
    ...                          attack_round=10, gamma=10.0, poison_share=0.05, local_iterations=30, client_lr=0.001)
    >>> p_a, p_b = hoeffding_bounds(1000, 0, 1000, 0.001)
    >>> round(certified_radius(p_a, p_b, s), 3)
    1.986
    >>> certified_radius(0.4, 0.5, s)
    0.0
    """
    if p_a <= p_b:
        return 0.0
    if p_a >= 1.0:
        return math.inf
    gap = (math.sqrt(p_a) - math.sqrt(p_b)) ** 2
    return math.sqrt(-math.log(1.0 - gap) * setting.sigma ** 2 / setting.denominator())


def smoothed_votes(logits_of: "callable", params: Tensor, sigma: float, copies: int, n_classes: int,
                   generator: torch.Generator, mask: Tensor | None = None) -> Tensor:
    r"""Parameter smoothing: the votes ``(n_inputs, n_classes)`` of ``copies`` models, each
    ``params + N(0, sigma^2)`` on the coordinates of ``mask`` (the parameters; all if None), for
    the inputs that ``logits_of(params) -> (n_inputs, n_classes)`` runs. The noise is drawn on the
    CPU from ``generator``, one copy after the other.
    """
    votes = None
    for _ in range(copies):
        noise = torch.randn(params.shape, generator=generator, dtype=torch.float32).to(params.device) * sigma
        if mask is not None:
            noise = noise * mask.to(params.device)
        pred = logits_of(params + noise.to(params.dtype)).argmax(dim=1)
        counts = torch.nn.functional.one_hot(pred.cpu(), n_classes)
        votes = counts if votes is None else votes + counts
    return votes
