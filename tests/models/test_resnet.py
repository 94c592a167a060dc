"""The built-in ResNets: exact parameter counts (He et al.'s 0.27 M for ResNet-20; 11.17 M for the
CIFAR ResNet-18), batch norm's buffers vs group norm's none, option-A shortcuts without parameters,
and group norm trained by the vectorized engine as by the sequential one."""

import numpy as np
import pytest
import torch

from robustlr.models import build_model, has_batch_norm, model_spec
from robustlr.sim.config import make_config


@pytest.mark.parametrize("name, params, buffers", [
    ("resnet20-bn", 269_722, 1_395),   # 19 BN layers: 2 x 688 running stats + 19 counters
    ("resnet20-gn", 269_722, 0),
    ("resnet18-bn", 11_173_962, 9_620),
    ("resnet18-gn", 11_173_962, 0),
])
def test_parameter_counts_and_buffers(name, params, buffers):
    m = build_model(name, num_classes=10)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == params
    assert sum(b.numel() for b in m.buffers()) == buffers
    assert has_batch_norm(m) == name.endswith("-bn") == model_spec(name).batch_norm
    assert m.eval()(torch.zeros(3, 3, 32, 32)).shape == (3, 10)


def test_resnet20_shortcuts_pad_and_resnet18_projects():
    r20 = build_model("resnet20-gn", num_classes=10)
    assert not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) for m in r20.modules())
    r18 = build_model("resnet18-gn", num_classes=10)
    assert sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) for m in r18.modules()) == 3


def test_config_checks_the_resnets():
    cfg = make_config({"dataset": "cifar10", "model": "resnet20-bn"})
    assert cfg.batch_norm and "rlr_scope" not in cfg.inert_keys()
    with pytest.raises(ValueError, match="the vectorized engine does not support batch-norm models"):
        make_config({"dataset": "cifar10", "model": "resnet20-bn", "train_mode": "vectorized"})
    with pytest.raises(ValueError, match=r"model 'resnet20-gn' takes inputs of shape \(3, 32, 32\): it does not fit "
                                         r"fashion-mnist"):
        make_config({"model": "resnet20-gn"})


def test_group_norm_resnet_trains_alike_on_the_vectorized_and_sequential_engines():
    from robustlr.sim.engines import EngineContext, LocalSettings, build_engine

    torch.manual_seed(0)
    x, y = torch.randn(24, 3, 32, 32), torch.randint(0, 10, (24,))
    settings = LocalSettings(epochs=1, batch_size=4, lr=0.05, momentum=0.9, grad_clip=10.0, clip_norm=0.0, seed=1,
                             precision="fp32")
    idx = [np.arange(0, 12), np.arange(12, 24)]
    model = build_model("resnet20-gn", 10)
    from robustlr.aggregation import ParamLayout

    flat = ParamLayout.from_module(model).flatten(model)
    out = {}
    for mode in ("sequential", "vectorized"):
        ctx = EngineContext("resnet20-gn", 10, settings, x, y, idx, torch.device("cpu"), max_agents=2)
        engine = build_engine(ctx, mode)
        out[mode] = engine.train_round(flat, [0, 1], 1).updates
        engine.close()
    assert out["sequential"].abs().max() > 1e-3
    torch.testing.assert_close(out["vectorized"], out["sequential"], rtol=1e-3, atol=1e-4)
