"""A cache around exchange schemes: one bearer per token and token endpoint, shared by all clients.

A bearer is reused until 80 % of its lifetime has passed (on an injected
monotonic clock). When many callers need a refresh at once, exactly one
exchange runs and the rest await it. Rotating or deleting a token drops its
bearer (`forget`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

from qpu_broker_client.secret import Secret

from qpu_broker.providers.base import Exchanged, ExchangeScheme, PostJson

REFRESH_AT = 0.8


@dataclasses.dataclass
class _Entry:
    bearer: Secret
    refresh_at: float


class ExchangeCache:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[Exchanged]] = {}
        self._generation: dict[str, int] = {}

    async def bearer(self, key: str, exchange: Callable[[], Awaitable[Exchanged]]) -> Secret:
        entry = self._entries.get(key)
        if entry is not None and self._monotonic() < entry.refresh_at:
            return entry.bearer
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._run(key, exchange))
            self._inflight[key] = pending
        return (await asyncio.shield(pending)).bearer

    async def _run(self, key: str, exchange: Callable[[], Awaitable[Exchanged]]) -> Exchanged:
        generation = self._generation.get(key, 0)
        started = self._monotonic()
        try:
            result = await exchange()
            if self._generation.get(key, 0) == generation:  # not forgotten meanwhile
                self._entries[key] = _Entry(result.bearer, started + REFRESH_AT * result.lifetime_seconds)
            return result
        finally:
            self._inflight.pop(key, None)

    def forget(self, prefix: str) -> None:
        """Drop every bearer whose key starts with `prefix` (a token id)."""
        for key in [k for k in self._entries if k.startswith(prefix)]:
            del self._entries[key]
        for key in list(self._inflight):
            if key.startswith(prefix):
                self._generation[key] = self._generation.get(key, 0) + 1


class CachedExchange:
    """An exchange scheme behind the cache, the way aws-vault wraps a provider: the same
    exchange, run once per token and token endpoint for 80 % of each bearer's life."""

    def __init__(self, scheme: ExchangeScheme, cache: ExchangeCache) -> None:
        self.scheme = scheme
        self._cache = cache

    async def bearer(self, secret: Secret, post: PostJson, token_url: str, token_key: str) -> Secret:
        return await self._cache.bearer(f"{token_key}@{token_url}#{self.scheme.exchange_terms}",
                                        lambda: self.scheme.exchange(secret, post, token_url))
