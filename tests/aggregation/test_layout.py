"""ParamLayout: flatten/unflatten round trips, trainable masks, name resolution."""

import pytest
import torch
from torch import nn

from robustlr.aggregation import ParamLayout


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(12, 2)
        self.fc10 = nn.Linear(2, 2)
        self.fc10.bias.requires_grad_(False)
        self.register_buffer("scratch", torch.zeros(4), persistent=False)


def _trained() -> Net:
    torch.manual_seed(0)
    net = Net()
    net.train()
    for _ in range(3):
        net.bn(net.conv(torch.randn(4, 1, 4, 4)))
    return net


def test_entries_follow_state_dict_order():
    net = _trained()
    layout = ParamLayout.from_module(net)
    assert layout.names == tuple(net.state_dict())
    assert "scratch" not in layout.names  # non-persistent buffers are not state
    assert layout.numel == sum(t.numel() for t in net.state_dict().values())
    assert layout.offsets[0] == 0 and layout.offsets[1] == layout.numels[0]
    trainable = dict(zip(layout.names, layout.is_trainable))
    assert trainable["conv.weight"] and trainable["bn.weight"]
    assert not trainable["bn.running_mean"] and not trainable["bn.num_batches_tracked"]
    assert not trainable["fc10.bias"]  # frozen parameter
    assert layout.dtypes[layout.names.index("bn.num_batches_tracked")] == torch.int64
    assert len(layout) == len(layout.entries) == 11


def test_round_trip_with_batch_norm():
    net = _trained()
    layout = ParamLayout.from_module(net)
    vec = layout.flatten(net)
    assert vec.dtype == torch.float32 and vec.shape == (layout.numel,)
    state = layout.unflatten(vec)
    for name, tensor in net.state_dict().items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name
    assert state["bn.num_batches_tracked"].item() == 3
    # the result does not alias the vector
    vec.zero_()
    assert state["conv.weight"].abs().sum() > 0
    other = Net()
    other.load_state_dict(state)
    assert torch.equal(layout.flatten(other.state_dict()), layout.flatten(net))


def test_unflatten_rounds_integer_buffers():
    layout = ParamLayout.from_module(nn.BatchNorm1d(2))
    vec = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 6.6])
    assert layout.unflatten(vec)["num_batches_tracked"].item() == 7


def test_masks_and_slices():
    net = _trained()
    layout = ParamLayout.from_module(net)
    sl = layout.slices()
    tm = layout.trainable_mask()
    assert tm[sl["conv.weight"]].all() and not tm[sl["bn.running_var"]].any()
    assert not tm[sl["fc10.bias"]].any()
    assert int(tm.sum()) == sum(p.numel() for p in net.parameters() if p.requires_grad)
    fc = layout.mask_for("fc")
    assert fc[sl["fc.weight"]].all() and fc[sl["fc.bias"]].all()
    assert not fc[sl["fc10.weight"]].any()  # "fc" is a module prefix, not a string prefix
    assert int(layout.mask_for(["bn.weight", "fc10"]).sum()) == 3 + 4 + 2


def test_errors_list_valid_names():
    layout = ParamLayout.from_module(nn.Linear(2, 1))
    with pytest.raises(ValueError, match=r"unknown parameter names \['bias2'\]; valid names: \['weight', 'bias'\]"):
        layout.mask_for(["bias2"])
    with pytest.raises(ValueError, match="missing \\['bias'\\]"):
        layout.flatten({"weight": torch.zeros(1, 2)})
    with pytest.raises(ValueError, match="shape"):
        layout.flatten({"weight": torch.zeros(2, 1), "bias": torch.zeros(1)})
    with pytest.raises(ValueError, match="vector has 2 entries, the layout has 3"):
        layout.unflatten(torch.zeros(2))
