"""MkDocs hook: the CLI reference page is written from the typer app itself, so it cannot drift from ``--help``.

``docs/cli.md`` holds the marker ``<!-- cli-reference -->``; this hook replaces it with one section per command:
its help text, its usage line and a table of its arguments and options (names, type, default, help), read from
the same click objects that ``transferkit COMMAND --help`` prints.
"""

from __future__ import annotations

import enum
from pathlib import Path

MARKER = "<!-- cli-reference -->"


def _cell(text: str) -> str:
    """``text`` fit for one markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;")


def _kind(param) -> str:
    """The value an option takes, from the annotation typer read off the command's signature."""
    if getattr(param, "is_flag", False):
        return "flag"
    kind = param.type_descriptor.annotation
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return " \\| ".join(f"`{c.value}`" for c in kind)
    names = {int: "integer", float: "number", str: "text", Path: "path", bool: "flag"}
    return names.get(kind, getattr(kind, "__name__", ""))


def _default(param) -> str:
    value = param.default
    if callable(value) or value is None or value == () or getattr(param, "show_default", True) is False:
        return ""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        if getattr(param, "secondary_opts", None):
            return f"`{param.opts[0] if value else param.secondary_opts[0]}`"
        return "on" if value else ""
    if isinstance(value, Path):
        value = str(value)
    return f"`{value}`"


def _usage(name: str, command) -> str:
    words = ["transferkit", name, "[OPTIONS]"]
    for p in command.params:
        if p.param_type_name != "argument":
            continue
        word = p.name.upper() + (" ..." if p.nargs == -1 else "")
        words.append(word if p.required else f"[{word}]")
    return " ".join(words)


def _summary(text: str) -> str:
    """The first sentence of a command's help (its first paragraph when that has no full stop)."""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


def render() -> str:
    """The markdown of every ``transferkit`` command, in the order ``transferkit --help`` lists them."""
    import typer.main

    from transferkit.cli import app

    group = typer.main.get_command(app)
    with group.make_context("transferkit", [], resilient_parsing=True) as ctx:
        names = group.list_commands(ctx)
        out = ["| command | what it does |", "|---|---|"]
        out += [f"| [`{n}`](#{n}) | {_cell(_summary(group.get_command(ctx, n).help or ''))} |" for n in names]
        for name in names:
            command = group.get_command(ctx, name)
            out += ["", f"## {name}", "", (command.help or "").strip(), "", "```text", _usage(name, command), "```",
                    "", "| argument or option | type | default | what it does |", "|---|---|---|---|"]
            for p in command.params:
                if getattr(p, "hidden", False):
                    continue
                if p.param_type_name == "argument":
                    names_ = f"`{p.name.upper()}`" + ("" if p.required else " (optional)")
                else:
                    names_ = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
                out.append(f"| {names_} | {_kind(p)} | {_default(p)} | {_cell(getattr(p, 'help', '') or '')} |")
    return "\n".join(out) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, render())
    return markdown
