"""MkDocs hook: pages written from the code itself when the site is built, so they cannot drift from it.

- ``<!-- cli-reference -->`` (docs/cli.md): one section per command, with its help text, its usage line and a table of
  its arguments and options (names, type, default, help), read from the same click objects that
  ``transferkit COMMAND --help`` prints.
- ``<!-- strategy-options -->`` (docs/strategies.md): one table per strategy of its config's fields (the keyword
  arguments ``fit`` takes for it), with their defaults per kind of backbone and their help.
"""

from __future__ import annotations

import enum
import re
import typing
from pathlib import Path

MARKER = "<!-- cli-reference -->"
OPTIONS_MARKER = "<!-- strategy-options -->"


def _text(text: str) -> str:
    """Help text as Markdown shows it verbatim: outside code spans, characters Markdown or HTML would act on are
    escaped (``<folder>``, ``*``, ``__init__``, ``[x]``, a backslash, and ``|``, which would split a table cell)."""
    parts = re.split(r"(`[^`]*`)", text)
    for i in range(0, len(parts), 2):  # the even parts lie outside code spans
        parts[i] = re.sub(r"([\\*_\[\]|])", r"\\\1", parts[i]).replace("<", "&lt;")
    return "".join(parts)


def _cell(text: str) -> str:
    """``text`` fit for one markdown table cell: one line, verbatim."""
    return _text(" ".join(str(text).split()))


def _kind(param) -> str:
    """The value an option takes, from the annotation typer read off the command's signature."""
    if getattr(param, "is_flag", False):
        return "flag"
    kind = param.type_descriptor.annotation
    if typing.get_origin(kind) in (list, tuple) and typing.get_args(kind):  # a repeatable one: its items' kind
        kind = typing.get_args(kind)[0]
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
        out += ["", "`transferkit --version` prints the version; `transferkit COMMAND --help` prints what follows."]
        for name in names:
            command = group.get_command(ctx, name)
            out += ["", f"## {name}", "", _text((command.help or "").strip()), "",
                    "```text", _usage(name, command), "```", "",
                    "| argument or option | what it does |", "|---|---|"]
            for p in command.params:
                if getattr(p, "hidden", False):
                    continue
                if p.param_type_name == "argument":
                    label = f"`{p.name.upper()}`"
                else:
                    label = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
                facts = [_kind(p)] + (["repeatable"] if getattr(p, "multiple", False) or p.nargs == -1 else [])
                if p.param_type_name == "argument":
                    facts.append("required" if p.required else "optional")
                elif p.required:
                    facts.append("required")
                elif _default(p):
                    facts.append(f"default {_default(p)}")
                kinds = ", ".join(f for f in facts if f)
                out.append(f"| {label}<br>*{kinds}* | {_cell(getattr(p, 'help', '') or '')} |")
    return "\n".join(out) + "\n"


def _value(value) -> str:
    return "`None`" if value is None else f"`{value}`"


def _options_table(cfg_cls) -> list[str]:
    import dataclasses

    profiles = [(p, vars(cfg_cls).get(f"{p}_defaults") or getattr(cfg_cls, f"{p}_defaults", None) or {})
                for p in ("text", "audio", "hf_audio", "speaker")]
    names = {"text": "texts", "audio": "CNN on spectrograms", "hf_audio": "HF audio encoder",
             "speaker": "speaker encoder"}
    rows = ["| option | default | other defaults | what it does |", "|---|---|---|---|"]
    for f in dataclasses.fields(cfg_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        others = "; ".join(f"{names[p]} {_value(d[f.name])}" for p, d in profiles if f.name in d)
        rows.append(f"| `{f.name}` | {_value(default)} | {others} | {_cell(f.metadata.get('help', ''))} |")
    return rows


def strategy_options() -> str:
    """One table per strategy (classification, then detection): its config's fields, defaults and help."""
    from transferkit.strategies import STRATEGIES
    from transferkit.strategies.detection import DETECTION_STRATEGIES

    out: list[str] = []
    for title, registry in (("", STRATEGIES), ("detection: ", DETECTION_STRATEGIES)):
        for name, (_, cfg_cls) in registry.items():
            doc = " ".join((cfg_cls.__doc__ or "").split())
            out += ["", f"### {title}`{name}`", "", doc, "", *_options_table(cfg_cls)]
    return "\n".join(out) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, render())
    if OPTIONS_MARKER in markdown:
        markdown = markdown.replace(OPTIONS_MARKER, strategy_options())
    return markdown
