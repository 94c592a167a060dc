"""`robustlr bench profile` and `robustlr bench levers`: shapes of the output and ratios consistent with the times."""

import json

import pytest
import torch
from typer.testing import CliRunner

from robustlr.cli import app


def _json(*args):
    res = CliRunner().invoke(app, ["bench", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output[res.output.index("{"):])


def test_profile_reports_both_precisions_with_shares_of_the_profiled_time():
    import torch

    from robustlr.sim.engines.select import bf16_is_native

    out = _json("profile", "--steps", "1", "--top", "6")
    # bf16 is profiled where the CPU has it natively; on one that emulates it (AVX2 only) it is skipped
    native = bf16_is_native(torch.device("cpu"))
    assert set(out["precisions"]) == ({"fp32", "bf16"} if native else {"fp32"})
    assert set(out["skipped"]) == (set() if native else {"bf16"})
    for prec, r in out["precisions"].items():
        assert len(r["ops"]) == 6
        shares = [o["share"] for o in r["ops"]]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
        assert sum(o["ms_per_batch"] for o in r["ops"]) <= r["profiled_ms_per_batch"] * (1 + 1e-9)
        assert r["floor_share_1thread"] == pytest.approx(r["samples_per_s"] / r["floor_samples_per_s_1thread"], rel=1e-12)
        # the convolutions are among the costliest operators of the paper's CNN in both precisions
        assert "aten::convolution_backward" in [o["op"] for o in r["ops"]], prec


def test_levers_are_ratios_to_the_engines_step_of_their_precision():
    out = _json("levers", "--steps", "1", "--repeats", "1")
    rows = {r["lever"]: r for r in out["rows"]}
    assert "fp32 torch.compile" not in rows  # opt-in
    assert rows["fp32 (engines)"]["vs_engines"] == 1.0
    from robustlr.sim.engines.select import bf16_is_native

    if bf16_is_native(torch.device("cpu")):  # else the bf16 levers are not timed (emulated bf16)
        assert rows["bf16 autocast, bf16 masks (engines)"]["vs_engines"] == 1.0
    else:
        assert all(r["precision"] == "fp32" for r in rows.values())
    for r in rows.values():
        base = rows["fp32 (engines)" if r["precision"] == "fp32" else "bf16 autocast, bf16 masks (engines)"]
        assert r["vs_engines"] == pytest.approx(r["samples_per_s"] / base["samples_per_s"], rel=1e-9)


def test_levers_refuse_a_model_without_explicit_dropout_masks(monkeypatch):
    from robustlr.bench import profile

    monkeypatch.setattr(profile, "build_model", lambda *a, **k: object())
    with pytest.raises(ValueError, match="explicit dropout masks"):
        profile.run_levers(steps=1, repeats=1, progress=lambda m: None)
