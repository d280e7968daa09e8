"""The data people actually bring (issue 21): multi-label images, imbalanced classes, noisy labels.

Three parts, each on real images that install offline:

- ``multilabel``: the composed multi-label set (Fashion-MNIST garments, two or three per image, pasted onto
  scikit-image photos; labels = which garments are present): 200 training and 100 test images. Macro-F1 and mAP on
  the test images for ``linear``, ``finetune`` and ``auto`` against ``scratch`` (the same architecture from random
  weights), each per-label threshold tuned by the run itself on out-of-fold predictions.
- ``imbalance``: Fashion-MNIST with a 20:1 class ratio (100 training images of each of five classes, 5 of each of
  the other five); test: 1,000 balanced images of the official test set. Balanced accuracy with ``--balance none``,
  ``weights`` and ``sampler``, for the linear probe and for fine-tuning.
- ``noise``: Fashion-MNIST, 20 labelled images per class, 10% of the labels flipped to another class (seeded);
  ``fit`` (linear, cross-validated) lists the training examples confident learning flags; the precision of the
  top-20 list is the share of real flips in it (chance: 10%).

    .venv/bin/python benchmarks/data_issues.py                         # all three (about 30 minutes on 2 cores)
    .venv/bin/python benchmarks/data_issues.py --parts noise --seeds 1 # a smoke run

Prints Markdown tables and saves benchmarks/results/data_issues.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFERKIT_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

import transferkit

HERE = Path(__file__).parent


def _write(folder: Path, images: np.ndarray, labels: list[str], split: str) -> list[dict]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        name = f"{split}_{i:05d}.png"
        Image.fromarray(img).save(folder / name)
        rows.append({"path": f"{folder.name}/{name}", "label": y, "split": split})
    return rows


def _table(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def multilabel(work: Path, budget: str, seeds: int) -> list[dict]:
    from transferkit.datasets.composed import build_composed_multilabel

    table = build_composed_multilabel(work / "composed-multilabel", train_images=200, test_images=100, seed=0)
    out = []
    for seed in range(seeds):
        for strategy in ("linear", "finetune", "auto", "scratch"):
            t = time.monotonic()
            model = transferkit.fit(table, strategy=strategy, seed=seed,
                                    budget=None if strategy == "linear" else budget)
            m = model.metrics["test"]
            out.append({"part": "multilabel", "seed": seed, "strategy": strategy,
                        "kept": model.metrics["strategy"], "macro_f1": m["macro_f1"], "map": m["map"],
                        "micro_f1": m["micro_f1"], "exact_match": m["accuracy"], "hamming": m["hamming_score"],
                        "seconds": round(time.monotonic() - t, 1)})
            print(out[-1], flush=True)
    return out


def imbalance(work: Path, budget: str, seeds: int) -> list[dict]:
    from transferkit.datasets.fashion_mnist import CLASSES, load_fashion_mnist, sample_per_class

    images, labels = load_fashion_mnist("train")
    test_images, test_labels = load_fashion_mnist("test")
    test_idx = sample_per_class(test_labels, 100, seed=0)
    out = []
    for seed in range(seeds):
        folder = work / f"imbalance-{seed}"
        rng = np.random.default_rng(seed)
        idx = np.concatenate([rng.choice(np.flatnonzero(labels == c), 100 if c < 5 else 5, replace=False)
                              for c in range(10)])
        rows = _write(folder / "img", images[idx], [CLASSES[y] for y in labels[idx]], "train")
        rows += _write(folder / "img", test_images[test_idx], [CLASSES[y] for y in test_labels[test_idx]], "test")
        table = _table(folder / "labels.jsonl", rows)
        for strategy in ("linear", "finetune"):
            for balance in ("none", "weights", "sampler"):
                t = time.monotonic()
                model = transferkit.fit(table, strategy=strategy, balance=balance, seed=seed, val_fraction=0.2,
                                        budget=None if strategy == "linear" else budget)
                m = model.metrics["test"]
                minority = [m["per_class"][CLASSES[c]]["recall"] for c in range(5, 10)]
                out.append({"part": "imbalance", "seed": seed, "strategy": strategy, "balance": balance,
                            "balanced_accuracy": m["balanced_accuracy"], "accuracy": m["accuracy"],
                            "minority_recall": float(np.mean(minority)), "seconds": round(time.monotonic() - t, 1)})
                print(out[-1], flush=True)
    return out


def noise(work: Path, budget: str, seeds: int, flip: float = 0.1, k: int = 20) -> list[dict]:
    from transferkit.datasets.fashion_mnist import CLASSES, load_fashion_mnist, sample_per_class

    images, labels = load_fashion_mnist("train")
    out = []
    for seed in range(seeds):
        folder = work / f"noise-{seed}"
        idx = sample_per_class(labels, 20, seed=seed)
        given = labels[idx].copy()
        rng = random.Random(seed)
        flipped = sorted(rng.sample(range(len(idx)), round(flip * len(idx))))
        for i in flipped:
            given[i] = rng.choice([c for c in range(10) if c != given[i]])
        rows = _write(folder / "img", images[idx], [CLASSES[y] for y in given], "train")
        model = transferkit.fit(_table(folder / "labels.jsonl", rows), strategy="linear", seed=seed)
        n = model.metrics["label_noise"]
        planted = {str((folder / rows[i]["path"]).resolve()) for i in flipped}
        top = [str(Path(r["input"]).resolve()) for r in n["rows"][:k]]
        hits = sum(t in planted for t in top)
        out.append({"part": "noise", "seed": seed, "examples": n["examples"], "planted": len(planted),
                    "flagged": n["issues"], "top_k": len(top), "hits": hits,
                    "precision_at_k": hits / max(1, len(top)), "recall_at_k": hits / len(planted),
                    "chance": len(planted) / n["examples"]})
        print(out[-1], flush=True)
    return out


def _mean(rows: list[dict], key: str) -> str:
    v = np.array([r[key] for r in rows if r.get(key) is not None], dtype=float)
    if not len(v):
        return "-"
    if len(v) == 1:
        return f"{v[0]:.3f}"
    from scipy import stats

    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return f"{v.mean():.3f} +- {half:.3f}"


def _section(title: str, rows: list[dict], groups: list[dict], keys: list[str], metrics: list[str]) -> list[str]:
    """One Markdown table: a row per group of runs (the runs matching ``groups``' values), ``keys`` as they are,
    then the mean (and interval) of each of ``metrics`` over the seeds."""
    head = [*keys, *metrics]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group in groups:
        rs = [r for r in rows if all(r[k] == v for k, v in group.items())]
        if rs:
            lines.append("| " + " | ".join([*(str(rs[0][k]) for k in keys), *(_mean(rs, m) for m in metrics)]) + " |")
    return [*lines, ""]


def report(rows: list[dict]) -> str:
    lines = []
    ml = [r for r in rows if r["part"] == "multilabel"]
    if ml:
        lines += _section("Multi-label images (composed garments, 200 train / 100 test images)", ml,
                          [{"strategy": s} for s in ("linear", "finetune", "auto", "scratch")], ["strategy", "kept"],
                          ["macro_f1", "map", "micro_f1", "exact_match", "seconds"])
    im = [r for r in rows if r["part"] == "imbalance"]
    if im:
        lines += _section("Imbalance (Fashion-MNIST, 20:1; balanced test set of 1,000)", im,
                          [{"strategy": s, "balance": b} for s in ("linear", "finetune")
                           for b in ("none", "weights", "sampler")], ["strategy", "balance"],
                          ["balanced_accuracy", "minority_recall", "accuracy"])
    nz = [r for r in rows if r["part"] == "noise"]
    if nz:
        lines += _section("Label noise (Fashion-MNIST, 20 per class, 10% flipped; chance: the share flipped)", nz,
                          [{"part": "noise"}], [], ["flagged", "precision_at_k", "recall_at_k", "chance"])
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="multilabel,imbalance,noise")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--budget", default="3m", help="time budget of each fine-tuning run")
    parser.add_argument("--noise-seeds", type=int, default=3)
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",")]
    rows: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="tk-data-issues-"))
    try:
        for part in parts:
            seeds = args.noise_seeds if part == "noise" else args.seeds
            rows += {"multilabel": multilabel, "imbalance": imbalance, "noise": noise}[part](work, args.budget, seeds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(rows)
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "data_issues.json").write_text(json.dumps({"rows": rows, "markdown": text}, indent=1))


if __name__ == "__main__":
    main()
