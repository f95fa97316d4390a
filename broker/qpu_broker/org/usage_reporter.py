"""Records of org token use, sent from the queue on disk to the org server.

The current login's finished records go while the push stream is up, oldest first, in batches,
at least once (the server keeps one per id, so a resend after a lost answer is harmless); each
is deleted from the queue only once the server has it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from qpu_broker_client.errors import QpuBrokerError

from qpu_broker.org.server_api import OrgServerApi
from qpu_broker.tokens.usage_queue import Login, UsageQueue

log = logging.getLogger(__name__)
USAGE_BATCH = 500  # records per report (the server takes up to 1000)
USAGE_LINGER = 0.25  # seconds a first record waits for others to go in the same report
USAGE_RETRY_FIRST = 0.1
USAGE_RETRY_MAX = 60.0  # seconds between tries of a report the server refused
IDLE_CHECK = 1.0  # seconds between looks at the queue when nothing says a record is there


class UsageReporter:
    def __init__(self, queue: UsageQueue, server: OrgServerApi, ready: asyncio.Event,
                 connected: Callable[[], bool], login: Callable[[], Login]) -> None:
        self._queue = queue
        self._server = server
        self._ready = ready  # set by the queue when a record is ready, and when the stream comes up
        self._connected = connected  # the push stream is up: reports go now
        self._login = login  # whose records go (the login's id and the member)
        self._reconnected = asyncio.Event()

    def wake(self) -> None:
        """The stream is up (again, perhaps on another replica): what waits goes now, whatever
        back-off a refusing server had started."""
        self._reconnected.set()
        self._ready.set()

    async def send_batch(self) -> int | None:
        """One report of the waiting records: how many went (0: none waiting, or not connected);
        None when the server did not take them (they stay queued)."""
        batch = self._queue.to_send(self._login(), USAGE_BATCH) if self._connected() else []
        if not batch:
            return 0
        try:
            await self._server.report_usage(batch)
        except QpuBrokerError as exc:
            log.warning("usage records not sent to the organization server yet (%d waiting, kept on disk): %s",
                        self._queue.waiting(self._login()[0]), exc)
            return None
        self._queue.sent([r.id for r in batch])
        await asyncio.to_thread(self._queue.checkpoint)  # its fsyncs off the event loop
        return len(batch)

    async def run(self) -> None:
        retry = USAGE_RETRY_FIRST
        early = False  # this report went before its back-off ended, at a new connection
        while True:
            self._ready.clear()
            self._reconnected.clear()  # a connection made while this report is out still counts
            sent = await self.send_batch()
            if sent is None:
                if early:  # refused at once by the new connection too: this back-off runs out whole,
                    await asyncio.sleep(retry)  # so a stream that flaps sends no report a reconnect
                    retry, early = min(USAGE_RETRY_MAX, retry * 2), False
                    continue
                try:  # a new record does not end the back-off; a new connection does, once
                    await asyncio.wait_for(self._reconnected.wait(), retry)
                    early = True
                except TimeoutError:
                    retry = min(USAGE_RETRY_MAX, retry * 2)
                continue
            retry, early = USAGE_RETRY_FIRST, False
            if sent:
                continue
            try:
                await asyncio.wait_for(self._ready.wait(), IDLE_CHECK)
            except TimeoutError:
                continue
            # Records come in bursts: a moment's wait sends them in one report, not one each
            # (they are on disk already, so waiting loses nothing).
            await asyncio.sleep(USAGE_LINGER)
