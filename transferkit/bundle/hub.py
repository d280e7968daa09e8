"""Bundles on the Hugging Face Hub: a bundle folder is also a hub model repository (``README.md`` carries the hub's
metadata header, :func:`transferkit.bundle.card.render_hub_readme`), pushed with ``huggingface-cli upload org/name
runs/x/model`` or ``huggingface_hub.upload_folder``; :func:`transferkit.load` reads one back by its id.

Only the files a bundle holds are downloaded (JSON, safetensors, Markdown, tokenizer vocabularies): never a pickle
or a Python file, whatever else the repository holds. Offline, a bundle already in the hub cache loads; one that
is not fails in one line.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import TransferkitError

# what a bundle holds: config.json, model.safetensors, the cards, tokenizer/ and encoder/ (JSON, vocabularies)
BUNDLE_FILES = ["*.json", "*.safetensors", "*.md", "*.txt", "*.model"]
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def is_hub_id(name: str | Path) -> bool:
    """``org/name`` that is not a path on this machine (nor inside a folder here: ``runs/x`` with a ``runs/``
    folder is a missing local path, not a repository)."""
    text = str(name)
    return bool(HUB_ID.fullmatch(text)) and ".." not in text and not Path(text.split("/")[0]).exists()


def download_bundle(repo_id: str, revision: str | None = None) -> Path:
    """The local folder of the hub repository ``repo_id`` (the bundle's files only), from the hub cache when it is
    there.

    Raises:
        TransferkitError: the repository cannot be reached or does not exist, in one line.
    """
    import json

    from huggingface_hub import hf_hub_download, snapshot_download

    from ..backbones.hub import hub_offline_unless_reachable

    try:
        with hub_offline_unless_reachable():
            # config.json first: a repository that is not a bundle (a backbone's weights) is refused before its
            # shards are downloaded
            config = Path(hf_hub_download(repo_id, "config.json", revision=revision))
            try:
                bundle = json.loads(config.read_text(encoding="utf-8")).get("transferkit_version") is not None
            except (ValueError, AttributeError, UnicodeDecodeError):
                bundle = False
            if not bundle:
                raise TransferkitError(f"The Hugging Face Hub repository {repo_id} is not a transferkit bundle (its "
                                       "config.json names no transferkit_version): give a bundle's id, or use it as "
                                       "a backbone (--backbone).")
            folder = snapshot_download(repo_id, revision=revision, allow_patterns=BUNDLE_FILES)
    except TransferkitError:
        raise
    except Exception as err:  # noqa: BLE001  (offline, no such repository, no access, a network error)
        why = (str(err).strip().splitlines() or [""])[0].split(". ")[0][:160]
        raise TransferkitError(f"{repo_id} is not a folder here, and the Hugging Face Hub did not give it "
                               f"({type(err).__name__}{': ' + why if why else ''}): check the id and the network, "
                               "or give the bundle's folder.") from None
    return Path(folder)


def local_folder(name: str | Path) -> Path:
    """``name`` as a folder here: a hub id (:func:`is_hub_id`) becomes its downloaded or cached copy, anything else
    is taken as the path it is."""
    return download_bundle(str(name)) if is_hub_id(name) else Path(name)
