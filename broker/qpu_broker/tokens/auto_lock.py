"""`agent.auto_lock_seconds`: lock an agent nobody has used for that long.

Use is what the wire layer reports (`Activity.touch`): any call of ours except
the read-only ones a status bar or health probe makes all day, which must not
keep the key in memory. The clock is injected; the loop checks four times per
period.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from qpu_broker.tokens.agent_lock import AgentLock

log = logging.getLogger(__name__)


class Activity:
    """When the agent was last used (monotonic seconds)."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self.last = monotonic()

    def touch(self) -> None:
        self.last = self._monotonic()

    def idle(self) -> float:
        return self._monotonic() - self.last


async def auto_lock(agent: AgentLock, activity: Activity, limit: Callable[[], float], stop: asyncio.Event) -> None:
    """`limit()` is read on every round, so a reloaded config applies at once (0: never)."""
    while not stop.is_set():
        seconds = limit()
        try:
            await asyncio.wait_for(stop.wait(), max(0.05, min(seconds / 4, 5.0)) if seconds else 5.0)
        except TimeoutError:
            pass
        seconds = limit()
        if seconds and not agent.locked and activity.idle() >= seconds:
            agent.lock(f"locked after {seconds:g} s unused (agent.auto_lock_seconds): run 'qpu-broker unlock'")
            log.info("auto-lock: unused for %.0f s", activity.idle())
