"""Shared checks of the trigger-optimising attacks (A3FL, F3BA, IBA)."""

import pytest
import torch

from robustlr.sim.federation import build_federation
from robustlr.sim.loop import Simulation


@pytest.fixture
def resume_check(tiny, tmp_path):
    """``check(cfg, on_resume=None)``: a run stopped after round 1 and resumed gives the uninterrupted
    run's numbers; ``on_resume(part, resumed)`` may check the rebuilt simulation before it runs."""

    def check(cfg, on_resume=None):
        whole = Simulation(cfg, build_federation(cfg, tiny()), out_dir=tmp_path / "whole").run()
        part = Simulation(cfg, build_federation(cfg, tiny()), out_dir=tmp_path / "cut")
        part.records.append(part.run_round(1))
        part._checkpoint(1)
        part.close()
        resumed = Simulation(cfg, build_federation(cfg, tiny()), out_dir=tmp_path / "cut")
        if on_resume is not None:
            on_resume(part, resumed)
        res = resumed.run()
        assert torch.equal(res.global_params, whole.global_params)
        assert res.records[-1].backdoor_acc == whole.records[-1].backdoor_acc

    return check

