"""The runs of a comparison: the data read through its task, label budgets and their nested draws, each run's
options and record (a transfer run's or the classical baseline's), saved runs and resume, and the time left."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TransferkitError

ALL = "all"
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "micro_f1", "map")
# what multi-label runs may be scored by ("accuracy": exact match); mAP needs no threshold, so it is the default: the
# transfer runs tune each label's cut on their validation split, the classical baseline has none to tune it on
MULTI_LABEL_METRICS = ("map", "macro_f1", "micro_f1", "accuracy")
TRANSFER_FIRST = ("linear", "finetune", "gradual", "auto", "lora", "contrastive")
# not a strategy of transferkit.strategies (no backbone, no training loop): compare runs it itself
CLASSICAL = "classical"


def parse_budgets(budgets: str | list | tuple) -> list[int | str]:
    """``"5,10,25,all"`` or ``[5, 10, "all"]`` -> sorted budgets, ``"all"`` last. Each number is labelled
    examples per class (at least 2: one to train on, one to validate with)."""
    items = budgets.split(",") if isinstance(budgets, str) else list(budgets)
    out: list[int | str] = []
    for b in items:
        text = str(b).strip().lower()
        if text == ALL:
            out.append(ALL)
        elif text.isdigit() and int(text) >= 2:
            out.append(int(text))
        else:
            raise TransferkitError(f"Label budget {b!r} is not a count of labelled examples per class (2 or more) or "
                                   "'all': write e.g. --budgets 5,10,25,all.")
    if not out or len(set(out)) < len(out):
        raise TransferkitError(f"Give each label budget once, e.g. 5,10,25,all (got {budgets!r}).")
    return sorted((b for b in out if b != ALL), key=int) + ([ALL] if ALL in out else [])


def load_splits(data, modality, skip_bad, val_fraction, test_fraction, seed, fit_options, labels=None):
    """The task for ``data`` and its splits, read as :func:`transferkit.fit` reads them."""
    from ..api import resolve
    from ..tasks import ClassificationTask, RunSettings, option_names

    given = {k: v for k, v in fit_options.items() if k in option_names()} | {"labels": labels}
    task, options = resolve(data, "auto", modality, given)
    if not isinstance(task, ClassificationTask):
        raise TransferkitError(f"{data} holds {task.plural}: compare draws labels per class for classification; for "
                               "a detector, train it with --strategy scratch as well and compare the two mAP figures.")
    settings = RunSettings(seed=seed, skip_bad=skip_bad, val_fraction=val_fraction, test_fraction=test_fraction)
    splits = task.load_splits(data, settings, options)
    return splits, task


def options_not_for(name: str, names: list[str], options: dict) -> set[str]:
    """The strategy options that ``name``'s config does not take but another compared strategy's does (``epochs``
    is scratch's; linear fits a probe and has none): left out of its runs. An option that no compared strategy
    takes is kept, so that it fails with the strategy's own error."""
    from dataclasses import fields

    from ..strategies import STRATEGIES

    def known(n: str) -> set[str]:
        mapped = {"epochs"} if n == "auto" else set()  # see run_options
        return {f.name for f in fields(STRATEGIES[n][1])} | mapped if n in STRATEGIES else set()

    others = set().union(*(known(n) for n in names if n != name))
    return {k for k in options if k not in known(name) and k in others}


def run_options(strategy: str, options: dict, kind: str, drop: set[str] = frozenset()) -> dict:
    """Options for one run's fit: text columns are already applied by the loader; the linear probe extracts its
    features afresh (a cache warmed by an earlier budget would make it look faster than it is); ``epochs`` caps
    auto through its ``max_epochs``."""
    # the loader applied these already (text columns; patient ids are in the splits' groups)
    loader = ("text_column", "label_column", "encoding", "label_sep", "patient_column")
    out = {k: v for k, v in options.items() if k not in drop and k not in loader}
    if strategy == "linear":
        out.setdefault("cache", False)
    if strategy == "auto" and "epochs" in out:
        out["max_epochs"] = out.pop("epochs")
    return out


def concat(a, b):
    """Two example sets of one type as one (every list field joined; ``None`` groups stay ``None``)."""
    joined = {}
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, list) and isinstance(y, list):
            joined[f.name] = x + y
    return dataclasses.replace(a, **joined)


def _strata(ds) -> list[str]:
    return ds.strata() if hasattr(ds, "strata") else list(ds.labels)


def resolve_budgets(budgets: list, pool, classes: list[str]) -> tuple[list, dict[str, float]]:
    """Drop numeric budgets that every class's pool already meets with ``all`` (they would repeat it); the mean
    labels per class each budget really gives."""
    from ..console import warn

    counts = defaultdict(int)
    for y in _strata(pool):
        counts[y] += 1
    largest, smallest = max(counts.values()), min(counts.values())
    kept, sizes = [], {}
    for b in budgets:
        if b != ALL and b >= largest:
            warn(f"budget {b} labels per class is at least the whole pool (largest class {largest}): "
                 "it is run as 'all'")
            b = ALL
        if b in kept:
            continue
        kept.append(b)
        sizes[str(b)] = float(np.mean([counts[c] if b == ALL else min(b, counts[c]) for c in classes]))
    if any(b != ALL and b > smallest for b in kept):
        warn(f"the smallest class has {smallest} labelled examples: budgets above it take all of that class")
    return kept, sizes


def budget_splits(pool, test, classes: list[str], budget, seed: int, val_fraction: float):
    """``budget`` labelled examples per class (whole patients for grouped data, and then at least two patients a
    class so that validation gets one), nested across budgets for one seed, then a stratified validation split of
    them; the fixed test set as given."""
    from ..data.sources import carve_splits

    strata = _strata(pool)
    groups = getattr(pool, "groups", None)
    rng = random.Random(seed)
    units: dict[str, list[list[int]]] = defaultdict(list)  # per class: shuffled units (one example, or a patient)
    if groups is None:
        for i, y in enumerate(strata):
            units[y].append([i])
    else:
        members: dict[str, list[int]] = defaultdict(list)
        for i, g in enumerate(groups):
            members[g].append(i)
        for g in sorted(members):
            ys = [strata[i] for i in members[g]]
            units[max(set(ys), key=lambda y: (ys.count(y), y))].append(members[g])
    idx: list[int] = []
    for c in sorted(units):
        order = units[c][:]
        rng.shuffle(order)
        taken = units_taken = 0
        for unit in order:
            # grouped data: at least 2 patients per class, one for training and one for validation
            if budget != ALL and taken >= budget and (groups is None or units_taken >= 2):
                break
            idx += unit
            taken += len(unit)
            units_taken += 1
    subset = pool.subset(sorted(idx))
    part = carve_splits(subset, {"test": test}, classes, _strata(subset), val_fraction, 0.0, seed)
    part.how = f"{budget} per class, seed={seed}; " + part.how
    return part


def choose_metric(metric: str, task: Any, classes: list[str], multi_label: bool = False) -> str:
    """The metric every run is scored by: ``auto`` asks the task (multi-label: mAP); a named one is checked against
    the data."""
    if multi_label:
        if metric == "auto":
            return "map"
        if metric not in MULTI_LABEL_METRICS:
            raise TransferkitError(f"Metric {metric!r} does not score multi-label data: choose auto (mAP), "
                                   f"{', '.join(MULTI_LABEL_METRICS[1:])}.")
        return metric
    if metric == "auto":
        return task.default_metric(classes)
    if metric not in METRICS[:4]:
        raise TransferkitError(f"Metric {metric!r} is unknown: choose auto, accuracy, balanced_accuracy, macro_f1 or "
                               "auroc.")
    if metric == "auroc" and (not task.clinical_scores or len(classes) != 2):
        raise TransferkitError("metric auroc needs two-class medical data (--modality medical); choose accuracy, "
                               "balanced_accuracy or macro_f1.")
    return metric


def record_run(model, budget, seed: int, name: str, metric: str, part, wall_s: float) -> dict[str, Any]:
    """What the comparison keeps of one run: scores, the overfitting gap, and the validation curve over time.

    The gap is the kept model's accuracy on its own training examples, read like the test set (no augmentation,
    dropout or label smoothing, after training), minus its validation accuracy: the training accuracy a training
    loop records is taken on augmented batches while the weights move, which differs between strategies. Multi-label
    runs measure the gap in macro-F1 (``gap_metric``; ``val_accuracy`` then holds validation macro-F1): exact match
    is too coarse."""
    metrics = model.metrics
    test = metrics["test"]
    own = "macro_f1" if model.multi_label else "accuracy"  # the gap's metric (exact match is too coarse)
    clean_train = model.evaluate(part.train)[own]
    score = test["clinical"]["auroc"] if metric == "auroc" else test[metric]
    hist = metrics["history"]
    best = hist["epochs"][hist["best_epoch"]]
    curve = [[e["elapsed_s"], e["val_acc"]] for e in hist["epochs"] if e.get("elapsed_s") is not None]
    return {
        "budget": str(budget), "seed": seed, "strategy": name, "kept": metrics["strategy"],
        "train_n": len(part.train), "val_n": len(part.val), "labels": len(part.train) + len(part.val),
        "labels_per_class": (len(part.train) + len(part.val)) / len(part.classes),
        "score": score, "test_accuracy": test["accuracy"], "test_accuracy_ci": test.get("accuracy_ci"),
        "test_macro_f1": test["macro_f1"], "test_balanced_accuracy": test.get("balanced_accuracy"),
        "val_score": best["val_acc"], "train_score": clean_train, "val_accuracy": metrics["val"][own],
        "gap": clean_train - metrics["val"][own], "test_auroc_ci": test.get("clinical", {}).get("auroc_ci"),
        "gap_metric": own,
        "epochs": len(hist["epochs"]), "stopped": hist["stopped"],
        "wall_s": round(wall_s, 1), "train_s": round(metrics["timings"].get("total_s", wall_s), 1), "curve": curve,
    }


def classical_run(part, task: Any, budget, seed: int, metric: str, image_pre: Any, skip_bad: bool) -> dict[str, Any]:
    """One run of the classical baseline, recorded like :func:`record_run` records a transfer run.

    It trains on the validation examples too: it chooses its C by cross-validation on whatever it is given, so a
    held-out split would only be labels it paid for and did not use (a budget counts both, for every strategy).
    Hence no validation score, no validation curve over time and no overfitting gap (None); ``train_score`` is
    its accuracy on the examples it was fitted on."""
    from ..evaluation.metrics import classification_metrics, multilabel_metrics
    from ..strategies.classical import ClassicalBaseline

    labelled = concat(part.train, part.val) if part.val is not None else part.train
    data = task.classical_data({"train": labelled, "test": part.test}, part.classes, image_pre, skip_bad)
    (x, y), (x_test, y_test) = data["train"], data["test"]
    base = ClassicalBaseline(task.baseline_kind(), seed=seed).fit(x, y, num_classes=len(part.classes))
    probs = base.predict_proba(x_test)
    multi = np.asarray(y).ndim == 2  # multi-label: every label at 0.5 (no validation split to tune a cut on)
    test = multilabel_metrics(y_test, probs, part.classes) if multi else classification_metrics(y_test, probs,
                                                                                                  part.classes)
    auroc_ci = None
    if metric == "auroc":
        from ..evaluation.clinical import choose_positive, clinical_metrics

        positive = choose_positive(part.classes, labelled.counts())
        clinical = clinical_metrics(y_test, probs, part.classes, positive, seed=seed)
        score, auroc_ci = clinical["auroc"], clinical["auroc_ci"]
    else:
        score = test[metric]
    return {
        "budget": str(budget), "seed": seed, "strategy": CLASSICAL, "kept": base.name_,
        "train_n": len(labelled), "val_n": 0, "labels": len(labelled),
        "labels_per_class": len(labelled) / len(part.classes),
        "score": score, "test_accuracy": test["accuracy"], "test_accuracy_ci": test.get("accuracy_ci"),
        "test_macro_f1": test["macro_f1"], "test_balanced_accuracy": test.get("balanced_accuracy"),
        "val_score": None, "train_score": float((base.predict(x) == y).all(1).mean() if multi else
                                                (base.predict(x) == y).mean()), "val_accuracy": None,
        "gap": None, "test_auroc_ci": auroc_ci, "epochs": None, "stopped": None, "curve": [],
        "C": base.probe_.C_,
    }


def run_key(budget, seed: int, name: str) -> str:
    """The name one run is saved and found under on resume, e.g. ``linear-b10-s2``."""
    return f"{name}-b{budget}-s{seed}"


def save_run(out: Path, key: str, run: dict, config: dict) -> None:
    """Save one finished run under ``out/runs`` with the settings that must match for resume to reuse it."""
    from ..io import write_json

    write_json(out / "runs" / f"{key}.json", {"config": comparison_identity(config), "run": run})


def comparison_identity(config: dict) -> dict:
    """What must match for a saved run to be reused on resume."""
    from ..io import jsonable

    keep = ("data", "kind", "backbone", "metric", "time_per_run_s", "test_n", "pool_n", "classes", "val_fraction",
            "split_seed", "fit_options", "image_size", "precision", "skip_bad", "test_fraction")
    return json.loads(json.dumps({k: config[k] for k in keep}, default=jsonable))  # as a saved run holds it


def previous_runs(out: Path, config: dict) -> dict[str, dict]:
    """The saved runs in ``out/runs`` made with the same settings, by run key; the others are run again."""
    from ..console import info, warn

    found, changed, other = {}, set(), 0
    identity = comparison_identity(config)
    for f in sorted((out / "runs").glob("*.json")):
        try:
            saved = json.loads(f.read_text())
        except (OSError, ValueError):
            continue  # a damaged file is simply run again
        if saved.get("config") == identity:
            found[f.stem] = saved["run"]
        else:
            other += 1
            changed |= {k for k, v in (saved.get("config") or {}).items() if identity.get(k) != v}
    if found:
        info(f"compare: resuming: {len(found)} finished run(s) in {out / 'runs'} are reused")
    if other:
        warn(f"compare: {other} saved run(s) in {out / 'runs'} had other settings "
             f"({', '.join(sorted(changed)) or 'unknown'}) and are run again")
    return found


def eta_seconds(left: list[tuple], spent: list[tuple[str, float, float]], sizes: dict[str, float],
                cap: float | None) -> float | None:
    """Seconds the ``left`` runs may take: each strategy's seconds per labelled example so far, times the run's
    labels per class, at most the run's time budget (plus scoring); None before any run of a strategy ended."""
    total = 0.0
    for b, _, name in left:
        mine = [(n, sec) for s, n, sec in spent if s == name]
        if not mine:
            return None
        est = sum(sec for _, sec in mine) / sum(n for n, _ in mine) * sizes[str(b)]
        total += min(est, 1.2 * cap + 15) if cap else est
    return total


def duration(s: float) -> str:
    """Seconds as people read them: ``4.2 s``, ``42 s``, ``4.2 min``."""
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
