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

This module is the recipe (:func:`compare`); the parts live beside it: ``runs`` (the data, label budgets and
their draws, one run and its record, saving and resume), ``statistics`` (intervals over seeds, headlines,
resolution warnings) and ``render`` (the CSV, JSON, plots and reports).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..errors import MissingExtraError, TransferkitError, check_precision
from ..rundir import holds_output
from .render import RUN_COLUMNS, SUMMARY_COLUMNS, render_html, render_markdown, write_comparison, write_results
from .runs import (
    ALL,
    CLASSICAL,
    METRICS,
    TRANSFER_FIRST,
    budget_splits,
    choose_metric,
    classical_run,
    concat,
    duration,
    eta_seconds,
    load_splits,
    options_not_for,
    parse_budgets,
    previous_runs,
    record_run,
    resolve_budgets,
    run_key,
    run_options,
    save_run,
)
from .statistics import headlines, resolution_warnings, seed_interval, summarise, test_half_width

__all__ = ["ALL", "CLASSICAL", "METRICS", "RUN_COLUMNS", "SUMMARY_COLUMNS", "TRANSFER_FIRST", "budget_splits",
           "compare", "headlines", "parse_budgets", "render_html", "render_markdown", "resolution_warnings",
           "seed_interval", "summarise", "test_half_width", "write_comparison"]


@holds_output("out")
def compare(data: Any, *, budgets: str | list = (5, 10, 25, 50, ALL), seeds: int = 3,
            strategies: str | list = ("linear", "finetune", "scratch"), backbone: str | None = None,
            metric: str = "auto", time_per_run: str | float | None = None, out: str | Path | None = None,
            resume: bool = False, seed: int = 0, skip_bad: bool = False, val_fraction: float = 0.15,
            test_fraction: float = 0.2, precision: str = "auto", image_size: int | None = None,
            modality: str = "auto", labels: list[Any] | None = None, log_with: str | list[str] | None = None,
            log_dir: str | Path | None = None, storage: str | None = None, study: str | None = None,
            workers: int = 1, worker: bool = False, heartbeat: float = 10.0,
            **fit_options: Any) -> dict[str, Any] | None:
    """Train every ``strategies`` x ``budgets`` x ``seeds`` combination on ``data`` (anything :func:`transferkit.fit`
    classifies: images, DICOM/NIfTI, texts (a list of them with ``labels=[...]``), audio; single- or multi-label,
    ``label_sep`` as for fit) and score each on one fixed test set.

    The test set is the data's own (a ``test/`` folder or ``split`` column), else ``test_fraction`` carved once
    with ``seed``; everything else is the pool the budgets draw from. ``metric`` is ``accuracy``,
    ``balanced_accuracy``, ``macro_f1`` or (two-class medical data) ``auroc``; ``auto`` picks accuracy, or AUROC
    for two-class medical data and balanced accuracy for other medical data. Multi-label data are scored by ``map``
    (``auto``), ``macro_f1``, ``micro_f1`` or ``accuracy`` (exact match); their budgets count examples by their rarest
    label, and the classical baseline decides each label at 0.5 (it has no validation split to tune a cut on).
    ``time_per_run`` is each run's wall-time budget (e.g. ``"2m"``); ``fit_options`` go to every run whose strategy
    takes them (``epochs=10`` to finetune and scratch, not to linear's probe; an option that no compared strategy
    takes fails). With ``out`` every finished run is saved at once, and ``resume=True`` reuses the runs an
    interrupted comparison finished.

    Several workers (:mod:`.queue`): with ``storage`` (``sqlite:///path.db`` or ``postgresql://user@host/db``; the
    default with ``workers`` > 1: ``compare.db`` beside ``out``) the grid's runs are queued in the study ``study``
    (default: ``out``'s folder name) and taken by ``workers`` processes here and any started elsewhere with
    ``worker=True`` (same data and settings); a dead worker's run is run again (``heartbeat`` seconds between a
    running run's signs of life). The call with ``out`` collects them all; a worker (give it ``out=None`` and the
    ``study``: it writes nothing) returns None. Running the same call again goes on where the study stopped.

    ``log_with`` (``tensorboard``, ``mlflow``, ``all``) tracks the settings, each run's
    score (``run/<strategy>/<budget>`` at step = seed), the summary and the plots, beside ``out`` or in ``log_dir``.

    ``classical`` among ``strategies`` adds the non-deep baseline
    (:class:`~transferkit.strategies.classical.ClassicalBaseline`: HOG, TF-IDF or log-mel statistics + logistic
    regression) on the same labels and test set; the report then says at which budgets it beats every transfer
    strategy.

    Returns ``{"config", "runs", "summary", "headlines", "warnings", "files"}``.
    """
    call = dict(locals())  # every argument, for run.yaml
    from ..api import fit, parse_budget
    from ..console import info

    from ..engine.tracking import parse_log_with

    parse_log_with(log_with)  # a missing package fails before any work
    check_precision(precision)
    queue = open_queue(storage, study, out, workers, worker, heartbeat)  # an unreachable database fails here
    budget_list = parse_budgets(budgets)
    names = [s.strip() for s in (strategies.split(",") if isinstance(strategies, str) else strategies) if s.strip()]
    if len(names) < 2 or len(set(names)) < len(names):
        raise TransferkitError(f"Give at least two different strategies to compare, e.g. linear,finetune,scratch "
                               f"(got {', '.join(names) or 'none'}).")
    if not isinstance(seeds, int) or seeds < 1:
        raise TransferkitError(f"seeds must be 1 or more (got {seeds!r}); 3 gives an interval.")
    run_seconds = parse_budget(time_per_run)
    splits, task = load_splits(data, modality, skip_bad, val_fraction, test_fraction, seed, fit_options, labels)
    kind = task.name
    import inspect

    fit_params = set(inspect.signature(fit).parameters)
    strategy_options = {k: v for k, v in fit_options.items() if k not in fit_params}
    for name in names:  # unknown strategies and options fail now, not after hours of the other runs
        if name != CLASSICAL:
            task.create_strategy(name, None, run_options(name, strategy_options, kind,
                                                         options_not_for(name, names, strategy_options)))
    metric = choose_metric(metric, task, splits.classes, getattr(splits.train, "multi_label", False))
    pool = concat(splits.train, splits.val)
    test = splits.test
    if test is None or len(test) == 0:
        raise TransferkitError("compare needs a test set: give a test/ folder or split column, or a test_fraction > 0.")
    budget_list, sizes = resolve_budgets(budget_list, pool, splits.classes)
    from ..api import backbone_names

    ranking = None
    if len(set(several := backbone_names(backbone))) > 1:  # rank once, on the pool: every run uses one backbone
        from ..api import rank

        from ..data.text import TextOptions

        # the data read as the runs read them: multi-label cells, text columns, patients
        text = {k: fit_options[k] for k in ("text_column", "label_column", "encoding") if fit_options.get(k)}
        ranking = rank(data, several, seed=seed, skip_bad=skip_bad, image_size=image_size, precision=precision,
                       val_fraction=val_fraction, test_fraction=test_fraction, modality=kind, labels=labels,
                       label_sep=fit_options.get("label_sep"), patient_column=fit_options.get("patient_column"),
                       max_length=fit_options.get("max_length"),
                       text_options=TextOptions(**text, label_sep=fit_options.get("label_sep")) if text else None)
        backbone = ranking["ranking"][0]
        info(f"compare: {backbone} ranks first of {len(several)} by LogME; every run uses it")
    image_pre = None
    if CLASSICAL in names:  # the classical baseline sees images as the runs' backbone crops them
        from ..tasks import task_options

        image_pre = task.baseline_preprocess(backbone, task_options(task, {k: v for k, v in fit_options.items()
                                                                          if k in ("window", "slices")}))
    config = {"data": str(Path(data).resolve()) if isinstance(data, (str, Path)) else type(data).__name__, "kind": kind,
              "backbone": backbone, "strategies": names, "budgets": budget_list, "labels_per_class": sizes,
              "seeds": seeds, "metric": metric, "time_per_run_s": run_seconds, "test_n": len(test),
              "pool_n": len(pool), "classes": splits.classes, "val_fraction": val_fraction, "split_seed": seed,
              "fit_options": {k: v for k, v in fit_options.items()}, "image_size": image_size,
              "precision": precision, "skip_bad": skip_bad, "test_fraction": test_fraction,
              "ranking": ranking["ranking"] if ranking else None}
    from ..engine.tracking import run_files, tracking

    out_dir = Path(out) if out is not None else None
    helpers = []
    if queue is not None and workers > 1:
        from ..studies import start_helpers

        helpers = start_helpers(workers - 1, data, dict(
            budgets=budgets, seeds=seeds, strategies=strategies, backbone=backbone, metric=metric,
            time_per_run=time_per_run, seed=seed, skip_bad=skip_bad, val_fraction=val_fraction,
            test_fraction=test_fraction, precision=precision, image_size=image_size, modality=modality,
            labels=labels, storage=queue["url"], study=queue["study"], heartbeat=heartbeat, **fit_options),
            work=compare)
    try:
        with tracking(None if worker or not _is_main() else log_with, log_dir, out, None,
                      {"command": "compare", **config}) as tracker:
            result = run_grid(data, config, out_dir, resume, task, splits, pool, test, names, budget_list, sizes,
                              seeds, backbone, run_seconds, precision, image_size, kind, skip_bad, fit_options,
                              strategy_options, metric, image_pre, tracker, queue=queue)
            if result is not None and "files" in result:
                result["files"]["run"] = str(_write_run_file(out_dir, call, queue))
            if tracker is not None and result is not None:
                tracker.finish({"seconds": result["seconds"]}, run_files(out_dir) if out_dir is not None else [])
    except BaseException:
        for p in helpers:  # this process failed or was interrupted: its helpers stop too (their runs are retried)
            p.terminate()
        raise
    finally:
        for p in helpers:
            p.join()
    return result


def open_queue(storage: str | None, study: str | None, out: Any, workers: int, worker: bool,
               heartbeat: float) -> dict[str, Any] | None:
    """The shared study's settings (the database reached now), or None for the plain loop."""
    from ..errors import check_number

    check_number("workers", workers, low=1, high=64, whole=True, example="2")
    check_number("heartbeat", heartbeat, low=1, high=3600, example="10")
    if storage is None and workers == 1 and not worker:
        return None
    from ..studies.storage import default_url, open_storage

    name = study or (Path(out).name if out is not None else None)
    if not name:
        raise TransferkitError("Name the study (--study NAME): a worker without --out has no folder to name it by.")
    url = storage or default_url(out, "compare.db")
    return {"db": open_storage(url, heartbeat), "url": url, "study": name, "worker": worker,
            "heartbeat": heartbeat}


def run_grid(data: Any, config: dict, out_dir: Path | None, resume: bool, task: Any, splits: Any, pool: Any, test: Any,
             names: list[str], budget_list: list, sizes: dict, seeds: int, backbone: Any, run_seconds: float | None,
             precision: str, image_size: int | None, kind: str, skip_bad: bool, fit_options: dict,
             strategy_options: dict, metric: str, image_pre: Any, tracker: Any,
             queue: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Every run of the grid, in turn here or taken from a shared study by workers (``queue``: the storage, study
    and worker settings; see :mod:`.queue`), then the summary. A worker returns None: the process with ``out``
    writes."""
    from ..api import fit
    from ..console import info, warn

    def one_run(b: Any, s: int, name: str) -> dict[str, Any]:
        """One run of the grid, recorded; a failure raises TransferkitError."""
        part = budget_splits(pool, test, splits.classes, b, s, config["val_fraction"])
        started = time.monotonic()
        if name == CLASSICAL:
            run = classical_run(part, task, b, s, metric, image_pre, skip_bad)
            run["wall_s"] = run["train_s"] = round(time.monotonic() - started, 1)
            return run
        model = fit(part, backbone=backbone, strategy=name, budget=run_seconds, seed=s, precision=precision,
                    image_size=image_size, modality=kind, skip_bad=skip_bad, explain=False,
                    **run_options(name, fit_options, kind, options_not_for(name, names, strategy_options)))
        return record_run(model, b, s, name, metric, part, time.monotonic() - started)

    plan = [(b, s, name) for b in budget_list for s in range(seeds) for name in names]
    t0 = time.monotonic()
    if queue is not None:
        from .queue import run_queued

        got = run_queued(plan, config, one_run, tracker=tracker, **queue)
        if got is None:
            return None
        runs, failed = got
        if out_dir is not None and _is_main():  # saved as the loop saves them, so --resume without the study works
            for run in runs:
                save_run(out_dir, run_key(run["budget"], run["seed"], run["strategy"]), run, config)
            write_results(out_dir, runs)
    else:
        done = previous_runs(out_dir, config) if resume and out_dir is not None else {}
        runs, failed, spent = [], [], []
        for i, (b, s, name) in enumerate(plan, 1):
            key = run_key(b, s, name)
            if key in done:
                runs.append(done[key])
                continue
            eta = eta_seconds(plan[i - 1:], spent, sizes, run_seconds)
            info(f"compare: run {i}/{len(plan)}: {name}, {b} labels per class, seed {s}"
                 + (f", about {duration(eta)} left" if eta else ""))
            try:
                run = one_run(b, s, name)
            except MissingExtraError:  # every run would fail alike: say it once
                raise
            except TransferkitError as err:  # one run's failure is recorded; the comparison goes on
                warn(f"compare: {name}, {b} labels per class, seed {s} failed: {err}")
                failed.append({"budget": str(b), "seed": s, "strategy": name, "failed": str(err)})
                continue
            spent.append((name, sizes[str(b)], run["wall_s"]))
            runs.append(run)
            if tracker is not None:
                tracker.log({f"run/{name}/budget_{b}": run["score"]}, step=s)
            if out_dir is not None and _is_main():  # a failed run is not saved: --resume tries it again
                save_run(out_dir, key, run, config)
                write_results(out_dir, runs)
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


# compare's keyword options that `transferkit compare` has flags for (run.yaml writes the others under fit_options)
FLAGGED_OPTIONS = ("epochs", "max_length", "text_column", "label_column", "patient_column", "label_sep")


def _write_run_file(out: Path, call: dict[str, Any], queue: Any) -> Path:
    """``out/run.yaml`` (:mod:`transferkit.runfile`): ``call``, the comparison's arguments (the storage and study it
    used, a password taken out)."""
    from ..io import atomic_write_text
    from ..runfile import STUDY_NOTE, recorded, settings_file

    settings = recorded(call, drop=("labels", "worker", "fit_options"), paths=("backbone", "log_dir"))
    # the options the command has flags for, then the rest for --config to pass on (strategy options, window...)
    options = dict(call["fit_options"])
    settings |= {k: options.pop(k) for k in FLAGGED_OPTIONS if k in options}
    if options:
        settings["fit_options"] = options
    if queue is not None:
        from ..studies.storage import without_password

        settings |= {"storage": without_password(queue["url"]), "study": queue["study"]}
    for key in ("budgets", "strategies"):
        if isinstance(settings[key], (list, tuple)):
            settings[key] = ",".join(str(v) for v in settings[key])
    path = out / "run.yaml"
    note = (f"The same study goes on where it stopped: give --study NEW to run the grid again. {STUDY_NOTE}"
            if queue is not None else None)
    atomic_write_text(path, settings_file("compare", call["data"], settings, {}, note=note).decode())
    return path


def _is_main() -> bool:
    from ..engine.accel import is_main_process

    return is_main_process()
