"""A trained detector you can predict with, draw, evaluate, save and load again: :class:`DetectionModel`.

Bundle layout (``model/``), the same format as classifiers::

    model.safetensors   every tensor of the detector (body, FPN, FCOS head)
    config.json         format, task "object-detection", backbone spec, detector config (image size, classes,
                        thresholds), preprocessing (mean/std), labels, metrics

Loading rebuilds the detector from ``config.json`` (no download, no pickle) and fills it from safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TransferkitError
from ..heads.detection import SHOWN_SCORE
from ..io import atomic_dir

TASK = "object-detection"


class DetectionModel:
    """Boxes, labels and scores for images.

    Examples:

        >>> det = transferkit.fit("shelf-photos/", task="detect", out="runs/shelf")
        >>> det.predict(["photo.jpg"])[0]["boxes"][0]
        {'label': 'bottle', 'score': 0.91, 'box': [12.0, 40.5, 96.0, 230.0]}
        >>> det.draw("photo.jpg", "photo-boxes.png")
        >>> det.evaluate("shelf-photos/")["map"]          # its test split
        0.62

    Attributes:
        classes: the object classes, in the order of the detector's class logits.
        metrics: after :func:`transferkit.fit`, everything the run's ``metrics.json`` holds (COCO mAP and the rest).
        meta: the bundle's ``config.json`` metadata.
    """

    def __init__(self, detector: Any, classes: list[str], meta: dict[str, Any] | None = None):
        self.detector = detector.eval()
        self.classes = list(classes)
        self.meta = meta or {}
        self.metrics: dict[str, Any] = {}  # filled by transferkit.fit: everything metrics.json holds

    modality = "detection"

    @property
    def image_size(self) -> int:
        return int(self.detector.config["image_size"])

    def decode(self, images: list[Any], skip_bad: bool):
        """Images (paths or arrays) decoded as training decoded them: longer side to the detector's size."""
        from ..data.boxes import BoxSet
        from ..data.detection import decode_boxes

        images = list(images)
        empty = [np.zeros((0, 4), np.float32) for _ in images]
        source = BoxSet(images, empty, [[] for _ in images], origin="inputs", format="memory")
        return decode_boxes(source, self.image_size, self.classes, interpolation=self.detector.preprocess.interpolation,
                            skip_bad=skip_bad, description="decoding")

    def detect_decoded(self, data: Any, batch_size: int = 8, precision: str = "auto") -> list[dict[str, torch.Tensor]]:
        """Predictions for images decoded by a run, mapped back to each image's own pixels."""
        from ..engine.accel import resolve_precision
        from ..engine.detection import detect

        use_bf16 = resolve_precision(precision, cpu=True) == "bf16"
        preds = detect(self.detector, data.images, batch_size=batch_size,
                       autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16))
        for p, scale in zip(preds, data.scales, strict=True):
            p["boxes"] = p["boxes"] / scale
        return preds

    def predict(self, images: list[Any], score_threshold: float = SHOWN_SCORE, batch_size: int = 8,
                precision: str = "auto", skip_bad: bool = False) -> list[dict[str, Any]]:
        """For each image path (or HxWx3 uint8 array): ``{"input", "boxes": [{"label", "score", "box": [x1, y1, x2,
        y2]}]}``, boxes in the image's own pixels, best score first, scores >= ``score_threshold``."""
        if isinstance(images, (str, Path)):
            raise TransferkitError("Pass a list of images, not a single one: model.predict([image]).")
        data = self.decode(images, skip_bad)
        model = self.detector.model
        saved = model.score_thresh
        model.score_thresh = min(saved, score_threshold)  # a lower threshold than the bundle's must show more boxes
        try:
            preds = self.detect_decoded(data, batch_size, precision)
        finally:
            model.score_thresh = saved
        out = []
        for name, p in zip(data.names, preds, strict=True):
            keep = p["scores"] >= score_threshold
            boxes = [{"label": self.classes[int(k)], "score": round(float(s), 4),
                      "box": [round(float(v), 1) for v in b]}
                     for b, k, s in zip(p["boxes"][keep], p["labels"][keep], p["scores"][keep], strict=True)]
            out.append({"input": name if not name.startswith("array #") else "<array>", "boxes": boxes})
        return out

    def draw(self, image: Any, path: str | Path, score_threshold: float = SHOWN_SCORE) -> Path:
        """Write ``image`` with its predicted boxes (class and score) as a PNG at ``path``."""
        from ..data.images import load_pil
        from ..evaluation.detection import draw_boxes, save_png

        data = self.decode([image], skip_bad=False)
        pred = self.detect_decoded(data)[0]
        pixels = np.asarray(load_pil(image)[0])
        save_png(draw_boxes(pixels, self.classes, pred, score_threshold=score_threshold), path)
        return Path(path)

    def evaluate(self, source: Any, skip_bad: bool = False) -> dict[str, Any]:
        """COCO metrics on images with boxes (COCO JSON, YOLO txt or Pascal VOC XML; its test split if it has one).
        Class names must be this model's; the data's class order may differ."""
        from ..evaluation.detection import check_coco, detection_metrics

        check_coco()  # before the images are read and detected, not after
        data, truth = self.read_annotated(source, skip_bad)
        return detection_metrics(self.detect_decoded(data), truth, self.classes)

    def read_annotated(self, source: Any, skip_bad: bool = False) -> tuple[Any, list[dict[str, torch.Tensor]]]:
        """Images with boxes (their test split if they have one), decoded as training decoded them, and their true
        boxes in the images' own pixels. Class names must be this model's.

        Raises:
            TransferkitError: a class this detector does not know (one line naming it and the model's classes)."""
        from ..data.boxes import load_box_test_set

        boxes, _ = load_box_test_set(source, skip_bad=skip_bad)
        unknown = sorted({c for labels in boxes.labels for c in labels} - set(self.classes))
        if unknown:
            raise TransferkitError(f"Classes {', '.join(unknown[:5])} in {source} are not classes of this model "
                                   f"({', '.join(self.classes)}): give data annotated with these classes.")
        data = self.decode_set(boxes, skip_bad)
        return data, [{"boxes": data.original_boxes(i), "labels": data.targets[i]} for i in range(len(data))]

    def decode_set(self, boxes: Any, skip_bad: bool):
        """A :class:`~transferkit.data.boxes.BoxSet` decoded as training decoded it, boxes scaled alike."""
        from ..data.detection import decode_boxes

        return decode_boxes(boxes, self.image_size, self.classes, interpolation=self.detector.preprocess.interpolation,
                            skip_bad=skip_bad, description="decoding")

    def export(self, out: str | Path, format: str = "onnx", check: Any = None, skip_bad: bool = False,
               quantize: str | None = None, max_drop: float = 0.01, calibration: Any = None,
               tolerance: float = 1e-4) -> dict[str, Any]:
        """Write a self-contained ONNX folder (``model.onnx`` giving every location's boxes and scores, the settings
        of the selection outside the graph, a reference ``predict.py`` that needs no transferkit) once onnxruntime's
        detections equal this model's on ``check`` (images, a folder, or an annotated set; default: the test images
        the bundle recorded). ``quantize="int8"``: the convolutions in INT8, refused when mAP drops more than
        ``max_drop`` on an annotated ``check``. Returns ``export.json``'s content. See
        :mod:`transferkit.export.detection`."""
        from ..export.detection import export_detector

        return export_detector(self, out, format=format, check=check, skip_bad=skip_bad, quantize=quantize,
                               max_drop=max_drop, calibration=calibration, tolerance=tolerance)

    def save(self, folder: str | Path) -> Path:
        """Write the bundle atomically: a crash leaves either the old bundle or the new one, never half."""
        from safetensors.torch import save_file

        from .. import __version__
        from .card import render_hub_readme, render_model_card
        from .format import BUNDLE_FORMAT

        det = self.detector
        own = ("format", "transferkit_version", "task", "labels", "backbone", "preprocess", "detector")
        config = {"format": BUNDLE_FORMAT, "transferkit_version": __version__, "task": TASK, "labels": self.classes,
                  "backbone": det.spec.to_dict(), "preprocess": det.preprocess.to_dict(), "detector": det.config,
                  **{k: v for k, v in self.meta.items() if k not in own}}
        state = {k: v.detach().cpu().contiguous() for k, v in det.state_dict().items()}
        with atomic_dir(folder) as tmp:
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": BUNDLE_FORMAT})
            (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
            plain = json.loads(json.dumps(config, default=str))
            (tmp / "model_card.md").write_text(render_model_card(plain), encoding="utf-8")
            (tmp / "README.md").write_text(render_hub_readme(plain), encoding="utf-8")  # a hub model repository
        return Path(folder)

    @classmethod
    def from_config(cls, folder: Path, config: dict[str, Any]) -> DetectionModel:
        """Rebuild from a bundle folder whose ``config.json`` (``config``) was read by
        :func:`~transferkit.bundle.format.read_config`; the weights are checked against the detector before use.

        Raises:
            TransferkitError: one line naming the file (and tensor) when the bundle does not hold this detector.
        """
        from ..backbones.protocol import BackboneSpec, PreprocessConfig
        from ..heads.detection import detector_from_config
        from .weights import load_weights, rebuild

        spec = BackboneSpec.from_dict(config["backbone"])
        det = rebuild(folder, lambda: detector_from_config(spec, PreprocessConfig.from_dict(config["preprocess"]),
                                                           config["detector"], pretrained=False), what="detector")
        load_weights(det, Path(folder) / "model.safetensors")
        return cls(det, config["labels"], {k: v for k, v in config.items() if k != "labels"})
