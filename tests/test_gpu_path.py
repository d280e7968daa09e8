"""The GPU knobs, checked on the CPU (CI has no GPU): which AdamW, how many loader workers, pinned memory, the
non-blocking copies, and ``--compile`` reaching the fine-tuning strategies without its wrapper reaching a bundle.
What they do on a card is measured by benchmarks/gpu.py, not here."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import transferkit
from transferkit.cli import app
from transferkit.engine import accel, optim
from transferkit.engine.trainer import compile_seconds
from transferkit.errors import TransferkitError
from transferkit.tasks import RunSettings


def test_adamw_is_fused_on_cuda_and_foreach_elsewhere():
    params = [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(2))]
    cpu = optim.adamw([{"params": params, "lr": 1e-3}], "cpu", weight_decay=0.1)
    assert cpu.param_groups[0]["foreach"] is True and not cpu.param_groups[0]["fused"]
    assert cpu.param_groups[0]["weight_decay"] == 0.1
    # built while the parameters are still on the CPU (accelerate moves them later): fused checks at step()
    cuda = optim.adamw(params, torch.device("cuda"), lr=1e-3)
    assert cuda.param_groups[0]["fused"] is True and not cuda.param_groups[0]["foreach"]
    assert optim.adamw(params).param_groups[0]["foreach"] is True  # no device: where the parameters are


def test_workers_and_loader_options_by_device(monkeypatch):
    monkeypatch.setattr(accel.os, "cpu_count", lambda: 16)
    assert accel.default_workers("cpu") == 0
    assert accel.default_workers("cuda") == 8
    assert accel.default_workers("cuda:0", processes=4) == 2  # the CPUs are shared by the training processes
    monkeypatch.setattr(accel.os, "cpu_count", lambda: 2)
    assert accel.default_workers("cuda") == 1  # one core stays for the training process
    assert accel.loader_options(0, "cpu") == {"num_workers": 0, "pin_memory": False, "persistent_workers": False}
    assert accel.loader_options(3, torch.device("cuda")) == {"num_workers": 3, "pin_memory": True,
                                                             "persistent_workers": True}


def test_workers_setting_is_checked():
    assert RunSettings(workers=2).workers == 2
    for bad in (-1, 1.5, 10_000):
        with pytest.raises(TransferkitError, match="workers"):
            RunSettings(workers=bad)


def test_accelerator_copies_without_blocking_only_on_a_gpu():
    acc = accel.make_accelerator("no", cpu=True)
    assert acc.non_blocking is False


def test_compile_seconds_is_the_first_step_beyond_a_normal_one():
    assert compile_seconds([10.0, 1.0, 1.2, 0.8]) == pytest.approx(9.0)
    assert compile_seconds([0.5, 1.0]) == 0.0
    assert compile_seconds([3.0]) is None


def test_compile_reaches_finetuning_and_never_the_bundle(colour_splits, tiny_backbone, tmp_path, monkeypatch):
    # the eager backend: dynamo traces and wraps for real (OptimizedModule, ``_orig_mod.`` keys) without
    # generating C++, so this takes seconds on a CPU
    compiled = []

    def eager(module):
        compiled.append(type(module).__name__)
        return torch.compile(module, backend="eager")

    monkeypatch.setattr("transferkit.strategies.finetune.compile_module", eager)
    out = tmp_path / "run"
    model = transferkit.fit(colour_splits, backbone=tiny_backbone, strategy="finetune", out=out, epochs=2,
                            batch_size=8, val_fraction=0.2, compile=True, workers=0)
    assert compiled == ["Classifier"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["details"]["compiled"] is True and metrics["timings"]["compile_s"] >= 0
    from safetensors import safe_open

    with safe_open(str(out / "model" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if "_orig_mod" in k]
    assert type(model.classifier).__name__ == "Classifier"  # the network itself, not the compiled wrapper
    assert not [k for k in model.classifier.state_dict() if "_orig_mod" in k]
    assert transferkit.load(out / "model").predict([str(next((colour_splits / "test").rglob("*.png")))])


def test_fit_cli_passes_workers_and_compile(monkeypatch, tmp_path):
    seen = {}

    def fake_fit(data, **kwargs):
        seen.update(kwargs)
        raise TransferkitError("stop here")

    monkeypatch.setattr("transferkit.api.fit", fake_fit)
    args = ["fit", str(tmp_path), "--workers", "2", "--compile", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and seen["workers"] == 2 and seen["compile"] is True
    help_text = CliRunner().invoke(app, ["fit", "--help"], env={"COLUMNS": "200"}).output
    assert "--compile" in help_text and "--workers" in help_text and "minutes" in help_text


def _benchmark(name: str):
    import importlib
    import sys
    from pathlib import Path

    folder = str(Path(__file__).parent.parent / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def test_throughput_benchmark_runs_at_tiny_size(tiny_backbone, tiny_text_backbone, tmp_path):
    # every modality and part once, tiny backbones, 2 examples per batch: the script works; its numbers mean
    # nothing at this size (benchmarks print ratios, tests never hold thresholds)
    results = _benchmark("throughput").main([
        "--batches", "1", "--batch-size", "2", "--repeats", "1", "--image-px", "32", "--image-backbone", tiny_backbone,
        "--audio-backbone", tiny_backbone, "--text-backbone", tiny_text_backbone, "--no-startup",
        "--out", str(tmp_path / "throughput.json")])
    parts = {(r["modality"], r["part"]) for r in results["rows"]}
    assert parts == {(m, p) for m in ("image", "text", "audio") for p in ("features", "step", "epoch", "predict")}
    assert all(r["transferkit"] > 0 and r["plain"] > 0 and r["ratio"] > 0 for r in results["rows"])
    assert json.loads((tmp_path / "throughput.json").read_text())["rows"]


def test_gpu_benchmark_runs_on_the_cpu(tiny_backbone, tmp_path):
    results = _benchmark("gpu").main(["--batch-size", "2", "--batches", "1", "--repeats", "1",
                                      "--parts", "features,step,epoch", "--image-backbone", tiny_backbone,
                                      "--out", str(tmp_path / "gpu.json")])
    assert [r["part"] for r in results["rows"]] == ["features", "step", "epoch"]
    assert results["machine"]["workers"] == 0  # the CPU: no loader workers by default
