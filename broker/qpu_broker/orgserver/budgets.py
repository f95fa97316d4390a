"""What one member may ask of the org server's usage record per second: records reported, and
reads. Each is a token bucket per member (a burst at once, refilled at a rate), so one member's
flood costs the others nothing: past it a call is RESOURCE_EXHAUSTED, or a follower waits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from qpu_broker_client.errors import ResourceExhaustedError

# Records one member may report: a daemon sends what it made (a busy one: tens a second; after an
# outage, its backlog, which waits on its disk when refused); a flood is refused, not stored.
REPORT_RATE, REPORT_BURST = 200.0, 20_000
# Usage reads one member may make (ListUsage calls, and a follower's reads while it catches up):
# each examines at most USAGE_SCAN_MAX rows, so this bounds the rows one member has read a second;
# a listing of a long record pages on at this pace after its first READ_BURST pages.
READ_RATE, READ_BURST = 10.0, 100


class Budget:
    """`burst` units per member at once, refilled at `rate` a second; `refusal` is the message past
    it (formatted with `member` and `rate`)."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float], refusal: str) -> None:
        self._rate, self._burst, self._clock, self._refusal = rate, burst, clock, refusal
        self._left: dict[str, tuple[float, float]] = {}  # member -> (units left, when)

    def _wait(self, member: str, count: float) -> float:
        """Take `count` now and return 0, or take nothing and return the seconds until they are there."""
        now = self._clock()
        left, then = self._left.get(member, (self._burst, now))
        left = min(self._burst, left + (now - then) * self._rate)
        if count > left:
            self._left[member] = (left, now)
            return (count - left) / self._rate
        self._left[member] = (left - count, now)
        return 0.0

    def take(self, member: str, count: float = 1) -> None:
        """Take `count`, or RESOURCE_EXHAUSTED (nothing taken)."""
        if self._wait(member, count):
            raise ResourceExhaustedError(self._refusal.format(member=repr(member), rate=f"{self._rate:.0f}"))

    async def wait(self, member: str) -> None:
        """Take one, waiting for it if need be; yields to the loop either way (other callers' turn)."""
        while delay := self._wait(member, 1):
            await asyncio.sleep(delay)
        await asyncio.sleep(0)
