"""The member's quotas as last heard, and each metered use counted by the server first.

Fails closed: a quota that cannot be counted (the server unreachable) refuses the use. Every
Reserve answer brings the quotas' use; status asks again at most once a QUOTA_REFRESH.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator

from qpu_broker_client.errors import QpuBrokerError, UnavailableError
from qpu_broker_client.usage import Quota

from qpu_broker.org.server_api import OrgServerApi
from qpu_broker.tokens.org_tokens import OrgToken

QUOTA_STATUS_TIMEOUT = 1.0  # seconds status waits for the server's word on quotas
QUOTA_REFRESH = 1.0  # seconds between status's questions about quotas


class OrgQuotas:
    def __init__(self, server: OrgServerApi, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._server = server
        self._monotonic = monotonic
        self._quotas: dict[int, Quota] = {}  # by quota id, as last heard (reserve, status)
        self._asked = float("-inf")

    def known(self) -> list[Quota]:
        return list(self._quotas.values())

    def clear(self) -> None:
        self._quotas.clear()

    async def reserve(self, token: OrgToken) -> str:
        """Before a use of a metered token: the server counts it or refuses it. Returns the
        reservation the use's record names ("" when the server made none)."""
        try:
            reservation, quotas = await self._server.reserve(token.server_id)
        except UnavailableError:
            raise UnavailableError(
                f"organization token {token.name!r} has a quota, and the organization server {self._server.server} "
                "cannot count this use now: try again when it answers") from None
        for q in quotas:
            self._quotas[q.id] = q
        return reservation

    async def refresh(self, worth_asking: bool) -> None:
        """The member's quotas and their use, for status: asked of the server only when a quota binds
        one of their tokens (`worth_asking`), at most once a QUOTA_REFRESH (a status bar polls; each
        use's reserve brings the news too). Best effort: the last known stay."""
        now = self._monotonic()
        if not worth_asking or now - self._asked < QUOTA_REFRESH:
            return
        self._asked = now
        try:
            quotas = await asyncio.wait_for(self._server.list_quotas(), QUOTA_STATUS_TIMEOUT)
        except (QpuBrokerError, TimeoutError):
            return
        self._quotas = {q.id: q for q in quotas}

    @contextlib.contextmanager
    def counted_on_the_server(self, tokens: Iterable[OrgToken | None]) -> Iterator[None]:
        """A relayed call counts its metered tokens' quotas on the server, with no Reserve answer
        here to tell: the next status asks the server again rather than show the use before it."""
        try:
            yield
        finally:
            if any(t is not None and t.metered for t in tokens):
                self._asked = float("-inf")
