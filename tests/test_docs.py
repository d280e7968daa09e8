"""The documentation stays true to the code: the CLI reference is written from the typer app (every command and
option appears), and the README's links lead to pages that exist. `make docs` builds the whole site with --strict
(broken links, anchors and API references fail it), and `make test` runs that build first."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import typer.main

from transferkit.cli import app

ROOT = Path(__file__).resolve().parents[1]


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_lists_every_command_and_option():
    text = _hooks().render()
    group = typer.main.get_command(app)
    assert len(group.commands) >= 11
    for name, command in group.commands.items():
        section = text.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        assert f"transferkit {name} [OPTIONS]" in section
        for param in command.params:
            if param.param_type_name == "argument":
                assert f"`{param.name.upper()}`" in section, (name, param.name)
            else:
                for opt in [*param.opts, *param.secondary_opts]:
                    assert f"`{opt}`" in section, (name, opt)
    for name in ("fit", "search", "compare", "pretrain"):  # --config comes from a decorator; it must show too
        assert "`--config`" in text.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]


def test_cli_reference_table_cells_are_safe():
    hooks = _hooks()
    assert hooks._cell("a | b\n  <c>") == "a \\| b &lt;c>"
    assert hooks._summary("First one. Second.\n\nMore.") == "First one."
    assert hooks._summary("No full stop\nhere") == "No full stop here"


def test_readme_links_lead_to_files_that_exist():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert len(local) >= 20
    for link in local:
        assert (ROOT / link).exists(), link
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):  # every page is in the site's navigation
        assert f": {page.name}" in nav, page.name
