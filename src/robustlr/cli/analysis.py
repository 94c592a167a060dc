"""``robustlr attribute`` (parameter attribution, Figure 4), ``robustlr explain`` (Gradient SHAP, Figure 5) and ``robustlr certify`` (CRFL)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robustlr.cli._common import DataDirOpt, console, fail, user_errors


@user_errors
def attribute(
    run_dirs: list[Path] = typer.Argument(..., help="finished run folders (written by `robustlr run` or `sweep`)"),
    k: int = typer.Option(100, "--k", min=1, help="top-k Fisher parameters per mapping (the paper: 100)"),
    samples: int = typer.Option(256, "--samples", min=1, help="trojaned validation images for the Fisher pass"),
    every: Optional[int] = typer.Option(None, "--every", min=1, help="every n-th round (default: the run's eval_every)"),
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """Replay each run with parameter attribution (the paper's appendix B) and write attribution.json beside it.

    The replay is the run itself again (runs are deterministic) plus a Fisher pass on the chosen
    rounds; it costs about one run, and it says whether it ended with the run's own numbers."""
    from robustlr.analysis.attribution import attribute_run

    for run_dir in run_dirs:
        if not (run_dir / "config.json").exists():
            fail(f"{run_dir} holds no config.json; give the folder of a run")
        path = attribute_run(run_dir, k=k, samples=samples, every=every, data_dir=str(data_dir) if data_dir else None)
        import json

        doc = json.loads(path.read_text())
        same = {True: "ends with the run's numbers", False: "DIFFERS from the run's numbers (another machine "
                "kind or torch version?)", None: "no summary to compare with"}[doc["replay_matches_run"]]
        console.print(f"wrote {path} ({len(doc['rounds'])} rounds; the replay {same})")


@user_errors
def explain(
    clean: Path = typer.Argument(..., help="run folder: FedAvg without attack"),
    attack: Path = typer.Argument(..., help="run folder: FedAvg under attack"),
    rlr: Path = typer.Argument(..., help="run folder: FedAvg + RLR under attack"),
    out: Path = typer.Option(Path("explain"), "--out", "-o", help="where explain.png and explain.json go"),
    index: Optional[int] = typer.Option(None, "--index", help="the trojaned validation image (default: the first "
                                        "the RLR model calls base and the FedAvg model calls target)"),
    samples: int = typer.Option(800, "--samples", min=1, help="Gradient SHAP samples per map"),
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """Gradient SHAP maps of three trained models on one trojaned image, as the paper's Figure 5."""
    from robustlr.analysis.features import explain_runs

    doc = explain_runs(clean, attack, rlr, out, index=index, n_samples=samples,
                       data_dir=str(data_dir) if data_dir else None)
    for m in doc["models"]:
        console.print(f"{m['label']:>22}: {m['prediction_name']} ({100 * m['confidence']:.1f} %), "
                      f"{100 * m['attribution_on_trojan']:.1f} % of the map on the trojan, "
                      f"completeness error {m['completeness_error']:.3f}")
    console.print(f"wrote {out / 'explain.png'} and {out / 'explain.json'} (image {doc['index']})")


@user_errors
def certify(
    run_dirs: list[Path] = typer.Argument(..., help="finished run folders trained with crfl = true"),
    copies: int = typer.Option(1000, "--copies", min=1, help="noisy copies of the final model voting on each input "
                               "(CRFL's M; the authors' 1000)"),
    alpha: float = typer.Option(0.001, "--alpha", min=0.0, max=1.0, help="1 - confidence of the Hoeffding bounds (the "
                                "authors' 0.001)"),
    limit: int = typer.Option(1632, "--limit", min=1, help="the first LIMIT test images (the authors' 1632) and as many "
                              "triggered base-class images"),
    sigma_test: Optional[float] = typer.Option(None, "--sigma-test", min=0.0, help="the smoothing noise's std "
                                               "(default: the run's crfl_sigma, as the authors)"),
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """CRFL's parameter smoothing and certified radii (Xie et al., ICML 2021): writes certify.json beside each run.

    The smoothed model votes with COPIES noisy copies of the final model; each clean test image's
    certified radius is the L2 norm (in the model's input space) of a training-time trigger under
    which its prediction provably stays. The cost is COPIES x (2 x LIMIT) forward passes."""
    from robustlr.analysis.certify import certify_run

    for run_dir in run_dirs:
        path = certify_run(run_dir, copies=copies, alpha=alpha, limit=limit, sigma_test=sigma_test,
                           data_dir=str(data_dir) if data_dir else None)
        import json

        doc = json.loads(path.read_text())
        cert = ", ".join(f"r {r}: {100 * a:.1f} %" for r, a in doc["certified_accuracy"].items())
        console.print(f"{run_dir}: smoothed val {100 * doc['smoothed_val_acc']:.1f} %, backdoor "
                      f"{100 * (doc['smoothed_backdoor_acc'] or 0):.1f} %; median radius {doc['radius_median']:.3g} "
                      f"(the trigger's norm {doc['trigger_norm_mean']:.3g}); certified accuracy {cert}")
        console.print(f"wrote {path}")


@user_errors
def layers(
    run_dirs: list[Path] = typer.Argument(..., help="run folders (finished or not: the rounds recorded so far)"),
    out: Path = typer.Option(Path("layers.png"), "--out", "-o", help="the figure (PNG)"),
    as_json: bool = typer.Option(False, "--json", help="print each run's per-array means as JSON instead"),
) -> None:
    """Vote telemetry per layer: RLR's flipped share per array and round, and (with telemetry_per_layer)
    each group's agreement with the step and update norm per array."""
    import json

    from robustlr.reports.plots import layer_summary, plot_layers
    from robustlr.sim.records import read_metrics

    runs = {}
    for run_dir in run_dirs:
        metrics = run_dir / "metrics.jsonl"
        if not metrics.exists():
            fail(f"{run_dir} holds no metrics.jsonl; give the folder of a run")
        runs[run_dir.name] = read_metrics(metrics)
    if as_json:
        print(json.dumps({name: layer_summary(recs) for name, recs in runs.items()}, indent=2))
        return
    try:
        path = plot_layers(runs, out, title="vote telemetry per layer")
    except ValueError as exc:
        fail(str(exc))
    console.print(f"wrote {path}")
