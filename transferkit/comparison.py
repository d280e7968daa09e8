"""``transferkit.compare``: did transfer pay off on *your* data? Measured, with intervals.

For each label budget (labelled examples per class) x seed x strategy, one run of :func:`transferkit.fit` is
trained and scored on the same fixed test set. Budgets are nested per seed (the 10 examples of a class include
that seed's 5), and a budget counts every labelled example the run uses, validation included: labelling them
is the user's cost. Runs of one seed and budget share their validation split, so their validation curves are
comparable.

What comes out (in ``out``): ``results.csv`` (one row per run), ``summary.csv`` (mean and 95% interval over seeds
per budget and strategy), ``compare.json``, three plots, ``report.md`` and ``report.html`` (self-contained: the
plots are embedded, so it opens from disk anywhere), and the three headline sentences:

- time: how much sooner transfer reached scratch's best validation score (same runs' clocks);
- labels: how few labels per class transfer needed to match scratch with the most labels;
- overfitting: how much smaller the train-minus-validation accuracy gap was;
- and, with ``classical`` among the strategies, whether transfer beat the non-deep baseline a practitioner would
  try first (:class:`~transferkit.strategies.classical.ClassicalBaseline`: HOG, TF-IDF or log-mel statistics +
  cross-validated logistic regression), and at which budgets it did not.

The interval over seeds is Student's t on the seeds' means (with 3 seeds, mean +- 4.3 standard errors): it
covers the variation from which examples were labelled and from training, but not the test set's own sampling
error, which the report states separately (Wilson at the best score; for AUROC its bootstrap interval).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .errors import TransferkitError

ALL = "all"
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "micro_f1")
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


def seed_interval(values: list[float], bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float | None, float | None]:
    """Mean and 95% Student-t interval of per-seed values, clipped to the metric's ``bounds``; no interval from a
    single seed.

    >>> m, lo, hi = seed_interval([0.70, 0.74, 0.72])
    >>> round(m, 3), round(lo, 3), round(hi, 3)
    (0.72, 0.67, 0.77)
    """
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if len(x) == 0:
        return float("nan"), None, None
    mean = float(x.mean())
    if len(x) < 2:
        return mean, None, None
    from scipy.stats import t

    half = float(t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, max(bounds[0], mean - half), min(bounds[1], mean + half)


def compare(data: Any, *, budgets: str | list = (5, 10, 25, 50, ALL), seeds: int = 3,
            strategies: str | list = ("linear", "finetune", "scratch"), backbone: str | None = None,
            metric: str = "auto", time_per_run: str | float | None = None, out: str | Path | None = None,
            resume: bool = False, seed: int = 0, skip_bad: bool = False, val_fraction: float = 0.15,
            test_fraction: float = 0.2, precision: str = "auto", image_size: int | None = None,
            modality: str = "auto", labels: list[Any] | None = None, **fit_options: Any) -> dict[str, Any]:
    """Train every ``strategies`` x ``budgets`` x ``seeds`` combination on ``data`` (anything single-label that
    :func:`transferkit.fit` takes: images, DICOM/NIfTI, texts (a list of them with ``labels=[...]``), audio) and
    score each on one fixed test set.

    The test set is the data's own (a ``test/`` folder or ``split`` column), else ``test_fraction`` carved once
    with ``seed``; everything else is the pool the budgets draw from. ``metric`` is ``accuracy``,
    ``balanced_accuracy``, ``macro_f1`` or (two-class medical data) ``auroc``; ``auto`` picks accuracy, or AUROC
    for two-class medical data and balanced accuracy for other medical data. ``time_per_run`` is each run's
    wall-time budget (e.g. ``"2m"``); ``fit_options`` go to every run whose strategy takes them (``epochs=10``
    to finetune and scratch, not to linear's probe; an option that no compared strategy takes fails). With ``out`` every
    finished run is saved at once, and ``resume=True`` reuses the runs an interrupted comparison finished.

    ``classical`` among ``strategies`` adds the non-deep baseline
    (:class:`~transferkit.strategies.classical.ClassicalBaseline`: HOG, TF-IDF or log-mel statistics + logistic
    regression) on the same labels and test set; the report then says at which budgets it beats every transfer
    strategy.

    Returns ``{"config", "runs", "summary", "headlines", "warnings", "files"}``.
    """
    from .api import fit, parse_budget
    from .console import info, warn

    budget_list = parse_budgets(budgets)
    names = [s.strip() for s in (strategies.split(",") if isinstance(strategies, str) else strategies) if s.strip()]
    if len(names) < 2 or len(set(names)) < len(names):
        raise TransferkitError(f"Give at least two different strategies to compare, e.g. linear,finetune,scratch "
                               f"(got {', '.join(names) or 'none'}).")
    if not isinstance(seeds, int) or seeds < 1:
        raise TransferkitError(f"seeds must be 1 or more (got {seeds!r}); 3 gives an interval.")
    run_seconds = parse_budget(time_per_run)
    splits, task = _load(data, modality, skip_bad, val_fraction, test_fraction, seed, fit_options, labels)
    kind = task.name
    import inspect

    fit_params = set(inspect.signature(fit).parameters)
    strategy_options = {k: v for k, v in fit_options.items() if k not in fit_params}
    for name in names:  # unknown strategies and options fail now, not after hours of the other runs
        if name != CLASSICAL:
            task.create_strategy(name, None,
                                 _run_options(name, strategy_options, kind, _not_for(name, names, strategy_options)))
    metric = _choose_metric(metric, task, splits.classes)
    pool = _concat(splits.train, splits.val)
    test = splits.test
    if test is None or len(test) == 0:
        raise TransferkitError("compare needs a test set: give a test/ folder or split column, or a test_fraction > 0.")
    budget_list, sizes = _resolve_budgets(budget_list, pool, splits.classes)
    from .api import backbone_names

    ranking = None
    if len(set(several := backbone_names(backbone))) > 1:  # rank once, on the pool: every run uses one backbone
        from .api import rank

        ranking = rank(data, several, seed=seed, skip_bad=skip_bad, image_size=image_size, precision=precision,
                       val_fraction=val_fraction, test_fraction=test_fraction, modality=kind)
        backbone = ranking["ranking"][0]
        info(f"compare: {backbone} ranks first of {len(several)} by LogME; every run uses it")
    image_pre = None
    if CLASSICAL in names:  # the classical baseline sees images as the runs' backbone crops them
        from .tasks import task_options

        image_pre = task.baseline_preprocess(backbone, task_options(task, {k: v for k, v in fit_options.items()
                                                                          if k in ("window", "slices")}))
    config = {"data": str(Path(data).resolve()) if isinstance(data, (str, Path)) else type(data).__name__, "kind": kind,
              "backbone": backbone, "strategies": names, "budgets": budget_list, "labels_per_class": sizes,
              "seeds": seeds, "metric": metric, "time_per_run_s": run_seconds, "test_n": len(test),
              "pool_n": len(pool), "classes": splits.classes, "val_fraction": val_fraction, "split_seed": seed,
              "fit_options": {k: v for k, v in fit_options.items()}, "image_size": image_size,
              "precision": precision, "skip_bad": skip_bad, "test_fraction": test_fraction,
              "ranking": ranking["ranking"] if ranking else None}
    out_dir = Path(out) if out is not None else None
    done = _previous_runs(out_dir, config) if resume and out_dir is not None else {}
    plan = [(b, s, name) for b in budget_list for s in range(seeds) for name in names]
    runs, failed, t0, spent = [], [], time.monotonic(), []
    for i, (b, s, name) in enumerate(plan, 1):
        key = _run_key(b, s, name)
        if key in done:
            runs.append(done[key])
            continue
        eta = _eta(plan[i - 1:], spent, sizes, run_seconds)
        info(f"compare: run {i}/{len(plan)}: {name}, {b} labels per class, seed {s}"
             + (f", about {_duration(eta)} left" if eta else ""))
        part = _budget_splits(pool, test, splits.classes, b, s, val_fraction)
        started = time.monotonic()
        try:
            if name == CLASSICAL:
                run = _classical_run(part, task, b, s, metric, image_pre, skip_bad)
            else:
                model = fit(part, backbone=backbone, strategy=name, budget=run_seconds, seed=s, precision=precision,
                            image_size=image_size, modality=kind, skip_bad=skip_bad,
                            **_run_options(name, fit_options, kind, _not_for(name, names, strategy_options)))
        except TransferkitError as err:  # one run's failure is recorded; the comparison goes on
            warn(f"compare: {name}, {b} labels per class, seed {s} failed: {err}")
            run = {"budget": str(b), "seed": s, "strategy": name, "failed": str(err)}
        else:
            spent.append((name, sizes[str(b)], time.monotonic() - started))
            if name == CLASSICAL:
                run["wall_s"] = run["train_s"] = round(spent[-1][2], 1)
            else:
                run = _record(model, b, s, name, metric, part, spent[-1][2])
        if "failed" in run:
            failed.append(run)
            continue
        runs.append(run)
        if out_dir is not None and _is_main():  # a failed run is not saved: --resume tries it again
            _save_run(out_dir, key, run, config)
            _write_results(out_dir, runs)
    if not runs:
        raise TransferkitError(f"Every run failed; the first: {failed[0]['failed']}")
    summary = summarise(runs, names, budget_list)
    result: dict[str, Any] = {"config": config, "runs": runs, "summary": summary, "failed": failed,
                              "headlines": headlines(runs, summary, names, budget_list, metric),
                              "warnings": resolution_warnings(summary, names, budget_list, metric, len(test), runs),
                              "seconds": round(time.monotonic() - t0, 1)}
    for w in result["warnings"]:
        warn(w)
    if out_dir is not None and _is_main():
        result["files"] = write_comparison(out_dir, result)
        info(f"compare: report {result['files']['html']}")
    return result


# ---------------------------------------------------------------------------------------------------- data


def _load(data, modality, skip_bad, val_fraction, test_fraction, seed, fit_options, labels=None):
    """The task for ``data`` and its splits, read as :func:`transferkit.fit` reads them."""
    from .api import resolve
    from .tasks import ClassificationTask, RunSettings, option_names

    given = {k: v for k, v in fit_options.items() if k in option_names()} | {"labels": labels}
    task, options = resolve(data, "auto", modality, given)
    if not isinstance(task, ClassificationTask):
        raise TransferkitError(f"{data} holds {task.plural}: compare draws labels per class for classification; for "
                               "a detector, train it with --strategy scratch as well and compare the two mAP figures.")
    settings = RunSettings(seed=seed, skip_bad=skip_bad, val_fraction=val_fraction, test_fraction=test_fraction)
    splits = task.load_splits(data, settings, options)
    if getattr(splits.train, "multi_label", False):
        raise TransferkitError("compare draws labels per class from single-label data; these texts are multi-label.")
    return splits, task


def _not_for(name: str, names: list[str], options: dict) -> set[str]:
    """The strategy options that ``name``'s config does not take but another compared strategy's does (``epochs``
    is scratch's; linear fits a probe and has none): left out of its runs. An option that no compared strategy
    takes is kept, so that it fails with the strategy's own error."""
    from dataclasses import fields

    from .strategies import STRATEGIES

    def known(n: str) -> set[str]:
        mapped = {"epochs"} if n == "auto" else set()  # see _run_options
        return {f.name for f in fields(STRATEGIES[n][1])} | mapped if n in STRATEGIES else set()

    others = set().union(*(known(n) for n in names if n != name))
    return {k for k in options if k not in known(name) and k in others}


def _run_options(strategy: str, options: dict, kind: str, drop: set[str] = frozenset()) -> dict:
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


def _concat(a, b):
    """Two example sets of one type as one (every list field joined; ``None`` groups stay ``None``)."""
    joined = {}
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, list) and isinstance(y, list):
            joined[f.name] = x + y
    return dataclasses.replace(a, **joined)


def _strata(ds) -> list[str]:
    return ds.strata() if hasattr(ds, "strata") else list(ds.labels)


def _resolve_budgets(budgets: list, pool, classes: list[str]) -> tuple[list, dict[str, float]]:
    """Drop numeric budgets that every class's pool already meets with ``all`` (they would repeat it); the mean
    labels per class each budget really gives."""
    from .console import warn

    counts = defaultdict(int)
    for y in _strata(pool):
        counts[y] += 1
    largest, smallest = max(counts.values()), min(counts.values())
    kept, sizes = [], {}
    for b in budgets:
        if b != ALL and b >= largest:
            warn(f"budget {b} labels per class is at least the whole pool (largest class {largest}): it is run as 'all'")
            b = ALL
        if b in kept:
            continue
        kept.append(b)
        sizes[str(b)] = float(np.mean([counts[c] if b == ALL else min(b, counts[c]) for c in classes]))
    if any(b != ALL and b > smallest for b in kept):
        warn(f"the smallest class has {smallest} labelled examples: budgets above it take all of that class")
    return kept, sizes


def _budget_splits(pool, test, classes: list[str], budget, seed: int, val_fraction: float):
    """``budget`` labelled examples per class (whole patients for grouped data, and then at least two patients a
    class so that validation gets one), nested across budgets for one seed, then a stratified validation split of
    them; the fixed test set as given."""
    from .data.sources import carve_splits

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


def _choose_metric(metric: str, task: Any, classes: list[str]) -> str:
    if metric == "auto":
        return task.default_metric(classes)
    if metric not in METRICS[:4]:
        raise TransferkitError(f"Metric {metric!r} is unknown: choose auto, accuracy, balanced_accuracy, macro_f1 or "
                               "auroc.")
    if metric == "auroc" and (not task.clinical_scores or len(classes) != 2):
        raise TransferkitError("metric auroc needs two-class medical data (--modality medical); choose accuracy, "
                               "balanced_accuracy or macro_f1.")
    return metric


# ---------------------------------------------------------------------------------------------------- runs


def _record(model, budget, seed: int, name: str, metric: str, part, wall_s: float) -> dict[str, Any]:
    """What the comparison keeps of one run: scores, the overfitting gap, and the validation curve over time.

    The gap is the kept model's accuracy on its own training examples, read like the test set (no augmentation,
    dropout or label smoothing, after training), minus its validation accuracy: the training accuracy a training
    loop records is taken on augmented batches while the weights move, which differs between strategies."""
    metrics = model.metrics
    test = metrics["test"]
    clean_train = model.evaluate(part.train)["accuracy"]
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
        "val_score": best["val_acc"], "train_score": clean_train, "val_accuracy": metrics["val"]["accuracy"],
        "gap": clean_train - metrics["val"]["accuracy"], "test_auroc_ci": test.get("clinical", {}).get("auroc_ci"),
        "epochs": len(hist["epochs"]), "stopped": hist["stopped"],
        "wall_s": round(wall_s, 1), "train_s": round(metrics["timings"].get("total_s", wall_s), 1), "curve": curve,
    }


def _classical_run(part, task: Any, budget, seed: int, metric: str, image_pre: Any, skip_bad: bool) -> dict[str, Any]:
    """One run of the classical baseline, recorded like :func:`_record` records a transfer run.

    It trains on the validation examples too: it chooses its C by cross-validation on whatever it is given, so a
    held-out split would only be labels it paid for and did not use (a budget counts both, for every strategy).
    Hence no validation score, no validation curve over time and no overfitting gap (None); ``train_score`` is
    its accuracy on the examples it was fitted on."""
    from .evaluation.metrics import classification_metrics
    from .strategies.classical import ClassicalBaseline

    labelled = _concat(part.train, part.val) if part.val is not None else part.train
    data = task.classical_data({"train": labelled, "test": part.test}, part.classes, image_pre, skip_bad)
    (x, y), (x_test, y_test) = data["train"], data["test"]
    base = ClassicalBaseline(task.baseline_kind(), seed=seed).fit(x, y, num_classes=len(part.classes))
    probs = base.predict_proba(x_test)
    test = classification_metrics(y_test, probs, part.classes)
    auroc_ci = None
    if metric == "auroc":
        from .evaluation.clinical import choose_positive, clinical_metrics

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
        "val_score": None, "train_score": float((base.predict(x) == y).mean()), "val_accuracy": None,
        "gap": None, "test_auroc_ci": auroc_ci, "epochs": None, "stopped": None, "curve": [],
        "C": base.probe_.C_,
    }


def _run_key(budget, seed: int, name: str) -> str:
    return f"{name}-b{budget}-s{seed}"


def _is_main() -> bool:
    from .engine.accel import is_main_process

    return is_main_process()


def _save_run(out: Path, key: str, run: dict, config: dict) -> None:
    from .io import write_json

    write_json(out / "runs" / f"{key}.json", {"config": _identity(config), "run": run})


def _identity(config: dict) -> dict:
    """What must match for a saved run to be reused on resume."""
    from .io import jsonable

    keep = ("data", "kind", "backbone", "metric", "time_per_run_s", "test_n", "pool_n", "classes", "val_fraction",
            "split_seed", "fit_options", "image_size", "precision", "skip_bad", "test_fraction")
    return json.loads(json.dumps({k: config[k] for k in keep}, default=jsonable))  # as a saved run holds it


def _previous_runs(out: Path, config: dict) -> dict[str, dict]:
    from .console import info, warn

    found, changed, other = {}, set(), 0
    identity = _identity(config)
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


def _eta(left: list[tuple], spent: list[tuple[str, float, float]], sizes: dict[str, float],
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


def _duration(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


# ---------------------------------------------------------------------------------------------------- summary


def summarise(runs: list[dict], strategies: list[str], budgets: list) -> list[dict[str, Any]]:
    """Per budget and strategy: mean and 95% interval over seeds of the test score and of the gap."""
    rows = []
    for b in budgets:
        for name in strategies:
            sel = [r for r in runs if r["budget"] == str(b) and r["strategy"] == name]
            if not sel:
                continue
            m, lo, hi = seed_interval([r["score"] for r in sel])
            g, glo, ghi = seed_interval([r["gap"] for r in sel], bounds=(-1.0, 1.0))
            g = None if g != g else g  # no gap (the classical baseline): None, which JSON can hold and NaN cannot
            rows.append({"budget": str(b), "strategy": name, "seeds": len(sel),
                         "labels_per_class": float(np.mean([r["labels_per_class"] for r in sel])),
                         "score": m, "score_lo": lo, "score_hi": hi, "gap": g, "gap_lo": glo, "gap_hi": ghi,
                         "wall_s": float(np.mean([r["wall_s"] for r in sel])),
                         "test_accuracy_ci": sel[0].get("test_accuracy_ci")})
    return rows


def _cell(summary: list[dict], budget, name: str) -> dict | None:
    return next((r for r in summary if r["budget"] == str(budget) and r["strategy"] == name), None)


def headlines(runs: list[dict], summary: list[dict], strategies: list[str], budgets: list,
              metric: str) -> dict[str, Any]:
    """The three answers, each one sentence with its numbers: time saved to reach scratch's best validation
    score, labels per class needed to match scratch with the most labels, and the overfitting gap; with
    ``classical`` among the strategies a fourth, ``classical``: the budgets where the classical baseline beats
    every transfer strategy."""
    transfer = [s for s in strategies if s not in ("scratch", CLASSICAL)]
    label = metric.replace("_", " ")
    extra = {"classical": _classical_headline(runs, summary, transfer, budgets, label)} if CLASSICAL in strategies \
        else {}
    msg = None
    if "scratch" not in strategies:
        msg = "Add scratch to the strategies to measure what transfer saved against training from scratch."
    elif not transfer:
        msg = "Add a transfer strategy (e.g. linear or finetune) to measure what transfer saved against scratch."
    if msg:
        return {"time": {"sentence": msg}, "labels": {"sentence": msg}, "gap": {"sentence": msg}, **extra}
    top = budgets[-1]
    return {"time": _time_headline(runs, transfer, top), "labels": _labels_headline(summary, transfer, budgets, label),
            "gap": _gap_headline(summary, transfer, budgets), **extra}


def _where(budget) -> str:
    return "with all labels" if budget == ALL else f"at {budget} labels per class"


def _classical_headline(runs: list[dict], summary: list[dict], transfer: list[str], budgets: list,
                        label: str) -> dict[str, Any]:
    """Where the classical baseline's mean test score is above every transfer strategy's: said plainly, budget by
    budget, since transfer has not paid off there whatever it did against scratch."""
    # images: each run keeps the candidate features that cross-validate best, so runs may differ
    kept = " or ".join(dict.fromkeys(r["kept"] for r in runs if r["strategy"] == CLASSICAL and r.get("kept"))) or None
    name = f"the classical baseline ({kept})" if kept else "the classical baseline"
    rows = []
    for b in budgets:
        base = _cell(summary, b, CLASSICAL)
        others = [c for n in transfer if (c := _cell(summary, b, n)) is not None]
        if base is not None and others:
            best = max(others, key=lambda c: c["score"])
            rows.append({"budget": str(b), "classical": base["score"], "transfer": best["score"],
                         "strategy": best["strategy"], "wins": base["score"] > best["score"]})
    out: dict[str, Any] = {"baseline": kept, "per_budget": rows, "wins": [r["budget"] for r in rows if r["wins"]]}
    if not rows:
        return {**out, "sentence": f"No budget has both {name} and a transfer strategy to compare."}
    if out["wins"]:
        said = "; ".join(f"{_where(r['budget'])}: {r['classical']:.3f} against {r['strategy']}'s {r['transfer']:.3f}"
                         for r in rows if r["wins"])
        lost = [_where(r["budget"]) for r in rows if not r["wins"]]
        tail = f" Transfer is at least as good {', '.join(lost)}." if lost else " It does so at every budget compared."
        sentence = f"{name[0].upper() + name[1:]} beats transfer {said} (test {label}).{tail}"
        return {**out, "sentence": sentence}
    close = min(rows, key=lambda r: r["transfer"] - r["classical"])
    verb = "beat" if all(r["transfer"] > r["classical"] for r in rows) else "matched or beat"
    return {**out, "sentence": f"Transfer {verb} {name} at every budget; the closest {_where(close['budget'])}: "
                               f"{close['strategy']} {close['transfer']:.3f} against {close['classical']:.3f} "
                               f"(test {label})."}


def _reach(curve: list, target: float) -> float | None:
    """Seconds until the validation score first reached ``target`` (1e-9 tolerance), or None."""
    return next((t for t, v in curve if v >= target - 1e-9), None)


def _time_headline(runs: list[dict], transfer: list[str], top) -> dict[str, Any]:
    per = {}
    scratch = {r["seed"]: r for r in runs if r["budget"] == str(top) and r["strategy"] == "scratch" and r["curve"]}
    for name in transfer:
        times, base, reached = [], [], 0
        for r in runs:
            if r["budget"] != str(top) or r["strategy"] != name or r["seed"] not in scratch:
                continue
            s = scratch[r["seed"]]
            target = max(v for _, v in s["curve"])
            t_scratch = _reach(s["curve"], target)
            t_transfer = _reach(r["curve"], target)
            base.append(t_scratch)
            if t_transfer is not None:
                reached += 1
                times.append(t_transfer)
        if base:
            per[name] = {"seeds": len(base), "reached": reached, "scratch_s": float(np.mean(base)),
                         "transfer_s": float(np.mean(times)) if times else None}
    both = {k: v for k, v in per.items() if v["reached"] == v["seeds"]}
    where = f"with {top} labels per class" if top != ALL else "with all labels"
    if not per:
        return {"sentence": "No run recorded a validation curve, so the time to reach scratch's best is unknown.",
                "per_strategy": per}
    if not both:
        best = max(per, key=lambda k: per[k]["reached"])
        p = per[best]
        return {"sentence": f"No transfer strategy reached scratch's best validation score in every seed {where} "
                            f"({best} did in {p['reached']} of {p['seeds']}): transfer saved no time here.",
                "per_strategy": per}
    name = min(both, key=lambda k: both[k]["transfer_s"])
    p = both[name]
    saved = p["scratch_s"] - p["transfer_s"]
    ratio = p["scratch_s"] / max(p["transfer_s"], 1e-9)
    verb = f"saved {_duration(saved)} ({ratio:.1f}x faster)" if saved > 0 else f"took {_duration(-saved)} longer"
    return {"sentence": f"Transfer ({name}) reached scratch's best validation score in {_duration(p['transfer_s'])} "
                        f"against scratch's {_duration(p['scratch_s'])} {where} (mean of {p['seeds']} seeds): it {verb}.",
            "strategy": name, "saved_s": saved, "speedup": ratio, "per_strategy": per}


def _labels_headline(summary: list[dict], transfer: list[str], budgets: list, label: str) -> dict[str, Any]:
    top = budgets[-1]
    ref = _cell(summary, top, "scratch")
    if ref is None:
        return {"sentence": "Scratch has no run at the largest budget, so there is nothing to match."}
    need = {}
    for name in transfer:
        for b in budgets:
            c = _cell(summary, b, name)
            if c is not None and c["score"] >= ref["score"]:
                need[name] = c
                break
    top_text = f"all {ref['labels_per_class']:.0f}" if top == ALL else f"{ref['labels_per_class']:.0f}"
    if not need:
        best = max((c for c in summary if c["strategy"] != "scratch" and c["budget"] == str(top)),
                   key=lambda c: c["score"], default=None)
        tail = f"; the best, {best['strategy']}, scored {best['score']:.3f}" if best else ""
        return {"sentence": f"No transfer strategy matched scratch's test {label} of {ref['score']:.3f} with "
                            f"{top_text} labels per class at any budget{tail}.", "scratch": ref["score"]}
    name = min(need, key=lambda k: (need[k]["labels_per_class"], -need[k]["score"]))
    c = need[name]
    fewer = ref["labels_per_class"] / c["labels_per_class"]
    if c["budget"] == str(top):
        return {"sentence": f"Transfer ({name}) matched scratch's test {label} ({c['score']:.3f} vs {ref['score']:.3f}) "
                            f"only with {top_text} labels per class, as many as scratch: no labels saved.",
                "strategy": name, "labels_per_class": c["labels_per_class"], "scratch_labels_per_class":
                ref["labels_per_class"], "fewer": 1.0, "scratch": ref["score"], "transfer": c["score"]}
    return {"sentence": f"Transfer ({name}) needed {c['labels_per_class']:.0f} labels per class to match scratch "
                        f"with {top_text} (test {label} {c['score']:.3f} vs {ref['score']:.3f}): "
                        f"{fewer:.1f}x fewer labels.",
            "strategy": name, "labels_per_class": c["labels_per_class"], "scratch_labels_per_class":
            ref["labels_per_class"], "fewer": fewer, "scratch": ref["score"], "transfer": c["score"]}


def _gap_headline(summary: list[dict], transfer: list[str], budgets: list) -> dict[str, Any]:
    def mean_gap(name: str) -> float | None:
        # a model no better on its training data than on validation does not overfit: below zero counts as zero
        gaps = [max(c["gap"], 0.0) for c in summary if c["strategy"] == name and c["gap"] is not None
                and c["gap"] == c["gap"]]
        return float(np.mean(gaps)) if gaps else None

    scratch = mean_gap("scratch")
    gaps = {n: g for n in transfer if (g := mean_gap(n)) is not None}
    if scratch is None or not gaps:
        return {"sentence": "The train-validation gap could not be measured."}
    name = min(gaps, key=gaps.get)
    diff = scratch - gaps[name]
    what = (f"{diff:.3f} smaller" + (f" ({diff / scratch:.0%} less)" if gaps[name] >= 0 < scratch else "")) \
        if diff > 0 else f"{-diff:.3f} larger"
    return {"sentence": f"The overfitting gap (the kept model's accuracy on its training examples minus on "
                        f"validation, both read without augmentation; mean over {len(budgets)} budget(s) and the "
                        f"seeds) was {gaps[name]:.3f} with {name} against "
                        f"{scratch:.3f} from scratch: {what}.",
            "strategy": name, "transfer": gaps[name], "scratch": scratch, "reduction": diff}


def test_half_width(cell: dict, metric: str, test_n: int, runs: list[dict] | None = None) -> float | None:
    """Half the width of the test set's own 95% interval at a cell's score: Wilson for accuracy-like metrics
    (an approximation for macro-F1 and balanced accuracy), the runs' bootstrap intervals for AUROC."""
    from .evaluation.clinical import wilson

    if metric == "auroc":
        cis = [r["test_auroc_ci"] for r in runs or [] if r["budget"] == cell["budget"] and
               r["strategy"] == cell["strategy"] and r.get("test_auroc_ci")]
        return float(np.mean([(hi - lo) / 2 for lo, hi in cis])) if cis else None
    lo, hi = wilson(round(cell["score"] * test_n), test_n)
    return (hi - lo) / 2


def resolution_warnings(summary: list[dict], strategies: list[str], budgets: list, metric: str,
                        test_n: int, runs: list[dict] | None = None) -> list[str]:
    """Where two strategies differ by less than the test set can resolve (:func:`test_half_width` at the better
    score), say so: that difference is not shown by this test set. Checked per budget for the two best
    strategies and for the best transfer strategy against scratch and against the classical baseline, the pairs
    the report and headlines compare."""
    out = []
    for b in budgets:
        cells = sorted((c for c in summary if c["budget"] == str(b)), key=lambda c: -c["score"])
        pairs = [(cells[0], cells[1])] if len(cells) > 1 else []
        transfer = next((c for c in cells if c["strategy"] not in ("scratch", CLASSICAL)), None)
        for other in ("scratch", CLASSICAL):  # the pairs the headlines compare: best transfer against each
            ref = next((c for c in cells if c["strategy"] == other), None)
            if ref is not None and transfer is not None:
                pair = (transfer, ref) if transfer["score"] >= ref["score"] else (ref, transfer)
                if pair not in pairs:
                    pairs.append(pair)
        for a, second in pairs:
            half = test_half_width(a, metric, test_n, runs)
            if half is not None and a["score"] - second["score"] < half:
                where = "with all labels" if b == ALL else f"with {b} labels per class"
                out.append(f"{where}, {a['strategy']} ({a['score']:.3f}) and {second['strategy']} "
                           f"({second['score']:.3f}) differ by less than the test set's 95% interval (+-{half:.3f} "
                           f"with {test_n} test examples): this test set cannot tell them apart")
    return out


# ---------------------------------------------------------------------------------------------------- files


RUN_COLUMNS = ("budget", "seed", "strategy", "kept", "labels", "labels_per_class", "train_n", "val_n", "score", "test_accuracy",
               "test_macro_f1", "test_balanced_accuracy", "val_score", "train_score", "gap", "epochs", "stopped",
               "wall_s")
SUMMARY_COLUMNS = ("budget", "strategy", "seeds", "labels_per_class", "score", "score_lo", "score_hi", "gap",
                   "gap_lo", "gap_hi", "wall_s")


def _csv(rows: list[dict], columns: tuple) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items() if k in columns})
    return buf.getvalue()


def _write_results(out: Path, runs: list[dict]) -> None:
    from .io import atomic_write_text

    atomic_write_text(out / "results.csv", _csv(runs, RUN_COLUMNS))


def write_comparison(out: Path, result: dict[str, Any]) -> dict[str, str]:
    """``results.csv``, ``summary.csv``, ``compare.json``, the three PNGs, ``report.md`` and ``report.html``."""
    from .io import atomic_write_text, write_json
    from .evaluation.plots import data_efficiency_png, gap_png, time_to_accuracy_png

    out.mkdir(parents=True, exist_ok=True)
    cfg = result["config"]
    files = {k: str(out / v) for k, v in (("results", "results.csv"), ("summary", "summary.csv"),
                                           ("json", "compare.json"), ("data_efficiency", "data_efficiency.png"),
                                           ("time_to_accuracy", "time_to_accuracy.png"),
                                           ("gap", "overfitting_gap.png"), ("markdown", "report.md"),
                                           ("html", "report.html"))}
    _write_results(out, result["runs"])
    atomic_write_text(files["summary"], _csv(result["summary"], SUMMARY_COLUMNS))
    write_json(files["json"], result)
    label = "AUROC" if cfg["metric"] == "auroc" else cfg["metric"].replace("_", " ")
    data_efficiency_png(result["summary"], cfg["strategies"], Path(files["data_efficiency"]), f"test {label}")
    top = cfg["budgets"][-1]
    trained = [s for s in cfg["strategies"] if s != CLASSICAL]  # the baseline has no validation curve and no gap
    time_to_accuracy_png([r for r in result["runs"] if r["budget"] == str(top)], trained,
                         Path(files["time_to_accuracy"]),
                         f"Time to accuracy ({top} labels per class)")
    gap_png(result["summary"], trained, cfg["budgets"], Path(files["gap"]))
    atomic_write_text(files["markdown"], render_markdown(result))
    atomic_write_text(files["html"], render_html(result, out))
    return files


def _f(v: Any, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else f"{v:.{digits}f}"


def _summary_lines(result: dict) -> list[str]:
    cfg = result["config"]
    head = "| labels/class | " + " | ".join(cfg["strategies"]) + " |"
    lines = [head, "|---" * (len(cfg["strategies"]) + 1) + "|"]
    for b in cfg["budgets"]:
        cells = []
        for name in cfg["strategies"]:
            c = _cell(result["summary"], b, name)
            if c is None:
                cells.append("-")
                continue
            ci = f" ({_f(c['score_lo'])}-{_f(c['score_hi'])})" if c["score_lo"] is not None else ""
            cells.append(f"{_f(c['score'])}{ci}")
        lab = cfg["labels_per_class"].get(str(b), 0)
        lines.append(f"| {b}{f' ({lab:.0f})' if b == ALL else ''} | " + " | ".join(cells) + " |")
    return lines


def _test_note(result: dict[str, Any]) -> str:
    """The test set's own uncertainty, which the interval over seeds does not include."""
    cfg = result["config"]
    top = [c for c in result["summary"] if c["budget"] == str(cfg["budgets"][-1])]
    if not top:
        return ""
    best = max(top, key=lambda c: c["score"])
    half = test_half_width(best, cfg["metric"], cfg["test_n"], result["runs"])
    if half is None:
        return ""
    return (f"The interval over seeds covers which examples were labelled and the training's randomness; the test "
            f"set's own sampling adds about +-{half:.3f} at {best['score']:.3f} ({cfg['test_n']} test examples).")


def _headline_order(result: dict[str, Any]) -> list[str]:
    """The three transfer-vs-scratch headlines; the classical baseline's first where it beats transfer (that
    qualifies the rest), else last."""
    h = result["headlines"]
    if "classical" not in h:
        return ["time", "labels", "gap"]
    three = ["time", "labels", "gap"]
    return ["classical", *three] if h["classical"].get("wins") else [*three, "classical"]


def _classical_note(result: dict[str, Any]) -> str:
    h = result["headlines"].get("classical")
    if h is None:
        return ""
    what = h.get("baseline") or "hand-made features + logistic regression"
    return (f"{CLASSICAL}: {what}, no deep network; it trains on the training and validation examples together "
            "and chooses its regularisation by 5-fold cross-validation on them, so it has no validation curve and "
            "no overfitting gap.")


def render_markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    label = "AUROC" if cfg["metric"] == "auroc" else cfg["metric"].replace("_", " ")
    lines = ["# Transfer vs scratch", "",
             f"{cfg['kind'].capitalize()} data `{cfg['data']}`, backbone {cfg['backbone'] or 'default'}; "
             f"{len(cfg['classes'])} classes; every run scored on the same {cfg['test_n']} test examples; "
             f"{cfg['seeds']} seed(s) per cell; {len(result['runs'])} runs taking {_duration(sum(r['wall_s'] for r in result['runs']))} in all "
             f"(resumed runs included).",
             "", "## Headlines", ""]
    lines += [f"- {result['headlines'][k]['sentence']}" for k in _headline_order(result)]
    lines += ["", f"## Test {label} (mean, 95% interval over seeds)", "", *_summary_lines(result), "",
              _test_note(result), "", *([_classical_note(result), ""] if _classical_note(result) else [])]
    if result.get("failed"):
        lines += ["## Failed runs", "", *[f"- {r['strategy']}, {r['budget']} labels per class, seed {r['seed']}: "
                                          f"{r['failed']}" for r in result["failed"]], ""]
    if result["warnings"]:
        lines += ["## Caution", "", *[f"- {w}" for w in result["warnings"]], ""]
    lines += ["## Plots", "", "- `data_efficiency.png`: test score against labels per class (shaded: 95% interval).",
              "- `time_to_accuracy.png`: best validation score so far against wall time, largest budget, each seed.",
              "- `overfitting_gap.png`: the kept model's accuracy on its training examples minus on validation (no augmentation), per budget and strategy.",
              "", "Every run: `results.csv`; per budget and strategy: `summary.csv`.", ""]
    return "\n".join(lines)


def render_html(result: dict[str, Any], out: Path) -> str:
    """A single HTML file: headlines, the summary table, the plots embedded as data URIs, every run."""
    import base64
    import html

    cfg = result["config"]
    e = html.escape

    def img(name: str, alt: str) -> str:
        p = out / name
        if not p.exists():
            return ""
        data = base64.b64encode(p.read_bytes()).decode()
        return f'<figure><img alt="{e(alt)}" src="data:image/png;base64,{data}"><figcaption>{e(alt)}</figcaption></figure>'

    md_rows = _summary_lines(result)
    table = ["<table><tr>" + "".join(f"<th>{e(h.strip())}</th>" for h in md_rows[0].strip("|").split("|")) + "</tr>"]
    for row in md_rows[2:]:
        table.append("<tr>" + "".join(f"<td>{e(c.strip())}</td>" for c in row.strip("|").split("|")) + "</tr>")
    table.append("</table>")
    runs = ["<table><tr>" + "".join(f"<th>{c}</th>" for c in RUN_COLUMNS) + "</tr>"]
    for r in result["runs"]:  # None (the classical baseline's gap, epochs, ...) shows as "-"
        cells = (r.get(c) for c in RUN_COLUMNS)
        runs.append("<tr>" + "".join(f"<td>{e(_f(v) if v is None or isinstance(v, float) else str(v))}</td>"
                                     for v in cells) + "</tr>")
    runs.append("</table>")
    label = "AUROC" if cfg["metric"] == "auroc" else cfg["metric"].replace("_", " ")
    body = [
        "<h1>Transfer vs scratch</h1>",
        f"<p>{e(cfg['kind'])} data <code>{e(cfg['data'])}</code>, backbone {e(str(cfg['backbone'] or 'default'))}, "
        f"{len(cfg['classes'])} classes; every run scored on the same {cfg['test_n']} test examples; "
        f"{cfg['seeds']} seed(s) per cell.</p>",
        "<h2>Headlines</h2><ul>" + "".join(f"<li>{e(result['headlines'][k]['sentence'])}</li>"
                                           for k in _headline_order(result)) + "</ul>",
        f"<h2>Test {e(label)}: mean (95% interval over seeds)</h2>", *table, f"<p>{e(_test_note(result))}</p>",
        *([f"<p>{e(_classical_note(result))}</p>"] if _classical_note(result) else []),
        *(["<h2>Failed runs</h2><ul>" + "".join(
            f"<li>{e(r['strategy'])}, {e(r['budget'])} labels per class, seed {r['seed']}: {e(r['failed'])}</li>"
            for r in result["failed"]) + "</ul>"] if result.get("failed") else []),
        *(["<h2>Caution</h2><ul>" + "".join(f"<li>{e(w)}</li>" for w in result["warnings"]) + "</ul>"]
          if result["warnings"] else []),
        "<h2>Plots</h2>",
        img("data_efficiency.png", "Data efficiency: test score against labels per class"),
        img("time_to_accuracy.png", "Time to accuracy: best validation score so far against wall time"),
        img("overfitting_gap.png", "Overfitting: training minus validation accuracy of the kept model, read without augmentation"),
        "<h2>Every run</h2>", *runs,
    ]
    style = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:3px 8px}"
             "th{background:#f3f3f3}img{max-width:100%}figcaption{color:#555;font-size:0.9em}")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>transferkit: transfer vs scratch"
            f"</title><style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
