"""Where this daemon's membership stands: the link's state, who it is in which org, the last
contact with a server, and the grace counted from it.

Grace is for an unreachable server only: past it (counted from the last contact: any message,
heartbeats included, or the moment a live stream broke) the org's secrets go. A server that
ended the membership (removed, key revoked) ends it at once, no grace.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from qpu_broker_client.errors import (
    FailedPreconditionError,
    LockedError,
    UnauthenticatedError,
)

from qpu_broker.org.records import Member

# Where the link stands (OrgStatus.State on the daemon's wire).
NOT_LOGGED_IN, CONNECTING, CONNECTED, DISCONNECTED, UNAVAILABLE, LOCKED, REMOVED, KEY_REVOKED = (
    "not-logged-in", "connecting", "connected", "disconnected", "unavailable", "locked", "removed", "key-revoked")

# A stream silent for this many heartbeat periods is dead (a partition sends no FIN).
SILENT_HEARTBEATS = 3
HEARTBEAT_SLACK = 1.0  # seconds a heartbeat may be late before a short grace counts it missed


class OrgSession:
    def __init__(self, grace_seconds: float, locked: Callable[[], bool],
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace_seconds
        self._locked = locked  # the agent is locked (the login does not open)
        self._monotonic = monotonic
        self.state = NOT_LOGGED_IN
        self.detail = ""
        self.org = self.user = self.role = ""
        self._last_contact: float | None = None

    def member(self, who: Member) -> None:
        self.org, self.user, self.role = who.org, who.user, who.role

    def logged_out(self) -> None:
        self.state = NOT_LOGGED_IN
        self.org = self.user = self.role = ""

    def contact(self) -> float:
        """A message from a server came now (or a live stream broke now)."""
        self._last_contact = self._monotonic()
        return self._last_contact

    def since_contact(self) -> float:
        return 0.0 if self._last_contact is None else self._monotonic() - self._last_contact

    def past_grace(self) -> bool:
        """Unreachable past the grace: the state is UNAVAILABLE from now (and the secrets must go)."""
        if self.state not in (DISCONNECTED, UNAVAILABLE):
            return False
        since = float("inf") if self._last_contact is None else self._monotonic() - self._last_contact
        if since <= self.grace:
            return False
        self.state = UNAVAILABLE
        return True

    def silent_after(self, heartbeat: float) -> float:
        """Seconds of silence after which a stream is gone: several heartbeats, or sooner when the
        grace is shorter (never before one heartbeat is missed)."""
        return max(heartbeat + HEARTBEAT_SLACK, min(SILENT_HEARTBEATS * heartbeat, self.grace))

    def require(self, server: str) -> None:
        """Org tokens and calls are usable in this state (logged in, unlocked, still a member)."""
        if self.state == NOT_LOGGED_IN:
            raise FailedPreconditionError(
                "organization tokens need an organization server, and this daemon is not logged in to one: "
                "run 'qpu-broker org login --server HOST:PORT'")
        if self.state == LOCKED or self._locked():
            raise LockedError("the agent is locked: organization tokens are usable again after 'qpu-broker unlock'")
        if self.state in (REMOVED, KEY_REVOKED):
            raise UnauthenticatedError(f"the organization server {server}: {self.detail}")
