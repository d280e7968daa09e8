"""``transferkit search`` (issue 23): does searching the settings pay off on small data, and what do workers buy?

- ``payoff``: per seed, its own draw of labelled examples (the test set stays the same): on Fashion-MNIST with 25
  labels per class (1,000 test images; EfficientNet-Lite0 at 112 px, as the
  benchmarks' fast comparisons use) and BBC News with 25 articles per topic (500 test articles; all-MiniLM-L6-v2, 128
  tokens), one search per seed (``--strategy linear,finetune``, ``--trials``, median pruning, the cross-validated
  objective; fine-tuning's epochs searched from 3 to 10 to keep a CPU trial to minutes), each ending with the
  default settings (``auto``)
  and the searched ones trained on the same splits and scored on the same test set. Reported: the mean test
  accuracy of each over the seeds with a 95% t-interval, the mean paired difference, trials complete/pruned, and
  wall time.
- ``workers``: the same Fashion-MNIST search (seed 0) with 1 and 2 worker processes on SQLite, and 2 on a local
  PostgreSQL server (``transferkit.studies.local``), each in a fresh process: wall time of the trials and of the
  whole command.

    .venv/bin/python benchmarks/search.py                       # payoff + workers
    .venv/bin/python benchmarks/search.py --parts workers --trials 8

Prints Markdown tables and saves benchmarks/results/search.json. Run it on a quiet machine: two busy processes on two
cores halve each other's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFERKIT_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HERE = Path(__file__).parent
CLI = [sys.executable, "-m", "transferkit", "search"]


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (0 for one value)."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, float(stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5)


SPACE = "finetune:\n  epochs: {low: 3, high: 10}\n"
SIZE = {"fashion-mnist": ["--image-size", "112"], "bbc-news": ["--max-length", "128"]}


def search_cli(data: Path, out: Path, storage: str, study: str, trials: int, seed: int, *extra: str) -> dict:
    """One ``transferkit search`` in a fresh process: its record (``--json``) and wall seconds."""
    space = out.parent / "space.yaml"
    space.write_text(SPACE)
    t = time.monotonic()
    r = subprocess.run([*CLI, str(data), "--trials", str(trials), "--seed", str(seed), "--strategy", "linear,finetune",
                        "--space", str(space), "--storage", storage, "--study", study, "--out", str(out),
                        "--no-explain", "--json", *extra], check=True, capture_output=True, text=True)
    record = json.loads(r.stdout.strip().splitlines()[-1])
    return {**record, "wall_s": round(time.monotonic() - t, 1)}


def dataset(work: Path, name: str, seed: int) -> Path:
    """The labelled examples drawn with ``seed`` (another seed: other labelled examples; the same test set)."""
    folder = work / f"{'fm' if name == 'fashion-mnist' else 'bbc'}-{seed}"
    if folder.is_dir():  # exported already by an earlier part
        return folder
    if name == "fashion-mnist":
        from transferkit.datasets.fashion_mnist import export_image_folder

        return export_image_folder(work / f"fm-{seed}", train_per_class=25, test_size=1000, seed=seed)
    from transferkit.datasets.bbc_news import export_text_folder

    return export_text_folder(work / f"bbc-{seed}", train_per_class=25, test_per_class=100, seed=seed)


def payoff(work: Path, trials: int, seeds: int, names: list[str]) -> dict:
    out: dict = {}
    for name in names:
        rows = []
        for seed in range(seeds):
            rec = search_cli(dataset(work, name, seed), work / f"{name}-{seed}", f"sqlite:///{work / 'payoff.db'}",
                             f"{name}-{seed}", trials, seed, *SIZE[name])
            c = rec["comparison"]
            rows.append({"seed": seed, "defaults": c["defaults"], "searched": c["searched"],
                         "difference": c["difference"], "ci": c["ci"], "best": rec["best"], "trials": rec["trials"],
                         "trial_s": rec["seconds"], "wall_s": rec["wall_s"]})
            print(f"{name} seed {seed}: defaults {c['defaults']:.3f}, searched {c['searched']:.3f} "
                  f"({rec['best']['strategy']}), {rec['wall_s']:.0f} s", flush=True)
        out[name] = {"trials": trials, "seeds": seeds, "runs": rows,
                     **{k: interval([r[k] for r in rows]) for k in ("defaults", "searched", "difference")}}
    return out


def workers(work: Path, data: Path, trials: int) -> dict:
    from transferkit.studies.local import local_postgres

    out = {}
    for label, storage, n in (("sqlite, 1 worker", f"sqlite:///{work / 'w1.db'}", 1),
                              ("sqlite, 2 workers", f"sqlite:///{work / 'w2.db'}", 2)):
        rec = search_cli(data, work / f"workers-{n}", storage, "w", trials, 0, "--workers", str(n),
                         *SIZE["fashion-mnist"])
        out[label] = {"trial_s": rec["seconds"], "wall_s": rec["wall_s"], "trials": rec["trials"],
                      "workers": rec["workers"], "best": rec["best"]["value"]}
        print(f"{label}: trials {rec['seconds']:.0f} s, whole command {rec['wall_s']:.0f} s", flush=True)
    with local_postgres() as url:
        rec = search_cli(data, work / "workers-pg", url, "w", trials, 0, "--workers", "2", *SIZE["fashion-mnist"])
    out["postgresql, 2 workers"] = {"trial_s": rec["seconds"], "wall_s": rec["wall_s"], "trials": rec["trials"],
                                    "workers": rec["workers"], "best": rec["best"]["value"]}
    print(f"postgresql, 2 workers: trials {rec['seconds']:.0f} s, whole command {rec['wall_s']:.0f} s", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="payoff,workers")
    ap.add_argument("--trials", type=int, default=10,
                    help="trials per search (docs/benchmarks.md: 10 on Fashion-MNIST, 6 on BBC News, whose fine-tuning"
                    " trials take minutes each here)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--data", default="fashion-mnist,bbc-news")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tk-bench-search-"))
    result: dict = {"trials": args.trials, "seeds": args.seeds, "cpus": os.cpu_count()}
    try:
        parts = args.parts.split(",")
        if "payoff" in parts:
            result["payoff"] = payoff(work, args.trials, args.seeds, args.data.split(","))
            print("\n| data | defaults | searched | searched - defaults |\n|---|---|---|---|")
            for name, r in result["payoff"].items():
                print(f"| {name} | {r['defaults'][0]:.3f} +- {r['defaults'][1]:.3f} | {r['searched'][0]:.3f} +- "
                      f"{r['searched'][1]:.3f} | {r['difference'][0]:+.3f} +- {r['difference'][1]:.3f} |")
        if "workers" in parts:
            result["workers"] = workers(work, dataset(work, "fashion-mnist", 0), args.trials)
            print("\n| storage, workers | trials (s) | whole command (s) |\n|---|---|---|")
            for label, r in result["workers"].items():
                print(f"| {label} | {r['trial_s']:.0f} | {r['wall_s']:.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (HERE / "results").mkdir(exist_ok=True)
    path = HERE / "results" / "search.json"
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    if "payoff" in result and "payoff" in earlier:  # one data set per call keeps the others' results
        result["payoff"] = {**earlier["payoff"], **result["payoff"]}
    path.write_text(json.dumps({**earlier, **result}, indent=2))


if __name__ == "__main__":
    main()
