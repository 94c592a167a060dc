"""attribute + explain + report on a tiny suite of real Fashion-MNIST runs (3 runs of 3 rounds on
300 images; code paths, not science). Budget: about 40-80 s on 2 cores."""

import json

from typer.testing import CliRunner

from robustlr.cli import app
from robustlr.experiments.suite import load_suite
from robustlr.experiments.sweep import sweep

SUITE = """name = "trio"
preset = "demo-iid"
[budget.lite]
rounds = 3
train_limit = 300
precision = "fp32"
eval_every = 1
checkpoint_every = 0
[[row]]
label = "fedavg_clean"
corrupt_fraction = 0.0
rlr_threshold = 0
[[row]]
label = "fedavg_attack"
rlr_threshold = 0
[[row]]
label = "rlr_attack"
"""


def test_attribution_and_explanation_reach_the_report(tmp_path, data_dir):
    (tmp_path / "trio.toml").write_text(SUITE)
    res = tmp_path / "res"
    state = sweep(load_suite(tmp_path / "trio.toml"), res, "lite", jobs=2, data_dir=str(data_dir))
    assert state.failed == []
    runs = {n: res / "trio" / f"trio-{n}" for n in ("fedavg_clean", "fedavg_attack", "rlr_attack")}
    cli = CliRunner()
    import torch

    model = torch.load(runs["rlr_attack"] / "model.pt", weights_only=True)
    (runs["rlr_attack"] / "model.pt").unlink()  # a compact run folder: the replay gives the model back
    out = cli.invoke(app, ["attribute", str(runs["fedavg_attack"]), str(runs["rlr_attack"]), "--samples", "32",
                           "--data-dir", str(data_dir)])
    assert out.exit_code == 0, out.output
    doc = json.loads((runs["rlr_attack"] / "attribution.json").read_text())
    assert doc["replay_matches_run"] is True  # the replay is the run again
    again = torch.load(runs["rlr_attack"] / "model.pt", weights_only=True)
    assert list(again) == list(model) and all(torch.equal(again[k], model[k]) for k in model)
    assert [r["round"] for r in doc["rounds"]] == [1, 2, 3] and doc["rounds"][0]["samples"] == 32
    # RLR rounds say how many of each set were flipped; the FedAvg run has no flips to report
    assert "n_S1_flipped" in doc["rounds"][0]
    # the authors' definition of Figure 4 beside ours, with their Fisher and with the slip fixed
    for key in ("authors", "authors_corrected"):
        rec = doc["rounds"][0][key]
        assert rec["net"] == rec["net_hon"] - rec["net_adv"] and rec["norm_S1"] >= 0
    assert "n_S1_flipped" not in json.loads((runs["fedavg_attack"] / "attribution.json").read_text())["rounds"][0]
    ex = cli.invoke(app, ["explain", *map(str, runs.values()), "--index", "0", "--samples", "50",
                          "--out", str(res / "trio" / "explain"), "--data-dir", str(data_dir)])
    assert ex.exit_code == 0, ex.output
    ed = json.loads((res / "trio" / "explain" / "explain.json").read_text())
    assert ed["index"] == 0 and [m["label"] for m in ed["models"]] == ["no attack", "FedAvg, attack",
                                                                         "FedAvg + RLR, attack"]
    rep = cli.invoke(app, ["report", str(res), "--out", str(tmp_path / "rep")])
    assert rep.exit_code == 0, rep.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "![trio-influence](trio-influence.png)" in md and "![trio-explain](trio-explain.png)" in md
    for png in ("trio-influence.png", "trio-explain.png"):
        assert (tmp_path / "rep" / png).stat().st_size > 10_000


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_explain_refuses_unfinished_runs_and_runs_of_different_settings(tmp_path):
    import torch

    from robustlr.sim.config import make_config

    bad = CliRunner().invoke(app, ["explain", str(tmp_path), str(tmp_path), str(tmp_path)])
    assert bad.exit_code == 2 and "holds no config.json" in _flat(bad.output)
    folders = []
    for name, dataset in (("a", "fashion-mnist"), ("b", "fashion-mnist"), ("c", "femnist-leaf")):
        f = tmp_path / name
        f.mkdir()
        (f / "config.json").write_text(make_config({"dataset": dataset, "name": name}).to_json())
        folders.append(str(f))
    no_model = CliRunner().invoke(app, ["explain", *folders])
    assert no_model.exit_code == 2 and "holds no model.pt" in _flat(no_model.output)
    for f in folders:
        torch.save({}, f"{f}/model.pt")
    mixed = CliRunner().invoke(app, ["explain", *folders])
    assert mixed.exit_code == 2 and "is not of the same setting" in _flat(mixed.output)
