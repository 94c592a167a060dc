"""Dropout masks in the activations' dtype: the same draws, and under bf16 autocast bitwise the
same forward and backward pass as fp32 masks (the speed change must not change a number)."""

import pytest
import torch
from torch.nn import functional as F

from robustlr.models import build_model, make_dropout_masks


@pytest.mark.parametrize("p", [0.5, 0.25])
def test_mask_values_do_not_depend_on_dtype(p):
    shapes = [((3, 4, 4), p), ((7,), p)]
    a = make_dropout_masks(shapes, 5, torch.Generator().manual_seed(1))
    b = make_dropout_masks(shapes, 5, torch.Generator().manual_seed(1), dtype=torch.bfloat16)
    assert [m.dtype for m in b] == [torch.bfloat16, torch.bfloat16]
    for ma, mb in zip(a, b):
        assert ma.shape == mb.shape
        if p == 0.5:  # 0 and 2 are exact in bf16
            assert torch.equal(ma, mb.float())
            assert set(ma.unique().tolist()) == {0.0, 2.0}
        else:  # the same keep/drop pattern; 1/(1-p) rounded to bf16
            assert torch.equal(ma > 0, mb > 0)


@pytest.mark.parametrize("model_name, shape", [("mnist-cnn", (1, 28, 28)), ("cifar-cnn", (3, 32, 32))])
def test_bf16_masks_under_autocast_give_bitwise_the_fp32_mask_gradients(model_name, shape):
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=10).to(memory_format=torch.channels_last).train()
    x = torch.randn(8, *shape)
    y = torch.randint(0, 10, (8,))
    grads = []
    for dtype in (torch.float32, torch.bfloat16):
        masks = make_dropout_masks(model.dropout_shapes(), 8, torch.Generator().manual_seed(2), dtype=dtype)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, masks)
        F.cross_entropy(out.float(), y).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
