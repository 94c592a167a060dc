"""IBA: a generator's sample-specific, bounded trigger, trained each round against the global model.

Nguyen, Nguyen, Le, Doan, Wong and others, NeurIPS 2023, "IBA: Towards Irreversible Backdoor Attacks
in Federated Learning", Section 4 (and the authors' published code for the details the paper leaves
open). The trigger is not a patch but an image-dependent perturbation ``T(x) = eps G(x)`` made by a
generator ``G`` (an autoencoder with a tanh output, so ``|G(x)| <= 1`` per pixel); a poisoned image
is ``x' = clip(x + eps G(x))``. The paper's objective (its eq. 3-4, from LIRA, Doan et al. 2021) is
bilevel: the generator is trained so that the model maps ``x'`` to the target, and the model is
trained on clean and poisoned images. Each attacked round the corrupt agents, before they train:

1. train ``G`` for ``iba_generator_epochs`` epochs (default 3, the authors' MNIST
   ``atk_model_train_epoch``) of Adam (lr ``iba_generator_lr``, default 1e-3, their MNIST
   ``atk_lr``) on the loss ``CE(f(clip(x + eps_t G(x))), target)`` over their clean base-class
   images, with the model ``f`` fixed at the global model the round starts from;
2. draw ``x' = clip(x + eps_t G(x))`` on each of their poisoned rows (so the trigger differs
   from image to image) and train on them as on any poisoned rows.

``eps_t = max(test_eps, eps (1 - decay)^t)``, ``t`` the attacked rounds before this one: the
authors' exponential decay of the training bound towards the test bound (``exponential_decay`` in
their code). Defaults from their MNIST script (``exps/iba_mnist_fedavg.sh``): ``atk_eps`` 0.3,
``atk_test_eps`` 0.05 and ``eps_decay`` 0.001 on MNIST's [-1, 1] scale, i.e. ``iba_eps`` 0.15 and
``iba_test_eps`` 0.025 of the [0, 1] pixel range here (robustlr states every bound in pixel units:
0.025 is 6.4 of 255 grey levels). The backdoor test set is the base class's test images drawn at
``test_eps``, as the authors test.

The paper's other two ingredients are robustlr's own switches and compose with this one: PGD onto
a norm ball around the global model (``pgd_radius``; the authors' ``--attack_method pgd``) and
training only the coordinates the benign updates change least (``neurotoxin_top_percent``; their
``--attack_method neurotoxin``, a Neurotoxin mask). The authors' FedAvg scripts use neither (their
``blackbox``), so neither is on by default.

robustlr's adaptation, stated:

- the generator is robustlr's own small convolutional autoencoder for any (C, H, W) image
  (two stride-2 convolutions and two transposed ones, batch norm and ReLU between, tanh out,
  resized to H x W when H or W is not a multiple of 4), not the authors' MNIST autoencoder or
  U-Net; it is built once per run from the run's seed and its weights persist from round to round
  (the checkpoint keeps them), each round's training starting a fresh Adam, as theirs does;
- the backdoor maps the base class to the target (every robustlr attack), where the authors map
  every class; ``G`` trains on the corrupt agents' base-class images (the clean versions of their
  poisoned rows), and the agents train on their data with those rows poisoned, where the authors
  add a poisoned copy of every image with weight 1 - alpha = 0.5;
- ``G`` trains against the global model the round starts from (the authors: against the attacker's
  local model after its round of training, the same model one aggregation later), in every
  attacked round (theirs: every round until the local backdoor reaches 85 %, then every other
  round); poisoning starts in the first attacked round (theirs: once the generator reaches 85 %);
- the poisoned images are rounded to uint8 pixels: a trigger is part of an image.

Threat model: the corrupt agents control their own data and training and see the global model each
round (as every agent does); they know nothing of the honest agents' data or updates. Their extra
work per round: ``iba_generator_epochs`` passes of the generator and the model over their poisoned
images, and one generator pass to draw them (``robustlr bench attacks``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["Generator", "IBASettings", "perturb", "round_eps", "train_generator"]


@dataclass(frozen=True)
class IBASettings:
    epochs: int = 3  # the authors' MNIST atk_model_train_epoch
    lr: float = 1e-3  # Adam's learning rate (their MNIST atk_lr)
    batch_size: int = 128  # their MNIST batch size


class Generator(nn.Module):
    """A small convolutional autoencoder with a tanh output: ``G(x)`` in [-1, 1], shaped like ``x``."""

    def __init__(self, channels: int, height: int, width: int):
        super().__init__()
        self.size = (height, width)
        self.encode = nn.Sequential(
            nn.Conv2d(channels, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.decode = nn.Sequential(
            nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.ConvTranspose2d(16, channels, 4, stride=2, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        out = self.decode(self.encode(x))
        if tuple(out.shape[-2:]) != self.size:
            out = F.interpolate(out, size=self.size, mode="bilinear", align_corners=False)
        return torch.tanh(out)


def round_eps(eps: float, test_eps: float, decay: float, attacked_before: int) -> float:
    """The bound of a round: ``max(test_eps, eps (1 - decay)^t)``, ``t`` the attacked rounds before it.

    Example:
        >>> round_eps(0.2, 0.05, 0.5, 0), round_eps(0.2, 0.05, 0.5, 1), round_eps(0.2, 0.05, 0.5, 3)
        (0.2, 0.1, 0.05)
    """
    return max(float(test_eps), float(eps) * (1.0 - float(decay)) ** int(attacked_before))


def perturb(images: Tensor, g: Tensor, eps: float, std: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """``clip(x + eps G(x))`` on normalised images: ``eps`` is in [0, 1] pixel units, so each channel
    moves by ``eps / std``; ``low``/``high`` are each channel's normalised pixel 0 and 255.

    Example:
        >>> x = torch.tensor([[[[0.0, 0.9]]]])
        >>> perturb(x, torch.tensor([[[[1.0, 1.0]]]]), 0.25, torch.tensor([0.5]), torch.tensor([-1.0]),
        ...         torch.tensor([1.0])).tolist()
        [[[[0.5, 1.0]]]]
    """
    step = (float(eps) / std.to(images.dtype)).view(1, -1, 1, 1)
    moved = images + step * g.to(images.dtype)
    return torch.maximum(torch.minimum(moved, high.view(1, -1, 1, 1)), low.view(1, -1, 1, 1))


def train_generator(generator: Generator, model: nn.Module, images: Tensor, target: int, eps: float, std: Tensor,
                    low: Tensor, high: Tensor, settings: IBASettings, gen: torch.Generator) -> list[float]:
    """Step 1 of the module's text: ``settings.epochs`` epochs of Adam on the generator; returns each
    epoch's mean backdoor loss. ``model`` is not modified (evaluation mode, no gradients kept);
    ``gen`` orders the batches."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"IBA needs at least one attacker image (N, C, H, W), got {tuple(images.shape)}")
    was_training = model.training
    model.eval()
    grads_on = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    generator.train()
    opt = torch.optim.Adam(generator.parameters(), lr=settings.lr)
    tgt = torch.full((len(images),), int(target), dtype=torch.int64, device=images.device)
    losses = []
    try:
        for _ in range(settings.epochs):
            total, n = 0.0, 0
            for rows in torch.randperm(len(images), generator=gen).split(settings.batch_size):
                x = images[rows]
                loss = F.cross_entropy(model(perturb(x, generator(x), eps, std, low, high)).float(), tgt[rows])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, n = total + float(loss.detach()) * len(rows), n + len(rows)
            losses.append(total / n)
    finally:
        generator.eval()
        model.train(was_training)
        for p, on in zip(model.parameters(), grads_on):
            p.requires_grad_(on)
    return losses
