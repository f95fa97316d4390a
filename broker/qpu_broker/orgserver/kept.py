"""Store reads kept for the calls that follow, a moment at most: a device's standing (every
call's), a relay token's row (every relayed call's).

A kept read is dropped as soon as an event says it changed (the server's pump: after this
server's own writes; on SQLite before any call once another process committed, so the CLI's
changes bind the next call; on PostgreSQL when another replica's NOTIFY arrives), and read anew
after KEPT_SECONDS whatever happens to events. So a change binds every replica's calls within
milliseconds while events flow, and within KEPT_SECONDS if they do not: inside the 2 s the
contract allows for a removal or a revocation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

KEPT_SECONDS = 1.0  # how long a read is reused at most
KEPT_MAX = 10_000  # reads kept at most (past that, every one is read anew)
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Kept(Generic[K, V]):
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._kept: dict[K, tuple[V, float]] = {}

    def get(self, key: K, read: Callable[[], V | None]) -> V | None:
        """The value kept for `key`, or `read()` now (kept unless None; what it raises is not kept).
        `read` is synchronous: no event is applied between it and keeping its answer."""
        now = self._monotonic()
        kept = self._kept.get(key)
        if kept is not None and now - kept[1] < KEPT_SECONDS:
            return kept[0]
        value = read()
        if value is None:
            self._kept.pop(key, None)
        else:
            if len(self._kept) >= KEPT_MAX:
                self._kept.clear()
            self._kept[key] = (value, now)
        return value

    def drop(self, which: Callable[[K, V], bool]) -> None:
        """An event said these changed: the next call reads them anew."""
        for key in [k for k, (v, _) in self._kept.items() if which(k, v)]:
            del self._kept[key]

    def clear(self) -> None:
        self._kept.clear()
