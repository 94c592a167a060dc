"""The ``robustlr`` command's Typer app: every command, registered from the module of its group.

``run`` (run, demo, pretrain), ``config`` (config, presets), ``data``, ``experiments`` (suites, sweep, runs, report),
``analysis`` (attribute, explain, certify, layers),
``bench`` (engines, aggregation, scale, flower). A new command goes in the module of its group, registered below.
Importing this module needs the ``sim`` extra (typer, rich, pydantic); :func:`robustlr.cli.main` says so.
"""

from __future__ import annotations

import logging

from robustlr._optional import require

require("typer", "rich", "pydantic", extra="sim", feature="the robustlr command")

import typer  # noqa: E402

from robustlr.cli import analysis, bench, config, data, experiments, run  # noqa: E402

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals can hold tensors of millions of values
    help="Federated learning under backdoor attack, and the robust learning rate defense (Ozdayi et al., AAAI 2021).",
)


def _version(value: bool) -> None:
    if value:
        import torch

        from robustlr._version import __version__

        typer.echo(f"robustlr {__version__} (torch {torch.__version__})")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="print robustlr's and torch's versions and exit"),
) -> None:
    pass

app.command("run")(run.run)
app.command("demo")(run.demo)
app.command("pretrain")(run.pretrain)
app.command("config")(config.show_config)
app.command("presets")(config.presets)
app.command("data")(data.data)
app.command("partition")(data.partition)
app.command("suites")(experiments.suites)
app.command("sweep")(experiments.sweep)
app.command("breakpoint")(experiments.breakpoint_cmd)
app.command("runs")(experiments.runs)
app.command("report")(experiments.report)
app.command("attribute")(analysis.attribute)
app.command("explain")(analysis.explain)
app.command("certify")(analysis.certify)
app.command("layers")(analysis.layers)
app.add_typer(bench.app, name="bench")


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
