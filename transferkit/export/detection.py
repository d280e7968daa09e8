"""ONNX export of a detector bundle, with its detections checked against PyTorch's before anything is written.

The graph (:class:`~transferkit.heads.detection.LocationOutputs`) takes images on a padded canvas and gives every
location's box and class scores; what keeps a different number of boxes per image (the best candidates of each
pyramid level, non-maximum suppression) is outside it, in the reference script's ``select``
(:mod:`transferkit.export.scripts.detection`), whose JSON settings are in ``preprocessing.json``. The folder holds
what a classifier's does (:mod:`transferkit.export.onnx`), ``model.onnx`` with three outputs: ``boxes``,
``scores``, ``levels``.

Parity is checked twice on the same images: the graph's scores against the same module run by PyTorch (within the
tolerance), and the detections of onnxruntime plus ``select`` against the bundle's own (torchvision's
post-processing): the same boxes, labels and scores, or the export is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import TransferkitError
from ..heads.detection import SHOWN_SCORE
from .onnx import MAX_DROP, OPSET, TOLERANCE

OUTPUTS = ("boxes", "scores", "levels")
DYNAMIC = {"pixels": {0: "batch", 2: "height", 3: "width"}, "sizes": {0: "batch"}}


def export_detector(model: Any, out: str | Path, *, format: str = "onnx", check: Any = None, skip_bad: bool = False,
                    quantize: str | None = None, max_drop: float = MAX_DROP, calibration: Any = None,
                    opset: int = OPSET, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Export ``model`` (a loaded :class:`~transferkit.bundle.detection.DetectionModel`) to ``out``, once its
    detections on ``check`` (image files, a folder of images, or an annotated set, COCO/YOLO/VOC, whose test split is
    used; default: the test images the bundle recorded) match PyTorch's. ``quantize="int8"``: static INT8 of the
    convolutions (calibrated on ``calibration`` images or the training images the bundle recorded), refused when its
    mAP@[.5:.95] on the annotated check set is more than ``max_drop`` below fp32's. Returns ``export.json``'s
    content.

    Raises:
        TransferkitError: one line for bad options, missing check data, a failed export, detections that differ, or
            an INT8 model that is not INT8 or scores too low.
    """
    from .. import __version__
    from ..console import info
    from ..io import atomic_dir
    from ..rundir import locked
    from ..heads.detection import LocationOutputs
    from . import onnx as tk_onnx
    from .scripts.detection import select

    tk_onnx.check_options(format, quantize, max_drop, calibration)
    if quantize:  # INT8 is kept only if its mAP holds up against fp32's: scoring needs the detection extra
        from ..evaluation.detection import check_coco

        check_coco()
    out = tk_onnx.check_out(Path(out))
    onnx, ort = tk_onnx.onnx_runtime()
    data, source, truth = _check_data(model, check, skip_bad)
    if quantize and truth is None:
        raise TransferkitError("--quantize int8 compares the INT8 detector's mAP with fp32's, which needs annotated "
                               "images: --check the annotated folder or COCO file (its test split is used).")
    pre = settings(model)
    graph = LocationOutputs(model.detector).eval()
    step = pre["size_divisible"]
    inputs = {"pixels": torch.zeros(2, 3, 3 * step, 2 * step, dtype=torch.uint8),  # height != width: both dynamic
              "sizes": torch.tensor([[3 * step, 2 * step], [3 * step - 5, 2 * step]])}
    with locked(out, remove=True), atomic_dir(tk_onnx.tidied(out)) as tmp:
        fp32 = tmp / ("model.fp32.onnx" if quantize else "model.onnx")
        # torch.export finds the canvas arithmetic (strides rounding up) valid for the example's size only, and the
        # dynamo exporter then fixes height and width: the TorchScript exporter keeps them dynamic
        exporter = tk_onnx.export_graph(graph, inputs, DYNAMIC, fp32, opset, OUTPUTS, dynamo=False)
        session = tk_onnx.session_for(fp32)
        raw = _run(session, data, step)
        ours = [_detections(r, pre, scale, select) for r, scale in zip(raw, data.scales, strict=True)]
        theirs = model.detect_decoded(data, precision="no")
        parity = _compare(graph, data, raw, ours, theirs, pre, tolerance, source)
        meta = {"format": "onnx", "exporter": exporter, "opset": opset, "task": "object-detection",
                "model": "model.onnx",
                "inputs": {"pixels": {"dtype": "uint8", "dynamic": {"0": "batch", "2": "height", "3": "width"}},
                           "sizes": {"dtype": "int64", "dynamic": {"0": "batch"}}},
                "output": list(OUTPUTS), "versions": {"transferkit": __version__, "torch": torch.__version__,
                                                      "onnx": onnx.__version__, "onnxruntime": ort.__version__},
                "bundle": {"run_id": model.meta.get("run_id"), "backbone": model.detector.spec.name},
                "parity": parity}
        if quantize:
            feeds = _calibration_feeds(model, calibration, skip_bad)
            tk_onnx.quantize_int8(fp32, tmp / "model.onnx", "static", feeds, ops=("Conv",))
            quantized = _run(tk_onnx.session_for(tmp / "model.onnx"), data, step)
            int8 = [_detections(r, pre, scale, select) for r, scale in zip(quantized, data.scales, strict=True)]
            meta["int8"] = _int8_report(model, truth, ours, int8, tmp / "model.onnx", max_drop, source)
        (tmp / "labels.json").write_text(json.dumps(model.classes, indent=1))
        (tmp / "preprocessing.json").write_text(json.dumps(pre, indent=2))
        (tmp / "predict.py").write_text(tk_onnx.reference_script("detection"))
        (tmp / "export.json").write_text(json.dumps(meta, indent=2))
    info(f"exported to {out}: onnxruntime's detections equal PyTorch's on {parity['inputs']} image(s) from {source} "
         f"({parity['detections']} boxes; scores within {parity['max_abs_diff']:.1e}, limit {tolerance:g})")
    if quantize:
        tk_onnx.tell_int8(meta["int8"], "static, convolutions", "annotated image(s)")
    return meta


def settings(model: Any) -> dict[str, Any]:
    """``preprocessing.json`` of an exported detector: how an image reaches the graph, and how ``select`` keeps
    boxes (torchvision FCOS's settings, as the bundle's detector uses them)."""
    fcos = model.detector.model
    pre = model.detector.preprocess
    return {"kind": "detection",
            "graph_input": "pixels: (batch, 3, height, width) uint8 RGB, each image at the top left of a canvas whose "
                           "sides are multiples of size_divisible; sizes: (batch, 2) int64, each image's height and "
                           "width on it",
            "graph_output": "boxes: (batch, locations, 4) x1, y1, x2, y2 in the resized image's pixels; scores: "
                            "(batch, locations, classes + 1), channel 0 the background; levels: (locations,) int64, "
                            "each location's pyramid level",
            "outside_graph": "before: open the image, apply its EXIF orientation, convert to RGB, resize its longer "
                             "side to image_size (interpolation), put it on the canvas; after: per level the "
                             "topk_candidates best (location, class) pairs over score_thresh, non-maximum suppression "
                             "per class at nms_thresh, the best detections_per_img, the background dropped, boxes "
                             "divided by the resize scale, those scoring at least threshold shown",
            "image_size": int(model.image_size), "interpolation": pre.interpolation,
            "size_divisible": int(fcos.transform.size_divisible), "mean": list(pre.mean), "std": list(pre.std),
            "score_thresh": float(fcos.score_thresh), "nms_thresh": float(fcos.nms_thresh),
            "detections_per_img": int(fcos.detections_per_img), "topk_candidates": int(fcos.topk_candidates),
            "threshold": SHOWN_SCORE}


def canvas(image: torch.Tensor, step: int) -> tuple[np.ndarray, np.ndarray]:
    """A decoded uint8 (3, h, w) image on its canvas (1, 3, H, W) and its size (1, 2), by the reference script's
    own ``placed``."""
    from .scripts.detection import placed

    return placed(image.numpy(), step)


def _run(session: Any, data: Any, step: int) -> list[tuple[np.ndarray, ...]]:
    """The graph's outputs for every decoded image, one image at a time (each on its own canvas, sides multiples of
    ``step``), with the canvas and size fed."""
    from .onnx import first_line

    out = []
    try:
        for image in data.images:
            pixels, sizes = canvas(image, step)
            boxes, scores, levels = session.run(list(OUTPUTS), {"pixels": pixels, "sizes": sizes})
            out.append((boxes[0], scores[0], levels, pixels, sizes))
    except Exception as err:  # noqa: BLE001 - onnxruntime's own exception types: one line for the user
        raise TransferkitError(f"onnxruntime failed to run the exported detector ({type(err).__name__}: "
                               f"{first_line(err)}); nothing was written.") from None
    return out


def _detections(raw: tuple[np.ndarray, ...], pre: dict[str, Any], scale: float, select: Any) -> dict[str, Any]:
    b, s, k = select(raw[0], raw[1], raw[2], pre)
    return {"boxes": torch.from_numpy(b / scale).float(), "scores": torch.from_numpy(s).float(),
            "labels": torch.from_numpy(k).long()}


def _compare(graph: Any, data: Any, raw: list[tuple[np.ndarray, ...]], ours: list[dict[str, Any]],
             theirs: list[dict[str, Any]], pre: dict[str, Any], tolerance: float, source: str) -> dict[str, Any]:
    """The parity figures; raises when they do not hold. Scores: the graph's, onnxruntime against PyTorch.
    Detections: each image's boxes from onnxruntime and ``select`` against the bundle's, matched by label, box
    (within ``tolerance`` x image size pixels) and score (within ``tolerance``); a box scoring within ``tolerance``
    of the candidate threshold may be on one side only."""
    diff = box_diff = 0.0
    with torch.no_grad():
        for boxes, scores, _, pixels, sizes in raw:
            b, s, _ = graph(torch.from_numpy(pixels), torch.from_numpy(sizes))
            diff = max(diff, float(np.abs(scores - s[0].numpy()).max()) if np.isfinite(scores).all() else np.inf)
            box_diff = max(box_diff, float(np.abs(boxes - b[0].numpy()).max()))
    near = pre["score_thresh"] + tolerance
    box_tolerance = max(0.01, tolerance * pre["image_size"])
    differ = count = 0
    for a, b in zip(theirs, ours, strict=True):
        a_keep, b_keep = a["scores"] >= near, b["scores"] >= near
        count += int(a_keep.sum())
        if not _same(*(d[a_keep] for d in (a["boxes"], a["scores"], a["labels"])),
                     *(d[b_keep] for d in (b["boxes"], b["scores"], b["labels"])), box_tolerance, tolerance):
            differ += 1
    if not diff <= tolerance or differ:
        raise TransferkitError(f"The ONNX detector differs from the bundle on {source}: scores by up to {diff:.1e} "
                               f"(limit {tolerance:g}), the detections of {differ} image(s) differ; nothing was "
                               "written. Report it with the bundle's backbone name.")
    return {"inputs": len(raw), "max_abs_diff": diff, "max_box_diff_px": box_diff, "detections": count,
            "images_differ": differ, "tolerance": tolerance, "source": source}


def _same(boxes_a: torch.Tensor, scores_a: torch.Tensor, labels_a: torch.Tensor, boxes_b: torch.Tensor,
          scores_b: torch.Tensor, labels_b: torch.Tensor, box_tolerance: float, tolerance: float) -> bool:
    """Whether two images' detections are the same set: every box of one matched by a box of the other."""
    if len(boxes_a) != len(boxes_b):
        return False
    free = list(range(len(boxes_b)))
    for box, score, label in zip(boxes_a, scores_a, labels_a, strict=True):
        match = next((j for j in free if labels_b[j] == label and abs(float(scores_b[j] - score)) <= tolerance
                      and float((boxes_b[j] - box).abs().max()) <= box_tolerance), None)
        if match is None:
            return False
        free.remove(match)
    return True


def _check_data(model: Any, check: Any, skip_bad: bool) -> tuple[Any, str, list[dict[str, Any]] | None]:
    """The decoded images the export is checked on, where they came from, and their true boxes when annotated."""
    from ..data.boxes import detect_box_format
    from .onnx import recorded

    if check is None:
        present = recorded(model, "test_files", "test images")
        if not present:
            raise TransferkitError("This detector records no test images that still exist: give images to check the "
                                   "export with (--check images, a folder, or the annotated folder).")
        return model.decode(present, skip_bad), f"the bundle's test split ({len(present)} images)", None
    given = Path(check) if isinstance(check, (str, Path)) else None
    if given is not None and given.exists() and detect_box_format(given) is not None:
        data, truth = model.read_annotated(given, skip_bad)
        return data, f"{given} ({len(data)} annotated images)", truth
    if given is not None and given.is_dir():
        from ..data.sources import IMAGE_SUFFIXES
        from .onnx import files_under

        check = files_under(given, IMAGE_SUFFIXES)
        if not check:
            raise TransferkitError(f"{given} holds no images and no annotations: give images to check the export with.")
    items = [check] if isinstance(check, (str, Path)) else list(check)
    data = model.decode(items, skip_bad)
    return data, (str(given) if given is not None else f"{len(items)} given image(s)"), None


def _calibration_feeds(model: Any, calibration: Any, skip_bad: bool) -> list[dict[str, np.ndarray]]:
    """One graph input per calibration image (each on its own canvas): ``calibration`` (files or a folder), else the
    training images the bundle recorded; up to 64."""
    from ..data.sources import IMAGE_SUFFIXES
    from .onnx import files_under, recorded

    if calibration is None:
        calibration = recorded(model, "calibration_files", "training images")
        if not calibration:
            raise TransferkitError("Static INT8 quantization calibrates on training images, and this bundle's recorded "
                                   "training images are gone: give some with --calibration (a folder or files).")
    elif isinstance(calibration, (str, Path)) and Path(calibration).is_dir():
        calibration = files_under(Path(calibration), IMAGE_SUFFIXES)
        if not calibration:
            raise TransferkitError("The --calibration folder holds no images: give training images.")
    items = [calibration] if isinstance(calibration, (str, Path)) else list(calibration)
    data = model.decode(items[:64], skip_bad)
    step = int(model.detector.model.transform.size_divisible)
    return [dict(zip(("pixels", "sizes"), canvas(image, step), strict=True)) for image in data.images]


def _int8_report(model: Any, truth: list[dict[str, Any]], fp32: list[dict[str, Any]], int8: list[dict[str, Any]],
                 path: Path, max_drop: float, source: str) -> dict[str, Any]:
    """The INT8 detector's mAP@[.5:.95] beside fp32's on the same annotated images; raises as
    :func:`~transferkit.export.onnx.judge_int8` does."""
    from ..evaluation.detection import detection_metrics
    from .onnx import int8_share, judge_int8

    scores = [detection_metrics(preds, truth, model.classes)["map"] for preds in (fp32, int8)]
    if any(s is None or not np.isfinite(s) for s in scores):
        raise TransferkitError(f"The check data ({source}) hold no boxes, so mAP cannot be measured and INT8 cannot be "
                               "compared with fp32: --check an annotated folder with boxes in its test split.")
    report = {"method": "static", "ops": ["Conv"], "metric": "map", "inputs": len(truth),
              "fp32": float(scores[0]), "int8": float(scores[1]), "max_drop": max_drop,
              "int8_weight_share": int8_share(path), "file_mb": path.stat().st_size / 2**20,
              "fp32_file_mb": path.with_name("model.fp32.onnx").stat().st_size / 2**20, "source": source}
    return judge_int8(report, source)
