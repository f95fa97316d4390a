"""At most one log line per key a period: for lines anyone can cause as often as they like (a
refused connection, a malformed request, a device asking for tokens), so none can fill the disk."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class LogPace:
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds, self._clock = seconds, clock
        self._last: dict[Hashable, float] = {}  # key -> when its last line was let through

    def due(self, key: Hashable = None) -> bool:
        """Whether a line about `key` may be logged now (and, if so, count it as logged)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._seconds:
            return False
        self._last[key] = now
        return True
