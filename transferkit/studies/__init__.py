"""``transferkit search``: hyperparameter search under a time budget on Optuna, then the final model.

- **The space** is declared beside each strategy's config (:mod:`transferkit.strategies.space`): learning rates,
  layer-wise decay, weight decay, epochs, augmentation, LoRA rank, the probe's C... A YAML file changes it.
  Several strategies (``--strategy linear,finetune``; ``auto`` means these two) make the strategy a setting too.
- **The objective** is what ``fit`` would choose by on these data: with no validation split (small data, fewer than
  50 examples in the smallest class) the k-fold cross-validated estimate (3 folds where each fold is a training run,
  5 repeated 3 times for the probe), so the search does not fit one split's noise; otherwise the validation score.
  Accuracy, balanced accuracy where the run balances classes, mAP for multi-label data.
- **Pruning**: a trial reports each epoch's validation score (each fold's score when cross-validated) and stops
  when it falls below the median of earlier trials at that step (``--pruner median``; ``halving``; ``none``).
- **Many workers**: the study lives in a database, SQLite by default (one machine) or PostgreSQL (several); every
  worker started with the same data and ``--study`` takes trials from it; exactly ``--trials`` finish however many
  workers run, and a dead worker's trial is run again by another (:mod:`transferkit.studies.trials`).
- **The end**: the best trial's settings train the final model (bundle, report, model card, all recording the
  search), and the default settings train another on the same splits, so the report can say, on the same test
  examples, whether the search paid off. Without a given test set, ``test_fraction`` (default 0.2) is held out for
  that; trials never see it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from ..errors import TransferkitError, check_number
from .storage import DEFAULT_HEARTBEAT

AUTO_STRATEGIES = ("linear", "finetune")  # what `--strategy auto` searches over
DEFAULT_TRIALS = 20
MAX_TRIALS = 1_000  # queued up front in the database (about 10 s for the most)
MIN_RUN_S = 30.0  # the least budget the last two runs get, even when the trials spent it all
PRUNERS = ("median", "halving", "none")


def search(data: Any, *, trials: int | None = None, budget: str | float | None = None, storage: str | None = None,
           study: str | None = None, out: str | Path | None = None, strategy: str = "auto",
           space: str | Path | dict | None = None, pruner: str = "median", seed: int = 0, workers: int = 1,
           worker: bool = False, heartbeat: float = DEFAULT_HEARTBEAT, backbone: str | None = None,
           modality: str = "auto", val_fraction: float | None = None, test_fraction: float | None = None,
           cv: int | None = None, image_size: int | None = None, precision: str = "auto", skip_bad: bool = False,
           explain: bool = True, log_with: str | list[str] | None = None, log_dir: str | Path | None = None,
           **data_options: Any) -> Any:
    """Search the settings of ``strategy`` on ``data`` (any classification data :func:`transferkit.fit` takes) and
    train the final model with the best. ``backbone``, ``modality``, ``val_fraction``, ``test_fraction``, ``cv``,
    ``image_size``, ``precision``, ``skip_bad``, ``explain`` and ``data_options`` (``labels``, ``text_column``,
    ``label_column``, ``label_sep``, ``max_length``, ``clip_seconds``, ``window``, ``slices``, ``patient_column``,
    ``balance``) are as for :func:`fit`.

    Args:
        trials: how many trials the study holds (default 20 when this call creates it; a joining worker may leave
            it out).
        budget: wall time for the whole search, final model included (``"1h"``, ``"30m"``, seconds); trials stop
            when the next one would not leave time for the last two runs. Trials left queued stay in the study.
        storage: ``sqlite:///path/search.db`` (default: ``search.db`` beside ``out``, or ``runs/search.db``) or
            ``postgresql://user@host/db`` for workers on several machines. Reached before any data is read.
        study: the study's name (default: ``out``'s folder name). A study made on other data is refused.
        strategy: one strategy, several (``"linear,finetune"``), or ``auto`` (linear and finetune).
        space: a YAML file (or a dict) changing the declared search spaces (see :mod:`transferkit.strategies.space`).
        pruner: ``median``, ``halving`` or ``none``.
        workers: processes on this machine (this one included) sharing the study; each gets its share of the cores.
        worker: only run trials (another process, on this or another machine, trains the final model).
        heartbeat: seconds between a running trial's heartbeats; a trial silent for 3 is failed and queued again.
        log_with: track the search (``tensorboard``, ``mlflow``, ``all``): each trial's value at its number, then
            the final run's curves, scores, report and plots (:mod:`transferkit.engine.tracking`).
        log_dir: where the trackers write (default: beside ``out``).

    Returns:
        The final :class:`~transferkit.bundle.model.TransferModel` (``model.metrics["search"]`` holds the record),
        or with ``worker=True`` what this worker did (``{"complete": n, "pruned": n, "failed": n}``).

    Raises:
        TransferkitError: ``trials`` below 1, an unknown strategy or space option, an empty range, an unreachable
            database, a study made on other data or with another space, no trial finishing, or bad data.

    Examples:

        >>> model = transferkit.search("data/parts", trials=30, budget="1h", out="runs/parts-search")
        >>> model.metrics["search"]["comparison"]["verdict"]
    """
    call = dict(locals())  # every argument, for run.yaml
    from .storage import default_url, open_storage

    if trials is not None:
        check_number("trials", trials, low=1, high=MAX_TRIALS, whole=True, example="30")
    check_number("workers", workers, low=1, high=64, whole=True, example="2")
    check_number("heartbeat", heartbeat, low=1, high=3600, example="10")
    from ..engine.tracking import parse_log_with

    parse_log_with(log_with)  # a missing package fails before any work
    if pruner not in PRUNERS:
        raise TransferkitError(f"Pruner {pruner!r} is unknown: choose {', '.join(PRUNERS)}.")
    if out is None and not worker:
        raise TransferkitError("A search writes its final model, report and trials to --out: give one (or --worker "
                               "to only run trials).")
    from ..api import parse_budget

    seconds = parse_budget(budget)
    if isinstance(data, (str, Path)) and not Path(data).exists():
        raise TransferkitError(f"{data} does not exist: give a folder or a file of labelled data.")
    if out is not None:  # the final run's folder checks, now rather than after hours of trials
        from ..rundir import absolute, check_apart, check_out, refuse_foreign

        check_out(out)
        check_apart(absolute(out), data)
        if absolute(out).is_dir():
            refuse_foreign(absolute(out), ("metrics.json",))
    name = study or (Path(out).resolve().name if out is not None else None)
    if not name:
        raise TransferkitError("Name the study (--study NAME): a worker without --out has no folder to name it by.")
    if len(name) > 512:
        raise TransferkitError(f"--study is {len(name)} characters long: study names hold at most 512.")
    url = storage or default_url(out)
    check_storage_place(url, out, data)
    started = time.time()
    db = open_storage(url, heartbeat)  # an unreachable database fails here, before any data is read
    if workers > 1:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():  # a SIGTERM stops the helpers too
            signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(143)))

    if workers > 1:  # (set up above)
        helpers = start_helpers(workers - 1, data, dict(
            trials=trials if trials is not None or worker else DEFAULT_TRIALS, budget=budget, storage=url, study=name,
            strategy=strategy, space=space, pruner=pruner,
            seed=seed, heartbeat=heartbeat, backbone=backbone, modality=modality, val_fraction=val_fraction,
            test_fraction=test_fraction, cv=cv, image_size=image_size, precision=precision, skip_bad=skip_bad,
            **data_options))
    else:
        helpers = []
    try:
        result = run_search(data, db, url, name, trials=trials, seconds=seconds, started=started, out=out,
                            strategy=strategy, space=space, pruner=pruner, seed=seed, worker=worker,
                            heartbeat=heartbeat, backbone=backbone, modality=modality, val_fraction=val_fraction,
                            test_fraction=test_fraction, cv=cv, image_size=image_size, precision=precision,
                            skip_bad=skip_bad, explain=explain, data_options=data_options,
                            log_with=None if worker else log_with, log_dir=log_dir,
                            run_file=functools.partial(run_file, {**call, "storage": url, "study": name}))
    except BaseException as err:
        for p in helpers:  # this process failed or was interrupted: its helpers stop too (their trials are retried)
            p.terminate()
        import optuna

        if isinstance(err, optuna.exceptions.StorageInternalError):  # the database failed under the search
            from .storage import hide, shown

            cause = " ".join(str(err.__cause__ or err).split())[:200]
            raise TransferkitError(f"The study database {shown(url)} failed during the search ({hide(cause, url)}): "
                                   "check that it is writable and reachable, then run the same command again to go "
                                   "on.") from None
        raise
    finally:
        for p in helpers:
            p.join()
    return result


def check_storage_place(url: str, out: Any, data: Any) -> None:
    """A SQLite file inside the run folder (replaced whole at the end) or inside the data folder (read as data) is
    refused before any work."""
    if not url.startswith("sqlite:///"):
        return
    db = Path(url.removeprefix("sqlite:///")).resolve()
    for folder, what in ((out, "--out (the run folder is replaced whole at the end)"),
                         (data if isinstance(data, (str, Path)) and Path(data).is_dir() else None, "the data folder")):
        if folder is not None and Path(folder).resolve() in db.parents:
            from .storage import default_url

            raise TransferkitError(f"--storage {url} lies inside {what}: keep the study database elsewhere, e.g. "
                                   f"{default_url(out)}.")


def share_cores(workers: int) -> None:
    """Each of ``workers`` processes on this machine takes its share of the cores (threads that wait on each other
    across processes slow everything down far more than fewer threads do)."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def helper_main(work: Any, data: Any, kwargs: dict[str, Any], workers: int) -> None:
    """A helper process's body (spawned by :func:`start_helpers`): ``work`` (search, compare) as a worker."""
    share_cores(workers)
    try:
        work(data, worker=True, **kwargs)
    except TransferkitError as err:
        from ..console import warn

        warn(f"{getattr(work, '__name__', 'worker')} worker {os.getpid()}: {err}")
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the main process says what happened
        raise SystemExit(130) from None


def start_helpers(n: int, data: Any, kwargs: dict[str, Any], work: Any = None) -> list[Any]:
    """``n`` worker processes on this machine, each running ``work`` (a module-level function taking ``data``,
    ``worker=True`` and ``kwargs``: :func:`search` by default, or :func:`transferkit.compare`); this process then
    takes its share of the cores."""
    import multiprocessing

    if not isinstance(data, (str, Path)):
        raise TransferkitError("--workers above 1 starts processes that read the data again: give the data as a "
                               "path (a folder or a file), or start workers with --worker yourself.")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=helper_main, args=(work or search, str(data), kwargs, n + 1), daemon=False)
             for _ in range(n)]
    for p in procs:
        p.start()
    share_cores(n + 1)
    return procs


def strategy_list(strategy: str, task: Any) -> list[str]:
    """The strategies searched: ``auto`` -> linear and finetune; names checked against the task's."""
    from ..strategies.space import closest

    names = list(AUTO_STRATEGIES) if strategy == "auto" else [s.strip() for s in str(strategy).split(",") if s.strip()]
    known = task.strategy_names()
    if not names:
        raise TransferkitError("--strategy is empty: name one or more strategies, e.g. linear,finetune.")
    for n in names:
        if n == "auto":
            raise TransferkitError("auto chooses its own settings; name the strategies to search, e.g. "
                                   "--strategy linear,finetune (which --strategy auto means).")
        if n not in known:
            raise TransferkitError(f"Strategy {n!r} is not one {task.title} takes{closest(n, known)}: choose from "
                                   f"{', '.join(s for s in known if s != 'auto')}.")
    if len(set(names)) != len(names):
        raise TransferkitError(f"--strategy names a strategy twice ({strategy}).")
    return [n for n in known if n in names]  # the registry's order: the study's choice of strategy is one list


def spaces_for(names: list[str], task: Any, profile: str | None, space: Any) -> tuple[dict, dict]:
    """Per strategy: the dimensions searched and the options fixed (declared spaces with the file's changes)."""
    from ..strategies import STRATEGIES
    from ..strategies.space import Range, read_space_file, space_for

    changes = read_space_file(space, names)
    where = "" if space is None or isinstance(space, dict) else f"{space}: "
    dims, fixed = {}, {}
    for n in names:
        dims[n], fixed[n] = space_for(n, STRATEGIES[n][1], profile, changes.get(n), where)
        task.create_strategy(n, None, fixed[n])  # fixed values the config itself refuses fail now
        for key, dim in dims[n].items():  # and so do ranges and choices reaching values it refuses
            for value in ((dim.low, dim.high) if isinstance(dim, Range) else dim):
                try:
                    task.create_strategy(n, None, {**fixed[n], key: value})
                except TransferkitError as err:
                    raise TransferkitError(f"{where}{n}.{key}: {value!r} is out of bounds ({err})") from None
    return dims, fixed


def space_record(dims: dict, fixed: dict) -> dict[str, Any]:
    return {n: {"search": {k: (d.to_dict() if hasattr(d, "to_dict") else list(d)) for k, d in dims[n].items()},
                "fixed": fixed[n]} for n in dims}


def suggest(trial: Any, key: str, dim: Any) -> Any:
    from ..strategies.space import Range

    if isinstance(dim, Range):
        if isinstance(dim.low, int) and isinstance(dim.high, int):
            return trial.suggest_int(key, dim.low, dim.high, log=dim.log)
        return trial.suggest_float(key, dim.low, dim.high, log=dim.log)
    return trial.suggest_categorical(key, list(dim))


def trial_settings(trial: Any, names: list[str], dims: dict, fixed: dict) -> tuple[str, dict[str, Any]]:
    """The strategy and options a trial tries (``strategy`` and ``<strategy>.<option>`` in the study)."""
    name = trial.suggest_categorical("strategy", names) if len(names) > 1 else names[0]
    return name, {**fixed[name], **{k: suggest(trial, f"{name}.{k}", d) for k, d in dims[name].items()}}


def settings_of(params: dict[str, Any], names: list[str], fixed: dict) -> tuple[str, dict[str, Any]]:
    """A finished trial's params -> (strategy, options)."""
    name = params.get("strategy", names[0])
    return name, {**fixed[name], **{k.split(".", 1)[1]: v for k, v in params.items() if k.startswith(f"{name}.")}}


def objective_value(result: Any, train: Any) -> float:
    """The cross-validated estimate (mean fold score), or the kept epoch's validation score."""
    import math

    import numpy as np

    if result.cv is not None:
        return float(np.mean(result.cv.fold_scores))
    best = result.history.epochs[result.history.best_epoch]
    if best.val_acc is None or not math.isfinite(best.val_acc):
        raise TransferkitError("the trial's run has no validation score to compare")
    return float(best.val_acc)


def objective_text(train: Any, names: list[str]) -> str:
    """What the trials are scored on, in words (the study records it, so every worker scores alike)."""
    metric = "mAP" if train.multi_label else "balanced accuracy" if train.balanced else "accuracy"
    if train.cross_validated:
        from ..strategies.base import PROBE_FOLDS, TRAINED_FOLDS

        how = []
        n = len(train.train)
        if "linear" in names:
            how.append(f"{min(train.cv or PROBE_FOLDS, n)}-fold, repeated, for linear")
        if any(s != "linear" for s in names):
            how.append(f"{min(train.cv or TRAINED_FOLDS, n)}-fold for the trained strategies")
        return f"the cross-validated {metric} on the {len(train.train)} training examples ({', '.join(how)})"
    return f"the {metric} on the validation split ({len(train.val)} examples)"


def pruning(trial: Any, cross_validated: bool) -> Any:
    """A listener (:mod:`transferkit.engine.events`) reporting the trial's curve to Optuna and pruning on it."""
    import math

    import optuna

    folds: list[float] = []

    def listen(event: str, step: int, values: dict[str, Any]) -> None:
        if event == "fold" and values.get("stopped") == "time budget":
            raise optuna.TrialPruned(f"fold {step} was cut short by the budget")
        if cross_validated and event == "fold":
            folds.append(values["score"])
            value = sum(folds) / len(folds)
        elif not cross_validated and event == "epoch" and values.get("val_acc") is not None \
                and math.isfinite(values["val_acc"]):
            value = values["val_acc"]
        else:
            return
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"{'fold' if cross_validated else 'epoch'} {step + (0 if cross_validated else 1)}"
                                     f": {value:.3f}")

    return listen


def weights_digest(name: str) -> str | None:
    """A backbone folder's or checkpoint file's weights, hashed (new weights at the same path make another study);
    None for named hub or packaged weights, which the name fixes."""
    from ..io import file_digest

    path = Path(str(name))
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path] if path.is_file() else []
    return ",".join(file_digest(f)[:16] for f in files) or None


def data_identity(prepared: Any) -> str:
    from ..rundir import data_hashes

    text = json.dumps({"classes": prepared.classes, "parts": data_hashes(prepared)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_search(data: Any, db: Any, url: str, name: str, *, trials: int | None, seconds: float | None,
               started: float, out: Any, strategy: str, space: Any, pruner: str, seed: int, worker: bool,
               heartbeat: float, backbone: str | None, modality: str, val_fraction: float | None,
               test_fraction: float | None, cv: int | None, image_size: int | None, precision: str, skip_bad: bool,
               explain: bool, data_options: dict[str, Any], log_with: Any = None, log_dir: Any = None,
               run_file: Any = None) -> Any:
    from ..api import resolve
    from ..console import info
    from ..engine.accel import make_accelerator
    from ..engine.events import listening
    from ..tasks import RunSettings
    from .storage import claim_lock, shown
    from .trials import open_study, run_trials

    task, options = resolve(data, "classify", modality, data_options)
    names = strategy_list(strategy, task)
    spaces_for(names, task, task.strategies_for or task.modality, space)  # the file's problems before any data
    if test_fraction is None:
        test_fraction = 0.2  # without a given test set, one is held out to compare searched and default settings
    settings = RunSettings(backbone=backbone, strategy=names[0], seed=seed, skip_bad=skip_bad,
                           val_fraction=val_fraction, test_fraction=test_fraction, cv=cv, precision=precision,
                           image_size=image_size, explain=explain)
    task.check(settings, options)
    t_prepare = time.monotonic()
    prepared = task.prepare(data, backbone, settings, options)
    prepare_s = time.monotonic() - t_prepare
    task.check_prepared(prepared, settings, options)
    profile = getattr(prepared.backbone, "profile", task.strategies_for or task.modality)
    dims, fixed = spaces_for(names, task, profile, space)
    accelerator = make_accelerator(precision, seed=seed)
    base = task.train_task(prepared, settings, options, accelerator, None, None)
    base = dataclasses.replace(base, estimate_only=True)
    objective = objective_text(base, names)
    metric = "mAP" if base.multi_label else "balanced accuracy" if base.balanced else "accuracy"
    splits = {part: len(enc) for part, enc in prepared.encoded.items() if enc is not None}
    model = {"backbone": prepared.backbone.spec.name, "weights": weights_digest(prepared.backbone.spec.name),
             "precision": str(accelerator.mixed_precision),
             **{f"preprocess.{k}": v for k, v in prepared.backbone.preprocess.to_dict().items()}}
    attrs = {"data": data_identity(prepared), "source": str(data), "splits": splits, "task": task.name,
             "model": json.loads(json.dumps(model, default=str)), "strategies": names,
             "space": space_record(dims, fixed), "objective": objective, "metric": metric, "pruner": pruner,
             "heartbeat": heartbeat}
    ends_at = None if seconds is None else started + seconds  # this process's budget (a later call brings its own)

    def describe(a: dict[str, Any]) -> str:
        parts = ", ".join(f"{v} {k}" for k, v in (a.get("splits") or {}).items())
        return f"{a.get('source', '?')} ({parts}; data hash {a.get('data', '?')})"

    opened, created = open_study(db, name, trials=trials, default_trials=None if worker else DEFAULT_TRIALS,
                                 seed=seed, pruner=pruner, attrs=attrs, describe=describe,
                                 first=[{"strategy": n} for n in names] if len(names) > 1 else None)
    from .trials import study_attrs

    info(f"search: study {name!r} in {shown(url)} ({'created' if created else 'joined'}), "
         f"{study_attrs(opened)['trials']} trials scored on {objective}")

    def trial_deadline(reserve_s: float) -> float | None:  # a trial ends in time for the last two runs
        if ends_at is None:
            return None
        return time.monotonic() + max(0.0, ends_at - reserve_s - time.time())

    def reserve(typical: dict[str, float]) -> float:
        # the default and the final run: each reads the data again and, cross-validated, trains k folds and the final
        # model (a trial stops after the folds): about (k+1)/k of the slowest strategy's trial
        folds = base.cv or 3
        return 2.0 * (prepare_s + max(typical.values(), default=0.0) * (folds + 1) / folds)

    import optuna

    def run_trial(trial: Any) -> float:
        chosen, opts = trial_settings(trial, names, dims, fixed)
        strat = task.create_strategy(chosen, prepared.backbone, opts)
        from .trials import trial_seconds

        train = dataclasses.replace(base, deadline=trial_deadline(reserve(trial_seconds(opened))))
        info(f"trial {trial.number}: {chosen} " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                                             for k, v in opts.items()))
        from accelerate.utils import set_seed

        # every trial starts from the same random state (initialisation, shuffling, augmentation), as the final run
        # does: trials then differ by their settings only, not by where the random stream happened to be
        set_seed(seed)
        try:
            with listening(pruning(trial, train.cross_validated)):
                result = strat.fit(train)
        finally:  # pruned or failed too: Accelerate keeps every prepared model and optimizer otherwise
            accelerator.free_memory()
        if result.history is not None and result.history.stopped == "time budget":
            # a run cut short is not the settings' score: kept out of the choice of the best
            raise optuna.TrialPruned("cut short by the budget")
        return objective_value(result, train)

    from ..engine.tracking import run_files, tracking

    logged = {"command": "search", "data": str(data), "study": name, "trials": study_attrs(opened)["trials"],
              "strategies": ",".join(names), "pruner": pruner, "seed": seed, "objective": objective,
              "backbone": prepared.backbone.spec.name}
    with tracking(log_with, log_dir, out, name, logged) as tracker:
        t0 = time.monotonic()
        with tracker.listen(only=("trial",)) if tracker is not None else contextlib.nullcontext():
            done = run_trials(opened, db, run_trial, heartbeat=heartbeat, ends_at=ends_at, reserve=reserve,
                              lock=claim_lock(url), pruner=pruner)
        if worker:
            return done
        wait_for_others(opened, heartbeat, ends_at)
        model = finish(data, task, options, prepared, settings, opened, names, dims, fixed, out=out, url=url,
                       pruner=pruner, ends_at=ends_at, trial_s=time.monotonic() - t0,
                       objective=objective, metric=metric, base=base, tracker=tracker, run_file=run_file)
        if tracker is not None:
            s = model.metrics["search"]
            tracker.finish({"search": {"best": s["best"]["value"], "trials": s["trials"],
                                       "comparison": s.get("comparison") or {}},
                            "test": model.metrics.get("test") or {}}, run_files(Path(out)))
        return model


def run_file(call: dict[str, Any], metrics: dict[str, Any]) -> dict[str, bytes]:
    """The search's ``run.yaml`` (:mod:`transferkit.runfile`): ``call``, its arguments (the storage and study it
    used, without a password), with the backbone and precision the final run came to; and ``space.yaml`` for a
    space given in Python as a mapping."""
    import yaml

    from ..runfile import STUDY_NOTE, recorded, resolve_defaults, settings_file, where
    from .storage import without_password

    settings = recorded(call, drop=("labels", "worker"), spread="data_options", paths=("space", "backbone", "log_dir"))
    settings["storage"] = without_password(settings["storage"])
    if isinstance(settings["space"], dict):  # given in Python: the run folder keeps it as space.yaml
        settings["space"] = str(Path(where(call["out"])) / "space.yaml")
    resolve_defaults(settings, metrics)
    best = metrics["search"]["best"]
    resolved = {"task": metrics.get("task"), "strategy": metrics.get("strategy"), "best_trial": best["number"],
                "best_options": best["options"], "precision": metrics.get("precision"), "device": metrics.get("device")}
    files = {"run.yaml": settings_file(
        "search", call["data"], settings, resolved,
        note=f"The same study goes on where it stopped (its trials are kept): give --study NEW for a fresh search. "
             f"{STUDY_NOTE}")}
    if isinstance(call["space"], dict):
        files["space.yaml"] = yaml.safe_dump(call["space"], sort_keys=False).encode()
    return files


def wait_for_others(study: Any, heartbeat: float, ends_at: float | None) -> None:
    """Wait while other workers' trials run (a dead worker's is failed by the heartbeat check meanwhile)."""
    from optuna.trial import TrialState

    from .trials import fail_stale

    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if ends_at is not None and time.time() > ends_at + 3 * heartbeat:
            break
        fail_stale(study)
        time.sleep(min(heartbeat, 2.0))


def finish(data: Any, task: Any, options: Any, prepared: Any, settings: Any, study: Any, names: list[str],
           dims: dict, fixed: dict, *, out: Any, url: str, pruner: str, ends_at: float | None, trial_s: float,
           objective: str, metric: str, base: Any, tracker: Any = None, run_file: Any = None) -> Any:
    """Train the default settings and the best trial's on the same splits; the second is the result, its folder
    holding the search's record, ``search.json``, ``search.png`` and ``run_file(metrics)``'s files (run.yaml)."""
    from ..console import info, warn
    from ..io import jsonable
    from ..pipeline import run
    from .record import paired_difference, plot, top_spread, trial_rows
    from .storage import shown
    from .trials import study_attrs

    rows = trial_rows(study)
    complete = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    if not complete:
        errors = sorted({r["error"] for r in rows if r.get("error")})
        raise TransferkitError("No trial of the search finished"
                               + (f" (first error: {errors[0]})" if errors else " (all pruned, or the budget was too "
                                                                                "small for one trial)")
                               + ": give a larger --budget or fix the error.")
    best = study.best_trial
    best_name, best_options = settings_of(best.params, names, fixed)
    defaults_name = names[0] if len(names) == 1 else "auto"
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail", "waiting", "running")}
    record: dict[str, Any] = {
        "study": study.study_name, "storage": shown(url), "pruner": pruner, "sampler": "TPE",
        "objective": objective, "metric": metric, "space": study_attrs(study)["space"],
        "trials": {"planned": study_attrs(study)["trials"], "complete": counts["complete"],
                   "pruned": counts["pruned"], "failed": counts["fail"],
                   "retried": sum(r["retry_of"] is not None for r in rows), "queued": counts["waiting"]},
        "workers": len({r["worker"] for r in rows if r["worker"] and r["state"] in ("complete", "pruned", "fail")}),
        "seconds": round(trial_s, 1),
        "best": {"number": best.number, "value": float(best.value), "strategy": best_name, "options": best_options},
        "top": top_spread(rows),
    }

    def left(share: float) -> float | None:  # what the budget leaves, for the default run (half) and the final one
        if ends_at is None:
            return None
        return max(MIN_RUN_S, (ends_at - time.time()) * share)

    if ends_at is not None and ends_at - time.time() < 2 * MIN_RUN_S:
        warn(f"search: the budget is spent; the default and the final run get {MIN_RUN_S:.0f} s each, so the search "
             "ends after its --budget")

    test = prepared.encoded.get("test")
    part = "test" if test is not None else None
    info(f"search: training the default settings ({defaults_name}) on the same splits, to compare")
    defaults = run(data, task, dataclasses.replace(settings, strategy=defaults_name, strategy_options={}, out=None,
                                                   explain=False, seconds=left(0.5)), options)
    default_probs = defaults.predict_encoded(test, precision=settings.precision) if test is not None else None

    def add_record(model: Any, metrics: dict[str, Any]) -> dict[str, bytes]:
        """The record into the metrics and the bundle; search.json and search.png into the run folder."""
        if test is not None:
            import numpy as np

            y = test.targets.numpy()
            c = paired_difference(model.predict_encoded(test, precision=settings.precision), default_probs,
                                  np.asarray(y), base.balanced, seed=settings.seed)
            record["comparison"] = {**c, "part": part, "defaults_strategy": defaults_name}
        metrics["search"] = record
        # the bundle travels: where the study lives (a path, a user and host) stays in metrics.json
        model.meta.setdefault("metrics", {})["search"] = {k: v for k, v in record.items() if k != "storage"}
        files = {"search.json": json.dumps({**record, "table": rows}, indent=2, default=jsonable).encode(),
                 "search.png": plot(rows, metric)}
        return {**files, **(run_file(metrics) if run_file else {})}

    info(f"search: the final model: trial {best.number}'s settings ({best_name})")
    with tracker.listen() if tracker is not None else contextlib.nullcontext():  # the final run's curves
        model = run(data, task, dataclasses.replace(settings, out=Path(out), strategy=best_name,
                                                    strategy_options=best_options, seconds=left(1.0),
                                                    after_training=add_record), options)
    model.metrics["search"] = record
    return model
