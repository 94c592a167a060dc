"""robustlr: federated learning under backdoor attack, and the robust learning rate defense.

The package has one folder per concern; imports go one way, from the top of this list down::

    cli                      the ``robustlr`` command, one module per command group
    reports, bench,          tables and plots; speed measurements;
    experiments, analysis,   suites and the results store; attribution and telemetry;
    integrations             Flower
    sim                      config and presets, federation, engines/, server, loop, records
    aggregation, data,       rules over a stacked update matrix; datasets; trojans and
    attacks, models          poisoning; the networks
    errors, _optional        robustlr's own error types; the check that names a missing extra

``pip install robustlr`` (torch and numpy) is enough for :mod:`robustlr.aggregation`; the simulator,
the command line and the rest need extras (``robustlr[sim]``, ...; see docs/how-to/install.md) and name theirs
when it is missing.

``robustlr.run(config)`` and ``robustlr.load_config(...)`` (``robustlr[sim]``) are the entry points for a script::

    import robustlr
    cfg = robustlr.load_config("demo-iid", ["rounds=4"])
    result = robustlr.run(cfg, out_dir="runs/demo-iid")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from robustlr._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from robustlr.sim.config import ExperimentConfig
    from robustlr.sim.loop import RunResult

__all__ = ["ImageDataset", "__version__", "load_config", "register_dataset", "register_model", "run"]


def load_config(path: str | None = None, overrides: list[str] | None = None) -> "ExperimentConfig":
    """A validated config from a TOML file or preset name, with ``key=value`` overrides."""
    from robustlr.sim.config import load_config as _load

    return _load(path, overrides)


def run(config: "ExperimentConfig | str", out_dir: str | None = None, data_dir: str | None = None,
        **kwargs: Any) -> "RunResult":
    """Run an experiment to the end: ``config`` is an :class:`ExperimentConfig` or a preset/file name.

    With ``out_dir`` the run writes its records there and resumes from its last checkpoint.
    """
    from robustlr.sim.loop import run_experiment

    cfg = load_config(config) if isinstance(config, str) else config
    return run_experiment(cfg, out_dir, data_dir=data_dir, **kwargs)


def register_model(name: str, build: Any, *, input_shape: tuple[int, ...] | None = None,
                   replace: bool = False) -> Any:
    """Make ``build(num_classes) -> torch.nn.Module`` available as ``model = name`` in configs (see
    :mod:`robustlr.models.registry` for the other two ways: entry points and import strings)."""
    from robustlr.models.registry import register_model as _register

    return _register(name, build, input_shape=input_shape, replace=replace)


def register_dataset(name: str, load: Any, *, replace: bool = False) -> Any:
    """Make ``load() -> robustlr.ImageDataset`` available as ``dataset = name`` in configs; ``load``
    may take ``data_dir`` and ``data_sources`` keywords (see :mod:`robustlr.data.registry` for the
    other two ways: entry points and import strings)."""
    from robustlr.data.registry import register_dataset as _register

    return _register(name, load, replace=replace)


def __getattr__(name: str) -> Any:
    if name == "ImageDataset":  # the in-memory dataset a loader returns (torch and numpy only)
        from robustlr.data.base import ImageDataset

        return ImageDataset
    raise AttributeError(f"module 'robustlr' has no attribute {name!r}")
