"""A griffe extension for the API reference (mkdocs.yml): the reST that lsframe's docstrings use.

lsframe's docstrings are Google style but name other objects with Sphinx roles
(``:class:`ClosureModule```, ``:func:`~lsframe.parts.part_groups```). Markdown would print the
role literally; this turns each into an optional cross-reference, resolved the way Python reads
the name in the docstring's scope: a link where the reference documents the target, plain code
where it does not (``torch.optim.AdamW``), never a warning. ``~`` keeps the last name only and
``title <target>`` sets the title, as in Sphinx. A literal-block marker prints as Sphinx prints
it (``text::`` as ``text:``, ``text ::`` and a lone ``::`` as nothing); the indented block after
it is Markdown's code block already.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`([^`]+)`")
TITLED = re.compile(r"^(?P<title>.*?)\s*<(?P<target>[^<>]+)>$")
LITERAL_MARKER = re.compile(r"(\S?)([ \t]*)::(?=[ \t]*\n[ \t]*\n)")


def _literal_marker(match: re.Match[str]) -> str:
    """``text::`` prints ``text:``; ``text ::`` and a lone ``::`` print nothing (Sphinx's rule)."""
    before, space = match.groups()
    return before + ("" if space or not before else ":")


def _identifier(obj: griffe.Object, target: str) -> str:
    """The full path ``target`` names in ``obj``'s scope, or ``target`` itself."""
    first, dot, rest = target.lstrip(".").partition(".")
    try:
        base = obj.resolve(first)
    except (griffe.NameResolutionError, griffe.AliasResolutionError):
        return target.lstrip(".")
    return base + dot + rest


def _link(obj: griffe.Object, match: re.Match[str]) -> str:
    text = match.group(1).strip()
    titled = TITLED.match(text)
    if titled:
        title, target = titled.group("title"), titled.group("target")
    else:
        target = text.lstrip("~")
        title = target.rsplit(".", 1)[-1] if text.startswith("~") else target
    identifier = _identifier(obj, target.strip())
    return f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>'


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring of the loaded package (aliases share their target's)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        todo: list[griffe.Object] = [pkg]
        while todo:
            obj = todo.pop()
            if obj.docstring is not None and ":" in obj.docstring.value:
                value = ROLE.sub(lambda m, o=obj: _link(o, m), obj.docstring.value)
                obj.docstring.value = LITERAL_MARKER.sub(_literal_marker, value)
            todo.extend(member for member in obj.members.values() if not member.is_alias)
