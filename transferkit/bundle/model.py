"""A trained model you can predict with, save, and load again: :class:`TransferModel`.

Bundle layout (``model/``)::

    model.safetensors   backbone + head tensors
    config.json         format, package version, backbone spec, head config, labels, preprocessing, metrics

Loading rebuilds the architecture from ``config.json`` (no download, no pickle) and fills it from
``model.safetensors``; predictions after reload equal those before.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backbones.protocol import BackboneSpec, PreprocessConfig
from ..errors import TransferkitError
from ..heads import ImageClassifier, build_head
from .io import atomic_dir

BUNDLE_FORMAT = "transferkit-bundle/1"


class TransferModel:
    """An image classifier adapted by transferkit.

    Example::

        >>> model = transferkit.fit("data/parts", strategy="linear")
        >>> model.predict(["a.jpg"], top_k=3)[0]["top"][0]
        {'label': 'scratch', 'probability': 0.93}
        >>> model.save("parts-model"); again = transferkit.load("parts-model")
    """

    def __init__(self, classifier: ImageClassifier, classes: list[str], meta: dict[str, Any] | None = None):
        self.classifier = classifier.eval()
        self.classes = list(classes)
        self.meta = meta or {}
        self.metrics: dict[str, Any] = {}  # filled by transferkit.fit: everything metrics.json holds

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.classifier.backbone.preprocess

    def _decode(self, images: list[Any], skip_bad: bool):
        from ..data.images import decode
        from ..data.sources import ImageSet

        data = decode(ImageSet(list(images), [self.classes[0]] * len(images)), self.preprocess, self.classes,
                      skip_bad=skip_bad, description="decoding")
        skipped = set(data.skipped)
        kept = [x for x in images if isinstance(x, np.ndarray) or str(x) not in skipped]
        return data, kept

    def predict_proba(self, images: list[Any], batch_size: int = 64, precision: str = "auto", skip_bad: bool = False) -> np.ndarray:
        """Class probabilities ``(N, C)`` for image paths or HxW[xC] uint8 arrays, in ``self.classes`` order.

        With ``skip_bad=True`` unreadable images are left out (with a warning), so N may be smaller.
        """
        data, _ = self._decode(images, skip_bad)
        return self.predict_pixels(data.pixels, batch_size, precision)

    @torch.no_grad()
    def predict_pixels(self, pixels: torch.Tensor, batch_size: int = 64, precision: str = "auto") -> np.ndarray:
        """Probabilities for uint8 images already at the backbone's input size ``(N, 3, H, W)``."""
        from ..engine.accel import resolve_precision
        from ..engine.inference import forward_batches

        if len(pixels) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        use_bf16 = resolve_precision(precision, cpu=True) == "bf16"
        logits = forward_batches(self.classifier, pixels, self.preprocess, batch_size=batch_size, description="predicting",
                                 autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16))
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, images: list[Any], top_k: int = 5, batch_size: int = 64, precision: str = "auto",
                skip_bad: bool = False) -> list[dict[str, Any]]:
        """Top-k labels per image: ``[{"input": ..., "label": ..., "top": [{"label", "probability"}, ...]}]``.

        With ``skip_bad=True`` unreadable images are skipped with a warning and left out of the result.
        """
        data, kept = self._decode(images, skip_bad)
        probs = self.predict_pixels(data.pixels, batch_size, precision)
        k = min(top_k, len(self.classes))
        out = []
        for item, p in zip(kept, probs, strict=True):
            order = np.argsort(-p)[:k]
            top = [{"label": self.classes[i], "probability": float(p[i])} for i in order]
            out.append({"input": str(item) if not isinstance(item, np.ndarray) else "<array>", "label": top[0]["label"], "top": top})
        return out

    def evaluate(self, source: Any, skip_bad: bool = False) -> dict[str, Any]:
        """Metrics on a labelled folder/CSV/JSONL (every image is scored; no split is made)."""
        from ..data.images import decode
        from ..data.sources import load_test_set
        from ..evaluation.metrics import classification_metrics

        images = load_test_set(source, skip_bad=skip_bad)
        unknown = sorted(set(images.labels) - set(self.classes))
        if unknown:
            raise TransferkitError(f"Labels {', '.join(unknown[:5])} in {source} are not classes of this model ({', '.join(self.classes)}).")
        data = decode(images, self.preprocess, self.classes, skip_bad=skip_bad)
        probs = self.predict_pixels(data.pixels)
        return classification_metrics(data.targets.numpy(), probs, self.classes)

    def save(self, folder: str | Path) -> Path:
        """Write the bundle atomically: a crash leaves either the old bundle or the new one, never half."""
        from safetensors.torch import save_file

        from .. import __version__

        bb = self.classifier.backbone
        config = {
            "format": BUNDLE_FORMAT,
            "transferkit_version": __version__,
            "task": "image-classification",
            "labels": self.classes,
            "backbone": bb.spec.to_dict(),
            "preprocess": bb.preprocess.to_dict(),
            "head": self.classifier.head.config,
            **{k: v for k, v in self.meta.items() if k not in ("labels", "backbone", "preprocess", "head")},
        }
        state = {k: v.detach().cpu().contiguous() for k, v in self.classifier.state_dict().items()}
        with atomic_dir(folder) as tmp:
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": BUNDLE_FORMAT})
            (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> TransferModel:
        """Rebuild from a bundle folder; raises one clear error when it is not one."""
        from safetensors.torch import load_file

        from ..backbones.registry import build

        folder = Path(folder)
        cfg_path, w_path = folder / "config.json", folder / "model.safetensors"
        if not cfg_path.is_file() or not w_path.is_file():
            raise TransferkitError(f"{folder} is not a transferkit bundle (needs config.json and model.safetensors): pass the run's model/ folder.")
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as err:
            raise TransferkitError(f"{cfg_path} is damaged ({err.msg} at line {err.lineno}): re-save the model.") from None
        if config.get("format") != BUNDLE_FORMAT:
            raise TransferkitError(f"{cfg_path} has format {config.get('format')!r}, expected {BUNDLE_FORMAT!r}.")
        backbone = build(BackboneSpec.from_dict(config["backbone"]), pretrained=False)
        backbone.preprocess = PreprocessConfig.from_dict(config["preprocess"])
        classifier = ImageClassifier(backbone, build_head(config["head"]))
        classifier.load_state_dict(load_file(str(w_path)))
        meta = {k: v for k, v in config.items() if k not in ("labels",)}
        return cls(classifier, config["labels"], meta)


def load(folder: str | Path) -> TransferModel:
    """Load a bundle saved by :meth:`TransferModel.save` (``runs/NAME/model``)."""
    return TransferModel.load(folder)
