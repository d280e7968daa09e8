"""``transferkit.fit(..., task="detect")``: the detection run, top to bottom.

boxes (COCO / YOLO / VOC) -> detector (pretrained body + FPN + FCOS head) -> strategy -> engine -> COCO mAP,
drawn examples, report -> bundle
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .bundle.detection import DetectionModel
from .errors import TransferkitError


def choose_image_size(items: list[Any]) -> int:
    """The detector's input size (longer image side) when none is given: the median longer side of the training
    images, rounded up to a multiple of 32 and kept between 128 and 512 (a CPU-friendly ceiling; pass
    ``image_size`` for small objects in large photos)."""
    from PIL import Image

    sides = []
    for item in items:
        if isinstance(item, np.ndarray):
            sides.append(max(item.shape[:2]))
            continue
        try:
            with Image.open(item) as im:  # reads the header only
                sides.append(max(im.size))
        except OSError:
            continue  # unreadable: decoding names it (or skips it)
    side = float(np.median(sides)) if sides else 512.0
    return int(min(512, max(128, int(np.ceil(side / 32)) * 32)))


def fit_detector(data: Any, *, backbone: str | None, arch: str | None, strategy: str, out: str | Path | None,
                 deadline: float | None, budget_s: float | None, seed: int, skip_bad: bool, val_fraction: float,
                 test_fraction: float, precision: str, cpu: bool | None, resume: bool, image_size: int | None,
                 strategy_options: dict[str, Any], t_start: float) -> DetectionModel:
    """See :func:`transferkit.fit` (``task="detect"``)."""
    from .console import info
    from .data.boxes import load_box_splits
    from .data.detection import decode_boxes
    from .engine.accel import make_accelerator
    from .evaluation.detection import detection_metrics, write_detection_report
    from .heads.detection import build_detector
    from .strategies import TrainTask, create_strategy

    strat = create_strategy(strategy, "detection", **strategy_options)
    if image_size is not None and not 64 <= image_size <= 2048:
        raise TransferkitError(f"image_size {image_size} is out of range for detection: use 64 to 2048 pixels.")
    timings: dict[str, float] = {}
    t = time.monotonic()
    splits = load_box_splits(data, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, skip_bad=skip_bad)
    size = image_size or choose_image_size(splits.train.items)
    det = build_detector(backbone, splits.classes, size, arch=arch)
    parts = [(n, s) for n, s in (("train", splits.train), ("val", splits.val), ("test", splits.test)) if s is not None]
    info(f"data ({splits.format}): {len(splits.train)} train / {len(splits.val)} val / "
         f"{len(splits.test) if splits.test is not None else 0} test images, {len(splits.classes)} classes; "
         f"detector FCOS on {det.spec.name} at {size} px")
    timings["load_s"] = time.monotonic() - t
    t = time.monotonic()
    dec = {name: decode_boxes(s, size, splits.classes, interpolation=det.preprocess.interpolation, skip_bad=skip_bad,
                              description=f"decoding {name}") for name, s in parts}
    timings["decode_s"] = time.monotonic() - t

    accelerator = make_accelerator(precision, seed=seed, cpu=cpu)
    work_dir = Path(out) / ".work" if out else None
    if work_dir is not None and not resume and accelerator.is_main_process:
        import shutil

        shutil.rmtree(work_dir, ignore_errors=True)
    task = TrainTask(spec=det.spec, backbone=det, train=dec["train"], val=dec["val"], classes=splits.classes,
                     accelerator=accelerator, seed=seed, deadline=deadline, work_dir=work_dir)
    result = strat.fit(task)
    timings.update(result.timings)

    t = time.monotonic()
    model = DetectionModel(result.model.cpu().eval(), splits.classes)
    scores, preds = {}, {}
    for name in ("val", "test"):
        if name in dec:
            d = dec[name]
            preds[name] = model.detect_decoded(d, precision=precision)
            truth = [{"boxes": d.original_boxes(i), "labels": d.targets[i]} for i in range(len(d))]
            scores[name] = detection_metrics(preds[name], truth, splits.classes)
    scored = "test" if "test" in scores else "val"
    timings["evaluate_s"] = time.monotonic() - t
    timings["total_s"] = time.monotonic() - t_start

    summary = splits.summary()
    summary["boxes"] = {name: d.box_count() for name, d in dec.items()}
    summary["skipped"] = len(splits.skipped) + sum(len(d.skipped) for d in dec.values())
    metrics = {
        "task": "object-detection",
        "strategy": result.strategy,
        "backbone": {**det.spec.to_dict(), "preprocess": det.preprocess.to_dict()},
        "detector": {"type": "FCOS", **det.config},
        "data": summary,
        "val": scores["val"],
        "test": scores.get("test"),
        "history": result.history.to_dict(),
        "trainable_params": result.trainable_params,
        "precision": str(accelerator.mixed_precision),
        "processes": accelerator.num_processes,
        "device": str(accelerator.device),
        "seed": seed,
        "budget_s": budget_s,
        "timings": timings,
        "details": result.details,
    }
    model.meta = {"metrics": {k: metrics[k] for k in ("strategy", "val", "test", "data")}}
    if out is not None and accelerator.is_main_process:
        out = Path(out)
        model.save(out / "model")
        d = dec[scored]
        from .data.images import load_pil

        shown = _example_indices(d, 6)
        src = splits.test if scored == "test" else splits.val
        examples = {"images": [np.asarray(load_pil(src.items[d.kept[i]])[0]) for i in shown],
                    "preds": [preds[scored][i] for i in shown],
                    "truth": [{"boxes": d.original_boxes(i), "labels": d.targets[i]} for i in shown]}
        files = write_detection_report(out, metrics, examples)
        if work_dir is not None:
            import shutil

            shutil.rmtree(work_dir, ignore_errors=True)
        info(f"report: {files['report']}")
    model.metrics = metrics
    return model


def _example_indices(data: Any, n: int) -> list[int]:
    """Images to draw in the report: spread over the set (not just the first few), deterministic."""
    if len(data) <= n:
        return list(range(len(data)))
    return [int(round(i)) for i in np.linspace(0, len(data) - 1, n)]
