"""transferkit: adapt pretrained models to your small labelled dataset, and show that transfer paid off.

>>> import transferkit
>>> model = transferkit.fit("path/to/images", strategy="auto")     # doctest: +SKIP
>>> model.save("my-model"); model = transferkit.load("my-model")  # doctest: +SKIP

Heavy libraries (torch, timm, accelerate) load on first use, so ``import transferkit`` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import fit, load, rank
    from .backbones import create_backbone, list_backbones
    from .bundle.model import TransferModel
    from .comparison import compare
    from .errors import TransferkitError
    from .pretraining import pretrain
    from .studies import search

_LAZY = {
    "fit": ("api", "fit"),
    "load": ("api", "load"),
    "TransferModel": ("bundle.model", "TransferModel"),
    "create_backbone": ("backbones.registry", "create_backbone"),
    "list_backbones": ("backbones.registry", "list_backbones"),
    "TransferkitError": ("errors", "TransferkitError"),
    "rank": ("api", "rank"),
    "compare": ("comparison", "compare"),
    "pretrain": ("pretraining", "pretrain"),
    "search": ("studies", "search"),
}

__all__ = ["TransferModel", "TransferkitError", "__version__", "compare", "create_backbone", "fit", "list_backbones",
           "load", "pretrain", "rank", "search"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
