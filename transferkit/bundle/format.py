"""What every bundle shares: its format tag and how its ``config.json`` is read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import TransferkitError

BUNDLE_FORMAT = "transferkit-bundle/1"


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
