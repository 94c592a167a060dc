"""The process-parallel engine gives bit-for-bit the updates of the in-process reference engine."""

import multiprocessing

import numpy as np
import pytest
import torch

from robustlr.aggregation import ParamLayout
from robustlr.client import LocalSettings, SequentialTrainer
from robustlr.config import make_config
from robustlr.federation import build_federation
from robustlr.models import build_model
from robustlr.parallel import ProcessTrainer
from robustlr.simulation import Simulation


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_process_engine_equals_sequential_engine_bitwise(tiny, monkeypatch, start_method):
    if start_method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {start_method} on this OS")
    monkeypatch.setenv("ROBUSTLR_START_METHOD", start_method)
    ds = tiny()
    x = (ds.train_x.float() / 255.0).contiguous()
    y = ds.train_y.clone()
    torch.manual_seed(0)
    model = build_model("mnist-cnn")
    layout = ParamLayout.from_module(model)
    settings = LocalSettings(epochs=2, batch_size=16, lr=0.1, momentum=0.9, grad_clip=10.0, clip_norm=2.0, seed=3)
    flat = layout.flatten(model).clone()
    indices = [np.arange(0, 80), np.arange(80, 120), np.arange(120, 240)]  # unequal sizes
    agents = [4, 0, 7]
    ref = torch.empty((3, layout.numel))
    seq = SequentialTrainer(build_model("mnist-cnn"), layout, settings, x, y, torch.device("cpu"))
    seq.train_into(ref, flat, indices, 5, agents)
    got = torch.empty_like(ref)
    with ProcessTrainer("mnist-cnn", 10, layout, settings, x.clone(), y.clone(), workers=2, max_agents=3) as par:
        par.train_into(got, flat, indices, 5, agents)
        again = torch.empty_like(ref)
        par.train_into(again, flat, indices, 5, agents)
    assert torch.equal(got, ref)
    assert torch.equal(again, ref)
    assert not torch.equal(ref[0], ref[2])


def _metrics(ds, **over):
    cfg = make_config({"rounds": 2, "num_agents": 4, "batch_size": 32, "local_epochs": 1, "checkpoint_every": 0,
                       "corrupt_fraction": 0.25, "rlr_threshold": 2, **over})
    fed = build_federation(cfg, ds)
    sim = Simulation(cfg, fed)
    res = sim.run()
    return [{k: v for k, v in m.items() if not k.startswith("seconds")} for m in res.metrics], sim.trainer.name


def test_numbers_do_not_depend_on_engine_or_core_count(tiny):
    ds = tiny()
    before = torch.get_num_threads()
    try:
        seq1, name1 = _metrics(ds, train_mode="sequential", threads=1)
        seq2, _ = _metrics(ds, train_mode="sequential", threads=2)
        par2, name2 = _metrics(ds, train_mode="processes", threads=2)
    finally:
        torch.set_num_threads(before)
    assert (name1, name2) == ("sequential", "processes")
    assert seq1 == seq2 == par2
