"""Process-wide Hugging Face settings, changed only inside a ``with`` block that puts them back.

huggingface_hub and transformers keep their offline switch, log level and progress bars in module globals;
the weight sources (:mod:`.sources`, :mod:`.text`, :mod:`.audio`) need them changed around a download or a
model load, and nowhere else: a notebook or a program that embeds transferkit keeps its own settings.
"""

from __future__ import annotations

import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HUB_HOST = "huggingface.co"


def hub_endpoint() -> tuple[str, int]:
    """The host and port downloads go to: ``HF_ENDPOINT`` (a mirror) when set, else huggingface.co:443."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(getattr(constants, "ENDPOINT", "") or f"https://{HUB_HOST}")
    return url.hostname or HUB_HOST, url.port or (80 if url.scheme == "http" else 443)


def hub_reachable(host: str | None = None, timeout: float = 3.0) -> bool:
    """True when ``host`` (default: the hub's endpoint, :func:`hub_endpoint`) accepts a connection within
    ``timeout`` seconds."""
    name, port = hub_endpoint() if host is None else (host, 443)
    try:
        socket.create_connection((name, port), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextmanager
def hub_offline_unless_reachable(needed: bool = True, host: str | None = None) -> Iterator[None]:
    """Inside the block, use only the local hub cache when the hub cannot be reached.

    Without this, huggingface_hub retries for about a minute before failing; with it, cached weights still
    load and missing ones fail at once with our one-line message. ``huggingface_hub.constants.HF_HUB_OFFLINE``
    is set for the block only (the whole process sees it meanwhile: keep the block to the download) and is
    restored on the way out, exception or not.

    Args:
        needed: ``False`` makes the block a no-op (nothing will be downloaded, e.g. ``pretrained=False``).
        host: the host to probe (default: ``HF_ENDPOINT``'s, else huggingface.co).

    Examples:

        >>> with hub_offline_unless_reachable():
        ...     model = timm.create_model("resnet18.a1_in1k", pretrained=True)
    """
    if not needed:
        yield
        return
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    if not saved and not hub_reachable(host):
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Inside the block, transformers logs errors only and shows no progress bars; both are restored after.

    Loading an encoder from a local folder prints notes meant for model authors (unused pooler weights,
    newly initialised heads) and a progress bar per load: noise in our console and in a run's log. The
    transformers log level, its progress-bar switch and huggingface_hub's global progress-bar switch are put
    back as they were on the way out, exception or not.
    """
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging

    verbosity, bars_on = logging.get_verbosity(), logging.is_progress_bar_enabled()
    hub_bars_off = are_progress_bars_disabled()
    logging.set_verbosity_error()
    with warnings.catch_warnings():  # huggingface_hub warns when HF_HUB_DISABLE_PROGRESS_BARS already decides
        warnings.simplefilter("ignore")
        logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if bars_on:
                logging.enable_progress_bar()  # transformers' switch (this turns the hub's on too) ...
            if hub_bars_off:  # ... then the hub's, as it was
                disable_progress_bars()
            else:
                enable_progress_bars()


# files in which a Hugging Face model folder can ask for its own code to be run
CODE_KEYS_IN = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "feature_extractor_config.json",
                "processor_config.json")


def refuse_remote_code(folder: str | Path, scripts: bool = False) -> None:
    """Refuse a model folder (a bundle's ``encoder/`` or ``tokenizer/``, or a local Hugging Face model) that asks
    for code of its own: an ``auto_map`` entry in its JSON configs, or (``scripts``, for bundles, which hold none
    of their own) Python files beside them. Models are data:
    transformers is always called with ``trust_remote_code=False``, and such a folder gets one clear line instead
    of a prompt or a traceback.

    Raises:
        BackboneError: naming the file that asks for code.
    """
    import json

    from ..errors import BackboneError

    folder = Path(folder)
    if not folder.is_dir():
        return
    for name in CODE_KEYS_IN:
        f = folder / name
        if not f.is_file():
            continue
        try:
            config = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # transformers names a damaged file itself
        if isinstance(config, dict) and "auto_map" in config:
            raise BackboneError(f"{f} asks to run code of its own (auto_map): transferkit never runs code from a "
                                "model folder or bundle; use a model that transformers supports without it.")
    code = sorted(folder.glob("*.py")) if scripts else []
    if code:
        raise BackboneError(f"{code[0]} is Python code inside a bundle: transferkit never runs it; remove it (a "
                            "bundle holds only JSON, tokenizer files and safetensors).")
