"""Small data first (issue 16): transferkit next to the plain recipe and a classical baseline, few labels.

Four offline sets, each with a small labelled set given as a user gives it (one folder of class folders, or one
CSV manifest, with no test split) and a fixed, separate test set:

- ``fmnist``: Fashion-MNIST, 10 images per class; test: 1,000 images of the official test set;
- ``bbc``: BBC News, 8 articles per topic; test: 500 other articles;
- ``elpv``: ELPV solar cells, 60 cells, ``modality="medical"``; test: 800 other cells (scored by AUROC);
- ``digits``: spoken digits (espeak-ng), 5 clips per digit; test: 300 clips by 10 speakers never heard in training.

Every seed draws another labelled subset from the pool; the test set stays the same. For each set and seed:

1. ``transferkit.fit(labelled, strategy="linear")``, then ``model.evaluate(test)``;
2. the same with ``strategy="auto"`` (``--budget`` gives it a time budget);
3. the plain recipe on the same pretrained features and the same labels: the default backbone's features
   (its own eval transform: resize + centre crop for images), then ``StandardScaler`` + ``LogisticRegression``
   with C chosen by stratified 5-fold ``GridSearchCV``, refit on all labels;
4. the classical baseline (:class:`transferkit.strategies.classical.ClassicalBaseline`: pixels/HOG, TF-IDF or
   log-mel statistics + logistic regression), where that module exists.

Scores are the mean over seeds with a 95% t-interval; differences are paired by seed.

    make bench-small                                                      # installs elpv-dataset, then runs this
    .venv/bin/python benchmarks/small_data.py                             # 4 sets x 3 seeds (about an hour on 2 CPU
                                                                          # cores, estimated)
    .venv/bin/python benchmarks/small_data.py --sets bbc --seeds 1 --strategies linear   # a smoke run

``elpv`` needs ``pip install elpv-dataset==1.0.0.post1`` (CC BY-NC-SA 4.0, non-commercial), ``digits`` needs
espeak-ng (``make data``). Prints a Markdown table and saves benchmarks/results/small_data.json.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib.util
import json
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TRANSFERKIT_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

import transferkit

HERE = Path(__file__).parent
TEST_SEED = 0  # the test sets are drawn once, with this seed; the labelled subsets with each run's seed
DIGIT_POOL = 20  # clips per digit synthesised once (20 training voices); each seed draws its 5 from them
C_GRID = np.logspace(-4, 4, 17)


@dataclasses.dataclass(frozen=True)
class Bench:
    title: str
    modality: str  # what transferkit.fit is told ("medical" for ELPV), and what the plain recipe decodes
    metric: str  # the score in the table: "accuracy", or "auroc" for the two-class medical set
    prepare: Callable[[Path, int], tuple[Path, Path]]  # (work, seed) -> (labelled source, test source)
    positive: str | None = None


# --- data: one labelled source per seed (no test split in it), one test source per set --------------------------

def _from_export(work: Path, name: str, seed: int, export: Callable[[Path, int], object]) -> tuple[Path, Path]:
    """An exporter writes ``train/`` and ``test/``: its ``train/`` becomes this seed's labelled folder, and the
    ``test/`` of the export with :data:`TEST_SEED` the set's only test folder."""
    labelled, test = work / f"{name}-seed{seed}" / "labelled", work / name / "test"
    jobs: dict[int, list[tuple[str, Path]]] = {}
    if not labelled.is_dir():
        jobs.setdefault(seed, []).append(("train", labelled))
    if not test.is_dir():
        jobs.setdefault(TEST_SEED, []).append(("test", test))
    for s, moves in jobs.items():
        tmp = work / f".{name}-export-seed{s}"
        shutil.rmtree(tmp, ignore_errors=True)  # left by an interrupted run
        export(tmp, s)
        for part, dest in moves:
            dest.parent.mkdir(parents=True, exist_ok=True)
            (tmp / part).rename(dest)
        shutil.rmtree(tmp)
    return labelled, test


def fmnist(work: Path, seed: int) -> tuple[Path, Path]:
    from transferkit.datasets.fashion_mnist import export_image_folder

    # labelled images come from the official training set and test images from the official test set: disjoint
    return _from_export(work, "fmnist", seed,
                        lambda dest, s: export_image_folder(dest, train_per_class=10, test_size=1000, seed=s))


def bbc(work: Path, seed: int) -> tuple[Path, Path]:
    from transferkit.datasets.bbc_news import load_bbc_news, sample_per_class

    labelled, test = work / f"bbc-seed{seed}" / "labelled", work / "bbc" / "test"
    if labelled.is_dir() and test.is_dir():
        return labelled, test
    # export_text_folder draws its test articles after (and depending on) each seed's labelled ones; here the
    # test articles are drawn first, once, and every seed's labelled articles come from the rest
    ds = load_bbc_news()
    held_out = sample_per_class(ds, 100, seed=TEST_SEED)
    for dest, idx in ((test, held_out), (labelled, sample_per_class(ds, 8, seed=seed, exclude=set(held_out)))):
        if dest.is_dir():
            continue
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for i in idx:
            path = tmp / ds.labels[i] / Path(ds.names[i]).name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(ds.texts[i], encoding="utf-8")
        tmp.rename(dest)
    return labelled, test


def elpv(work: Path, seed: int) -> tuple[Path, Path]:
    from transferkit.datasets.elpv import export_elpv

    folder = work / f"elpv-seed{seed}"
    labelled, test = folder / "labelled.csv", work / "elpv" / "test.csv"
    if labelled.is_file() and test.is_file():
        return labelled, test
    # the exporter's test cells depend only on pool_seed: the same 800 cells for every seed
    manifest = export_elpv(folder, train_size=60, test_size=800, seed=seed, pool_seed=TEST_SEED)
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in rows[0] if c != "split"]  # a user's manifest: no split column, so fit makes no test split

    def write(path: Path, part: list[dict]) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(part)
        tmp.replace(path)

    if not test.is_file():
        test.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(test.parent / "test", ignore_errors=True)
        shutil.copytree(folder / "test", test.parent / "test")  # same relative paths beside test.csv
        write(test, [r for r in rows if r["split"] == "test"])
    write(labelled, [r for r in rows if r["split"] == "train"])
    return labelled, test


def digits(work: Path, seed: int) -> tuple[Path, Path]:
    from transferkit.datasets.spoken_digits import build_spoken_digits

    pool, labelled = work / "digits", work / f"digits-seed{seed}" / "labelled"
    if not (pool / "test").is_dir():
        # build_spoken_digits shuffles its voices by seed: one build keeps training and test speakers apart for
        # every seed, and each seed draws its clips from that build's training pool
        tmp = work / ".digits-build"
        shutil.rmtree(tmp, ignore_errors=True)
        build_spoken_digits(tmp, train_per_class=DIGIT_POOL, test_per_class=30, train_speakers=20, test_speakers=10,
                            seed=TEST_SEED)
        shutil.rmtree(pool, ignore_errors=True)
        tmp.rename(pool)
    if not labelled.is_dir():
        rng = random.Random(seed)
        tmp = labelled.with_name(".labelled.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for d in sorted((pool / "train").iterdir()):
            (tmp / d.name).mkdir(parents=True)
            for f in rng.sample(sorted(d.glob("*.wav")), 5):
                shutil.copy(f, tmp / d.name / f.name)
        tmp.rename(labelled)
    return labelled, pool / "test"


SETS = {
    "fmnist": Bench("Fashion-MNIST, 10/class", "image", "accuracy", fmnist),
    "bbc": Bench("BBC News, 8/topic", "text", "accuracy", bbc),
    "elpv": Bench("ELPV, 60 cells", "medical", "auroc", elpv, positive="defective"),
    "digits": Bench("spoken digits, 5/digit", "audio", "accuracy", digits),
}


# --- the four contenders ----------------------------------------------------------------------------------------

def run_transferkit(bench: Bench, strategy: str, labelled: Path, test: Path, out: Path, seed: int,
                    budget: str | None) -> dict:
    t = time.monotonic()
    model = transferkit.fit(labelled, strategy=strategy, out=out, seed=seed, budget=budget,
                            **({"modality": "medical"} if bench.modality == "medical" else {}))
    wall = time.monotonic() - t
    t = time.monotonic()
    ev = model.evaluate(test)
    m = model.metrics
    clinical = ev.get("clinical") or {}
    # the cross-validated estimate is new in fit; read whatever key it landed under
    estimate_key = next((k for k in ("estimate", "cv", "cross_validation", "cv_estimate") if k in m), None)
    return {
        "accuracy": ev["accuracy"], "balanced_accuracy": clinical.get("balanced_accuracy", ev.get("balanced_accuracy")),
        "auroc": clinical.get("auroc"), "macro_f1": ev.get("macro_f1"), "test_n": ev.get("n"),
        "wall_s": wall, "evaluate_s": time.monotonic() - t, "strategy": m.get("strategy"),
        "backbone": (m.get("backbone") or {}).get("name"), "estimate_key": estimate_key,
        "estimate": m.get(estimate_key) if estimate_key else None,
        "estimate_score": _estimate_score(m.get(estimate_key) if estimate_key else None),
        "sizes": {k: (m.get("data") or {}).get(k) for k in ("train", "val", "test")},
        "own_test": (m.get("test") or {}).get("accuracy"),  # fit's own held-out split, while it still makes one
    }


def _estimate_score(estimate: object) -> float | None:
    """The number in fit's cross-validated estimate (``{"metric": "accuracy", "score": ...}``), if any."""
    if isinstance(estimate, (int, float)):
        return float(estimate)
    score = estimate.get("score") if isinstance(estimate, dict) else None
    return float(score) if isinstance(score, (int, float)) else None


_ACCELERATOR = None


def _accelerator():
    global _ACCELERATOR
    if _ACCELERATOR is None:
        from transferkit.engine.accel import make_accelerator

        _ACCELERATOR = make_accelerator("auto", seed=0)
    return _ACCELERATOR


def _decode(modality: str, bb, sources: list[Path], classes: list[str] | None = None) -> tuple[list, list[str]]:
    """Read each source and bring it to the backbone's input, as transferkit's preparation does: the image
    backbone's default eval transform; audio windows and log-mel statistics from the first source (the labelled
    set). Returns the decoded sets and the classes (the first source's, unless given)."""
    from transferkit.data.sources import load_test_set  # every labelled example of a source, no split made

    if modality == "text":
        from transferkit.data.text import encode_set, load_text_eval_set

        sets = [load_text_eval_set(p) for p in sources]
        classes = classes or sorted(set(sets[0].labels))
        return [encode_set(s, bb, classes) for s in sets], classes
    if modality == "audio":
        from transferkit.backbones.audio import spectrogram_stats
        from transferkit.data.audio import choose_clip_seconds, read_clips, window_clips

        sets = [load_test_set(p, kind="audio") for p in sources]
        classes = classes or sorted(set(sets[0].labels))
        index = {c: i for i, c in enumerate(classes)}
        clips = [read_clips(s.items, bb.preprocess) for s in sets]
        clip = choose_clip_seconds(clips[0].durations(bb.preprocess.sample_rate))
        if bb.preprocess.kind == "speaker":
            clip = max(clip, 1.6)  # as fit: at least one whole 1.6 s partial utterance per window
        bb.preprocess = dataclasses.replace(bb.preprocess, clip_seconds=clip)
        dec = [window_clips(c, [index[s.labels[i]] for i in c.kept], bb.preprocess.clip_samples)
               for c, s in zip(clips, sets, strict=True)]
        if bb.preprocess.kind == "spectrogram":  # standardised with the labelled set's statistics
            mean, std = spectrogram_stats(bb, dec[0].waves)
            bb.preprocess = dataclasses.replace(bb.preprocess, mean=mean, std=std)
        return dec, classes
    from transferkit.data.images import decode

    sets = [load_test_set(p) for p in sources]
    classes = classes or sorted(set(sets[0].labels))
    return [decode(s, bb.preprocess, classes) for s in sets], classes


def _scores(y: np.ndarray, probs: np.ndarray, classes: list[str], positive: str | None) -> dict:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    pred = probs.argmax(1)
    out = {"accuracy": float((pred == y).mean()), "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
           "auroc": None}
    if positive is not None:
        k = classes.index(positive)
        out["auroc"] = float(roc_auc_score(y == k, probs[:, k]))
    return out


def plain_recipe(bench: Bench, labelled: Path, test: Path, seed: int, test_cache: dict) -> tuple[dict, tuple]:
    """Default backbone, its features, scikit-learn's logistic regression with C by cross-validation.

    The wall time counts what training costs (backbone, features of the labelled set, the search and the refit);
    scoring the test set is left out, as it is for ``fit``. Returns the row and the decoded sets (for the
    classical baseline)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from transferkit.backbones import create_backbone
    from transferkit.engine.features import extract_features

    modality = "image" if bench.modality == "medical" else bench.modality
    t = time.monotonic()
    bb = create_backbone(None, modality=modality)
    # audio: windows and spectrogram statistics follow the labelled set, so the test set is read per seed;
    # images and texts: the test set's input does not depend on the seed, so it is decoded once per set
    per_seed = modality == "audio"
    decoded, classes = _decode(modality, bb, [labelled, test] if per_seed else [labelled])
    dec_l, dec_t = decoded[0], decoded[-1]
    x, _ = extract_features(bb, dec_l, _accelerator(), cache=False)
    y = dec_l.targets.numpy()
    folds = min(5, min(Counter(y.tolist()).values()))
    search = GridSearchCV(make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
                          {"logisticregression__C": C_GRID}, cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    search.fit(x.numpy(), y)
    wall = time.monotonic() - t
    t = time.monotonic()
    if per_seed:
        x_test = extract_features(bb, dec_t, _accelerator(), cache=False)[0].numpy()
    else:
        if "test" not in test_cache:
            (dec_t,), _ = _decode(modality, bb, [test], classes)
            test_cache["test"] = dec_t, extract_features(bb, dec_t, _accelerator(), cache=False)[0].numpy()
        dec_t, x_test = test_cache["test"]
    row = _scores(dec_t.targets.numpy(), search.predict_proba(x_test), classes, bench.positive)
    row |= {"wall_s": wall, "test_features_s": time.monotonic() - t, "C": float(search.best_params_[
        "logisticregression__C"]), "cv_accuracy": float(search.best_score_), "folds": folds,
        "backbone": bb.spec.name, "features": int(x.shape[1])}
    return row, (dec_l, dec_t, classes, getattr(bb.preprocess, "sample_rate", None))


def classical(bench: Bench, seed: int, decoded: tuple) -> dict | None:
    """The classical baseline on the same decoded examples; None where the module is not there yet."""
    try:
        from transferkit.strategies.classical import ClassicalBaseline
    except ImportError:
        return None
    dec_l, dec_t, classes, rate = decoded
    modality = "image" if bench.modality == "medical" else bench.modality
    t = time.monotonic()
    try:
        # audio: the decoded windows are at the backbone's sample rate
        probs = ClassicalBaseline(modality, seed=seed, **({"sample_rate": rate} if modality == "audio" else {})
                                  ).fit(dec_l).predict_proba(dec_t)
    except Exception as err:  # noqa: BLE001 (a module in progress must not cost the rest of the run)
        print(f"  classical baseline failed: {type(err).__name__}: {err}", flush=True)
        return {"error": f"{type(err).__name__}: {err}"}
    return _scores(dec_t.targets.numpy(), np.asarray(probs), classes, bench.positive) | {"wall_s": time.monotonic() - t}


# --- summary ----------------------------------------------------------------------------------------------------

def mean_ci(values: list[float]) -> tuple[float, float | None] | None:
    """Mean and the half-width of its 95% t-interval (None for one value)."""
    from scipy.stats import t

    v = np.asarray([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return None
    if len(v) == 1:
        return float(v[0]), None
    return float(v.mean()), float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def _score(result: dict | None, metric: str) -> float | None:
    return None if not result or "error" in result else result.get(metric)


def paired(runs: list[dict], a: str, b: str, metric: str) -> tuple[float, float | None] | None:
    """``a`` minus ``b``, seed by seed: mean and 95% half-interval of the differences."""
    pairs = [(_score(r.get(a), metric), _score(r.get(b), metric)) for r in runs]
    return mean_ci([x - y for x, y in pairs if x is not None and y is not None])


def summarise(rows: list[dict], strategies: list[str]) -> dict:
    methods = [*strategies, "plain", "classical"]
    out: dict = {"sets": {}}
    for name in dict.fromkeys(r["set"] for r in rows):
        runs = [r for r in rows if r["set"] == name]
        metric = runs[0]["metric"]
        s: dict = {"metric": metric, "seeds": len(runs)}
        for m in methods:
            s[m] = mean_ci([_score(r.get(m), metric) for r in runs])
            walls = [r[m]["wall_s"] for r in runs if r.get(m) and "wall_s" in r[m]]
            s[f"{m}_wall_s"] = float(np.mean(walls)) if walls else None

        for st in strategies:
            s[f"{st}-plain"] = paired(runs, st, "plain", metric)
        if "auto" in strategies and "linear" in strategies:
            s["auto-linear"] = paired(runs, "auto", "linear", metric)
            s["auto_chose"] = dict(Counter(r["auto"]["strategy"] for r in runs))
        out["sets"][name] = s
    sets = out["sets"]
    gaps = {(n, st): s[f"{st}-plain"][0] for n, s in sets.items() for st in strategies if s.get(f"{st}-plain")}
    out["never_below_plain"] = all(g >= 0 for g in gaps.values()) if gaps else None
    out["gaps_vs_plain_points"] = {f"{n}/{st}": round(100 * g, 2) for (n, st), g in gaps.items()}
    out["mean_gap_vs_plain_points"] = {
        st: round(100 * float(np.mean([g for (_, s2), g in gaps.items() if s2 == st])), 2)
        for st in strategies if any(s2 == st for _, s2 in gaps)}
    al = {n: s["auto-linear"][0] for n, s in sets.items() if s.get("auto-linear")}
    out["auto_ge_linear_every_set"] = all(g >= 0 for g in al.values()) if al else None
    out["auto_minus_linear_points"] = {n: round(100 * g, 2) for n, g in al.items()}
    return out


def _fmt(mc: tuple[float, float | None] | None, signed: bool = False) -> str:
    if mc is None:
        return "-"
    mean, half = mc
    text = f"{100 * mean:+.1f}" if signed else f"{100 * mean:.1f}"
    return text + (f" ± {100 * half:.1f}" if half is not None else "")


def table(summary: dict) -> str:
    def wall(s: dict, m: str) -> str:
        return f"{s[m + '_wall_s']:.0f}" if s.get(m + "_wall_s") is not None else "-"

    lines = [("| set (metric, %) | linear | auto | plain recipe | classical | linear - plain (points) | auto - linear "
              "| auto chose | wall s: linear / auto / plain / classical |"), "|---|---|---|---|---|---|---|---|---|"]
    for name, s in summary["sets"].items():
        chose = ", ".join(f"{k} x{v}" for k, v in s.get("auto_chose", {}).items()) or "-"
        lines.append(f"| {SETS[name].title} ({s['metric']}) | {_fmt(s.get('linear'))} | {_fmt(s.get('auto'))} | "
                     f"{_fmt(s['plain'])} | {_fmt(s['classical'])} | {_fmt(s.get('linear-plain'), True)} | "
                     f"{_fmt(s.get('auto-linear'), True)} | {chose} | "
                     f"{' / '.join(wall(s, m) for m in ('linear', 'auto', 'plain', 'classical'))} |")
    gaps = summary["gaps_vs_plain_points"]
    below = {k: v for k, v in gaps.items() if v < 0}
    lines.append("")
    if summary["never_below_plain"] is None:
        lines.append("transferkit never below the plain recipe: n/a")
    else:
        shown = below or gaps
        lines.append(f"transferkit never below the plain recipe: {'yes' if not below else 'no'} ("
                     + ", ".join(f"{k}: {v:+.1f}" for k, v in shown.items()) + ")")
    lines.append("above it on average: " + (", ".join(f"{st} {v:+.1f} points" for st, v in
                                                       summary["mean_gap_vs_plain_points"].items()) or "n/a"))
    al = summary["auto_ge_linear_every_set"]
    lines.append("auto >= linear on every set: " + ("n/a (run both strategies)" if al is None else
                 f"{'yes' if al else 'no'} (" + ", ".join(f"{k}: {v:+.1f}" for k, v in
                                                          summary["auto_minus_linear_points"].items()) + ")"))
    return "\n".join(lines)


def _json_default(x: object) -> object:
    return x.item() if isinstance(x, np.generic) else str(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    ap.add_argument("--seeds", type=int, default=3, help="runs per set, seeds 0..N-1 (each draws other labels)")
    ap.add_argument("--strategies", default="linear,auto", help="comma-separated, of linear, auto")
    ap.add_argument("--budget", default=None, help="time budget of the auto strategy, e.g. 5m (default: none)")
    ap.add_argument("--work", type=Path, default=Path("runs/small-data"), help="data and run folders")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "small_data.json", help="where the JSON goes")
    args = ap.parse_args(argv)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if unknown := [s for s in sets if s not in SETS]:
        ap.error(f"unknown set(s) {', '.join(unknown)}: choose from {', '.join(SETS)}")
    if unknown := [s for s in strategies if s not in ("linear", "auto")]:
        ap.error(f"unknown strateg(ies) {', '.join(unknown)}: choose linear, auto or both")
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, transferkit "
          f"{transferkit.__version__}", flush=True)
    if importlib.util.find_spec("transferkit.strategies.classical") is None:
        print("classical baseline: not available", flush=True)

    rows = []
    for name in sets:
        bench, test_cache = SETS[name], {}
        print(f"{bench.title}:", flush=True)
        for seed in range(args.seeds):
            labelled, test = bench.prepare(args.work, seed)
            row: dict = {"set": name, "seed": seed, "metric": bench.metric, "labelled": str(labelled),
                         "test": str(test)}
            for st in strategies:
                r = run_transferkit(bench, st, labelled, test, args.work / f"{name}-seed{seed}" / f"run-{st}", seed,
                                    args.budget if st == "auto" else None)
                row[st] = r
                est = "-" if r["estimate_score"] is None else f"{r['estimate_score']:.3f}"
                print(f"  seed {seed} {r['strategy']!s:<18} {bench.metric} {r[bench.metric]:.3f}  acc "
                      f"{r['accuracy']:.3f}  {r['wall_s']:6.1f}s  split {r['sizes']}  estimate {est}", flush=True)
            r, decoded = plain_recipe(bench, labelled, test, seed, test_cache)
            row["plain"] = r
            print(f"  seed {seed} plain recipe       {bench.metric} {r[bench.metric]:.3f}  acc {r['accuracy']:.3f}  "
                  f"{r['wall_s']:6.1f}s  C {r['C']:.3g} ({r['folds']}-fold CV acc {r['cv_accuracy']:.3f})", flush=True)
            row["classical"] = classical(bench, seed, decoded)
            c = row["classical"]
            if c and "error" not in c:
                print(f"  seed {seed} classical          {bench.metric} {c[bench.metric]:.3f}  "
                      f"acc {c['accuracy']:.3f}  {c['wall_s']:6.1f}s", flush=True)
            del decoded
            rows.append(row)
    summary = summarise(rows, strategies)
    print()
    print(table(summary))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    payload = {"argv": sys.argv[1:] if argv is None else argv,
               "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": sys.version.split()[0]},
               "config": {"sets": sets, "seeds": args.seeds, "strategies": strategies, "budget": args.budget,
                          "test_seed": TEST_SEED, "C_grid": C_GRID.tolist()},
               "rows": rows, "summary": summary}
    args.results.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    print(f"\nsaved {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
