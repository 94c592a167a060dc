"""F3BA, the focused-flip federated backdoor attack: a few unimportant weights' signs flipped to match
an optimised trigger, then trained on.

Fang and Chen, AAAI 2023, "On the Vulnerability of Backdoor Defenses for Federated Learning"
(section 4, and the authors' published code for what the paper leaves open). Each round the corrupt
agents attack (from the second round of the run: step 1 needs the previous global model):

1. **Candidates** (the code's ``kernel_selection = "movement"``): in every convolution and linear
   weight tensor, the entries whose *movement score* ``(w_t - w_{t-1}) * w_t`` lies strictly below
   the value at position ``floor(rate * n)`` of the tensor's ascending scores: the weights the last
   round pulled hardest towards zero, which the main task needs least. ``rate`` is ``conv_rate`` =
   0.02 for convolutions and ``fc_rate`` = 0.001 for linear layers (the authors' defaults;
   config ``f3ba_conv_rate``, ``f3ba_fc_rate``).
2. **Trigger** (``optimize_backdoor_trigger``): the first convolution's candidate weights are
   flipped to the trigger (step 3's rule); then, ``trigger_epochs`` = 2 passes over the attackers'
   images in batches of 64, gradient *ascent* with step 0.1 on the trigger of
   ``|| mean_{images, channels} relu(conv1(x')) - mean_{images, channels} relu(conv1(x)) ||^2``
   (``x'`` the image with the trigger drawn): the trigger that excites the flipped filters most;
   every pixel is kept in the valid range.
3. **Flips** (``inject_handcrafted_filters`` / ``_neurons``), layer by layer from the global model:
   a convolution filter's candidates take the sign of a pattern (the trigger for the first
   convolution; for a later one, the mean difference, over the attackers' images, of the previous
   convolution's activations with and without the trigger) resized to the kernel's size and scaled
   into the filter's value range, keeping their magnitude (``flip_factor`` = 1: a flipped weight
   keeps its magnitude). Then each hidden linear layer's candidates take the sign of the mean
   difference of its *input* features with and without the trigger (the output layer is left
   alone). The corrupt agents then train, as every agent does, on their poisoned data (with the
   optimised trigger drawn), **starting from the flipped model**; what they send is their local
   model minus the global one, so the flips are part of their update.

robustlr's reading of the code, stated: convolutions and linear layers are taken in the order the
model defines them (the paper's CNN and the ResNets define them in forward order); "activations"
are a layer's outputs through a ReLU; the trigger region is the config's trojan (the authors use a
patch at the image's corner) starting from the trojan itself; resizing is bilinear (with
anti-aliasing, as torchvision's ``Resize`` on tensors); the corrupt agents share one trigger and one
flipped model, computed on all their poisoned images (the authors' attackers each run it on their
own data); a pattern with a single value (no sign to copy) leaves the filters as they are. The
search runs in evaluation mode (no dropout, batch-norm statistics frozen): deterministic given the
seed.

Threat model: the corrupt agents control their own data and training and see the global model of
every round; they know nothing of the honest agents. Simulator only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from robustlr.attacks.a3fl import draw

__all__ = ["F3BASettings", "candidates", "flip_kernel", "flip_filters", "flip_neurons", "handcraft",
           "optimise_trigger", "layers"]


@dataclass(frozen=True)
class F3BASettings:
    conv_rate: float = 0.02  # the authors' Params.conv_rate
    fc_rate: float = 0.001  # Params.fc_rate
    flip_factor: float = 1.0  # Params.flip_factor
    trigger_epochs: int = 2  # optimize_backdoor_trigger's epochs
    trigger_lr: float = 0.1  # its ascent step
    batch_size: int = 64  # Params.batch_size


def candidates(current: Tensor, previous: Tensor, rate: float) -> Tensor:
    """Bool mask of the entries whose movement score ``(current - previous) * current`` is strictly
    below the ``floor(rate * n)``-th smallest score (0-based).

    Example:
        >>> w1 = torch.tensor([1.0, -2.0, 0.5, 3.0, -0.1])
        >>> w0 = torch.tensor([2.0, -1.0, 0.5, 1.0, 0.4])   # scores: -1, 2, 0, 6, 0.05
        >>> candidates(w1, w0, 0.4).tolist()    # strictly below position 2 of the sorted scores (0.05)
        [True, False, True, False, False]
    """
    if not 0 <= rate < 1:
        raise ValueError(f"rate must be in [0, 1), got {rate!r}")
    score = (current - previous) * current
    flat = torch.sort(score.flatten()).values
    theta = flat[int(flat.numel() * rate)]
    return score < theta


def _resize(pattern: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(pattern.shape[-2:]) == tuple(size):
        return pattern
    return F.interpolate(pattern[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def flip_kernel(kernel: Tensor, pattern: Tensor, flip_factor: float = 1.0) -> Tensor:
    """A filter (C, k, k) given the signs of ``pattern`` (C, h, w) resized to k x k and scaled into the
    filter's range; magnitudes kept (times ``flip_factor`` where a sign changed).

    Example:
        >>> k = torch.tensor([[[0.5, -1.0], [2.0, -0.25]]])
        >>> p = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])   # scaled into [-1, 2]: 2, -1, -1, 2
        >>> flip_kernel(k, p).tolist()
        [[[0.5, -1.0], [-2.0, 0.25]]]
    """
    scaled = _resize(pattern.to(kernel.dtype), tuple(kernel.shape[-2:]))
    p_min, p_max = scaled.min(), scaled.max()
    if not p_max > p_min:  # a flat pattern has no sign to copy
        return kernel.clone()
    c_min, c_max = kernel.min(), kernel.max()
    scaled = (scaled - p_min) / (p_max - p_min) * (c_max - c_min) + c_min
    out = torch.sign(scaled) * kernel.abs()
    changed = torch.sign(scaled) != torch.sign(kernel)
    return torch.where(changed, out * flip_factor, out)


def flip_filters(weight: Tensor, cand: Tensor, pattern: Tensor, flip_factor: float = 1.0) -> Tensor:
    """A convolution's weight (O, C, k, k) with each filter's candidates set by :func:`flip_kernel`."""
    out = weight.clone()
    for i in range(weight.shape[0]):
        if cand[i].any():
            out[i] = torch.where(cand[i], flip_kernel(weight[i], pattern, flip_factor), weight[i])
    return out


def flip_neurons(weight: Tensor, cand: Tensor, feature_diff: Tensor) -> Tensor:
    """A linear layer's weight (O, I) with its candidates given the sign of ``feature_diff`` (I,), the
    magnitude kept (a candidate whose feature the trigger does not move, difference exactly 0, becomes 0:
    the sign the authors' code multiplies by).

    Example:
        >>> w = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
        >>> c = torch.tensor([[True, True], [False, True]])
        >>> flip_neurons(w, c, torch.tensor([-0.5, 0.25])).tolist()
        [[-1.0, 2.0], [3.0, 4.0]]
    """
    ideal = torch.sign(feature_diff).to(weight.dtype).expand_as(weight)
    return torch.where(cand, weight.abs() * ideal, weight)


def layers(model: nn.Module) -> tuple[list[tuple[str, nn.Conv2d]], list[tuple[str, nn.Linear]]]:
    """The model's convolutions and linear layers, in definition order."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return convs, linears


def _batches(n: int, size: int, gen: torch.Generator) -> list[Tensor]:
    return list(torch.randperm(n, generator=gen).split(size))


@torch.no_grad()
def _mean_outputs(model: nn.Module, module: nn.Module, x: Tensor, batch_size: int, inputs: bool = False) -> Tensor:
    """The mean over ``x`` of ``module``'s output through a ReLU (or, with ``inputs``, of its input)."""
    seen: list[Tensor] = []

    def hook(mod, args, out):
        seen.append((args[0] if inputs else F.relu(out)).float().sum(0))

    handle = module.register_forward_hook(hook)
    try:
        for part in x.split(batch_size):
            model(part)
    finally:
        handle.remove()
    return torch.stack(seen).sum(0) / len(x)


def optimise_trigger(conv1: nn.Conv2d, images: Tensor, mask: Tensor, pattern: Tensor, low: Tensor, high: Tensor,
                     settings: F3BASettings, gen: torch.Generator) -> Tensor:
    """Step 2 of the module's text on a first convolution whose candidates are already flipped."""
    t = pattern.detach().clone().float()
    for _ in range(settings.trigger_epochs):
        for rows in _batches(len(images), settings.batch_size, gen):
            tt = t.clone().requires_grad_(True)
            x = images[rows]
            backdoor = F.relu(conv1(draw(x, mask, tt))).mean((0, 1))
            clean = F.relu(conv1(x)).mean((0, 1))
            loss = ((backdoor - clean) ** 2).sum()
            (grad,) = torch.autograd.grad(loss, tt)
            t = torch.where(mask, t + settings.trigger_lr * grad, t)
            t = torch.maximum(torch.minimum(t, high.view(-1, 1, 1)), low.view(-1, 1, 1))
    return t


def handcraft(model: nn.Module, previous: dict[str, Tensor], images: Tensor, mask: Tensor, pattern: Tensor,
              low: Tensor, high: Tensor, settings: F3BASettings, gen: torch.Generator) -> tuple[dict[str, Tensor], Tensor]:
    """Steps 1-3: the flipped model's state (a new state dict) and the optimised trigger.

    ``model`` holds the global weights (it is modified in place during the search and restored);
    ``previous`` is last round's global state dict. Needs a first convolution whose input channels
    are the images' channels.
    """
    convs, linears = layers(model)
    if not convs or convs[0][1].in_channels != images.shape[1]:
        raise ValueError("F3BA flips the first convolution's filters to the trigger: the model needs a Conv2d on the "
                         "input images first")
    was_training = model.training
    model.eval()
    raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        cand = {f"{n}.weight": candidates(m.weight.detach(), previous[f"{n}.weight"].to(m.weight.device),
                                          settings.conv_rate) for n, m in convs}
        cand |= {f"{n}.weight": candidates(m.weight.detach(), previous[f"{n}.weight"].to(m.weight.device),
                                           settings.fc_rate) for n, m in linears}
        name0, conv1 = convs[0]
        with torch.no_grad():
            conv1.weight.copy_(flip_filters(raw[f"{name0}.weight"], cand[f"{name0}.weight"], pattern,
                                            settings.flip_factor))
        trigger = optimise_trigger(conv1, images, mask, pattern, low, high, settings, gen)
        with torch.no_grad():
            model.load_state_dict(raw)
            backdoor = draw(images, mask, trigger)
            diff = trigger
            for n, m in convs:  # each filter flipped to the previous layer's activation difference
                m.weight.copy_(flip_filters(m.weight, cand[f"{n}.weight"], diff, settings.flip_factor))
                diff = (_mean_outputs(model, m, backdoor, settings.batch_size)
                        - _mean_outputs(model, m, images, settings.batch_size))
            for n, m in linears[:-1]:  # hidden layers: the sign of the input features' difference
                feat = (_mean_outputs(model, m, backdoor, settings.batch_size, inputs=True)
                        - _mean_outputs(model, m, images, settings.batch_size, inputs=True))
                m.weight.copy_(flip_neurons(m.weight, cand[f"{n}.weight"], feat.flatten()))
        crafted = {k: v.detach().clone() for k, v in model.state_dict().items()}
    finally:
        model.load_state_dict(raw)
        model.train(was_training)
    return crafted, trigger
