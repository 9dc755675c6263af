"""One deadline per query request, shared by every store query the request makes.

A request runs in one worker thread, so the deadline is thread-local: ``deadline(timeout_s)`` around the work,
``store_settings()`` for each store query (ClickHouse's ``max_execution_time`` from what is left; raises
``DeadlineExceeded`` once it has passed). Without it, a query the client has long given up on keeps running in the
worker pool: an HTTP timeout only stops the waiting, not the work.
"""
from __future__ import annotations

import math
import threading
import time
from contextlib import contextmanager

_local = threading.local()


class DeadlineExceeded(Exception):
    """The request's time is up."""


@contextmanager
def deadline(timeout_s: float):
    """Set the deadline of this thread's request; a nested call keeps the outer (earlier) one."""
    if getattr(_local, "at", None) is not None:
        yield
        return
    _local.at = time.monotonic() + timeout_s
    try:
        yield
    finally:
        _local.at = None


def store_settings() -> dict | None:
    """Settings that end a store query at the deadline (None outside any); raises when it has passed."""
    at = getattr(_local, "at", None)
    if at is None:
        return None
    left = at - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded()
    return {"max_execution_time": max(1, math.ceil(left))}


def is_timeout(err: BaseException) -> bool:
    """Whether a store error is ClickHouse ending a query at ``max_execution_time``."""
    msg = str(err)
    return "TIMEOUT_EXCEEDED" in msg or "Timeout exceeded" in msg


class DeadlineStore:
    """A store whose queries carry the current request's deadline (for code that takes a store, like
    ``StoreSeriesSource``); everything else is the wrapped store's."""

    def __init__(self, store) -> None:
        self._store = store
        self.database = store.database

    def query(self, sql: str, parameters: dict | None = None, settings: dict | None = None):
        limit = store_settings()
        return self._store.query(sql, parameters=parameters, settings={**(settings or {}), **(limit or {})})

    def __getattr__(self, name):
        return getattr(self._store, name)
