"""``robustlr data`` and ``robustlr partition``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from robustlr.cli._common import ConfigArg, DataDirOpt, SetOpt, console, err, fail, styled, user_errors


@user_errors
def data(
    dataset: str = typer.Argument("fashion-mnist", help="fashion-mnist, cifar10, femnist-leaf, femnist-tff, or a "
                                  "plugged-in dataset (an entry point or an import string 'package.module:loader')"),
    data_dir: Optional[Path] = DataDirOpt,
    download: bool = typer.Option(False, "--download", help="download missing files into the cache when online"),
) -> None:
    """Show where each file of a dataset is found (verified by sha256 where its files are fixed);
    exit 1 if one is missing, with where to get it. A plugged-in dataset is loaded and described
    (origin, loader, sizes, sample shape, classes, fingerprint)."""
    from robustlr.data.store import DataNotFoundError, locate

    if dataset == "cifar10":
        _cifar10(data_dir)
        return
    if dataset in ("femnist-leaf", "femnist-tff"):
        _femnist(dataset, data_dir)
        return
    if dataset != "fashion-mnist":
        _plugged(dataset, data_dir)
        return
    from robustlr.data.fashion_mnist import DATASET_FILES

    missing = False
    for key, spec in DATASET_FILES.items():
        try:
            path = locate(spec, data_dir=data_dir, allow_download=download)
            console.print(f"{key:<13} {path}", highlight=False)
        except DataNotFoundError as exc:
            missing = True
            err.print(styled(f"{key:<13} ", ("missing", "red"), f"\n{exc}"), highlight=False)
    if missing:
        raise typer.Exit(1)


def _plugged(dataset: str, data_dir) -> None:
    from robustlr.data.registry import dataset_spec, fingerprint
    from robustlr.errors import DataError

    try:
        spec = dataset_spec(dataset)
        ds = spec.load(str(data_dir) if data_dir else None, [], True, False)
    except DataError as exc:
        fail(str(exc))
    kind = "images" if ds.is_image else ("token ids" if ds.train_x.dtype.is_floating_point is False else "features")
    console.print(f"{dataset}: {spec.origin}, loader {spec.loader_name}\n"
                  f"  {kind} of shape {tuple(ds.train_x.shape[1:])}, {ds.train_x.dtype}; {ds.train_x.shape[0]} train, "
                  f"{ds.test_x.shape[0]} test; {ds.num_classes} classes ({', '.join(ds.classes[:10])}"
                  f"{', ...' if ds.num_classes > 10 else ''})\n"
                  f"  fingerprint {fingerprint(ds)}" + (f"\n  source: {ds.source}" if ds.source else ""),
                  highlight=False)


def _cifar10(data_dir) -> None:
    """Which copy of CIFAR-10 a run would read (the first valid one in the search order), and why the
    places before it were passed over; nothing is loaded or downloaded."""
    from robustlr.data.cifar import locate

    tried: list[str] = []
    for what, find in (("python release", locate._find_python_release), ("cifar10.npz", locate._find_npz),
                       ("image folder (lossy fallback)", locate._find_image_folder)):
        found = find(data_dir, tried)
        if found is not None:
            console.print(f"cifar10       {found.path}  ({what}; {found.verified})", highlight=False)
            return
    err.print(styled("cifar10       ", ("missing", "red"), "\n  " + "\n  ".join(tried)), highlight=False)
    raise typer.Exit(1)


def _femnist(dataset: str, data_dir) -> None:
    """Where the FEMNIST files a run of ``dataset`` (with its presets' default sources) would read
    are, or where to get them; nothing is loaded."""
    from robustlr.data.registry import LEAF_FEMNIST_HOWTO, TFF_EMNIST_HOWTO, resolve_sources
    from robustlr.errors import DataNotFoundError

    sources = (["femnist-leaf"] if dataset == "femnist-leaf" else
               ["femnist-tff/fed_emnist_digitsonly_train.h5", "femnist-tff/fed_emnist_digitsonly_test.h5"])
    howto = LEAF_FEMNIST_HOWTO if dataset == "femnist-leaf" else TFF_EMNIST_HOWTO
    try:
        paths = resolve_sources(dataset, sources, str(data_dir) if data_dir else None)
    except DataNotFoundError as exc:
        err.print(styled(f"{dataset:<13} ", ("missing", "red"), f"\n{exc}\n{howto}"), highlight=False)
        raise typer.Exit(1) from None
    if dataset == "femnist-tff":
        for path in paths:
            console.print(f"{dataset:<13} {path}", highlight=False)
        return
    shards = sorted(p for p in paths[0].rglob("*") if p.is_file() and p.name.endswith((".json", ".json.gz")))
    if not shards:
        err.print(styled(f"{dataset:<13} ", ("missing", "red"), f"\nno LEAF shards (*.json, *.json.gz) under "
                         f"{paths[0]}\n{howto}"), highlight=False)
        raise typer.Exit(1)
    runs = sorted({p.relative_to(paths[0]).parts[0] for p in shards if len(p.relative_to(paths[0]).parts) > 1})
    console.print(f"{dataset:<13} {paths[0]}: {len(shards)} shards" + (f" in {', '.join(runs)}" if runs else ""),
                  highlight=False)


@user_errors
def partition(
    config: str = ConfigArg,
    set_: Optional[List[str]] = SetOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for partition.json and partition.png "
                                       "(default partition/<name>)"),
    data_dir: Optional[Path] = DataDirOpt,
    rows: int = typer.Option(20, "--rows", help="agents shown in the table (the first ones; all are in the files)"),
) -> None:
    """Split the config's data among its agents as a run would (same seed, same split) and show it:
    a table of each agent's samples per class, partition.json and a heatmap of agents x classes.
    Nothing is trained."""
    import json

    import numpy as np
    from rich.table import Table

    from robustlr.reports.plots import plot_partition
    from robustlr.sim.config import load_config
    from robustlr.sim.federation import build_federation, load_dataset
    from robustlr.sim.rundir import prepare_out_dir

    cfg = load_config(config, set_)
    out = out or Path("partition") / cfg.name
    prepare_out_dir(out)
    fed = build_federation(cfg, load_dataset(cfg, str(data_dir) if data_dir else None))
    record = fed.partition_record(cfg)
    counts = np.asarray(record["label_counts"])
    classes = record["classes"]
    from rich import box

    table = Table(title=f"{cfg.name}: partition {cfg.partition}, {fed.num_agents} agents, "
                        f"{record['train_samples']} samples", box=box.SIMPLE_HEAD, padding=(0, 0, 0, 1), pad_edge=False)
    table.add_column("agent", justify="right", no_wrap=True)
    width = len(str(int(counts.max()))) if counts.size else 1
    for j in range(len(classes)):  # class numbers: the names are in the legend below the table
        table.add_column(str(j), justify="right", no_wrap=True, min_width=width)
    table.add_column("total", justify="right", no_wrap=True)
    table.add_column("classes", justify="right", no_wrap=True)
    corrupt = set(record["corrupt"])
    for i in range(min(rows, fed.num_agents)):
        table.add_row(f"{i}{' *' if i in corrupt else ''}", *map(str, counts[i]), str(counts[i].sum()),
                      str(int((counts[i] > 0).sum())))
    console.print(table)
    console.print("classes: " + ", ".join(f"{j} {name}" for j, name in enumerate(classes)), highlight=False)
    sizes, held = counts.sum(1), (counts > 0).sum(1)
    shown = f"the first {rows} of {fed.num_agents} agents shown; " if fed.num_agents > rows else ""
    console.print(f"{shown}* = corrupt. Samples per agent: min {sizes.min()}, median {int(np.median(sizes))}, "
                  f"max {sizes.max()}; classes per agent: min {held.min()}, median {int(np.median(held))}, "
                  f"max {held.max()}", highlight=False)
    (out / "partition.json").write_text(json.dumps(record) + "\n")
    png = plot_partition(counts, classes, record["corrupt"], out / "partition.png",
                         f"{cfg.name}: {cfg.partition} split, samples per agent and class")
    console.print(f"wrote {out / 'partition.json'} and {png}", highlight=False)
