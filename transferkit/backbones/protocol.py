"""The backbone contract every source satisfies (timm, torchvision, packaged weights, local checkpoints,
Hugging Face text encoders in :mod:`.text`, audio backbones in :mod:`.audio`).

A backbone maps a batch of model input (normalised images ``(B, 3, H, W)``, tokenised texts, or waveforms
``(B, samples)``) to pooled features ``(B, num_features)``. It
carries its own preprocessing config, which drives every transform downstream, and it splits its parameters
into ordered layer groups (input side first) for discriminative learning rates and gradual unfreezing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from ..errors import BackboneError


@dataclass(frozen=True)
class PreprocessConfig:
    """How images must look when they reach the backbone.

    Images are resized so the shorter side is ``input_size / crop_pct``, centre-cropped to ``input_size``,
    scaled to [0, 1] and normalised with ``mean``/``std``. DICOM, NIfTI and 16-bit PNG/TIFF files first become
    8-bit through ``window`` (``auto``, a CT preset such as ``lung``, or ``"centre,width"``); volumes give their
    middle slice (``slices="2d"``) or three neighbouring slices as channels (``"2.5d"``); see
    :mod:`transferkit.data.medical`. ``resize="pad"`` (medical runs) instead pads the whole image to a square with
    black and resizes it to ``input_size``: nothing at the edges is cropped away.
    """

    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    window: str = "auto"
    slices: str = "2d"
    resize: str = "crop"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        return cls(
            input_size=tuple(d["input_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            interpolation=d.get("interpolation", "bicubic"),
            crop_pct=float(d.get("crop_pct", 1.0)),
            window=str(d.get("window", "auto")),
            slices=str(d.get("slices", "2d")),
            resize=str(d.get("resize", "crop")),
        )


@dataclass
class BackboneSpec:
    """Everything needed to rebuild a backbone's architecture without its pretrained weights.

    Stored in every bundle so a saved model is rebuilt from JSON, then filled from safetensors.
    """

    name: str  # what the user asked for, e.g. "efficientnet_lite0" or "timm:resnet18"
    source: str  # "package", "timm", "torchvision" or "checkpoint"
    arch: str  # architecture id within the source, e.g. "tf_efficientnet_lite0"
    weights: str = ""  # where the pretrained weights came from (package, hub tag, file path, "random")
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneSpec:
        return cls(**d)


Builder = Callable[[BackboneSpec, bool], Any]
_F = TypeVar("_F", bound=Builder)

# spec.source -> the function that builds it, ``fn(spec, pretrained)``. Each weight source registers its own
# (sources.py: package, timm, torchvision; checkpoint.py: checkpoint, backbone_dir; text.py; audio.py), so
# that code below the registry (``random_like``, the spectrogram wrapper) rebuilds a spec without importing it.
BUILDERS: dict[str, Builder] = {}


def register_source(*sources: str) -> Callable[[_F], _F]:
    """Decorator: the decorated ``fn(spec, pretrained)`` builds every backbone whose ``spec.source`` is in ``sources``.

    Examples:

        >>> @register_source("timm")
        ... def build_timm(spec: BackboneSpec, pretrained: bool) -> ImageBackbone: ...
    """

    def register(fn: _F) -> _F:
        for source in sources:
            BUILDERS[source] = fn
        return fn

    return register


def build_from_spec(spec: BackboneSpec, pretrained: bool = True) -> Any:
    """Build ``spec`` with the builder its source registered; pretrained weights only when ``pretrained``.

    Only sources whose module has been imported are known here: outside this package, call
    :func:`transferkit.backbones.registry.build`, which imports them all.

    Raises:
        BackboneError: no builder is registered for ``spec.source`` (e.g. a bundle from a newer transferkit).
    """
    builder = BUILDERS.get(spec.source)
    if builder is None:
        raise BackboneError(f"Backbone source {spec.source!r} is unknown: this bundle may come from a newer "
                            "transferkit.")
    return builder(spec, pretrained)


@runtime_checkable
class Backbone(Protocol):
    """Pooled features plus what it takes to feed and train the network that makes them.

    Attributes:
        spec: where the weights came from and how to build it again (saved in every bundle).
        num_features: the length of the pooled feature vector, the head's input.
        preprocess: ``PreprocessConfig`` (images), ``TextPreprocessConfig`` (texts) or ``AudioPreprocessConfig``
            (audio): what turns a raw input into the network's input, saved in the bundle.
        modality: ``"image"``, ``"text"`` or ``"audio"``.
    """

    spec: BackboneSpec
    num_features: int
    preprocess: Any  # PreprocessConfig (images), TextPreprocessConfig (texts), AudioPreprocessConfig (audio)
    modality: str  # "image", "text" or "audio"

    def __call__(self, inputs: Any) -> torch.Tensor:
        """A batch of preprocessed inputs -> pooled features, ``(batch, num_features)``."""
        ...

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The parameters in groups from the input side to the output side: layer-wise learning-rate decay gives each
        group its own rate, and ``gradual`` unfreezes them from the top down."""
        ...

    def random_like(self) -> Backbone:
        """The same architecture and preprocessing with random weights: the scratch baseline."""
        ...


class NamedLayerGroups:
    """``layer_groups()`` for a backbone whose ``_group_names`` lists ``body``'s parameter names per group,
    input side first (image, text and audio backbones all keep them this way)."""

    body: nn.Module
    _group_names: list[list[str]]

    def layer_groups(self) -> list[list[nn.Parameter]]:
        params = dict(self.body.named_parameters())
        return [[params[n] for n in names if n in params] for names in self._group_names]

    def layer_group_names(self) -> list[list[str]]:
        """Parameter names of ``body`` per layer group, input side first."""
        return [list(names) for names in self._group_names]


class ImageBackbone(NamedLayerGroups, nn.Module):
    """Wraps any feature network into the :class:`Backbone` contract.

    ``body`` must return pooled features of size ``num_features``; ``groups`` lists the body's parameter names
    per layer group, ordered from the input side to the output side.
    """

    modality = "image"

    def __init__(
        self,
        body: nn.Module,
        spec: BackboneSpec,
        num_features: int,
        preprocess: PreprocessConfig,
        groups: list[list[str]],
    ):
        super().__init__()
        self.body = body
        self.spec = spec
        self.num_features = int(num_features)
        self.preprocess = preprocess
        self._group_names = groups

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)

    @property
    def source_head(self) -> nn.Module | None:
        """The source task's classifier (e.g. ImageNet's 1000 classes), when the weights came with one.

        Kept out of the module tree on purpose: it belongs to the source task, so it is neither trained nor
        saved in bundles; it serves sanity checks and source-aware transferability scores.
        """
        return self.__dict__.get("_source_head")

    def set_source_head(self, head: nn.Module | None) -> None:
        self.__dict__["_source_head"] = head.eval() if head is not None else None

    def random_like(self) -> ImageBackbone:
        """The same architecture and preprocessing with random weights (the scratch baseline)."""
        bb = build_from_spec(self.spec, pretrained=False)
        bb.preprocess = self.preprocess
        return bb

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, num_features={self.num_features}, groups={len(self._group_names)}"


def ordered_child_groups(module: nn.Module, skip: tuple[str, ...] = ()) -> list[list[str]]:
    """Layer groups for a network that has no group matcher of its own (torchvision, plain nn.Module).

    Uses the top-level children in definition order; a child that is a long ``nn.Sequential`` of blocks (the
    usual ``features`` stage list) is expanded so each block is its own group. Children without parameters are
    dropped.
    """
    groups: list[list[str]] = []
    for cname, child in module.named_children():
        if cname in skip:
            continue
        if isinstance(child, nn.Sequential) and len(child) >= 4:
            for bname, block in child.named_children():
                names = [f"{cname}.{bname}.{p}" for p, _ in block.named_parameters()]
                if names:
                    groups.append(names)
        else:
            names = [f"{cname}.{p}" for p, _ in child.named_parameters()]
            if names:
                groups.append(names)
    return groups
