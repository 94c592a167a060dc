"""Finding a user's object by name: the lookup the model and the dataset registries share.

A name is resolved, in order, among the registry's own entries (built in, then registered at run
time), an import string ``"package.module:attr"`` (any name with a ``:``), and the entry points of
installed packages in the registry's group. An unknown name gets the choices and a "did you mean".
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable
from importlib import metadata
from typing import Any

#: a registered name: letters, digits and . _ - (":" marks an import string)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def entry_points(group: str) -> dict[str, metadata.EntryPoint]:
    """The entry points of installed packages in ``group``, by name."""
    return {ep.name: ep for ep in metadata.entry_points(group=group)}


def import_object(kind: str, name: str, what: str, error: type[Exception]) -> Any:
    """The object an import string ``module:attr.path`` names; ``error`` (one line naming the
    problem) if the module does not import or has no such attribute. ``what`` names the object
    (``factory``, ``loader``) in the message."""
    module_name, _, attr = name.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"{kind} {name!r}: cannot import {module_name!r} ({exc}); an import string is "
                    f"'package.module:{what}' of a module on the Python path") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise error(f"{kind} {name!r}: module {module_name!r} has no {attr!r}") from None
    return obj


def load_entry_point(kind: str, name: str, ep: metadata.EntryPoint, group: str,
                     error: type[Exception]) -> tuple[Any, str]:
    """The object behind an entry point and its origin (``entry point (distribution)``)."""
    try:
        obj = ep.load()
    except Exception as exc:  # noqa: BLE001 - a broken plug-in package: name it
        raise error(f"{kind} {name!r}: the entry point {ep.value!r} (group {group}) cannot be loaded: "
                    f"{type(exc).__name__}: {exc}") from exc
    dist = getattr(getattr(ep, "dist", None), "name", None)
    return obj, f"entry point ({dist})" if dist else "entry point"


def unknown(kind: str, name: str, names: list[str], register: str, group: str, what: str,
            error: type[Exception]) -> Exception:
    """The error for a name nothing resolves: the choices, the closest one, and the three ways in."""
    close = difflib.get_close_matches(name, names, n=1)
    return error(f"unknown {kind} {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                 + f"; choose one of {', '.join(names)}, or register one ({register}, an entry point in group "
                 f"{group}, or an import string 'package.module:{what}')")


def check_name(kind: str, name: Any, error: type[Exception]) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise error(f"a {kind} name is letters, digits and . _ - (no ':', which marks an import string), "
                    f"got {name!r}")


def callable_name(fn: Callable | Any) -> str:
    """``module:qualname`` of a function, as records name factories and loaders."""
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
