"""Detection benchmark: pretrained backbone vs scratch under the same wall-time budget, on composed images.

Fashion-MNIST garments (trouser, sneaker, bag, ankle boot; train and test objects from the official train and
test sets) pasted at random positions and scales onto crops of scikit-image's photos, with exact boxes, in
COCO format (``transferkit.datasets.composed``): 200 training images (15% become validation) and 100 test images
at 256 px. Each strategy gets the same ``--budget``; ``scratch`` is the same FCOS detector with random weights.

    .venv/bin/python benchmarks/composed_objects.py                      # finetune, frozen, scratch, auto; 6 min each
    .venv/bin/python benchmarks/composed_objects.py --strategies finetune scratch --budget 5m

Prints a Markdown table; saves benchmarks/results/composed_objects.json and copies one drawn test prediction
per strategy to benchmarks/results/composed_objects_<strategy>.png.
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
from transferkit.datasets.composed import build_composed_detection  # noqa: E402

HERE = Path(__file__).parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategies", nargs="+", default=["finetune", "frozen", "scratch", "auto"])
    ap.add_argument("--budget", default="6m", help="wall-time budget per strategy (same for all)")
    ap.add_argument("--train-images", type=int, default=200)
    ap.add_argument("--test-images", type=int, default=100)
    ap.add_argument("--work", type=Path, default=Path("runs/bench-detect"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", type=Path, default=HERE / "results" / "composed_objects.json")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    data = args.work / f"composed-{args.train_images}-{args.test_images}"
    if not (data / "annotations").is_dir():
        build_composed_detection(data, train_images=args.train_images, test_images=args.test_images, seed=args.seed)
    rows = []
    for s in args.strategies:
        out = args.work / f"run-{s}"
        t = time.monotonic()
        model = transferkit.fit(data, task="detect", strategy=s, budget=args.budget, out=out, seed=args.seed)
        m = model.metrics
        test = m["test"]
        rows.append({
            "strategy": m["strategy"], "budget": args.budget, "test_images": test["n_images"],
            "test_boxes": test["n_boxes"],
            "map": test["map"], "map_50": test["map_50"], "map_75": test["map_75"], "mar_100": test["mar_100"],
            "found_at_0.5": test["at_0.5"]["found"], "false_alarms_at_0.5": test["at_0.5"]["false_alarms"],
            "per_class_ap": {c: v["ap"] for c, v in test["per_class"].items()},
            "epochs": len(m["history"]["epochs"]), "best_epoch": m["history"]["best_epoch"] + 1,
            "stopped": m["history"]["stopped"], "trainable_params": m["trainable_params"],
            "image_size": m["detector"]["image_size"], "train_s": round(m["timings"]["train_s"], 1),
            "wall_s": round(time.monotonic() - t, 1),
        })
        first = sorted((data / "test").glob("*.png"))[0]
        args.results.parent.mkdir(parents=True, exist_ok=True)
        model.draw(first, args.results.with_name(f"{args.results.stem}_{s}.png"))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| strategy | budget | test mAP@[.5:.95] | mAP@.5 | found / boxes at 0.5 | false alarms | "
          "epochs | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['strategy']} | {r['budget']} | {r['map']:.3f} | {r['map_50']:.3f} | {r['found_at_0.5']} / "
              f"{r['test_boxes']} | {r['false_alarms_at_0.5']} | {r['epochs']} | {r['wall_s']} |")
    args.results.write_text(json.dumps({"python": sys.version.split()[0], "torch": torch.__version__,
                                        "threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
