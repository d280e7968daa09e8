"""Where transferkit keeps downloads and caches: ``$TRANSFERKIT_CACHE``, else ``~/.cache/transferkit``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("TRANSFERKIT_CACHE", Path.home() / ".cache" / "transferkit"))
