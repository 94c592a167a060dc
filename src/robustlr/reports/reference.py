"""The paper's reference numbers, as data (``paper.toml``, shipped with the package)."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REFERENCE_FILE = Path(__file__).resolve().parent / "paper.toml"

#: setting -> {"source": str, run -> {metric: percent}}
PAPER: dict[str, dict] = tomllib.loads(REFERENCE_FILE.read_text())
