"""The pre-training phase, measured: the numbers in the pre-training issue's closing note. Everything offline.

Stages (each reuses what an earlier one wrote; results land in benchmarks/results/pretrain_evidence.json):

- ``source``: supervised pre-training of EfficientNet-Lite0 from random weights on Fashion-MNIST classes 0-4 (all
  30,000 training images, streamed from PNG files) at 32 px; then ``transferkit compare`` on the disjoint classes
  5-9 with 10 labels per class (5 seeds, 1,000 test images): the own backbone (linear, finetune), the same
  architecture from scratch, and the ImageNet backbone (linear, finetune) at 32 px and at 112 px. ``source-ls``
  repeats it with label smoothing 0.1 in the pre-training (the ablation behind its default of 0).
- ``dapt-images``: SimCLR continued from the ImageNet EfficientNet-Lite0 on the unlabelled ELPV solar cells outside
  the fixed 800-cell test set, at 112 px; then few-shot linear probes (10 and 25 labels per class, 5 seeds, AUROC)
  with the adapted and the unadapted backbone, on the same draws (so the gain has a paired interval).
- ``dapt-text``: MLM and SimCSE continued from all-MiniLM-L6-v2 on the BBC News articles outside the test set;
  then few-shot linear probes (2 and 5 labels per topic, 5 seeds, accuracy) with each, paired likewise.
- ``scaling``: the same supervised pre-training (200 steps of 128 at 32 px) in one process and in two processes
  under ``accelerate launch`` (gloo on the CPU); throughput and logs side by side. Run it alone: two cores.

    .venv/bin/python benchmarks/pretrain_evidence.py                 # every stage, about 100 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

import transferkit  # noqa: E402

HERE = Path(__file__).parent
ROOT = HERE.parent
DATA = ROOT / "data"
BACKBONES = ROOT / "backbones"
RUNS = ROOT / "runs"
RESULTS = HERE / "results" / "pretrain_evidence.json"


def save(key: str, value) -> None:
    saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    saved["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    saved[key] = value
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(saved, indent=2, default=str) + "\n")


def export_fmnist_split() -> tuple[Path, Path]:
    """Source: every training image of classes 0-4 as class folders. Target: classes 5-9, a pool of 100 training
    images per class and 200 official test images per class."""
    from PIL import Image

    from transferkit.io import atomic_dir
    from transferkit.datasets.fashion_mnist import CLASSES, load_fashion_mnist, sample_per_class

    source, target = DATA / "fmnist-source-0to4", DATA / "fmnist-target-5to9"
    images, labels = load_fashion_mnist("train")
    if not source.is_dir():
        with atomic_dir(source) as tmp:
            for i in np.flatnonzero(labels < 5):
                d = tmp / CLASSES[labels[i]]
                d.mkdir(exist_ok=True)
                Image.fromarray(images[i]).save(d / f"train-{i:05d}.png")
    if not target.is_dir():
        test_images, test_labels = load_fashion_mnist("test")
        with atomic_dir(target) as tmp:
            for split, (x, y, n) in {"train": (images, labels, 100), "test": (test_images, test_labels, 200)}.items():
                keep = np.flatnonzero(y >= 5)
                for i in keep[sample_per_class(y[keep], n, seed=0)]:
                    d = tmp / split / CLASSES[y[i]]
                    d.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(x[i]).save(d / f"{split}-{i:05d}.png")
    return source, target


def compare(data: Path, backbone: str, out: Path, strategies: str, budgets: str, **options) -> dict:
    r = transferkit.compare(data, budgets=budgets, seeds=5, strategies=strategies, backbone=backbone, out=out,
                            resume=True, **options)
    rows = [{k: s[k] for k in ("budget", "strategy", "seeds", "score", "score_lo", "score_hi", "wall_s")}
            for s in r["summary"]]
    for s in rows:
        print(f"  {backbone:40s} {s['strategy']:9s} budget {s['budget']}: {s['score']:.3f} "
              f"({s['score_lo']:.3f}-{s['score_hi']:.3f})")
    return {"backbone": backbone, "metric": r["config"]["metric"], "summary": rows, "report": str(out / "report.html")}


def probe(rows: list[dict], test: list[dict], backbones: dict[str, str], budgets: tuple[int, ...], out: Path,
          score, seeds: int = 5, **fit_options) -> dict:
    """Few-shot linear probes: per seed and budget, ``budget`` labelled examples per class drawn from ``rows`` (the
    same draw for every backbone), scored on the fixed ``test`` rows. Returns per backbone the mean and 95% interval
    over seeds, and the paired difference of each backbone against the first (same draws, so the seeds pair)."""
    import csv

    from transferkit.comparison import seed_interval

    labels = sorted({r["label"] for r in rows})
    scores: dict[str, dict[int, list[float]]] = {name: {b: [] for b in budgets} for name in backbones}
    for budget in budgets:
        for seed in range(seeds):
            rng = np.random.default_rng(1000 * budget + seed)
            picked = [r for y in labels
                      for r in rng.permutation([r for r in rows if r["label"] == y])[:budget].tolist()]
            manifest = out / f"b{budget}-s{seed}" / "data.csv"
            manifest.parent.mkdir(parents=True, exist_ok=True)
            with manifest.open("w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=[*rows[0], "split"])
                w.writeheader()
                w.writerows([{**r, "split": "train"} for r in picked] + [{**r, "split": "test"} for r in test])
            for name, bb in backbones.items():
                model = transferkit.fit(manifest, backbone=bb, strategy="linear", seed=seed, **fit_options)
                scores[name][budget].append(score(model.metrics["test"]))
                print(f"  {name:10s} budget {budget} seed {seed}: {scores[name][budget][-1]:.4f}", flush=True)
    base = next(iter(backbones))
    result = {"seeds": seeds, "budgets": list(budgets), "backbones": backbones, "scores": scores, "summary": []}
    for budget in budgets:
        for name in backbones:
            m, lo, hi = seed_interval(scores[name][budget])
            row = {"budget": budget, "backbone": name, "mean": m, "low": lo, "high": hi}
            if name != base:
                diff = [a - b for a, b in zip(scores[name][budget], scores[base][budget], strict=True)]
                row["paired_gain"] = dict(zip(("mean", "low", "high"), seed_interval(diff, bounds=(-1.0, 1.0)),
                                              strict=True))
            result["summary"].append(row)
            print(f"  {name:10s} budget {budget}: {m:.4f} ({lo:.4f}-{hi:.4f})"
                  + (f", gain over {base} {row['paired_gain']['mean']:+.4f} ({row['paired_gain']['low']:+.4f} to "
                     f"{row['paired_gain']['high']:+.4f})" if name != base else ""))
    return result


def stage_source(label_smoothing: float = 0.0) -> None:
    source, target = export_fmnist_split()
    suffix = f"-ls{label_smoothing:g}" if label_smoothing else ""
    own = BACKBONES / f"fmnist-0to4{suffix}"
    if not (own / "backbone.json").is_file():
        transferkit.pretrain(source, arch="efficientnet_lite0", image_size=32, epochs=4, batch_size=128, out=own,
                             label_smoothing=label_smoothing, resume=True)
    meta = json.loads((own / "pretrain.json").read_text())
    results = {"pretrain": {k: meta[k] for k in ("total_steps", "epochs", "global_batch", "seconds", "samples_per_s",
                                                  "processes", "precision")},
               "validation": meta["record"]["evaluations"], "runs": []}
    common = {"budgets": "10", "time_per_run": "90s"}
    results["runs"].append(compare(target, str(own), RUNS / f"pt-own{suffix}", "linear,finetune,scratch", **common))
    for size in (32, 112):
        results["runs"].append({**compare(target, "efficientnet_lite0", RUNS / f"pt-imagenet-{size}", "linear,finetune",
                                          image_size=size, **common), "image_size": size})
    save(f"source{suffix}", results)


def stage_dapt_images() -> None:
    from transferkit.datasets.elpv import export_elpv

    manifest = export_elpv(DATA / "elpv-all", train_size=1824, test_size=800)
    unlabelled = DATA / "elpv-unlabelled.csv"
    if not unlabelled.exists():
        import csv

        with manifest.open() as f:
            rows = [r for r in csv.DictReader(f) if r["split"] == "train"]
        unlabelled.write_text("path\n" + "".join(f"{manifest.parent / r['path']}\n" for r in rows))
    adapted = BACKBONES / "elpv-simclr"
    if not (adapted / "backbone.json").is_file():
        transferkit.pretrain(unlabelled, method="simclr", init="efficientnet_lite0", image_size=112, epochs=8,
                             batch_size=64, out=adapted, resume=True)
    meta = json.loads((adapted / "pretrain.json").read_text())
    results = {"pretrain": {k: meta[k] for k in ("total_steps", "epochs", "global_batch", "seconds", "samples_per_s",
                                                 "data")},
               "last_log": meta["record"]["log"][-1]}
    import csv

    with manifest.open() as f:
        all_rows = [{"path": str(manifest.parent / r["path"]), "label": r["label"], "split": r["split"]}
                    for r in csv.DictReader(f)]
    rows = [{k: r[k] for k in ("path", "label")} for r in all_rows if r["split"] == "train"]
    test = [{k: r[k] for k in ("path", "label")} for r in all_rows if r["split"] == "test"]
    results["probe"] = probe(rows, test, {"unadapted": "efficientnet_lite0", "simclr": str(adapted)}, (10, 25),
                             RUNS / "pt-elpv-probe", lambda t: t["clinical"]["auroc"], image_size=112,
                             modality="medical")
    results["probe"]["metric"] = "test AUROC (800 cells), defective vs functional"
    save("dapt_images", results)


def stage_dapt_text() -> None:
    from transferkit.datasets.bbc_news import export_text_folder, load_bbc_news

    folder = DATA / "bbc-news-pool50"
    if not (folder / "train").is_dir():
        export_text_folder(folder, train_per_class=50, test_per_class=100, seed=0)
    held_out = {" ".join(p.read_text(encoding="utf-8").split()) for p in (folder / "test").rglob("*.txt")}
    docs = DATA / "bbc-unlabelled.txt"
    if not docs.exists():
        texts = [" ".join(t.split()) for t in load_bbc_news().texts]
        docs.write_text("\n".join(t for t in texts if t not in held_out) + "\n", encoding="utf-8")
    results = {"documents": sum(1 for _ in docs.open(encoding="utf-8")), "pretrain": {}}
    for method in ("mlm", "simcse"):
        out = BACKBONES / f"bbc-{method}"
        if not (out / "pretrain.json").is_file():
            transferkit.pretrain(docs, method=method, init="all-MiniLM-L6-v2", max_length=128, epochs=1, out=out,
                                 resume=True)
        meta = json.loads((out / "pretrain.json").read_text())
        results["pretrain"][method] = {k: meta[k] for k in ("total_steps", "global_batch", "seconds", "samples_per_s")}
    def read(split: str) -> list[dict]:
        return [{"text": " ".join(p.read_text(encoding="utf-8").split()), "label": p.parent.name}
                for p in sorted((folder / split).rglob("*.txt"))]

    results["probe"] = probe(read("train"), read("test"), {"unadapted": "all-MiniLM-L6-v2",
                                                           "mlm": str(BACKBONES / "bbc-mlm"),
                                                           "simcse": str(BACKBONES / "bbc-simcse")},
                             (2, 5), RUNS / "pt-bbc-probe", lambda t: t["accuracy"], max_length=128)
    results["probe"]["metric"] = "test accuracy (500 articles, 5 topics)"
    save("dapt_text", results)


def stage_scaling() -> None:
    source, _ = export_fmnist_split()
    common = [str(source), "--arch", "efficientnet_lite0", "--image-size", "32", "--steps", "200",
              "--batch-size", "128", "--log-every", "20", "--val-fraction", "0"]
    exe = Path(sys.executable)
    results = {}
    for procs in (1, 2):
        out = RUNS / f"pt-scaling-{procs}"
        env = {**os.environ, "TRANSFERKIT_QUIET": ""}
        if procs == 1:
            cmd = [str(exe), "-m", "transferkit", "pretrain", *common, "--out", str(out)]
        else:
            env["OMP_NUM_THREADS"] = "1"
            cmd = [str(exe.with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no", "-m", "transferkit",
                   "pretrain", *common, "--out", str(out)]
        t = time.monotonic()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.monotonic() - t
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        meta = json.loads((out / "pretrain.json").read_text())
        results[f"{procs}-process"] = {"command": " ".join(cmd[cmd.index("pretrain") - 2 if procs == 1 else 0:]),
                                       "samples_per_s": meta["samples_per_s"], "wall_s": wall,
                                       "loss": meta["record"]["log"][-1]["loss"], "log": (out / "log.txt").read_text()}
        print(f"{procs} process(es): {meta['samples_per_s']:.1f} samples/s, {wall:.0f} s wall")
    save("scaling", results)


STAGES = {"source": stage_source, "source-ls": lambda: stage_source(0.1), "dapt-images": stage_dapt_images,
          "dapt-text": stage_dapt_text, "scaling": stage_scaling}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stages", nargs="*", choices=sorted(STAGES), default=list(STAGES))
    for name in ap.parse_args().stages:
        print(f"## {name}")
        STAGES[name]()


if __name__ == "__main__":
    main()
