"""The pre-training phase: supervised and self-supervised runs write backbones that fit loads by path; the data
stream and its order; kill -9 and resume to the same weights; two processes under `accelerate launch`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import transferkit
from conftest import topic_texts, write_colour_images
from transferkit.errors import TransferkitError

ARCH = ["--arch", "timm:test_efficientnet", "--image-size", "32"]


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrain") / "colours"
    write_colour_images(root, 30, seed=3)
    return root


@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pretrain") / "docs.txt"
    lines = [t for t, _ in topic_texts(20, seed=5)]
    path.write_text("\n".join(lines[:30]) + "\n\n   \n" + "\n".join(lines[30:]) + "\n", encoding="utf-8")
    return path


def weights(folder: Path, name: str = "backbone.safetensors") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / name))


def test_supervised_pretrain_gives_a_backbone_fit_loads_by_path(colours, tmp_path):
    out = tmp_path / "parts-v1"
    r = transferkit.pretrain(colours, arch="timm:test_efficientnet", image_size=32, out=out, epochs=3, batch_size=16,
                             precision="no", workers=0, log_every=2)
    assert sorted(p.name for p in out.iterdir()) == [".transferkit-run.json", "backbone.json", "backbone.safetensors",
                                                     "log.txt", "pretrain.json", "pretrain_curve.png", "report.md",
                                                     "run.yaml"]
    meta = json.loads((out / "backbone.json").read_text())
    prov = meta["provenance"]
    # the record of the source data: where, how many, which classes, a fingerprint of the listing
    assert prov["data"]["examples"] == 84 and prov["data"]["per_class"] == {"blue": 28, "green": 28, "red": 28}
    assert len(prov["data"]["listing_sha256"]) == 64 and prov["method"] == "supervised"
    assert prov["start"] == {"arch": "timm:test_efficientnet", "weights": "random"}
    # from random weights the normalisation is measured on the data, at the requested size, whole image
    pre = meta["preprocess"]
    assert pre["input_size"] == [32, 32] and pre["crop_pct"] == 1.0 and pre["mean"] != [0.485, 0.456, 0.406]
    m = r.metrics
    assert m["total_steps"] == 15 and m["steps_per_epoch"] == 5 and len(m["record"]["evaluations"]) == 3
    assert m["record"]["evaluations"][-1]["val_n"] == 6 and m["samples_per_s"] > 0
    log = (out / "log.txt").read_text()
    assert "samples/s" in log and "ETA" in log and "validation: val_loss" in log
    # it changed the weights, and fit reads the backbone with its own preprocessing
    model = transferkit.fit(colours, backbone=str(out), strategy="linear", out=tmp_path / "run")
    assert model.metrics["backbone"]["name"] == str(out)
    used = model.classifier.backbone.preprocess
    assert used.input_size == (32, 32) and list(used.mean) == pre["mean"]
    card = (tmp_path / "run" / "model" / "model_card.md").read_text()
    assert (f"pre-trained with `transferkit pretrain` (supervised, 15 steps) on `{colours}`: 84 examples in 3 classes"
            in card)


def test_step_sampler_shards_without_overlap_and_resumes_exactly():
    from transferkit.pretraining.data import StepSampler

    one = list(StepSampler(50, 8, total_steps=14, world=1, seed=3))
    two = [list(StepSampler(50, 8, total_steps=14, rank=r, world=2, seed=3)) for r in range(2)]
    assert len(one) == 14 and StepSampler(50, 8, 14).steps_per_epoch == 6
    for step, batch in enumerate(one):
        a, b = two[0][step], two[1][step]
        assert len(a) == len(b) == 4 and not set(a) & set(b)
        assert a + b == batch, "two processes share each global batch of one process"
    # an epoch (6 steps of 8) visits 48 distinct examples; indices carry the epoch: epoch * n + i
    first = [i for b in one[:6] for i in b]
    assert len(set(first)) == 48 and max(first) < 50 and min(i for b in one[6:12] for i in b) >= 50
    assert list(StepSampler(50, 8, total_steps=14, start=9, seed=3)) == one[9:]
    with pytest.raises(TransferkitError, match="split evenly"):
        StepSampler(50, 9, 10, world=2)
    with pytest.raises(TransferkitError, match="lower --batch-size"):
        StepSampler(5, 8, 10)


def test_augmentation_depends_only_on_seed_epoch_and_example(colours):
    from transferkit.backbones.protocol import PreprocessConfig
    from transferkit.pretraining.data import ImageAugment, ImageStream, image_source

    source = image_source(colours, labelled=False)
    table = colours.parent / "unlabelled.csv"  # a table of paths, no labels
    table.write_text("path\n" + "".join(f"{p}\n" for p in source.items[:5]))
    assert image_source(table, labelled=False).items == source.items[:5]
    pre = PreprocessConfig(input_size=(16, 16), crop_pct=1.0)
    stream = ImageStream(source, pre, ImageAugment("simclr"), seed=1, views=2)
    x, y = stream[5]
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.uint8 and y == -1
    assert torch.equal(ImageStream(source, pre, ImageAugment("simclr"), seed=1, views=2)[5][0], x)
    assert not torch.equal(x[0], x[1]), "two views differ"
    assert not torch.equal(stream[len(source) + 5][0], x), "the next epoch draws new augmentations"


def test_mlm_masking_follows_bert(tiny_text_backbone):
    from transformers import AutoTokenizer

    from transferkit.pretraining.data import mask_tokens

    tok = AutoTokenizer.from_pretrained(tiny_text_backbone)
    ids = torch.tensor([tok.cls_token_id] + [1000 + i % 500 for i in range(4000)] + [tok.sep_token_id])
    g = torch.Generator().manual_seed(0)
    masked, labels = mask_tokens(ids, tok, set(tok.all_special_ids), g)
    chosen = labels != -100
    assert not chosen[0] and not chosen[-1], "special tokens are never targets"
    assert 0.13 < chosen.float().mean() < 0.17
    assert torch.equal(labels[chosen], ids[chosen])
    as_mask = (masked[chosen] == tok.mask_token_id).float().mean()
    kept = (masked[chosen] == ids[chosen]).float().mean()
    assert 0.75 < as_mask < 0.85 and 0.06 < kept < 0.15
    assert torch.equal(masked[~chosen], ids[~chosen])


@pytest.mark.parametrize("method", ["mlm", "simcse"])
def test_text_pretraining_writes_an_encoder_folder(method, documents, tiny_text_backbone, tmp_path):
    out = tmp_path / method
    r = transferkit.pretrain(documents, method=method, init=tiny_text_backbone, out=out, epochs=2, batch_size=8,
                             max_length=24, precision="no", workers=0)
    assert r.metrics["data"]["examples"] == 60, "blank and whitespace-only lines are not documents"
    assert {"config.json", "model.safetensors", "modules.json", "1_Pooling", "tokenizer.json", "pretrain.json",
            "report.md", "log.txt", "pretrain_curve.png"} <= {p.name for p in out.iterdir()}
    before, after = weights(Path(tiny_text_backbone), "model.safetensors"), weights(out, "model.safetensors")
    assert set(after) == set(before), "only the encoder is saved (no MLM head)"
    assert any(not torch.equal(before[k], after[k]) for k in before)
    bb = transferkit.create_backbone(str(out))
    # 24 tokens was the training window; the encoder keeps the input limit it started with
    assert bb.modality == "text" and bb.preprocess.max_length == 64 and bb.preprocess.pooling == "mean"
    assert r.metrics["input"] == 24 and r.metrics["start"]["name"] == tiny_text_backbone
    assert bb.spec.extra["provenance"]["method"] == method and bb.spec.extra["provenance"]["data"]["examples"] == 60
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(out), device="cpu").encode(["rain and wind"]).shape == (1, 32)


def test_simclr_continues_a_pretrained_backbone(colours, tiny_backbone, tmp_path):
    out = tmp_path / "scans-v1"
    r = transferkit.pretrain(colours, method="simclr", init=tiny_backbone, out=out, epochs=2, batch_size=16,
                             precision="no", workers=0)
    assert r.metrics["metric"] == "contrastive top-1" and r.metrics["data"]["examples"] == 90  # labels ignored
    meta = json.loads((out / "backbone.json").read_text())
    src = json.loads((Path(tiny_backbone) / "backbone.json").read_text())
    assert meta["preprocess"] == src["preprocess"], "a pretrained start keeps its normalisation"
    assert meta["provenance"]["start"]["weights"] == str(Path(tiny_backbone).resolve())
    before, after = weights(Path(tiny_backbone)), weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_bad_input_gets_one_line(colours, documents, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.png").write_bytes((next(colours.rglob("*.png"))).read_bytes())
    with pytest.raises(TransferkitError, match="supervised pre-training needs labels"):
        transferkit.pretrain(flat, arch="timm:test_efficientnet", out=tmp_path / "x")
    with pytest.raises(TransferkitError, match="Unknown pre-training method"):
        transferkit.pretrain(colours, method="byol", out=tmp_path / "x")
    with pytest.raises(TransferkitError, match="pass --init"):
        transferkit.pretrain(documents, method="mlm", arch="bert", out=tmp_path / "x")
    with pytest.raises(TransferkitError, match="holds no .txt"):
        transferkit.pretrain(flat, method="simcse", out=tmp_path / "x")
    (tmp_path / "busy" / "checkpoints").mkdir(parents=True)
    torch.save({"step": 1}, tmp_path / "busy" / "checkpoints" / "last.pt")
    with pytest.raises(TransferkitError, match="pass --resume"):
        transferkit.pretrain(colours, arch="timm:test_efficientnet", out=tmp_path / "busy")


def _cli(*args: str, workers: str = "0") -> list[str]:
    return [sys.executable, "-m", "transferkit", "pretrain", *args, "--precision", "no", "--workers", workers]


def test_kill_9_then_resume_ends_with_the_same_weights(colours, tmp_path):
    env = {**os.environ, "TRANSFERKIT_QUIET": "1", "OMP_NUM_THREADS": "1"}
    args = [str(colours), *ARCH, "--epochs", "25", "--batch-size", "8", "--checkpoint-every", "10", "--log-every", "3",
            "--seed", "2"]
    whole = tmp_path / "whole"
    # the uninterrupted run reads with two loader processes, the interrupted one in-process: same data either way
    subprocess.run(_cli(*args, "--out", str(whole), workers="2"), env=env, check=True, timeout=300)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(_cli(*args, "--out", str(cut)), env=env)
    ckpt = cut / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (cut / "backbone.json").exists(), "killed mid-run, with a checkpoint"
    at = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < at < 250
    refused = subprocess.run(_cli(*args, "--out", str(cut)), env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    changed = subprocess.run(_cli(*args[:-1], "3", "--out", str(cut), "--resume"), env=env, capture_output=True,
                             text=True, timeout=120)
    assert changed.returncode == 2 and "other settings (seed: 2 then, 3 now)" in changed.stderr
    subprocess.run(_cli(*args, "--out", str(cut), "--resume"), env=env, check=True, timeout=300)

    a, b = weights(whole), weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "resumed run ends with the same weights"
    ma, mb = (json.loads((d / "pretrain.json").read_text()) for d in (whole, cut))
    assert [e["loss"] for e in ma["record"]["log"]] == [e["loss"] for e in mb["record"]["log"]]
    assert [s["start_step"] for s in mb["record"]["sessions"]] == [0, at]
    # log lines written after the checkpoint were dropped on resume and written again: the logs match too
    def lines(d: Path) -> list[str]:
        return [line.split("  lr")[0] for line in (d / "log.txt").read_text().splitlines()]

    assert lines(whole) == lines(cut) and len(lines(whole)) > 80
    assert not (cut / "checkpoints").exists()
    assert f"Resumed 1 time(s), at step(s) {at}" in (cut / "report.md").read_text()


def launch(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "transferkit", "pretrain", *args,
           "--workers", "0"]
    env = {**os.environ, "TRANSFERKIT_QUIET": "", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.parametrize("method", ["supervised", "simclr"])
def test_two_processes_with_accelerate_launch(method, colours, tiny_backbone, tmp_path):
    """gloo on the CPU: each process trains on its half of every global batch; sums are reduced; rank 0 writes."""
    out = tmp_path / method
    start = ARCH if method == "supervised" else ["--init", tiny_backbone]
    r = launch(str(colours), "--method", method, *start, "--epochs", "2", "--batch-size", "16", "--log-every", "2",
               "--out", str(out), "--json")
    m = json.loads((out / "pretrain.json").read_text())
    assert m["processes"] == 2 and m["global_batch"] == 16 and m["record"]["sessions"][0]["processes"] == 2
    assert json.loads(r.stdout.strip().splitlines()[-1])["processes"] == 2, "one summary, from the first process"
    assert r.stderr.count("step 2/") == 1, "only the first process logs"
    assert sorted(p.name for p in out.iterdir()) == [".transferkit-run.json", "backbone.json", "backbone.safetensors",
                                                     "log.txt", "pretrain.json", "pretrain_curve.png", "report.md",
                                                     "run.yaml"]
    left = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{method}")]
    assert left == [f".{method}.lock"], "no second writer's leftovers; only the lock file that held --out stays"
    if method == "supervised":
        assert m["record"]["evaluations"][-1]["val_n"] == 6, "validation shares are summed over both processes"
