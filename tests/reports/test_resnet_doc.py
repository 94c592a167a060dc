"""docs/resnet.md's table holds the committed ResNet runs' numbers (read only)."""

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "resnet" / "results"
RUNS = {"FedAvg, no attack": "clean", "FedAvg, attacked": "fedavg", "FedAvg + RLR (theta 8), attacked": "rlr"}


def _rows() -> list[list[str]]:
    text = (ROOT / "docs" / "resnet.md").read_text()
    section = text[text.index("## Numbers"):]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| ResNet-")]


def _expected(folder: Path) -> list[str]:
    summary = json.loads((folder / "summary.json").read_text())
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    at10 = next(r for r in records if r["round"] == 10)
    flipped = [r["flipped_fraction"] for r in records if r.get("flipped_fraction") is not None]
    return [f"{100 * at10['val_acc']:.1f}", f"{100 * at10['backdoor_acc']:.1f}",
            f"{100 * summary['val_acc']:.1f}", f"{100 * summary['base_acc']:.1f}",
            f"{100 * summary['backdoor_acc']:.1f}",
            f"{100 * sum(flipped) / len(flipped):.1f} %" if flipped else ""]


def test_every_cell_is_the_committed_run():
    rows = _rows()
    assert len(rows) == 6
    for model, label, *cells in rows:
        norm = model.removeprefix("ResNet-20-").lower()
        folder = RESULTS / f"cifar-resnet20-{norm}-{RUNS[label]}"
        summary = json.loads((folder / "summary.json").read_text())
        config = json.loads((folder / "config.json").read_text())
        assert summary["rounds"] == config["rounds"] == 20, folder.name
        assert config["model"] == f"resnet20-{norm}" and config["dirichlet_alpha"] == 0.5
        assert cells == _expected(folder), (model, label)


VARIANTS = {"RLR, theta 8 (the paper's rule)": "rlr", "RLR, conv/linear weights only": "rlr-weights",
            "RLR, soft": "rlr-soft", "RLR, soft, weights only": "rlr-soft-weights"}


def test_every_variant_cell_is_the_committed_run():
    text = (ROOT / "docs" / "resnet.md").read_text()
    section = text[text.index("## RLR's variants"):text.index("## Not run")]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| RLR")]
    assert [r[0] for r in rows] == list(VARIANTS)
    for label, keys, *cells in rows:
        folder = RESULTS / f"cifar-resnet20-bn-{VARIANTS[label]}"
        summary = json.loads((folder / "summary.json").read_text())
        config = json.loads((folder / "config.json").read_text())
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert summary["rounds"] == config["rounds"] == 20 and config["seed"] == 0
        assert config.get("rlr_soft", False) == ("soft" in label)  # the plain run predates the key
        assert config["rlr_scope"] == ("weights" if "weights" in label else "trainable")
        flipped = sum(r["flipped_fraction"] for r in records) / len(records)
        scales = [r["rlr_mean_scale"] for r in records if r.get("rlr_mean_scale") is not None]
        assert cells == [f"{100 * summary['val_acc']:.1f}", f"{100 * summary['base_acc']:.1f}",
                         f"{100 * summary['backdoor_acc']:.1f}", f"{100 * flipped:.1f} %",
                         f"{sum(scales) / len(scales):.3f}" if scales else ""], label


STUDY = ROOT / "docs" / "resnet" / "results" / "resnet20-bn-dir05"


def _study_cells(folder: Path) -> list[str]:
    summary = json.loads((folder / "summary.json").read_text())
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    at10 = next(r for r in records if r["round"] == 10)
    return [f"{100 * at10['val_acc']:.1f}", f"{100 * at10['backdoor_acc']:.1f}", f"{100 * summary['val_acc']:.1f}",
            f"{100 * summary['base_acc']:.1f}", f"{100 * summary['backdoor_acc']:.1f}"]


def test_the_studys_committed_runs_are_its_table():
    """docs/resnet.md's "first runs of the study" table: one row per committed run of resnet20-bn-dir05."""
    text = (ROOT / "docs" / "resnet.md").read_text()
    section = text[text.index("## The study's first runs"):text.index("## Not run")]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines()
            if line.startswith("| `")]
    folders = sorted(p for p in STUDY.iterdir() if (p / "summary.json").exists())
    assert [(r[0], r[1]) for r in rows] == [(f"`{json.loads((p / 'suite-run.json').read_text())['label']}`",
                                              str(json.loads((p / 'config.json').read_text())["seed"]))
                                             for p in folders]
    for row, folder in zip(rows, folders):
        config = json.loads((folder / "config.json").read_text())
        assert config["model"] == "resnet20-bn" and config["precision"] == "fp32" and config["poison_fraction"] == 1.0
        assert row[2:] == _study_cells(folder), folder.name
