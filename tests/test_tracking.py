"""`--log-with tensorboard|mlflow|all` on fit, search, compare and pretrain, read back with each library's own reader
(TensorBoard's EventAccumulator, MLflow's client on the local SQLite store)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import write_colour_images
from transferkit.errors import TransferkitError

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


def tensorboard_run(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = sorted(folder.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_size)
    acc = EventAccumulator(str(events[-1].parent), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def mlflow_run(log_dir: Path, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{log_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("transferkit")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == name]
    assert len(runs) == 1
    return client, runs[0]


def test_fit_logs_settings_curves_scores_and_files_to_both(colour_folder, tiny_backbone, tmp_path, monkeypatch):
    import transferkit

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "runs" / "colours"
    model = transferkit.fit(colour_folder, backbone=tiny_backbone, strategy="finetune", epochs=3, out=out,
                            log_with="all")
    m = model.metrics
    logs = tmp_path / "runs"

    tb = tensorboard_run(logs / "tensorboard" / "colours")
    losses = tb.Scalars("epoch/train_loss")
    # every epoch trained: each fold's (3 folds of up to 3) and the final model's, on one axis
    assert [e.step for e in losses] == list(range(len(losses))) and len(losses) >= len(m["history"]["epochs"]) + 3
    assert losses[-1].value == pytest.approx(m["history"]["epochs"][-1]["train_loss"], rel=1e-5)
    assert [e.step for e in tb.Scalars("cv/fold_score")] == [1, 2, 3]
    assert tb.Scalars("final/val/accuracy")[-1].value == pytest.approx(m["val"]["accuracy"], rel=1e-6)
    assert {"confusion_matrix", "learning_curve"} <= set(tb.Tags()["images"])
    assert "report/text_summary" in tb.Tags()["tensors"]

    client, run = mlflow_run(logs, "colours")
    assert run.data.params["strategy"] == "finetune" and run.data.params["epochs"] == "3"
    assert run.data.params["backbone"] == tiny_backbone
    history = client.get_metric_history(run.info.run_id, "epoch/train_loss")
    assert [h.value for h in sorted(history, key=lambda h: h.step)] == pytest.approx([e.value for e in losses])
    # the final model has no validation split (its val_acc is NaN, not logged): the folds' epochs are
    assert len(client.get_metric_history(run.info.run_id, "epoch/val_acc")) == len(losses) - len(m["history"]["epochs"])
    assert run.data.metrics["final/val/accuracy"] == pytest.approx(m["val"]["accuracy"])
    assert run.data.metrics["final/estimate/score"] == pytest.approx(m["estimate"]["score"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "metrics.json", "learning_curve.png", "confusion_matrix.png"} <= artifacts
    assert run.info.status == "FINISHED"


def test_search_compare_and_pretrain_log_their_own_curves(colour_folder, tiny_backbone, tmp_path, monkeypatch):
    import transferkit

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    logs = tmp_path / "logs"
    model = transferkit.search(colour_folder, trials=2, strategy="linear", backbone=tiny_backbone,
                               out=tmp_path / "runs" / "s", log_with="tensorboard", log_dir=logs)
    tb = tensorboard_run(logs / "tensorboard" / "s")
    table = {r["number"]: r["value"] for r in
             __import__("json").loads((tmp_path / "runs" / "s" / "search.json").read_text())["table"]}
    assert {e.step: pytest.approx(e.value, rel=1e-6) for e in tb.Scalars("trial/value")} == table
    assert tb.Scalars("final/search/best")[-1].value == pytest.approx(model.metrics["search"]["best"]["value"])
    assert "search" in tb.Tags()["images"]

    root = tmp_path / "split"
    write_colour_images(root / "train", 8, seed=1)
    write_colour_images(root / "test", 4, seed=2)
    result = transferkit.compare(root, budgets="3", seeds=2, strategies="linear,classical", backbone=tiny_backbone,
                                 out=tmp_path / "runs" / "cmp", log_with="mlflow", log_dir=logs)
    client, run = mlflow_run(logs, "cmp")
    scores = {r["seed"]: r["score"] for r in result["runs"] if r["strategy"] == "linear"}
    assert {h.step: h.value for h in client.get_metric_history(run.info.run_id, "run/linear/budget_3")} == \
        pytest.approx(scores)
    assert "report.md" in {a.path for a in client.list_artifacts(run.info.run_id)}

    colours = tmp_path / "unlabelled"
    write_colour_images(colours, 8)
    r = transferkit.pretrain(colours, arch="timm:test_efficientnet", image_size=32, out=tmp_path / "bb", epochs=2,
                             batch_size=8, precision="no", workers=0, log_every=1, log_with="tensorboard",
                             log_dir=logs)
    tb = tensorboard_run(logs / "tensorboard" / "bb")
    logged = [e.value for e in tb.Scalars("step/loss")]
    assert logged == pytest.approx([e["loss"] for e in r.metrics["record"]["log"]], rel=1e-5)


def test_log_with_refusals(colour_folder, tiny_backbone, monkeypatch):
    import importlib.util

    import transferkit
    from transferkit.engine.tracking import parse_log_with

    assert parse_log_with(None) == [] and parse_log_with("all") == ["tensorboard", "mlflow"]
    with pytest.raises(TransferkitError, match="--log-with 'wandb' is unknown: choose tensorboard, mlflow or all"):
        transferkit.fit(colour_folder, backbone=tiny_backbone, log_with="wandb")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(TransferkitError, match=r"needs the mlflow package: pip install 'transferkit\[tracking\]'"):
        transferkit.compare(colour_folder, strategies="linear,classical", log_with="mlflow")
