"""Object detection (issue 5): the FCOS detector on registry backbones, augmentation that moves boxes,
strategies, COCO metrics, the run, bundles and the CLI. Readers and the dataset builder: test_boxes.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import transferkit
from transferkit.cli import app
from transferkit.data.boxes import BoxSet
from transferkit.data.detection import DetectionDataset, decode_boxes
from transferkit.tasks.detection import choose_image_size
from transferkit.engine.accel import make_accelerator
from transferkit.errors import BackboneError, TransferkitError
from transferkit.evaluation.detection import detection_metrics
from transferkit.heads.detection import build_detector
from transferkit.strategies import TrainTask, create_detection_strategy, create_strategy

runner = CliRunner()


def boxes_in_memory(n: int, seed: int = 0, size: tuple[int, int] = (96, 128)) -> BoxSet:
    """Bright squares (class "a") and bright bars (class "b") on dark noise."""
    rng = np.random.default_rng(seed)
    items, boxes, labels = [], [], []
    h, w = size
    for _ in range(n):
        img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        bs, ls = [], []
        for x0, kind in ((4, "a"), (w // 2 + 4, "b")):
            bw, bh = (24, 24) if kind == "a" else (40, 14)
            x, y = x0 + int(rng.integers(0, w // 2 - bw - 8)), int(rng.integers(0, h - bh))
            img[y:y + bh, x:x + bw] = 250
            bs.append([x, y, x + bw, y + bh])
            ls.append(kind)
        items.append(img)
        boxes.append(np.array(bs, np.float32))
        labels.append(ls)
    return BoxSet(items, boxes, labels, origin="memory", format="memory")


def test_decode_scales_boxes_with_the_image_and_back():
    img = np.zeros((100, 200, 3), np.uint8)
    src = BoxSet([img], [np.array([[50, 25, 150, 75]], np.float32)], [["x"]], format="memory")
    d = decode_boxes(src, 100, ["x"])
    assert tuple(d.images[0].shape) == (3, 50, 100)
    assert torch.allclose(d.boxes[0], torch.tensor([[25.0, 12.5, 75.0, 37.5]]))
    assert torch.allclose(d.original_boxes(0), torch.tensor([[50.0, 25.0, 150.0, 75.0]]))


def test_augmentation_moves_boxes_with_the_pixels():
    src = boxes_in_memory(4)
    data = decode_boxes(src, 128, ["a", "b"])
    ds = DetectionDataset(data, augment=True, mean=(0.5, 0.5, 0.5))
    torch.manual_seed(0)
    changed = 0
    for _ in range(30):
        for i in range(len(ds)):
            img, t = ds[i]
            assert img.dtype == torch.uint8 and len(t["boxes"]) == len(t["labels"])
            assert set(t["labels"].tolist()) <= {1, 2}  # 0 is torchvision's background
            changed += not torch.equal(t["boxes"], data.boxes[i])
            for (x1, y1, x2, y2) in t["boxes"].round().int().tolist():
                inside = img[:, y1:y2, x1:x2].float().mean()
                # the bright object is still where the box says (colour jitter keeps it well above the background)
                assert inside > img.float().mean(), (i, (x1, y1, x2, y2))
    assert changed > 30  # boxes really moved (flips, crops, zoom-outs)


def test_metrics_pinned_values():
    truth = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]]),
              "labels": torch.tensor([0, 1])}]
    perfect = [{"boxes": truth[0]["boxes"].clone(), "labels": torch.tensor([0, 1]), "scores": torch.tensor([0.9, 0.8])}]
    m = detection_metrics(perfect, truth, ["a", "b", "c"])
    assert m["map"] == pytest.approx(1.0) and m["map_50"] == pytest.approx(1.0)
    assert m["per_class"]["c"]["ap"] is None  # no true boxes: nothing to score
    assert m["at_0.5"] == {"found": 2, "missed": 0, "false_alarms": 0}
    # IoU 0.62 for class a: matched at thresholds .50, .55, .60 of the ten -> AP 0.3; class b missed entirely
    shifted = [{"boxes": torch.tensor([[0.0, 0.0, 10.0, 6.2], [60.0, 60.0, 70.0, 70.0]]),
                "labels": torch.tensor([0, 1]), "scores": torch.tensor([0.9, 0.8])}]
    m = detection_metrics(shifted, truth, ["a", "b", "c"])
    assert m["per_class"]["a"]["ap"] == pytest.approx(0.3, abs=1e-6)
    assert m["per_class"]["a"]["ap_50"] == pytest.approx(1.0)
    assert m["per_class"]["b"]["ap"] == pytest.approx(0.0)
    assert m["map"] == pytest.approx(0.15, abs=1e-6)
    assert m["at_0.5"] == {"found": 1, "missed": 1, "false_alarms": 1}


def test_choose_image_size():
    assert choose_image_size([np.zeros((90, 100, 3), np.uint8)]) == 128  # at least 128
    assert choose_image_size([np.zeros((300, 200, 3), np.uint8)] * 3) == 320  # median longer side, up to 32
    assert choose_image_size([np.zeros((2000, 3000, 3), np.uint8)]) == 512  # CPU-friendly ceiling


def test_strategy_names_are_checked():
    with pytest.raises(TransferkitError, match="not one for detection"):
        create_detection_strategy("linear")
    with pytest.raises(TransferkitError, match="frozen' is for detection"):
        create_strategy("frozen", "image")
    with pytest.raises(TransferkitError, match="no option"):
        create_detection_strategy("finetune", nonsense=1)


def _task(det, train, val, **kw):
    return TrainTask(spec=det.spec, backbone=det, train=train, val=val, classes=["a", "b"],
                     accelerator=make_accelerator("no", seed=0), seed=0, **kw)


def test_strategies_train_the_right_parts(tiny_backbone):
    det = build_detector(tiny_backbone, ["a", "b"], 96)
    src = boxes_in_memory(6)
    train = decode_boxes(src, 96, ["a", "b"])
    val = decode_boxes(boxes_in_memory(3, seed=1), 96, ["a", "b"])
    body0 = {k: v.clone() for k, v in det.body.state_dict().items()}
    head0 = {k: v.clone() for k, v in det.state_dict().items() if not k.startswith("model.backbone.body.")}

    def changed(model, keys):
        return {k for k in keys if not torch.equal(model.state_dict()[k], keys[k])}

    opts = {"epochs": 1, "batch_size": 3, "augment": False}
    frozen = create_detection_strategy("frozen", **opts).fit(_task(det, train, val)).model
    assert not changed(frozen.body, body0)  # weights and BatchNorm statistics untouched
    assert {k for k in head0 if not torch.equal(frozen.state_dict()[k], head0[k])}  # FPN and head learnt

    tuned = create_detection_strategy("finetune", **opts).fit(_task(det, train, val)).model
    moved = changed(tuned.body, body0)
    assert any(k.endswith("weight") for k in moved)
    assert not any("running_" in k for k in moved)  # pretrained BatchNorm statistics stay frozen

    scratch = create_detection_strategy("scratch", **opts).fit(_task(det, train, val)).model
    assert any("running_" in k for k in changed(scratch.body, body0))  # random statistics are learnt

    r = create_detection_strategy("gradual", epochs=2, unfreeze_every=1, batch_size=3, augment=False).fit(
        _task(det, train, val))
    assert [e.stage for e in r.history.epochs] == [0, 1]
    assert r.model is not det and torch.equal(det.body.state_dict()[next(iter(body0))], next(iter(body0.values())))


def test_auto_keeps_the_better_of_frozen_and_finetuned(tiny_backbone):
    det = build_detector(tiny_backbone, ["a", "b"], 96)
    train = decode_boxes(boxes_in_memory(6), 96, ["a", "b"])
    val = decode_boxes(boxes_in_memory(3, seed=1), 96, ["a", "b"])
    r = create_detection_strategy("auto", epochs=3, batch_size=3).fit(_task(det, train, val))
    assert set(r.details["candidates"]) == {"frozen", "finetune"}
    h = r.details["histories"]
    best = {k: v["epochs"][v["best_epoch"]]["val_map"] for k, v in h.items()}
    assert r.details["chosen"] == ("finetune" if best["finetune"] > best["frozen"] else "frozen")
    assert r.details["candidates"]["finetune"]["warm_start"] is True


@pytest.mark.weights
def test_pretrained_detector_uses_the_registry_weights():
    from transferkit.backbones import create_backbone

    det = build_detector("efficientnet_lite0", ["a", "b"], 128)
    bb = create_backbone("efficientnet_lite0")
    for k, v in det.body.state_dict().items():
        assert torch.equal(v, bb.body.state_dict()[k]), k
    out = det.eval()([torch.rand(3, 96, 128)])[0]
    assert set(out) == {"boxes", "scores", "labels"}
    assert det.preprocess.mean == bb.preprocess.mean  # the backbone's own normalisation drives the detector
    assert len(det.layer_groups()) >= 5 and det.new_parameters()


def test_coco_detector_offline_fails_in_one_sentence(monkeypatch):
    import torch.hub

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(BackboneError, match="Could not download .*fcos_resnet50_fpn.*connect to the internet"):
        build_detector("torchvision:fcos_resnet50_fpn", ["a"], 320)


def test_coco_detector_architecture_without_weights():
    from transferkit.backbones.protocol import BackboneSpec
    from transferkit.heads.detection import detector_from_config

    spec = BackboneSpec("torchvision:fcos_resnet50_fpn", "torchvision-detection", "fcos_resnet50_fpn",
                        "torchvision COCO_V1")
    cfg = {"num_classes": 3, "image_size": 128, "fpn_channels": 256, "score_thresh": 0.05, "nms_thresh": 0.6,
           "detections_per_img": 100}
    det = detector_from_config(spec, None, cfg, pretrained=False)
    assert det.model.head.classification_head.cls_logits.out_channels == 4  # 3 classes + background
    assert det.layer_groups() and det.eval()([torch.rand(3, 64, 96)])[0]["boxes"].shape[1] == 4


def test_fit_predict_draw_evaluate_end_to_end(box_folder, tiny_backbone, tmp_path):
    out = tmp_path / "run"
    model = transferkit.fit(box_folder, backbone=tiny_backbone, strategy="finetune", epochs=2, batch_size=4, out=out)
    assert model.modality == "detection"  # boxes in the data: detection without being told
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "object-detection" and m["data"]["format"] == "coco"
    assert m["test"]["n_images"] == 6 and set(m["test"]["per_class"]) == {"Trouser", "Bag"}
    for key in ("map", "map_50", "map_75", "mar_100"):
        assert m["test"][key] is None or 0.0 <= m["test"][key] <= 1.0
    for name in ("report.md", "examples.png", "learning_curve.png", "model/config.json", "model/model.safetensors"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "mAP@[.5:.95]" in report and "| Trouser |" in report

    image = sorted((box_folder / "test").glob("*.png"))[0]
    again = transferkit.load(out / "model")
    before = model.predict([image], score_threshold=0.0)
    after = again.predict([image], score_threshold=0.0)
    assert before == after and before[0]["input"] == str(image)

    drawn = tmp_path / "drawn.png"
    res = runner.invoke(app, ["predict", str(out / "model"), str(image), "--draw", str(drawn), "--json",
                              "--score-threshold", "0"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert rows[0]["input"] == str(image) and all(set(b) == {"label", "score", "box"} for b in rows[0]["boxes"])
    # never torchvision's background channel; boxes in the image's own 96 px (it was decoded at 128)
    assert rows[0]["boxes"] and all(b["label"] in ("Trouser", "Bag") for b in rows[0]["boxes"])
    assert all(-0.5 <= v <= 96.5 for b in rows[0]["boxes"] for v in b["box"])
    assert model.detector.config["image_size"] == 128
    from PIL import Image

    assert Image.open(drawn).size == Image.open(image).size

    twin = tmp_path / "other" / image.name  # the same file name twice: two PNGs, none overwritten
    twin.parent.mkdir()
    twin.write_bytes(image.read_bytes())
    res = runner.invoke(app, ["predict", str(out / "model"), str(image), str(twin), "--draw", str(tmp_path / "drawn"),
                              "--csv"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == [f"{image.stem}-1.png", f"{image.stem}-2.png"]
    assert res.stdout.splitlines()[0] == "path,label,score,x1,y1,x2,y2"
    res = runner.invoke(app, ["predict", str(out / "model"), str(image), str(twin), "--draw", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "give a folder" in res.output

    res = runner.invoke(app, ["evaluate", str(out / "model"), str(box_folder), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n_images"] == 6  # the test split, as in training
    assert json.loads(res.stdout)["map"] == pytest.approx(m["test"]["map"], abs=1e-6)


def test_detection_refuses_classification_options(box_folder):
    with pytest.raises(TransferkitError, match="max_length does not apply to detection"):
        transferkit.fit(box_folder, max_length=32)
    with pytest.raises(TransferkitError, match="Task 'segment' is unknown"):
        transferkit.fit(box_folder, task="segment")


def test_boxes_are_decoded_in_float32_under_bf16(tiny_backbone):
    """bf16 anchors step by 1-2 pixels above 128: the head and box decoding must stay in float32."""
    det = build_detector(tiny_backbone, ["a"], 256).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = list(det.model.backbone(torch.rand(1, 3, 256, 256)).values())
        out = det.model.head(feats)
    assert feats[0].dtype == torch.bfloat16  # the body and pyramid keep the fast dtype
    assert out["bbox_regression"].dtype == torch.float32 and out["cls_logits"].dtype == torch.float32


def test_coco_detector_bundle_round_trip(tmp_path):
    """torchvision's COCO FCOS (frozen BatchNorm, as with its weights) saves and reloads without a download."""
    from transferkit.backbones.protocol import BackboneSpec
    from transferkit.bundle.detection import DetectionModel
    from transferkit.heads.detection import detector_from_config

    spec = BackboneSpec("torchvision:fcos_resnet50_fpn", "torchvision-detection", "fcos_resnet50_fpn",
                        "torchvision COCO_V1")
    cfg = {"num_classes": 2, "image_size": 128, "fpn_channels": 128, "score_thresh": 0.0, "nms_thresh": 0.6,
           "detections_per_img": 10}
    torch.manual_seed(0)
    det = detector_from_config(spec, None, cfg, pretrained=False)
    assert det.config["fpn_channels"] == 256  # what torchvision's FPN really has
    model = DetectionModel(det, ["a", "b"])
    model.save(tmp_path / "m")
    again = transferkit.load(tmp_path / "m")
    img = (np.random.default_rng(0).random((96, 128, 3)) * 255).astype(np.uint8)
    assert again.predict([img], score_threshold=0.0) == model.predict([img], score_threshold=0.0)
