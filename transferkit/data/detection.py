"""Images with boxes, decoded once per run at the detector's size, and the augmentation that moves boxes with
the pixels (torchvision transforms v2).

Each image is resized so its longer side is the detector's ``image_size`` (the aspect ratio stays), and its
boxes are scaled with it; the detector's own transform then only normalises and pads. Predictions are mapped
back to the original image's pixels with the stored scale, so metrics and drawn boxes use the user's pixels.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..console import progress, warn
from ..errors import DataError
from .parallel import in_order
from .images import INTERPOLATION, load_pil


@dataclass
class DecodedBoxes:
    """``images[i]``: uint8 ``(3, h, w)`` with ``max(h, w) == size``; ``boxes[i]``: float ``(n, 4)`` xyxy in those
    pixels; ``targets[i]``: class indices ``(n,)``; ``scales[i]``: decoded size / original size. ``kept``: each
    decoded image's position in the source (unreadable ones skipped leave gaps)."""

    images: list[torch.Tensor]
    boxes: list[torch.Tensor]
    targets: list[torch.Tensor]
    scales: list[float]
    names: list[str]
    fingerprints: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def original_boxes(self, i: int) -> torch.Tensor:
        return self.boxes[i] / self.scales[i]

    def box_count(self) -> int:
        return int(sum(len(b) for b in self.boxes))


def decode_boxes(source: Any, size: int, classes: list[str], *, interpolation: str = "bilinear",
                 skip_bad: bool = False, description: str = "decoding images", workers: int = 2) -> DecodedBoxes:
    """Decode every image of a :class:`~transferkit.data.boxes.BoxSet` once, longer side to ``size``, boxes scaled."""
    n = len(source)
    index = {c: i for i, c in enumerate(classes)}
    resample = INTERPOLATION.get(interpolation, INTERPOLATION["bilinear"])

    def work(i: int):
        try:
            img, fp = load_pil(source.items[i])
        except DataError as err:
            return i, None, 0.0, "", err
        w, h = img.size
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        arr = np.asarray(img.resize((nw, nh), resample), dtype=np.uint8)
        return i, arr, (nw / w, nh / h), fp, None

    out = DecodedBoxes([], [], [], [], [])
    with progress() as bar, ThreadPoolExecutor(max_workers=workers) as pool:
        task = bar.add_task(description, total=n, status="")
        for i, arr, scale, fp, err in in_order(pool, work, range(n)):
            bar.advance(task)
            if err is not None:
                if not skip_bad:
                    raise err
                out.skipped.append(str(source.items[i]))
                continue
            sx, sy = scale
            boxes = torch.as_tensor(np.asarray(source.boxes[i], dtype=np.float32).reshape(-1, 4))
            boxes = boxes * torch.tensor([sx, sy, sx, sy])
            out.images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous())
            out.boxes.append(boxes)
            out.targets.append(torch.tensor([index[c] for c in source.labels[i]], dtype=torch.long))
            out.scales.append((sx + sy) / 2)
            item = source.items[i]
            out.names.append(f"array #{i}" if isinstance(item, np.ndarray) else str(item))
            out.fingerprints.append(fp)
            out.kept.append(i)
    if out.skipped:
        warn(f"skipped {len(out.skipped)} unreadable image(s), e.g. {out.skipped[0]}")
    if not out.images:
        raise DataError(f"No readable images in {getattr(source, 'origin', '') or 'the data'}: check the "
                        "files are images.")
    return out


def detection_augment(mean: tuple[float, ...], hflip: bool = True):
    """Colour jitter, zoom-out (the image shrinks onto a mean-coloured canvas: small objects), an SSD-style IoU
    crop (large objects, partly cut), and a horizontal flip. Boxes move with the pixels; boxes that end up
    degenerate or outside the crop are dropped with their labels."""
    from torchvision.transforms import v2

    fill = [round(255 * m) for m in mean]
    ops = [
        v2.RandomPhotometricDistort(p=0.5),
        v2.RandomApply([v2.RandomZoomOut(fill=fill, side_range=(1.0, 1.8))], p=0.3),
        v2.RandomApply([v2.RandomIoUCrop()], p=0.3),
    ]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    ops.append(v2.SanitizeBoundingBoxes(min_size=2))
    return v2.Compose(ops)


class DetectionDataset(Dataset):
    """Decoded images and their targets (``boxes``, ``labels`` 1..K: 0 is torchvision's background); with
    ``augment``, :func:`detection_augment` on each draw."""

    def __init__(self, data: DecodedBoxes, augment: bool = False, hflip: bool = True,
                 mean: tuple[float, ...] = (0.5, 0.5, 0.5)):
        self.data = data
        self.transform = detection_augment(mean, hflip) if augment else None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img, boxes, labels = self.data.images[i], self.data.boxes[i], self.data.targets[i] + 1
        if self.transform is not None:
            from torchvision import tv_tensors

            sample = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(img.shape[-2:])),
                      "labels": labels}
            img, sample = self.transform(tv_tensors.Image(img), sample)
            img, boxes, labels = (img.as_subclass(torch.Tensor), sample["boxes"].as_subclass(torch.Tensor),
                                  sample["labels"])
        return img, {"boxes": boxes.float(), "labels": labels}


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Detection batches stay lists: images differ in size, and so does the number of boxes."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
