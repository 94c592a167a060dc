"""Pieces shared by the models: explicit dropout masks, drawn from a seeded generator, for the
built-in models (``dropout_shapes``) and for a plugged model's plain ``nn.Dropout`` layers."""

from __future__ import annotations

from typing import Sequence

import torch


def make_dropout_masks(shapes: Sequence[tuple[tuple[int, ...], float]], batch: int,
                       generator: torch.Generator, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Inverted-dropout masks (0 or 1/(1-p)) for one batch, drawn from ``generator``.

    ``dtype``: the activations' dtype (bf16 under autocast), so that the multiplication by
    the mask neither promotes the activations to fp32 nor mixes dtypes in its backward
    pass (both slow). The draws do not depend on ``dtype``, and 0 and 2 (p = 0.5) are exact in
    bf16, so the masks' values do not either; for other p, 1/(1-p) is rounded to ``dtype``.
    """
    out = []
    for shape, p in shapes:
        keep = 1.0 - p
        size = (batch, *shape)
        if p == 0.5:
            # a fair coin per unit: randint is about 5x faster than bernoulli_ on the CPU
            m = torch.randint(0, 2, size, generator=generator, dtype=dtype)
        else:
            m = (torch.rand(size, generator=generator) < keep).to(dtype)
        out.append(m.mul_(1.0 / keep).to(device) if keep > 0 else m.to(device))
    return out


class MaskedDropout(torch.nn.Dropout):
    """``nn.Dropout`` that multiplies by a given mask when one is queued (see :func:`explicit_dropout`),
    and drops out as usual otherwise. It has no parameters or buffers, so a model's state dict is
    the same with it as with the ``nn.Dropout`` it replaces."""

    queue: list | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.queue is not None:
            return x * self.queue.pop(0)
        return super().forward(x)


def explicit_dropout(model: torch.nn.Module, sample: torch.Tensor) -> list[tuple[tuple[int, ...], float]] | None:
    """Make a model's plain ``nn.Dropout`` layers take explicit masks, so that every engine draws
    the same masks from the same seeded generator (as for the built-in models' ``dropout_shapes``).

    Replaces each ``nn.Dropout`` in place by a :class:`MaskedDropout` and returns the dropout
    shapes in call order (per sample, measured by one forward pass of ``sample``, a batch of one or
    more inputs, in train mode, without gradients and with the random state restored); drive it with
    :func:`call_with_masks`. None when the model has no dropout or declares ``dropout_shapes``
    itself. A :class:`ValueError` for dropout variants that drop other units (``Dropout1d/2d/3d``,
    ``AlphaDropout``): they keep drawing from torch's generator."""
    if hasattr(model, "dropout_shapes"):
        return None
    other = sorted({type(m).__name__ for m in model.modules()
                    if isinstance(m, torch.nn.modules.dropout._DropoutNd) and type(m) not in (torch.nn.Dropout,
                                                                                               MaskedDropout)})
    if other:
        raise ValueError(f"{', '.join(other)}: explicit masks are supported for nn.Dropout only")
    drops = [(name, m) for name, m in model.named_modules() if type(m) in (torch.nn.Dropout, MaskedDropout)]
    if not drops:
        return None
    for name, m in drops:
        if type(m) is torch.nn.Dropout:
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            new = MaskedDropout(m.p, m.inplace)
            setattr(parent, name.rpartition(".")[2], new)
    shapes: list[tuple[tuple[int, ...], float]] = []

    def record(mod, inputs, _out):
        shapes.append((tuple(inputs[0].shape[1:]), float(mod.p)))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, MaskedDropout)]
    was_training = model.training
    buffers = {n: b.clone() for n, b in model.named_buffers()}  # a train-mode pass moves batch-norm statistics
    model.train()
    try:
        with torch.no_grad(), torch.random.fork_rng():
            model(sample)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])
    model._robustlr_dropout_shapes = shapes  # type: ignore[assignment]
    return shapes


def call_with_masks(model: torch.nn.Module, x: torch.Tensor, masks: Sequence[torch.Tensor], forward=None):
    """``model(x)`` with the explicit dropout ``masks``: passed as the second argument to a model that
    declares ``dropout_shapes``, queued on the :class:`MaskedDropout` layers of one prepared by
    :func:`explicit_dropout`. ``forward(*args)``, if given, is called instead of ``model(*args)`` (a
    ``functional_call``)."""
    forward = forward or model
    if hasattr(model, "dropout_shapes"):
        return forward(x, masks)
    queue = list(masks)
    layers = [m for m in model.modules() if isinstance(m, MaskedDropout)]
    for m in layers:
        m.queue = queue
    try:
        return forward(x)
    finally:
        for m in layers:
            m.queue = None
