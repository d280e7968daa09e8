"""Where a search's study lives: an Optuna RDB storage, SQLite on one machine (the default) or PostgreSQL shared by
workers on several machines. Opened (and reached) before any data is read, so a wrong URL costs seconds."""

from __future__ import annotations

import contextlib
import re
import time
import warnings
from pathlib import Path
from typing import Any

from ..errors import TransferkitError

DEFAULT_HEARTBEAT = 10  # seconds between a worker's "still alive" records while it runs a trial
GRACE_BEATS = 3  # a running trial whose worker has been silent this many heartbeats is failed and retried
MAX_RETRIES = 2  # a trial whose worker died is run again at most this often (then it stays failed)
CONNECT_TIMEOUT = 10  # seconds to reach a database server before giving up
SETUP_TRIES = 4  # attempts at opening a database whose tables another worker is creating at the same moment


def default_url(out: str | Path | None, name: str = "search.db") -> str:
    """``sqlite:///`` beside the run folder (``runs/search.db`` for ``--out runs/x``), or ``runs/search.db``."""
    from ..rundir import beside

    return f"sqlite:///{beside(out) / name}"


def shown(url: str) -> str:
    """The URL without its password, for messages and records: ``user:***@`` (a password may hold ``/`` or ``@``:
    the credentials end at the last ``@``) and ``password=***`` in the query."""
    scheme, sep, rest = str(url).partition("://")
    if not sep:
        return re.sub(r"(?i)(password=)[^&]*", r"\1***", str(url))
    query = ""
    if "?" in rest:
        rest, query = rest.split("?", 1)
        query = "?" + re.sub(r"(?i)((?:^|&)password=)[^&]*", r"\1***", query)
    creds, at, host = rest.rpartition("@")
    if at and ":" in creds:
        rest = f"{creds.split(':', 1)[0]}:***@{host}"
    return f"{scheme}://{rest}{query}"


def without_password(url: str) -> str:
    """The URL with its password left out (``user@host``; ``password=`` dropped from the query), for records that
    are read back as a URL (run.yaml): the driver then takes the password from ``PGPASSWORD`` or ``~/.pgpass``."""
    text = shown(url)
    text = re.sub(r"(?i)(?<=[?&])password=\*\*\*(&|$)", "", text).rstrip("?&")
    return text.replace(":***@", "@", 1)


def hide(text: str, url: str) -> str:
    """``text`` (a driver's message) with the URL's password taken out, wherever the driver repeated it."""
    scheme, _, rest = str(url).partition("://")
    creds = rest.split("?", 1)[0].rpartition("@")[0]
    secrets = [creds.split(":", 1)[1]] if ":" in creds else []
    secrets += re.findall(r"(?i)password=([^&]+)", rest)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def engine_url(url: str) -> tuple[str, dict[str, Any]]:
    """The SQLAlchemy URL and engine options for a ``--storage`` URL: ``postgresql://`` goes through psycopg 3 with
    a connection timeout; a SQLite file's folder is made. Anything else is refused in one line."""
    if not isinstance(url, str) or not url.strip():
        raise TransferkitError("--storage is empty: give sqlite:///path/search.db or postgresql://user@host/db.")
    url = url.strip()
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not path or path == ":memory:":
            raise TransferkitError(f"--storage {url}: give a file (sqlite:///runs/search.db); a study in memory "
                                   "would be lost with the process and shared with no worker.")
        where = Path(path)
        if where.is_dir():
            raise TransferkitError(f"--storage {url}: {where} is a folder; name a file in it, e.g. "
                                   f"sqlite:///{where / 'search.db'}.")
        try:
            where.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TransferkitError(f"--storage {url}: cannot make the folder {where.parent} ({err.strerror}).") \
                from None
        return url, {"connect_args": {"timeout": 60}}  # several writers wait for each other's commits
    if re.match(r"postgres(ql)?(\+psycopg)?://", url):
        url = re.sub(r"^postgres(ql)?(\+psycopg)?://", "postgresql+psycopg://", url)
        return url, {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}, "pool_pre_ping": True}
    raise TransferkitError(f"--storage {shown(url)}: use sqlite:///path/search.db (one machine) or "
                           "postgresql://user@host/db (workers on several machines).")


def open_storage(url: str, heartbeat: float = DEFAULT_HEARTBEAT) -> Any:
    """An Optuna ``RDBStorage`` on ``url``, reached now, with heartbeats every ``heartbeat`` seconds; a trial whose
    worker stops beating for :data:`GRACE_BEATS` of them is failed and queued again (at most :data:`MAX_RETRIES`
    times).

    Raises:
        TransferkitError: the URL is not SQLite or PostgreSQL, the server cannot be reached, or the database refuses.
    """
    import optuna

    target, engine_kwargs = engine_url(url)
    beat = max(1, int(round(heartbeat)))
    for attempt in range(SETUP_TRIES):
        try:
            with warnings.catch_warnings():  # heartbeat and retries are marked experimental by Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    target, engine_kwargs=engine_kwargs, heartbeat_interval=beat, grace_period=GRACE_BEATS * beat,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=MAX_RETRIES))
        except Exception as err:  # noqa: BLE001  (SQLAlchemy, psycopg and sqlite3 each raise their own)
            reason = " ".join(str(getattr(err, "orig", None) or err).split())[:200]
            # two workers starting on a new database both create Optuna's tables: the loser tries again
            if attempt + 1 < SETUP_TRIES and ("already exists" in reason or "duplicate" in reason.lower()):
                time.sleep(1.0 + attempt)
                continue
            what = "that it is an SQLite database file" if url.startswith("sqlite") else \
                "that the server runs and the URL is right"
            raise TransferkitError(f"Cannot open the study database {shown(url)}: {hide(reason, url)}. Check {what} "
                                   "(--storage).") from None
    raise AssertionError("unreachable")


@contextlib.contextmanager
def sqlite_lock(path: Path) -> Any:
    """An exclusive lock on ``path`` (a file beside the SQLite database) for the length of the block."""
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class claim_lock:
    """What guards taking a queued trial and failing a silent one. PostgreSQL locks the trial's row (``SELECT ... FOR
    UPDATE``); SQLite ignores that, and two processes could both read a trial as queued and both take it, so there
    a file lock beside the database serialises the few statements (workers on one machine; SQLite serves no other)."""

    def __init__(self, url: str):
        self.path = Path(url.removeprefix("sqlite:///") + ".lock") if url.startswith("sqlite:///") else None

    def __enter__(self) -> None:
        self.held = sqlite_lock(self.path) if self.path is not None else contextlib.nullcontext()
        self.held.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.held.__exit__(*exc)
