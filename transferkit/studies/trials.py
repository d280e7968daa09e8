"""The study every worker shares, and the loop each worker runs.

Exactly the requested trials, however many workers: the process that creates the study queues that many trials
(Optuna's WAITING state) before it marks the study ready, and a worker only ever takes a queued trial (the
database's row lock lets one worker win each), never asks for a new one. A worker beats a heartbeat while its trial
runs; when a worker dies, another finds its trial silent (3 heartbeats), marks it failed, and Optuna's retry
callback queues the same settings again, which a living worker then runs. So the study ends with the requested
number of finished trials (complete or pruned), plus a failed one for each retried crash.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from ..console import info, warn
from ..engine.events import notify
from ..errors import MissingExtraError, TransferkitError
from .storage import GRACE_BEATS, MAX_RETRIES

READY = "transferkit.ready"
ATTR = "transferkit."  # the study's user attributes set by transferkit carry this prefix
READY_WAIT = 300.0  # seconds a joining worker waits for the creating process to queue the trials


def quiet_optuna() -> None:
    """Optuna's per-trial log lines off (the search prints its own)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_pruner(name: str) -> Any:
    import optuna

    if name == "median":  # from the third step on (epoch 3, fold 2), a trial below the median of earlier ones stops
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise TransferkitError(f"Pruner {name!r} is unknown: choose median, halving or none.")


def make_sampler(seed: int, trials: int) -> Any:
    """TPE, seeded; its first trials (a third, 3 to 10) are drawn at random to give it something to model. With
    several workers, the trials others are running count as bad (the constant liar), so workers spread out."""
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, trials // 3)), constant_liar=True)


def open_study(storage: Any, name: str, *, trials: int | None, default_trials: int | None, seed: int, pruner: str,
               attrs: dict[str, Any], describe: Callable[[dict[str, Any]], str],
               first: list[dict[str, Any]] | None = None) -> tuple[Any, bool]:
    """Create the study ``name`` with ``trials`` (or ``default_trials``) queued and ``attrs`` recorded, or join it if
    it exists (``trials`` None: whatever it holds). ``first``:
    settings fixed in the first queued trials (e.g. each strategy once, so every one is tried whatever the sampler
    draws); the rest are the sampler's.

    Joining checks what the study was made for: ``attrs["data"]`` (the data's hash) and ``attrs["space"]`` must
    match, else the study is refused in one line (``describe(study attrs)`` names what it was made for).

    Returns:
        ``(study, created)``.
    """
    import optuna

    quiet_optuna()
    planned = trials if trials is not None else default_trials
    created = False
    if planned is not None:
        try:
            study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                        sampler=make_sampler(seed, planned), pruner=make_pruner(pruner))
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            pass
    if created:
        try:
            for key, value in attrs.items():
                study.set_user_attr(ATTR + key, value)
            study.set_user_attr(ATTR + "trials", planned)
            fixed = list(first or [])[:planned]
            if planned > 100:
                info(f"queueing {planned} trials in study {name!r}")
            for i in range(planned):
                study.enqueue_trial(fixed[i] if i < len(fixed) else {}, skip_if_exists=False)
            study.set_user_attr(READY, True)  # last: a joining worker waits for it
        except BaseException:  # a half-made study would block its name: it goes
            with contextlib.suppress(Exception):
                optuna.delete_study(study_name=name, storage=storage)
            raise
        return study, True

    waited = time.monotonic()
    while True:  # a worker may start before the process that makes the study: it waits for it to be ready
        try:
            got = storage.get_study_user_attrs(storage.get_study_id_from_name(name))
        except KeyError:
            got = None
        if got is not None and got.get(READY):
            break
        if time.monotonic() - waited > READY_WAIT:
            if got is None:
                raise TransferkitError(f"Study {name!r} does not exist in this database: start the search's first "
                                       "process with --trials N (a --worker without --trials only joins).")
            raise TransferkitError(f"Study {name!r} exists but was never made ready (its first process stopped while "
                                   "queueing trials, or it was not made by transferkit search): choose another "
                                   "--study name.")
        time.sleep(1.0)
    theirs = {k.removeprefix(ATTR): v for k, v in got.items() if k.startswith(ATTR)}
    if "data" not in theirs:
        raise TransferkitError(f"Study {name!r} was not made by transferkit search: choose another --study name.")
    if theirs["data"] != attrs["data"]:
        raise TransferkitError(f"Study {name!r} was made for {describe(theirs)}; this run is for "
                               f"{describe(attrs)} (the same data split otherwise? --seed, --val-fraction and "
                               "--test-fraction must match too): choose another --study name.")
    for key, what in (("task", "task"), ("model", "backbone, preprocessing or precision"),
                      ("strategies", "list of strategies"), ("space", "search space"), ("objective", "objective"),
                      ("pruner", "--pruner"), ("heartbeat", "--heartbeat")):
        if key in attrs and theirs.get(key) != attrs.get(key):
            raise TransferkitError(f"Study {name!r} was made with another {what} "
                                   f"({short_text(theirs.get(key))}; here {short_text(attrs.get(key))}): give the "
                                   "same settings, or another --study name.")
    if trials is not None and trials != theirs.get("trials"):
        raise TransferkitError(f"Study {name!r} holds {theirs.get('trials')} trials; this run asks for {trials}: "
                               f"give --trials {theirs.get('trials')} (or leave it out to join), or another --study "
                               "name.")
    # a joining worker draws its own settings: the same seed would repeat the first worker's draws one by one
    study = optuna.load_study(study_name=name, storage=storage, pruner=make_pruner(pruner),
                              sampler=make_sampler(seed + 1 + os.getpid() % 100_000, theirs["trials"]))
    return study, False


def short_text(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


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


def take_queued(study: Any, storage: Any, lock: Any) -> tuple[Any, int] | None:
    """A queued trial, now RUNNING and this worker's (its first heartbeat recorded at once, so a crash from here on
    leaves a trial the others can find silent), with its storage id; None when the queue is empty."""
    import optuna
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    with lock:
        for frozen in storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.WAITING,)):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
            try:
                won = storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)  # one worker wins the row
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            if won:
                storage.record_heartbeat(trial_id)
                return optuna.trial.Trial(study, trial_id), trial_id
    return None


def retry(study: Any, storage: Any, trial_id: int) -> None:
    """Fail a trial this worker cannot finish (interrupted) and queue its settings again, as for a dead worker's."""
    import optuna
    from optuna.trial import TrialState

    try:
        storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return  # another worker already failed it (and queued its retry)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, storage.get_trial(trial_id))


def taken_away(study: Any, storage: Any, trial_id: int, number: int) -> bool:
    """Whether another worker already failed this trial as silent (this worker's heartbeat did not reach the
    database for 3 beats) and queued it again: then its result here is dropped, with a warning."""
    from optuna.trial import TrialState

    if storage.get_trial(trial_id).state == TrialState.RUNNING:
        return False
    warn(f"trial {number} was failed by another worker while it ran here (its heartbeat was not seen for "
         f"{GRACE_BEATS} beats) and runs again elsewhere; this worker's result is dropped")
    return True


def trial_seconds(study: Any) -> dict[str, float]:
    """The median wall time of the study's complete trials (any worker), per strategy ({} before the first)."""
    from optuna.trial import TrialState

    by: dict[str, list[float]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.duration is not None:
            by.setdefault(str(t.params.get("strategy", "")), []).append(t.duration.total_seconds())
    return {k: statistics.median(v) for k, v in by.items()}


def run_trials(study: Any, storage: Any, objective: Callable[[Any], float], *, heartbeat: float, ends_at: float | None,
               reserve: Callable[[dict[str, float]], float], lock: Any, pruner: str) -> dict[str, int]:
    """Take queued trials and run them until the queue is empty and no other worker's trial runs, or until the next
    trial would end after ``ends_at`` (a ``time.time()``) less ``reserve(median seconds per strategy)``.

    ``objective(trial)`` returns the value to maximise or raises ``optuna.TrialPruned``; any other error fails the
    trial (its reason kept in the trial's ``error``) and the search goes on. An interrupted trial (Ctrl-C) is failed
    and queued again before the interruption goes on. ``lock`` guards taking and failing trials where the database
    has no row locks (SQLite: :func:`transferkit.studies.storage.claim_lock`).

    Returns:
        What this worker did: ``{"complete": n, "pruned": n, "failed": n}``.
    """
    import optuna
    from optuna.trial import TrialState

    done = {"complete": 0, "pruned": 0, "failed": 0}
    me = worker_name()
    while True:
        with lock:
            fail_stale(study)
        typical = trial_seconds(study)
        slowest = max(typical.values(), default=0.0)
        if ends_at is not None and time.time() + slowest + reserve(typical) > ends_at:
            left = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            if left:
                info(f"search: the budget leaves no time for another trial; {left} stay queued (run the same "
                     "command with a larger --budget to go on)")
            break
        taken = take_queued(study, storage, lock)
        if taken is None:
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                break
            time.sleep(min(heartbeat, 2.0))  # another worker's trial runs: if its worker dies, its retry comes here
            continue
        trial, trial_id = taken
        t0 = time.monotonic()
        with Heartbeat(storage, trial_id, heartbeat):
            try:
                trial.set_user_attr("worker", me)
                value = objective(trial)
            except optuna.TrialPruned as err:
                if taken_away(study, storage, trial_id, trial.number):
                    continue
                study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
                done["pruned"] += 1
                notify("trial", trial.number, {"pruned": 1, "seconds": time.monotonic() - t0})
                info(f"trial {trial.number}: pruned ({err}) after {time.monotonic() - t0:.0f} s")
                continue
            except Exception as err:  # noqa: BLE001  (a trial's failure, whatever raised it, is the trial's)
                if taken_away(study, storage, trial_id, trial.number):
                    continue
                if isinstance(err, optuna.exceptions.StorageInternalError):
                    raise  # the database itself failed: the search cannot go on (said in one line by the caller)
                if isinstance(err, MissingExtraError):  # this worker lacks a package: not the trial's failure
                    retry(study, storage, trial_id)  # queued again for a worker that has it, or a later call
                    raise
                reason = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
                trial.set_user_attr("error", reason)
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
                done["failed"] += 1
                warn(f"trial {trial.number} failed: {reason}")
                continue
            except BaseException:
                retry(study, storage, trial_id)  # interrupted: failed and queued again, never left RUNNING
                raise
        if taken_away(study, storage, trial_id, trial.number):
            continue
        frozen = study.tell(trial, value, skip_if_finished=True)
        if frozen.state != TrialState.COMPLETE:  # a NaN value, or another worker failed it meanwhile
            done["failed"] += 1
            warn(f"trial {trial.number}: its value {value} was not recorded ({frozen.state.name.lower()})")
            continue
        done["complete"] += 1
        seconds = time.monotonic() - t0
        info(f"trial {trial.number}: {value:.4f} in {seconds:.0f} s (best so far {study.best_value:.4f})")
        notify("trial", trial.number, {"value": value, "best": study.best_value, "seconds": seconds})
    return done
