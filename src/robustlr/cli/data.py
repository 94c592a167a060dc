"""``robustlr data``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robustlr.cli._common import DataDirOpt, console, err, fail, styled, user_errors


@user_errors
def data(
    dataset: str = typer.Argument("fashion-mnist", help="fashion-mnist or cifar10 (more datasets: see the README)"),
    data_dir: Optional[Path] = DataDirOpt,
    download: bool = typer.Option(False, "--download", help="download missing files into the cache when online"),
) -> None:
    """Show where each file of a dataset is found (verified by sha256); exit 1 if one is missing."""
    from robustlr.data.store import DataNotFoundError, locate

    if dataset == "cifar10":
        _cifar10(data_dir)
        return
    if dataset != "fashion-mnist":
        fail(f"unknown dataset {dataset!r}; `robustlr data` checks: fashion-mnist, cifar10")
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
