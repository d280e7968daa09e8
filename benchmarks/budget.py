"""Budgets that hold: ``transferkit fit --budget`` asked for a wall time, and what the whole command took.

Each case runs ``transferkit fit`` (or ``transferkit demo``) in a fresh process and times it from the start of
the process to its exit, interpreter start-up included, as a user's ``time transferkit fit ...`` would. The budget
counts from the start of ``fit``'s work; the plan it made (reading, training, scratch baseline, scoring, report) is
read back from ``metrics.json``. Runs should end at or under their budget, and never more than 10% over it.

    .venv/bin/python benchmarks/budget.py                       # every case, about 15 minutes on 2 CPU cores
    .venv/bin/python benchmarks/budget.py --cases demo,bbc-ft   # a few

The data are the benchmark sets of docs/benchmarks.md, exported once under ``data/bench/`` (Fashion-MNIST needs the
Debian package or a download; ``digits`` needs espeak-ng; ``elpv`` needs ``pip install elpv-dataset==1.0.0.post1``).
Prints a Markdown table and saves benchmarks/results/budget.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent
DATA = ROOT / "data" / "bench"
BIN = Path(sys.executable).parent / "transferkit"


def fmnist(per_class: int) -> Callable[[], Path]:
    def build() -> Path:
        from transferkit.datasets.fashion_mnist import export_image_folder

        folder = DATA / f"fmnist-{per_class}"
        if not (folder / "train").is_dir():
            export_image_folder(folder, train_per_class=per_class, test_size=1000)
        return folder

    return build


def bbc(per_class: int) -> Callable[[], Path]:
    def build() -> Path:
        from transferkit.datasets.bbc_news import export_text_folder

        folder = DATA / f"bbc-{per_class}"
        if not (folder / "train").is_dir():
            export_text_folder(folder, train_per_class=per_class, test_per_class=100)
        return folder

    return build


def digits(per_class: int) -> Callable[[], Path]:
    def build() -> Path:
        from transferkit.datasets.spoken_digits import build_spoken_digits

        folder = DATA / f"digits-{per_class}"
        if not (folder / "train").is_dir():
            build_spoken_digits(folder, train_per_class=per_class, test_per_class=30)
        return folder

    return build


def elpv(size: int) -> Callable[[], Path]:
    def build() -> Path:
        from transferkit.datasets.elpv import export_elpv

        return export_elpv(DATA / f"elpv-{size}", train_size=size, test_size=800)

    return build


@dataclass
class Case:
    name: str
    what: str  # for the table
    data: Callable[[], Path] | None  # None: `transferkit demo`
    budget: str
    args: tuple[str, ...] = ()


CASES = [
    Case("demo", "`make demo` (Fashion-MNIST 10/class, auto)", None, "3m"),
    Case("fmnist-ft", "Fashion-MNIST 100/class, finetune", fmnist(100), "2m", ("--strategy", "finetune")),
    Case("fmnist-auto-scratch", "Fashion-MNIST 100/class, auto + scratch baseline", fmnist(100), "3m",
         ("--strategy", "auto", "--scratch-baseline", "--val-fraction", "0.2")),
    Case("bbc-ft", "BBC News 32/class, finetune", bbc(32), "2m", ("--strategy", "finetune")),
    Case("digits-auto-scratch", "spoken digits 20/class, auto + scratch baseline", digits(20), "2m",
         ("--strategy", "auto", "--scratch-baseline")),
    Case("elpv-ft", "ELPV 600 cells (medical), finetune", elpv(600), "2m",
         ("--strategy", "finetune", "--modality", "medical")),
]


def seconds(budget: str) -> float:
    from transferkit.api import parse_budget

    return float(parse_budget(budget))


def timed(cmd: list[str], out: Path, cache: Path | None = None) -> tuple[float, dict]:
    """Run a transferkit command in a fresh process: its wall time (start-up included) and its metrics.json.
    ``cache``: a ``TRANSFERKIT_CACHE`` of its own (a cold pixel and feature cache)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFERKIT_QUIET": "1"}
    if cache is not None:
        shutil.rmtree(cache, ignore_errors=True)
        env["TRANSFERKIT_CACHE"] = str(cache)
    t = time.monotonic()
    proc = subprocess.run([str(BIN), *cmd], env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.monotonic() - t
    if proc.returncode != 0:
        raise SystemExit(f"transferkit {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, json.loads((out / "metrics.json").read_text())


def run(case: Case, out: Path) -> dict:
    if case.data is None:
        cmd = ["demo", "--out", str(out), "--budget", case.budget]
    else:
        cmd = ["fit", str(case.data()), "--out", str(out), "--budget", case.budget, *case.args]
    wall, m = timed(cmd, out)
    requested = seconds(case.budget)
    return {"case": case.name, "what": case.what, "budget_s": requested, "wall_s": round(wall, 1),
            "ratio": round(wall / requested, 3), "fit_s": round(m["timings"]["total_s"], 1), "plan": m["budget"],
            "strategy": m["strategy"], "command": "transferkit " + " ".join(cmd)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(c.name for c in CASES), help="comma-separated: "
                    + ", ".join(c.name for c in CASES))
    ap.add_argument("--out", type=Path, default=Path("/tmp/transferkit-budget"), help="run folders go here")
    args = ap.parse_args()
    wanted = args.cases.split(",")
    unknown = set(wanted) - {c.name for c in CASES}
    if unknown:
        raise SystemExit(f"unknown case(s): {', '.join(sorted(unknown))}")
    rows = []
    for case in [c for c in CASES if c.name in wanted]:
        r = run(case, args.out / case.name)
        rows.append(r)
        print(f"{case.name}: {r['wall_s']} s of {r['budget_s']:.0f} s ({r['ratio']:.2f}x), {r['strategy']}",
              flush=True)
    print("\n| run | budget | wall time (process) | of budget | plan: read / train / scratch / scoring / report "
          "| kept |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        p = r["plan"]
        plan = (f"{p['spent_s']:.0f} / {p['train_s']:.0f} / {p['scratch_s']:.0f} / {p['scoring_s']:.0f} / "
                f"{p['report_s']:.0f} s")
        print(f"| {r['what']} | {r['budget_s']:.0f} s | {r['wall_s']:.0f} s | {r['ratio']:.2f}x | {plan} | "
              f"{r['strategy']} |")
    # a partial run (--cases) updates its rows and keeps the others
    path = HERE / "results" / "budget.json"
    path.parent.mkdir(exist_ok=True)
    kept = [r for r in (json.loads(path.read_text()) if path.is_file() else []) if r["case"] not in wanted]
    order = [c.name for c in CASES]
    rows = sorted(kept + rows, key=lambda r: order.index(r["case"]) if r["case"] in order else len(order))
    path.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
