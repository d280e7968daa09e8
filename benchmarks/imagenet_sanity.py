"""Are the packaged weights really ImageNet weights? Top-5 classes of real photos (scikit-image samples).

    .venv/bin/python benchmarks/imagenet_sanity.py
"""

from __future__ import annotations

import skimage.data
import torch
import torchvision
from PIL import Image

from transferkit.backbones import BACKBONES, create_backbone
from transferkit.data.images import normalize, resize_center_crop

PHOTOS = ["chelsea", "coffee", "rocket", "astronaut"]


def main() -> None:
    categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    for name in BACKBONES:
        bb = create_backbone(name).eval()
        print(f"{name} ({bb.preprocess.input_size[0]} px)")
        for photo in PHOTOS:
            img = Image.fromarray(getattr(skimage.data, photo)()).convert("RGB")
            x = torch.from_numpy(resize_center_crop(img, bb.preprocess)).permute(2, 0, 1)[None]
            with torch.no_grad():
                p = bb.source_head(bb(normalize(x, bb.preprocess))).softmax(1)[0]
            top = p.topk(5)
            print(f"  {photo:<10}" + ", ".join(f"{categories[i]} {v:.2f}"
                                               for v, i in zip(top.values, top.indices, strict=True)))


if __name__ == "__main__":
    main()
