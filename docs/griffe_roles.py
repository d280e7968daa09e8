"""Griffe extension for the API reference: our docstrings name other objects with Sphinx roles
(``:class:`TransferModel```, ``:func:`~transferkit.fit```), which Markdown would show verbatim. Each role becomes a code
span of the name, the last dotted part when the role says ``~``, as Sphinx shows it.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`(~?)([^`]+)`")


def _plain(match: re.Match) -> str:
    short, name = match.groups()
    return f"`{name.rsplit('.', 1)[-1] if short else name}`"


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_plain, obj.docstring.value)
