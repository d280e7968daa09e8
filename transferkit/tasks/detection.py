"""Object detection: boxes (COCO / YOLO / VOC) -> detector (pretrained body + FPN + FCOS head) -> strategy ->
engine -> COCO mAP, drawn examples, report -> bundle."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MAX_INPUT_SIZE, DataError, TransferkitError, check_number
from .base import Prepared, RunSettings, Task, loader_workers, run_record
from .classification import existing_parts


@dataclass
class DetectionOptions:
    """Detection settings beyond the run's own (``image_size`` is the longer image side)."""

    balance: str | None = field(default=None, metadata={
        "help": "sampler: draw images by their rarest object's class, each class equally often; none (default)."})

    def __post_init__(self) -> None:
        if self.balance == "weights":
            raise TransferkitError("--balance weights applies to classifiers: a detector's focal loss already weighs "
                                   "hard examples; --balance sampler draws images of rare objects more often.")
        if self.balance not in (None, "sampler", "none"):
            raise TransferkitError(f"Balance {self.balance!r} is unknown for detection: choose sampler or none.")


def choose_image_size(items: list[Any]) -> int:
    """The detector's input size (longer image side) when none is given: the median longer side of the training
    images, rounded up to a multiple of 32 and kept between 128 and 512 (a CPU-friendly ceiling; pass
    ``image_size`` for small objects in large photos)."""
    from ..data.images import open_image

    sides = []
    for item in items:
        if isinstance(item, np.ndarray):
            sides.append(max(item.shape[:2]))
            continue
        try:
            with open_image(item, item) as im:  # reads the header only
                sides.append(max(im.size))
        except (OSError, DataError):
            continue  # unreadable, too large or too elongated: decoding names it (or skips it)
    side = float(np.median(sides)) if sides else 512.0
    return int(min(512, max(128, int(np.ceil(side / 32)) * 32)))


ONE_DETECTOR = ("Detection takes one backbone and no scratch_baseline: compare detectors with --strategy scratch in a "
                "second run.")


class DetectionTask(Task):
    name = "detection"
    title = "object detection"
    bundle_task = "object-detection"
    modality = "detection"
    min_classes = 1
    Options = DetectionOptions
    sniff_order = 10
    plural = "boxes"
    ranks_backbones = False

    def sniff(self, data: Any, hints: dict[str, Any]) -> bool:
        from ..data.boxes import BoxSet, detect_box_format

        if hints.get("labels") is not None:
            return False
        if isinstance(data, BoxSet):
            return True
        return isinstance(data, (str, Path)) and detect_box_format(data) is not None

    def strategy_names(self) -> list[str]:
        from ..strategies import detection_strategy_names

        return detection_strategy_names()

    def create_strategy(self, name: str, backbone: Any, overrides: dict[str, Any]) -> Any:
        from ..strategies import create_detection_strategy

        return create_detection_strategy(name, **overrides)

    def check_backbones(self, names: list[str]) -> None:
        raise TransferkitError(ONE_DETECTOR)

    def check(self, settings: RunSettings, options: DetectionOptions) -> None:
        from ..evaluation.detection import check_coco

        check_coco()  # the run is scored by COCO mAP: without pycocotools, say so before any data is read
        if settings.scratch_baseline:
            raise TransferkitError(ONE_DETECTOR)
        if settings.image_size is not None:
            check_number("image_size (detection)", settings.image_size, low=64, high=MAX_INPUT_SIZE, whole=True,
                         example="640")

    def prepare(self, data: Any, backbone: str | None, settings: RunSettings, options: DetectionOptions,
                parts: tuple[str, ...] = ("train", "val", "test")) -> Prepared:
        from ..console import info
        from ..data.detection import decode_boxes
        from ..data.sources import DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION
        from ..heads.detection import build_detector

        t = time.monotonic()
        # detection always holds out a validation split (no cross-validation of detectors yet)
        val = DEFAULT_VAL_FRACTION if settings.val_fraction is None else settings.val_fraction
        test = DEFAULT_TEST_FRACTION if settings.test_fraction is None else settings.test_fraction
        start, splits = self.start_and_splits(data, dataclasses.replace(settings, val_fraction=val,
                                                                        test_fraction=test), options)
        if start is not None:  # --init-from: the bundle's detector, its class layer grown to the new classes
            det = start.backbone()
            det.grow(len(splits.classes))
            size = det.config["image_size"]
        else:
            size = settings.image_size or choose_image_size(splits.train.items)
            det = build_detector(backbone, splits.classes, size, arch=settings.arch)
        info(f"data ({splits.format}): {len(splits.train)} train / {len(splits.val)} val / "
             f"{len(splits.test) if splits.test is not None else 0} test images, {len(splits.classes)} classes; "
             f"detector FCOS on {det.spec.name} at {size} px")
        timings = {"load_s": time.monotonic() - t}
        t = time.monotonic()
        dec = {name: decode_boxes(s, size, splits.classes, interpolation=det.preprocess.interpolation,
                                  skip_bad=settings.skip_bad, description=f"decoding {name}")
               for name, s in existing_parts(splits, parts)}
        timings["decode_s"] = time.monotonic() - t
        return Prepared(splits, det, dec, timings, start=start)

    def load_splits(self, data: Any, settings: RunSettings, options: Any, known: Sequence[str] = ()) -> Any:
        """Boxes into splits (a detector's classes come from every split, so ``known`` changes nothing here)."""
        from ..data.boxes import load_box_splits

        return load_box_splits(data, val_fraction=settings.val_fraction, test_fraction=settings.test_fraction,
                               seed=settings.seed, skip_bad=settings.skip_bad)

    def train_task(self, prepared: Prepared, settings: RunSettings, options: Any, accelerator: Any,
                   deadline: float | None, work_dir: Path | None) -> Any:
        from ..strategies import TrainTask

        dec = prepared.encoded
        # detection strategies build their own loaders (lists of images and boxes): no batches object
        return TrainTask(spec=prepared.backbone.spec, backbone=prepared.backbone, train=dec["train"], val=dec["val"],
                         classes=prepared.classes, accelerator=accelerator, seed=settings.seed, deadline=deadline,
                         work_dir=work_dir, workers=loader_workers(settings, accelerator),
                         balance=getattr(options, "balance", None) or "none")

    def finish(self, result: Any, prepared: Prepared, settings: RunSettings, options: Any, train: Any,
               extras: dict[str, Any]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        from ..bundle.detection import DetectionModel
        from ..evaluation.detection import detection_metrics

        timings, dec, splits = extras["timings"], prepared.encoded, prepared.splits
        t = time.monotonic()
        model = DetectionModel(result.model.cpu().eval(), splits.classes)
        scores, preds = {}, {}
        for name in ("val", "test"):
            if name in dec:
                d = dec[name]
                preds[name] = model.detect_decoded(d, precision=settings.precision)
                truth = [{"boxes": d.original_boxes(i), "labels": d.targets[i]} for i in range(len(d))]
                scores[name] = detection_metrics(preds[name], truth, splits.classes)
        scored = "test" if "test" in scores else "val"
        timings["evaluate_s"] = time.monotonic() - t
        from .continued import after_training, keep_lineage

        continued = after_training(prepared.start, model, settings, options, timings)  # --init-from runs only
        timings["total_s"] = time.monotonic() - extras["t_start"]

        summary = splits.summary()
        summary["boxes"] = {name: d.box_count() for name, d in dec.items()}
        summary["skipped"] = len(splits.skipped) + sum(len(d.skipped) for d in dec.values())
        det = prepared.backbone
        metrics = {
            "task": self.bundle_task,
            "strategy": result.strategy,
            "backbone": {**det.spec.to_dict(), "preprocess": det.preprocess.to_dict()},
            "detector": {"type": "FCOS", **det.config},
            "data": summary,
            "val": scores["val"],
            "test": scores.get("test"),
            "history": result.history.to_dict(),
            **run_record(result, train, settings, timings, extras.get("budget")),
        }
        model.meta = {"metrics": {k: metrics[k] for k in ("strategy", "val", "test", "data")},
                      **self.recorded_files(prepared)}  # what export checks itself on and calibrates INT8 with
        if continued is not None:
            metrics["continued"] = continued
        keep_lineage(model, prepared.start, continued)
        return model, metrics, {"set": scored, "preds": preds[scored]}

    def write(self, out: Path, model: Any, metrics: dict[str, Any], prepared: Prepared,
              plots: dict[str, Any]) -> dict[str, str]:
        from ..data.images import load_pil
        from ..evaluation.detection import write_detection_report

        model.save(out / "model")
        scored = plots["set"]
        d = prepared.encoded[scored]
        shown = example_indices(d, 6)
        src = prepared.splits.test if scored == "test" else prepared.splits.val
        examples = {"images": [np.asarray(load_pil(src.items[d.kept[i]])[0]) for i in shown],
                    "preds": [plots["preds"][i] for i in shown],
                    "truth": [{"boxes": d.original_boxes(i), "labels": d.targets[i]} for i in shown]}
        return write_detection_report(out, metrics, examples)

    def load_model(self, folder: Path, config: dict[str, Any]) -> Any:
        from ..bundle.detection import DetectionModel

        return DetectionModel.from_config(folder, config)


def example_indices(data: Any, n: int) -> list[int]:
    """Images to draw in the report: spread over the set (not just the first few), deterministic."""
    if len(data) <= n:
        return list(range(len(data)))
    return [int(round(i)) for i in np.linspace(0, len(data) - 1, n)]
