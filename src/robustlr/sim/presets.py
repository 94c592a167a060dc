"""Named configs shipped with robustlr (``sim/presets/*.toml``), and ``extends`` between them.

A preset file starts with a one-line ``# description`` comment and holds config keys. It may
name another preset in ``extends = "iid-fedavg"``: the keys of the named preset are read
first (recursively) and this file's keys override them, so each file holds only what differs.
The resolved config is what ``robustlr config NAME`` prints. A user's own TOML file may
extend a preset the same way.

To add a preset, drop a TOML file in ``sim/presets/``; it is package data, so it ships in the
wheel.
"""

from __future__ import annotations

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


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.toml"
    if not path.is_file():
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


def _resolve(path: Path, chain: list[str]) -> dict[str, Any]:
    data = _read_toml(path)
    parent = data.pop(EXTENDS, None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: extends must be a preset name (a string), got {parent!r}")
    if parent in chain:
        raise ConfigError(f"{path}: extends forms a cycle: {' -> '.join([*chain, parent])}")
    merged = _resolve(preset_path(parent), [*chain, parent])
    merged.update(data)
    return merged


def read_config_file(path: str | Path) -> tuple[dict[str, Any], str]:
    """The resolved keys of a TOML file or preset name, and where they came from."""
    p = Path(path)
    if not p.is_file():
        if (PRESETS_DIR / f"{path}.toml").is_file():
            return _resolve(PRESETS_DIR / f"{path}.toml", [str(path)]), f"preset {path}"
        raise ConfigError(
            f"config file {str(path)!r} not found{did_you_mean(path, list_presets())}; give a TOML file or a preset "
            f"name ({', '.join(list_presets())})"
        )
    return _resolve(p, [p.stem]), str(p)
