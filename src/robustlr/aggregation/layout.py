"""A model's state (parameters and buffers) as one flat float vector, and back."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["ParamLayout", "LayoutEntry"]


class LayoutEntry(NamedTuple):
    """One state-dict entry of a :class:`ParamLayout`."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    numel: int
    is_trainable: bool


class ParamLayout:
    """Where each state-dict entry of a model lives in one flat vector.

    The vector holds every entry of ``model.state_dict()`` (parameters **and** persistent
    buffers such as batch-norm running statistics and ``num_batches_tracked``), in
    state-dict order, each flattened and cast to float32. An entry is *trainable* when it is
    a parameter with ``requires_grad=True``; buffers and frozen parameters are not.

    Attributes (one item per entry, in order): ``names``, ``shapes``, ``dtypes``,
    ``offsets``, ``numels``, ``is_trainable``; ``entries`` holds them as
    :class:`LayoutEntry` tuples. ``numel`` is the length of the whole vector.

    Integer buffers travel as float32: exact up to 2**24, rounded to the nearest integer by
    :meth:`unflatten`. Tied parameters appear once per state-dict name.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
        >>> layout = ParamLayout.from_module(model)
        >>> layout.names
        ('0.weight', '0.bias', '1.weight', '1.bias', '1.running_mean', '1.running_var', '1.num_batches_tracked')
        >>> layout.numel, layout.trainable_mask().sum().item()
        (22, 15)
        >>> vec = layout.flatten(model)
        >>> state = layout.unflatten(vec)
        >>> all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        True
        >>> layout.mask_for(["1"]).nonzero().flatten().tolist()[:3]
        [9, 10, 11]
    """

    def __init__(self, entries: Iterable[LayoutEntry]) -> None:
        self.entries: tuple[LayoutEntry, ...] = tuple(entries)
        names = [e.name for e in self.entries]
        if len(set(names)) != len(names):
            raise ValueError("layout entries must have distinct names")
        offset = 0
        for e in self.entries:
            if e.offset != offset:
                raise ValueError(f"entry {e.name!r} starts at {e.offset}, expected {offset} (entries must be contiguous)")
            offset += e.numel
        self.numel: int = offset
        self.names: tuple[str, ...] = tuple(names)
        self.shapes: tuple[tuple[int, ...], ...] = tuple(e.shape for e in self.entries)
        self.dtypes: tuple[torch.dtype, ...] = tuple(e.dtype for e in self.entries)
        self.offsets: tuple[int, ...] = tuple(e.offset for e in self.entries)
        self.numels: tuple[int, ...] = tuple(e.numel for e in self.entries)
        self.is_trainable: tuple[bool, ...] = tuple(e.is_trainable for e in self.entries)
        self._index = {e.name: i for i, e in enumerate(self.entries)}

    @classmethod
    def from_module(cls, model: nn.Module) -> ParamLayout:
        """The layout of ``model.state_dict()``."""
        if not isinstance(model, nn.Module):
            raise ValueError(f"from_module needs a torch.nn.Module, got {type(model).__name__}")
        trainable = {name for name, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}
        entries = []
        offset = 0
        for name, tensor in model.state_dict().items():
            n = tensor.numel()
            entries.append(LayoutEntry(name, tuple(tensor.shape), tensor.dtype, offset, n, name in trainable))
            offset += n
        return cls(entries)

    @property
    def n_params(self) -> int:
        """Length of the flat vector (same as ``numel``)."""
        return self.numel

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        n_train = sum(n for n, t in zip(self.numels, self.is_trainable) if t)
        return f"ParamLayout({len(self.entries)} entries, {self.numel} coordinates, {n_train} trainable)"

    def slices(self) -> dict[str, slice]:
        """``{name: slice}`` of each entry in the flat vector."""
        return {e.name: slice(e.offset, e.offset + e.numel) for e in self.entries}

    def flatten(
        self, state: nn.Module | Mapping[str, Tensor], *, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """One ``(numel,)`` vector of ``state`` (a module or a state dict), cast to ``dtype``.

        The vector is on the device of the state's tensors. Keys and shapes must match the
        layout exactly.
        """
        if isinstance(state, nn.Module):
            state = state.state_dict()
        if not isinstance(state, Mapping):
            raise ValueError(f"flatten needs a module or a state dict, got {type(state).__name__}")
        missing = [n for n in self.names if n not in state]
        unexpected = [k for k in state if k not in self._index]
        if missing or unexpected:
            raise ValueError(
                f"state does not match the layout: missing {missing}, unexpected {unexpected}; "
                f"valid names: {list(self.names)}"
            )
        parts = []
        for e in self.entries:
            t = state[e.name]
            if tuple(t.shape) != e.shape:
                raise ValueError(f"{e.name!r} has shape {tuple(t.shape)}, the layout expects {e.shape}")
            parts.append(t.detach().reshape(-1).to(dtype))
        if not parts:
            return torch.empty(0, dtype=dtype)
        return torch.cat(parts)

    def unflatten(self, vector: Tensor) -> dict[str, Tensor]:
        """A state dict (``OrderedDict``, layout order) from a flat vector.

        Each entry is reshaped and cast back to its own dtype; integer and bool entries are
        rounded to the nearest integer first. The tensors are new (they do not share memory
        with ``vector``) and live on its device.
        """
        if not isinstance(vector, Tensor) or vector.ndim != 1:
            raise ValueError("unflatten needs a 1-D tensor")
        if vector.shape[0] != self.numel:
            raise ValueError(f"vector has {vector.shape[0]} entries, the layout has {self.numel}")
        out: OrderedDict[str, Tensor] = OrderedDict()
        for e in self.entries:
            part = vector[e.offset : e.offset + e.numel].reshape(e.shape)
            if not (e.dtype.is_floating_point or e.dtype.is_complex):
                part = torch.round(part)
            out[e.name] = part.to(e.dtype, copy=True)
        return out

    def trainable_mask(self) -> Tensor:
        """Bool ``(numel,)`` tensor, True on the coordinates of trainable parameters."""
        mask = torch.zeros(self.numel, dtype=torch.bool)
        for e in self.entries:
            if e.is_trainable:
                mask[e.offset : e.offset + e.numel] = True
        return mask

    def weight_mask(self) -> Tensor:
        """Bool ``(numel,)`` tensor, True on the trainable entries of two or more dimensions: the
        weights of convolutions and linear layers, not biases nor normalisation scales and shifts
        (one dimension) nor buffers.

        Example:
            >>> from torch import nn
            >>> layout = ParamLayout.from_module(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)))
            >>> layout.weight_mask().nonzero().flatten().tolist()
            [0, 1, 2, 3, 4, 5]
        """
        mask = torch.zeros(self.numel, dtype=torch.bool)
        for e in self.entries:
            if e.is_trainable and len(e.shape) >= 2:
                mask[e.offset : e.offset + e.numel] = True
        return mask

    def mask_for(self, names_or_prefixes: str | Iterable[str]) -> Tensor:
        """Bool ``(numel,)`` tensor, True on the entries named.

        Each item is an exact entry name (``"fc1.weight"``) or a module prefix (``"fc1"``
        selects ``fc1.weight`` and ``fc1.bias`` but not ``fc10.weight``). An item matching
        nothing is a ``ValueError`` listing the valid names.
        """
        if isinstance(names_or_prefixes, str):
            names_or_prefixes = [names_or_prefixes]
        mask = torch.zeros(self.numel, dtype=torch.bool)
        unknown = []
        for item in names_or_prefixes:
            if not isinstance(item, str):
                raise ValueError(f"parameter names must be strings, got {item!r}")
            hits = [e for e in self.entries if e.name == item or e.name.startswith(item + ".")]
            if not hits:
                unknown.append(item)
            for e in hits:
                mask[e.offset : e.offset + e.numel] = True
        if unknown:
            raise ValueError(f"unknown parameter names {unknown}; valid names: {list(self.names)}")
        return mask

    def output_layer(self, num_classes: int, *, trainable_only: bool = False) -> OutputLayer:
        """Where the model's output layer (its last linear layer) lives: the last trainable entry of
        two dimensions with ``num_classes`` rows, and its bias (the entry of the same module named
        ``bias``, if any). DeepSight reads its update energies and FreqFed its frequencies.

        With ``trainable_only`` the positions are in the vector of trainable coordinates only (what
        a rule behind :class:`~robustlr.aggregation.PlainBuffers` sees). A model without such an
        entry is a ``ValueError`` naming the entries.

        Example:
            >>> from torch import nn
            >>> layout = ParamLayout.from_module(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)))
            >>> out = layout.output_layer(2)
            >>> out.weight, out.shape, out.bias
            (slice(28, 34, None), (2, 3), slice(34, 36, None))
            >>> layout.output_layer(2, trainable_only=True).weight
            slice(21, 27, None)
        """
        starts: dict[str, int] = {}
        position = 0
        for e in self.entries:
            if e.is_trainable or not trainable_only:
                starts[e.name] = position
                position += e.numel
        found = [e for e in self.entries if e.is_trainable and len(e.shape) == 2 and e.shape[0] == num_classes]
        if not found:
            raise ValueError(f"the model has no output layer: no trainable 2-D parameter with {num_classes} rows (one "
                             f"per class) among {[(e.name, e.shape) for e in self.entries]}; DeepSight and FreqFed "
                             f"read the last linear layer's weights")
        w = found[-1]
        prefix = w.name.rsplit(".", 1)[0] if "." in w.name else ""
        bias = next((e for e in self.entries if e.is_trainable and e.shape == (num_classes,)
                     and e.name == (f"{prefix}.bias" if prefix else "bias")), None)
        return OutputLayer(name=w.name, weight=slice(starts[w.name], starts[w.name] + w.numel), shape=w.shape,
                           bias=None if bias is None else slice(starts[bias.name], starts[bias.name] + bias.numel))


class OutputLayer(NamedTuple):
    """The output layer's place in a flat vector (:meth:`ParamLayout.output_layer`)."""

    name: str  # the weight's state-dict name
    weight: slice  # its coordinates, row-major (num_classes, fan_in)
    shape: tuple[int, ...]
    bias: slice | None  # the bias's coordinates, None if the layer has no bias
