"""The paper's CIFAR-10 CNN and its batch-normalised variant."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from robustlr.models.cifar import CIFAR_MODELS, CifarCNN, build_cifar_model

PLAIN_SHAPES = {
    "conv1.weight": (64, 3, 3, 3), "conv1.bias": (64,),
    "conv2.weight": (128, 64, 3, 3), "conv2.bias": (128,),
    "conv3.weight": (256, 128, 3, 3), "conv3.bias": (256,),
    "fc1.weight": (128, 1024), "fc1.bias": (128,),
    "fc2.weight": (256, 128), "fc2.bias": (256,),
    "fc3.weight": (10, 256), "fc3.bias": (10,),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_params(c_in: int, c_out: int, k: int = 3, bias: bool = True) -> int:
    return c_out * (c_in * k * k + bias)


def linear_params(n_in: int, n_out: int) -> int:
    return n_out * (n_in + 1)


def reference_forward(model: CifarCNN, x: torch.Tensor, masks=None, bn_batch_stats: bool = False) -> torch.Tensor:
    """The forward pass the docstring documents, written out with torch.nn.functional and plain
    arithmetic (batch norm by its formula, not F.batch_norm): conv 3x3 (stride 1, no padding)
    [-> batch norm] -> ReLU -> 2x2 max pool, three times; flatten; [mask] fc1 ReLU [mask] fc2 ReLU
    [mask] fc3. ``bn_batch_stats``: normalise with the batch's mean and biased variance (training)
    instead of the running statistics (eval)."""
    sd = model.state_dict()
    h = x
    for i in (1, 2, 3):
        h = F.conv2d(h, sd[f"conv{i}.weight"], sd.get(f"conv{i}.bias"), stride=1, padding=0)
        if model.batch_norm:
            if bn_batch_stats:
                mean, var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)
            else:
                mean, var = sd[f"bn{i}.running_mean"], sd[f"bn{i}.running_var"]
            shape = (1, -1, 1, 1)
            h = (h - mean.view(shape)) / torch.sqrt(var.view(shape) + 1e-5)
            h = h * sd[f"bn{i}.weight"].view(shape) + sd[f"bn{i}.bias"].view(shape)
        h = F.max_pool2d(torch.clamp(h, min=0), kernel_size=2, stride=2)
    h = h.reshape(h.shape[0], -1)
    for i in (1, 2, 3):
        if masks is not None:
            h = h * masks[i - 1]
        h = h @ sd[f"fc{i}.weight"].T + sd[f"fc{i}.bias"]
        if i < 3:
            h = torch.clamp(h, min=0)
    return h


def randomise_batch_norm(model: CifarCNN, seed: int) -> None:
    """Non-trivial BN affine parameters and running statistics, so that a BN skipped or misplaced shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, c in ((1, 64), (2, 128), (3, 256)):
            bn = getattr(model, f"bn{i}")
            bn.weight.copy_(0.5 + torch.rand(c, generator=g, dtype=bn.weight.dtype))
            bn.bias.copy_(0.3 * torch.randn(c, generator=g, dtype=bn.bias.dtype))
            bn.running_mean.copy_(0.2 * torch.randn(c, generator=g, dtype=bn.running_mean.dtype))
            bn.running_var.copy_(0.5 + torch.rand(c, generator=g, dtype=bn.running_var.dtype))


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("num_classes", [10, 3])
def test_output_shape(batch_norm, num_classes):
    torch.manual_seed(0)
    model = CifarCNN(num_classes, batch_norm=batch_norm)
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, num_classes) and out.dtype == torch.float32


def test_parameter_count_of_every_layer_is_the_documented_one():
    # the docstring's table, and the same numbers from the layer sizes: conv out*(in*3*3 + 1), linear out*(in + 1)
    documented = {"conv1": 1_792, "conv2": 73_856, "conv3": 295_168, "fc1": 131_200, "fc2": 33_024, "fc3": 2_570}
    formula = {"conv1": conv_params(3, 64), "conv2": conv_params(64, 128), "conv3": conv_params(128, 256),
               "fc1": linear_params(256 * 2 * 2, 128), "fc2": linear_params(128, 256), "fc3": linear_params(256, 10)}
    assert formula == documented and sum(documented.values()) == 537_610
    model = CifarCNN()
    assert {name: n_params(getattr(model, name)) for name in documented} == documented
    # the head follows num_classes: 3 classes -> 256 * 3 + 3
    assert n_params(CifarCNN(3).fc3) == 771 and n_params(CifarCNN(3)) == 537_610 - 2_570 + 771
    bn = CifarCNN(batch_norm=True)
    assert {f"conv{i}": n_params(getattr(bn, f"conv{i}")) for i in (1, 2, 3)} == {
        "conv1": conv_params(3, 64, bias=False), "conv2": conv_params(64, 128, bias=False),
        "conv3": conv_params(128, 256, bias=False)}
    assert [n_params(getattr(bn, f"bn{i}")) for i in (1, 2, 3)] == [2 * 64, 2 * 128, 2 * 256]


def test_intermediate_shapes_are_the_documented_ones():
    model = CifarCNN().eval()
    seen = {}
    hooks = [getattr(model, name).register_forward_hook(
        lambda mod, inp, out, name=name: seen.__setitem__(name, (tuple(inp[0].shape), tuple(out.shape))))
        for name in ("conv1", "conv2", "conv3", "fc1", "fc2", "fc3")]
    model(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    # each conv's input is the previous conv's output after a 2x2 max pool (30 -> 15, 13 -> 6, 4 -> 2)
    assert seen == {
        "conv1": ((2, 3, 32, 32), (2, 64, 30, 30)),
        "conv2": ((2, 64, 15, 15), (2, 128, 13, 13)),
        "conv3": ((2, 128, 6, 6), (2, 256, 4, 4)),
        "fc1": ((2, 1024), (2, 128)),
        "fc2": ((2, 128), (2, 256)),
        "fc3": ((2, 256), (2, 10)),
    }


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("num_classes", [10, 3])
def test_eval_forward_equals_the_documented_computation(batch_norm, num_classes):
    torch.manual_seed(5)
    model = CifarCNN(num_classes, batch_norm=batch_norm).double()
    if batch_norm:
        randomise_batch_norm(model, seed=6)
    model.eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    out = model(x)
    expected = reference_forward(model, x)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    assert torch.equal(model(x), out)  # eval mode: no dropout, the same output every time
    # the reference is not trivially close to everything: another seed's model differs
    torch.manual_seed(8)
    other = CifarCNN(num_classes, batch_norm=batch_norm).double().eval()
    assert (other(x) - expected).abs().max() > 1e-3


@pytest.mark.parametrize("batch_norm", [False, True])
def test_train_forward_with_masks_equals_the_documented_computation(batch_norm):
    torch.manual_seed(9)
    model = CifarCNN(batch_norm=batch_norm).double().train()
    g = torch.Generator().manual_seed(10)
    x = torch.randn(6, 3, 32, 32, generator=g, dtype=torch.float64)
    # masks holding 0 or 1 / (1 - p) = 2, each layer's mask at its own position
    masks = [2.0 * (torch.rand(6, *shape, generator=g, dtype=torch.float64) < 0.5) for shape, _ in model.dropout_shapes()]
    expected = reference_forward(model, x, masks, bn_batch_stats=True)
    out = model(x, masks)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    # the masks matter: without them (all kept) the output is another one
    assert (reference_forward(model, x, None, bn_batch_stats=True) - expected).abs().max() > 1e-3
    if batch_norm:
        # one training step of the running statistics (momentum 0.1, from mean 0 and variance 1; the
        # running variance takes the unbiased batch variance), checked on the first block
        h = F.conv2d(x, model.conv1.weight.detach())
        torch.testing.assert_close(model.bn1.running_mean, 0.1 * h.mean(dim=(0, 2, 3)), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(model.bn1.running_var, 0.9 + 0.1 * h.var(dim=(0, 2, 3), unbiased=True),
                                   rtol=1e-10, atol=1e-12)


def test_plain_layers_and_parameter_count():
    model = CifarCNN()
    assert {k: tuple(p.shape) for k, p in model.named_parameters()} == PLAIN_SHAPES
    assert n_params(model) == 537_610
    assert list(model.buffers()) == []
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.5, 0.5, 0.5]


def test_batch_norm_variant_parameters_and_buffers():
    model = build_cifar_model("cifar-cnn-bn")
    shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}
    # conv biases are dropped (a following batch norm cancels them); BN scale and shift added
    expected = {k: v for k, v in PLAIN_SHAPES.items() if not (k.startswith("conv") and k.endswith("bias"))}
    expected |= {f"bn{i}.{w}": (c,) for i, c in ((1, 64), (2, 128), (3, 256)) for w in ("weight", "bias")}
    assert shapes == expected
    assert n_params(model) == 538_058 == 537_610 - (64 + 128 + 256) + 2 * (64 + 128 + 256)
    buffers = {k: tuple(b.shape) for k, b in model.named_buffers()}
    assert buffers == {
        f"bn{i}.{name}": shape
        for i, c in ((1, 64), (2, 128), (3, 256))
        for name, shape in (("running_mean", (c,)), ("running_var", (c,)), ("num_batches_tracked", ()))
    }
    before = {k: b.clone() for k, b in model.named_buffers()}
    model.train()
    model(torch.randn(8, 3, 32, 32))
    after = dict(model.named_buffers())
    assert all(after[f"bn{i}.num_batches_tracked"].item() == 1 for i in (1, 2, 3))
    assert not torch.equal(after["bn1.running_mean"], before["bn1.running_mean"])


def test_build_by_name():
    assert CIFAR_MODELS == ("cifar-cnn", "cifar-cnn-bn")
    assert build_cifar_model("cifar-cnn").batch_norm is False
    assert build_cifar_model("cifar-cnn-bn", num_classes=5).fc3.out_features == 5
    with pytest.raises(ValueError, match="cifar-cnn-bn"):
        build_cifar_model("resnet18")


@pytest.mark.parametrize("batch_norm", [False, True])
def test_functional_call_matches_module(batch_norm):
    torch.manual_seed(1)
    model = CifarCNN(batch_norm=batch_norm).eval()
    x = torch.randn(3, 3, 32, 32)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert torch.allclose(functional_call(model, state, (x,)), model(x))
    # gradients with respect to a parameter dict, as the simulator's local training takes them
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    y = torch.tensor([0, 5, 7])

    def loss(p):
        return nn.functional.cross_entropy(functional_call(model, (p, buffers), (x,)), y)

    g = grad(loss)(params)
    assert g.keys() == params.keys() and all(g[k].shape == params[k].shape for k in params)
    assert all(torch.equal(params[k], v) for k, v in model.named_parameters())  # untouched


def test_dropout_follows_the_torch_seed():
    model = CifarCNN().train()
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(3)
    a = model(x)
    torch.manual_seed(3)
    b = model(x)
    c = model(x)
    assert torch.equal(a, b) and not torch.equal(b, c)
    model.eval()
    assert torch.equal(model(x), model(x))


def test_explicit_dropout_masks():
    torch.manual_seed(4)
    model = CifarCNN()
    assert model.dropout_shapes() == [((1024,), 0.5), ((128,), 0.5), ((256,), 0.5)]
    x = torch.randn(2, 3, 32, 32)
    ones = [torch.ones(2, *shape) for shape, _ in model.dropout_shapes()]
    expected = model.eval()(x)
    model.train()
    assert torch.allclose(model(x, ones), expected)  # all-kept masks: no dropout at all
    last_off = ones[:2] + [torch.zeros(2, 256)]
    assert torch.allclose(model(x, last_off), model.fc3.bias.expand(2, -1))
    # what the vectorised engine does: per-agent parameters, batches and masks under vmap
    params = {k: torch.stack([v.detach(), v.detach() * 0.5]) for k, v in model.named_parameters()}
    xs, masks = torch.stack([x, x]), [torch.stack([m, m]) for m in ones]
    out = vmap(lambda p, xb, ms: functional_call(model, p, (xb, ms)))(params, xs, masks)
    assert out.shape == (2, 2, 10) and torch.allclose(out[0], expected, atol=1e-6)
