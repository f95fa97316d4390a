"""The unread rest of ForwardSmall answers, kept a short while for ForwardRest to fetch by
its continuation id (a wire-level pair of calls: nothing below the wire knows of it)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

from qpu_broker_client.errors import NotFoundError

KEEP_SECONDS = 30.0


class UnreadAnswers:
    def __init__(self, keep_seconds: float = KEEP_SECONDS) -> None:
        self._keep = keep_seconds
        self._pending: dict[str, tuple[AsyncIterator[bytes], bytes, asyncio.TimerHandle]] = {}

    async def take(self, body: AsyncIterator[bytes], limit: int) -> tuple[bytes, str]:
        """Up to `limit` bytes of `body`, and a continuation id if more follows."""
        parts, size = [], 0
        async for chunk in body:
            parts.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
        else:
            return b"".join(parts), ""
        joined = b"".join(parts)
        key = secrets.token_urlsafe(16)
        timer = asyncio.get_running_loop().call_later(self._keep, self._expire, key)
        self._pending[key] = (body, joined[limit:], timer)
        return joined[:limit], key

    async def pop(self, key: str) -> AsyncIterator[bytes]:
        entry = self._pending.pop(key, None)
        if entry is None:
            raise NotFoundError("no such continuation: it was used already, or expired after "
                                f"{self._keep:.0f} s; send the request again")
        body, overflow, timer = entry
        timer.cancel()
        if overflow:
            yield overflow
        async for chunk in body:
            yield chunk

    def _expire(self, key: str) -> None:
        entry = self._pending.pop(key, None)
        if entry is not None:
            asyncio.ensure_future(entry[0].aclose())  # releases the upstream connection
