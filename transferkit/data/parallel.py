"""Work spread over a thread pool, read back in order with a bounded number of results waiting."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def in_order(pool: ThreadPoolExecutor, fn: Callable[[Any], Any], items: Iterable[Any],
             ahead: int = 64) -> Iterator[Any]:
    """``pool.map(fn, items)`` with at most ``ahead`` items in flight. ``Executor.map`` submits every item at once
    and holds each finished result until it is read, so decoded images pile up whenever the reader falls behind: 60,000
    Fashion-MNIST images decoded into the file store peaked at 2.7 GB that way."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
