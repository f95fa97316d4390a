"""How many long-lived streams one user may hold open on this server, per kind: push streams
(Watch), usage followers (FollowUsage) and relay streams (Relay). Each open stream costs the server a task and its
reads, so one member's streams must not grow without bound at the others' expense."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator

from qpu_broker_client.errors import ResourceExhaustedError

# Per user, per kind, per server: one per daemon (a member's laptop, workstation, CI runners),
# or one per terminal following the usage record.
STREAMS_PER_USER = 16


class StreamSlots:
    """The open streams of one kind, counted by user."""

    def __init__(self, what: str, advice: str, limit: int = STREAMS_PER_USER) -> None:
        self._what, self._advice, self._limit = what, advice, limit
        self._open: collections.Counter[str] = collections.Counter()

    def take(self, name: str) -> None:
        """One more for `name`, or RESOURCE_EXHAUSTED; each take is given back once (`give_back`)."""
        if self._open[name] >= self._limit:
            raise ResourceExhaustedError(f"{name!r} has {self._limit} {self._what} open on this server already: "
                                         f"{self._advice}")
        self._open[name] += 1

    def give_back(self, name: str) -> None:
        self._open[name] -= 1
        if self._open[name] <= 0:
            del self._open[name]

    @contextlib.contextmanager
    def held(self, name: str) -> Iterator[None]:
        self.take(name)
        try:
            yield
        finally:
            self.give_back(name)
