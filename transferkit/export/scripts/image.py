"""Predict with a transferkit image classifier exported to ONNX: onnxruntime, numpy and Pillow only.

    python predict.py EXPORTED_FOLDER photo.jpg [more images ...]

One JSON line per image: the label, its probability and every class's probability.
"""

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
           "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


def pixels(path, pre):
    """The image as the model saw it in training: upright, RGB, resized and centre-cropped (or padded to a square),
    as (3, H, W) uint8. Scaling and mean/std are in the graph."""
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    h, w = pre["input_size"]
    resample = FILTERS.get(pre["interpolation"], Image.Resampling.BICUBIC)
    iw, ih = img.size
    if pre["resize"] == "pad":
        side = max(iw, ih)
        nw, nh = max(1, round(iw * w / side)), max(1, round(ih * h / side))
        square = Image.new("RGB", (w, h))
        square.paste(img.resize((nw, nh), resample), ((w - nw) // 2, (h - nh) // 2))
        img = square
    else:  # shorter side to size / crop_pct, then the centre crop, resampled from the source in one step
        scale_to = int(round(max(h, w) / pre["crop_pct"]))
        ratio = scale_to / min(iw, ih)
        nw, nh = max(w, round(iw * ratio)), max(h, round(ih * ratio))
        left, top = (nw - w) // 2, (nh - h) // 2
        sx, sy = iw / nw, ih / nh
        img = img.resize((w, h), resample, box=(left * sx, top * sy, (left + w) * sx, (top + h) * sy))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def decide(p, labels, pre):
    """The predicted label: the most probable class, or for a medical model the positive class whenever its
    probability reaches the operating threshold."""
    if pre.get("positive") is not None:
        k = labels.index(pre["positive"])
        return k if p[k] >= pre["threshold"] else 1 - k
    return int(p.argmax())


def present(p, labels, pre):
    """Multi-label: every label whose probability reaches its threshold (one per label, or one for all), the most
    probable first."""
    cut = np.broadcast_to(np.asarray(pre["threshold"], dtype=float), p.shape)
    return [labels[i] for i in np.argsort(-p) if p[i] >= cut[i]]


def main(folder, paths):
    folder = Path(folder)
    pre = json.loads((folder / "preprocessing.json").read_text())
    labels = json.loads((folder / "labels.json").read_text())
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    readable, batch = [], []
    for path in paths:
        try:
            batch.append(pixels(path, pre))
            readable.append(path)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # not an image, truncated,
            # missing, a garbage EXIF block, over Pillow's pixel limit: say so and go on with the others
            print(json.dumps({"input": str(path), "error": f"not a readable image ({err})"}))
    if not batch:
        return
    probs = session.run(["probabilities"], {"pixels": np.stack(batch)})[0]
    for path, p in zip(readable, probs, strict=True):
        row = {"input": str(path)}
        if pre.get("multi_label"):
            row["labels"] = present(p, labels, pre)
        else:
            k = decide(p, labels, pre)
            row |= {"label": labels[k], "probability": float(p[k])}
        row["probabilities"] = {label: float(q) for label, q in zip(labels, p, strict=True)}
        print(json.dumps(row))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python predict.py EXPORTED_FOLDER image [image ...]")
    main(sys.argv[1], sys.argv[2:])
