"""BBC News topic benchmark: the numbers in the text issue's closing note.

For 8 and 32 labelled articles per topic (5 topics; 15% of them become the validation set), every text
strategy adapts all-MiniLM-L6-v2 (installed from PyPI, offline) and is scored on 500 held-out articles
(100 per topic, disjoint from the labelled ones), with wall time and trainable-parameter count.

    .venv/bin/python benchmarks/bbc_news.py                       # 8 and 32 per class (about 40 minutes on 2 CPU cores)
    .venv/bin/python benchmarks/bbc_news.py --per-class 8 --strategies linear lora

Results are printed as a Markdown table and saved to benchmarks/results/bbc_news.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFERKIT_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import transferkit  # noqa: E402
from transferkit.datasets.bbc_news import export_text_folder  # noqa: E402

HERE = Path(__file__).parent
STRATEGIES = ["linear", "finetune", "lora", "contrastive", "scratch", "auto"]


def run(per_class: int, strategies: list[str], work: Path, seed: int, test_per_class: int) -> list[dict]:
    data = work / f"bbc-{per_class}"
    if not (data / "train").is_dir():
        export_text_folder(data, train_per_class=per_class, test_per_class=test_per_class, seed=seed)
    rows = []
    for s in strategies:
        t = time.monotonic()
        model = transferkit.fit(data, strategy=s, out=work / f"run-{per_class}-{s}", seed=seed)
        m = model.metrics
        rows.append({
            "per_class": per_class, "strategy": m["strategy"], "test_n": m["test"]["n"],
            "test_accuracy": m["test"]["accuracy"], "test_macro_f1": m["test"]["macro_f1"],
            "wall_s": time.monotonic() - t, "trainable_params": m["trainable_params"],
            "epochs": len(m["history"]["epochs"]), "stopped": m["history"]["stopped"],
            "gap_acc": m["train_val_gap"]["accuracy"], "truncated_test": m["data"]["truncated"]["test"],
        })
        r = rows[-1]
        print(f"  {per_class:>3}/class {r['strategy']:<18} acc {r['test_accuracy']:.3f}  F1 {r['test_macro_f1']:.3f}  "
              f"{r['wall_s']:7.1f}s  trainable {r['trainable_params']:,}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--strategies", nargs="+", default=STRATEGIES)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--work", type=Path, default=Path("runs/bench-bbc"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=HERE / "results" / "bbc_news.json", help="where the JSON goes")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    rows = []
    for n in args.per_class:
        rows += run(n, args.strategies, args.work, args.seed, args.test_per_class)
    print("\n| labels/class | strategy | test accuracy | macro-F1 | wall time | trainable params |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['per_class']} | {r['strategy']} | {r['test_accuracy']:.3f} | {r['test_macro_f1']:.3f} | "
              f"{r['wall_s']:.0f} s | {r['trainable_params']:,} |")
    out = args.results
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=2) + "\n")
    print(f"\nsaved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
