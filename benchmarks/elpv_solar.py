"""Cross-domain transfer to greyscale, non-natural images: ImageNet weights -> ELPV solar-cell
electroluminescence images (defective vs functional), the medical-imaging issue's closing-note numbers.

For a small and a larger label budget (labelled cells drawn stratified from the pool; 15% of them become the
validation set that tunes the threshold and temperature), each strategy trains with ``--modality medical``
(class-weighted loss, balanced-accuracy model selection, calibrated probabilities, Youden threshold) and is
scored on the same 800 held-out cells: AUROC (95% bootstrap interval), sensitivity and specificity at the
tuned threshold, balanced accuracy, calibration error, wall time.

    make bench-medical                                    # installs elpv-dataset, then runs this
    .venv/bin/python benchmarks/elpv_solar.py --sizes 60 --strategies linear
    .venv/bin/python benchmarks/elpv_solar.py --sizes 600 --strategies finetune --budget 15m --merge   # add a row

Needs ``pip install elpv-dataset==1.0.0.post1`` (CC BY-NC-SA 4.0, non-commercial). Results are printed as a
Markdown table and saved to benchmarks/results/elpv_solar.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TRANSFERKIT_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import transferkit  # noqa: E402
from transferkit.datasets.elpv import export_elpv  # noqa: E402

HERE = Path(__file__).parent


def run(size: int, strategy: str, budget: str | None, work: Path, seed: int, image_size: int | None) -> dict:
    manifest = export_elpv(work / f"elpv-{size}", train_size=size, test_size=800, seed=seed)
    t = time.monotonic()
    model = transferkit.fit(manifest, modality="medical", strategy=strategy, out=work / f"run-{size}-{strategy}",
                            seed=seed, budget=None if strategy == "linear" else budget, image_size=image_size)
    wall = time.monotonic() - t
    m = model.metrics
    c = m["test"]["clinical"]
    return {
        "train_size": size, "train": m["data"]["train"], "val": m["data"]["val"], "strategy": m["strategy"],
        "auroc": c["auroc"], "auroc_ci": c["auroc_ci"], "sensitivity": c["sensitivity"],
        "sensitivity_ci": c["sensitivity_ci"], "specificity": c["specificity"], "specificity_ci": c["specificity_ci"],
        "balanced_accuracy": c["balanced_accuracy"], "ppv": c["ppv"], "npv": c["npv"],
        "threshold": m["clinical"]["threshold"], "temperature": m["clinical"]["temperature"],
        "ece_before": m["clinical"]["ece"]["test"]["before"], "ece_after": m["clinical"]["ece"]["test"]["after"],
        "accuracy": m["test"]["accuracy"], "prevalence": c["prevalence"], "wall_s": wall,
        "epochs": len(m["history"]["epochs"]), "stopped": m["history"]["stopped"],
        "trainable_params": m["trainable_params"], "budget": None if strategy == "linear" else budget,
        "image_size": m["backbone"]["input_size"][0],
    }


def table(rows: list[dict]) -> str:
    out = ["| labelled cells | strategy | budget | AUROC (95% CI) | sensitivity | specificity | balanced acc. | "
           "ECE before -> after | epochs | wall |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["auroc_ci"]
        out.append(f"| {r['train_size']} | {r['strategy']} | {r['budget'] or '-'} | {r['auroc']:.3f} "
                   f"({lo:.3f}-{hi:.3f}) | {r['sensitivity']:.3f} | {r['specificity']:.3f} | "
                   f"{r['balanced_accuracy']:.3f} | {r['ece_before']:.3f} -> {r['ece_after']:.3f} | {r['epochs']} | "
                   f"{r['wall_s']:.0f} s |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[60, 600], help="labelled training cells per run")
    ap.add_argument("--strategies", nargs="+", default=["linear", "finetune", "scratch"])
    ap.add_argument("--budget", default="5m", help="wall-time budget of each finetune/scratch run")
    ap.add_argument("--image-size", type=int, default=None, help="input resolution (default: the backbone's 224)")
    ap.add_argument("--work", type=Path, default=Path("runs/bench-elpv"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--merge", action="store_true",
                    help="keep the saved rows of other (size, strategy, budget) runs and replace those rerun")
    args = ap.parse_args()
    results = HERE / "results" / "elpv_solar.json"
    rows = []
    for size in args.sizes:
        for s in args.strategies:
            rows.append(run(size, s, args.budget, args.work, args.seed, args.image_size))
            r = rows[-1]
            print(f"  {size:>4} cells {r['strategy']:<10} AUROC {r['auroc']:.3f}  sens {r['sensitivity']:.3f}  "
                  f"spec {r['specificity']:.3f}  bal {r['balanced_accuracy']:.3f}  {r['wall_s']:6.0f}s", flush=True)
    if args.merge and results.is_file():
        def key(r: dict) -> tuple:
            return r["train_size"], r["strategy"].split(" ")[0], r["budget"]

        new = {key(r) for r in rows}
        kept = [r for r in json.loads(results.read_text())["rows"] if key(r) not in new]
        rows = sorted(kept + rows, key=lambda r: (r["train_size"], ["linear", "finetune", "scratch", "auto"].index(
            r["strategy"].split(" ")[0]) if r["strategy"].split(" ")[0] in ("linear", "finetune", "scratch", "auto")
            else 9, str(r["budget"])))
    print(table(rows))
    results.parent.mkdir(exist_ok=True)
    results.write_text(json.dumps({"rows": rows, "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    print(f"saved {results}")


if __name__ == "__main__":
    main()
