"""A run in bf16 on a CPU without native bf16 kernels is warned, with the fix (fp32)."""

import logging

import torch

from robustlr.sim.engines import select


def test_bf16_without_native_kernels_is_warned_with_the_fix(monkeypatch):
    monkeypatch.setattr(select, "bf16_is_native", lambda device: False)
    text = select.bf16_warning("bf16", torch.device("cpu"))
    assert "no AVX-512 BF16 or AMX" in text and "--set precision=fp32" in text
    assert select.bf16_warning("fp32", torch.device("cpu")) is None
    monkeypatch.setattr(select, "bf16_is_native", lambda device: True)
    assert select.bf16_warning("bf16", torch.device("cpu")) is None


def test_the_probe_answers_yes_off_the_cpu_and_a_boolean_on_it():
    assert select.bf16_is_native(torch.device("cuda")) is True
    assert isinstance(select.bf16_is_native(torch.device("cpu")), bool)


def test_a_simulation_logs_the_warning_before_training(monkeypatch, caplog, tiny):
    from robustlr.sim.config import make_config
    from robustlr.sim.federation import build_federation
    from robustlr.sim.loop import Simulation

    monkeypatch.setattr(select, "bf16_is_native", lambda device: False)
    cfg = make_config({"dataset": "fashion-mnist", "num_agents": 4, "corrupt_fraction": 0.0, "rounds": 1,
                       "precision": "bf16"})
    with caplog.at_level(logging.WARNING, logger="robustlr"):
        Simulation(cfg, build_federation(cfg, tiny()))
    assert any("without native bf16" in r.getMessage() for r in caplog.records)
