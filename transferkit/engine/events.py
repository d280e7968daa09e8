"""What a run reports while it trains, for whoever runs it: each epoch's record and each cross-validation fold's
score. A search trial prunes on them (:mod:`transferkit.studies`); a tracker logs them.

The engine and the strategies only call :func:`notify`; a caller listens for the length of a block::

    with listening(lambda event, step, values: print(event, step, values)):
        strategy.fit(task)

Events: ``"epoch"`` (step: the epoch, from 0; values: the epoch record, e.g. ``train_loss``, ``val_acc``) from
:func:`transferkit.engine.trainer.fit`, and ``"fold"`` (step: the fold, from 1; values: ``score``, the fold's held-out
score at its best epoch, ``epochs``) from :class:`transferkit.strategies.crossval.CrossValidated`. A listener may
raise to stop the run (a pruned trial); the exception leaves through the strategy's ``fit``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

Listener = Callable[[str, int, dict[str, Any]], None]

_LISTENERS: ContextVar[tuple[Listener, ...]] = ContextVar("transferkit_listeners", default=())


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call ``listener(event, step, values)`` for every event notified inside the block (nested blocks add up)."""
    token = _LISTENERS.set(_LISTENERS.get() + (listener,))
    try:
        yield
    finally:
        _LISTENERS.reset(token)


def notify(event: str, step: int, values: dict[str, Any]) -> None:
    """Tell every listener of this context about ``event`` at ``step``."""
    for listener in _LISTENERS.get():
        listener(event, step, values)
