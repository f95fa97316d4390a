"""The daemon's relayed calls, multiplexed on one Relay stream to the org server.

A relayed call as a gRPC call of its own costs grpc.aio a call object, metadata and a status at
both ends, about 200 µs of a relayed call here (docs/performance.md, issue 21 item 7); as a message on a
stream kept open it costs a write and a read. Each call has an id; the server answers each in the
order they finish. What a call's caller sees is what the unary twin (RelayForward, RelaySign)
would have given: its answer, or its status as our error (`error_for_code`, with its mark).

One writer task sends, so a caller cancelled mid-write cannot cancel the stream under the other
calls (grpc.aio cancels a call whose write is cancelled); a cancelled or timed-out call is named
to the server with `cancel`, which abandons it there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import grpc
from qpu_broker_client.errors import QpuBrokerError, UnavailableError, error_for_code
from qpu_broker_client.proto.qpubroker.org.v1 import org_pb2

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_DONE_WRITING = None  # the writer's last item: the client is done sending
CLOSE_WAIT_SECONDS = 10.0  # a stream done sending is cancelled if the server has not ended it by then


class NotSent(Exception):
    """The call never left: its stream had ended first. It may be sent again on a new one."""

    def __init__(self, error: QpuBrokerError) -> None:
        super().__init__(str(error))
        self.error = error


class Unimplemented(Exception):
    """The server is of a release before the stream: nothing sent on it was run."""


class RelayStream:
    """One open Relay stream to server `at`, opened with `metadata` (the device's access token)."""

    def __init__(self, call: grpc.aio.StreamStreamCall, at: int, metadata: Any,
                 error: Callable[[grpc.aio.AioRpcError], QpuBrokerError], close_wait: float = CLOSE_WAIT_SECONDS) -> None:
        self.at, self.metadata = at, metadata
        self._close_wait = close_wait
        self._call = call
        self._error = error
        self._pending: dict[int, asyncio.Future] = {}
        self._next_id = 0
        self._queue: asyncio.Queue[tuple[int, org_pb2.RelayCall] | None] = asyncio.Queue()
        self._ended: QpuBrokerError | Unimplemented | None = None
        self._retiring = False
        self._writer = asyncio.create_task(self._write())
        self._reader = asyncio.create_task(self._read())  # kept: the loop holds its tasks weakly

    @property
    def open(self) -> bool:
        return self._ended is None and not self._retiring

    async def ask(self, kind: str, request: Any, timeout: float) -> Any:
        """Call `kind` ("forward" or "sign") with `request`: its response, or its error raised."""
        if self._ended is not None:
            raise NotSent(self._ended) if isinstance(self._ended, QpuBrokerError) else self._ended
        self._next_id += 1
        call_id = self._next_id
        loop = asyncio.get_running_loop()
        future = self._pending[call_id] = loop.create_future()
        timer = loop.call_later(timeout, self._timed_out, call_id, timeout)
        self._queue.put_nowait((call_id, org_pb2.RelayCall(id=call_id, **{kind: request})))
        try:
            result = await future
        except asyncio.CancelledError:
            self._abandon(call_id)
            raise
        finally:
            timer.cancel()
            self._pending.pop(call_id, None)
            if self._retiring and not self._pending:
                self._queue.put_nowait(_DONE_WRITING)
        which = result.WhichOneof("result")
        if which == "failure":
            f = result.failure
            raise error_for_code(_CODE_NAMES.get(f.code, "UNKNOWN"), f.message, f.mark)
        return getattr(result, which)

    def retire(self) -> None:
        """No new calls: the stream closes once those in flight are answered."""
        if not self._retiring:
            self._retiring = True
            if not self._pending:
                self._queue.put_nowait(_DONE_WRITING)

    def cancel(self) -> None:
        self._call.cancel()

    def _abandon(self, call_id: int) -> None:
        if self._pending.pop(call_id, None) is not None and self._ended is None:
            self._queue.put_nowait((0, org_pb2.RelayCall(id=call_id, cancel=True)))

    def _timed_out(self, call_id: int, timeout: float) -> None:
        future = self._pending.get(call_id)
        if future is not None and not future.done():
            future.set_exception(error_for_code(
                "DEADLINE_EXCEEDED", f"the organization server did not answer the relayed call within {timeout:g} s"))
            self._abandon(call_id)

    async def _write(self) -> None:
        while (item := await self._queue.get()) is not _DONE_WRITING:
            call_id, message = item
            if call_id and call_id not in self._pending:
                continue  # given up before it left
            try:
                await self._call.write(message)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                break  # the stream ended: the reader fails what is pending, and what is queued never left
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
            await self._call.done_writing()
        # A server that answered everything ends the stream at once; one hung (the connection up,
        # nothing answered) would keep it, and its reader, until the channel closes.
        asyncio.get_running_loop().call_later(self._close_wait, self._call.cancel)

    async def _read(self) -> None:
        ended: QpuBrokerError | Unimplemented
        try:
            while (result := await self._call.read()) is not grpc.aio.EOF:
                future = self._pending.get(result.id)
                if future is not None and not future.done():
                    future.set_result(result)
            ended = UnavailableError("the organization server ended the relay stream")
        except grpc.aio.AioRpcError as exc:
            ended = Unimplemented() if exc.code() is grpc.StatusCode.UNIMPLEMENTED else self._error(exc)
        except asyncio.CancelledError:
            ended = UnavailableError("the relay stream was closed")
        self._ended = ended
        self._writer.cancel()
        # Queued calls never left (NotSent, asked again on a new stream); written ones may have run.
        unsent = set()
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                unsent.add(item[0])
        for call_id, future in self._pending.items():
            if not future.done():
                future.set_exception(NotSent(ended) if call_id in unsent and isinstance(ended, QpuBrokerError)
                                     else ended)
        self._pending.clear()
