"""A3FL: a trigger optimised each round against the global model and its adversarially hardened twin.

Zhang, Jia, Chen, Lin and Wu, NeurIPS 2023, "A3FL: Adversarially Adaptive Backdoor Attacks to
Federated Learning", Algorithm 1 (and the authors' published code for the details the paper leaves
open). Each round the corrupt agents attack, before they train:

1. The trigger ``t`` (a pattern on a fixed region ``m`` of the image: ``x' = m t + (1 - m) x``)
   starts from last round's trigger.
2. For ``K`` iterations (``a3fl_iterations``, default 200, the authors' ``trigger_outter_epochs``):
   from the second iteration on, an **adversarial model** ``theta'`` is trained from the global
   model ``theta`` to *unlearn* the trigger, i.e. to classify the attackers' triggered images as
   their true class (``a3fl_adv_epochs`` = 5 epochs, SGD lr 0.01, momentum 0.9, weight decay 5e-4:
   the authors' ``dm_adv_epochs`` and optimiser; refreshed every iteration, their ``dm_adv_K = 1``);
   it stands for what the honest agents and the server's training will do to the backdoor. Then
   one pass over the attackers' images takes signed-gradient steps on the trigger::

       t <- clip(t - alpha sign(grad_t [CE(theta(x'), target) + lambda w CE(theta'(x'), target)]))

   with ``alpha`` = ``a3fl_lr`` (0.01 in normalised pixel units, the authors' ``trigger_lr``),
   ``lambda`` = ``a3fl_lambda`` (0.01, their ``noise_loss_lambda``) and ``w`` the mean cosine
   similarity, over the convolution and linear weight tensors, of the two models' gradients of the
   backdoor loss at the current trigger (the paper's ``sim(theta', theta)`` balancing term; the
   authors' code reads gradients left over from earlier passes, robustlr computes them fresh).
   ``clip`` keeps every pixel in the valid range of the dataset's normalisation.
3. The corrupt agents train on their poisoned rows with the new trigger drawn in place of the old.

robustlr's adaptation, stated: the region ``m`` is the config's trojan (e.g. the plus, where the
authors use a 5 x 5 patch at (2, 2)) and ``t`` starts as the trojan itself (drawn at the dataset's
ink), so round one's trigger before optimisation is the paper's trojan. The images optimised on are
the clean versions of all corrupt agents' poisoned rows (base-class images: the backdoor maps the
base class to the target, as every robustlr attack); the corrupt agents collude on one trigger
(the authors' code also keeps one trigger). The trigger is kept in float (and in the checkpoint)
and drawn as uint8 pixels, rounded: a trigger is an image patch. The global and the adversarial
models run in evaluation mode (no dropout, batch-norm running statistics frozen), so the search is
deterministic given the seed. The backdoor test set is redrawn with each round's trigger.

Threat model: the corrupt agents control their own data and training and see the global model each
round (as every agent does); they know nothing of the honest agents' data or updates. Their extra
work per round is ``K (1 + adv_epochs)`` passes over their poisoned images (``robustlr bench
attacks``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["A3FLSettings", "adversarial_model", "draw", "optimise_trigger", "quantise", "trigger_step"]


@dataclass(frozen=True)
class A3FLSettings:
    iterations: int = 200  # K: the authors' trigger_outter_epochs
    lr: float = 0.01  # alpha: the sign step, in normalised pixel units (their trigger_lr)
    adv_epochs: int = 5  # epochs of the adversarial model per iteration (their dm_adv_epochs)
    lam: float = 0.01  # lambda: the adversarial model's weight (their noise_loss_lambda)
    batch_size: int = 64  # the authors' batch size
    adv_lr: float = 0.01  # the adversarial model's SGD (their get_adv_model)
    adv_momentum: float = 0.9
    adv_weight_decay: float = 5e-4


def draw(images: Tensor, mask: Tensor, pattern: Tensor) -> Tensor:
    """``m t + (1 - m) x``: ``pattern`` (C, H, W) on the pixels of ``mask`` (H, W bool) of every image."""
    return torch.where(mask, pattern.to(images.dtype), images)


def trigger_step(pattern: Tensor, grad: Tensor, mask: Tensor, lr: float, low: Tensor, high: Tensor) -> Tensor:
    """One signed-gradient step on the trigger, on its region only, clipped to the valid pixel range.

    Example:
        >>> t = torch.zeros(1, 2, 2)
        >>> g = torch.tensor([[[0.3, -2.0], [0.0, 5.0]]])
        >>> m = torch.tensor([[True, True], [True, False]])
        >>> trigger_step(t, g, m, 0.5, torch.tensor([-0.25]), torch.tensor([1.0])).tolist()
        [[[-0.25, 0.5], [0.0, 0.0]]]
    """
    step = pattern - lr * torch.sign(grad) * mask
    return torch.maximum(torch.minimum(step, high.view(-1, 1, 1)), low.view(-1, 1, 1))


def _batches(n: int, size: int, gen: torch.Generator) -> list[Tensor]:
    return list(torch.randperm(n, generator=gen).split(size))


def _weight_grads(model: nn.Module, x: Tensor, target: Tensor) -> list[Tensor]:
    params = [p for n, p in model.named_parameters() if p.ndim >= 2]  # conv and linear weights
    loss = F.cross_entropy(model(x).float(), target)
    return list(torch.autograd.grad(loss, params))


def similarity(model: nn.Module, adv: nn.Module, x: Tensor, target: Tensor) -> float:
    """The mean cosine similarity, over the conv and linear weight tensors, of the two models'
    gradients of the backdoor loss on ``x`` (the balancing weight ``w``)."""
    ga, gb = _weight_grads(model, x, target), _weight_grads(adv, x, target)
    sims = [F.cosine_similarity(a.flatten(), b.flatten(), dim=0, eps=1e-8) for a, b in zip(ga, gb)]
    return float(torch.stack(sims).mean()) if sims else 0.0


def adversarial_model(model: nn.Module, images: Tensor, labels: Tensor, mask: Tensor, pattern: Tensor,
                      settings: A3FLSettings, gen: torch.Generator) -> nn.Module:
    """A copy of ``model`` trained to classify the triggered ``images`` as their true ``labels``
    (it unlearns the trigger), ``settings.adv_epochs`` epochs of SGD, in evaluation mode."""
    adv = copy.deepcopy(model)
    adv.eval()
    for p in adv.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD([p for p in adv.parameters() if p.requires_grad], lr=settings.adv_lr,
                          momentum=settings.adv_momentum, weight_decay=settings.adv_weight_decay)
    x_all = draw(images, mask, pattern)
    for _ in range(settings.adv_epochs):
        for rows in _batches(len(images), settings.batch_size, gen):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(adv(x_all[rows]).float(), labels[rows]).backward()
            opt.step()
    return adv


def optimise_trigger(model: nn.Module, images: Tensor, labels: Tensor, mask: Tensor, pattern: Tensor, target: int,
                     low: Tensor, high: Tensor, settings: A3FLSettings, gen: torch.Generator) -> Tensor:
    """Steps 2 of the module's text: the trigger after ``settings.iterations`` iterations.

    Args:
        model: the global model (not modified; used in evaluation mode).
        images: the attackers' clean images, normalised float (N, C, H, W); ``labels`` their classes.
        mask: the trigger's region, bool (H, W).
        pattern: the current trigger, normalised float (C, H, W).
        target: the backdoor's target class.
        low, high: per channel, the normalised values of pixel 0 and pixel 255.
        gen: the only source of randomness (batch order).
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"A3FL needs at least one attacker image (N, C, H, W), got {tuple(images.shape)}")
    was_training = model.training
    model.eval()
    t = pattern.detach().clone().float()
    tgt = torch.full((len(images),), int(target), dtype=torch.int64, device=images.device)
    try:
        adv, w = None, 0.0
        for it in range(settings.iterations):
            if it > 0:
                adv = adversarial_model(model, images, labels, mask, t, settings, gen)
                w = similarity(model, adv, draw(images, mask, t), tgt)
            for rows in _batches(len(images), settings.batch_size, gen):
                tt = t.clone().requires_grad_(True)
                x = draw(images[rows], mask, tt)
                loss = F.cross_entropy(model(x).float(), tgt[rows])
                if adv is not None:
                    loss = loss + settings.lam * w * F.cross_entropy(adv(x).float(), tgt[rows])
                (grad,) = torch.autograd.grad(loss, tt)
                t = trigger_step(t, grad, mask, settings.lr, low, high)
    finally:
        model.train(was_training)
        for p in model.parameters():
            p.grad = None
    return t


def quantise(pattern: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """The normalised trigger as uint8 pixels (rounded), (C, H, W)."""
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return torch.round((pattern.float() * s + m) * 255.0).clamp(0, 255).to(torch.uint8)
