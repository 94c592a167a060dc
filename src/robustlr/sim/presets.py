"""Named configs shipped with robustlr (``sim/presets/*.toml``), and ``extends`` between them.

A preset file starts with a one-line ``# description`` comment and holds config keys. It may
name another preset in ``extends = "iid-fedavg"``: the keys of the named preset are read
first (recursively) and this file's keys override them, so each file holds only what differs.
The resolved config is what ``robustlr config NAME`` prints. A user's own TOML file may
extend a preset the same way.

What ``extends`` may name (anything else is refused with a message):

- a preset: a plain name (letters, digits, ``. _ -``; no ``/``, no ``.toml``), e.g. ``"iid-rlr"``;
- in a user's file (not in a preset), another user file: a path ending in ``.toml``, relative to
  the extending file's folder and inside it (``"base.toml"``, ``"common/base.toml"``; not
  ``"../x.toml"``, not an absolute path, not a symlink leading out), so a config reads only TOML
  files that sit beside or below it.

A cycle is the same file reached twice; a user file ``iid-rlr.toml`` that extends the preset
``iid-rlr`` is no cycle (two different files).

To add a preset, drop a TOML file in ``sim/presets/``; it is package data, so it ships in the
wheel.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from robustlr.errors import ConfigError, did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
EXTENDS = "extends"
#: a preset's name: a plain file name without its .toml (no path separators)
PRESET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.toml"
    if not PRESET_NAME.match(name) or not path.is_file():
        raise ConfigError(f"unknown preset {name!r}{did_you_mean(name, list_presets())}; presets: "
                          f"{', '.join(list_presets())}")
    return path


def describe(name: str) -> str:
    """The preset's first-line ``# description``."""
    first = preset_path(name).read_text().splitlines()
    return first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def _parent_path(path: Path, parent: str) -> tuple[Path, str]:
    """The file ``extends = parent`` of ``path`` names, and its label in messages (see the module's rules)."""
    if not parent.endswith(".toml"):
        if not PRESET_NAME.match(parent):
            raise ConfigError(f"{path}: extends = {parent!r} is neither a preset name (letters, digits, . _ -) nor a "
                              "NAME.toml file beside or below this one; presets: " + ", ".join(list_presets()))
        return preset_path(parent), parent
    if path.resolve().parent == PRESETS_DIR.resolve():
        raise ConfigError(f"{path}: a preset extends only presets: write extends = {parent[:-5]!r}")
    folder = path.resolve().parent
    target = (folder / parent).resolve()
    if Path(parent).is_absolute() or not target.is_relative_to(folder):
        raise ConfigError(f"{path}: extends = {parent!r} leads outside this file's folder {folder}; extends names "
                          "a preset or a .toml file beside or below the extending file")
    if not target.is_file():
        raise ConfigError(f"{path}: extends = {parent!r}: {target} not found")
    return target, parent


def _resolve(path: Path, chain: list[tuple[str, Path]]) -> dict[str, Any]:
    data = _read_toml(path)
    parent = data.pop(EXTENDS, None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends must be a preset name or a .toml file (a string), got {parent!r}")
    target, label = _parent_path(path, parent)
    if any(target.resolve() == seen for _, seen in chain):
        raise ConfigError(f"{path}: extends forms a cycle: {' -> '.join([*(n for n, _ in chain), label])}")
    merged = _resolve(target, [*chain, (label, target.resolve())])
    merged.update(data)
    return merged


def read_config_file(path: str | Path) -> tuple[dict[str, Any], str]:
    """The resolved keys of a TOML file or preset name, and where they came from."""
    p = Path(path)
    if not p.is_file():
        if PRESET_NAME.match(str(path)) and (PRESETS_DIR / f"{path}.toml").is_file():
            preset = PRESETS_DIR / f"{path}.toml"
            return _resolve(preset, [(str(path), preset.resolve())]), f"preset {path}"
        raise ConfigError(
            f"config file {str(path)!r} not found{did_you_mean(path, list_presets())}; give a TOML file or a preset "
            f"name ({', '.join(list_presets())})"
        )
    return _resolve(p, [(p.name, p.resolve())]), str(p)
