"""``robustlr config`` and ``robustlr presets``."""

from __future__ import annotations

from typing import List, Optional

import typer

from robustlr.cli._common import ConfigArg, SetOpt, console, user_errors


@user_errors
def presets() -> None:
    """List the preset configs (usable by name in `robustlr run`)."""
    from rich.table import Table

    from robustlr.sim.presets import PRESETS_DIR, describe, list_presets

    table = Table(title=f"presets ({PRESETS_DIR})")
    table.add_column("name")
    table.add_column("description")
    for name in list_presets():
        table.add_row(name, describe(name))
    console.print(table)


@user_errors
def show_config(
    config: str = ConfigArg,
    set_: Optional[List[str]] = SetOpt,
) -> None:
    """Validate a config and print it resolved (presets' `extends` applied), as JSON; nothing is run.

    Checks what `robustlr run` checks before loading data: ranges, combinations, device, init_model file.

    Keys that have no effect in this config are warned about and left out of its hash.
    """
    from robustlr.sim.config import load_config
    from robustlr.sim.preflight import check_runnable

    cfg = load_config(config, set_)
    check_runnable(cfg)
    console.print_json(cfg.to_json())
