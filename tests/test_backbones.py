"""Contract tests over every backbone source, offline errors, checkpoints, and the real ImageNet weights."""

from __future__ import annotations

import time

import pytest
import torch

from transferkit.backbones import BACKBONES, Backbone, create_backbone, resolve
from transferkit.backbones.checkpoint import save_backbone
from transferkit.errors import BackboneError

# Every registered backbone plus one of each other source (random init: the contract, not the weights).
CONTRACT = [*BACKBONES, "timm:test_efficientnet", "timm:test_vit", "timm:test_resnet", "torchvision:resnet18",
            "torchvision:mobilenet_v3_small"]


@pytest.mark.parametrize("name", CONTRACT)
def test_backbone_contract(name):
    bb = create_backbone(name, pretrained=False)
    assert isinstance(bb, Backbone)
    h, w = bb.preprocess.input_size
    assert h >= 32 and w >= 32 and len(bb.preprocess.mean) == 3 and len(bb.preprocess.std) == 3
    assert 0 < bb.preprocess.crop_pct <= 1.0
    x = torch.randn(2, 3, h, w)
    bb.eval()
    with torch.no_grad():
        f = bb(x)
    assert f.shape == (2, bb.num_features)
    groups = bb.layer_groups()
    assert len(groups) >= 3, "layer groups drive LLRD and gradual unfreezing"
    flat = [id(p) for g in groups for p in g]
    assert len(flat) == len(set(flat)), "a parameter sits in two groups"
    assert set(flat) == {id(p) for p in bb.parameters()}, "every backbone parameter belongs to one group"
    spec = resolve(name)
    assert spec.source in ("package", "timm", "torchvision")


def test_registered_names_resolve_to_package_weights():
    for name, entry in BACKBONES.items():
        spec = resolve(name)
        assert (spec.source, spec.arch) == ("package", entry["arch"])


def test_unknown_backbone_is_one_clear_line():
    with pytest.raises(BackboneError) as e:
        create_backbone("efficientnet_lite9")
    msg = str(e.value)
    assert "Unknown backbone 'efficientnet_lite9'" in msg and "transferkit backbones" in msg and "\n" not in msg


def test_missing_path_backbone():
    with pytest.raises(BackboneError, match="does not exist"):
        create_backbone("./no/such/backbone.safetensors")


@pytest.mark.parametrize("name", ["timm:resnet18.a1_in1k", "resnet18", "torchvision:resnet18"])
def test_hub_names_fail_offline_with_one_sentence(name):
    t = time.monotonic()
    with pytest.raises(BackboneError) as e:
        create_backbone(name)
    msg = str(e.value)
    assert msg.startswith(f"Could not download the pretrained weights of {name!r}")
    assert "efficientnet_lite0" in msg and "\n" not in msg
    assert time.monotonic() - t < 60  # no minute-long retry loop


def test_checkpoint_file_roundtrip(tmp_path):
    from safetensors.torch import save_file

    src = create_backbone("timm:test_resnet", pretrained=False)
    state = {f"module.{k}": v for k, v in src.body.state_dict().items()}  # DDP-style prefix is stripped
    path = tmp_path / "ckpt.safetensors"
    save_file(state, str(path))
    with pytest.raises(BackboneError, match="needs its architecture"):
        create_backbone(str(path))
    bb = create_backbone(str(path), arch="test_resnet")
    x = torch.randn(2, 3, 64, 64)
    src.eval(), bb.eval()
    with torch.no_grad():
        assert torch.equal(src(x), bb(x))
    assert bb.spec.source == "checkpoint"
    with pytest.raises(BackboneError, match="check --arch"):
        create_backbone(str(path), arch="test_efficientnet")


def test_pth_checkpoint_loads_weights_only(tmp_path):
    src = create_backbone("timm:test_resnet", pretrained=False)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": src.body.state_dict()}, path)
    bb = create_backbone(str(path), arch="test_resnet")
    assert torch.equal(next(iter(bb.parameters())), next(iter(src.parameters())))


def test_backbone_folder_roundtrip(tmp_path):
    src = create_backbone("timm:test_efficientnet", pretrained=False)
    save_backbone(src, tmp_path / "bb")
    again = create_backbone(str(tmp_path / "bb"))
    assert again.spec.source == "backbone_dir" and again.preprocess == src.preprocess
    x = torch.randn(2, 3, 64, 64)
    src.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(src(x), again(x))


@pytest.mark.weights
@pytest.mark.parametrize(
    "name,photo,expected",
    [
        ("efficientnet_lite0", "chelsea", {"tabby", "tiger cat", "Egyptian cat"}),
        ("efficientnet_lite1", "chelsea", {"tabby", "tiger cat", "Egyptian cat"}),
        ("efficientnet_lite2", "chelsea", {"tabby", "tiger cat", "Egyptian cat"}),
        ("efficientnet_lite0", "coffee", {"espresso", "cup", "coffee mug", "espresso maker"}),
    ],
)
def test_packaged_imagenet_weights_recognise_a_real_photo(name, photo, expected):
    """The packaged weights really are ImageNet weights: a real photo's top classes make sense."""
    import skimage.data
    import torchvision

    from transferkit.data.images import normalize, resize_center_crop
    from PIL import Image

    categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    bb = create_backbone(name).eval()
    img = Image.fromarray(getattr(skimage.data, photo)())
    x = torch.from_numpy(resize_center_crop(img, bb.preprocess)).permute(2, 0, 1)[None]
    with torch.no_grad():
        probs = bb.source_head(bb(normalize(x, bb.preprocess))).softmax(1)[0]
    top5 = [categories[i] for i in probs.topk(5).indices]
    assert top5[0] in expected, top5
    assert len(expected & set(top5[:3])) >= 2 or photo == "coffee", top5


def test_hub_offline_switch_is_set_for_the_block_only(monkeypatch):
    from huggingface_hub import constants

    from transferkit.backbones import hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda host=None, timeout=3.0: False)  # as when offline
    with pytest.raises(RuntimeError, match="failed download"):
        with hub.hub_offline_unless_reachable():
            assert constants.HF_HUB_OFFLINE is True
            raise RuntimeError("a failed download")
    assert constants.HF_HUB_OFFLINE is False
    with hub.hub_offline_unless_reachable(needed=False):  # nothing to download: nothing changes
        assert constants.HF_HUB_OFFLINE is False
    assert constants.HF_HUB_OFFLINE is False


def test_transformers_log_level_and_progress_bars_are_restored(tiny_text_backbone):
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging

    from transferkit.backbones.hub import quiet_transformers

    before = logging.get_verbosity(), logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    try:
        logging.set_verbosity_info()
        logging.enable_progress_bar()
        disable_progress_bars()  # the hub's own switch, set apart from transformers'
        with pytest.raises(RuntimeError, match="failed load"):
            with quiet_transformers():
                assert logging.get_verbosity() == logging.ERROR and not logging.is_progress_bar_enabled()
                raise RuntimeError("a failed load")
        assert logging.get_verbosity() == logging.INFO and logging.is_progress_bar_enabled()
        assert are_progress_bars_disabled()
        bb = create_backbone(tiny_text_backbone, modality="text")  # a real build changes nothing either
        assert bb.num_features == 32
        assert logging.get_verbosity() == logging.INFO and logging.is_progress_bar_enabled()
        assert are_progress_bars_disabled()
    finally:
        logging.set_verbosity(before[0])
        logging.enable_progress_bar() if before[1] else logging.disable_progress_bar()
        disable_progress_bars() if before[2] else enable_progress_bars()


def test_backbone_modules_import_each_other_without_cycles():
    """registry -> audio/text -> checkpoint -> sources -> protocol/hub: a DAG, function-local imports included
    (what grimp reports too, without needing it installed)."""
    import ast
    from graphlib import CycleError, TopologicalSorter
    from pathlib import Path

    import transferkit.backbones as pkg

    folder = Path(pkg.__file__).parent
    names = {p.stem for p in folder.glob("*.py")} - {"__init__"}
    edges: dict[str, set[str]] = {}
    for name in names:
        deps = edges.setdefault(name, set())
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:  # from .x import y / from . import x
                targets = [node.module] if node.module else [a.name for a in node.names]
                deps |= {t.split(".")[0] for t in targets} & names
    try:
        order = list(TopologicalSorter(edges).static_order())
    except CycleError as err:
        pytest.fail(f"import cycle among transferkit.backbones modules: {err.args[1]}")
    assert order.index("protocol") < order.index("sources") < order.index("checkpoint") < order.index("registry")


def test_timm_build_errors_say_what_went_wrong(monkeypatch):
    import timm

    from transferkit.backbones.protocol import BackboneSpec
    from transferkit.backbones.sources import build_timm

    spec = BackboneSpec("timm:resnet18", "timm", "resnet18")

    def broken(*args, **kwargs):
        raise ValueError("drop_path_rate must be in [0, 1)\nsecond line")

    monkeypatch.setattr(timm, "create_model", broken)
    for pretrained in (False, True):  # no download was attempted or failed: say what did
        with pytest.raises(BackboneError) as e:
            build_timm(spec, pretrained=pretrained)
        msg = str(e.value)
        assert "download" not in msg and "ValueError: drop_path_rate must be in [0, 1)" in msg and "\n" not in msg
        assert isinstance(e.value.__cause__, ValueError)

    def offline(*args, **kwargs):
        raise OSError("couldn't connect to huggingface.co")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(BackboneError, match="Could not download the pretrained weights of 'timm:resnet18'") as e:
        build_timm(spec, pretrained=True)
    assert isinstance(e.value.__cause__, OSError)
    with pytest.raises(BackboneError, match=r"Could not build backbone 'timm:resnet18' \(timm 'resnet18'\): OSError"):
        build_timm(spec, pretrained=False)  # nothing to download: not a download failure
