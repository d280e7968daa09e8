"""`accelerate launch` with two CPU processes (gloo): the same command, and only rank 0 writes.

On a machine without GPUs, `accelerate launch --multi_gpu` starts torchrun-style processes that fall back to
gloo (`--cpu --num_processes N` would need mpirun); `torchrun --nproc_per_node N -m transferkit ...` works too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def launch_fit(data: Path, out: Path, *args: str) -> dict:
    """``accelerate launch`` two CPU processes running ``transferkit fit DATA ARGS --out OUT``; the run's metrics."""
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "transferkit", "fit", str(data), *args,
           "--out", str(out), "--json"]
    env = {**os.environ, "TRANSFERKIT_QUIET": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def test_two_process_fit_with_accelerate_launch(colour_splits, tiny_backbone, tmp_path):
    out = tmp_path / "run"
    m = launch_fit(colour_splits, out, "--backbone", tiny_backbone, "--strategy", "gradual", "--epochs", "3")
    assert m["processes"] == 2, "the launcher's two processes must both train"
    # small data: 3 cross-validation folds trained under both processes, then the final run for the folds' epoch
    assert m["test"]["n"] == 12 and m["estimate"]["folds"] == 3
    assert len(m["history"]["epochs"]) == m["estimate"]["chosen"]["epochs"] <= 3
    assert sorted(p.name for p in out.iterdir()) == [".transferkit-run.json", "confusion_matrix.png",
                                                     "explanations.png", "learning_curve.png", "metrics.json", "model",
                                                     "report.md", "run.yaml"]


def test_two_process_text_fit(text_folder, tiny_text_backbone, tmp_path):
    """The contrastive strategy has its own loop (pairs, not labels): it must shard and sync across processes too."""
    out = tmp_path / "run"
    m = launch_fit(text_folder, out, "--backbone", tiny_text_backbone, "--strategy", "contrastive", "--epochs", "1",
                   "--max-length", "32")
    assert m["processes"] == 2 and m["task"] == "text-classification" and m["test"]["n"] == 12
    assert m["details"]["contrastive_loss"], "the pairs were trained on"


def test_two_process_audio_fit_scores_recordings(audio_folder, tiny_backbone, tmp_path):
    """Validation windows are gathered from both processes in loader order, then averaged per recording."""
    out = tmp_path / "run"
    m = launch_fit(audio_folder, out, "--backbone", tiny_backbone, "--strategy", "finetune", "--epochs", "2",
                   "--batch-size", "8", "--clip-seconds", "0.25", "--precision", "no", "--val-fraction", "0.25")
    assert m["processes"] == 2 and m["task"] == "audio-classification" and m["test"]["n"] == 9
    assert m["data"]["audio"]["val"]["windows"] > m["data"]["val"]
    best = m["history"]["epochs"][m["history"]["best_epoch"]]
    assert abs(best["val_acc"] - m["val"]["accuracy"]) < 1e-6


def test_two_process_detection_fit(box_folder, tiny_backbone, tmp_path):
    """The detection loop (lists of images and targets, its own validation) under two processes."""
    out = tmp_path / "run"
    m = launch_fit(box_folder, out, "--task", "detect", "--backbone", tiny_backbone, "--strategy", "gradual",
                   "--epochs", "2", "--batch-size", "4", "--precision", "no")
    assert m["processes"] == 2 and m["task"] == "object-detection" and m["test"]["n_images"] == 6
    assert [e["stage"] for e in m["history"]["epochs"]] == [0, 0]  # unfreeze_every 2: still pyramid and head
    assert sorted(p.name for p in out.iterdir()) == [".transferkit-run.json", "examples.png", "learning_curve.png",
                                                     "metrics.json", "model", "report.md", "run.yaml"]


def test_main_process_is_rank_zero_or_the_accelerators_answer(monkeypatch):
    from types import SimpleNamespace

    from transferkit.engine.accel import is_main_process

    monkeypatch.delenv("RANK", raising=False)
    assert is_main_process()  # nobody launched this process: it is the only one
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()
    monkeypatch.setenv("RANK", "1")
    assert not is_main_process()
    assert is_main_process(SimpleNamespace(is_main_process=True))  # the accelerator's answer wins when given
    monkeypatch.setenv("RANK", "0")
    assert not is_main_process(SimpleNamespace(is_main_process=False))
