"""A griffe extension for robustlr's API pages (mkdocs.yml, mkdocstrings' python handler).

- The docstrings write formulas in reStructuredText (``:math:`x```, ``.. math:: x``), which
  Python's help() shows as written; the site renders Markdown, so each becomes ``$x$`` / ``$$x$$``
  for pymdownx.arithmatex (and the site hook turns those into MathML).
- Sphinx cross-reference roles (``:class:`X```, ``:meth:`x```, ...) are shown as code.
- Their doctests (``>>>`` lines and the output below them) become fenced ``pycon`` code, so that an
  output such as ``[2, 3]`` is shown as code, not read as a Markdown link."""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":math:`([^`]+)`")
_XREF = re.compile(r":(?:meth|class|func|mod|data|attr|exc|obj):`~?([^`]+)`")


def _blocks(text: str) -> str:
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if stripped.startswith(".. math::"):
            indent = line[: len(line) - len(stripped)]
            body = [stripped[len(".. math::"):].strip()]
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
                body.append(lines[i].strip())
                i += 1
            formula = " ".join(b for b in body if b)
            if out and out[-1].strip():
                out.append("")
            out += [f"{indent}$${formula}$$", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _doctests(text: str) -> str:
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        stripped = lines[i].lstrip()
        if not stripped.startswith(">>>"):
            out.append(lines[i])
            i += 1
            continue
        indent = lines[i][: len(lines[i]) - len(stripped)]
        block = []
        while i < len(lines) and lines[i].strip():
            block.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].strip())
            i += 1
        out += [f"{indent}```pycon", *[f"{indent}{b}" for b in block], f"{indent}```"]
    return "\n".join(out)


class RstMath(griffe.Extension):
    def on_object(self, *, obj, loader, **kwargs) -> None:  # noqa: ARG002
        doc = obj.docstring
        if doc is None:
            return
        value = _doctests(doc.value) if ">>>" in doc.value else doc.value
        if "math:" in value:
            value = _ROLE.sub(lambda m: f"${m.group(1)}$", _blocks(value))
        doc.value = _XREF.sub(lambda m: f"`{m.group(1)}`", value)  # Sphinx roles: shown as code
