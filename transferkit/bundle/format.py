"""What every bundle shares: its format tag and how its ``config.json`` is read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import TransferkitError

BUNDLE_FORMAT = "transferkit-bundle/1"


# the tasks that read bundles, in registration order (transferkit.tasks.register_task adds each): a bundle names
# its task in config.json, and the task knows its inputs and extra files; bundles never import tasks
READERS: list[Any] = []


def register_reader(task: Any) -> None:
    """Let ``task`` read the bundles it matches (``task.matches_bundle(config)``); a task of the same name is
    replaced."""
    READERS[:] = [t for t in READERS if t.name != task.name] + [task]


def unregister_reader(name: str) -> None:
    """Forget the task called ``name`` as a bundle reader."""
    READERS[:] = [t for t in READERS if t.name != name]


def reader_for(config: dict[str, Any]) -> Any:
    """The registered task that reads a bundle with this ``config.json``; one clear line when none does."""
    for task in READERS:
        if task.matches_bundle(config):
            return task
    known = ", ".join(sorted({t.bundle_task for t in READERS})) or "none registered: import transferkit.tasks"
    raise TransferkitError(f"No task reads bundles of kind {config.get('task')!r} (known: {known}): load it with the "
                           "transferkit version that saved it, or register the task that saved it.")


def reader_named(name: str) -> Any:
    """The registered task called ``name`` (``TransferModel`` made without one takes its modality's)."""
    for task in READERS:
        if task.name == name:
            return task
    raise TransferkitError(f"No task {name!r} is registered: import transferkit.tasks (transferkit.load does).")


def read_config(folder: str | Path) -> dict[str, Any]:
    """A bundle's ``config.json``, checked: both files present, JSON intact, this format. One clear line
    otherwise."""
    folder = Path(folder)
    cfg_path, w_path = folder / "config.json", folder / "model.safetensors"
    if not cfg_path.is_file() or not w_path.is_file():
        raise TransferkitError(f"{folder} is not a transferkit bundle (needs config.json and model.safetensors): "
                               "pass the run's model/ folder.")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise TransferkitError(f"{cfg_path} is damaged ({err.msg} at line {err.lineno}): re-save the model.") from None
    if not isinstance(config, dict) or config.get("format") != BUNDLE_FORMAT:
        found = config.get("format") if isinstance(config, dict) else None
        raise TransferkitError(f"{cfg_path} has format {found!r}, expected {BUNDLE_FORMAT!r}.")
    return config
