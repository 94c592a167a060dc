"""`robustlr bench engines`: every preset's round size, and ratios consistent with the times."""

import json

import pytest
from typer.testing import CliRunner

from robustlr.bench.engines import round_size
from robustlr.cli import app
from robustlr.sim.config import load_config


@pytest.mark.parametrize("preset, expected", [
    ("iid-fedavg", (10, 10, 6000)),              # Fashion-MNIST 60,000 / K 10, C 1
    ("demo-iid", (10, 10, 1200)),                # train_limit 12,000
    ("noniid-paper-rlr", (3383, 33, 101)),       # TFF digits 341,873 / 3,383 writers, floor(0.01 * 3,383) = 33
    ("demo-noniid", (293, 14, 100)),             # 293 LEAF writers, floor(0.05 * 293) = 14
    ("cifar-dba-paper-rlr", (40, 40, 1250)),     # CIFAR-10 50,000 / K 40
])
def test_round_size_of_every_kind_of_preset(preset, expected):
    assert round_size(load_config(preset)) == expected


def _bench(*args):
    res = CliRunner().invoke(app, ["bench", "engines", "--json", "--steps", "1", "--repeats", "1", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.output[res.output.index("{"):])


def test_ratios_are_the_ratios_of_the_reported_throughputs():
    out = _bench("--agents", "2")
    sps = out["samples_per_s"]
    assert {"processes", "sequential", "vectorized", "naive"} <= set(sps)
    fastest = out["fastest_fp32_engine"]
    assert sps[fastest] == max(sps[k] for k in ("processes", "sequential", "vectorized"))
    assert out["speedup_vs_naive"] == pytest.approx(sps[fastest] / sps["naive"], rel=1e-12)
    assert out["speedup_vs_sequential"] == pytest.approx(sps[fastest] / sps["sequential"], rel=1e-12)
    assert out["floor_fraction"] == pytest.approx(sps[fastest] / out["floor_samples_per_s"], rel=1e-12)
    assert out["samples_per_round"] == 6000 * 2 * 10
    for k, v in sps.items():
        assert out["seconds_per_round"][k] == pytest.approx(out["samples_per_round"] / v, rel=1e-12)
    # the paper's CNN on 28x28: 2 conv + 2 linear layers, ~71.6 MFLOP per training sample
    assert out["training_mflop_per_sample"] == pytest.approx(71.6, rel=0.01)
    # every engine as a share of the floor of its own precision; the bf16 floor from the bf16 matmul
    flops = out["training_mflop_per_sample"] * 1e6
    assert out["floor_samples_per_s"] == pytest.approx(out["matmul_gflops"] * 1e9 / flops, rel=1e-12)
    assert len(out["matmul_gflops_samples"]["fp32"]) == 4  # before and after the engines, twice each
    if out["floor_samples_per_s_bf16"] is not None:
        assert out["floor_samples_per_s_bf16"] == pytest.approx(out["matmul_gflops_bf16"] * 1e9 / flops, rel=1e-12)
        fastest_bf16 = out["fastest_bf16_engine"]
        assert sps[fastest_bf16] == max(v for k, v in sps.items() if k.endswith("-bf16"))
        assert out["floor_fraction_bf16"] == pytest.approx(sps[fastest_bf16] / out["floor_samples_per_s_bf16"], rel=1e-12)
    for k, v in sps.items():
        own = out["floor_samples_per_s_bf16"] if k.endswith("-bf16") else out["floor_samples_per_s"]
        if own is not None:
            assert out["floor_share"][k] == pytest.approx(v / own, rel=1e-12)


def test_naive_baseline_owns_a_reference_model_in_the_default_layout():
    """The baseline must not inherit our layout or layer order: its own model, contiguous,
    conv-ReLU-conv-ReLU-pool as reference code writes it, computing the same function."""
    import torch

    from robustlr.bench.naive import ReferenceMnistCNN, naive_model
    from robustlr.models import build_model

    ours = build_model("mnist-cnn", num_classes=10).to(memory_format=torch.channels_last).eval()
    ref = naive_model("mnist-cnn", 10, weights=ours).eval()
    assert type(ref) is ReferenceMnistCNN
    assert all(p.is_contiguous() for p in ref.parameters())
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(ref.parameters(), ours.parameters()))
    x = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(ref(x), ours(x), rtol=1e-5, atol=1e-6)
    cifar = naive_model("cifar-cnn", 10)
    assert all(p.is_contiguous() for p in cifar.parameters())


def test_bench_runs_on_cifar_and_noniid_presets():
    cifar = _bench("--preset", "cifar-dba-paper-rlr", "--agents", "2")
    assert (cifar["input_shape"], cifar["agents_per_round"]) == ([3, 32, 32], 40)
    assert "naive" in cifar["samples_per_s"]
    noniid = _bench("--preset", "noniid-paper-rlr", "--agents", "2")
    # extrapolated to the round's floor(C*K) = 33 agents, not K = 3,383
    assert (noniid["agents_per_round"], noniid["samples_per_agent"], noniid["samples_per_round"]) == (33, 101, 33 * 101 * 10)


def test_bench_times_a_model_and_dataset_defined_outside_robustlr(tmp_path, monkeypatch):
    """The tutorial's digits and CNN (import strings) in `robustlr bench engines`: its size comes from
    the loaded data (1,437 images / 20 agents), the vectorized engine runs its plain nn.Dropout, and
    data that is not images is refused with the reason."""
    pytest.importorskip("sklearn")
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "examples"))
    (tmp_path / "digits.toml").write_text(
        'dataset = "custom_model_and_data:load_digits"\nmodel = "custom_model_and_data:digits_cnn"\n'
        'num_agents = 20\nbatch_size = 32\nbase_class = 1\ntarget_class = 7\n')
    # and as on a CPU without native bf16 (AVX2 only): the bf16 engines are not timed, and it says why
    from robustlr.bench.engines import format_bench
    from robustlr.sim.engines import select

    monkeypatch.setattr(select, "bf16_is_native", lambda device: False)
    out = _bench("--preset", str(tmp_path / "digits.toml"), "--agents", "2")
    assert (out["input_shape"], out["samples_per_agent"]) == ([1, 8, 8], 1437 // 20)
    assert {"processes", "sequential", "vectorized", "naive"} <= set(out["samples_per_s"])
    assert not any(k.endswith("-bf16") for k in out["samples_per_s"]) and out["matmul_gflops_bf16"] is None
    assert "no native bf16" in out["bf16_skipped"] and "bf16 engines not timed" in format_bench(out)
    (tmp_path / "robustlr_bench_feats.py").write_text(
        "import torch\nfrom torch import nn\nfrom robustlr import ImageDataset\n"
        "def load():\n    x, y = torch.randn(40, 5), torch.arange(40) % 10\n"
        "    return ImageDataset('f', x, y, x.clone(), y.clone(), tuple('abcdefghij'))\n"
        "def mlp(k):\n    return nn.Linear(5, k)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "feat.toml").write_text('dataset = "robustlr_bench_feats:load"\nmodel = "robustlr_bench_feats:mlp"\n'
                                        'attack = "label-flip"\n')
    res = CliRunner().invoke(app, ["bench", "engines", "--preset", str(tmp_path / "feat.toml")])
    assert res.exit_code == 2 and "bench engines times image models" in " ".join(res.output.split()), res.output

