"""Detect objects with a transferkit detector exported to ONNX: onnxruntime, numpy and Pillow only.

    python predict.py EXPORTED_FOLDER photo.jpg [more images ...]

One JSON line per image: its boxes (label, score, box as x1, y1, x2, y2 in the image's own pixels), best first,
those scoring at least ``threshold`` (preprocessing.json; 0.3, as transferkit predict). The graph gives every
location's box and class scores; keeping the best candidates of each pyramid level and suppressing overlapping
boxes (non-maximum suppression) happen here, as torchvision's FCOS does them.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
           "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def canvas(path, pre):
    """The image as the detector saw it in training: upright, RGB, its longer side resized to ``image_size``, at the
    top left of a black canvas whose sides are multiples of ``size_divisible``. Returns the canvas (1, 3, H, W)
    uint8, the image's size on it (1, 2) and the scale from the image's pixels to the resized ones. 16-bit and
    DICOM files are read as Pillow reads them, not through transferkit's windows."""
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    w, h = img.size
    size = pre["image_size"]
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    img = img.resize((nw, nh), FILTERS.get(pre["interpolation"], Image.Resampling.BILINEAR))
    pixels, sizes = placed(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1), pre["size_divisible"])
    return pixels, sizes, (nw / w + nh / h) / 2


def placed(image, step):
    """A (3, h, w) uint8 image at the top left of a black canvas (1, 3, H, W) whose sides are the multiples of
    ``step`` at or above h and w, and its size on it (1, 2)."""
    h, w = image.shape[-2:]
    out = np.zeros((1, 3, -(-h // step) * step, -(-w // step) * step), dtype=np.uint8)
    out[0, :, :h, :w] = image
    return out, np.array([[h, w]], dtype=np.int64)


def nms(boxes, scores, iou):
    """Greedy non-maximum suppression: the best box first, then every box overlapping a kept one by more than
    ``iou`` (intersection over union) goes. Positions kept, best first."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        inter = (np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
                 * np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None))
        with np.errstate(divide="ignore", invalid="ignore"):
            overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(overlap > iou)]  # a zero-area pair (NaN) is not an overlap
    return np.array(keep, dtype=np.int64)


def select(boxes, scores, levels, pre):
    """One image's detections from the graph's outputs, as torchvision's FCOS selects them: per pyramid level the
    ``topk_candidates`` best (location, class) pairs scoring over ``score_thresh``; then non-maximum suppression per
    class at ``nms_thresh``; the best ``detections_per_img``; the background class (channel 0) dropped. Returns
    boxes (N, 4), scores (N,) and class indices (N,), best first."""
    classes = scores.shape[1]
    found = []
    for level in np.unique(levels):
        at = np.flatnonzero(levels == level)
        flat = scores[at].reshape(-1)
        over = np.flatnonzero(flat > pre["score_thresh"])
        best = over[np.argsort(-flat[over], kind="stable")[: pre["topk_candidates"]]]
        found.append((boxes[at[best // classes]], flat[best], best % classes))
    b, s, k = (np.concatenate(parts) for parts in zip(*found, strict=True))
    kept = np.concatenate([np.flatnonzero(k == c)[nms(b[k == c], s[k == c], pre["nms_thresh"])]
                           for c in np.unique(k)] or [np.zeros(0, np.int64)])
    kept = kept[np.argsort(-s[kept], kind="stable")][: pre["detections_per_img"]]
    kept = kept[k[kept] > 0]
    return b[kept], s[kept], k[kept] - 1


def detect(session, path, pre):
    """Boxes (in the image's own pixels), scores and class indices of one image, best first."""
    pixels, sizes, scale = canvas(path, pre)
    boxes, scores, levels = session.run(["boxes", "scores", "levels"], {"pixels": pixels, "sizes": sizes})
    # a threshold under the detector's own candidate threshold shows the boxes in between too
    b, s, k = select(boxes[0], scores[0], levels, {**pre, "score_thresh": min(pre["score_thresh"], pre["threshold"])})
    return b / scale, s, k


def main(folder, paths):
    folder = Path(folder)
    pre = json.loads((folder / "preprocessing.json").read_text())
    labels = json.loads((folder / "labels.json").read_text())
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    for path in paths:
        try:
            b, s, k = detect(session, path, pre)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # not an image, truncated,
            # missing, a garbage EXIF block, over Pillow's pixel limit: say so and go on with the others
            print(json.dumps({"input": str(path), "error": f"not a readable image ({err})"}))
            continue
        shown = s >= pre["threshold"]
        print(json.dumps({"input": str(path), "boxes": [
            {"label": labels[int(c)], "score": round(float(v), 4), "box": [round(float(x), 1) for x in box]}
            for box, v, c in zip(b[shown], s[shown], k[shown], strict=True)]}))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python predict.py EXPORTED_FOLDER image [image ...]")
    main(sys.argv[1], sys.argv[2:])
