"""``transferkit compare --storage URL --workers N`` (or ``--worker`` started on other machines): the grid's runs
spread over workers through a database instead of one loop.

Each (budget, seed, strategy) of the grid is one trial of an Optuna study, queued once by the first process, and
taken by one worker as a search's trials are (:mod:`transferkit.studies.trials`: a row lock, or a file lock on
SQLite; heartbeats; a dead worker's run queued again). A finished run's record (what ``--resume`` keeps in
``runs/``) is stored in its trial, so the process with ``--out`` collects every worker's runs into the same report,
and running the same command again goes on where the study stopped (the resume guarantee of ``--resume``: a
finished run is never run again, an unfinished one is).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from typing import Any

from ..console import info, warn
from ..errors import TransferkitError
from .runs import comparison_identity, run_key


def run_queued(plan: list[tuple[Any, int, str]], config: dict[str, Any], one_run: Callable[[Any, int, str], dict],
               *, db: Any, url: str, study: str, worker: bool, heartbeat: float, tracker: Any = None,
               ) -> tuple[list[dict], list[dict]] | None:
    """Run the grid's queued runs here until none is left, then (unless ``worker``) collect every run of the study:
    ``(runs, failed)`` in the grid's order. A worker returns None."""
    from optuna.trial import TrialState

    from ..io import jsonable
    from ..studies import wait_for_others
    from ..studies.storage import claim_lock
    from ..studies.trials import open_study, run_trials

    cells = [{"budget": str(b), "seed": s, "strategy": n} for b, s, n in plan]
    budgets = {str(b): b for b, _, _ in plan}
    names = list(dict.fromkeys(n for _, _, n in plan))
    seeds = max(s for _, s, _ in plan) + 1
    identity = json.dumps(comparison_identity(config), sort_keys=True, default=str)
    attrs = {"data": hashlib.sha256(identity.encode()).hexdigest()[:16], "source": config["data"],
             "splits": {"pool": config["pool_n"], "test": config["test_n"]}, "task": "compare",
             "strategies": names, "objective": config["metric"], "heartbeat": heartbeat}

    def describe(a: dict[str, Any]) -> str:
        return f"a comparison of {a.get('source', '?')} (settings hash {a.get('data', '?')})"

    opened, created = open_study(db, study, trials=len(cells), default_trials=None, seed=0, pruner="none",
                                 attrs=attrs, describe=describe, first=cells)
    info(f"compare: {len(cells)} runs in study {study!r} ({'created' if created else 'joined'})")

    def objective(trial: Any) -> float:
        b = trial.suggest_categorical("budget", list(budgets))
        s = trial.suggest_int("seed", 0, seeds - 1)
        name = trial.suggest_categorical("strategy", names)
        info(f"compare: run {trial.number + 1}/{len(cells)}: {name}, {b} labels per class, seed {s}")
        run = one_run(budgets[b], s, name)
        trial.set_user_attr("run", json.loads(json.dumps(run, default=jsonable)))
        return float(run["score"])

    with tracker.listen(only=("trial",)) if tracker is not None else contextlib.nullcontext():
        run_trials(opened, db, objective, heartbeat=heartbeat, ends_at=None, reserve=lambda typical: 0.0,
                   lock=claim_lock(url), pruner="none")
    if worker:
        return None
    wait_for_others(opened, heartbeat, None)
    finished: dict[str, dict] = {}
    errors: dict[str, str] = {}
    for t in opened.get_trials(deepcopy=False):
        key = run_key(t.params.get("budget"), t.params.get("seed"), t.params.get("strategy"))
        if t.state == TrialState.COMPLETE and "run" in t.user_attrs:
            finished[key] = t.user_attrs["run"]
        elif t.state == TrialState.FAIL and t.user_attrs.get("error"):
            errors[key] = t.user_attrs["error"]
    runs, failed = [], []
    for b, s, name in plan:
        key = run_key(b, s, name)
        if key in finished:
            runs.append(finished[key])
            if tracker is not None:
                tracker.log({f"run/{name}/budget_{b}": finished[key]["score"]}, step=s)
        elif key in errors:
            warn(f"compare: {name}, {b} labels per class, seed {s} failed: {errors[key]}")
            failed.append({"budget": str(b), "seed": s, "strategy": name, "failed": errors[key]})
    missing = len(plan) - len(runs) - len(failed)
    if missing:
        raise TransferkitError(f"compare: {missing} run(s) of study {study!r} are neither finished nor failed (a "
                               "worker still runs them, or stopped more often than retries allow): run the same "
                               "command again to go on.")
    return runs, failed
