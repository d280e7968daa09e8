"""Griffe extension for the API reference: our docstrings name other objects with Sphinx roles
(``:class:`TransferModel```, ``:func:`~transferkit.fit```), which Markdown would show verbatim.

- Each role becomes a code span of the name (the last dotted part when the role says ``~``, as Sphinx shows it).
- Each role's target must still exist: looked up from the object's own scope outwards (its members, its parents',
  what its module imports) or by its full ``transferkit.`` path. One that no longer resolves is logged as a warning,
  so ``mkdocs build --strict`` fails when code is renamed under a docstring that names it. Builtins and other
  libraries' objects (``OSError``, ``torch.Tensor``) are not checked.
"""

from __future__ import annotations

import builtins
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`(~?)([^`]+)`")
EXTERNAL = {"torch", "numpy", "np", "PIL", "pandas", "datasets", "optuna", "transformers", "timm", "sklearn",
            "accelerate", "huggingface_hub", "pathlib", "typing", "collections", "peft", "torchvision", "onnx",
            "onnxruntime", "captum", "soundfile", "pydicom", "nibabel", "uvicorn", "fastapi", "matplotlib", "scipy",
            "safetensors", "torchmetrics", "sentence_transformers", "resemblyzer", "yaml", "rich", "typer"}


def _plain(match: re.Match) -> str:
    short, name = match.groups()
    name = "".join(name.split())  # a role wrapped across lines
    return f"`{name.rsplit('.', 1)[-1] if short else name}`"


def _has(obj: Any, path: str) -> bool:
    try:
        obj[path]
    except Exception:  # noqa: BLE001 - KeyError, or an alias to another library that griffe did not load
        return False
    return True


def _resolves(obj: Any, package: Any, target: str) -> bool:
    target = "".join(target.split()).lstrip(".")
    head = target.split(".")[0]
    if head == package.name:
        return target == package.name or _has(package, target[len(package.name) + 1:])
    scope = obj
    while scope is not None:  # members of the object, then of each object it lies in
        if _has(scope, target):
            return True
        scope = scope.parent
    try:
        full = obj.resolve(head)  # a name the module imports
    except Exception:  # noqa: BLE001 - griffe's NameResolutionError: not in scope
        return head in EXTERNAL or hasattr(builtins, head)
    if not full.startswith(package.name + ".") and full != package.name:
        return True  # another library's object
    rest = full[len(package.name) + 1:] + target[len(head):]
    return not rest or _has(package, rest.lstrip("."))


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        def walk(obj: Any) -> None:
            if obj.docstring is not None:
                for match in ROLE.finditer(obj.docstring.value):
                    if not _resolves(obj, pkg, match.group(2)):
                        griffe.logger.warning(f"{obj.relative_filepath}:{obj.docstring.lineno}: {obj.path}'s "
                                              f"docstring names {match.group(2)!r}, which no longer exists")
                obj.docstring.value = ROLE.sub(_plain, obj.docstring.value)
            for member in obj.members.values():
                if not member.is_alias:
                    walk(member)

        walk(pkg)
