"""The console's reads of the usage and admin records, off the event loop: one thread with a
connection of its own to the store (as the record writer has one for its writes), so a page that
reads a thousand rows never stalls gRPC calls and relayed requests served on the loop, and never
reads inside a transaction the loop's connection has open. Each read is bounded (a page of the
store's newest-first reads); reads take turns on the one thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import TypeVar

from qpu_broker.orgserver.store import OrgStore

T = TypeVar("T")


class Reader:
    def __init__(self, open_store: Callable[[], OrgStore]) -> None:
        """`open_store`: a new connection to the org's store, opened on the reader's thread."""
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="console-reader")
        self._store: OrgStore | None = None

        def opened() -> None:
            self._store = open_store()
        self._pool.submit(opened).result()  # raises what opening raised

    async def read(self, read: Callable[[OrgStore], T]) -> T:
        """`read(store)` on the reader's thread and connection."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, read, self._store)

    def close(self) -> None:
        if self._store is not None:
            self._pool.submit(self._store.close).result()
        self._pool.shutdown()
