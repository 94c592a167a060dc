"""MkDocs hooks of robustlr's site (mkdocs.yml: ``hooks``).

- ``<!-- CONFIG-KEYS -->`` in a page becomes the table of every config key, generated from
  :class:`robustlr.sim.config.ExperimentConfig`'s fields (type, default, description), so the
  page cannot drift from the code.
- Formulas (``$...$``, ``$$...$$``; pymdownx.arithmatex in generic mode marks them) are rendered to
  MathML at build time (latex2mathml), which browsers typeset natively: no JavaScript, no network.
"""

from __future__ import annotations

import html
import re
import typing

CONFIG_MARKER = "<!-- CONFIG-KEYS -->"
STORE_MARKER = "<!-- STORE-SCHEMA -->"
_INLINE = re.compile(r'<span class="arithmatex">\\\((.+?)\\\)</span>', re.S)
_BLOCK = re.compile(r'<div class="arithmatex">\\\[(.+?)\\\]</div>', re.S)


def _type_name(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def config_table() -> str:
    from pydantic_core import PydanticUndefined

    from robustlr.sim.config import ExperimentConfig

    lines = ["| key | type | default | what it does |", "|---|---|---|---|"]
    for name, field in ExperimentConfig.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "required" if default is PydanticUndefined else f"`{default!r}`"
        desc = " ".join((field.description or "").split()).replace("|", "\\|")
        lines.append(f"| `{name}` | `{_type_name(field.annotation)}` | {shown} | {desc} |")
    return "\n".join(lines)


def store_schema() -> str:
    """The results store's table ``runs`` as SQLite makes it (a new store in a temporary folder)."""
    import tempfile
    from pathlib import Path

    from robustlr.experiments import store
    from robustlr.sim.config import ExperimentConfig

    with tempfile.TemporaryDirectory() as d:
        store.check(Path(d))
        con = store._connect(Path(d))
        try:
            columns = con.execute("PRAGMA table_info(runs)").fetchall()
        finally:
            con.close()
    lines = ["| column | SQL type | holds |", "|---|---|---|"]
    for _cid, name, sqltype, _notnull, _default, pk in columns:
        note = store.COLUMN_NOTES.get(name)
        if note is None:
            note = "config key (see [Every config key](config.md))" if name in ExperimentConfig.model_fields else ""
        lines.append(f"| `{name}` | {sqltype or '-'} | {note}{' (primary key with suite)' if name == 'name' else ''} |")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, config_table())
    if STORE_MARKER in markdown:
        markdown = markdown.replace(STORE_MARKER, store_schema())
    return markdown


def _mathml(tex: str, display: str) -> str:
    from latex2mathml.converter import convert

    return convert(html.unescape(tex).strip(), display=display)


def on_page_content(content: str, page, config, files) -> str:
    content = _BLOCK.sub(lambda m: f'<div class="math">{_mathml(m.group(1), "block")}</div>', content)
    return _INLINE.sub(lambda m: _mathml(m.group(1), "inline"), content)
