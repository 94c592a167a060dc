"""``robustlr bench scale``: memory and per-round overhead at the paper's non-iid scale.

The paper's non-iid setting has 3,383 writers (one agent each, about 100 training samples per
writer) of which round(C*K) = 34 train per round. Without the real TensorFlow Federated file
this benchmark writes a SYNTHETIC file of the same layout and size
(:func:`robustlr.data.femnist.make_synthetic_tff_emnist`: 3,383 writers x 100 training and 12
test samples, about 1.2 GB of float32 h5 on disk), then runs a few rounds of the
``noniid-paper-rlr`` preset on it (FedAvg + RLR, theta 7, C 0.01, B 64) and reports

- the process's peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) after each
  stage: writing the files, loading them, building the federation, setting up the simulation,
  the rounds (target: under 2 GB);
- per round: seconds in local training, in aggregation, and everything else outside local
  training (agent sampling, the update buffer, finiteness check, norms, bookkeeping); the
  overhead share is ``(round - training) / round`` (target: under 5 %);
- one evaluation of the global model on the whole test split, timed apart from the rounds
  (the paper evaluates every 5 rounds).

Local epochs default to 1 instead of the paper's 10 to keep the benchmark short; as local
training is the only part that grows with E, the overhead share at E = 10 is at most a tenth of
the one measured at E = 1 (see ``overhead_share_at_paper_epochs``).
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

PAPER_WRITERS = 3383
PAPER_EPOCHS = 10


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def synthetic_files(folder: Path, writers: int, samples: int, test_samples: int,
                    progress: Callable[[str], None] = lambda m: None) -> tuple[Path, Path, bool]:
    """The synthetic train/test pair for these sizes in ``folder``, written unless already there.

    Returns ``(train, test, written)``. Files are named after their sizes and written under a
    temporary name first, so an interrupted run never leaves a partial file to be reused.
    """
    from robustlr.data.femnist import make_synthetic_tff_emnist

    folder.mkdir(parents=True, exist_ok=True)
    stem = f"synthetic-tff-emnist-{writers}w"
    train = folder / f"{stem}-{samples}-train.h5"
    test = folder / f"{stem}-{test_samples}-test.h5"
    written = False
    for path, n, seed in ((train, samples, 1), (test, test_samples, 2)):
        if path.is_file():
            continue
        progress(f"writing {path.name} ({writers} writers x {n} samples)")
        part = path.with_name(path.name + ".part")
        make_synthetic_tff_emnist(part, writers, n, seed=seed)
        os.replace(part, path)
        written = True
    return train, test, written


def run_scale_bench(
    writers: int = PAPER_WRITERS,
    samples: int = 100,
    test_samples: int = 12,
    rounds: int = 3,
    local_epochs: int = 1,
    batch_size: int = 64,
    participation: float = 0.01,
    rlr_threshold: float = 7,
    threads: int | None = None,
    data_folder: str | os.PathLike | None = None,
    evaluate_once: bool = True,
    progress: Callable[[str], None] = lambda m: None,
) -> dict:
    """Run the scale benchmark; return a dict of its measurements (see the module docstring).

    Args:
        writers, samples, test_samples: size of the synthetic file (writers x samples each).
        rounds: timed rounds (round 1 includes first-use costs; all are reported).
        local_epochs, batch_size, participation, rlr_threshold: the training setting
            (the paper's non-iid values except E; theta 0 = plain FedAvg).
        threads: torch intra-op threads (None = all cores).
        data_folder: where to keep the synthetic files for reuse; None = a temporary folder,
            deleted at the end.
        evaluate_once: also time one evaluation on the whole test split.
    """
    import numpy as np

    from robustlr.sim.config import load_config
    from robustlr.sim.evaluation import evaluate
    from robustlr.sim.federation import build_federation, load_dataset
    from robustlr.sim.loop import Simulation

    stages: dict[str, float] = {"start": peak_rss_mb()}
    tmp = None
    folder = Path(data_folder) if data_folder is not None else Path(tmp := tempfile.mkdtemp(prefix="robustlr-scale-"))
    try:
        t = time.perf_counter()
        train_h5, test_h5, written = synthetic_files(folder, writers, samples, test_samples, progress)
        seconds_write = time.perf_counter() - t
        stages["after writing the files" if written else "after finding the files"] = peak_rss_mb()

        overrides = [
            f'data_sources=["{train_h5.as_posix()}", "{test_h5.as_posix()}"]',
            f"num_agents={writers}",
            f"local_epochs={local_epochs}",
            f"batch_size={batch_size}",
            f"participation={participation}",
            f"rlr_threshold={rlr_threshold}",
            # one round more than timed, and no evaluation inside the timed rounds
            f"rounds={rounds + 1}",
            f"eval_every={rounds + 1}",
            "checkpoint_every=0",
            "name='bench-scale'",
        ]
        if threads is not None:
            overrides.append(f"threads={threads}")
        cfg = load_config("noniid-paper-rlr", overrides)

        progress("loading the files")
        t = time.perf_counter()
        ds = load_dataset(cfg)
        seconds_load = time.perf_counter() - t
        stages["after loading"] = peak_rss_mb()
        t = time.perf_counter()
        fed = build_federation(cfg, ds)
        seconds_federation = time.perf_counter() - t
        stages["after building the federation"] = peak_rss_mb()
        sim = Simulation(cfg, fed)
        stages["after setting up the simulation"] = peak_rss_mb()

        recs = []
        for r in range(1, rounds + 1):
            progress(f"round {r}/{rounds}")
            recs.append(sim.run_round(r))
        stages["after the rounds"] = peak_rss_mb()

        seconds_eval = None
        if evaluate_once:
            progress(f"evaluating on {fed.val_x.shape[0]} test samples")
            sim.model.load_state_dict(sim.layout.unflatten(sim.global_params))
            t = time.perf_counter()
            evaluate(sim.model, fed.val_x, fed.val_y, cfg.base_class, fed.backdoor_x, cfg.target_class)
            seconds_eval = time.perf_counter() - t
            stages["after one evaluation"] = peak_rss_mb()
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    per_round = [
        {
            "round": rec.round,
            "agents": rec.agents,
            "corrupt_in_round": rec.corrupt_in_round,
            "seconds": rec.seconds,
            "seconds_training": rec.seconds_training,
            "seconds_aggregation": rec.seconds_aggregation,
            "seconds_other": rec.seconds - rec.seconds_training - rec.seconds_aggregation,
            "overhead_share": (rec.seconds - rec.seconds_training) / rec.seconds,
        }
        for rec in recs
    ]
    total = sum(r["seconds"] for r in per_round)
    training = sum(r["seconds_training"] for r in per_round)
    overhead = (total - training) / total
    samples_per_round = float(np.mean([fed.agent_sizes[:].mean()])) * cfg.agents_per_round(fed.num_agents)
    return {
        "setting": {
            "writers": fed.num_agents,
            "train_samples": int(fed.train_x.shape[0]),
            "test_samples": int(fed.val_x.shape[0]),
            "agents_per_round": cfg.agents_per_round(fed.num_agents),
            "mean_samples_per_round": samples_per_round,
            "local_epochs": cfg.local_epochs,
            "batch_size": cfg.batch_size,
            "rlr_threshold": cfg.rlr_threshold,
            "threads": cfg.threads,
            "engine": sim.engine.name,
            "data_source": ds.source,
        },
        "peak_rss_mb": stages[list(stages)[-1]],
        "peak_rss_mb_by_stage": stages,
        "seconds_write_files": seconds_write if written else 0.0,
        "seconds_load": seconds_load,
        "seconds_build_federation": seconds_federation,
        "rounds": per_round,
        "seconds_per_round": total / len(per_round),
        "overhead_share": overhead,
        # local training scales with E, the rest does not
        "overhead_share_at_paper_epochs": (total - training) / (total - training + training * PAPER_EPOCHS / cfg.local_epochs),
        "seconds_evaluation": seconds_eval,
        "targets": {"peak_rss_mb": 2048, "overhead_share": 0.05},
    }


def format_scale_bench(res: dict) -> str:
    """A plain-text report of :func:`run_scale_bench`'s result."""
    s = res["setting"]
    lines = [
        f"bench scale: {s['writers']} writers, {s['train_samples']} train / {s['test_samples']} test samples "
        f"({s['data_source']})",
        f"  round: {s['agents_per_round']} agents x {s['mean_samples_per_round'] / max(1, s['agents_per_round']):.0f} "
        f"samples, E {s['local_epochs']}, B {s['batch_size']}, RLR theta {s['rlr_threshold']:g}, "
        f"threads {s['threads'] or 'all'}, {s['engine']} engine",
        "",
        "peak memory (max RSS) after each stage:",
    ]
    for stage, mb in res["peak_rss_mb_by_stage"].items():
        lines.append(f"  {stage:<34} {mb:8.0f} MiB")
    t = res["targets"]
    lines += [
        f"  peak {res['peak_rss_mb']:.0f} MiB (target < {t['peak_rss_mb']} MiB): "
        + ("OK" if res["peak_rss_mb"] < t["peak_rss_mb"] else "OVER"),
        "",
        f"load {res['seconds_load']:.1f} s, federation {res['seconds_build_federation']:.1f} s"
        + (f", writing the files {res['seconds_write_files']:.1f} s" if res["seconds_write_files"] else ""),
        "",
        "round  seconds  training  aggregation  other  overhead",
    ]
    for r in res["rounds"]:
        lines.append(f"{r['round']:5d}  {r['seconds']:7.2f}  {r['seconds_training']:8.2f}  "
                     f"{r['seconds_aggregation']:11.3f}  {r['seconds_other']:5.3f}  {100 * r['overhead_share']:7.2f} %")
    lines += [
        f"overhead outside local training: {100 * res['overhead_share']:.2f} % of the round at E {s['local_epochs']} "
        f"(target < {100 * t['overhead_share']:.0f} %): " + ("OK" if res["overhead_share"] < t["overhead_share"] else "OVER"),
        f"  at the paper's E {PAPER_EPOCHS}: about {100 * res['overhead_share_at_paper_epochs']:.2f} %",
    ]
    if res["seconds_evaluation"] is not None:
        lines.append(f"one evaluation on the {s['test_samples']} test samples: {res['seconds_evaluation']:.1f} s "
                     f"(not part of the rounds above)")
    return "\n".join(lines)
