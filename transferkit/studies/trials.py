"""The study every worker shares, and the loop each worker runs.

Exactly the requested trials, however many workers: the process that creates the study queues that many trials
(Optuna's WAITING state) before it marks the study ready, and a worker only ever takes a queued trial (the
database's row lock lets one worker win each), never asks for a new one. A worker beats a heartbeat while its trial
runs; when a worker dies, another finds its trial silent (3 heartbeats), marks it failed, and Optuna's retry
callback queues the same settings again, which a living worker then runs. So the study ends with the requested
number of finished trials (complete or pruned), plus a failed one for each retried crash.
"""

from __future__ import annotations

import os
import socket
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from ..console import info, warn
from ..errors import TransferkitError

READY = "transferkit.ready"
ATTR = "transferkit."  # the study's user attributes set by transferkit carry this prefix
READY_WAIT = 60.0  # seconds a joining worker waits for the creating process to queue the trials


def quiet_optuna() -> None:
    """Optuna's per-trial log lines off (the search prints its own)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_pruner(name: str) -> Any:
    import optuna

    if name == "median":  # a trial below the median of earlier trials at the same step stops
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise TransferkitError(f"Pruner {name!r} is unknown: choose median, halving or none.")


def make_sampler(seed: int, trials: int) -> Any:
    """TPE, seeded; its first trials (a third, 3 to 10) are drawn at random to give it something to model."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, trials // 3)))


def open_study(storage: Any, name: str, *, trials: int | None, seed: int, pruner: str, attrs: dict[str, Any],
               describe: Callable[[dict[str, Any]], str],
               first: list[dict[str, Any]] | None = None) -> tuple[Any, bool]:
    """Create the study ``name`` with ``trials`` queued and ``attrs`` recorded, or join it if it exists. ``first``:
    settings fixed in the first queued trials (e.g. each strategy once, so every one is tried whatever the sampler
    draws); the rest are the sampler's.

    Joining checks what the study was made for: ``attrs["data"]`` (the data's hash) and ``attrs["space"]`` must
    match, else the study is refused in one line (``describe(study attrs)`` names what it was made for).

    Returns:
        ``(study, created)``.
    """
    import optuna

    quiet_optuna()
    planned = trials
    try:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                    sampler=make_sampler(seed, planned or 10), pruner=make_pruner(pruner))
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        created = False
    if created:
        if planned is None:
            raise TransferkitError(f"Study {name!r} does not exist yet: the first process of a search says how many "
                                   "trials it holds (--trials).")
        for key, value in attrs.items():
            study.set_user_attr(ATTR + key, value)
        study.set_user_attr(ATTR + "trials", planned)
        fixed = list(first or [])[:planned]
        for i in range(planned):
            study.enqueue_trial(fixed[i] if i < len(fixed) else {}, skip_if_exists=False)
        study.set_user_attr(READY, True)  # last: a joining worker waits for it
        return study, True

    waited = time.monotonic()
    study_id = storage.get_study_id_from_name(name)
    while not (got := storage.get_study_user_attrs(study_id)).get(READY):
        if time.monotonic() - waited > READY_WAIT:
            raise TransferkitError(f"Study {name!r} exists but was never made ready (its first process stopped while "
                                   "queueing trials, or it was not made by transferkit search): choose another "
                                   "--study name.")
        time.sleep(1.0)
    theirs = {k.removeprefix(ATTR): v for k, v in got.items() if k.startswith(ATTR)}
    if "data" not in theirs:
        raise TransferkitError(f"Study {name!r} was not made by transferkit search: choose another --study name.")
    if theirs["data"] != attrs["data"]:
        raise TransferkitError(f"Study {name!r} searches {describe(theirs)}; this run's data are "
                               f"{describe(attrs)}: choose another --study name for these data.")
    for key in ("task", "space", "objective"):
        if theirs.get(key) != attrs.get(key):
            raise TransferkitError(f"Study {name!r} was made with another {key} ({theirs.get(key)!r}, here "
                                   f"{attrs.get(key)!r}): give the same settings, or another --study name.")
    if planned is not None and planned != theirs.get("trials"):
        raise TransferkitError(f"Study {name!r} holds {theirs.get('trials')} trials; this run asks for {planned}: "
                               f"give --trials {theirs.get('trials')} (or leave it out to join), or another --study "
                               "name.")
    study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(seed, theirs["trials"]),
                              pruner=make_pruner(pruner))
    return study, False


def study_attrs(study: Any) -> dict[str, Any]:
    """What transferkit recorded on the study (without the prefix)."""
    return {k.removeprefix(ATTR): v for k, v in study.user_attrs.items() if k.startswith(ATTR)}


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """Records ``trial_id``'s heartbeat every ``interval`` seconds on a daemon thread while the trial runs."""

    def __init__(self, storage: Any, trial_id: int, interval: float):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.beat, daemon=True, name=f"heartbeat-{trial_id}")

    def beat(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # noqa: BLE001  (a missed beat only risks a retry; the next one may get through)
                pass

    def __enter__(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


def fail_stale(study: Any) -> None:
    """Fail the running trials whose workers went silent; their retries are queued (Optuna's callback)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def take_queued(study: Any, storage: Any) -> tuple[Any, int] | None:
    """A queued trial, now RUNNING and this worker's, with its storage id; None when the queue is empty."""
    import optuna
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):  # one worker wins the row
                return optuna.trial.Trial(study, trial_id), trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def trial_seconds(study: Any) -> float | None:
    """The median wall time of the study's finished trials (any worker), or None before the first."""
    from optuna.trial import TrialState

    done = [t.duration.total_seconds() for t in study.get_trials(deepcopy=False,
                                                                   states=(TrialState.COMPLETE, TrialState.PRUNED))
            if t.duration is not None]
    return statistics.median(done) if done else None


def run_trials(study: Any, storage: Any, objective: Callable[[Any], float], *, heartbeat: float, ends_at: float | None,
               reserve: Callable[[float | None], float]) -> dict[str, int]:
    """Take queued trials and run them until the queue is empty and no other worker's trial runs, or until the next
    trial would end after ``ends_at`` (a ``time.time()``) less ``reserve(median trial seconds)``.

    ``objective(trial)`` returns the value to maximise, raises ``optuna.TrialPruned``, or raises
    :class:`TransferkitError` (the trial is marked failed with the reason, and the search goes on).

    Returns:
        What this worker did: ``{"complete": n, "pruned": n, "failed": n}``.
    """
    import optuna
    from optuna.trial import TrialState

    done = {"complete": 0, "pruned": 0, "failed": 0}
    me = worker_name()
    while True:
        fail_stale(study)
        typical = trial_seconds(study)
        if ends_at is not None and time.time() + (typical or 0.0) + reserve(typical) > ends_at:
            left = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            if left:
                info(f"search: the budget leaves no time for another trial; {left} stay queued (run the same "
                     "command with a larger --budget to go on)")
            break
        taken = take_queued(study, storage)
        if taken is None:
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                break
            time.sleep(heartbeat)  # another worker's trial runs: if its worker dies, its retry comes back here
            continue
        trial, trial_id = taken
        trial.set_user_attr("worker", me)
        t0 = time.monotonic()
        with Heartbeat(storage, trial_id, heartbeat):
            try:
                value = objective(trial)
            except optuna.TrialPruned as err:
                study.tell(trial, state=TrialState.PRUNED)
                done["pruned"] += 1
                info(f"trial {trial.number}: pruned ({err or 'below the median of earlier trials'}) after "
                     f"{time.monotonic() - t0:.0f} s")
                continue
            except TransferkitError as err:
                trial.set_user_attr("error", str(err))
                study.tell(trial, state=TrialState.FAIL)
                done["failed"] += 1
                warn(f"trial {trial.number} failed: {err}")
                continue
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)  # interrupted here: the trial is not left RUNNING
                raise
        study.tell(trial, value)
        done["complete"] += 1
        best = study.best_value
        info(f"trial {trial.number}: {value:.4f} in {time.monotonic() - t0:.0f} s (best so far {best:.4f})")
    return done
