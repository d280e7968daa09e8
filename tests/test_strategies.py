"""Contract tests over every strategy, plus the engine's promises: LLRD groups, gradual unfreezing with every
optimizer group present from the start, early stopping, resume after a crash, decode-once, time budgets."""

from __future__ import annotations

import json

import pytest
import torch

import transferkit
from transferkit.strategies import STRATEGIES, TEXT_ONLY, create_strategy

IMAGE_STRATEGIES = [s for s in STRATEGIES if s not in TEXT_ONLY]

FAST = {
    "linear": {},
    "finetune": {"epochs": 3, "batch_size": 8},
    "gradual": {"epochs": 4, "unfreeze_every": 1, "batch_size": 8},
    "scratch": {"epochs": 3, "batch_size": 8},
    "auto": {"max_epochs": 2, "min_epochs": 1},
}


def test_every_strategy_has_fast_settings_here():
    assert set(FAST) == set(IMAGE_STRATEGIES)


@pytest.mark.parametrize("name", IMAGE_STRATEGIES)
def test_strategy_contract(name, colour_splits, tiny_backbone, tmp_path):
    out = tmp_path / "run"
    # small data, so no validation split: settings chosen across folds (2 keep the test quick)
    model = transferkit.fit(colour_splits, backbone=tiny_backbone, strategy=name, out=out, cv=2, **FAST[name])
    m = model.metrics
    assert m["data"]["train"] == 30 and m["data"]["val"] == 0  # every label trains the final model
    assert m["estimate"]["kind"] == "cross-validation" and m["estimate"]["n"] == 30
    m = json.loads((out / "metrics.json").read_text())
    assert m["strategy"].startswith(name)
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix"):
        assert key in m["test"]
    assert set(m["test"]["per_class"]) == {"blue", "green", "red"}
    assert m["test"]["n"] == 12
    assert m["history"]["epochs"] and 0 <= m["history"]["best_epoch"] < len(m["history"]["epochs"])
    for k in ("train_loss", "val_loss", "train_acc", "val_acc", "seconds"):
        assert k in m["history"]["epochs"][0]
    assert {"accuracy", "loss"} == set(m["train_val_gap"])
    assert {"load_s", "decode_s", "evaluate_s", "total_s"} <= set(m["timings"])
    assert m["trainable_params"] > 0
    for f in ("report.md", "confusion_matrix.png", "learning_curve.png", "model/config.json",
              "model/model.safetensors"):
        assert (out / f).is_file(), f
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / ".work").exists()
    # predictions come back for every test image, with probabilities that sum to one
    probs = model.predict_proba(sorted((colour_splits / "test").rglob("*.png")))
    assert probs.shape == (12, 3)
    assert torch.allclose(torch.from_numpy(probs).sum(1), torch.ones(12), atol=1e-4)


def test_linear_probe_learns_colours(colour_splits, tiny_backbone):
    # random conv features still separate solid colours: a working probe gets them all
    model = transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="linear")
    assert model.metrics["test"]["accuracy"] == 1.0
    assert model.metrics["trainable_params"] == 256 * 3 + 3  # test_efficientnet: 256 features, 3 classes


def test_linear_features_are_cached_on_disk(colour_splits, tiny_backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    first = transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="linear")
    assert first.metrics["details"]["feature_cache_hit"] is False
    # small data: no validation split, so one entry (all training images); with a validation split, two
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 1
    transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="linear", val_fraction=0.2)
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 3
    second = transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="linear")
    assert second.metrics["details"]["feature_cache_hit"] is True
    assert second.metrics["test"]["accuracy"] == first.metrics["test"]["accuracy"]
    # a changed file changes the key
    victim = sorted((colour_splits / "train" / "red").glob("*.png"))[0]
    victim.write_bytes((colour_splits / "train" / "red" / "red_001.png").read_bytes())
    third = transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="linear")
    assert third.metrics["details"]["feature_cache_hit"] is False


def test_each_image_is_decoded_once_per_run(colour_splits, tiny_backbone, monkeypatch, tmp_path):
    import transferkit.data.images as images

    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))  # cold: another test's run would leave a hit
    calls = []
    real = images.load_pil
    monkeypatch.setattr(images, "load_pil", lambda item, *a: calls.append(item) or real(item, *a))
    transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="finetune", epochs=3, batch_size=8, cv=2)
    # 30 train + 12 test, over 2 folds and the final run of 3 epochs each
    assert len(calls) == 42 and len(set(map(str, calls))) == 42


def test_llrd_param_groups():
    from transferkit.backbones import create_backbone
    from transferkit.engine.optim import param_groups

    bb = create_backbone("timm:test_efficientnet", pretrained=False)
    head = torch.nn.Linear(bb.num_features, 3)
    groups = param_groups(bb.layer_groups(), list(head.parameters()), lr=1.0, weight_decay=0.1, layer_decay=0.5)
    n = len(bb.layer_groups())
    by_layer = {g["layer"]: g["lr"] for g in groups}
    assert by_layer[n] == 1.0 and by_layer[n - 1] == 0.5 and by_layer[0] == pytest.approx(0.5**n)
    assert all(g["weight_decay"] == 0.0 for g in groups if all(p.ndim <= 1 for p in g["params"]))
    assert sum(len(g["params"]) for g in groups) == len(list(bb.parameters())) + 2


def test_gradual_unfreezes_from_the_top_with_every_group_present(colour_splits, tiny_backbone, monkeypatch):
    import transferkit.strategies.finetune as ft

    seen = {}
    real_train = ft.train

    def spy(model, optimizer, *args, on_epoch_start=None, **kw):
        n_groups = len(optimizer.param_groups)

        def hook(epoch):
            stage = on_epoch_start(epoch)
            trainable_layers = sorted({g["layer"] for g in optimizer.param_groups
                                       if any(p.requires_grad for p in g["params"])})
            seen[epoch] = (stage, trainable_layers, len(optimizer.param_groups))
            return stage

        out = real_train(model, optimizer, *args, on_epoch_start=hook, **kw)
        seen["groups"] = n_groups
        return out

    monkeypatch.setattr(ft, "train", spy)
    transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="gradual", epochs=4, unfreeze_every=1, patience=10)
    top = max(seen[0][1])
    assert seen[0][:2] == (0, [top])  # head only
    assert seen[1][:2] == (1, [top - 1, top])  # then the last backbone group
    assert seen[3][:2] == (3, [top - 3, top - 2, top - 1, top])
    assert all(seen[e][2] == seen["groups"] for e in range(4)), "optimizer groups must not change mid-run"


def test_unknown_strategy_and_option():
    with pytest.raises(transferkit.TransferkitError, match="Unknown strategy 'magic'"):
        create_strategy("magic")
    with pytest.raises(transferkit.TransferkitError, match="has no option 'epoch'"):
        create_strategy("finetune", epoch=3)


def test_resume_after_a_crash_reaches_the_same_weights(tmp_path):
    """Crash at epoch 2 of 4, resume from the checkpoint: the weights equal an uninterrupted run's."""
    from torch.utils.data import DataLoader, TensorDataset

    from transferkit.engine.accel import make_accelerator
    from transferkit.engine.loop import train
    from transferkit.engine.optim import warmup_cosine
    from transferkit.engine.sampling import EpochShuffleSampler

    def setup():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.2), torch.nn.Linear(16, 3))
        x = torch.randn(60, 8, generator=torch.Generator().manual_seed(1))
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
        tl = DataLoader(TensorDataset(x, y), batch_size=8, sampler=EpochShuffleSampler(60, seed=0))
        vl = DataLoader(TensorDataset(x[:20], y[:20]), batch_size=20)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return model, opt, warmup_cosine(opt, 4 * len(tl), 2), tl, vl

    acc = make_accelerator("no", cpu=True)
    model, opt, sched, tl, vl = setup()
    train(model, opt, sched, tl, vl, acc, epochs=4, patience=99)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    reference_opt = {i: {k: v.clone() for k, v in st.items()} for i, st in opt.state_dict()["state"].items()}

    class Crash(Exception):
        pass

    def crash_at_2(epoch):
        if epoch == 2:
            raise Crash
        return 0

    model, opt, sched, tl, vl = setup()
    with pytest.raises(Crash):
        train(model, opt, sched, tl, vl, acc, epochs=4, patience=99, checkpoint_dir=tmp_path, on_epoch_start=crash_at_2)
    assert (tmp_path / "last.pt").is_file()
    model, opt, sched, tl, vl = setup()  # a fresh process would rebuild everything the same way
    history, _ = train(model, opt, sched, tl, vl, acc, epochs=4, patience=99, checkpoint_dir=tmp_path)
    assert len(history.epochs) == 4
    for k, v in model.state_dict().items():
        assert torch.allclose(v, reference[k], atol=1e-6), k
    resumed_opt = opt.state_dict()["state"]  # AdamW's step count and moments, restored from the checkpoint
    assert len(reference_opt) > 0 and resumed_opt.keys() == reference_opt.keys()
    for i, state in reference_opt.items():
        assert resumed_opt[i].keys() == state.keys()
        for k, v in state.items():
            torch.testing.assert_close(resumed_opt[i][k], v, rtol=0, atol=1e-6, msg=f"param {i} {k}")


def test_time_budget_plans_epochs_that_fit(colour_splits, tiny_backbone):
    model = transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="scratch", epochs=500, patience=1000,
                            budget="4s")
    d, h = model.metrics["details"], model.metrics["history"]
    assert d["planned_epochs"] >= 1 and d["planned_epochs"] < 500 and d["estimated_epoch_s"] > 0
    assert len(h["epochs"]) <= d["planned_epochs"]


def test_engine_stops_at_the_deadline():
    import time

    from torch.utils.data import DataLoader, TensorDataset

    from transferkit.engine.accel import make_accelerator
    from transferkit.engine.loop import train
    from transferkit.engine.optim import warmup_cosine

    model = torch.nn.Linear(4, 2)
    data = TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    opt = torch.optim.AdamW(model.parameters())
    history, _ = train(model, opt, warmup_cosine(opt, 100, 1), DataLoader(data, batch_size=8), DataLoader(data),
                       make_accelerator("no", cpu=True), epochs=50, patience=100, deadline=time.monotonic())
    assert history.stopped == "time budget" and len(history.epochs) == 1


def test_auto_keeps_the_better_candidate(colour_splits, tiny_backbone):
    # with a validation split (6 images), auto chooses on it
    model = transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="auto", max_epochs=2, min_epochs=1,
                            val_fraction=0.2)
    d = model.metrics["details"]
    assert set(d["candidates"]) == {"linear", "finetune"}
    lin, ft = d["candidates"]["linear"]["val_acc"], d["candidates"]["finetune"]["val_acc"]
    se = max((lin * (1 - lin) / 6) ** 0.5, 1 / 6)  # 6 validation images
    assert d["chosen"] == ("finetune" if ft >= lin + se - 1e-9 else "linear")
    assert model.metrics["strategy"] == f"auto ({d['chosen']})"


def test_auto_choice_rule():
    from types import SimpleNamespace

    from transferkit.strategies.auto import choose

    def cand(acc, loss=0.5):
        return SimpleNamespace(history=SimpleNamespace(best=SimpleNamespace(val_acc=acc, val_loss=loss)))

    # 20 validation images, probe at 0.80: SE = 0.089, so one more correct image (0.85) is not enough
    assert choose({"linear": cand(0.80), "finetune": cand(0.85)}, 20) == "linear"
    assert choose({"linear": cand(0.80), "finetune": cand(0.90)}, 20) == "finetune"
    # 150 validation images, probe at 0.80: SE = 0.033
    assert choose({"linear": cand(0.80), "finetune": cand(0.84)}, 150) == "finetune"
    assert choose({"linear": cand(0.80)}, 150) == "linear"
    # both perfect on validation (BBC News, 5 val articles: losses 0.21 vs 0.05): the loss decides, halved at least
    assert choose({"linear": cand(1.0, 0.21), "finetune": cand(1.0, 0.05)}, 5) == "finetune"
    assert choose({"linear": cand(1.0, 0.21), "finetune": cand(1.0, 0.12)}, 5) == "linear"


def test_auto_stays_linear_with_too_few_labels(tmp_path, tiny_backbone):
    from conftest import write_colour_images

    write_colour_images(tmp_path / "few", 4)
    model = transferkit.fit(tmp_path / "few", backbone=tiny_backbone, strategy="auto", val_fraction=0.25,
                            test_fraction=0.25)
    assert model.metrics["details"]["chosen"] == "linear"
    assert "linear only" in model.metrics["details"]["decision"]


def test_parse_budget():
    from transferkit.api import parse_budget

    assert parse_budget("10m") == 600 and parse_budget("1h30m") == 5400 and parse_budget("90") == 90
    assert parse_budget(None) is None
    with pytest.raises(transferkit.TransferkitError, match="not a duration"):
        parse_budget("ten minutes")


def test_budget_planning_counts_cheaper_frozen_epochs():
    import time
    from types import SimpleNamespace

    from transferkit.strategies.base import epochs_within_budget
    from transferkit.strategies.finetune import GradualConfig, GradualStrategy

    task = SimpleNamespace(deadline=time.monotonic() + 100, seconds_left=lambda: 100.0)
    assert epochs_within_budget(task, 50, per_epoch=10.0) == (9, 10.0)  # 90% of 100 s at 10 s per epoch
    assert epochs_within_budget(task, 5, per_epoch=10.0) == (5, 10.0)
    assert epochs_within_budget(task, 50, per_epoch=1000.0)[0] == 1  # always at least one epoch
    cost = GradualStrategy(GradualConfig(unfreeze_every=2)).relative_cost(4)
    assert [round(cost(e), 3) for e in (0, 1, 2, 4, 8, 20)] == [0.333, 0.333, 0.5, 0.667, 1.0, 1.0]
    # 9 full-epoch units: 1/3 + 1/3 + 1/2 + 1/2 + 2/3 + 2/3 + 5/6 + 5/6 + 4 x 1 = 8.67 -> 12 epochs
    assert epochs_within_budget(task, 50, per_epoch=10.0, relative_cost=cost)[0] == 12


def test_image_size_override_reaches_every_strategy_and_the_bundle(colour_splits, tiny_backbone, tmp_path):
    model = transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="scratch", epochs=1, image_size=48,
                            out=tmp_path / "run")
    assert model.preprocess.input_size == (48, 48) and model.metrics["backbone"]["input_size"] == [48, 48]
    assert transferkit.load(tmp_path / "run" / "model").preprocess.input_size == (48, 48)
    with pytest.raises(transferkit.TransferkitError,
                       match=r"^image_size 8 is out of range: use a whole number from 32 to 2048, e\.g\. 224\.$"):
        transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="linear", image_size=8)
