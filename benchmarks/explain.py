"""Explanations (issue 22): what they cost, whether the maps are faithful, and whether the shortcut check fires.

- ``cost``: ``transferkit fit --strategy linear`` on the demo's data (Fashion-MNIST, 10 labelled images per class,
  1,000 test images, EfficientNet-Lite0), once with ``--no-explain`` and once with explanations, each in a fresh
  process with an empty feature cache; then ``predict --explain`` on one image against ``predict`` alone, in
  process (the model loaded once), so the number is the explanation's own time.
- ``faithful``: the deletion score each run records (the area between the predicted class's probability curve as the
  map's top units are removed and as random ones are; 16 right answers, 8 for texts, seeded) for images (the run
  above), texts
  (BBC News, 8 articles per topic, all-MiniLM-L6-v2) and audio (spoken digits, 20 per class, EfficientNet-Lite0 on
  log-mel spectrograms).
- ``shortcut``: two constructed image sets of two classes; in the first, only one class's images carry a small red
  mark in the top-left corner (the rest of the images alike); in the second, a bright square in the middle decides
  the class. The report must warn on the first and stay silent on the second.

    .venv/bin/python benchmarks/explain.py             # about 8 minutes on 2 cores
    .venv/bin/python benchmarks/explain.py --parts shortcut

Prints Markdown tables and saves benchmarks/results/explain.json (and copies the Fashion-MNIST run's figure to
docs/images/explanations-fashion-mnist.png with ``--figure``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFERKIT_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

HERE = Path(__file__).parent
CLI = [sys.executable, "-m", "transferkit"]


def fit_cli(data: Path, out: Path, cache: Path, *extra: str) -> tuple[float, dict]:
    """One ``transferkit fit`` in a fresh process with its own empty cache: wall seconds and metrics.json."""
    env = {**os.environ, "TRANSFERKIT_CACHE": str(cache)}
    shutil.rmtree(cache, ignore_errors=True)
    t = time.monotonic()
    subprocess.run([*CLI, "fit", str(data), "--strategy", "linear", "--out", str(out), *extra], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - t, json.loads((out / "metrics.json").read_text())


def cost(work: Path, figure: bool) -> dict:
    from transferkit.datasets.fashion_mnist import export_image_folder

    data = export_image_folder(work / "fm", train_per_class=10, test_size=1000, seed=0)
    plain, explained = [], []  # alternated, twice each: one run's wall time varies by several seconds here
    for _ in range(2):
        plain.append(fit_cli(data, work / "run-plain", work / "cache-plain", "--no-explain")[0])
        seconds, m = fit_cli(data, work / "run-explained", work / "cache-explained")
        explained.append(seconds)
    plain_s, explained_s = float(np.median(plain)), float(np.median(explained))
    if figure:
        target = HERE.parent / "docs" / "images" / "explanations-fashion-mnist.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(work / "run-explained" / "explanations.png", target)

    import transferkit

    model = transferkit.load(work / "run-explained" / "model")
    image = sorted((data / "test").rglob("*.png"))[0]
    model.predict([image])  # warm: the first call pays for loading libraries
    model.predict([image], explain=work / "warm")
    times = {}
    for name, kw in (("predict", {}), ("predict --explain", {"explain": work / "one"})):
        runs = []
        for _ in range(3):
            t = time.monotonic()
            model.predict([image], **kw)
            runs.append(time.monotonic() - t)
        times[name] = float(np.median(runs))
    e = m["explanations"]
    own = m["timings"]["explain_s"] + m["timings"].get("explain_figure_s", 0.0)  # measured inside the run
    return {"plain_s": round(plain_s, 1), "explained_s": round(explained_s, 1), "plain_runs": plain,
            "explained_runs": explained, "added": round(explained_s / plain_s - 1, 3),
            "explain_s": round(own, 1), "explain_share": round(own / (m["timings"]["total_s"] - own), 3),
            "test_accuracy": m["test"]["accuracy"], "deletion": e["deletion"], "border_share": e["border_share"],
            "shortcut": e["shortcut"], "predict_s": round(times["predict"], 3),
            "predict_explain_s": round(times["predict --explain"], 3)}


def faithful(work: Path) -> list[dict]:
    from transferkit.datasets.bbc_news import export_text_folder
    from transferkit.datasets.spoken_digits import build_spoken_digits

    out = []
    for name, build in (("BBC News, 8 per topic", lambda d: export_text_folder(d, train_per_class=8,
                                                                               test_per_class=100)),
                        ("spoken digits, 20 per class", lambda d: build_spoken_digits(d, train_per_class=20,
                                                                                     test_per_class=30))):
        data = build(work / name.split(",")[0].replace(" ", "-"))
        seconds, m = fit_cli(data, work / f"run-{len(out)}", work / f"cache-{len(out)}")
        e = m["explanations"]
        out.append({"data": name, "kind": e["kind"], "method": e["method"], "deletion": e["deletion"],
                    "test_accuracy": m["test"]["accuracy"], "explain_s": round(m["timings"]["explain_s"], 1),
                    "total_s": round(seconds, 1)})
        print(out[-1], flush=True)
    return out


def shortcut(work: Path) -> list[dict]:
    from transferkit.datasets.shortcut import write_marked_images  # the tests build the same sets

    out = []
    for name, marker in (("corner mark on one class", "corner"), ("square in the middle decides", None)):
        folder = work / f"shortcut-{marker}"
        write_marked_images(folder / "train", 14, seed=1, marker=marker)
        write_marked_images(folder / "test", 8, seed=2, marker=marker)
        _, m = fit_cli(folder, work / f"run-{marker}", work / f"cache-{marker}")
        e = m["explanations"]
        out.append({"data": name, "border_share": e["border_share"], "band": e["border_band"],
                    "warned": e["shortcut"] is not None, "warning": e["shortcut"],
                    "test_accuracy": m["test"]["accuracy"]})
        print(out[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="cost,faithful,shortcut")
    parser.add_argument("--figure", action="store_true", help="copy the Fashion-MNIST figure into docs/images")
    args = parser.parse_args()
    parts = args.parts.split(",")
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "cost" in parts:
            results["cost"] = c = cost(work, args.figure)
            print("\n| linear probe, Fashion-MNIST 10/class, 1,000 test | seconds |\n|---|---|")
            print(f"| `fit --no-explain` (median of 2) | {c['plain_s']} |\n| `fit` (explanations, median of 2) | "
                  f"{c['explained_s']} ({c['added']:+.1%}) |\n| explanations inside the run (maps, deletion check, "
                  f"figure) | {c['explain_s']} ({c['explain_share']:.1%} of the rest of the run) |")
            print(f"| `predict` one image (model loaded) | {c['predict_s']} |\n| `predict --explain` one image | "
                  f"{c['predict_explain_s']} |")
        if "faithful" in parts:
            rows = faithful(work)
            if "cost" in results:
                d = results["cost"]["deletion"]
                rows.insert(0, {"data": "Fashion-MNIST, 10 per class", "kind": "image", "deletion": d,
                                "test_accuracy": results["cost"]["test_accuracy"],
                                "explain_s": results["cost"]["explain_s"]})
            results["faithful"] = rows
            print("\n| data | maps | deletion score | AUC map order | AUC random order | test accuracy |\n"
                  "|---|---|---|---|---|---|")
            for r in rows:
                d = r["deletion"]
                print(f"| {r['data']} | {r['kind']} | {d['score']:+.3f} | {d['map_auc']:.3f} | {d['random_auc']:.3f} "
                      f"| {r['test_accuracy']:.3f} |")
        if "shortcut" in parts:
            results["shortcut"] = rows = shortcut(work)
            print("\n| data | border share per class | warned |\n|---|---|---|")
            for r in rows:
                shares = ", ".join(f"{k} {v:.0%}" for k, v in (r["border_share"] or {}).items())
                print(f"| {r['data']} | {shares} (band {r['band']:.0%}) | {'yes' if r['warned'] else 'no'} |")
    (HERE / "results").mkdir(exist_ok=True)
    path = HERE / "results" / "explain.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    from transferkit.io import write_json

    write_json(path, {**old, **results})
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
