"""``run.yaml``: every setting of a run, written into its run folder, so that ``transferkit fit --config run.yaml``
runs it again.

The file holds:

- ``command``: the command that made it (``fit``);
- ``transferkit``: the version that wrote it (another version reads it with a warning: its defaults may differ);
- ``data``: the data's absolute path (``null`` for data given in memory, such as a DataFrame; then DATA must be
  given beside ``--config``);
- ``settings``: every option of the command by its flag's name (``--image-size`` is ``image_size``), defaults
  included, and resolved where the run resolved them deterministically: the default backbone is written by its name,
  ``precision: auto`` as the precision it came to. Strategy options without a flag of their own (``weight_decay``
  from the Python API) sit in ``settings.strategy_options``;
- ``resolved``: what the run came to (the task, the strategy ``auto`` chose and its options, the device), for the
  reader; it is not read back.

A setting given as a flag beside ``--config`` overrides the file's value. Reading checks every key against the
command's own options: an unknown key (with the closest known one) or a value of the wrong type is one line each,
all of them at once, before any work.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from .errors import TransferkitError

NAME = "run.yaml"
KEYS = ("command", "transferkit", "data", "settings", "resolved")


def plain(value: Any) -> Any:
    """``value`` as YAML's plain types: paths as strings, tuples as lists, numpy scalars as numbers."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):  # a numpy or torch scalar
        return value.item()
    return str(value)


def where(value: Any) -> str | None:
    """A path given to a run, absolute (so the file works from any folder); ``None`` for data given in memory."""
    if isinstance(value, (str, Path)) and str(value):
        return str(Path(value).expanduser().resolve())
    return None


def recorded(call: dict[str, Any], drop: tuple[str, ...] = (), spread: str | None = None,
             paths: tuple[str, ...] = (), joined: tuple[str, ...] = ("backbone", "log_with")) -> dict[str, Any]:
    """A command's arguments (``call``: its ``locals()`` on entry) as run.yaml settings: ``data``, ``out``,
    ``resume`` and ``drop`` left out, the keyword arguments gathered in ``spread`` (``**options``) spread among the
    others, the lists of ``joined`` written as the flag writes them (``a,b``), and the ``paths`` that name something
    on this machine made absolute."""
    settings: dict[str, Any] = {}
    for key, value in call.items():
        for k, v in (dict(value or {}) if key == spread else {key: value}).items():
            if k not in ("data", "out", "resume", *drop):
                settings[k] = v
    for key in joined:
        if isinstance(settings.get(key), (list, tuple)):
            settings[key] = ",".join(map(str, settings[key]))
    for key in paths:
        value = settings.get(key)
        if isinstance(value, (str, Path)) and str(value) and Path(value).expanduser().exists():
            settings[key] = where(value)
    return settings


# a study's run.yaml: why a rerun joins the study, and where the password comes from
STUDY_NOTE = "A database password is never written: PGPASSWORD or ~/.pgpass gives it."


def resolve_defaults(settings: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with the defaults the run resolved deterministically written as what they came to:
    ``precision: auto`` as the precision used, and a default backbone (none given, no bundle continued) by name."""
    name = (metrics.get("backbone") or {}).get("name")
    if "backbone" in settings and settings["backbone"] is None and settings.get("init_from") is None and name:
        settings["backbone"] = name
    if settings.get("precision") == "auto" and metrics.get("precision"):
        settings["precision"] = metrics["precision"]
    return settings


def settings_file(command: str, data: Any, settings: dict[str, Any], resolved: dict[str, Any],
                  note: str | None = None) -> bytes:
    """The ``run.yaml`` of a run of ``command`` (see the module's text); ``note``: a line for its reader."""
    import yaml

    from . import __version__

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"# transferkit {__version__}, {stamp}: every setting of this run.\n"
            f"# `transferkit {command} --config {NAME}` runs it again; flags given beside --config override these "
            "values.\n# `resolved` says what the run came to; it is not read back.\n")
    if where(data) is None:
        head += "# The data were given in memory: give DATA beside --config.\n"
    if note:
        head += f"# {note}\n"
    body = {"command": command, "transferkit": __version__, "data": where(data), "settings": plain(settings),
            "resolved": plain(resolved)}
    return (head + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=120)).encode()


def read_settings(path: Path, command: str) -> tuple[str | None, dict[str, Any], str | None]:
    """``(data, settings, note)`` from a ``run.yaml`` written for ``command`` (or a run folder holding one); a
    relative ``data`` is read from the file's folder; ``note``: a warning to show (another transferkit version wrote
    it), else ``None``.

    Raises:
        TransferkitError: the file is missing, is not YAML, is not a run file, or was written by another command.
    """
    import yaml

    from . import __version__

    path = Path(path)
    if path.is_dir():  # a run folder: its run.yaml
        if not (path / NAME).is_file():
            raise TransferkitError(f"--config {path}: a folder without a {NAME}; give a run folder or its {NAME}.")
        path = path / NAME
    if not path.is_file():
        raise TransferkitError(f"--config {path}: no such file; give the run.yaml a run wrote into its folder.")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise TransferkitError(f"--config {path}: not a text file; give a run.yaml.") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise TransferkitError(f"--config {path}: not valid YAML{at}: {getattr(err, 'problem', None) or err}.") \
            from None
    if not isinstance(doc, dict) or not isinstance(doc.get("settings", {}), (dict, type(None))):
        raise TransferkitError(f"--config {path}: not a run file: expected a mapping with `settings:` (as a run's "
                               f"{NAME} holds).")
    unknown = [k for k in doc if k not in KEYS]
    if unknown:  # named by their text, cut short: a key may be anything YAML builds
        raise TransferkitError(f"--config {path}: unknown key {str(unknown[0])[:40]!r} at the top: a run file holds "
                               f"{', '.join(KEYS)}.")
    made_by = doc.get("command", command)
    if not isinstance(made_by, str):
        raise TransferkitError(f"--config {path}: command: expected a command name such as {command}, got a "
                               f"{type(made_by).__name__}.")
    if made_by != command:
        raise TransferkitError(f"--config {path}: written by `transferkit {made_by[:40]}`, not {command}: run "
                               f"`transferkit {made_by[:40]} --config {path}`.")
    data = doc.get("data")
    if data is not None and (not isinstance(data, str) or not data.strip()):
        raise TransferkitError(f"--config {path}: data: expected the data's path, got "
                               f"{'an empty text' if isinstance(data, str) else 'a ' + type(data).__name__}.")
    if data is not None and not Path(data).expanduser().is_absolute():
        data = str(path.parent / Path(data).expanduser())  # relative to the file, as the file is read
    version = doc.get("transferkit")
    note = None
    if isinstance(version, (str, int, float)) and str(version) != __version__:
        note = (f"{path} was written by transferkit {str(version)[:40]}, this is {__version__}: a default that "
                "changed between them can change the result.")
    return data, dict(doc.get("settings") or {}), note
