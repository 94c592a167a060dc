"""The paper's CIFAR-10 CNN and its batch-normalised variant."""

from __future__ import annotations

import pytest
import torch
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


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("num_classes", [10, 3])
def test_output_shape(batch_norm, num_classes):
    torch.manual_seed(0)
    model = CifarCNN(num_classes, batch_norm=batch_norm)
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, num_classes) and out.dtype == torch.float32


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
