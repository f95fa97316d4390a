"""The end an org admin set on an organization token, as a member's daemon keeps it.

From that moment the token is not used (every use looks its token up first, and the lookup
reads the wall clock itself) and its secret is dropped: by one timer per token on the event
loop, not a poll. No grace: an expired token is the org's decision, not an unreachable server.
The token stays listed, with its expiry, so a member can tell why it is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from qpu_broker.common.lifetimes import expired_error, is_expired
from qpu_broker.tokens.org_tokens import OrgToken


class OrgExpiry:
    def __init__(self, clock: Callable[[], float], on_expired: Callable[[str], None]) -> None:
        self._clock = clock  # wall time: what the org states expiry in
        self._on_expired = on_expired  # called with the server id when a token's end comes
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def expired(self, token: OrgToken) -> bool:
        return is_expired(token.expires_us, int(self._clock() * 1_000_000))

    def check(self, token: OrgToken) -> OrgToken:
        """The token, or the refusal of its use once it expired (and its secret dropped now, if its
        timer is late: loop timers do not count time a laptop spent asleep)."""
        if self.expired(token):
            self.cancel(token.server_id)
            self._on_expired(token.server_id)
            raise expired_error(token.name, token.expires_us, organization=True)
        return token

    def arm(self, token: OrgToken) -> None:
        """(Re)start the token's timer, for the version just applied."""
        self.cancel(token.server_id)
        if token.expires_us:
            delay = max(0.0, token.expires_us / 1e6 - self._clock())
            self._timers[token.server_id] = asyncio.get_running_loop().call_later(delay, self._fire, token)

    def _fire(self, token: OrgToken) -> None:
        self._timers.pop(token.server_id, None)
        if not self.expired(token):  # the loop's clock ran ahead of the wall clock: wait the rest
            self.arm(token)
            return
        self._on_expired(token.server_id)

    def cancel(self, server_id: str) -> None:
        timer = self._timers.pop(server_id, None)
        if timer is not None:
            timer.cancel()

    def clear(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
