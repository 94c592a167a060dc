"""Optional dependencies: the one place that turns a missing package into an error naming the extra.

The core install (``pip install robustlr``) brings torch and numpy only: enough for
:mod:`robustlr.aggregation` and, with ``flwr``, the Flower strategies. Everything else is an
extra (see pyproject.toml and docs/how-to/install.md)::

    require("captum", extra="attribution", feature="robustlr explain")

raises :class:`robustlr.errors.MissingDependencyError` ("robustlr explain needs captum, which is
not installed: pip install 'robustlr[attribution]'") when ``import captum`` fails, and costs
nothing once the module is imported.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from robustlr.errors import MissingDependencyError

__all__ = ["require", "DISTRIBUTIONS"]

#: import name -> the distribution pip installs it from, where they differ
DISTRIBUTIONS = {"PIL": "pillow", "sklearn": "scikit-learn", "ray": "ray (flwr[simulation])"}


def require(*modules: str, extra: str, feature: str) -> ModuleType:
    """Import each of ``modules`` (dotted names allowed) and return the last; when any import
    fails, raise :class:`MissingDependencyError` naming every missing package and
    ``pip install 'robustlr[extra]'``."""
    missing: list[str] = []
    module: ModuleType | None = None
    for name in modules:
        found = sys.modules.get(name)
        if found is not None:
            module = found
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            top = name.partition(".")[0]
            package = DISTRIBUTIONS.get(top, top)
            # a package that is there but lacks one of its own dependencies: say which
            if exc.name and exc.name.partition(".")[0] != top:
                package += f" (its import failed: {exc})"
            if package not in missing:
                missing.append(package)
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        names = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
        raise MissingDependencyError(f"{feature} needs {names}, which {verb} not installed: "
                                     f"pip install 'robustlr[{extra}]'")
    assert module is not None
    return module
