"""``robustlr data``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from robustlr.cli._common import DataDirOpt, console, err, fail, user_errors


@user_errors
def data(
    dataset: str = typer.Argument("fashion-mnist", help="fashion-mnist (more datasets: see the README)"),
    data_dir: Optional[Path] = DataDirOpt,
    download: bool = typer.Option(False, "--download", help="download missing files into the cache when online"),
) -> None:
    """Show where each file of a dataset is found (verified by sha256); exit 1 if one is missing."""
    from robustlr.data.store import DataNotFoundError, locate

    if dataset != "fashion-mnist":
        fail(f"unknown dataset {dataset!r}; `robustlr data` checks: fashion-mnist")
    from robustlr.data.fashion_mnist import DATASET_FILES

    missing = False
    for key, spec in DATASET_FILES.items():
        try:
            path = locate(spec, data_dir=data_dir, allow_download=download)
            console.print(f"{key:<13} {path}")
        except DataNotFoundError as exc:
            missing = True
            err.print(f"{key:<13} [red]missing[/]\n{exc}", highlight=False)
    if missing:
        raise typer.Exit(1)
