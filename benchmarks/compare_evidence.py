"""Transfer vs scratch, measured by ``transferkit compare``: the numbers in the evidence issue's closing note.

Fashion-MNIST: a pool of 100 labelled images per class (official training set) and 1,000 official test images;
EfficientNet-Lite0 at 112 px. BBC News: a pool of 50 labelled articles per topic and 500 held-out articles;
all-MiniLM-L6-v2 at 128 tokens. Each: budgets of 5, 10, 25, (50,) all labels per class x 3 seeds x linear,
finetune and scratch, each run capped at 90 s of wall time, everything offline.

    .venv/bin/python benchmarks/compare_evidence.py                      # both (about 70 minutes on 2 CPU cores)
    .venv/bin/python benchmarks/compare_evidence.py --only fmnist --resume

Reports land in runs/compare-fmnist/ and runs/compare-bbc/ (report.html opens from disk); a summary of both is
saved to benchmarks/results/compare_evidence.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transferkit  # noqa: E402

HERE = Path(__file__).parent
ROOT = HERE.parent

JOBS = {
    "fmnist": {"data": ROOT / "data" / "fashion-mnist-pool100", "out": ROOT / "runs" / "compare-fmnist",
               "budgets": "5,10,25,50,all", "options": {"image_size": 112}},
    "bbc": {"data": ROOT / "data" / "bbc-news-pool50", "out": ROOT / "runs" / "compare-bbc",
            "budgets": "5,10,25,all", "options": {"max_length": 128}},
}


def export(name: str, dest: Path) -> None:
    if (dest / "train").is_dir():
        return
    if name == "fmnist":
        from transferkit.datasets.fashion_mnist import export_image_folder

        export_image_folder(dest, train_per_class=100, test_size=1000, seed=0)
    else:
        from transferkit.datasets.bbc_news import export_text_folder

        export_text_folder(dest, train_per_class=50, test_per_class=100, seed=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=sorted(JOBS), nargs="*", default=sorted(JOBS, reverse=True))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--time-per-run", default="90s")
    ap.add_argument("--resume", action="store_true", help="reuse the finished runs of an interrupted comparison")
    args = ap.parse_args()
    saved_path = HERE / "results" / "compare_evidence.json"
    saved = json.loads(saved_path.read_text()) if saved_path.exists() else {}
    saved["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    for name in args.only:
        job = JOBS[name]
        export(name, job["data"])
        r = transferkit.compare(job["data"], budgets=job["budgets"], seeds=args.seeds,
                                strategies="linear,finetune,scratch", time_per_run=args.time_per_run, out=job["out"],
                                resume=args.resume, **job["options"])
        saved[name] = {"config": r["config"], "summary": r["summary"], "seconds": r["seconds"],
                       "headlines": {k: v["sentence"] for k, v in r["headlines"].items()}, "warnings": r["warnings"],
                       "report": str(Path(r["files"]["html"]).relative_to(ROOT))}
        print(f"\n## {name}: {r['files']['html']}")
        for k in ("time", "labels", "gap"):
            print("-", r["headlines"][k]["sentence"])
        saved_path.parent.mkdir(exist_ok=True)
        saved_path.write_text(json.dumps(saved, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
