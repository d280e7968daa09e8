"""``auto`` spends time where it pays: its test score and wall time against ``linear`` and ``finetune`` alone.

On the benchmark sets (docs/benchmarks.md) at two sizes each (Fashion-MNIST 10 and 100 per class, BBC News 8 and 32
per topic, ELPV 60 and 600 cells, spoken digits 5 and 20 per digit), every strategy is fitted with the same
``--budget`` in a fresh process (``transferkit fit``) with a cold cache of its own, scored on the set's fixed test
split (accuracy; AUROC for ELPV, whose two classes are imbalanced), and timed from process start to exit. The
target: ``auto`` within 1 point of the better of ``linear`` and ``finetune`` on average, in no more than 60% of their
summed time.

    .venv/bin/python benchmarks/auto_time.py                          # 8 sets x 3 strategies, about 30 minutes
    .venv/bin/python benchmarks/auto_time.py --sets fmnist-10,bbc-8 --budget 90s

Data as in benchmarks/budget.py (exported once under ``data/bench/``). Prints a Markdown table and saves
benchmarks/results/auto_time.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from budget import HERE, bbc, digits, elpv, fmnist, timed

SETS = {
    "fmnist-10": ("Fashion-MNIST 10/class", fmnist(10), ()),
    "fmnist-100": ("Fashion-MNIST 100/class", fmnist(100), ()),
    "bbc-8": ("BBC News 8/topic", bbc(8), ()),
    "bbc-32": ("BBC News 32/topic", bbc(32), ()),
    "elpv-60": ("ELPV 60 cells (AUROC)", elpv(60), ("--modality", "medical")),
    "elpv-600": ("ELPV 600 cells (AUROC)", elpv(600), ("--modality", "medical")),
    "digits-5": ("spoken digits 5/digit", digits(5), ()),
    "digits-20": ("spoken digits 20/digit", digits(20), ()),
}
STRATEGIES = ("linear", "finetune", "auto")


def test_score(m: dict) -> float:
    clinical = (m["test"] or {}).get("clinical")
    return float(clinical["auroc"]) if clinical else float(m["test"]["accuracy"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS), help="comma-separated: " + ", ".join(SETS))
    ap.add_argument("--budget", default="2m", help="the same for every fit (default 2m)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/transferkit-auto-time"))
    args = ap.parse_args()
    rows = []
    for key in args.sets.split(","):
        title, build, extra = SETS[key]
        data = build()
        row = {"set": key, "title": title}
        for strategy in STRATEGIES:
            out = args.out / key / strategy
            # each run with a cold cache of its own: a run after another on the same data would find its decoded
            # pixels and probe features cached, and look faster than it is
            wall, m = timed(["fit", str(data), "--out", str(out), "--strategy", strategy, "--budget", args.budget,
                             *extra], out, cache=args.out / "cache")
            row[strategy] = {"score": round(test_score(m), 4), "wall_s": round(wall, 1), "kept": m["strategy"],
                             "decision": m["details"].get("decision")}
            print(f"{key} {strategy}: {row[strategy]['score']:.3f} in {wall:.0f} s ({m['strategy']})", flush=True)
        best = max(row["linear"]["score"], row["finetune"]["score"])
        row["auto_minus_best"] = round(row["auto"]["score"] - best, 4)
        row["auto_time_share"] = round(row["auto"]["wall_s"] / (row["linear"]["wall_s"] + row["finetune"]["wall_s"]), 3)
        rows.append(row)
    print(f"\n`--budget {args.budget}` for every fit; wall time of the whole `transferkit fit` process.\n")
    print("| set | linear | finetune | auto (kept) | auto - better | auto time / (linear + finetune) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = [f"{r[s]['score']:.3f} ({r[s]['wall_s']:.0f} s)" for s in ("linear", "finetune")]
        kept = r["auto"]["kept"].removeprefix("auto (").removesuffix(")")
        print(f"| {r['title']} | {cells[0]} | {cells[1]} | {r['auto']['score']:.3f} ({r['auto']['wall_s']:.0f} s, "
              f"{kept}) | {100 * r['auto_minus_best']:+.1f} pts | {r['auto_time_share']:.0%} |")
    if rows:
        gap = sum(r["auto_minus_best"] for r in rows) / len(rows)
        share = sum(r["auto"]["wall_s"] for r in rows) / sum(r["linear"]["wall_s"] + r["finetune"]["wall_s"]
                                                             for r in rows)
        print(f"| **mean** | | | | **{100 * gap:+.1f} pts** | **{share:.0%}** (of summed time) |")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "auto_time.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
