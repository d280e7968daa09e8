"""Image classification: class folders or a path,label table -> uint8 images decoded once at the backbone's
input size (kept in the pixel cache) -> random-resized-crop/flip batches, normalised in channels_last."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch.utils.data import Dataset

from ..errors import TransferkitError
from .base import Prepared, RunSettings, replace_preprocess
from .classification import ClassificationTask, LabelOptions, announce, existing_parts


@dataclass
class ImageOptions(LabelOptions):
    """Image settings beyond the run's own (``image_size`` is a run setting)."""

    window: str | None = field(default=None, metadata={
        "help": 'DICOM/NIfTI/16-bit images to 8 bits: "auto", a CT preset such as "lung", or "centre,width".'})
    slices: Literal["2d", "2.5d"] | None = field(default=None, metadata={
        "help": "Volumes: one slice per image (2d) or three neighbouring slices as channels (2.5d)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        from ..data.medical import check_slices, check_window

        self.window = check_window(self.window) if self.window is not None else None
        self.slices = check_slices(self.slices) if self.slices is not None else None


class ImageTensorDataset(Dataset):
    """uint8 images (``DecodedImages``: a tensor in memory or rows read from the pixel cache one image at a time,
    in each DataLoader worker); random-resized-crop and flip when ``augment``."""

    def __init__(self, data: Any, augment: bool = False, hflip: bool = True):
        self.pixels = data.pixels
        self.targets = data.targets
        self.transform = None
        if augment:
            from torchvision.transforms import v2

            size = tuple(self.pixels.shape[-2:])
            ops = [v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True)]
            if hflip:
                ops.append(v2.RandomHorizontalFlip())
            self.transform = v2.Compose(ops)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pixels[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[i]


def image_copies(prepared: Prepared) -> Any:
    """The same picture (by its decoded pixels) in training and in a split that scores the model, or twice in a
    cross-validated training split (:class:`~transferkit.data.copies.Copies`, or None)."""
    import numpy as np

    from ..data.copies import find_copies
    from ..data.images import pixel_keys

    parts = {}
    for name, data in prepared.encoded.items():
        items = getattr(prepared.splits, name).items
        names = [f"array #{i}" if isinstance(items[i], np.ndarray) else str(items[i]) for i in data.kept]
        parts[name] = (pixel_keys(data), names)
    return find_copies(parts, within=("train",) if prepared.splits.val is None else ())


class ImageTask(ClassificationTask):
    name = "image"
    title = "image classification"
    bundle_task = "image-classification"
    modality = "image"
    Options = ImageOptions
    sniff_order = 90
    plural = "images (DICOM, NIfTI, 16-bit PNG/TIFF)"
    unit = "images"
    val_batch: ClassVar[int] = 64
    patients: ClassVar[bool] = False  # patient-level splits (medical)
    resize: ClassVar[str | None] = None  # the backbone's resize rule for these data, when not its own ("pad")
    reading_options = ("label_sep",)

    def matches_bundle(self, config: dict[str, Any]) -> bool:
        return super().matches_bundle(config) and not config.get("clinical")

    def sniff(self, data: Any, hints: dict[str, Any]) -> bool:
        return True  # the fallback: anything that is not boxes, texts or audio is read as images

    def load_splits(self, data: Any, settings: RunSettings, options: ImageOptions, known: Sequence[str] = ()) -> Any:
        from ..data.sources import load_splits

        return load_splits(data, val_fraction=settings.val_fraction, test_fraction=settings.test_fraction,
                           seed=settings.seed, skip_bad=settings.skip_bad, patients=self.patients,
                           patient_column=getattr(options, "patient_column", None), known=known,
                           label_sep=options.label_sep)

    def prepare(self, data: Any, backbone: str | None, settings: RunSettings, options: ImageOptions,
                parts: tuple[str, ...] = ("train", "val", "test")) -> Prepared:
        """Images -> splits (patient-level for medical images), the image backbone (resolution, window and slices
        applied) and every split decoded once."""
        from ..backbones.registry import create_backbone
        from ..data.images import decode

        t = time.monotonic()
        start, splits = self.start_and_splits(data, settings, options)
        if start is not None:  # --init-from: the bundle's backbone and preprocessing, as they were saved
            bb = start.backbone()
        else:
            bb = create_backbone(backbone, arch=settings.arch, modality="image")
            self.finish_preprocess(bb, settings, options)
        if splits.val is not None and len(splits.val) == 0:
            unit = "patients" if self.patients else "images"
            raise TransferkitError(f"The validation split is empty: give each class at least 3 {unit} (or a val "
                                   "split), so that epochs can be chosen on data the model does not train on.")
        prepared = Prepared(splits, bb, {}, start=start)
        announce(prepared, f"{bb.num_features}-d features, {bb.preprocess.input_size[0]} px")
        prepared.timings["load_s"] = time.monotonic() - t
        t = time.monotonic()
        prepared.encoded = {name: decode(ds, bb.preprocess, splits.classes, skip_bad=settings.skip_bad,
                                         description=f"decoding {name}") for name, ds in existing_parts(splits, parts)}
        prepared.timings["decode_s"] = time.monotonic() - t
        from ..data.copies import answer_copies

        prepared.copies = image_copies(prepared)
        answer_copies(prepared.copies, self.unit, refuse=self.patients)  # medical: refused, as for patients
        return prepared

    def data_summary(self, prepared: Prepared, multi_label: bool) -> dict[str, Any]:
        summary = super().data_summary(prepared, multi_label)
        copies = prepared.copies
        return summary | ({"copies": copies.as_dict(self.unit)} if copies is not None else {})

    def finish_preprocess(self, bb: Any, settings: RunSettings, options: ImageOptions) -> None:
        """The backbone's preprocessing for these data: window and slices, then the resolution."""
        if options.window is not None or options.slices is not None:  # saved with the bundle: predict reads alike
            replace_preprocess(bb, window=options.window or bb.preprocess.window,
                               slices=options.slices or bb.preprocess.slices)
        if self.resize is not None:
            replace_preprocess(bb, resize=self.resize)
        if settings.image_size is not None:
            # its range is checked with the run's settings; the backbone's mean/std/interpolation stay, only the
            # resolution changes (and is saved in the bundle)
            replace_preprocess(bb, input_size=(settings.image_size, settings.image_size))

    def input_summary(self, metrics: dict[str, Any]) -> str:
        return f"{metrics['backbone']['input_size'][0]} px input"

    def baseline_preprocess(self, backbone: str | None, options: ImageOptions) -> Any:
        """The runs' backbone's image preprocessing (its crop; window, slices and padding for medical images), so
        the classical baseline sees the same part of each image. Built without weights: only the config is read."""
        from ..backbones.registry import create_backbone

        bb = create_backbone(backbone, pretrained=False, modality="image")
        self.finish_preprocess(bb, RunSettings(), options)
        return bb.preprocess

    def backbone_summary(self, backbone: Any) -> dict[str, Any]:
        return {**super().backbone_summary(backbone), "input_size": list(backbone.preprocess.input_size)}

    # -- batches ----------------------------------------------------------------------------------------------
    def dataset(self, data: Any, augment: bool = False, hflip: bool = True) -> Dataset:
        return ImageTensorDataset(data, augment, hflip)

    has_tta = True

    def tta_views(self, data: Any) -> list[Any]:
        from ..data.images import test_time_views

        return test_time_views(data)

    def explainer(self, model: Any) -> Any:
        """HiResCAM maps on the backbone's last feature map, drawn over the decoded image the model saw."""
        from ..evaluation.explainers import PixelExplainer

        return PixelExplainer(model.classifier, model.preprocess, model.multi_label, model.classes)

    def batch_input(self, backbone: Any):
        from ..data.images import image_prepare

        return image_prepare(backbone.preprocess)

    def sample(self, data: Any, n: int) -> Any:
        return data.pixels[:n]

    # -- bundle side ------------------------------------------------------------------------------------------
    def encode(self, model: Any, inputs: Any, skip_bad: bool) -> tuple[Any, list[Any]]:
        from ..data.images import decode
        from ..data.sources import ImageSet

        images = list(inputs)
        data = decode(ImageSet(images, [model.classes[0]] * len(images)), model.preprocess, model.classes,
                      skip_bad=skip_bad, description="decoding", cache=False)
        return data, [images[i] for i in data.kept]

    def export_spec(self, model: Any) -> Any:
        """The graph takes ``pixels``: (batch, 3, H, W) uint8 RGB, decoded, resized and cropped as in training (the
        steps outside the graph, in ``preprocessing.json`` and the reference script); scaling and mean/std are in
        the graph."""
        from ..export.onnx import ExportSpec, reference_script

        pre = model.preprocess
        h, w = pre.input_size
        outside = ("open the image, apply its EXIF orientation, convert to RGB; resize the shorter side to "
                   "input_size / crop_pct and centre-crop input_size (resize 'pad': pad to a square with black "
                   "and resize), resampling with interpolation from the source in one step; uint8, channels "
                   "first")
        outside += (f"; DICOM, NIfTI and 16-bit PNG/TIFF inputs first become 8-bit through window {pre.window!r} "
                    f"(volumes: slices {pre.slices!r}; transferkit.data.medical), which the reference script does "
                    "not do")
        return ExportSpec(
            prepare=PixelInput(pre),
            inputs={"pixels": torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8)},
            dynamic={"pixels": {0: "batch"}},
            preprocessing={"kind": "image", "graph_input": f"pixels: (batch, 3, {h}, {w}) uint8 RGB",
                           "outside_graph": outside, **pre.to_dict()},
            feeds=lambda data, idx: {"pixels": data.pixels[idx].numpy()},
            script=reference_script("image"),
        )

    def read_labelled(self, model: Any, source: Any, skip_bad: bool, **options: Any) -> Any:
        from ..data.images import decode
        from ..data.sources import load_test_set

        sep = options.get("label_sep") or model.meta.get("label_sep")  # multi-label cells, split as in training
        images = self.labelled_like(model, load_test_set(source, skip_bad=skip_bad, label_sep=sep), source)
        return decode(images, model.preprocess, model.classes, skip_bad=skip_bad)

    def load_backbone(self, folder: Path, spec: Any, config: dict[str, Any]) -> Any:
        from ..backbones.protocol import PreprocessConfig
        from ..backbones.registry import build

        backbone = build(spec, pretrained=False)
        backbone.preprocess = PreprocessConfig.from_dict(config["preprocess"])
        return backbone


class PixelInput(torch.nn.Module):
    """uint8 pixels -> float in [0, 1] normalised with the backbone's mean/std (an exported graph's first step):
    :func:`transferkit.data.images.normalize`, as every forward pass of a run."""

    def __init__(self, pre: Any):
        super().__init__()
        self.pre = pre

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        from ..data.images import normalize

        return normalize(pixels, self.pre)
