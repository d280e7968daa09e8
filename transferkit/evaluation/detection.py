"""Detection scores (COCO mAP through torchmetrics), drawn predictions, and the run report for detectors."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import need
from ..io import atomic_write_bytes, atomic_write_text, write_json
from .report import continued_lines, run_id_line

# colour-blind-safe palette (Okabe-Ito), one colour per class, cycled
PALETTE = [(230, 159, 0), (86, 180, 233), (0, 158, 115), (240, 228, 66), (0, 114, 178), (213, 94, 0),
           (204, 121, 167), (120, 120, 120)]


def check_coco() -> None:
    """Scoring a detector needs torchmetrics and pycocotools (the ``detection`` extra): one line saying so."""
    need("torchmetrics.detection", "detection", "Scoring detectors (COCO mAP)", package="torchmetrics")
    # the evaluation itself, with its compiled part: a broken build fails here, before any work, not after inference
    need("pycocotools.cocoeval", "detection", "Scoring detectors (COCO mAP)", package="pycocotools")


def map_metric(**options: Any) -> Any:
    """torchmetrics' ``MeanAveragePrecision`` on xyxy boxes with the reference COCO evaluation (pycocotools)."""
    check_coco()
    from torchmetrics.detection import MeanAveragePrecision

    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools", **options)


def detection_metrics(preds: list[dict[str, torch.Tensor]], truth: list[dict[str, torch.Tensor]],
                      classes: list[str]) -> dict[str, Any]:
    """COCO box metrics for ``preds`` (``boxes`` xyxy, ``scores``, ``labels`` 0..K-1) against ``truth`` (``boxes``,
    ``labels``), image by image: mAP@[.5:.95], mAP@.5, mAP@.75, mAP for small/medium/large objects, recall with
    up to 100 detections per image, and AP per class (None for a class without true boxes).

    Computed by torchmetrics' ``MeanAveragePrecision`` with the pycocotools backend (the reference COCO
    evaluation). Also counts, at score >= 0.5 and IoU >= 0.5, how many true boxes were found and how many
    detections were wrong, which a domain expert reads more easily than AP.
    """
    metric = map_metric(class_metrics=True)
    metric.update([{k: p[k].float() if k != "labels" else p[k].long() for k in ("boxes", "scores", "labels")}
                   for p in preds],
                  [{"boxes": t["boxes"].float(), "labels": t["labels"].long()} for t in truth])
    r = metric.compute()

    def num(v: torch.Tensor) -> float | None:
        v = float(v)
        return None if v < 0 else v  # COCO writes -1 where there is nothing to score

    per_class: dict[str, float | None] = {c: None for c in classes}
    ids = r["classes"].reshape(-1).tolist()
    aps = r["map_per_class"].reshape(-1).tolist()
    ap50 = _ap50_per_class(preds, truth, len(classes))
    for i, ap in zip(ids, aps, strict=True):
        if 0 <= int(i) < len(classes):
            per_class[classes[int(i)]] = None if ap < 0 else float(ap)
    n_true = [int(sum(int((t["labels"] == k).sum()) for t in truth)) for k in range(len(classes))]
    found = _matches(preds, truth, len(classes))
    return {
        "n_images": len(truth),
        "n_boxes": int(sum(n_true)),
        "map": num(r["map"]), "map_50": num(r["map_50"]), "map_75": num(r["map_75"]),
        "map_small": num(r["map_small"]), "map_medium": num(r["map_medium"]), "map_large": num(r["map_large"]),
        "mar_100": num(r["mar_100"]),
        "per_class": {c: {"ap": per_class[c], "ap_50": ap50[k], "boxes": n_true[k], **found[k]}
                      for k, c in enumerate(classes)},
        "at_0.5": {key: sum(f[key] for f in found) for key in ("found", "missed", "false_alarms")},
    }


def _ap50_per_class(preds, truth, n_classes: int) -> list[float | None]:
    metric = map_metric(iou_thresholds=[0.5], class_metrics=True)
    metric.update([{"boxes": p["boxes"].float(), "scores": p["scores"].float(), "labels": p["labels"].long()}
                   for p in preds],
                  [{"boxes": t["boxes"].float(), "labels": t["labels"].long()} for t in truth])
    r = metric.compute()
    out: list[float | None] = [None] * n_classes
    for i, ap in zip(r["classes"].reshape(-1).tolist(), r["map_per_class"].reshape(-1).tolist(), strict=True):
        if 0 <= int(i) < n_classes and ap >= 0:
            out[int(i)] = float(ap)
    return out


def _matches(preds, truth, n_classes: int, score: float = 0.5, iou: float = 0.5) -> list[dict[str, int]]:
    """Per class: true boxes found by a detection (score >= ``score``, IoU >= ``iou``, each used once, best score
    first), true boxes missed, and detections that matched nothing."""
    from torchvision.ops import box_iou

    out = [{"found": 0, "missed": 0, "false_alarms": 0} for _ in range(n_classes)]
    for p, t in zip(preds, truth, strict=True):
        for k in range(n_classes):
            pb = p["boxes"][(p["labels"] == k) & (p["scores"] >= score)]
            ps = p["scores"][(p["labels"] == k) & (p["scores"] >= score)]
            tb = t["boxes"][t["labels"] == k]
            used = torch.zeros(len(tb), dtype=torch.bool)
            hits = 0
            if len(pb) and len(tb):
                ious = box_iou(pb[ps.argsort(descending=True)], tb)
                for row in ious:
                    row = row.masked_fill(used, -1.0)
                    j = int(row.argmax())
                    if row[j] >= iou:
                        used[j] = True
                        hits += 1
            out[k]["found"] += hits
            out[k]["missed"] += len(tb) - hits
            out[k]["false_alarms"] += len(pb) - hits
    return out


def draw_boxes(image: np.ndarray, classes: list[str], pred: dict[str, torch.Tensor] | None = None,
               truth: dict[str, torch.Tensor] | None = None, score_threshold: float = 0.3):
    """A PIL image with true boxes (thin white outline over black) and predicted boxes (thick, one colour per
    class, labelled "class 0.87")."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")
    draw = ImageDraw.Draw(img)
    width = max(2, round(max(img.size) / 200))
    if truth is not None:
        for box in truth["boxes"].tolist():
            draw.rectangle(box, outline=(0, 0, 0), width=width + 2)
            draw.rectangle(box, outline=(255, 255, 255), width=max(1, width // 2))
    if pred is not None:
        keep = pred["scores"] >= score_threshold
        for box, label, score in zip(pred["boxes"][keep].tolist(), pred["labels"][keep].tolist(),
                                     pred["scores"][keep].tolist(), strict=True):
            colour = PALETTE[int(label) % len(PALETTE)]
            draw.rectangle(box, outline=colour, width=width)
            text = f"{classes[int(label)]} {score:.2f}"
            left, top, right, bottom = draw.textbbox((box[0], box[1]), text)
            y = max(0, box[1] - (bottom - top) - 2)
            draw.rectangle((box[0], y, box[0] + right - left + 4, y + bottom - top + 2), fill=colour)
            draw.text((box[0] + 2, y), text, fill=(0, 0, 0))
    return img


def save_png(img, path: str | Path) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def examples_png(images: list[np.ndarray], preds: list[dict], truth: list[dict], classes: list[str], path: Path,
                 columns: int = 3) -> None:
    """A grid of drawn examples (predicted boxes in colour, true boxes in white)."""
    from PIL import Image

    drawn = [draw_boxes(im, classes, p, t, score_threshold=0.5) for im, p, t in zip(images, preds, truth, strict=True)]
    cell = max(max(d.size) for d in drawn)
    rows = (len(drawn) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * cell, rows * cell), (255, 255, 255))
    for i, d in enumerate(drawn):
        sheet.paste(d, ((i % columns) * cell, (i // columns) * cell))
    save_png(sheet, path)


def map_curve_png(epochs: list[dict], path: Path, title: str) -> None:
    """Training loss and validation mAP per epoch."""
    from .plots import pyplot, save_figure

    plt = pyplot()
    x = [e["epoch"] + 1 for e in epochs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(x, [e["train_loss"] for e in epochs], marker="o", ms=3)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (FCOS: focal + GIoU + centre-ness)")
    ax2.plot(x, [e["val_map"] for e in epochs], marker="o", ms=3, label="mAP@[.5:.95]")
    ax2.plot(x, [e["val_map50"] for e in epochs], marker="o", ms=3, label="mAP@.5")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation mAP")
    ax2.set_ylim(0, 1.02)
    ax2.legend()
    fig.suptitle(title)
    save_figure(fig, path)


def write_detection_report(out: Path, metrics: dict[str, Any], examples: dict[str, Any]) -> dict[str, str]:
    """``metrics.json``, ``learning_curve.png`` (loss and validation mAP), ``examples.png`` and ``report.md``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"metrics": out / "metrics.json", "learning_curve": out / "learning_curve.png",
             "examples": out / "examples.png", "report": out / "report.md"}
    write_json(files["metrics"], metrics)
    map_curve_png(metrics["history"]["epochs"], files["learning_curve"], f"Learning curve: {metrics['strategy']}")
    examples_png(examples["images"], examples["preds"], examples["truth"], metrics["data"]["classes"],
                 files["examples"])
    atomic_write_text(files["report"], render_detection_markdown(metrics) + run_id_line(metrics))
    return {k: str(v) for k, v in files.items()}


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def render_detection_markdown(m: dict[str, Any]) -> str:
    scored = "test" if m.get("test") else "val"
    s = m[scored]
    d = m["data"]
    hit = s["at_0.5"]
    lines = [
        f"# transferkit run: {m['strategy']} detector on {m['backbone']['name']}",
        "",
        f"- Data ({d['format']}): {d['train']} train / {d['val']} validation / {d['test']} test images, "
        f"{len(d['classes'])} classes, {d['boxes']['train']} training boxes (split: {d['split']})"
        + (f"; {d['skipped']} image(s) skipped" if d.get("skipped") else "") + ".",
        f"- Detector: FCOS with a feature pyramid on `{m['backbone']['name']}` ({m['backbone']['source']}, weights: "
        f"{m['backbone']['weights']}), images at {m['detector']['image_size']} px (longer side).",
        f"- Trainable parameters: {m['trainable_params']:,}; precision: {m['precision']}.",
        f"- Wall time: {m['timings']['total_s']:.1f} s "
        f"""({', '.join(f'{k.removesuffix(chr(95) + chr(115))} {v:.1f} s' for k, v in m['timings'].items()
                        if k != 'total_s')}).""",
        "",
        f"## Scores on the {scored} set ({s['n_images']} images, {s['n_boxes']} boxes)",
        "",
        f"**mAP@[.5:.95] {_f(s['map'])}**, mAP@.5 {_f(s['map_50'])}, mAP@.75 {_f(s['map_75'])}; "
        f"small / medium / large objects {_f(s['map_small'])} / {_f(s['map_medium'])} / {_f(s['map_large'])}; "
        f"recall (100 detections per image) {_f(s['mar_100'])}.",
        "",
        f"At score >= 0.5 and IoU >= 0.5: {hit['found']} of {s['n_boxes']} true boxes found, {hit['missed']} missed, "
        f"{hit['false_alarms']} false alarms.",
    ]
    if scored == "val":
        lines.append("No test set was given, so these are validation scores that also chose the "
                     "checkpoint: optimistic.")
    lines += ["", "| class | AP@[.5:.95] | AP@.5 | true boxes | found | missed | false alarms |",
              "|---|---|---|---|---|---|---|"]
    for c, v in s["per_class"].items():
        lines.append(f"| {c} | {_f(v['ap'])} | {_f(v['ap_50'])} | {v['boxes']} | {v['found']} | {v['missed']} | "
                     f"{v['false_alarms']} |")
    h = m["history"]
    lines += ["", "## Training", "",
              f"Best epoch {h['best_epoch'] + 1} of {len(h['epochs'])} ({h['stopped']}), chosen by "
              "validation mAP@[.5:.95]."]
    if m.get("details", {}).get("decision"):
        lines += ["", f"auto: {m['details']['decision']}; kept **{m['details']['chosen']}**."]
    if m.get("continued"):
        lines += ["", "## Continued from a bundle", "", *continued_lines(m["continued"])]
    lines += ["", f"## Examples ({scored} set)", "",
              "Predicted boxes in colour with class and score (>= 0.5); true boxes in white.", "",
              "![examples](examples.png)", "", "![learning curve](learning_curve.png)", ""]
    return "\n".join(lines)
